/**
 * Goal: failures are retried with exponential backoff (at most 5 retries) through JetStream,
 * then dead-lettered with their reason; non-retryable failures are never retried; operators can
 * replay or discard dead letters safely; while the PSP breaker is open orders stay EXECUTING.
 * Method: a real stack with short backoff steps; the PSP mock is told to fail; outcomes are read
 * from MySQL (dead_letter, transition history with timestamps) and through AdminService.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { jetstreamManager } from '@nats-io/jetstream';
import { AdminServiceClient, DeadLetterState } from '../../src/grpc/generated/settle/v1/admin.js';
import { ADMIN_TOKEN } from '../admin/admin-support.js';
import { PaymentOrderState } from '../../src/grpc/generated/settle/v1/payment.js';
import type { PspClient } from '../../src/psp/client.js';
import {
  call,
  callError,
  expectMoneyInvariants,
  postWebhook,
  pspEvent,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

const BACKOFF_MS = [100, 200, 400, 800, 1600];
let stack: Stack;
let admin: AdminServiceClient;

beforeAll(async () => {
  stack = await startStack({
    env: {
      RETRY_BACKOFF_MS: BACKOFF_MS.join(','),
      CREATE_WAIT_MS: '0',
      // The breaker half-opens within an order's retries once a test heals the PSP, and its reset
      // must outlast a call's deadline (loadConfig checks): the in-process mock answers in ms.
      PSP_CALL_TIMEOUT_MS: '250',
      PSP_BREAKER_RESET_MS: '300',
      PSP_BREAKER_VOLUME_THRESHOLD: '3',
      ADMIN_TOKEN,
    },
  });
  // AdminService needs the token on every call.
  const withToken: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start: (metadata, listener, next) => {
        metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
        next(metadata, listener);
      },
    });
  admin = new AdminServiceClient(
    `127.0.0.1:${stack.settle.grpcPort}`,
    grpc.credentials.createInsecure(),
    { interceptors: [withToken] },
  );
});
afterAll(async () => {
  admin?.close();
  await stack?.stop();
});
afterEach(async () => {
  stack.psp.setBehavior({ errorRate: 0, failNextRegistrations: 0 });
  await expectMoneyInvariants(stack.settle.db);
});

async function createOrder(amountMinor = 1000n): Promise<{ paymentId: string; orderId: string }> {
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-failures',
    currencyCode: 'USD',
    orders: [{ sellerId: `seller-${randomUUID()}`, amountMinor }],
  });
  return {
    paymentId: created.payment?.paymentId ?? '',
    orderId: created.payment?.orders[0]?.orderId ?? '',
  };
}

async function deadLetterOf(orderId: string) {
  const { deadLetters } = await call(admin.listDeadLetters.bind(admin), {
    pageSize: 10,
    pageToken: '',
    state: 0,
    orderId,
  });
  return deadLetters[0];
}

async function commandConsumer() {
  const jsm = await jetstreamManager(stack.settle.nc);
  return jsm.consumers.info(stack.settle.names.commandStream, stack.settle.names.runtimeConsumer);
}

async function orderState(paymentId: string) {
  const { payment } = await call(stack.payments.getPayment.bind(stack.payments), { paymentId });
  return payment?.orders[0];
}

describe('retries and dead letters', () => {
  it('retries a failing PSP call 5 times with growing delays, then dead-letters it; replay finishes it', async () => {
    stack.psp.setBehavior({ failNextRegistrations: 1_000 });
    const { paymentId, orderId } = await createOrder();
    const dead = await waitFor(() => deadLetterOf(orderId), {
      timeoutMs: 20_000,
      what: 'the dead letter',
    });
    expect(dead.reason).toBe('RETRIES_EXHAUSTED');
    expect(dead.attempts).toBe(6); // the first delivery + 5 retries
    expect(dead.lastError).toMatch(/unavailable|injected/i);
    expect(dead.state).toBe(DeadLetterState.DEAD_LETTER_STATE_OPEN);
    // The first attempt ran on the node that created the order; JetStream made the other five.
    expect(JSON.parse(dead.payload)).toEqual({ type: 'ExecuteOrder', orderId, priorAttempts: 1 });
    // Terminated, not left for JetStream to deliver again after its ack wait.
    await waitFor(async () => (await commandConsumer()).num_ack_pending === 0, {
      what: 'the dead-lettered command terminated',
    });

    // Every attempt is in the timeline; the gaps follow the backoff (±20 % jitter, plus work).
    const failures = (
      await sql<{ created_at: Date }>`SELECT created_at FROM payment_order_transition
        WHERE order_id = ${orderId} AND event_type = 'PspRegistrationFailed' ORDER BY id`.execute(
        stack.settle.db,
      )
    ).rows.map((row) => row.created_at.getTime());
    expect(failures).toHaveLength(6);
    const gaps = failures.slice(1).map((t, i) => t - (failures[i] ?? 0));
    gaps.forEach((gap, i) => {
      expect(gap).toBeGreaterThanOrEqual((BACKOFF_MS[i] ?? 0) * 0.8 - 5);
      expect(gap).toBeLessThan((BACKOFF_MS[i] ?? 0) * 1.2 + 1_000);
    });
    // Never failed for a PSP outage: still EXECUTING, waiting.
    expect((await orderState(paymentId))?.state).toBe(
      PaymentOrderState.PAYMENT_ORDER_STATE_EXECUTING,
    );

    stack.psp.setBehavior({ failNextRegistrations: 0 });
    const replayed = await call(admin.replayDeadLetter.bind(admin), { id: dead.id, reason: '' });
    expect(replayed.deadLetter?.state).toBe(DeadLetterState.DEAD_LETTER_STATE_REPLAYED);
    const order = await waitFor(async () => {
      const o = await orderState(paymentId);
      return o?.checkoutUrl ? o : undefined;
    });
    expect(order.pspToken).toMatch(/^tok_/);
    // Replaying again does no harm: same entry, and no second command. With the relay stopped
    // (its last pass finished, so the first replay's row is gone), any row the replay wrote
    // would stay in the outbox to be seen.
    await stack.settle.relay.stop();
    try {
      const again = await call(admin.replayDeadLetter.bind(admin), { id: dead.id, reason: '' });
      expect(again.deadLetter?.state).toBe(DeadLetterState.DEAD_LETTER_STATE_REPLAYED);
      const rows = await stack.settle.db
        .selectFrom('outbox')
        .select('msg_id')
        .where('msg_id', '=', `replay:${dead.id}`)
        .execute();
      expect(rows).toEqual([]);
    } finally {
      stack.settle.relay.start();
    }
    const registrations = await sql<{ n: string }>`SELECT COUNT(*) AS n
      FROM payment_order_transition
      WHERE order_id = ${orderId} AND event_type = 'PspRegistered'`.execute(stack.settle.db);
    expect(registrations.rows[0]?.n).toBe('1');
    const discard = await callError(admin.discardDeadLetter.bind(admin), {
      id: dead.id,
      reason: 'too late',
    });
    expect(discard.code).toBe(grpc.status.FAILED_PRECONDITION);
  });

  it('never retries a non-retryable failure: dead-lettered after one attempt, then discarded', async () => {
    const { orderId } = await createOrder(1234n);
    const token = await waitFor(
      async () =>
        (
          await sql<{
            psp_token: string | null;
          }>`SELECT psp_token FROM payment_order WHERE id = ${orderId}`.execute(stack.settle.db)
        ).rows[0]?.psp_token ?? undefined,
    );
    // The PSP claims a charge of another amount: the machine refuses it (illegal transition).
    const response = await postWebhook(
      stack,
      pspEvent(orderId, { amountMinor: 9999n, token, pspReference: 'psp_wrong' }),
    );
    expect(response.status).toBe(200);
    const dead = await waitFor(() => deadLetterOf(orderId), { what: 'the dead letter' });
    expect(dead.reason).toBe('NON_RETRYABLE');
    expect(dead.attempts).toBe(1);
    expect(dead.lastError).toMatch(/charged 9999 but the order is for 1234/);
    const noReason = await callError(admin.discardDeadLetter.bind(admin), {
      id: dead.id,
      reason: ' ',
    });
    expect(noReason.code).toBe(grpc.status.INVALID_ARGUMENT);
    const discarded = await call(admin.discardDeadLetter.bind(admin), {
      id: dead.id,
      reason: 'PSP confirmed a data error',
    });
    expect(discarded.deadLetter?.state).toBe(DeadLetterState.DEAD_LETTER_STATE_DISCARDED);
    expect(discarded.deadLetter?.resolutionNote).toMatch(/PSP confirmed a data error/);
    const replay = await callError(admin.replayDeadLetter.bind(admin), { id: dead.id, reason: '' });
    expect(replay.code).toBe(grpc.status.FAILED_PRECONDITION);
    const missing = await callError(admin.replayDeadLetter.bind(admin), {
      id: '999999999',
      reason: '',
    });
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
  });

  it('keeps orders EXECUTING while the PSP breaker is open, and finishes them when it closes', async () => {
    stack.psp.setBehavior({ errorRate: 1 });
    const { paymentId } = await createOrder();
    const psp = stack.settle.psp as PspClient;
    await waitFor(async () => psp.breakerState() === 'OPEN', { what: 'the breaker to open' });
    expect((await orderState(paymentId))?.state).toBe(
      PaymentOrderState.PAYMENT_ORDER_STATE_EXECUTING,
    );
    stack.psp.setBehavior({ errorRate: 0 });
    const order = await waitFor(
      async () => {
        const o = await orderState(paymentId);
        return o?.checkoutUrl ? o : undefined;
      },
      { timeoutMs: 20_000, what: 'registration after the breaker closes' },
    );
    expect(order.state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_EXECUTING);
    expect(psp.breakerState()).toBe('CLOSED');
  });

  it('ignores a decline that arrives after the success (out of order): one ledger transaction, still SUCCEEDED', async () => {
    const { paymentId, orderId } = await createOrder(2500n);
    const registered = await waitFor(async () => {
      const o = await orderState(paymentId);
      return o?.pspToken ? o : undefined;
    });
    await call(stack.pspApi.payWithCard.bind(stack.pspApi), {
      token: registered.pspToken,
      cardNumber: '4242424242424242',
    });
    await waitFor(
      async () =>
        (await orderState(paymentId))?.state === PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED,
    );
    const response = await postWebhook(
      stack,
      pspEvent(orderId, {
        amountMinor: 2500n,
        declineCode: 'card_declined',
        token: registered.pspToken,
      }),
    );
    expect(response.status).toBe(200);
    await waitFor(
      async () =>
        Number(
          (await sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`.execute(stack.settle.db))
            .rows[0]?.n,
        ) === 0,
    );
    // The decline was applied at once or relayed to JetStream: either way it has been handled
    // once the runtime consumer has nothing pending and nothing unacknowledged (the commands the
    // tests above dead-lettered were terminated, so they count in neither).
    await waitFor(
      async () => {
        const consumer = await commandConsumer();
        return consumer.num_pending === 0 && consumer.num_ack_pending === 0;
      },
      { what: 'the command consumer to drain' },
    );
    const after = await orderState(paymentId);
    expect(after?.state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED);
    expect(after?.failureReason).toBe('');
    expect(
      Number(
        (
          await sql<{
            n: string;
          }>`SELECT COUNT(*) AS n FROM ledger_transaction WHERE order_id = ${orderId}`.execute(
            stack.settle.db,
          )
        ).rows[0]?.n,
      ),
    ).toBe(1);
    expect(await deadLetterOf(orderId)).toBeUndefined();
  });
});
