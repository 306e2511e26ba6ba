/**
 * Goal: group commit (many actors' transitions, or many creations, in one transaction) keeps
 * every guarantee of the one-transaction-per-transition path: a stale version is fenced per
 * write, even when its fresh twin is in the same batch; one write that fails for its own reason
 * fails alone; the ledger balances and wallets equal the ledger under concurrency, hot seller
 * included. Method: a real stack (MariaDB, NATS, PSP mock); batches are made to happen (many
 * writes submitted in one event-loop turn, batch sizes recorded through onBatch or the node's
 * /debug/stats) and the rows are counted afterwards. The webhook inbox (the durable way of a
 * webhook) is driven directly: a burst of events is recorded together, and a repeated event id
 * in a batch sends that batch event by event. The node answers queries from a pool that refuses
 * packets of several statements, and writes its batches through one that allows them.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { PaymentOrderActor } from '../../src/actors/payment-order/actor.js';
import {
  TransitionBatcher,
  type TransitionWrite,
} from '../../src/actors/payment-order/persistence.js';
import type { PaymentOrder } from '../../src/actors/payment-order/machine.js';
import { findPaymentOrder } from '../../src/storage/repositories/payment-order.repository.js';
import { WalletCurrencyMismatchError } from '../../src/storage/repositories/ledger.repository.js';
import { openDatabase } from '../../src/storage/db.js';
import { connectionPlan } from '../../src/app.js';
import { WebhookInbox, type WebhookEvent } from '../../src/http/webhook-inbox.js';
import { PaymentState } from '../../src/grpc/generated/settle/v1/payment.js';
import {
  call,
  count,
  expectMoneyInvariants,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { DEBUG_STATS: 'true', CREATE_WAIT_MS: '0' } });
});
afterAll(async () => stack?.stop());
afterEach(async () => expectMoneyInvariants(stack.settle.db));

type Timers = Record<string, { count: number; totalMs: number; maxMs: number }>;

/** The node's timers from /debug/stats (DEBUG_STATS is on in this file). */
async function debugTimers(): Promise<Timers> {
  const response = await fetch(`${stack.settleHttp}/debug/stats`, {
    signal: AbortSignal.timeout(5_000),
  });
  return ((await response.json()) as { timers: Timers }).timers;
}

/**
 * The batches of one size timer between two snapshots, and the units they carried: each batch
 * adds its size to the timer's total and one to its count. Cumulative timers can be diffed;
 * their maximum cannot.
 */
function batchesBetween(before: Timers, after: Timers, timer: string) {
  const name = `tx.${timer} (not ms)`;
  return {
    batches: (after[name]?.count ?? 0) - (before[name]?.count ?? 0),
    units: (after[name]?.totalMs ?? 0) - (before[name]?.totalMs ?? 0),
  };
}

/** Creates one-order payments and waits until each order is EXECUTING with a PSP token. */
async function registeredOrders(sellers: readonly string[]): Promise<string[]> {
  const created = await Promise.all(
    sellers.map((sellerId, i) =>
      call(stack.payments.createPayment.bind(stack.payments), {
        requestId: randomUUID(),
        buyerId: 'buyer-group-commit',
        currencyCode: 'USD',
        orders: [{ sellerId, amountMinor: 1000n + BigInt(i) }],
      }),
    ),
  );
  const orderIds = created.map((response) => response.payment?.orders[0]?.orderId ?? '');
  await waitFor(
    async () => {
      const orders = await Promise.all(orderIds.map((id) => findPaymentOrder(stack.settle.db, id)));
      return orders.every((order) => order?.pspToken !== undefined);
    },
    { what: 'orders registered at the PSP' },
  );
  return orderIds;
}

function actorDeps(persist: TransitionBatcher['persist']) {
  return {
    db: stack.settle.db,
    persist,
    psp: stack.settle.psp,
    notificationUrl: `${stack.settleHttp}/webhooks/psp`,
    now: () => new Date(),
    onTransition: () => undefined,
  };
}

function succeeded(order: PaymentOrder) {
  return {
    type: 'PspSucceeded',
    eventId: `evt_gc_${order.id}`,
    pspReference: `psp_gc_${order.id}`,
    amountMinor: order.amountMinor,
  } as const;
}

/** Rows of `table` that belong to the order. */
function rowsOfOrder(table: string, orderId: string): Promise<number> {
  return count(
    stack.settle.db,
    sql<{ n: string }>`SELECT COUNT(*) AS n FROM ${sql.table(table)} WHERE order_id = ${orderId}`,
  );
}

/** The write an order's success makes: SUCCEEDED, with the seller's credit (ledger, wallet). */
function successWrite(
  order: PaymentOrder,
  now: Date,
  more: Partial<TransitionWrite> = {},
): TransitionWrite {
  return {
    previous: order,
    next: { ...order, state: 'SUCCEEDED', pspReference: `psp_t_${order.id}`, updatedAt: now },
    event: succeeded(order),
    effects: [
      {
        type: 'CreditSeller',
        orderId: order.id,
        sellerId: order.sellerId,
        amountMinor: order.amountMinor,
        currency: order.currency,
      },
    ],
    now,
    ...more,
  };
}

describe('group commit of transitions', () => {
  it('fences the stale twin of every order inside one batch and books each order once', async () => {
    const orderIds = await registeredOrders(
      Array.from({ length: 12 }, (_, i) => `seller-gc-${i}-${randomUUID()}`),
    );
    const sizes: number[] = [];
    const failedBatches: number[] = [];
    const batcher = new TransitionBatcher(stack.settle.oneTripDb, {
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 1_000,
      onBatch: (batch) => (batch.ok ? sizes : failedBatches).push(batch.size),
    });
    try {
      // Two "nodes" per order, both holding it at the same version.
      const pairs = orderIds.map((id) => [
        new PaymentOrderActor(id, actorDeps(batcher.persist)),
        new PaymentOrderActor(id, actorDeps(batcher.persist)),
      ]);
      for (const actor of pairs.flat()) {
        expect(await actor.handle({ event: { type: 'ExecuteOrder' } })).toEqual({ kind: 'done' });
      }
      sizes.length = 0;
      // Every twin's PspSucceeded is submitted in the same turn: they share a batch, where the
      // first of each pair is fresh and the second is stale.
      const outcomes = await Promise.all(
        pairs.flat().map((actor) => actor.handle({ event: succeeded(actor.snapshot!) })),
      );
      expect(outcomes.every((outcome) => outcome.kind === 'done')).toBe(true);
      expect(Math.max(...sizes)).toBeGreaterThanOrEqual(orderIds.length * 2);
      // The batch itself told the stale twins apart: it did not fall back to one write at a time.
      expect(failedBatches).toEqual([]);
      for (const [first, second] of pairs) {
        expect(first?.snapshot?.state).toBe('SUCCEEDED');
        // The stale twin reloaded, saw SUCCEEDED and stopped there (a duplicate is a no-op).
        expect(second?.snapshot?.state).toBe('SUCCEEDED');
        expect(second?.snapshot?.version).toBe(first?.snapshot?.version);
      }
      for (const id of orderIds) {
        expect(
          await count(
            stack.settle.db,
            sql<{ n: string }>`SELECT COUNT(*) AS n FROM payment_order_transition
          WHERE order_id = ${id} AND to_state = 'SUCCEEDED'`,
          ),
        ).toBe(1);
        expect(await rowsOfOrder('ledger_entry', id)).toBe(2);
      }
    } finally {
      await batcher.stop(1_000);
    }
  });

  it('writes a batch of fresh transitions in one packet, with its COMMIT', async () => {
    const orderIds = await registeredOrders(
      Array.from({ length: 5 }, (_, i) => `seller-gt-${i}-${randomUUID()}`),
    );
    const orders = (await Promise.all(
      orderIds.map((id) => findPaymentOrder(stack.settle.db, id)),
    )) as PaymentOrder[];
    const statements: string[] = [];
    const counted = openDatabase(stack.config.MYSQL_URL, {
      poolSize: 2,
      multipleStatements: true,
      onQuery: (text) => statements.push(text.trimStart().split(/\s+/, 2).join(' ')),
    });
    const batches: Array<{ size: number; ok: boolean }> = [];
    const batcher = new TransitionBatcher(counted.db, {
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 1_000,
      onBatch: ({ size, ok }) => batches.push({ size, ok }),
    });
    try {
      const now = new Date();
      const results = await Promise.all(
        orders.map((order) =>
          batcher.persist(
            successWrite(order, now, { receipt: { source: 'psp', eventId: `evt_t_${order.id}` } }),
          ),
        ),
      );
      expect(results).toEqual(orders.map(() => true));
      expect(batches).toEqual([{ size: orders.length, ok: true }]);
      // Five orders' transitions, history rows, payments, inbox rows, ledger and wallets, their
      // guards and the COMMIT: one round trip in all (statement by statement takes eleven).
      expect(statements).toEqual(['START TRANSACTION;']);
      for (const id of orderIds) {
        expect(await rowsOfOrder('inbox', id)).toBe(1);
        expect(await rowsOfOrder('ledger_entry', id)).toBe(2);
      }
    } finally {
      await batcher.stop(1_000);
      await counted.close();
    }
  });

  it('answers stale for a write whose version moved, and commits its batch mates', async () => {
    const orderIds = await registeredOrders(
      Array.from({ length: 4 }, (_, i) => `seller-gs-${i}-${randomUUID()}`),
    );
    const orders = await Promise.all(orderIds.map((id) => findPaymentOrder(stack.settle.db, id)));
    const batches: Array<{ size: number; ok: boolean }> = [];
    const batcher = new TransitionBatcher(stack.settle.oneTripDb, {
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 1_000,
      onBatch: ({ size, ok }) => batches.push({ size, ok }),
    });
    try {
      const now = new Date();
      const writes: TransitionWrite[] = orders.map((order, i) => {
        const previous = order as PaymentOrder;
        // The third write claims the version before the order's current one: it is stale.
        const claimed = i === 2 ? { ...previous, version: previous.version - 1n } : previous;
        return successWrite(previous, now, { previous: claimed });
      });
      const results = await Promise.all(writes.map((write) => batcher.persist(write)));
      expect(results).toEqual([true, true, false, true]);
      expect(batches).toEqual([{ size: 4, ok: true }]);
      const after = await Promise.all(orderIds.map((id) => findPaymentOrder(stack.settle.db, id)));
      expect(after.map((order) => order?.state)).toEqual([
        'SUCCEEDED',
        'SUCCEEDED',
        'EXECUTING',
        'SUCCEEDED',
      ]);
      expect(await rowsOfOrder('ledger_entry', orderIds[2] ?? '')).toBe(0);
    } finally {
      await batcher.stop(1_000);
    }
  });

  it('fails only the write that breaks a constraint; its batch mates commit', async () => {
    const orderIds = await registeredOrders(
      Array.from({ length: 3 }, (_, i) => `seller-gf-${i}-${randomUUID()}`),
    );
    const orders = (await Promise.all(
      orderIds.map((id) => findPaymentOrder(stack.settle.db, id)),
    )) as PaymentOrder[];
    // The second order already has its ledger transaction: crediting it again must fail.
    const culprit = orders[1] as PaymentOrder;
    await sql`INSERT INTO ledger_transaction (id, order_id, kind, currency, amount_minor, created_at)
      VALUES (${`ltx_GC${randomUUID().replace(/-/g, '').slice(0, 24).toUpperCase()}`}, ${culprit.id},
        'PAYMENT', 'USD', 1, NOW(3))`.execute(stack.settle.db);
    const sizes: number[] = [];
    const batcher = new TransitionBatcher(stack.settle.oneTripDb, {
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 1_000,
      onBatch: (batch) => sizes.push(batch.size),
    });
    try {
      const now = new Date();
      const settled = await Promise.allSettled(
        orders.map((order) => batcher.persist(successWrite(order, now))),
      );
      expect(sizes[0]).toBe(3);
      expect(settled.map((result) => result.status)).toEqual([
        'fulfilled',
        'rejected',
        'fulfilled',
      ]);
      const after = await Promise.all(orderIds.map((id) => findPaymentOrder(stack.settle.db, id)));
      expect(after.map((order) => order?.state)).toEqual(['SUCCEEDED', 'EXECUTING', 'SUCCEEDED']);
    } finally {
      await batcher.stop(1_000);
      // Undo the planted row so the money invariants of afterEach judge the real writes only.
      await sql`DELETE FROM ledger_transaction WHERE order_id = ${culprit.id}`.execute(
        stack.settle.db,
      );
    }
  });

  it('fails a credit in another currency than its wallet alone, naming the wallet and both currencies', async () => {
    const orderIds = await registeredOrders(
      Array.from({ length: 3 }, (_, i) => `seller-gx-${i}-${randomUUID()}`),
    );
    const orders = (await Promise.all(
      orderIds.map((id) => findPaymentOrder(stack.settle.db, id)),
    )) as PaymentOrder[];
    // The second order's seller already has a wallet in EUR; its order is in USD.
    const culprit = orders[1] as PaymentOrder;
    await sql`INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
      VALUES (${culprit.sellerId}, 'EUR', 0, 1, NOW(3))`.execute(stack.settle.db);
    const sizes: number[] = [];
    const batcher = new TransitionBatcher(stack.settle.oneTripDb, {
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 1_000,
      onBatch: (batch) => sizes.push(batch.size),
    });
    try {
      const now = new Date();
      const settled = await Promise.allSettled(
        orders.map((order) => batcher.persist(successWrite(order, now))),
      );
      // Failed as a batch of 3, then replayed unit by unit: the culprit alone carries the error.
      expect(sizes[0]).toBe(3);
      expect(settled.map((result) => result.status)).toEqual([
        'fulfilled',
        'rejected',
        'fulfilled',
      ]);
      const refused = (settled[1] as PromiseRejectedResult).reason as unknown;
      expect(refused).toBeInstanceOf(WalletCurrencyMismatchError);
      expect(refused).toMatchObject({
        retryable: false,
        message:
          `the wallet of seller ${culprit.sellerId} holds EUR, and a credit of ` +
          `${culprit.amountMinor} minor units is in USD: a wallet holds one currency, so the ` +
          'credit was refused and nothing of its transition was written',
      });
      const after = await Promise.all(orderIds.map((id) => findPaymentOrder(stack.settle.db, id)));
      expect(after.map((order) => order?.state)).toEqual(['SUCCEEDED', 'EXECUTING', 'SUCCEEDED']);
      expect(await rowsOfOrder('ledger_entry', culprit.id)).toBe(0);
    } finally {
      await batcher.stop(1_000);
      // Undo the planted wallet so the money invariants of afterEach judge the real writes only.
      await sql`DELETE FROM wallet WHERE seller_id = ${culprit.sellerId}`.execute(stack.settle.db);
    }
  });
});

describe("the node's two pools", () => {
  it('answers queries from a pool that refuses a second statement; one-packet writes use their own', async () => {
    const refused = await sql`SELECT 1; SELECT 2`
      .execute(stack.settle.db)
      .catch((error: unknown) => error);
    expect((refused as { errno?: number }).errno).toBe(1064); // ER_PARSE_ERROR: nothing ran
    const both = await sql`SELECT 1 AS a; SELECT 2 AS b`.execute(stack.settle.oneTripDb);
    expect(both.rows).toHaveLength(2);
    // And the node's writers use it: the creation and the token are each one packet that
    // committed (a packet refused by the other pool is not counted, and falls back to BEGIN).
    const before = await debugTimers();
    await registeredOrders([`seller-pools-${randomUUID()}`]);
    const after = await debugTimers();
    const packets = (after['sql.start']?.count ?? 0) - (before['sql.start']?.count ?? 0);
    expect(packets).toBeGreaterThanOrEqual(2);
  });

  it('sizes the writers’ pool for every batch in flight and the relay, whatever MYSQL_POOL_SIZE is', async () => {
    expect(connectionPlan({ MYSQL_POOL_SIZE: 16, GROUP_COMMITS_IN_FLIGHT: 4 })).toEqual({
      mainPool: 16,
      writersPool: 9,
      inFlight: { writers: 4, main: 4 },
    });
    // A small main pool no longer shrinks the writers' pool; only the main pool's batches are
    // held to it.
    expect(connectionPlan({ MYSQL_POOL_SIZE: 2, GROUP_COMMITS_IN_FLIGHT: 4 })).toEqual({
      mainPool: 2,
      writersPool: 9,
      inFlight: { writers: 4, main: 2 },
    });
    // The running node's writers' pool holds that many connections at once, and no more.
    const { writersPool } = connectionPlan(stack.config);
    const ids = await Promise.all(
      Array.from({ length: writersPool + 3 }, () =>
        sql<{ id: string }>`SELECT CONNECTION_ID() AS id, SLEEP(0.3) AS slept`
          .execute(stack.settle.oneTripDb)
          .then((result) => String(result.rows[0]?.id)),
      ),
    );
    // (The outbox relay may hold one of them for a moment meanwhile.)
    expect(new Set(ids).size).toBeLessThanOrEqual(writersPool);
    expect(new Set(ids).size).toBeGreaterThanOrEqual(writersPool - 1);
  });
});

describe('a transition alone', () => {
  it('answers a stale write at once from its failed packet: no second way', async () => {
    const [orderId = ''] = await registeredOrders([`seller-ga-${randomUUID()}`]);
    const order = (await findPaymentOrder(stack.settle.db, orderId)) as PaymentOrder;
    const statements: string[] = [];
    const counted = openDatabase(stack.config.MYSQL_URL, {
      poolSize: 1,
      multipleStatements: true,
      onQuery: (text) => statements.push(text.trimStart().split(/\s+/, 2).join(' ')),
    });
    const batcher = new TransitionBatcher(counted.db, {
      batchMax: 1,
      inFlightMax: 1,
      queueMax: 10,
    });
    try {
      const now = new Date();
      const stale = await batcher.persist({
        previous: { ...order, version: order.version - 1n },
        next: { ...order, state: 'SUCCEEDED', pspReference: 'psp_stale', updatedAt: now },
        event: succeeded(order),
        effects: [],
        now,
      });
      expect(stale).toBe(false);
      // The packet stopped at the guard after the UPDATE, which moved nothing: the version is
      // gone. Only successful statements are logged, so what shows is the ROLLBACK alone.
      expect(statements).toEqual(['ROLLBACK']);
      expect((await findPaymentOrder(stack.settle.db, orderId))?.version).toBe(order.version);
    } finally {
      await batcher.stop(1_000);
      await counted.close();
    }
  });
});

describe('group commit of webhook events', () => {
  it('records a burst together; a repeat in a batch is answered duplicate and its mates go through', async () => {
    const orderIds = await registeredOrders(
      Array.from({ length: 6 }, (_, i) => `seller-gw-${i}-${randomUUID()}`),
    );
    const orders = (await Promise.all(
      orderIds.map((id) => findPaymentOrder(stack.settle.db, id)),
    )) as PaymentOrder[];
    const batches: Array<{ size: number; ok: boolean }> = [];
    const inbox = new WebhookInbox(stack.settle.db, stack.settle.names, {
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 100,
      onBatch: ({ size, ok }) => batches.push({ size, ok }),
    });
    const now = new Date();
    const event = (order: PaymentOrder, eventId: string): WebhookEvent => ({
      eventId,
      orderId: order.id,
      outcome: 'SUCCEEDED',
      pspReference: `psp_${eventId}`,
      amountMinor: order.amountMinor.toString(),
      declineCode: null,
      token: order.pspToken ?? '',
      currency: order.currency,
      now,
    });
    const ids = orders.map(() => `evt_gw_${randomUUID()}`);
    try {
      // Five fresh events submitted in one turn: one transaction.
      const first = await Promise.all(
        orders.slice(0, 5).map((order, i) => inbox.record(event(order, ids[i] ?? ''))),
      );
      expect(first).toEqual(['fresh', 'fresh', 'fresh', 'fresh', 'fresh']);
      expect(batches).toEqual([{ size: 5, ok: true }]);
      // A repeat, a fresh event and an unknown order together: the repeat fails the batch's
      // inbox insert, so each goes alone and only the repeat is refused.
      const second = await Promise.all([
        inbox.record(event(orders[0] as PaymentOrder, ids[0] ?? '')),
        inbox.record(event(orders[5] as PaymentOrder, ids[5] ?? '')),
        inbox.record({
          ...event(orders[0] as PaymentOrder, `evt_gw_${randomUUID()}`),
          orderId: `ord_${'9'.repeat(26)}`,
        }),
      ]);
      expect(second).toEqual(['duplicate', 'fresh', 'unknown-order']);
      expect(batches.slice(1)).toEqual([{ size: 3, ok: false }]);
      for (const eventId of ids) {
        expect(
          await count(
            stack.settle.db,
            sql<{ n: string }>`SELECT COUNT(*) AS n FROM inbox WHERE event_id = ${eventId}`,
          ),
        ).toBe(1);
      }
      // Each fresh event's command reaches its order once: six orders SUCCEEDED, one ledger
      // transaction each (the repeat added nothing).
      await waitFor(async () => {
        const after = await Promise.all(
          orderIds.map((id) => findPaymentOrder(stack.settle.db, id)),
        );
        return after.every((order) => order?.state === 'SUCCEEDED');
      });
      for (const orderId of orderIds) {
        expect(await rowsOfOrder('ledger_transaction', orderId)).toBe(1);
      }
    } finally {
      await inbox.stop(1_000);
    }
  });
});

describe('group commit of creations', () => {
  it('creates one payment per request_id when duplicates share a batch with fresh requests', async () => {
    const buyerId = `buyer-gcd-${randomUUID()}`;
    const repeated = randomUUID();
    const request = (requestId: string) => ({
      requestId,
      buyerId,
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-gcd', amountMinor: 4200n }],
    });
    const requests = [
      ...Array.from({ length: 10 }, () => request(randomUUID())),
      ...Array.from({ length: 10 }, () => request(repeated)),
    ];
    const before = await debugTimers();
    const settled = await Promise.allSettled(
      requests.map((r) => call(stack.payments.createPayment.bind(stack.payments), r)),
    );
    const after = await debugTimers();
    // The creations went out together and a batch failed on the repeated key (its packet
    // stopped at the keys' INSERT), then fell back to one creation at a time. Only the 10
    // duplicates can break a batch, so failed batches that carried more than 10 creations held
    // fresh requests too: duplicates and fresh ones shared one.
    const failed = batchesBetween(before, after, 'creations.failed size');
    expect(failed.units).toBeGreaterThan(10);
    // Every call succeeded; all the duplicates got the one payment.
    expect(settled.every((result) => result.status === 'fulfilled')).toBe(true);
    const repeatedIds = new Set(
      settled
        .slice(10)
        .flatMap((result) =>
          result.status === 'fulfilled' ? [result.value.payment?.paymentId] : [],
        ),
    );
    expect(repeatedIds.size).toBe(1);
    expect(
      await count(
        stack.settle.db,
        sql<{ n: string }>`SELECT COUNT(*) AS n FROM payment WHERE buyer_id = ${buyerId}`,
      ),
    ).toBe(11);
  });
});

describe('group commit end to end', () => {
  it('pays 150 orders to spread and hot sellers concurrently, in batches, with the money intact', async () => {
    await call(stack.pspApi.setBehavior.bind(stack.pspApi), {
      autoPayCard: '4242424242424242',
    });
    const before = await debugTimers();
    try {
      const hot = `seller-hot-${randomUUID()}`;
      const created = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          call(stack.payments.createPayment.bind(stack.payments), {
            requestId: randomUUID(),
            buyerId: `buyer-gc-${i % 7}`,
            currencyCode: 'USD',
            orders: [
              { sellerId: hot, amountMinor: 101n + BigInt(i) },
              { sellerId: `seller-gc-a-${i % 5}`, amountMinor: 202n },
              { sellerId: `seller-gc-b-${randomUUID()}`, amountMinor: 303n },
            ],
          }),
        ),
      );
      const paymentIds = created.map((response) => response.payment?.paymentId ?? '');
      await waitFor(
        async () => {
          const states = await Promise.all(
            paymentIds.map(async (paymentId) => {
              const { payment } = await call(stack.payments.getPayment.bind(stack.payments), {
                paymentId,
              });
              return payment?.state;
            }),
          );
          return states.every((state) => state === PaymentState.PAYMENT_STATE_SUCCEEDED);
        },
        { timeoutMs: 30_000, intervalMs: 100, what: '50 payments SUCCEEDED' },
      );
      const wallet = await call(stack.wallets.getWallet.bind(stack.wallets), { sellerId: hot });
      const expected = Array.from({ length: 50 }, (_, i) => 101n + BigInt(i)).reduce(
        (a, b) => a + b,
      );
      expect(wallet.wallet?.balanceMinor).toBe(expected);
      const version = await count(
        stack.settle.db,
        sql<{ n: string }>`SELECT version AS n FROM wallet WHERE seller_id = ${hot}`,
      );
      // One version step per credit, even when credits to this seller shared a batch.
      expect(version).toBe(50);
      // The node really batched: some committed transaction carried more than one transition,
      // and some more than one creation (failed batches are recorded under another name).
      const after = await debugTimers();
      // More units than batches: some batch carried more than one.
      for (const kind of ['transitions', 'creations']) {
        const { batches, units } = batchesBetween(before, after, `${kind}.size`);
        expect(units, kind).toBeGreaterThan(batches);
      }
    } finally {
      await call(stack.pspApi.setBehavior.bind(stack.pspApi), { autoPayCard: '' });
    }
  });
});
