/**
 * Goal: an order the PSP refuses for good, or declines with a code longer than the failure reason
 * holds, still reaches FAILED in the database: the write of its final state cannot fail on the
 * reason's length (`payment_order.failure_reason` is VARCHAR(64) and the server is strict), and
 * what the PSP said is kept whole in the transition's history row. Both ways a transition is
 * written: alone, and in a group-commit batch sent as one packet.
 * Method: the real actor and persistence on a migrated database of the real MariaDB, with a PSP
 * port that answers what each case needs (the messages are the PSP client's own).
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PaymentOrderActor } from '../../../src/actors/payment-order/actor.js';
import type { PspPort } from '../../../src/actors/payment-order/effects.js';
import { TransitionBatcher } from '../../../src/actors/payment-order/persistence.js';
import { FailedPreconditionError, UnavailableError } from '../../../src/domain/errors.js';
import { newId } from '../../../src/domain/ids.js';
import { openDatabase, type Db } from '../../../src/storage/db.js';
import type { Database } from '../../../src/storage/schema.js';
import { findPaymentOrder } from '../../../src/storage/repositories/payment-order.repository.js';
import {
  insertPaymentOfOneOrder,
  openTestDatabase,
  type TestDatabase,
} from '../../support/harness.js';

/** What src/psp/client.ts says when the PSP answers INVALID_ARGUMENT to a registration. */
const REFUSAL = 'the PSP rejected the request: notification_url: must be an absolute http(s) URL';
const LONG_DECLINE = `do_not_honor_${'issuer_said_more_than_fits_'.repeat(5)}`;

let database: TestDatabase;
let writers: ReturnType<typeof openDatabase<Database>>;
let batcher: TransitionBatcher;
beforeAll(async () => {
  database = await openTestDatabase('failreason', { poolSize: 2 });
  writers = openDatabase(database.url, { poolSize: 2, multipleStatements: true });
  batcher = new TransitionBatcher(writers.db, { batchMax: 8, inFlightMax: 1, queueMax: 100 });
});
afterAll(async () => {
  await writers?.close();
  await database?.close();
});

const unused = () => Promise.reject(new Error('not used by this test'));

function actorFor(orderId: string, psp: PspPort, batched: boolean) {
  return new PaymentOrderActor(orderId, {
    db: database.db,
    ...(batched && { persist: batcher.persist }),
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

/** The detail of the order's last history row caused by `eventType`. */
async function lastDetail(db: Db, orderId: string, eventType: string): Promise<string> {
  const { rows } = await sql<{ detail: string }>`SELECT detail FROM payment_order_transition
     WHERE order_id = ${orderId} AND event_type = ${eventType} ORDER BY version DESC LIMIT 1`.execute(
    db,
  );
  return rows[0]?.detail ?? '';
}

describe.each([
  ['alone', false],
  ['in a group-commit batch', true],
] as const)('a final failure written %s', (_way, batched) => {
  it('fails an order the PSP refuses for good, keeping what it said in the history', async () => {
    const orderId = await newOrder();
    const refusing: PspPort = {
      register: () => Promise.reject(new FailedPreconditionError(REFUSAL)),
      cancel: unused,
      getStatus: unused,
    };
    const outcome = await actorFor(orderId, refusing, batched).handle({
      event: { type: 'ExecuteOrder' },
    });
    expect(outcome).toEqual({ kind: 'done' });
    const order = await findPaymentOrder(database.db, orderId);
    expect(order).toMatchObject({ state: 'FAILED', failureReason: 'PSP_REGISTRATION_REFUSED' });
    expect(await lastDetail(database.db, orderId, 'PspRegistrationFailed')).toContain(REFUSAL);
  });

  it('fails an order declined with a code longer than the reason holds, cut to fit', async () => {
    const orderId = await newOrder();
    const registering: PspPort = {
      register: () => Promise.resolve({ token: `tok_${orderId}`, checkoutUrl: 'http://psp/pay' }),
      cancel: unused,
      getStatus: unused,
    };
    const actor = actorFor(orderId, registering, batched);
    expect(await actor.handle({ event: { type: 'ExecuteOrder' } })).toEqual({ kind: 'done' });
    expect(LONG_DECLINE.length).toBeGreaterThan(64);
    const outcome = await actor.handle({
      event: { type: 'PspDeclined', eventId: `status:${orderId}`, declineCode: LONG_DECLINE },
    });
    expect(outcome).toEqual({ kind: 'done' });
    const order = await findPaymentOrder(database.db, orderId);
    expect(order).toMatchObject({ state: 'FAILED', failureReason: LONG_DECLINE.slice(0, 64) });
    expect(await lastDetail(database.db, orderId, 'PspDeclined')).toContain(LONG_DECLINE);
  });
});

describe('a registration the circuit breaker refused', () => {
  it('is reported as not sent, so /metrics does not count it as a PSP error', async () => {
    const orderId = await newOrder();
    const calls: Array<{ op: string; ok: boolean; notSent?: boolean }> = [];
    // What src/psp/client.ts throws while its breaker is open.
    const refused = new UnavailableError('the PSP is unavailable: circuit breaker open', {
      cause: Object.assign(new Error('Breaker is open'), { code: 'EOPENBREAKER' }),
    });
    const actor = new PaymentOrderActor(orderId, {
      db: database.db,
      psp: { register: () => Promise.reject(refused), cancel: unused, getStatus: unused },
      notificationUrl: 'http://127.0.0.1:1/webhooks/psp',
      now: () => new Date(),
      onTransition: () => undefined,
      onPspCall: (call) => calls.push(call),
    });
    await actor.handle({ event: { type: 'ExecuteOrder' } });
    expect(calls).toMatchObject([{ op: 'register', ok: false, notSent: true }]);
  });
});
