/**
 * Goal: an order is expired only on the PSP's word that no money can move, and that word must
 * still hold when the order is written EXPIRED. A cancel answered NOT_FOUND says the PSP had no
 * payment when it was asked; if another node's registration of the same order lands right after
 * that answer (its token committed before the expiry is), the order must not be expired on the
 * stale answer, leaving a payable registration (whose checkout URL the buyer may already hold)
 * behind an EXPIRED order: the PSP is asked to cancel again, and its new answer decides.
 * Method: the real actor and persistence on a migrated database of the real MariaDB; two actors
 * for one order stand for two nodes. The PSP port is a small in-memory PSP (payments by nonce,
 * registration idempotent, cancel NOT_FOUND for an unknown nonce) whose cancel lets the other
 * node's registration run between deciding NOT_FOUND and answering it: the race, made certain.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PaymentOrderActor } from '../../../src/actors/payment-order/actor.js';
import type { PspPort, PspStatusView } from '../../../src/actors/payment-order/effects.js';
import { NotFoundError } from '../../../src/domain/errors.js';
import { newId } from '../../../src/domain/ids.js';
import { findPaymentOrder } from '../../../src/storage/repositories/payment-order.repository.js';
import {
  expectMoneyInvariants,
  insertPaymentOfOneOrder,
  openTestDatabase,
  type TestDatabase,
} from '../../support/harness.js';

let database: TestDatabase;
beforeAll(async () => {
  database = await openTestDatabase('expiryrace', { poolSize: 2 });
});
afterAll(async () => {
  await database?.close();
});

/** An in-memory PSP: what the real one does for these calls, with a hook inside cancel. */
class MemoryPsp implements PspPort {
  readonly payments = new Map<string, { status: PspStatusView['status']; token: string }>();
  cancels = 0;
  /** Runs once, inside the first cancel, after it found no payment and before it answers. */
  beforeNotFound: (() => Promise<void>) | undefined;

  register(input: { nonce: string }): Promise<{ token: string; checkoutUrl: string }> {
    const payment = this.payments.get(input.nonce) ?? {
      status: 'REGISTERED' as const,
      token: `tok_${input.nonce}`,
    };
    this.payments.set(input.nonce, payment);
    return Promise.resolve({
      token: payment.token,
      checkoutUrl: `http://psp/pay/${payment.token}`,
    });
  }

  async cancel(nonce: string): Promise<'CANCELLED' | 'SUCCEEDED' | 'DECLINED'> {
    this.cancels += 1;
    const payment = this.payments.get(nonce);
    if (payment === undefined) {
      const hook = this.beforeNotFound;
      this.beforeNotFound = undefined;
      await hook?.();
      throw new NotFoundError('PSP payment', nonce);
    }
    if (payment.status === 'REGISTERED') payment.status = 'CANCELLED';
    return payment.status === 'CANCELLED' ? 'CANCELLED' : payment.status;
  }

  getStatus(nonce: string): Promise<PspStatusView | undefined> {
    const payment = this.payments.get(nonce);
    return Promise.resolve(
      payment === undefined
        ? undefined
        : {
            status: payment.status,
            amountMinor: 500n,
            token: payment.token,
            currency: 'USD',
            pspReference: `psp_${nonce}`,
          },
    );
  }
}

function node(orderId: string, psp: PspPort) {
  return new PaymentOrderActor(orderId, {
    db: database.db,
    psp,
    notificationUrl: 'http://127.0.0.1:1/webhooks/psp',
    now: () => new Date(),
    onTransition: () => undefined,
  });
}

async function newOrder(): Promise<string> {
  const orderId = newId('order');
  await insertPaymentOfOneOrder(database.db, {
    paymentId: newId('payment'),
    orderId,
    paymentState: 'EXECUTING',
    orderState: 'EXECUTING',
    at: new Date(),
  });
  return orderId;
}

/**
 * The race: the expiring node reads the order (no token yet) and asks the PSP to cancel; the PSP
 * finds nothing, and the other node's registration lands and commits its token before the answer
 * gets back (`then` runs after that, say the buyer paying).
 */
async function expireRacingRegistration(
  orderId: string,
  then: (psp: MemoryPsp) => void = () => undefined,
) {
  const psp = new MemoryPsp();
  const registering = node(orderId, psp);
  const expiring = node(orderId, psp);
  psp.beforeNotFound = async () => {
    expect(await registering.handle({ event: { type: 'ExecuteOrder' } })).toEqual({
      kind: 'done',
    });
    expect(await findPaymentOrder(database.db, orderId)).toMatchObject({
      state: 'EXECUTING',
      pspToken: `tok_${orderId}`,
    });
    then(psp);
  };
  expect(await expiring.handle({ event: { type: 'ExpiryDue' } })).toEqual({ kind: 'done' });
  return psp;
}

describe('expiry racing a registration on another node', () => {
  it('cancels again when the registration landed after the PSP answered NOT_FOUND', async () => {
    const orderId = await newOrder();
    const psp = await expireRacingRegistration(orderId);

    const order = await findPaymentOrder(database.db, orderId);
    expect(order).toMatchObject({ state: 'EXPIRED', failureReason: 'EXPIRED' });
    // No payable registration is left behind an expired order: the PSP was asked again.
    expect(psp.payments.get(orderId)?.status).toBe('CANCELLED');
    expect(psp.cancels).toBe(2);
    await expectMoneyInvariants(database.db);
  });

  it('books the charge when the buyer paid that registration before the second cancel', async () => {
    const orderId = await newOrder();
    await expireRacingRegistration(orderId, (psp) => {
      const payment = psp.payments.get(orderId);
      if (payment !== undefined) payment.status = 'SUCCEEDED';
    });

    const order = await findPaymentOrder(database.db, orderId);
    // SUCCEEDED and credited, not EXPIRED with a charge to review.
    expect(order).toMatchObject({ state: 'SUCCEEDED', pspReference: `psp_${orderId}` });
    expect(order?.reviewReason).toBeUndefined();
    await expectMoneyInvariants(database.db);
  });
});
