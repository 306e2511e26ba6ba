/**
 * Goal: the whole pay-in flow works end to end: CreatePayment → actors register each order with
 * the PSP mock → the buyer pays on the hosted page → signed webhook → SUCCEEDED/FAILED with the
 * ledger and wallets written in the same transaction. Method: a real PSP mock and Settle node on
 * free ports, real MariaDB and NATS, the generated gRPC clients, and HTTP GET + form POST on the
 * hosted page as a browser would. Every test ends with the money invariants.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import {
  PaymentOrderState,
  PaymentState,
  type Payment,
  type WatchPaymentResponse,
} from '../../src/grpc/generated/settle/v1/payment.js';
import {
  CARD,
  call,
  callError,
  expectMoneyInvariants,
  payOnHostedPage,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;

beforeAll(async () => {
  stack = await startStack({
    env: { RISK_BLOCKED_BUYERS: 'buyer-blocked', RISK_MAX_PAYMENT_AMOUNT_MINOR: '1000000' },
  });
});
afterAll(async () => stack?.stop());
afterEach(async () => expectMoneyInvariants(stack.settle.db));

async function create(
  orders: Array<[seller: string, amount: bigint]>,
  buyerId = 'buyer-1',
): Promise<Payment> {
  const response = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId,
    currencyCode: 'USD',
    orders: orders.map(([sellerId, amountMinor]) => ({ sellerId, amountMinor })),
  });
  return response.payment as Payment;
}

async function get(paymentId: string): Promise<Payment> {
  const response = await call(stack.payments.getPayment.bind(stack.payments), { paymentId });
  return response.payment as Payment;
}

function waitForState(paymentId: string, state: PaymentState): Promise<Payment> {
  return waitFor(
    async () => {
      const payment = await get(paymentId);
      return payment.state === state ? payment : undefined;
    },
    { what: `payment ${paymentId} to reach ${PaymentState[state]}` },
  );
}

function watch(paymentId: string): Promise<Payment[]> {
  return new Promise((resolve, reject) => {
    const seen: Payment[] = [];
    const stream = stack.payments.watchPayment({ paymentId }, new grpc.Metadata(), {
      deadline: Date.now() + 20_000,
    });
    stream.on(
      'data',
      (message: WatchPaymentResponse) => message.payment && seen.push(message.payment),
    );
    stream.on('error', reject);
    stream.on('end', () => resolve(seen));
  });
}

async function sellerBalance(sellerId: string): Promise<bigint | undefined> {
  try {
    const response = await call(stack.wallets.getWallet.bind(stack.wallets), { sellerId });
    return response.wallet?.balanceMinor;
  } catch (error) {
    if ((error as grpc.ServiceError).code === grpc.status.NOT_FOUND) return undefined;
    throw error;
  }
}

describe('pay-in flow', () => {
  it('pays two sellers through their hosted pages: SUCCEEDED, ledger and wallets credited', async () => {
    const sellerA = `seller-a-${randomUUID()}`;
    const sellerB = `seller-b-${randomUUID()}`;
    const payment = await create([
      [sellerA, 1999n],
      [sellerB, 500n],
    ]);
    expect(payment.paymentId).toMatch(/^pay_/);
    expect(payment.orders).toHaveLength(2);
    expect(payment.amountMinor).toBe(2499n);
    // The API waited for the PSP registration, so the checkout URLs are in the answer.
    for (const order of payment.orders) {
      expect(order.state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_EXECUTING);
      expect(order.checkoutUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/pay\//);
    }
    const watched = watch(payment.paymentId);
    for (const order of payment.orders) {
      const paid = await payOnHostedPage(order.checkoutUrl, CARD.success);
      expect(paid.status).toBe(200);
    }
    const updates = await watched;
    expect(updates.at(-1)?.state).toBe(PaymentState.PAYMENT_STATE_SUCCEEDED);
    expect(updates.length).toBeGreaterThanOrEqual(2);

    const done = await get(payment.paymentId);
    expect(done.state).toBe(PaymentState.PAYMENT_STATE_SUCCEEDED);
    expect(
      done.orders.every((o) => o.state === PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED),
    ).toBe(true);
    expect(await sellerBalance(sellerA)).toBe(1999n);
    expect(await sellerBalance(sellerB)).toBe(500n);

    for (const order of done.orders) {
      const { entries } = await call(stack.ledger.listEntries.bind(stack.ledger), {
        orderId: order.orderId,
        pageSize: 0,
        pageToken: '',
        account: '',
        fromHead: false,
      });
      expect(entries.map((e) => [e.account, e.debitMinor, e.creditMinor]).sort()).toEqual(
        [
          ['psp_receivable', order.amountMinor, 0n],
          [`seller_payable:${order.sellerId}`, 0n, order.amountMinor],
        ].sort(),
      );
      expect(new Set(entries.map((e) => e.transactionId)).size).toBe(1);
    }
    const trial = await call(stack.ledger.getTrialBalance.bind(stack.ledger), {
      pageSize: 0,
      pageToken: '',
    });
    expect(trial.balanced).toBe(true);
    expect(trial.totals.every((t) => t.balanceMinor === 0n)).toBe(true);
  });

  it('fails a declined order with the PSP reason and writes no ledger or wallet row', async () => {
    const seller = `seller-d-${randomUUID()}`;
    const payment = await create([[seller, 700n]]);
    const order = payment.orders[0];
    expect(order?.checkoutUrl).not.toBe('');
    await payOnHostedPage(order?.checkoutUrl ?? '', CARD.decline);
    const done = await waitForState(payment.paymentId, PaymentState.PAYMENT_STATE_FAILED);
    expect(done.orders[0]?.state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_FAILED);
    expect(done.orders[0]?.failureReason).toBe('card_declined');
    const { entries } = await call(stack.ledger.listEntries.bind(stack.ledger), {
      orderId: order?.orderId ?? '',
      pageSize: 0,
      pageToken: '',
      account: '',
      fromHead: false,
    });
    expect(entries).toEqual([]);
    expect(await sellerBalance(seller)).toBeUndefined();
  });

  it('ends PARTIALLY_SUCCEEDED when some orders succeed and others are declined', async () => {
    const good = `seller-g-${randomUUID()}`;
    const bad = `seller-b-${randomUUID()}`;
    const payment = await create([
      [good, 1000n],
      [bad, 2000n],
    ]);
    const byseller = new Map(payment.orders.map((o) => [o.sellerId, o]));
    await payOnHostedPage(byseller.get(good)?.checkoutUrl ?? '', CARD.success);
    await payOnHostedPage(byseller.get(bad)?.checkoutUrl ?? '', CARD.decline);
    await waitForState(payment.paymentId, PaymentState.PAYMENT_STATE_PARTIALLY_SUCCEEDED);
    expect(await sellerBalance(good)).toBe(1000n);
    expect(await sellerBalance(bad)).toBeUndefined();
  });

  it('records a risk-rejected payment as FAILED/RISK_REJECTED without calling the PSP', async () => {
    for (const [buyer, amount] of [
      ['buyer-blocked', 100n],
      ['buyer-1', 1_000_001n],
    ] as const) {
      const payment = await create([[`seller-r-${randomUUID()}`, amount]], buyer);
      expect(payment.state).toBe(PaymentState.PAYMENT_STATE_FAILED);
      expect(payment.failureReason).toBe('RISK_REJECTED');
      expect(payment.orders[0]?.state).toBe(PaymentOrderState.PAYMENT_ORDER_STATE_FAILED);
      expect(payment.orders[0]?.failureReason).toBe('RISK_REJECTED');
      expect(payment.orders[0]?.checkoutUrl).toBe('');
      // The PSP never heard of the order.
      const status = await callError(stack.pspApi.getPaymentStatus.bind(stack.pspApi), {
        nonce: payment.orders[0]?.orderId ?? '',
      });
      expect(status.code).toBe(grpc.status.NOT_FOUND);
    }
  });

  it('lists payments newest first with paging and filters', async () => {
    const buyer = `buyer-list-${randomUUID()}`;
    const created: string[] = [];
    for (let i = 0; i < 5; i += 1)
      created.push((await create([[`seller-l-${i}`, 100n + BigInt(i)]], buyer)).paymentId);
    const seen: string[] = [];
    let pageToken = '';
    for (let page = 0; page < 10; page += 1) {
      const response = await call(stack.payments.listPayments.bind(stack.payments), {
        pageSize: 2,
        pageToken,
        state: 0,
        buyerId: buyer,
      });
      expect(response.payments.length).toBeLessThanOrEqual(2);
      seen.push(...response.payments.map((p) => p.paymentId));
      pageToken = response.nextPageToken;
      if (pageToken === '') break;
    }
    expect(seen).toEqual([...created].reverse());
    const failedOnly = await call(stack.payments.listPayments.bind(stack.payments), {
      pageSize: 100,
      pageToken: '',
      state: PaymentState.PAYMENT_STATE_FAILED,
      buyerId: '',
    });
    expect(failedOnly.payments.every((p) => p.state === PaymentState.PAYMENT_STATE_FAILED)).toBe(
      true,
    );
    // Not vacuous: the risk-rejected payments above are FAILED, the five just created are not.
    expect(failedOnly.payments.length).toBeGreaterThan(0);
    expect(failedOnly.payments.some((p) => created.includes(p.paymentId))).toBe(false);
    const changedFilter = await callError(stack.payments.listPayments.bind(stack.payments), {
      pageSize: 2,
      pageToken: (
        await call(stack.payments.listPayments.bind(stack.payments), {
          pageSize: 2,
          pageToken: '',
          state: 0,
          buyerId: buyer,
        })
      ).nextPageToken,
      state: 0,
      buyerId: 'someone-else',
    });
    expect(changedFilter.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(changedFilter.details).toMatch(/page_token/);
  });

  it('streams a payment until it is terminal and answers NOT_FOUND for an unknown one', async () => {
    const error = await new Promise<grpc.ServiceError>((resolve) => {
      const stream = stack.payments.watchPayment(
        { paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G' },
        new grpc.Metadata(),
        { deadline: Date.now() + 5_000 },
      );
      stream.on('data', () => undefined);
      stream.on('error', resolve);
    });
    expect(error.code).toBe(grpc.status.NOT_FOUND);
    expect(error.details).toMatch(/payment 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G' not found/);
  });
});
