/**
 * gRPC server reflection (grpc.reflection.v1 and the wire-identical v1alpha) that serves each
 * FileDescriptorProto's original bytes from buf-built descriptor sets. @grpc/reflection rebuilds
 * descriptors through protobufjs (merged files, no dependency lists, leaked map_entry options),
 * which strict clients such as grpcurl reject; see TOOLCHAIN.md, "Reflection that strict clients
 * accept".
 *
 * Every request on the stream gets exactly one response. Unknown files, symbols and types are
 * answered with an error_response (NOT_FOUND) and the stream stays open, as in the C++ reference
 * server. File answers carry the file first and then its transitive dependencies once each.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createDescriptorPool, type DescriptorPool } from './descriptor-pool.js';

/** The reflection services this module registers; both are always listed. */
export const REFLECTION_SERVICE_NAMES = [
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
] as const;

/** The settle protos, built by `npm run generate` (buf build, with imports). */
const DEFAULT_DESCRIPTOR_SET_PATH = fileURLToPath(new URL('../descriptors.binpb', import.meta.url));

/**
 * The vendored gRPC protos (reflection v1/v1alpha, health v1), built from ./buf.yaml. Always
 * served, so `describe` works on the reflection and health services too.
 */
const GRPC_DESCRIPTOR_SET_PATH = fileURLToPath(new URL('./grpc-services.binpb', import.meta.url));

const REFLECTION_PROTO_ROOT = fileURLToPath(new URL('./proto', import.meta.url));

const STATUS_NOT_FOUND = grpc.status.NOT_FOUND;
const STATUS_INVALID_ARGUMENT = grpc.status.INVALID_ARGUMENT;
const STATUS_INTERNAL = grpc.status.INTERNAL;

export type ReflectionOptions = Readonly<{
  /**
   * A FileDescriptorSet built with imports (`buf build --as-file-descriptor-set`). Defaults to
   * the committed src/grpc/descriptors.binpb.
   */
  descriptorSetPath?: string;
  /**
   * Fully-qualified names of the services to list, e.g. `settle.v1.PaymentService` or
   * `grpc.health.v1.Health`. The reflection services are always listed. Each must be defined in
   * the descriptor set or in the vendored gRPC protos (health, reflection), else addReflection
   * throws.
   */
  services: readonly string[];
}>;

/** Wire shape of ServerReflectionRequest as proto-loader decodes it (keepCase, oneofs). */
type ReflectionRequest = {
  host?: string;
  message_request?:
    | 'file_by_filename'
    | 'file_containing_symbol'
    | 'file_containing_extension'
    | 'all_extension_numbers_of_type'
    | 'list_services';
  file_by_filename?: string;
  file_containing_symbol?: string;
  file_containing_extension?: { containing_type?: string; extension_number?: number };
  all_extension_numbers_of_type?: string;
  list_services?: string;
};

/** The `message_response` oneof of ServerReflectionResponse, one member set. */
type ReflectionAnswer =
  | { file_descriptor_response: { file_descriptor_proto: Uint8Array[] } }
  | { all_extension_numbers_response: { base_type_name: string; extension_number: number[] } }
  | { list_services_response: { service: Array<{ name: string }> } }
  | { error_response: { error_code: number; error_message: string } };

type ReflectionResponse = ReflectionAnswer & {
  valid_host: string;
  original_request: ReflectionRequest;
};

/**
 * Registers grpc.reflection.v1.ServerReflection and grpc.reflection.v1alpha.ServerReflection on
 * `server`. Reads and validates the descriptor set synchronously; throws when it is missing,
 * has unresolved imports, or lacks one of `options.services`.
 */
export function addReflection(server: grpc.Server, options: ReflectionOptions): void {
  const descriptorSetPath = options.descriptorSetPath ?? DEFAULT_DESCRIPTOR_SET_PATH;
  const pool = createDescriptorPool([
    { source: descriptorSetPath, bytes: readFileSync(descriptorSetPath) },
    { source: GRPC_DESCRIPTOR_SET_PATH, bytes: readFileSync(GRPC_DESCRIPTOR_SET_PATH) },
  ]);
  for (const service of options.services) {
    if (!pool.serviceNames.includes(service)) {
      throw new Error(
        `reflection: service ${service} is not in ${descriptorSetPath}; ` +
          'run `npm run generate` or fix the name (fully qualified, e.g. settle.v1.PaymentService)',
      );
    }
  }
  const listed = [...new Set([...options.services, ...REFLECTION_SERVICE_NAMES])].map((name) => ({
    name,
  }));

  const definitions = protoLoader.loadSync(
    ['grpc/reflection/v1/reflection.proto', 'grpc/reflection/v1alpha/reflection.proto'],
    {
      keepCase: true,
      longs: String,
      enums: String,
      oneofs: true,
      includeDirs: [REFLECTION_PROTO_ROOT],
    },
  );
  const handler = (call: grpc.ServerDuplexStream<ReflectionRequest, ReflectionResponse>) => {
    call.on('data', (request: ReflectionRequest) => {
      call.write({
        valid_host: request.host ?? '',
        original_request: request,
        ...answerSafely(pool, listed, request),
      });
    });
    call.on('end', () => call.end());
  };
  for (const name of REFLECTION_SERVICE_NAMES) {
    const definition = definitions[name];
    if (!definition || !('ServerReflectionInfo' in definition)) {
      throw new Error(`reflection: ${name} is missing from the vendored reflection.proto`);
    }
    server.addService(definition, { ServerReflectionInfo: handler });
  }
}

function answerSafely(
  pool: DescriptorPool,
  listed: Array<{ name: string }>,
  request: ReflectionRequest,
): ReflectionAnswer {
  try {
    return answer(pool, listed, request);
  } catch (error) {
    // The pool is validated at startup, so this is a bug: log it, keep the client's stream alive.
    console.error('reflection: failed to answer', request, error);
    return errorAnswer(STATUS_INTERNAL, 'reflection failed to answer this request');
  }
}

function answer(
  pool: DescriptorPool,
  listed: Array<{ name: string }>,
  request: ReflectionRequest,
): ReflectionAnswer {
  switch (request.message_request) {
    case 'list_services':
      return { list_services_response: { service: listed } };
    case 'file_by_filename': {
      const fileName = request.file_by_filename ?? '';
      return filesAnswer(pool, fileName, `file not found: ${fileName}`);
    }
    case 'file_containing_symbol': {
      const symbol = request.file_containing_symbol ?? '';
      const fileName = pool.fileContainingSymbol(symbol);
      return filesAnswer(pool, fileName, `symbol not found: ${symbol}`);
    }
    case 'file_containing_extension': {
      const containingType = request.file_containing_extension?.containing_type ?? '';
      const number = request.file_containing_extension?.extension_number ?? 0;
      const fileName = pool.fileContainingExtension(containingType, number);
      return filesAnswer(pool, fileName, `extension not found: ${containingType} ${number}`);
    }
    case 'all_extension_numbers_of_type': {
      const typeName = request.all_extension_numbers_of_type ?? '';
      const numbers = pool.extensionNumbersOf(typeName);
      if (!numbers) return errorAnswer(STATUS_NOT_FOUND, `type not found: ${typeName}`);
      return {
        all_extension_numbers_response: { base_type_name: typeName, extension_number: numbers },
      };
    }
    default:
      // Unset, or a request kind newer than our reflection.proto.
      return errorAnswer(STATUS_INVALID_ARGUMENT, 'no supported message_request set');
  }
}

function filesAnswer(
  pool: DescriptorPool,
  fileName: string | undefined,
  notFoundMessage: string,
): ReflectionAnswer {
  const files = fileName === undefined ? undefined : pool.fileWithDependencies(fileName);
  if (!files) return errorAnswer(STATUS_NOT_FOUND, notFoundMessage);
  return { file_descriptor_response: { file_descriptor_proto: files } };
}

function errorAnswer(code: grpc.status, message: string): ReflectionAnswer {
  return { error_response: { error_code: code, error_message: message } };
}
