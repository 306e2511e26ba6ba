/**
 * Goal: "payment changed" hints reach every listening node whether they travel alone or, when
 * many payments change in one turn of the event loop (a committed batch), coalesced into one
 * message. Method: two hubs on the real NATS server in a fresh namespace (two "nodes"); one
 * publishes, the other's listeners must all fire before a deadline.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { PaymentEvents, nextChange } from '../../src/payments/payment-events.js';
import { names } from '../../src/messaging/subjects.js';
import { uniqueSuffix } from '../support/harness.js';

let ncA: NatsConnection;
let ncB: NatsConnection;
let publisher: PaymentEvents;
let listener: PaymentEvents;

beforeAll(async () => {
  const topology = names(`t${uniqueSuffix()}`, 16);
  // As the app opens it: without echo, so the publisher hears its own changes only directly.
  ncA = await connect({ servers: inject('natsUrl'), noEcho: true });
  ncB = await connect({ servers: inject('natsUrl') });
  publisher = new PaymentEvents(ncA, topology, 100);
  listener = new PaymentEvents(ncB, topology, 100);
  publisher.start();
  listener.start();
  await ncA.flush();
  await ncB.flush();
});

afterAll(async () => {
  publisher.stop();
  listener.stop();
  await ncA.close();
  await ncB.close();
});

function heard(paymentId: string): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 2_000);
    const stop = listener.listen(paymentId, () => {
      clearTimeout(timer);
      stop?.();
      resolve(true);
    });
  });
}

describe('payment events', () => {
  it('delivers a single change on its own subject to another node', async () => {
    const waiting = heard('pay_single');
    publisher.publish('pay_single');
    expect(await waiting).toBe(true);
  });

  it('delivers every change of one turn to another node, coalesced', async () => {
    const ids = Array.from({ length: 25 }, (_, i) => `pay_batch_${i}`);
    const waiting = Promise.all(ids.map(heard));
    for (const id of ids) publisher.publish(id);
    expect(await waiting).toEqual(ids.map(() => true));
  });

  it('wakes nextChange on the node that published too, without the change coming back', async () => {
    const started = Date.now();
    const change = nextChange(publisher, 'pay_local', 5_000);
    publisher.publish('pay_other');
    publisher.publish('pay_local');
    await change;
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('tells a waiter on the publishing node once per change', async () => {
    let calls = 0;
    const stop = publisher.listen('pay_once', () => (calls += 1));
    const across = heard('pay_once');
    publisher.publish('pay_once');
    // Once the other node heard it, an echo would be on its way back to this one as well.
    expect(await across).toBe(true);
    await ncA.flush();
    await new Promise((resolve) => setTimeout(resolve, 200));
    stop?.();
    expect(calls).toBe(1);
  });
});
