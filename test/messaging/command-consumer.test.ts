/**
 * Goal: a command whose handling takes longer than the consumer's ack_wait is not redelivered
 * mid-turn (which burnt its deliveries until a healthy order was dead-lettered as
 * MAX_DELIVERIES), yet a handler that hangs still gets its message back, after a bounded time.
 * Method: a real Settle node and PSP mock (MariaDB, NATS) with ack_wait below the PSP's latency,
 * commands through JetStream only; and the consumer alone on a namespace of its own, with a
 * handler that never answers. Outcomes are read from MySQL and from the deliveries seen.
 */
import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { CommandConsumer } from '../../src/messaging/command-consumer.js';
import { deleteTopology, ensureTopology } from '../../src/messaging/nats.js';
import { names as topologyNames } from '../../src/messaging/subjects.js';
import { call, count, startStack, uniqueSuffix, waitFor, type Stack } from '../support/harness.js';

const ACK_WAIT_MS = 1_000;

describe('a turn longer than ack_wait', () => {
  let stack: Stack | undefined;
  afterAll(async () => {
    await stack?.stop();
  });

  it('is not redelivered mid-turn: failed registrations are retried, and no dead letter', async () => {
    stack = await startStack({
      env: {
        CONSUMER_ACK_WAIT_MS: String(ACK_WAIT_MS),
        PSP_LATENCY_MS: '1300',
        PSP_CALL_TIMEOUT_MS: '3000',
        // Every ExecuteOrder goes through JetStream.
        LOCAL_EXECUTE_HOLD_MS: '0',
        RETRY_BACKOFF_MS: '100,100,100,100,100',
        CREATE_WAIT_MS: '0',
      },
    });
    const { db } = stack.settle;
    stack.psp.setBehavior({ failNextRegistrations: 4 });
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-slow-psp',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-slow-psp', amountMinor: 1000n }],
    });
    const orderId = created.payment?.orders[0]?.orderId ?? '';
    await waitFor(
      async () =>
        (await count(
          db,
          sql`SELECT COUNT(*) AS n FROM payment_order WHERE id = ${orderId} AND psp_token IS NOT NULL`,
        )) === 1,
      { timeoutMs: 30_000, what: 'the order registered with the PSP' },
    );
    // The advisory of a message out of deliveries comes an ack_wait after its last delivery.
    const jsm = await jetstreamManager(stack.settle.nc);
    await waitFor(
      async () =>
        (
          await jsm.consumers.info(
            stack?.settle.names.commandStream ?? '',
            stack?.settle.names.runtimeConsumer ?? '',
          )
        ).num_ack_pending === 0,
      { what: 'every command answered' },
    );
    await new Promise((resolve) => setTimeout(resolve, 3 * ACK_WAIT_MS));

    const deadLetters = await db
      .selectFrom('dead_letter')
      .select(['reason', 'last_error'])
      .where('order_id', '=', orderId)
      .execute();
    expect(deadLetters).toEqual([]);
    const events = await sql<{ event_type: string; n: string }>`SELECT event_type, COUNT(*) AS n
      FROM payment_order_transition WHERE order_id = ${orderId}
      AND event_type IN ('PspRegistrationFailed', 'PspRegistered') GROUP BY event_type
      ORDER BY event_type`.execute(db);
    expect(events.rows).toEqual([
      { event_type: 'PspRegistered', n: '1' },
      { event_type: 'PspRegistrationFailed', n: '4' },
    ]);
  }, 60_000);
});

describe('a handler that hangs', () => {
  const names = topologyNames(`t${uniqueSuffix()}`, 1);
  let nc: NatsConnection | undefined;
  let consumer: CommandConsumer | undefined;
  afterAll(async () => {
    await consumer?.stop(0);
    if (nc !== undefined) {
      await deleteTopology(nc, names);
      await nc.close();
    }
  });

  it('gets its message back after workingMsMax plus ack_wait, not before', async () => {
    nc = await connect({ servers: inject('natsUrl') });
    const jsm = await ensureTopology(nc, names, {
      ackWaitMs: ACK_WAIT_MS,
      maxDeliver: 3,
      maxAckPending: 10,
    });
    const workingMsMax = 2_500;
    const deliveredAt: number[] = [];
    consumer = new CommandConsumer(
      nc,
      jetstream(nc),
      jsm,
      names,
      () => {
        deliveredAt.push(Date.now());
        // The first delivery hangs; the redelivery answers.
        return deliveredAt.length === 1
          ? new Promise(() => undefined)
          : Promise.resolve({ kind: 'done' });
      },
      {
        inFlightMax: 4,
        ackWaitMs: ACK_WAIT_MS,
        workingMsMax,
        backoffMs: [100, 100],
        jitter: 0,
        recordDeadLetter: () => Promise.resolve(),
      },
    );
    await consumer.start();
    const orderId = `ord_${randomUUID()}`;
    await jetstream(nc).publish(
      names.commandSubject(orderId),
      JSON.stringify({ type: 'ExecuteOrder', orderId }),
    );
    await waitFor(() => Promise.resolve(deliveredAt.length >= 2), {
      timeoutMs: workingMsMax + 3 * ACK_WAIT_MS,
      what: 'the redelivery',
    });
    const [first = 0, second = 0] = deliveredAt;
    // Kept while in progress (ack_wait alone would have redelivered it after 1 s)...
    expect(second - first).toBeGreaterThanOrEqual(workingMsMax);
    // ...but no longer than workingMsMax, one report interval and one ack_wait.
    expect(second - first).toBeLessThan(workingMsMax + ACK_WAIT_MS / 3 + ACK_WAIT_MS + 500);
  }, 20_000);
});

describe('a message out of deliveries without an answer', () => {
  const names = topologyNames(`t${uniqueSuffix()}`, 1);
  let nc: NatsConnection | undefined;
  const consumers: CommandConsumer[] = [];
  afterAll(async () => {
    for (const consumer of consumers) await consumer.stop(0);
    if (nc !== undefined) {
      await deleteTopology(nc, names);
      await nc.close();
    }
  });

  it('is dead-lettered as MAX_DELIVERIES, counted once by the node that recorded it', async () => {
    nc = await connect({ servers: inject('natsUrl') });
    const jsm = await ensureTopology(nc, names, {
      ackWaitMs: ACK_WAIT_MS,
      maxDeliver: 2,
      maxAckPending: 10,
    });
    const reported: Array<{ node: string; reason: string }> = [];
    let recorded = false;
    // Two nodes hear the advisory; the dead_letter table's key lets one of them record it.
    for (const node of ['a', 'b']) {
      const consumer = new CommandConsumer(
        nc,
        jetstream(nc),
        jsm,
        names,
        () => new Promise(() => undefined), // hangs: a node that died mid-turn
        {
          inFlightMax: 4,
          ackWaitMs: ACK_WAIT_MS,
          workingMsMax: 200,
          backoffMs: [100],
          jitter: 0,
          recordDeadLetter: () => {
            const first = !recorded;
            recorded = true;
            return Promise.resolve(first);
          },
          onDeadLetter: (entry) => reported.push({ node, reason: entry.reason }),
        },
      );
      consumers.push(consumer);
      await consumer.start();
    }
    const orderId = `ord_${randomUUID()}`;
    await jetstream(nc).publish(
      names.commandSubject(orderId),
      JSON.stringify({ type: 'ExecuteOrder', orderId }),
    );
    await waitFor(() => Promise.resolve(reported.length > 0 || undefined), {
      timeoutMs: 10_000,
      what: 'the MAX_DELIVERIES dead letter reported',
    });
    // The other node's advisory found it recorded: nothing more is counted.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(reported).toHaveLength(1);
    expect(reported[0]?.reason).toBe('MAX_DELIVERIES');
  }, 20_000);
});
