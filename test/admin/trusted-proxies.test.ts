/**
 * Goal: behind a reverse proxy, the bound on wrong admin tokens counts each client, not the
 * proxy. With TRUSTED_PROXIES, a request whose TCP peer is a trusted proxy is counted against the
 * rightmost X-Forwarded-For entry that is not itself a trusted proxy (HTTP header on the panel,
 * `x-forwarded-for` metadata on AdminService), IPv6 grouped by /64 as before; a peer that is no
 * trusted proxy is counted by its own address whatever header it sends; a header a trusted proxy
 * sent that cannot be read puts the proxy itself in the client's place and is counted in
 * settle_forwarded_for_malformed_total. Without TRUSTED_PROXIES the header is never read.
 * Method: real nodes (PSP mock + Settle on MariaDB and NATS) with ADMIN_TOKEN, with and without
 * TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8; the panel is fetched over HTTP and AdminService called
 * over gRPC. Linux routes all of 127.0.0.0/8 to loopback: requests from 127.0.0.1 come from the
 * trusted proxy, requests from a socket bound to 127.0.0.2 (HTTP `localAddress`; gRPC through a
 * TCP relay whose upstream socket is bound there) from an untrusted peer.
 */
import http from 'node:http';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import { AdminServiceClient } from '../../src/grpc/generated/settle/v1/admin.js';
import { callUnary } from '../grpc/harness.js';
import { metricSample, scrapeMetrics, startStack, type Stack } from '../support/harness.js';
import { ADMIN_TOKEN, relayFrom } from './admin-support.js';

const PROXY = '127.0.0.1';
const UNTRUSTED_PEER = '127.0.0.2';

/** A node, its gRPC clients (direct, and from the untrusted peer), and its warn lines. */
type Node = Readonly<{
  stack: Stack;
  logLines: string[];
  /** Starts a fresh window of the node's bound, so a test sees no other test's counts. */
  freshWindow: () => void;
  direct: AdminServiceClient;
  untrusted: AdminServiceClient;
  stop: () => Promise<void>;
}>;

async function startNode(env: Record<string, string>): Promise<Node> {
  const logLines: string[] = [];
  let clockAheadMs = 0;
  const stack = await startStack({
    overrides: {
      logger: createLogger(
        { level: 'warn', name: 'settle' },
        { write: (line) => logLines.push(line) },
      ),
      adminWrongTokens: { nowMs: () => Date.now() + clockAheadMs },
    },
    env: { ADMIN_TOKEN, ...env },
  });
  // grpc-js cannot bind a client socket, so the untrusted peer's calls go through a relay.
  const relay = await relayFrom(UNTRUSTED_PEER, stack.settle.grpcPort);
  const credentials = grpc.credentials.createInsecure();
  const direct = new AdminServiceClient(`127.0.0.1:${stack.settle.grpcPort}`, credentials);
  const untrusted = new AdminServiceClient(`127.0.0.1:${relay.port}`, credentials);
  return {
    stack,
    logLines,
    freshWindow: () => {
      clockAheadMs += 3_600_000;
      logLines.length = 0;
    },
    direct,
    untrusted,
    stop: async () => {
      direct.close();
      untrusted.close();
      await relay.close();
      await stack.stop();
    },
  };
}

/** The panel's payments page with a bearer token, from `localAddress`, with X-Forwarded-For. */
function panel(
  node: Node,
  request: { token: string; from: string; forwardedFor?: string },
): Promise<number> {
  return new Promise((resolve, reject) => {
    const call = http.get(
      `${node.stack.settleHttp}/admin/payments`,
      {
        localAddress: request.from,
        headers: {
          authorization: `Bearer ${request.token}`,
          ...(request.forwardedFor !== undefined && { 'x-forwarded-for': request.forwardedFor }),
        },
        timeout: 10_000,
      },
      (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode ?? 0));
      },
    );
    call.on('error', reject);
    call.on('timeout', () => call.destroy(new Error('timed out')));
  });
}

/** AdminService's ListDeadLetters: `OK`, or the status name and its details. */
async function listDeadLetters(
  client: AdminServiceClient,
  request: { token: string; forwardedFor?: string },
): Promise<string> {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${request.token}`);
  if (request.forwardedFor !== undefined) metadata.set('x-forwarded-for', request.forwardedFor);
  const result = await callUnary(
    client.listDeadLetters.bind(client),
    { pageSize: 1, pageToken: '', state: 0, orderId: '' },
    metadata,
  );
  return result.ok ? 'OK' : `${grpc.status[result.error.code]} ${result.error.details}`;
}

/**
 * Ten wrong tokens, a client's bound, half on the panel and half on AdminService, each pair sent
 * as `forwardedFor[i % length]` says (so one client can come through several proxy chains).
 */
async function guessTenTimes(
  node: Node,
  from: { http: string; grpc: AdminServiceClient },
  forwardedFor: readonly (string | undefined)[],
): Promise<void> {
  for (let i = 0; i < 5; i += 1) {
    const header = forwardedFor[i % forwardedFor.length];
    const token = `wrong-token-${i}-0123456789`;
    expect(
      await panel(node, {
        token,
        from: from.http,
        ...(header !== undefined && { forwardedFor: header }),
      }),
    ).toBe(303);
    expect(
      await listDeadLetters(from.grpc, {
        token,
        ...(header !== undefined && { forwardedFor: header }),
      }),
    ).toMatch(/^UNAUTHENTICATED /);
  }
}

/** Whether `forwardedFor`, sent by the trusted proxy with the right token, is let in on both. */
async function letIn(node: Node, forwardedFor: string | undefined): Promise<[number, string]> {
  const header = forwardedFor !== undefined ? { forwardedFor } : {};
  return [
    await panel(node, { token: ADMIN_TOKEN, from: PROXY, ...header }),
    (await listDeadLetters(node.direct, { token: ADMIN_TOKEN, ...header })).split(':')[0] ?? '',
  ];
}

const LET_IN: [number, string] = [200, 'OK'];
const REFUSED: [number, string] = [
  429,
  'RESOURCE_EXHAUSTED too many wrong admin tokens from your address',
];

/** The clients the node's warn lines name as reaching their bound. */
function clientsLockedOut(node: Node): string[] {
  return node.logLines
    .map((line) => (JSON.parse(line) as { msg: string }).msg)
    .flatMap((msg) => /^10 wrong admin tokens from (\S+) in 60 s: /.exec(msg)?.[1] ?? []);
}

describe('with TRUSTED_PROXIES', () => {
  let node: Node;
  beforeAll(async () => {
    node = await startNode({ TRUSTED_PROXIES: `${PROXY}, 10.0.0.0/8` });
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('counts each client behind the proxy apart: a guesser is refused, another operator let in', async () => {
    node.freshWindow();
    const guesser = '203.0.113.7';
    await guessTenTimes(node, { http: PROXY, grpc: node.direct }, [guesser]);
    // Before TRUSTED_PROXIES, every client behind the proxy was the proxy: this was 429 too.
    expect(await letIn(node, '198.51.100.20')).toEqual(LET_IN);
    expect(await letIn(node, guesser)).toEqual(REFUSED);
    // The proxy itself (its own requests carry no header) is a client of its own.
    expect(await letIn(node, undefined)).toEqual(LET_IN);
    expect(clientsLockedOut(node)).toEqual([guesser]);
  });

  it('reads a chain of proxies from the right: trusted hops skipped, what the client wrote ignored', async () => {
    node.freshWindow();
    const client = '203.0.113.8';
    const spoofed = '198.51.100.99';
    // The client wrote `spoofed` itself; the outer proxy (10.x) appended the client, the inner
    // one (the peer) appended the outer proxy. Two outer proxies take turns.
    await guessTenTimes(node, { http: PROXY, grpc: node.direct }, [
      `${spoofed}, ${client}, 10.1.2.3`,
      `${spoofed}, ${client}, 10.4.5.6`,
      `${client}, 10.7.8.9, 10.1.2.3`,
    ]);
    expect(clientsLockedOut(node)).toEqual([client]);
    expect(await letIn(node, `${client}, 10.4.5.6`)).toEqual(REFUSED);
    expect(await letIn(node, client)).toEqual(REFUSED);
    expect(await letIn(node, spoofed)).toEqual(LET_IN);
    expect(await letIn(node, `${client}, ${spoofed}, 10.1.2.3`)).toEqual(LET_IN);
    // Every entry a trusted proxy: the leftmost is the client.
    expect(await letIn(node, '10.1.2.3, 10.4.5.6')).toEqual(LET_IN);
  });

  it('groups a forwarded IPv6 client by its /64, as a socket address is', async () => {
    node.freshWindow();
    await guessTenTimes(node, { http: PROXY, grpc: node.direct }, [
      '2001:db8:1:2::a',
      '[2001:db8:1:2:ffff::b]:443',
    ]);
    expect(clientsLockedOut(node)).toEqual(['2001:db8:1:2::/64']);
    expect(await letIn(node, '2001:db8:1:2::c')).toEqual(REFUSED);
    expect(await letIn(node, '2001:db8:1:3::a')).toEqual(LET_IN);
  });

  it('ignores X-Forwarded-For from a peer that is no trusted proxy', async () => {
    node.freshWindow();
    const claimed = '203.0.113.50';
    await guessTenTimes(node, { http: UNTRUSTED_PEER, grpc: node.untrusted }, [
      claimed,
      `${claimed}, 10.1.2.3`,
      undefined,
    ]);
    // Counted against the peer, whatever it claimed: it is refused under any name.
    expect(clientsLockedOut(node)).toEqual([UNTRUSTED_PEER]);
    expect(
      await panel(node, { token: ADMIN_TOKEN, from: UNTRUSTED_PEER, forwardedFor: '1.2.3.4' }),
    ).toBe(429);
    expect(
      await listDeadLetters(node.untrusted, { token: ADMIN_TOKEN, forwardedFor: '1.2.3.4' }),
    ).toMatch(/^RESOURCE_EXHAUSTED /);
    // And the address it claimed is not touched.
    expect(await letIn(node, claimed)).toEqual(LET_IN);
  });

  it('puts the proxy in the place of a client whose header it cannot read, and counts it', async () => {
    node.freshWindow();
    const malformed = async () => {
      const text = await scrapeMetrics(node.stack.settleHttp);
      return ['http', 'grpc'].map(
        (surface) => metricSample(text, 'settle_forwarded_for_malformed_total', { surface }) ?? -1,
      );
    };
    const before = await malformed();
    // Not addresses, read before the walk reaches a client; a chain longer than is read.
    await guessTenTimes(node, { http: PROXY, grpc: node.direct }, [
      'not-an-address',
      '203.0.113.9, unknown',
      '203.0.113.9,,10.1.2.3',
      `203.0.113.9, ${Array<string>(16).fill('10.1.2.3').join(', ')}`,
      '',
    ]);
    expect(clientsLockedOut(node)).toEqual([PROXY]);
    const after = await malformed();
    expect(after.map((count, i) => count - (before[i] ?? 0))).toEqual([5, 5]);
    expect(await letIn(node, undefined)).toEqual(REFUSED);
    expect(await letIn(node, '203.0.113.9')).toEqual(LET_IN);
  });
});

describe('without TRUSTED_PROXIES', () => {
  let node: Node;
  beforeAll(async () => {
    node = await startNode({});
  });
  afterAll(async () => {
    await node?.stop();
  });

  it('never reads X-Forwarded-For: every client behind a proxy is the proxy', async () => {
    node.freshWindow();
    await guessTenTimes(node, { http: PROXY, grpc: node.direct }, ['203.0.113.7']);
    expect(clientsLockedOut(node)).toEqual([PROXY]);
    expect(await letIn(node, '198.51.100.20')).toEqual(REFUSED);
    expect(
      metricSample(
        await scrapeMetrics(node.stack.settleHttp),
        'settle_forwarded_for_malformed_total',
        {
          surface: 'http',
        },
      ),
    ).toBe(0);
    // Another peer is still a client of its own.
    expect(await panel(node, { token: ADMIN_TOKEN, from: UNTRUSTED_PEER })).toBe(200);
  });
});
