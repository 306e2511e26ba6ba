/**
 * Goal: WatchPayment's bounds hold for the whole life of every watch: at most `watches.max` open
 * watches per node and `watches.perPaymentMax` per payment, each refusal RESOURCE_EXHAUSTED with
 * a message that says what to do, and a slot freed when a watch ends. Method: a PaymentService on
 * a real migrated MariaDB database and a real NATS hub, with small bounds; watchers are woken by
 * "payment changed" hints between admissions, since a woken watcher leaves the listener table
 * while it re-reads the payment (the audit's reproduction: such watchers went uncounted).
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { ERROR_CODE, ResourceExhaustedError, UnavailableError } from '../../src/domain/errors.js';
import { newId } from '../../src/domain/ids.js';
import { names } from '../../src/messaging/subjects.js';
import { PaymentEvents } from '../../src/payments/payment-events.js';
import { PaymentService } from '../../src/payments/payment.service.js';
import {
  insertPaymentOfOneOrder,
  openTestDatabase,
  uniqueSuffix,
  type TestDatabase,
} from '../support/harness.js';

let database: TestDatabase;
let nc: NatsConnection;
let events: PaymentEvents;
const open: AbortController[] = [];

beforeAll(async () => {
  database = await openTestDatabase('settle_watch', { poolSize: 4 });
  nc = await connect({ servers: inject('natsUrl'), noEcho: true });
  events = new PaymentEvents(nc, names(`t${uniqueSuffix()}`, 16), 1_000);
  events.start();
});

afterAll(async () => {
  for (const controller of open) controller.abort();
  events.stop();
  await nc.close();
  await database.close();
});

function service(watches: { max: number; perPaymentMax: number }): PaymentService {
  return new PaymentService({
    db: database.db,
    oneTripDb: database.db,
    names: names('unused', 16),
    risk: { maxPaymentAmountMinor: 1_000_000n, blockedBuyerIds: new Set() },
    events,
    wakeRelay: () => {},
    createWaitMs: 0,
    now: () => new Date(),
    watches,
  });
}

async function executingPayment(): Promise<string> {
  const paymentId = newId('payment');
  await insertPaymentOfOneOrder(database.db, {
    paymentId,
    orderId: newId('order'),
    paymentState: 'EXECUTING',
    orderState: 'EXECUTING',
    at: new Date(),
  });
  return paymentId;
}

type Watch = { controller: AbortController; ended: Promise<void> };

/** Opens a watch; resolves with it once its first message is sent, or with the refusal. */
function openWatch(payments: PaymentService, paymentId: string): Promise<Watch | Error> {
  const controller = new AbortController();
  return new Promise((resolve) => {
    const ended = payments.watch(
      paymentId,
      () => {
        open.push(controller);
        resolve({ controller, ended });
      },
      controller.signal,
    );
    ended.catch((error: unknown) => resolve(error as Error));
  });
}

describe('WatchPayment bounds', () => {
  it('admits no more than watches.max while woken watchers re-read the payment', async () => {
    const payments = service({ max: 3, perPaymentMax: 100 });
    const paymentId = await executingPayment();
    let admitted = 0;
    const refusals: Error[] = [];
    for (let i = 0; i < 20; i += 1) {
      const watch = await openWatch(payments, paymentId);
      if (watch instanceof Error) refusals.push(watch);
      else admitted += 1;
      // Wakes every open watcher: each leaves the listener table to re-read the payment.
      events.publish(paymentId);
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(admitted).toBe(3);
    expect(refusals).toHaveLength(17);
    for (const refusal of refusals) {
      expect(refusal).toBeInstanceOf(ResourceExhaustedError);
      expect((refusal as ResourceExhaustedError).code).toBe(ERROR_CODE.resourceExhausted);
      expect(refusal.message).toBe(
        'this node has 3 open watches, its limit; ' +
          'retry later, on another node, or poll GetPayment instead',
      );
    }
  });

  it('refuses past watches.perPaymentMax on one payment, and admits other payments', async () => {
    const payments = service({ max: 10, perPaymentMax: 2 });
    const paymentId = await executingPayment();
    for (let i = 0; i < 2; i += 1) {
      expect(await openWatch(payments, paymentId)).not.toBeInstanceOf(Error);
      events.publish(paymentId);
    }
    const refusal = await openWatch(payments, paymentId);
    expect(refusal).toBeInstanceOf(ResourceExhaustedError);
    expect((refusal as Error).message).toBe(
      `payment '${paymentId}' has 2 open watches on this node, its limit; ` +
        'share one watch among your readers, or poll GetPayment instead',
    );
    expect(await openWatch(payments, await executingPayment())).not.toBeInstanceOf(Error);
  });

  it('frees a slot when a watch ends', async () => {
    const payments = service({ max: 1, perPaymentMax: 1 });
    const paymentId = await executingPayment();
    const first = await openWatch(payments, paymentId);
    if (first instanceof Error) throw first;
    expect(await openWatch(payments, paymentId)).toBeInstanceOf(ResourceExhaustedError);
    first.controller.abort();
    await first.ended;
    expect(await openWatch(payments, paymentId)).not.toBeInstanceOf(Error);
  });

  it('endWatches ends open watches with UNAVAILABLE and refuses new ones', async () => {
    const payments = service({ max: 10, perPaymentMax: 10 });
    const paymentId = await executingPayment();
    const watch = await openWatch(payments, paymentId);
    if (watch instanceof Error) throw watch;
    payments.endWatches();
    const ended = await watch.ended.then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(ended).toBeInstanceOf(UnavailableError);
    expect((ended as Error).message).toBe('this node is shutting down; watch again');
    const refusal = await openWatch(payments, paymentId);
    expect(refusal).toBeInstanceOf(UnavailableError);
  });
});
