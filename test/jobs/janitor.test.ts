/**
 * Goal: orders with an unknown outcome are resolved by asking the PSP, never by guessing, and
 * exactly once: a lost webhook is recovered, an order the PSP never heard of fails explicitly,
 * unpaid orders expire (and the PSP registration is cancelled; an order the PSP never
 * registered expires on the cancel's NOT_FOUND, without being registered first), a charge that arrives after
 * expiry is flagged for review and never lost, and two janitors never act on the same order.
 * Method: a real stack whose webhooks cannot reach Settle (SETTLE_PUBLIC_URL points at a closed
 * port), with short janitor timings; the PSP mock's own records are the evidence.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import {
  PaymentOrderState,
  type PaymentOrder,
} from '../../src/grpc/generated/settle/v1/payment.js';
import { PaymentStatus } from '../../src/grpc/generated/settle/psp/v1/psp.js';
import { runCli } from '../../src/cli/settle.js';
import { Janitor } from '../../src/jobs/janitor.js';
import { openDatabase } from '../../src/storage/db.js';
import {
  CARD,
  call,
  count,
  expectMoneyInvariants,
  freePort,
  payOnHostedPage,
  postWebhook,
  pspEvent,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    env: {
      // Webhooks go nowhere: only the janitor can learn what happened at the PSP.
      SETTLE_PUBLIC_URL: `http://127.0.0.1:${await freePort()}`,
      JANITOR_STUCK_MS: '400',
      JANITOR_INTERVAL_MS: '100',
      JANITOR_LEASE_MS: '500',
      ORDER_EXPIRY_MS: '4000',
      CREATE_WAIT_MS: '2000',
    },
  });
});
afterAll(async () => stack?.stop());
afterEach(async () => expectMoneyInvariants(stack.settle.db));

async function create(amountMinor = 500n): Promise<PaymentOrder & { paymentId: string }> {
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-janitor',
    currencyCode: 'USD',
    orders: [{ sellerId: `seller-${randomUUID()}`, amountMinor }],
  });
  const order = created.payment?.orders[0];
  expect(order?.checkoutUrl).not.toBe('');
  return order as PaymentOrder & { paymentId: string };
}

async function order(paymentId: string): Promise<PaymentOrder> {
  const { payment } = await call(stack.payments.getPayment.bind(stack.payments), { paymentId });
  return payment?.orders[0] as PaymentOrder;
}

describe('janitor', () => {
  it('recovers a payment whose webhook never arrived: SUCCEEDED once, from the PSP status', async () => {
    const o = await create(777n);
    await payOnHostedPage(o.checkoutUrl, CARD.success);
    const done = await waitFor(
      async () => {
        const current = await order(o.paymentId);
        return current.state === PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED
          ? current
          : undefined;
      },
      { what: 'the janitor to recover the order', timeoutMs: 3_000 },
    ); // before the 4 s expiry
    expect(done.failureReason).toBe('');
    await new Promise((resolve) => setTimeout(resolve, 1_200)); // more janitor passes
    expect(
      await count(
        stack.settle.db,
        sql`SELECT COUNT(*) AS n FROM ledger_transaction WHERE order_id = ${o.orderId}`,
      ),
    ).toBe(1);
    expect(
      await count(
        stack.settle.db,
        sql`SELECT COUNT(*) AS n FROM payment_order_transition WHERE order_id = ${o.orderId} AND to_state = 'SUCCEEDED'`,
      ),
    ).toBe(1);
  });

  it('recovers a decline the same way', async () => {
    const o = await create();
    await payOnHostedPage(o.checkoutUrl, CARD.decline);
    const done = await waitFor(
      async () => {
        const current = await order(o.paymentId);
        return current.state === PaymentOrderState.PAYMENT_ORDER_STATE_FAILED ? current : undefined;
      },
      { timeoutMs: 3_000 },
    );
    expect(done.failureReason).toBe('card_declined');
  });

  it('fails an order explicitly when the PSP has no record of it (no money can have moved)', async () => {
    const o = await create();
    const psp = openDatabase(stack.config.PSP_MYSQL_URL, { poolSize: 1 });
    try {
      await sql`DELETE FROM psp_payment WHERE nonce = ${o.orderId}`.execute(psp.db);
    } finally {
      await psp.close();
    }
    const done = await waitFor(async () => {
      const current = await order(o.paymentId);
      return current.state === PaymentOrderState.PAYMENT_ORDER_STATE_FAILED ? current : undefined;
    });
    expect(done.failureReason).toBe('PSP_PAYMENT_NOT_FOUND');
  });

  it('leaves an unpaid order EXECUTING until it expires, then cancels it at the PSP', async () => {
    const o = await create();
    await new Promise((resolve) => setTimeout(resolve, 1_000)); // several status checks: still waiting
    expect((await order(o.paymentId)).state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_EXECUTING);
    const expired = await waitFor(
      async () => {
        const current = await order(o.paymentId);
        return current.state === PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED
          ? current
          : undefined;
      },
      { timeoutMs: 15_000, what: 'expiry' },
    );
    expect(expired.failureReason).toBe('EXPIRED');
    const status = await call(stack.pspApi.getPaymentStatus.bind(stack.pspApi), {
      nonce: o.orderId,
    });
    expect(status.status).toBe(PaymentStatus.PAYMENT_STATUS_CANCELLED);
    // The buyer can no longer pay a cancelled registration.
    const late = await call(stack.pspApi.payWithCard.bind(stack.pspApi), {
      token: o.pspToken,
      cardNumber: CARD.success,
    }).catch((error: grpc.ServiceError) => error);
    expect('code' in late ? late.code : late.status).not.toBe(
      PaymentStatus.PAYMENT_STATUS_SUCCEEDED,
    );
    expect(
      (await call(stack.pspApi.listCharges.bind(stack.pspApi), { nonce: o.orderId })).charges,
    ).toHaveLength(0);
  });

  it('expires an order that never reached the PSP without registering it first', async () => {
    // Every registration fails (retryable): the order stays EXECUTING without a token.
    stack.psp.setBehavior({ failNextRegistrations: 1_000 });
    try {
      const created = await call(stack.payments.createPayment.bind(stack.payments), {
        requestId: randomUUID(),
        buyerId: 'buyer-janitor',
        currencyCode: 'USD',
        orders: [{ sellerId: `seller-${randomUUID()}`, amountMinor: 300n }],
      });
      const paymentId = created.payment?.paymentId ?? '';
      const orderId = created.payment?.orders[0]?.orderId ?? '';
      const expired = await waitFor(
        async () => {
          const current = await order(paymentId);
          return current.state === PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED
            ? current
            : undefined;
        },
        { timeoutMs: 15_000, what: 'expiry' },
      );
      // The PSP's NOT_FOUND to the cancel is the answer: EXPIRED, with no token or checkout URL
      // ever created for it.
      expect(expired.failureReason).toBe('EXPIRED');
      expect(expired.checkoutUrl).toBe('');
      const psp = openDatabase(stack.config.PSP_MYSQL_URL, { poolSize: 1 });
      try {
        expect(
          await count(
            psp.db,
            sql<{ n: string }>`SELECT COUNT(*) AS n FROM psp_payment WHERE nonce = ${orderId}`,
          ),
        ).toBe(0);
      } finally {
        await psp.close();
      }
    } finally {
      stack.psp.setBehavior({ failNextRegistrations: 0 });
    }
  });

  it('flags a successful charge that arrives after expiry for review, books nothing', async () => {
    const o = await create(4321n);
    const expired = await waitFor(
      async () => {
        const current = await order(o.paymentId);
        return current.state === PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED
          ? current
          : undefined;
      },
      { timeoutMs: 15_000 },
    );
    expect(expired.state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED);
    const response = await postWebhook(
      stack,
      pspEvent(o.orderId, { amountMinor: 4321n, token: o.pspToken, pspReference: 'psp_late' }),
    );
    expect(response.status).toBe(200);
    await waitFor(
      async () =>
        (await count(
          stack.settle.db,
          sql`SELECT COUNT(*) AS n FROM payment_order WHERE id = ${o.orderId} AND review_reason = 'CHARGED_AFTER_EXPIRY'`,
        )) === 1,
    );
    // What a client and an operator read: expired, yet charged, and flagged.
    const flagged = await order(o.paymentId);
    expect({
      state: flagged.state,
      reviewReason: flagged.reviewReason,
      pspReference: flagged.pspReference,
    }).toEqual({
      state: PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED,
      reviewReason: 'CHARGED_AFTER_EXPIRY',
      pspReference: 'psp_late',
    });
    let shown = '';
    const exitCode = await runCli(
      ['payment', 'get', o.paymentId],
      { SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}` },
      { out: (text) => (shown += text), err: (text) => (shown += text) },
    );
    expect(exitCode).toBe(0);
    expect(shown).toContain('REVIEW CHARGED_AFTER_EXPIRY: charged psp_late, not booked');
    expect(
      await count(
        stack.settle.db,
        sql`SELECT COUNT(*) AS n FROM ledger_entry WHERE order_id = ${o.orderId}`,
      ),
    ).toBe(0);
  });

  it('never lets two janitors act on the same order in one lease period', async () => {
    await stack.settle.janitor.stop(); // only the two racing janitors below
    for (let i = 0; i < 5; i += 1) await create();
    await new Promise((resolve) => setTimeout(resolve, 600)); // all five are now "quiet"
    const hooks = { now: () => new Date(), wakeRelay: () => undefined };
    const options = {
      orderExpiryMs: 60_000,
      stuckMs: 400,
      intervalMs: 60_000,
      batchMax: 100,
      leaseMs: 60_000,
    };
    const a = new Janitor(stack.settle.db, stack.settle.names, options, hooks);
    const b = new Janitor(stack.settle.db, stack.settle.names, options, hooks);
    const [passA, passB] = await Promise.all([a.runOnce(), b.runOnce()]);
    const all = [...passA.checked, ...passB.checked];
    expect(new Set(all).size).toBe(all.length);
    expect(all.length).toBeGreaterThanOrEqual(5);
    // Within the lease neither janitor takes any of them again.
    const [againA, againB] = await Promise.all([a.runOnce(), b.runOnce()]);
    expect([...againA.checked, ...againB.checked]).toEqual([]);
  });
});
