/**
 * Goal: server reflection that strict clients such as grpcurl accept, on v1 and v1alpha.
 * Method: a real server on 127.0.0.1:0 with the ts-proto settle.v1 services (stubs never called),
 * health and reflection. A reflection client loaded from the vendored reflection.proto does what
 * grpcurl does: list_services, file_containing_symbol per service, file_by_filename for every
 * declared dependency; the raw bytes are decoded as FileDescriptorProtos and fed, unmodified, to
 * @bufbuild/protobuf's createFileRegistry, which refuses unresolved imports, and every method's
 * input and output type must resolve. Also: bytes are the buf-built originals, error answers keep
 * the stream open, buf curl (a Go client) lists and calls through reflection, and the committed
 * vendored descriptor set is not stale.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createFileRegistry, fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { service as healthServiceDefinition } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PaymentServiceService } from '../../src/grpc/generated/settle/v1/payment.js';
import {
  LedgerServiceService,
  WalletServiceService,
} from '../../src/grpc/generated/settle/v1/wallet.js';
import { createHealth, HEALTH_SERVICE_NAME } from '../../src/grpc/health.js';
import { addReflection, REFLECTION_SERVICE_NAMES } from '../../src/grpc/reflection/index.js';
import { splitFileDescriptorSet } from '../../src/grpc/reflection/descriptor-pool.js';
import { startServer, stopServer, type RunningServer } from './harness.js';

const execFileAsync = promisify(execFile);
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const reflectionDir = join(repoRoot, 'src/grpc/reflection');
const bufBin = join(repoRoot, 'node_modules/.bin/buf');

const SETTLE_SERVICES = [
  'settle.v1.PaymentService',
  'settle.v1.WalletService',
  'settle.v1.LedgerService',
] as const;
const LISTED = [...SETTLE_SERVICES, HEALTH_SERVICE_NAME];

type ReflectionVersion = 'v1' | 'v1alpha';

/** ServerReflectionResponse as proto-loader decodes it (keepCase, oneofs, bytes as Buffer). */
type ReflectionResponse = {
  valid_host: string;
  original_request: Record<string, unknown>;
  message_response:
    | 'file_descriptor_response'
    | 'all_extension_numbers_response'
    | 'list_services_response'
    | 'error_response';
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  all_extension_numbers_response?: { base_type_name: string; extension_number: number[] };
  list_services_response?: { service: Array<{ name: string }> };
  error_response?: { error_code: number; error_message: string };
};

/** One ServerReflectionInfo stream; ask() sends a request and resolves with its response. */
class ReflectionSession {
  private readonly call: grpc.ClientDuplexStream<object, ReflectionResponse>;
  private readonly waiting: Array<{
    resolve: (response: ReflectionResponse) => void;
    reject: (error: Error) => void;
  }> = [];

  constructor(client: grpc.Client, method: string) {
    const open = (client as unknown as Record<string, (options: grpc.CallOptions) => unknown>)[
      method
    ];
    if (!open) throw new Error(`no ${method} on the reflection client`);
    this.call = open.call(client, {
      deadline: new Date(Date.now() + 10_000),
    }) as grpc.ClientDuplexStream<object, ReflectionResponse>;
    this.call.on('data', (response: ReflectionResponse) => this.waiting.shift()?.resolve(response));
    this.call.on('error', (error: Error) => {
      for (const waiter of this.waiting.splice(0)) waiter.reject(error);
    });
  }

  ask(request: object): Promise<ReflectionResponse> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.call.write({ host: '', ...request });
    });
  }

  close(): void {
    this.call.end();
  }
}

function reflectionClient(version: ReflectionVersion, address: string): grpc.Client {
  const definition = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, {
    keepCase: true,
    oneofs: true,
    arrays: true,
    includeDirs: [join(reflectionDir, 'proto')],
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: {
      reflection: Record<ReflectionVersion, { ServerReflection: grpc.ServiceClientConstructor }>;
    };
  };
  const { ServerReflection } = loaded.grpc.reflection[version];
  return new ServerReflection(address, grpc.credentials.createInsecure());
}

function files(response: ReflectionResponse): Buffer[] {
  expect(response.message_response, JSON.stringify(response.error_response)).toBe(
    'file_descriptor_response',
  );
  return response.file_descriptor_response?.file_descriptor_proto ?? [];
}

function decode(bytes: Uint8Array): FileDescriptorProto {
  return fromBinary(FileDescriptorProtoSchema, bytes);
}

/**
 * grpcurl's way to a service's descriptors: file_containing_symbol, then file_by_filename for
 * every declared dependency not yet seen. Returns the raw bytes by file name.
 */
async function fetchLikeGrpcurl(
  session: ReflectionSession,
  serviceName: string,
): Promise<Map<string, Uint8Array>> {
  const byName = new Map<string, Uint8Array>();
  const add = (bytes: Uint8Array) => byName.set(decode(bytes).name, bytes);
  const answer = files(await session.ask({ file_containing_symbol: serviceName }));
  expect(answer.length).toBeGreaterThan(0);
  const defining = decode(answer[0]!);
  expect(defining.service.map((s) => `${defining.package}.${s.name}`)).toContain(serviceName);
  answer.forEach(add);
  const pending = [...byName.values()].flatMap((bytes) => decode(bytes).dependency);
  const asked = new Set<string>();
  while (pending.length > 0) {
    const dependency = pending.pop()!;
    if (asked.has(dependency)) continue;
    asked.add(dependency);
    const [first, ...rest] = files(await session.ask({ file_by_filename: dependency }));
    expect(decode(first!).name).toBe(dependency);
    for (const bytes of [first!, ...rest]) {
      const name = decode(bytes).name;
      const known = byName.get(name);
      if (known) expect(Buffer.compare(Buffer.from(known), Buffer.from(bytes))).toBe(0);
      add(bytes);
      pending.push(...decode(bytes).dependency);
    }
  }
  return byName;
}

/**
 * Builds a strict registry from raw bytes, resolving imports by file name as grpcurl does, starting
 * at the file that defines the service; resolves every method's types and returns them.
 */
function resolveMethods(rawFiles: ReadonlyMap<string, Uint8Array>, serviceName: string): string[] {
  const byName = new Map([...rawFiles].map(([name, bytes]) => [name, decode(bytes)]));
  const defining = [...byName.values()].find((file) =>
    file.service.some((service) => `${file.package}.${service.name}` === serviceName),
  );
  if (!defining) throw new Error(`no file defines ${serviceName}`);
  const registry = createFileRegistry(defining, (name) => byName.get(name));
  const service = registry.getService(serviceName);
  if (!service) throw new Error(`${serviceName} not in the registry`);
  expect(service.methods.length).toBeGreaterThan(0);
  return service.methods.map((method) => {
    expect(registry.getMessage(method.input.typeName)).toBe(method.input);
    expect(registry.getMessage(method.output.typeName)).toBe(method.output);
    return `${method.name}(${method.input.typeName}) → ${method.output.typeName}`;
  });
}

function neverCalled(definition: grpc.ServiceDefinition): grpc.UntypedServiceImplementation {
  const fail = () => {
    throw new Error('not called by the reflection tests');
  };
  return Object.fromEntries(Object.keys(definition).map((name) => [name, fail]));
}

describe('reflection', () => {
  let running: RunningServer | undefined;
  const clients: grpc.Client[] = [];
  const sessions: ReflectionSession[] = [];

  function session(version: ReflectionVersion): ReflectionSession {
    const client = reflectionClient(version, running!.address);
    clients.push(client);
    const opened = new ReflectionSession(client, 'ServerReflectionInfo');
    sessions.push(opened);
    return opened;
  }

  beforeAll(async () => {
    running = await startServer((server) => {
      server.addService(PaymentServiceService, neverCalled(PaymentServiceService));
      server.addService(WalletServiceService, neverCalled(WalletServiceService));
      server.addService(LedgerServiceService, neverCalled(LedgerServiceService));
      createHealth([...SETTLE_SERVICES]).addToServer(server);
      addReflection(server, { services: LISTED });
    });
  });

  afterAll(() => {
    for (const opened of sessions) opened.close();
    for (const client of clients) client.close();
    stopServer(running);
  });

  it('lists the settle services, health and both reflection services', async () => {
    const response = await session('v1').ask({ list_services: '' });
    const names = response.list_services_response?.service.map((s) => s.name) ?? [];
    expect(names.sort()).toEqual([...LISTED, ...REFLECTION_SERVICE_NAMES].sort());
  });

  it('serves descriptors of every listed service that a strict registry accepts', async () => {
    const reflection = session('v1');
    const listed = (await reflection.ask({ list_services: '' })).list_services_response!.service;
    const resolved: Record<string, string[]> = {};
    for (const { name } of listed) {
      resolved[name] = resolveMethods(await fetchLikeGrpcurl(reflection, name), name);
    }
    expect(resolved['settle.v1.PaymentService']).toEqual([
      'CreatePayment(settle.v1.CreatePaymentRequest) → settle.v1.CreatePaymentResponse',
      'GetPayment(settle.v1.GetPaymentRequest) → settle.v1.GetPaymentResponse',
      'ListPayments(settle.v1.ListPaymentsRequest) → settle.v1.ListPaymentsResponse',
      'WatchPayment(settle.v1.WatchPaymentRequest) → settle.v1.WatchPaymentResponse',
    ]);
    expect(resolved[HEALTH_SERVICE_NAME]).toEqual([
      'Check(grpc.health.v1.HealthCheckRequest) → grpc.health.v1.HealthCheckResponse',
      'Watch(grpc.health.v1.HealthCheckRequest) → grpc.health.v1.HealthCheckResponse',
      'List(grpc.health.v1.HealthListRequest) → grpc.health.v1.HealthListResponse',
    ]);
    expect(Object.keys(resolved).sort()).toEqual([...LISTED, ...REFLECTION_SERVICE_NAMES].sort());
  });

  it('is strict enough to fail on a missing import (negative control)', async () => {
    const raw = await fetchLikeGrpcurl(session('v1'), 'settle.v1.PaymentService');
    raw.delete('google/protobuf/timestamp.proto');
    expect(() => resolveMethods(raw, 'settle.v1.PaymentService')).toThrow(/timestamp/i);
  });

  it('serves the buf-built bytes of each file unchanged', async () => {
    const original = new Map(
      splitFileDescriptorSet(readFileSync(join(repoRoot, 'src/grpc/descriptors.binpb'))).map(
        (bytes) => [decode(bytes).name, bytes],
      ),
    );
    const reflection = session('v1');
    for (const [name, bytes] of original) {
      const [served] = files(await reflection.ask({ file_by_filename: name }));
      expect(Buffer.compare(served!, Buffer.from(bytes)), name).toBe(0);
    }
  });

  it.each([
    ['settle.v1.PaymentService', ['settle/v1/payment.proto', 'google/protobuf/timestamp.proto']],
    ['settle.v1.PaymentService.CreatePayment', ['settle/v1/payment.proto']],
    ['settle.v1.LedgerService.GetTrialBalance', ['settle/v1/wallet.proto']],
    ['settle.v1.Payment', ['settle/v1/payment.proto']],
    ['.settle.v1.Wallet', ['settle/v1/wallet.proto']],
    ['settle.v1.PaymentState', ['settle/v1/payment.proto']],
    ['settle.v1.PAYMENT_STATE_SUCCEEDED', ['settle/v1/payment.proto']],
    ['google.protobuf.Timestamp', ['google/protobuf/timestamp.proto']],
    ['grpc.health.v1.HealthListResponse.StatusesEntry', ['grpc/health/v1/health.proto']],
    ['grpc.health.v1.HealthCheckResponse.ServingStatus', ['grpc/health/v1/health.proto']],
    ['grpc.reflection.v1.ServerReflection', ['grpc/reflection/v1/reflection.proto']],
  ])('answers file_containing_symbol %s with the defining file first', async (symbol, start) => {
    const names = files(await session('v1').ask({ file_containing_symbol: symbol })).map(
      (bytes) => decode(bytes).name,
    );
    expect(names.slice(0, start.length)).toEqual(start);
    expect(new Set(names).size).toBe(names.length);
  });

  it('answers the same on v1alpha as on v1', async () => {
    const v1 = session('v1');
    const v1alpha = session('v1alpha');
    const requests = [
      { list_services: '' },
      ...LISTED.map((name) => ({ file_containing_symbol: name })),
      { file_by_filename: 'settle/v1/wallet.proto' },
      { file_containing_symbol: 'settle.v1.Nope' },
    ];
    for (const request of requests) {
      expect(await v1alpha.ask(request)).toEqual(await v1.ask(request));
    }
    const raw = await fetchLikeGrpcurl(v1alpha, 'settle.v1.WalletService');
    expect(resolveMethods(raw, 'settle.v1.WalletService')).toEqual([
      'GetWallet(settle.v1.GetWalletRequest) → settle.v1.GetWalletResponse',
    ]);
  });

  it('answers unknown names with error_response NOT_FOUND and keeps the stream open', async () => {
    const reflection = session('v1');
    const unknownSymbol = await reflection.ask({ file_containing_symbol: 'settle.v1.Nope' });
    expect(unknownSymbol.error_response).toEqual({
      error_code: grpc.status.NOT_FOUND,
      error_message: 'symbol not found: settle.v1.Nope',
    });
    expect(unknownSymbol.original_request).toMatchObject({
      file_containing_symbol: 'settle.v1.Nope',
    });
    const unknownFile = await reflection.ask({ file_by_filename: 'nope.proto' });
    expect(unknownFile.error_response?.error_code).toBe(grpc.status.NOT_FOUND);
    const extension = await reflection.ask({
      file_containing_extension: { containing_type: 'settle.v1.Payment', extension_number: 100 },
    });
    expect(extension.error_response?.error_code).toBe(grpc.status.NOT_FOUND);
    const unknownType = await reflection.ask({ all_extension_numbers_of_type: 'settle.v1.Nope' });
    expect(unknownType.error_response?.error_code).toBe(grpc.status.NOT_FOUND);
    const noExtensions = await reflection.ask({
      all_extension_numbers_of_type: 'settle.v1.Payment',
    });
    expect(noExtensions.all_extension_numbers_response).toEqual({
      base_type_name: 'settle.v1.Payment',
      extension_number: [],
    });
    const afterErrors = await reflection.ask({ list_services: '' });
    expect(afterErrors.message_response).toBe('list_services_response');
  });

  it('describes the health service exactly as grpc-health-check implements it', async () => {
    const raw = await fetchLikeGrpcurl(session('v1'), HEALTH_SERVICE_NAME);
    const health = decode(raw.get('grpc/health/v1/health.proto')!);
    const described = health.service
      .find((service) => service.name === 'Health')!
      .method.map((method) => `/${HEALTH_SERVICE_NAME}/${method.name}`);
    const implemented = Object.values(healthServiceDefinition).map((method) => method.path);
    expect(described.sort()).toEqual(implemented.sort());
  });

  it('lets buf curl (a Go client) list and call through reflection', async () => {
    const base = `http://${running!.address}`;
    const flags = ['curl', '--protocol', 'grpc', '--http2-prior-knowledge'];
    const { stdout: listed } = await execFileAsync(bufBin, [...flags, '--list-methods', base]);
    expect(listed).toContain('settle.v1.PaymentService/CreatePayment');
    expect(listed).toContain('grpc.health.v1.Health/Check');
    const { stdout: checked } = await execFileAsync(bufBin, [
      ...flags,
      '-d',
      '{"service":""}',
      `${base}/grpc.health.v1.Health/Check`,
    ]);
    expect(JSON.parse(checked)).toEqual({ status: 'NOT_SERVING' });
  });

  it('refuses to start with a service that is not in the descriptor set', () => {
    const server = new grpc.Server();
    expect(() => addReflection(server, { services: ['settle.v1.Nope'] })).toThrow(
      /settle\.v1\.Nope is not in/,
    );
  });

  it('has a committed vendored descriptor set that matches its protos', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'settle-reflection-'));
    try {
      const out = join(dir, 'grpc-services.binpb');
      await execFileAsync(
        bufBin,
        ['build', reflectionDir, '--as-file-descriptor-set', '--exclude-source-info', '-o', out],
        { cwd: repoRoot },
      );
      const committed = await readFile(join(reflectionDir, 'grpc-services.binpb'));
      expect(Buffer.compare(await readFile(out), committed), 'rebuild it, see buf.yaml').toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
