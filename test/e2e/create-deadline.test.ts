/**
 * Goal: CreatePayment's wait for checkout URLs ends before the caller's gRPC deadline, so a
 * created payment is answered instead of becoming DEADLINE_EXCEEDED. Method: a real stack whose
 * node waits up to CREATE_WAIT_MS=5000 for URLs and whose PSP mock answers registrations only
 * after 4 s; a CreatePayment with a 1.5 s deadline must come back OK before it, with the payment
 * (no checkout URL yet), which GetPayment then finds.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type {
  CreatePaymentRequest,
  CreatePaymentResponse,
} from '../../src/grpc/generated/settle/v1/payment.js';
import { PaymentState } from '../../src/grpc/generated/settle/v1/payment.js';
import { createConnection } from 'mysql2/promise';
import { parseMysqlUrl, serverAddress } from '../../src/storage/db.js';
import { call, startStack, type Stack } from '../support/harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { CREATE_WAIT_MS: '5000' } });
});
afterAll(async () => {
  stack?.psp.setBehavior({ latencyMs: 0 });
  await stack?.stop();
});

function createWithDeadline(
  request: CreatePaymentRequest,
  timeoutMs: number,
): Promise<{ error: grpc.ServiceError | null; response: CreatePaymentResponse | undefined }> {
  return new Promise((resolve) => {
    stack.payments.createPayment(
      request,
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (error, response) => resolve({ error, response }),
    );
  });
}

describe('CreatePayment and the caller deadline', () => {
  it('answers the created payment before a deadline shorter than CREATE_WAIT_MS', async () => {
    stack.psp.setBehavior({ latencyMs: 4_000 });
    const started = Date.now();
    const { error, response } = await createWithDeadline(
      {
        requestId: randomUUID(),
        buyerId: 'buyer-deadline',
        currencyCode: 'USD',
        orders: [{ sellerId: 'seller-deadline', amountMinor: 1_500n }],
      },
      1_500,
    );
    const elapsedMs = Date.now() - started;
    expect(error?.code === undefined ? 'OK' : grpc.status[error.code]).toBe('OK');
    expect(elapsedMs).toBeLessThan(1_500);
    // It still waited for the URLs while the deadline allowed.
    expect(elapsedMs).toBeGreaterThanOrEqual(1_000);
    const payment = response?.payment;
    expect(payment?.state).toBe(PaymentState.PAYMENT_STATE_EXECUTING);
    expect(payment?.orders[0]?.checkoutUrl ?? '').toBe('');
    const found = await call(stack.payments.getPayment.bind(stack.payments), {
      paymentId: payment?.paymentId ?? '',
    });
    expect(found.payment?.paymentId).toBe(payment?.paymentId);
  });

  it('counts a slow creation write against the deadline too', async () => {
    stack.psp.setBehavior({ latencyMs: 4_000 });
    // The payment table is locked for 900 ms: the creation's write waits that long first.
    const target = parseMysqlUrl(stack.config.MYSQL_URL);
    const locker = await createConnection({ ...serverAddress(target), database: target.database });
    await locker.query('LOCK TABLES payment WRITE');
    const unlocked = new Promise<void>((resolve) =>
      setTimeout(() => {
        void locker.query('UNLOCK TABLES').then(() => resolve());
      }, 900),
    );
    const started = Date.now();
    const { error, response } = await createWithDeadline(
      {
        requestId: randomUUID(),
        buyerId: 'buyer-deadline-slow-write',
        currencyCode: 'USD',
        orders: [{ sellerId: 'seller-deadline', amountMinor: 1_500n }],
      },
      1_500,
    );
    await unlocked;
    await locker.end();
    expect(error?.code === undefined ? 'OK' : grpc.status[error.code]).toBe('OK');
    expect(Date.now() - started).toBeLessThan(1_500);
    expect(response?.payment?.paymentId).toMatch(/^pay_/);
  });
});
