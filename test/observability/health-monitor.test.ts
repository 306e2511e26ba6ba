/**
 * Goal: a node reports NOT_SERVING (gRPC health and /healthz) while MySQL is unreachable and
 * SERVING again once it is back. Method: a real Settle node whose MySQL traffic goes through a
 * TCP proxy that the test takes down and up; the node's own gRPC health service is asked.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import { startStack, testDatabaseUrl, waitFor, type Stack } from '../support/harness.js';
import { startTcpProxy, type TcpProxy } from '../../src/chaos/tcp-proxy.js';

let stack: Stack;
let proxy: TcpProxy;
let health: grpc.Client & {
  check: (req: object, opts: object, cb: (e: unknown, r: { status: string }) => void) => void;
};

beforeAll(async () => {
  const mysql = new URL(inject('mysqlUrl'));
  proxy = await startTcpProxy({ host: mysql.hostname, port: Number(mysql.port || 3306) });
  const proxied = new URL(testDatabaseUrl('settle_health_t'));
  proxied.hostname = '127.0.0.1';
  proxied.port = String(proxy.port);
  stack = await startStack({ env: { MYSQL_URL: proxied.toString() } });
  const definition = protoLoader.loadSync(
    fileURLToPath(
      new URL('../../src/grpc/reflection/proto/grpc/health/v1/health.proto', import.meta.url),
    ),
    { keepCase: true, enums: String },
  );
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: {
      health: {
        v1: {
          Health: new (address: string, credentials: grpc.ChannelCredentials) => typeof health;
        };
      };
    };
  };
  health = new loaded.grpc.health.v1.Health(
    `127.0.0.1:${stack.settle.grpcPort}`,
    grpc.credentials.createInsecure(),
  );
});
afterAll(async () => {
  health?.close();
  proxy?.up();
  await stack?.stop();
  await proxy?.close();
});

function check(): Promise<string> {
  return new Promise((resolve, reject) =>
    health.check({ service: '' }, { deadline: Date.now() + 2_000 }, (error, response) =>
      error
        ? reject(error instanceof Error ? error : new Error(String(error)))
        : resolve(response.status),
    ),
  );
}

async function healthz(): Promise<{ status: number; mysql: string }> {
  const response = await fetch(`${stack.settleHttp}/healthz`);
  const body = (await response.json()) as { mysql: string };
  return { status: response.status, mysql: body.mysql };
}

describe('health monitor', () => {
  it('goes NOT_SERVING while MySQL is down and SERVING after it returns', async () => {
    expect(await check()).toBe('SERVING');
    expect(await healthz()).toEqual({ status: 200, mysql: 'up' });
    proxy.down();
    await waitFor(async () => (await check()) === 'NOT_SERVING', {
      timeoutMs: 10_000,
      what: 'NOT_SERVING',
    });
    expect(await healthz()).toEqual({ status: 503, mysql: 'down' });
    proxy.up();
    await waitFor(async () => (await check()) === 'SERVING', {
      timeoutMs: 10_000,
      what: 'SERVING again',
    });
    expect(await healthz()).toEqual({ status: 200, mysql: 'up' });
  });
});
