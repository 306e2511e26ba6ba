/**
 * The request types of Settle's contract, read from the committed descriptor set
 * (src/grpc/descriptors.binpb, the same file reflection serves), to check request bytes with the
 * protobuf runtime's reflective decoder before ts-proto's decoder reads them. ts-proto's decoders
 * stop at a tag of 0 or an end-group tag and ignore the rest of the message they were reading;
 * inside a nested message (an order of CreatePayment) the bytes after it were then read as fields
 * of the outer message, so malformed bytes became a request nobody sent (an order more) and were
 * written. The reflective decoder refuses field number 0, wire types 6 and 7, a lone or
 * mismatched end group, a length past its message's end and a string that is not UTF-8, at every
 * depth.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  createFileRegistry,
  fromBinary,
  type DescMessage,
  type FileRegistry,
} from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';

const DESCRIPTOR_SET_PATH = fileURLToPath(new URL('./descriptors.binpb', import.meta.url));

let registry: FileRegistry | undefined;

function contract(): FileRegistry {
  registry ??= createFileRegistry(
    fromBinary(FileDescriptorSetSchema, readFileSync(DESCRIPTOR_SET_PATH)),
  );
  return registry;
}

/**
 * The request type of a method path such as `/settle.v1.PaymentService/CreatePayment`. Throws
 * when the contract has no such method: a service checked against it must be defined in it.
 */
export function requestTypeOf(path: string): DescMessage {
  const [, serviceName = '', methodName = ''] = /^\/([^/]+)\/([^/]+)$/.exec(path) ?? [];
  const method = contract()
    .getService(serviceName)
    ?.methods.find((candidate) => candidate.name === methodName);
  if (method === undefined) throw new Error(`${path} is not a method of ${DESCRIPTOR_SET_PATH}`);
  return method.input;
}

/** Throws, naming the problem, unless `bytes` is a well-formed message of `type`. */
export function assertDecodes(type: DescMessage, bytes: Uint8Array): void {
  fromBinary(type, bytes);
}
