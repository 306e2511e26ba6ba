/**
 * The descriptors that reflection serves: each FileDescriptorProto's original bytes, exactly as buf
 * wrote them into a FileDescriptorSet, indexed by file name, by symbol and by extension.
 *
 * Invariant: every file's `dependency` names another file in the pool, so a client that fetches a
 * file and then each declared dependency by name (grpcurl does) can always build a registry. The
 * pool checks this once at startup with @bufbuild/protobuf's createFileRegistry, which refuses
 * unresolved imports and type names, and throws rather than serve a set a strict client rejects.
 */
import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import {
  FileDescriptorProtoSchema,
  type DescriptorProto,
  type EnumDescriptorProto,
  type FieldDescriptorProto,
  type FileDescriptorProto,
} from '@bufbuild/protobuf/wkt';

/** Field number of `repeated FileDescriptorProto file` in google.protobuf.FileDescriptorSet. */
const FILE_DESCRIPTOR_SET_FILE_FIELD = 1;

type PoolFile = Readonly<{ name: string; bytes: Uint8Array; proto: FileDescriptorProto }>;

export type DescriptorPool = Readonly<{
  /** Every fully-qualified service name in the pool. */
  serviceNames: readonly string[];
  /** The file and then its transitive dependencies, each once, dependencies in pre-order. */
  fileWithDependencies(fileName: string): Uint8Array[] | undefined;
  /** The file that defines a fully-qualified symbol (without a leading dot). */
  fileContainingSymbol(symbol: string): string | undefined;
  /** The file that defines extension `number` of message `containingType`. */
  fileContainingExtension(containingType: string, number: number): string | undefined;
  /** The extension numbers of a message type; undefined when the type is unknown. */
  extensionNumbersOf(messageType: string): number[] | undefined;
}>;

/**
 * Splits a serialized FileDescriptorSet into the original bytes of each FileDescriptorProto by
 * walking the wire format, so nothing is re-encoded (unknown fields and field order survive).
 */
export function splitFileDescriptorSet(setBytes: Uint8Array): Uint8Array[] {
  const reader = new BinaryReader(setBytes);
  const files: Uint8Array[] = [];
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (fieldNo === FILE_DESCRIPTOR_SET_FILE_FIELD && wireType === WireType.LengthDelimited) {
      files.push(reader.bytes());
    } else {
      reader.skip(wireType, fieldNo);
    }
  }
  return files;
}

/**
 * Builds a pool from serialized FileDescriptorSets (built with imports, i.e. without
 * `--exclude-imports`). A file name that appears in several sets must have identical bytes.
 * Throws when a set is incomplete or inconsistent.
 */
export function createDescriptorPool(
  sets: ReadonlyArray<Readonly<{ source: string; bytes: Uint8Array }>>,
): DescriptorPool {
  const files = new Map<string, PoolFile>();
  for (const set of sets) {
    for (const bytes of splitFileDescriptorSet(set.bytes)) {
      const proto = fromBinary(FileDescriptorProtoSchema, bytes);
      const existing = files.get(proto.name);
      if (existing && !equalBytes(existing.bytes, bytes)) {
        throw new Error(`reflection: ${set.source} redefines ${proto.name} with different content`);
      }
      if (!existing) files.set(proto.name, { name: proto.name, bytes, proto });
    }
  }
  assertResolvable(files);

  const symbols = new Map<string, string>();
  const extensions = new Map<string, string>();
  const extensionNumbers = new Map<string, number[]>();
  const messageTypes = new Set<string>();
  const serviceNames: string[] = [];
  for (const file of files.values()) {
    indexFile(file.proto, {
      symbol: (name) => symbols.set(name, file.name),
      message: (name) => messageTypes.add(name),
      service: (name) => serviceNames.push(name),
      extension: (field) => {
        const extendee = field.extendee.replace(/^\./, '');
        extensions.set(`${extendee}:${field.number}`, file.name);
        extensionNumbers.set(extendee, [...(extensionNumbers.get(extendee) ?? []), field.number]);
      },
    });
  }

  return {
    serviceNames,
    fileWithDependencies(fileName) {
      if (!files.has(fileName)) return undefined;
      const seen = new Set<string>();
      const out: Uint8Array[] = [];
      const visit = (name: string): void => {
        const file = files.get(name);
        if (!file || seen.has(name)) return;
        seen.add(name);
        out.push(file.bytes);
        for (const dependency of file.proto.dependency) visit(dependency);
      };
      visit(fileName);
      return out;
    },
    fileContainingSymbol: (symbol) => symbols.get(symbol.replace(/^\./, '')),
    fileContainingExtension: (containingType, number) =>
      extensions.get(`${containingType.replace(/^\./, '')}:${number}`),
    extensionNumbersOf(messageType) {
      const name = messageType.replace(/^\./, '');
      return messageTypes.has(name) ? [...(extensionNumbers.get(name) ?? [])] : undefined;
    },
  };
}

type IndexSink = Readonly<{
  symbol: (fullName: string) => void;
  message: (fullName: string) => void;
  service: (fullName: string) => void;
  extension: (field: FieldDescriptorProto) => void;
}>;

function indexFile(file: FileDescriptorProto, sink: IndexSink): void {
  const scope = file.package === '' ? '' : `${file.package}.`;
  for (const message of file.messageType) indexMessage(`${scope}${message.name}`, message, sink);
  for (const enumType of file.enumType) indexEnum(scope, enumType, sink);
  for (const extension of file.extension) {
    sink.symbol(`${scope}${extension.name}`);
    sink.extension(extension);
  }
  for (const service of file.service) {
    const serviceName = `${scope}${service.name}`;
    sink.symbol(serviceName);
    sink.service(serviceName);
    for (const method of service.method) sink.symbol(`${serviceName}.${method.name}`);
  }
}

function indexMessage(fullName: string, message: DescriptorProto, sink: IndexSink): void {
  sink.symbol(fullName);
  sink.message(fullName);
  for (const field of message.field) sink.symbol(`${fullName}.${field.name}`);
  for (const oneof of message.oneofDecl) sink.symbol(`${fullName}.${oneof.name}`);
  for (const nested of message.nestedType) indexMessage(`${fullName}.${nested.name}`, nested, sink);
  for (const enumType of message.enumType) indexEnum(`${fullName}.`, enumType, sink);
  for (const extension of message.extension) {
    sink.symbol(`${fullName}.${extension.name}`);
    sink.extension(extension);
  }
}

// Enum values are scoped as siblings of their enum, not inside it (protobuf's C++ scoping rule,
// which protoc enforces): `settle.v1.PAYMENT_STATE_SUCCEEDED`, not `settle.v1.PaymentState.…`.
function indexEnum(scope: string, enumType: EnumDescriptorProto, sink: IndexSink): void {
  sink.symbol(`${scope}${enumType.name}`);
  for (const value of enumType.value) sink.symbol(`${scope}${value.name}`);
}

function assertResolvable(files: ReadonlyMap<string, PoolFile>): void {
  for (const file of files.values()) {
    for (const dependency of file.proto.dependency) {
      if (!files.has(dependency)) {
        throw new Error(
          `reflection: ${file.name} imports ${dependency}, which is not in the descriptor set ` +
            '(build it with imports: buf build --as-file-descriptor-set, without --exclude-imports)',
        );
      }
    }
  }
  // The same check a strict client makes: every import and type reference resolves, with imports
  // found by file name (as grpcurl does), whatever the order of the files in the sets.
  for (const file of files.values()) {
    createFileRegistry(file.proto, (name) => files.get(name)?.proto);
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, index) => byte === b[index]);
}
