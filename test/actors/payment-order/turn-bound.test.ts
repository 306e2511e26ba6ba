/**
 * Goal: a turn that reaches its bound on events (EVENTS_PER_TURN_MAX) with events left never
 * drops them and says it is done (the command would be acked and the event lost): it asks for a
 * retry, reports the cut, and the retry finishes the chain from what was committed.
 * Method: real MariaDB, migrated; a real chain of the machine (ExecuteOrder on a NOT_STARTED
 * order → RegisterWithPsp → PspRegistered, two events) under a bound lowered to one event; the
 * PSP port is a stand-in that registers and counts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PaymentOrderActor } from '../../../src/actors/payment-order/actor.js';
import { newId } from '../../../src/domain/ids.js';
import type { Db } from '../../../src/storage/db.js';
import { findPaymentOrder } from '../../../src/storage/repositories/payment-order.repository.js';
import { insertPaymentOfOneOrder, openTestDatabase } from '../../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_turn_bound_t', { poolSize: 2 }));
});
afterAll(async () => {
  await close();
});

describe('a turn that reaches its bound on events', () => {
  it('asks for a retry instead of dropping the events left, and the retry finishes the chain', async () => {
    const orderId = newId('order');
    await insertPaymentOfOneOrder(db, {
      paymentId: newId('payment'),
      orderId,
      paymentState: 'EXECUTING',
      orderState: 'NOT_STARTED',
      at: new Date(),
      attempts: 0,
    });
    let registrations = 0;
    const unused = () => Promise.reject(new Error('not used by this test'));
    const cuts: unknown[] = [];
    const actor = (eventsPerTurnMax?: number) =>
      new PaymentOrderActor(orderId, {
        db,
        psp: {
          register: () => {
            registrations += 1;
            return Promise.resolve({
              token: `tok_${orderId}`,
              checkoutUrl: `http://psp.test/pay/${orderId}`,
            });
          },
          cancel: unused,
          getStatus: unused,
        },
        notificationUrl: 'http://127.0.0.1:1/webhooks/psp',
        now: () => new Date(),
        onTransition: () => undefined,
        onTurnCut: (cut) => cuts.push(cut),
        ...(eventsPerTurnMax !== undefined && { eventsPerTurnMax }),
      });

    const first = await actor(1).handle({ event: { type: 'ExecuteOrder' } });

    // The PSP registered the order, but PspRegistered did not fit in the turn: not done.
    expect(first).toEqual({
      kind: 'retry',
      reason: 'the turn reached its bound of 1 events with PspRegistered left',
    });
    expect(cuts).toEqual([{ orderId, eventsMax: 1, left: ['PspRegistered'] }]);
    expect(registrations).toBe(1);
    expect(await findPaymentOrder(db, orderId)).toMatchObject({ state: 'EXECUTING' });
    expect((await findPaymentOrder(db, orderId))?.pspToken).toBeUndefined();

    // The redelivery (a fresh actor, as on another node) registers again and stores the token.
    const again = await actor().handle({ event: { type: 'ExecuteOrder' } });
    expect(again).toEqual({ kind: 'done' });
    expect(registrations).toBe(2);
    expect(await findPaymentOrder(db, orderId)).toMatchObject({
      state: 'EXECUTING',
      pspToken: `tok_${orderId}`,
    });
    expect(cuts).toHaveLength(1);
  });
});
