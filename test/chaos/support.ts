/**
 * Support for the crash-recovery tests: a ChaosCluster (real PSP mock and Settle node processes on
 * the real MariaDB and NATS, each node behind its own MySQL and NATS proxies) with test-sized
 * timers, payment creation over gRPC, paying through the PSP's test driver, condition waits with
 * deadlines, and the exactly-once assertion every test ends with.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { expect, inject } from 'vitest';
import { ChaosCluster } from '../../src/chaos/cluster.js';
import { evaluate, observe } from '../../src/chaos/invariants.js';
import { callUnary, isRetryableStatus } from '../../src/chaos/rpc.js';
import { sleep } from '../../src/chaos/processes.js';
import { TERMINAL_STATES } from '../../src/domain/payment-order.js';
import type { SetBehaviorRequest } from '../../src/grpc/generated/settle/psp/v1/psp.js';
import { TEST_CARD } from '../../src/psp/mock/card.js';

/** Timers short enough for a test: a dead node's commands come back after 2 s. */
export const TEST_NODE_ENV: Readonly<Record<string, string>> = {
  CONSUMER_ACK_WAIT_MS: '2000',
  RETRY_BACKOFF_MS: '200,400,800,1600,3200',
  CREATE_WAIT_MS: '0',
  OUTBOX_POLL_MS: '100',
  PSP_CALL_TIMEOUT_MS: '5000',
  PSP_BREAKER_RESET_MS: '6000',
  SHUTDOWN_GRACE_MS: '2000',
};

export function startCluster(options: {
  nodes: number;
  initialNodes?: number;
  nodeEnv?: Record<string, string>;
}): Promise<ChaosCluster> {
  return ChaosCluster.start({
    nodes: options.nodes,
    ...(options.initialNodes === undefined ? {} : { initialNodes: options.initialNodes }),
    mysqlUrl: inject('mysqlUrl'),
    natsUrl: inject('natsUrl'),
    baseEnv: process.env,
    nodeEnv: { ...TEST_NODE_ENV, ...options.nodeEnv },
    logDir: mkdtempSync(path.join(os.tmpdir(), 'settle-crash-')),
  });
}

export async function setPsp(cluster: ChaosCluster, patch: Partial<SetBehaviorRequest>) {
  const psp = cluster.pspApi;
  await callUnary(psp.setBehavior.bind(psp), patch as SetBehaviorRequest, 5_000);
}

/**
 * Creates `count` payments of `ordersEach` orders on one node (retrying a lost answer with the
 * same request id); returns the payment ids.
 */
export async function createPayments(
  cluster: ChaosCluster,
  options: { count: number; ordersEach: number; node?: number },
): Promise<string[]> {
  const node = cluster.node(options.node ?? 0);
  const client = node.client;
  if (client === undefined) throw new Error(`${node.name} was never started`);
  return Promise.all(
    Array.from({ length: options.count }, async (_, i) => {
      const request = {
        requestId: randomUUID(),
        buyerId: `buyer-${i % 5}`,
        currencyCode: 'USD',
        orders: Array.from({ length: options.ordersEach }, (_, seq) => ({
          sellerId: `seller-${seq}`,
          amountMinor: BigInt(100 + i * 10 + seq),
        })),
      };
      for (let attempt = 1; ; attempt += 1) {
        try {
          const response = await client.payments.createPayment(request, { timeoutMs: 10_000 });
          return response.payment?.paymentId ?? '';
        } catch (error) {
          if (!isRetryableStatus(error) || attempt >= 20) throw error;
          await sleep(250);
        }
      }
    }),
  );
}

export type OrderRow = Readonly<{
  id: string;
  state: string;
  pspToken: string | null;
  checkoutUrl: string | null;
}>;

export async function orderRows(cluster: ChaosCluster): Promise<OrderRow[]> {
  const rows = await cluster.db
    .selectFrom('payment_order')
    .select(['id', 'state', 'psp_token', 'checkout_url'])
    .orderBy('id')
    .execute();
  return rows.map((row) => ({
    id: row.id,
    state: row.state,
    pspToken: row.psp_token,
    checkoutUrl: row.checkout_url,
  }));
}

export async function outboxCount(cluster: ChaosCluster): Promise<number> {
  const result = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`.execute(cluster.db);
  return Number(result.rows[0]?.n ?? 0);
}

/** Polls the orders until `done` holds; fails with the last states after `timeoutMs`. */
export async function waitForOrders(
  cluster: ChaosCluster,
  done: (rows: OrderRow[]) => boolean,
  what: string,
  timeoutMs = 30_000,
): Promise<OrderRow[]> {
  const deadline = Date.now() + timeoutMs;
  let rows: OrderRow[] = [];
  while (Date.now() < deadline) {
    rows = await orderRows(cluster).catch(() => rows);
    if (rows.length > 0 && done(rows)) return rows;
    await sleep(100);
  }
  const states = new Map<string, number>();
  for (const row of rows) {
    const key = `${row.state}${row.pspToken === null ? '' : '+token'}`;
    states.set(key, (states.get(key) ?? 0) + 1);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${[...states].join(' ')}`);
}

/** Pays every registered order on the PSP with the card `cardFor` picks. */
export async function payAll(
  cluster: ChaosCluster,
  rows: readonly OrderRow[],
  cardFor: (index: number) => string = () => TEST_CARD.success,
): Promise<void> {
  const psp = cluster.pspApi;
  await Promise.all(
    rows.map(async (row, index) => {
      const token = row.checkoutUrl?.slice(row.checkoutUrl.lastIndexOf('/') + 1);
      if (token === undefined) throw new Error(`order ${row.id} has no checkout URL`);
      await callUnary(psp.payWithCard.bind(psp), { token, cardNumber: cardFor(index) }, 10_000);
    }),
  );
}

/**
 * Exactly once: at most one PSP charge per order (the PSP's own records), one ledger transaction
 * per SUCCEEDED order and none for the others, every order terminal, balanced ledger, wallets
 * equal to the ledger, and at most one transition into SUCCEEDED or FAILED per order.
 */
export async function expectExactlyOnce(
  cluster: ChaosCluster,
  paymentIds: readonly string[],
): Promise<void> {
  const observed = await observe({ db: cluster.db, psp: cluster.pspApi });
  const evaluation = evaluate(observed, {
    paymentsRequested: paymentIds.length,
    paymentsAcknowledged: paymentIds,
    // The tests keep their payments' ids only; the (buyer, request id) check still applies.
    requestsAcknowledged: [],
    // Every order of a crash test is paid, and none may be left behind.
    abandonedOrders: [],
    ordersMustBeFinal: true,
    forgedWebhooksSent: 0,
    forgedWebhooksAccepted: 0,
    lateDeclinedOrders: [],
    genuineWebhooksRefused: [],
    faultsInjected: {},
    faultKindsPlanned: [],
  });
  expect(evaluation.checks.filter((check) => !check.ok)).toEqual([]);
  expect(observed.deadLetters, 'nothing was dead-lettered').toEqual([]);
  const terminal = observed.orders.filter((order) =>
    (TERMINAL_STATES as ReadonlySet<string>).has(order.state),
  );
  expect(terminal.length, 'every order is terminal').toBe(observed.orders.length);
  const repeated = await sql<{ order_id: string; n: string }>`
    SELECT order_id, COUNT(*) AS n FROM payment_order_transition
    WHERE to_state IN ('SUCCEEDED', 'FAILED') AND from_state <> to_state
    GROUP BY order_id HAVING COUNT(*) > 1`.execute(cluster.db);
  expect(repeated.rows, 'orders that ended twice').toEqual([]);
}
