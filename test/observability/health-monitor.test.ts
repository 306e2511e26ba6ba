/**
 * Goal: a node reports NOT_SERVING (gRPC health and /healthz) while MySQL is unreachable and
 * SERVING again once it is back, but not for one late probe; and its liveness (/livez) stays up
 * throughout, so a dependency outage never gets the node restarted. Method: a real Settle node
 * whose MySQL traffic goes through a TCP proxy that the test takes down and up; the node's own
 * gRPC health service and HTTP routes are asked, and a HealthMonitor of the test's own, on a pool
 * through the same proxy, is driven probe by probe.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';
import {
  metricSample,
  postWebhook,
  pspEvent,
  scrapeMetrics,
  startStack,
  testDatabaseUrl,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { newId } from '../../src/domain/ids.js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startTcpProxy, type TcpProxy } from '../../src/chaos/tcp-proxy.js';
import { HealthMonitor, type DependencyStatus } from '../../src/observability/health-monitor.js';
import { openDatabase } from '../../src/storage/db.js';

let stack: Stack;
let proxy: TcpProxy;
let proxiedUrl: string;
let health: grpc.Client & {
  check: (req: object, opts: object, cb: (e: unknown, r: { status: string }) => void) => void;
};

beforeAll(async () => {
  const mysql = new URL(inject('mysqlUrl'));
  proxy = await startTcpProxy({ host: mysql.hostname, port: Number(mysql.port || 3306) });
  const proxied = new URL(testDatabaseUrl('settle_health_t'));
  proxied.hostname = '127.0.0.1';
  proxied.port = String(proxy.port);
  proxiedUrl = proxied.toString();
  stack = await startStack({ env: { MYSQL_URL: proxiedUrl } });
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

  it('keeps /livez at 200 while MySQL is down: a dependency outage is no reason to restart', async () => {
    expect((await fetch(`${stack.settleHttp}/livez`)).status).toBe(200);
    proxy.down();
    try {
      await waitFor(async () => (await healthz()).status === 503, {
        timeoutMs: 10_000,
        what: '/healthz 503',
      });
      const live = await fetch(`${stack.settleHttp}/livez`);
      expect(live.status).toBe(200);
      expect(await live.json()).toMatchObject({ status: 'ok' });
    } finally {
      proxy.up();
    }
    await waitFor(async () => (await healthz()).status === 200, {
      timeoutMs: 10_000,
      what: '/healthz 200 again',
    });
  });

  it('counts a webhook answered 503 while MySQL is down, for the PSP to retry', async () => {
    const unavailable = async () =>
      metricSample(await scrapeMetrics(stack.settleHttp), 'settle_webhooks_rejected_total', {
        rejection: 'UNAVAILABLE',
      });
    const before = await unavailable();
    expect(before).toBe(0);
    proxy.down();
    try {
      const event = pspEvent(newId('order'), { amountMinor: 100n, token: 'tok_unavailable' });
      const response = await postWebhook(stack, event);
      expect(response.status).toBe(503);
    } finally {
      proxy.up();
    }
    expect(await unavailable()).toBe(1);
  });

  it('reports MySQL down only after three failed probes in a row, and up at the first answer', async () => {
    const opened = openDatabase(proxiedUrl, { poolSize: 2 });
    let nc: NatsConnection | undefined;
    try {
      nc = await connect({ servers: inject('natsUrl') });
      const changes: DependencyStatus[] = [];
      const monitor = new HealthMonitor(
        opened.db,
        nc,
        { intervalMs: 60_000, probeTimeoutMs: 300 },
        (status) => changes.push(status),
      );
      expect((await monitor.check()).serving).toBe(true);
      proxy.down();
      // One or two late probes (an event-loop pause past the deadline looks the same): serving.
      expect(await monitor.check()).toMatchObject({ mysql: true, serving: true });
      expect(await monitor.check()).toMatchObject({ mysql: true, serving: true });
      expect(changes).toEqual([]);
      expect(await monitor.check()).toMatchObject({ mysql: false, nats: true, serving: false });
      expect(changes.map((change) => change.serving)).toEqual([false]);
      proxy.up();
      await waitFor(async () => (await monitor.check()).serving, {
        timeoutMs: 10_000,
        what: 'serving again',
      });
      expect(changes.map((change) => change.serving)).toEqual([false, true]);
    } finally {
      proxy.up();
      await nc?.close();
      await opened.close();
    }
  });
});
