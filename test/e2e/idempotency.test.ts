/**
 * Goal: nobody is charged or credited twice, whatever repeats. Method: against a real stack,
 * repeat each input (CreatePayment sequentially and 20 at once, the same webhook 5 times, the
 * same order message delivered to two runtime instances) and count the rows that result; a key
 * left IN_FLIGHT by an earlier version is planted as that version wrote it.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { PaymentState, type Payment } from '../../src/grpc/generated/settle/v1/payment.js';
import { PaymentOrderActor } from '../../src/actors/payment-order/actor.js';
import { parseCreatePayment } from '../../src/payments/validation.js';
import {
  CARD,
  call,
  callError,
  count,
  expectMoneyInvariants,
  payOnHostedPage,
  postWebhook,
  pspEvent,
  rowCounts,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => stack?.stop());
afterEach(async () => expectMoneyInvariants(stack.settle.db));

function request(requestId: string, buyerId: string, amount = 1500n) {
  return {
    requestId,
    buyerId,
    currencyCode: 'USD',
    orders: [
      { sellerId: 'seller-i1', amountMinor: amount },
      { sellerId: 'seller-i2', amountMinor: 250n },
    ],
  };
}

async function getPayment(paymentId: string): Promise<Payment> {
  return (await call(stack.payments.getPayment.bind(stack.payments), { paymentId }))
    .payment as Payment;
}

describe('CreatePayment idempotency', () => {
  it('returns the same payment for the same request and writes nothing new', async () => {
    const buyer = `buyer-${randomUUID()}`;
    const key = randomUUID();
    const first = await call(
      stack.payments.createPayment.bind(stack.payments),
      request(key, buyer),
    );
    const before = await rowCounts(stack.settle.db);
    const second = await call(
      stack.payments.createPayment.bind(stack.payments),
      request(key, buyer),
    );
    expect(second.payment?.paymentId).toBe(first.payment?.paymentId);
    const after = await rowCounts(stack.settle.db);
    expect(after.payment).toBe(before.payment);
    expect(after.payment_order).toBe(before.payment_order);
    expect(after.idempotency_key).toBe(before.idempotency_key);
    // The key is per buyer: another buyer may use the same request_id.
    const other = await call(
      stack.payments.createPayment.bind(stack.payments),
      request(key, `${buyer}-other`),
    );
    expect(other.payment?.paymentId).not.toBe(first.payment?.paymentId);
  });

  it('refuses the same request_id with a different body: ALREADY_EXISTS', async () => {
    const buyer = `buyer-${randomUUID()}`;
    const key = randomUUID();
    await call(stack.payments.createPayment.bind(stack.payments), request(key, buyer, 1500n));
    const before = await rowCounts(stack.settle.db);
    const error = await callError(
      stack.payments.createPayment.bind(stack.payments),
      request(key, buyer, 1501n),
    );
    expect(error.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(error.details).toMatch(
      new RegExp(`request_id ${key} was already used .* with other parameters`),
    );
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it('creates exactly one payment from 20 concurrent identical calls', async () => {
    const buyer = `buyer-${randomUUID()}`;
    const key = randomUUID();
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, () =>
        call(stack.payments.createPayment.bind(stack.payments), request(key, buyer)),
      ),
    );
    // Each waits for the one that wrote the key first, then answers with its payment.
    expect(results.every((result) => result.status === 'fulfilled')).toBe(true);
    const ids = new Set(
      results.map((result) =>
        result.status === 'fulfilled' ? (result.value.payment?.paymentId ?? '') : '',
      ),
    );
    expect(ids.size).toBe(1);
    const payments = await count(
      stack.settle.db,
      sql<{ n: string }>`SELECT COUNT(*) AS n FROM payment WHERE buyer_id = ${buyer}`,
    );
    expect(payments).toBe(1);
    // A retry after the first finished gets the payment.
    const retry = await call(
      stack.payments.createPayment.bind(stack.payments),
      request(key, buyer),
    );
    expect(ids.has(retry.payment?.paymentId ?? '')).toBe(true);
  });
});

describe('a key left IN_FLIGHT by an earlier version (claim first, then create)', () => {
  it('is ABORTED while its lease lasts, and created afresh once it ran out', async () => {
    const buyer = `buyer-legacy-${randomUUID()}`;
    const key = randomUUID();
    const { requestHash } = parseCreatePayment(request(key, buyer));
    await stack.settle.db
      .insertInto('idempotency_key')
      .values({
        buyer_id: buyer,
        request_id: key,
        request_hash: requestHash,
        state: 'IN_FLIGHT',
        payment_id: null,
        lease_until: new Date(Date.now() + 60_000),
        created_at: new Date(),
      })
      .execute();
    const before = await rowCounts(stack.settle.db);
    const error = await callError(
      stack.payments.createPayment.bind(stack.payments),
      request(key, buyer),
    );
    expect(error.code).toBe(grpc.status.ABORTED);
    expect(error.details).toMatch(/still in flight; retry shortly/);
    expect(await rowCounts(stack.settle.db)).toEqual(before);

    // Its node died: once the lease ran out the key is deleted and the request goes through.
    await sql`UPDATE idempotency_key SET lease_until = ${new Date(Date.now() - 1_000)}
              WHERE buyer_id = ${buyer} AND request_id = ${key}`.execute(stack.settle.db);
    const created = await call(
      stack.payments.createPayment.bind(stack.payments),
      request(key, buyer),
    );
    const stored = await stack.settle.db
      .selectFrom('idempotency_key')
      .select(['state', 'payment_id'])
      .where('buyer_id', '=', buyer)
      .where('request_id', '=', key)
      .executeTakeFirstOrThrow();
    expect(stored).toEqual({ state: 'COMPLETED', payment_id: created.payment?.paymentId });
  });
});

describe('webhook and runtime idempotency', () => {
  it('books one ledger transaction for a webhook delivered 5 times', async () => {
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-webhook',
      currencyCode: 'USD',
      orders: [{ sellerId: `seller-w-${randomUUID()}`, amountMinor: 4200n }],
    });
    const order = created.payment?.orders[0];
    await payOnHostedPage(order?.checkoutUrl ?? '', CARD.success);
    await waitFor(
      async () =>
        (await getPayment(created.payment?.paymentId ?? '')).state ===
        PaymentState.PAYMENT_STATE_SUCCEEDED,
    );
    // The PSP re-sends the same event (same id) five more times.
    for (let i = 0; i < 5; i += 1) {
      await call(stack.pspApi.resendWebhook.bind(stack.pspApi), { nonce: order?.orderId ?? '' });
    }
    await waitFor(
      async () =>
        (await count(
          stack.settle.db,
          sql<{
            n: string;
          }>`SELECT COUNT(*) AS n FROM inbox WHERE order_id = ${order?.orderId ?? ''}`,
        )) === 1 &&
        (await count(stack.settle.db, sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`)) === 0,
    );
    // And a replay of a captured delivery, re-signed, five times in parallel.
    const [eventRow] = (
      await sql<{
        event_id: string;
      }>`SELECT event_id FROM inbox WHERE order_id = ${order?.orderId ?? ''}`.execute(
        stack.settle.db,
      )
    ).rows;
    const replayed = pspEvent(order?.orderId ?? '', {
      eventId: eventRow?.event_id ?? '',
      amountMinor: 4200n,
      token: order?.pspToken ?? '',
      pspReference: 'psp_replayed',
    });
    const responses = await Promise.all(
      Array.from({ length: 5 }, () => postWebhook(stack, replayed)),
    );
    expect(responses.every((r) => r.status === 200 && r.body.duplicate)).toBe(true);
    expect(
      await count(
        stack.settle.db,
        sql<{
          n: string;
        }>`SELECT COUNT(*) AS n FROM ledger_transaction WHERE order_id = ${order?.orderId ?? ''}`,
      ),
    ).toBe(1);
    expect(
      await count(
        stack.settle.db,
        sql<{
          n: string;
        }>`SELECT COUNT(*) AS n FROM payment_order_transition WHERE order_id = ${order?.orderId ?? ''} AND to_state = 'SUCCEEDED'`,
      ),
    ).toBe(1);
  });

  it('applies one transition when two runtime instances get the same order message (version fencing)', async () => {
    const seller = `seller-f-${randomUUID()}`;
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-fence',
      currencyCode: 'USD',
      orders: [{ sellerId: seller, amountMinor: 3300n }],
    });
    const orderId = created.payment?.orders[0]?.orderId ?? '';
    expect(created.payment?.orders[0]?.checkoutUrl).not.toBe('');
    const deps = {
      db: stack.settle.db,
      psp: stack.settle.psp,
      notificationUrl: `${stack.settleHttp}/webhooks/psp`,
      now: () => new Date(),
      onTransition: () => undefined,
    };
    // Two "nodes" each hold the order in memory at the same version (EXECUTING, registered).
    const nodeA = new PaymentOrderActor(orderId, deps);
    const nodeB = new PaymentOrderActor(orderId, deps);
    expect(await nodeA.handle({ event: { type: 'ExecuteOrder' } })).toEqual({ kind: 'done' });
    expect(await nodeB.handle({ event: { type: 'ExecuteOrder' } })).toEqual({ kind: 'done' });
    expect(nodeA.snapshot?.version).toBe(nodeB.snapshot?.version);
    const event = {
      type: 'PspSucceeded',
      eventId: 'evt_fence',
      pspReference: 'psp_fence',
      amountMinor: 3300n,
    } as const;
    // A commits first; B's cached copy is now stale and its write must be fenced off.
    expect(await nodeA.handle({ event })).toEqual({ kind: 'done' });
    expect(await nodeB.handle({ event })).toEqual({ kind: 'done' });
    expect(nodeB.snapshot?.state).toBe('SUCCEEDED');
    expect(nodeB.snapshot?.version).toBe(nodeA.snapshot?.version);
    expect(
      await count(
        stack.settle.db,
        sql<{
          n: string;
        }>`SELECT COUNT(*) AS n FROM payment_order_transition WHERE order_id = ${orderId} AND to_state = 'SUCCEEDED'`,
      ),
    ).toBe(1);
    expect(
      await count(
        stack.settle.db,
        sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_entry WHERE order_id = ${orderId}`,
      ),
    ).toBe(2);
    const wallet = await call(stack.wallets.getWallet.bind(stack.wallets), { sellerId: seller });
    expect(wallet.wallet?.balanceMinor).toBe(3300n);
    // Both delivered at the same moment to fresh instances: still one transition.
    const again = await Promise.all([
      new PaymentOrderActor(orderId, deps).handle({ event }),
      new PaymentOrderActor(orderId, deps).handle({ event }),
    ]);
    expect(again).toEqual([{ kind: 'done' }, { kind: 'done' }]);
    expect(
      await count(
        stack.settle.db,
        sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_entry WHERE order_id = ${orderId}`,
      ),
    ).toBe(2);
  });

  it('registers an order with the PSP once even when ExecuteOrder is delivered again', async () => {
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-redeliver',
      currencyCode: 'USD',
      orders: [{ sellerId: `seller-x-${randomUUID()}`, amountMinor: 100n }],
    });
    const order = created.payment?.orders[0];
    const outcomes = await Promise.all(
      Array.from({ length: 3 }, () =>
        stack.settle.dispatch({ type: 'ExecuteOrder', orderId: order?.orderId ?? '' }),
      ),
    );
    expect(outcomes.every((o) => o.kind === 'done')).toBe(true);
    const after = await getPayment(created.payment?.paymentId ?? '');
    expect(after.orders[0]?.pspToken).toBe(order?.pspToken);
    expect(after.orders[0]?.version).toBe(order?.version);
  });
});
