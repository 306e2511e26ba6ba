/**
 * Goal: the health service reports NOT_SERVING until the app says it is ready, then SERVING, for
 * the whole server ("") and each named service, and tells watchers when that changes.
 * Method: a real server on 127.0.0.1:0 with createHealth(); a grpc.health.v1 client built with
 * proto-loader from grpc-health-check's own health.proto calls Check and Watch.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHealth, type Health } from '../../src/grpc/health.js';
import { deadlineIn, startServer, stopServer, waitFor, type RunningServer } from './harness.js';

type CheckResponse = { status: string };
type HealthClient = grpc.Client & {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: CheckResponse) => void,
  ): grpc.ClientUnaryCall;
  Watch(
    request: { service: string },
    options: grpc.CallOptions,
  ): grpc.ClientReadableStream<CheckResponse>;
};

function healthClient(address: string): HealthClient {
  const definition = protoLoader.loadSync(protoPath, { keepCase: true, enums: String });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  const { Health } = loaded.grpc.health.v1;
  return new Health(address, grpc.credentials.createInsecure()) as unknown as HealthClient;
}

describe('health', () => {
  let running: RunningServer | undefined;
  let health: Health | undefined;
  let client: HealthClient | undefined;

  function check(service: string): Promise<string> {
    return new Promise((resolve, reject) => {
      client!.Check({ service }, { deadline: deadlineIn(5_000) }, (error, response) => {
        if (error) reject(error);
        else resolve(response?.status ?? 'UNKNOWN');
      });
    });
  }

  beforeAll(async () => {
    health = createHealth(['settle.v1.PaymentService', 'settle.v1.WalletService']);
    running = await startServer((server) => health!.addToServer(server));
    client = healthClient(running.address);
  });

  afterAll(() => {
    client?.close();
    stopServer(running);
  });

  it('starts NOT_SERVING, turns SERVING on setServing(true) and back on setServing(false)', async () => {
    const services = ['', 'settle.v1.PaymentService', 'settle.v1.WalletService'];
    for (const service of services) expect(await check(service)).toBe('NOT_SERVING');
    health!.setServing(true);
    for (const service of services) expect(await check(service)).toBe('SERVING');
    health!.setServing(false);
    for (const service of services) expect(await check(service)).toBe('NOT_SERVING');
  });

  it('answers NOT_FOUND for a service it does not know', async () => {
    await expect(check('settle.v1.Nope')).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
      details: 'Health status unknown for service settle.v1.Nope',
    });
  });

  it('tells watchers when the status changes', async () => {
    health!.setServing(false);
    const call = client!.Watch({ service: '' }, { deadline: deadlineIn(5_000) });
    const seen: string[] = [];
    call.on('data', (response: CheckResponse) => seen.push(response.status));
    call.on('error', () => {});
    await waitFor(() => seen.length === 1, 'the first status');
    health!.setServing(true);
    await waitFor(() => seen.length === 2, 'the change');
    call.cancel();
    expect(seen).toEqual(['NOT_SERVING', 'SERVING']);
  });
});
