/**
 * Goal: a new order's ExecuteOrder runs on the node that created it, with its outbox row held
 * back from the relay and deleted once the run is done, so no command crosses JetStream; and
 * JetStream stays the backstop: a row whose creator died before running it is relayed when its
 * hold ends (not before), a retryable failure here is retried through JetStream with the attempt
 * made here counted, and a payment that does not fit in the local bound goes through JetStream at
 * once. A new payment's creation publishes no "payment changed" event (nobody can be waiting for
 * it); the run's token is its first. Method: real Settle nodes and the PSP mock (real MariaDB,
 * NATS); what crossed JetStream is read from the command stream itself; "died after the commit"
 * is a PaymentService whose local runner reserves and then never runs, which is exactly what the
 * database holds after such a crash. An approved order is born EXECUTING (its intent to call the
 * PSP in the creation's transaction), so the run's only write is the token.
 */
import { randomUUID } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PaymentService } from '../../src/payments/payment.service.js';
import { PaymentEvents } from '../../src/payments/payment-events.js';
import type { SettleNode } from '../../src/app.js';
import {
  call,
  expectMoneyInvariants,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

const HOLD_MS = 1_500;
let stack: Stack;

beforeAll(async () => {
  stack = await startStack({
    env: {
      LOCAL_EXECUTE_HOLD_MS: String(HOLD_MS),
      RETRY_BACKOFF_MS: '100,200,400,800,1600',
      OUTBOX_POLL_MS: '50',
      CREATE_WAIT_MS: '0',
      // Local runs take half: one order at a time here, the rest through JetStream.
      PSP_IN_FLIGHT_MAX: '2',
    },
  });
});
afterAll(async () => {
  await stack?.stop();
});
afterEach(async () => {
  stack.psp.setBehavior({ failNextRegistrations: 0 });
  await expectMoneyInvariants(stack.settle.db);
});

/** The commands that crossed JetStream for these orders, as the stream stored them. */
async function streamCommands(node: SettleNode, orderIds: readonly string[]) {
  const jsm = await jetstreamManager(node.nc);
  const found: Array<Record<string, unknown>> = [];
  const info = await jsm.streams.info(node.names.commandStream);
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && seq > 0; seq += 1) {
    const message = await jsm.streams
      .getMessage(node.names.commandStream, { seq })
      .catch(() => null);
    const command = message?.json<Record<string, unknown>>();
    if (command !== undefined && orderIds.includes(String(command.orderId))) found.push(command);
  }
  return found;
}

async function outboxRows(orderIds: readonly string[]) {
  const rows = await stack.settle.db
    .selectFrom('outbox')
    .select(['msg_id', 'payload', 'created_at', 'available_at'])
    .where(
      'msg_id',
      'in',
      orderIds.map((id) => `exec:${id}`),
    )
    .execute();
  return rows;
}

async function order(orderId: string) {
  return stack.settle.db
    .selectFrom('payment_order')
    .select(['state', 'psp_token', 'attempts'])
    .where('id', '=', orderId)
    .executeTakeFirstOrThrow();
}

async function registered(orderId: string) {
  return waitFor(
    async () => {
      const row = await order(orderId);
      return row.psp_token === null ? undefined : row;
    },
    { what: `order ${orderId} registered with the PSP` },
  );
}

async function create(sellers: number) {
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-local',
    currencyCode: 'USD',
    orders: Array.from({ length: sellers }, (_, i) => ({
      sellerId: `seller-local-${i}`,
      amountMinor: 1_000n,
    })),
  });
  return (created.payment?.orders ?? []).map((o) => o.orderId);
}

describe('new orders run on the node that created them', () => {
  it('registers the order here, deletes its held row, and sends nothing through JetStream', async () => {
    const relayedBefore = stack.settle.relay.relayed;
    const { deletedWithTransition: withTransitionBefore, handedOver: handedOverBefore } =
      stack.settle.local.counts;
    const [orderId = ''] = await create(1);
    const row = await registered(orderId);
    expect(row.state).toBe('EXECUTING');
    expect(row.attempts).toBe(1);
    // The row went in the same transaction as the token: once the token shows, the row is gone.
    expect(await outboxRows([orderId])).toEqual([]);
    await waitFor(
      async () => stack.settle.local.counts.deletedWithTransition > withTransitionBefore,
      {
        what: 'the run counted as done',
      },
    );
    // Well past the hold: still nothing relayed, nothing in the stream for it.
    await new Promise((resolve) => setTimeout(resolve, HOLD_MS + 200));
    expect(stack.settle.relay.relayed).toBe(relayedBefore);
    expect(await streamCommands(stack.settle, [orderId])).toEqual([]);
    expect(stack.settle.local.counts.handedOver).toBe(handedOverBefore);
  });

  it('writes the order EXECUTING in the creation itself, so the run writes only the token', async () => {
    const [orderId = ''] = await create(1);
    await registered(orderId);
    const history = await sql<{
      version: string;
      from_state: string;
      to_state: string;
      event_type: string;
      created_at: Date;
    }>`
      SELECT version, from_state, to_state, event_type, created_at
      FROM payment_order_transition WHERE order_id = ${orderId} ORDER BY version`.execute(
      stack.settle.db,
    );
    const created = await sql<{ created_at: Date }>`
      SELECT created_at FROM payment_order WHERE id = ${orderId}`.execute(stack.settle.db);
    // v0 is the creation's own row (same timestamp as the order, same transaction); the run's
    // first and only write is the token, v1.
    expect(
      history.rows.map((r) => [Number(r.version), r.from_state, r.to_state, r.event_type]),
    ).toEqual([
      [0, 'NOT_STARTED', 'EXECUTING', 'ExecuteOrder'],
      [1, 'EXECUTING', 'EXECUTING', 'PspRegistered'],
    ]);
    expect(history.rows[0]?.created_at.getTime()).toBe(created.rows[0]?.created_at.getTime());
  });

  it('a payment that does not fit in the local bound goes through JetStream at once', async () => {
    // PSP_IN_FLIGHT_MAX=2 leaves one local run: two orders of one payment do not fit.
    const started = Date.now();
    const orderIds = await create(2);
    for (const orderId of orderIds) await registered(orderId);
    // Not held back: a held row would not be relayed before HOLD_MS had passed.
    expect(Date.now() - started).toBeLessThan(HOLD_MS);
    const commands = await streamCommands(stack.settle, orderIds);
    expect(commands.map((c) => c.orderId).sort()).toEqual([...orderIds].sort());
    expect(commands.every((c) => c.type === 'ExecuteOrder' && c.priorAttempts === undefined)).toBe(
      true,
    );
  });

  it('a retryable failure here is retried through JetStream, with the attempt made here counted', async () => {
    stack.psp.setBehavior({ failNextRegistrations: 1 });
    const [orderId = ''] = await create(1);
    const row = await registered(orderId);
    expect(row.attempts).toBe(2); // one registration attempt here, one from JetStream
    const failures = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM payment_order_transition
      WHERE order_id = ${orderId} AND event_type = 'PspRegistrationFailed'`.execute(
      stack.settle.db,
    );
    expect(Number(failures.rows[0]?.n)).toBe(1);
    // The handed-over command says one attempt was made, so JetStream allows one retry fewer.
    expect(await streamCommands(stack.settle, [orderId])).toEqual([
      { type: 'ExecuteOrder', orderId, priorAttempts: 1 },
    ]);
    await waitFor(async () => (await outboxRows([orderId])).length === 0, {
      what: 'the row relayed and deleted',
    });
  });
});

describe('payment events of a new payment', () => {
  it('publishes none for the creation; the first one is the token written by the run', async () => {
    // Every event of this namespace, heard on the node's command connection: its events
    // connection is opened without echo and would not hear what it publishes.
    const heard: Array<{ paymentId: string; atMs: number }> = [];
    const subscription = stack.settle.nc.subscribe(stack.settle.names.paymentEventSubjectAll, {
      callback: (error, message) => {
        if (error !== null) return;
        const last = message.subject.slice(message.subject.lastIndexOf('.') + 1);
        const ids = last === 'batch' ? message.string().split(' ') : [last];
        for (const paymentId of ids) heard.push({ paymentId, atMs: Date.now() });
      },
    });
    await stack.settle.nc.flush();
    // The registration takes at least this long, so the token's event cannot come before it.
    const latencyMs = 800;
    stack.psp.setBehavior({ latencyMs });
    try {
      const created = await call(stack.payments.createPayment.bind(stack.payments), {
        requestId: randomUUID(),
        buyerId: 'buyer-events',
        currencyCode: 'USD',
        orders: [{ sellerId: 'seller-events', amountMinor: 1_000n }],
      });
      const createdAtMs = Date.now();
      const paymentId = created.payment?.paymentId ?? '';
      const orderId = created.payment?.orders[0]?.orderId ?? '';
      expect(paymentId).not.toBe('');
      // The creation committed before CreatePayment answered; an event of its own would be
      // here well within this wait.
      await new Promise((resolve) => setTimeout(resolve, latencyMs / 2));
      expect(heard.filter((event) => event.paymentId === paymentId)).toEqual([]);
      expect((await order(orderId)).psp_token).toBeNull();
      // The run's token transition is published, heard on this same subscription.
      const first = await waitFor(
        async () => heard.find((event) => event.paymentId === paymentId),
        { what: `the first event of payment ${paymentId}` },
      );
      expect(first.atMs - createdAtMs).toBeGreaterThanOrEqual(latencyMs / 2);
      expect((await order(orderId)).psp_token).not.toBeNull();
    } finally {
      stack.psp.setBehavior({ latencyMs: 0 });
      subscription.unsubscribe();
    }
  });
});

describe('JetStream is the backstop', () => {
  it('a row whose creator died after the commit is relayed when its hold ends, not before', async () => {
    const node = stack.settle;
    // A creator that reserves a local run, commits, then dies before running it.
    const events = new PaymentEvents(node.nc, node.names, 100);
    const dying = new PaymentService({
      db: node.db,
      oneTripDb: node.oneTripDb,
      names: node.names,
      risk: { maxPaymentAmountMinor: 1_000_000n, blockedBuyerIds: new Set() },
      events,
      wakeRelay: () => undefined,
      local: {
        reserve: (_count, now) => new Date(now.getTime() + HOLD_MS),
        unreserve: () => undefined,
        run: () => undefined,
      },
      createWaitMs: 0,
      now: () => new Date(),
    });
    const started = Date.now();
    const payment = await dying.create({
      requestId: randomUUID(),
      buyerId: 'buyer-died',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-died', amountMinor: 500n }],
    });
    const orderId = payment.orders[0]?.id ?? '';
    const [held] = await outboxRows([orderId]);
    expect(held?.available_at.getTime()).toBe((held?.created_at.getTime() ?? 0) + HOLD_MS);

    // Within the hold nobody touches it: born EXECUTING, it is not registered at the PSP.
    await new Promise((resolve) => setTimeout(resolve, HOLD_MS / 2));
    expect(await order(orderId)).toMatchObject({ state: 'EXECUTING', psp_token: null });
    expect(await streamCommands(node, [orderId])).toEqual([]);

    // After it, the live node's relay publishes it and its consumer executes the order.
    const row = await registered(orderId);
    expect(Date.now() - started).toBeGreaterThanOrEqual(HOLD_MS);
    expect(row.state).toBe('EXECUTING');
    expect(await streamCommands(node, [orderId])).toEqual([{ type: 'ExecuteOrder', orderId }]);
    await waitFor(async () => (await outboxRows([orderId])).length === 0, {
      what: 'the relayed row deleted',
    });
    await dying.stop(1_000);
  });
});

describe('stopping', () => {
  // Last in this file: it stops the node's local runner.
  it('a node that stops mid-run makes the rows of its unfinished runs due at once', async () => {
    stack.psp.setBehavior({ latencyMs: 3_000 });
    const [orderId = ''] = await create(1);
    await waitFor(async () => (await order(orderId)).state === 'EXECUTING', {
      what: 'the order EXECUTING, its PSP call in flight',
    });
    // The relay pauses while the row is looked at: once the row is due, a running relay may
    // publish and delete it within milliseconds, before this test reads it.
    await stack.settle.relay.stop();
    const stopping = Date.now();
    await stack.settle.local.stop(100);
    const [row] = await outboxRows([orderId]);
    expect(row, 'the row is kept for another node').toBeDefined();
    expect(row?.available_at.getTime()).toBeLessThanOrEqual(Date.now());
    expect(row?.available_at.getTime()).toBeGreaterThanOrEqual(stopping - 5);
    stack.settle.relay.start();
    stack.psp.setBehavior({ latencyMs: 0 });
    // The relay sends it through JetStream; the consumer finds the order registered or registers
    // it (the PSP answers the same token for the same order).
    await registered(orderId);
    await waitFor(async () => (await outboxRows([orderId])).length === 0, {
      what: 'the row relayed',
    });
  });
});
