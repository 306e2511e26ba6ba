/**
 * Goal: a command whose handling takes longer than the consumer's ack_wait is not redelivered
 * mid-turn (which burnt its deliveries until a healthy order was dead-lettered as
 * MAX_DELIVERIES), nor while it waits for a free slot behind a backlog, yet a handler that hangs
 * still gets its message back, after a bounded time;
 * a handler's error that says it is not retryable is dead-lettered at once as NON_RETRYABLE, any
 * other is retried; and every message the consumer terminates has its dead letter, even at a
 * sequence an earlier dead letter had before the command stream was recreated (sequences restart
 * at 1), or whose order id or payload is longer than the table's columns take; one whose amount
 * does not fit an int64 is malformed, as any other (not handed to the actor); and a node stops
 * within its grace period even when every slot is taken by a hung handler.
 * Method: a real Settle node and PSP mock (MariaDB, NATS) with ack_wait below the PSP's latency,
 * commands through JetStream only; and the consumer alone on a namespace of its own, with a
 * handler that never answers, throws, or refuses every command (recording its dead letters in a
 * database of its own), or one slower than ack_wait behind a backlog. Outcomes are read from
 * MySQL, from the deliveries seen and from the consumer's info.
 */
import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { recordDeadLetter } from '../../src/admin/dead-letters.js';
import { FailedPreconditionError, UnavailableError } from '../../src/domain/errors.js';
import { newId } from '../../src/domain/ids.js';
import {
  CommandConsumer,
  type CommandHandler,
  type DeadLetter,
} from '../../src/messaging/command-consumer.js';
import { deleteTopology, ensureTopology } from '../../src/messaging/nats.js';
import { names as topologyNames } from '../../src/messaging/subjects.js';
import {
  call,
  count,
  openTestDatabase,
  startStack,
  uniqueSuffix,
  waitFor,
  type Stack,
  type TestDatabase,
} from '../support/harness.js';

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
    const orderId = newId('order');
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
    const orderId = newId('order');
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

describe('a handler that throws', () => {
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

  /** The error each order's handler throws, by what it says of retrying. */
  const errors = {
    // What PaymentOrderActor.askPsp rethrows for PERMISSION_DENIED, UNIMPLEMENTED and the like.
    notRetryable: () =>
      new FailedPreconditionError('the PSP call failed (PERMISSION_DENIED: bad credentials)'),
    retryable: () => new UnavailableError('the PSP is unavailable (connection refused)'),
    unknown: () => new Error('a bug: cannot read properties of undefined'),
  };

  it('is refused at once when its error is not retryable, and retried otherwise', async () => {
    nc = await connect({ servers: inject('natsUrl') });
    const backoffMs = [50, 50];
    const jsm = await ensureTopology(nc, names, {
      ackWaitMs: ACK_WAIT_MS,
      maxDeliver: backoffMs.length + 1,
      maxAckPending: 10,
    });
    const orders = {
      notRetryable: newId('order'),
      retryable: newId('order'),
      unknown: newId('order'),
    };
    const runs = new Map<string, number>();
    const deadLetters: DeadLetter[] = [];
    consumer = new CommandConsumer(
      nc,
      jetstream(nc),
      jsm,
      names,
      (command) => {
        runs.set(command.orderId, (runs.get(command.orderId) ?? 0) + 1);
        const kind = (Object.keys(orders) as Array<keyof typeof orders>).find(
          (key) => orders[key] === command.orderId,
        );
        return Promise.reject(errors[kind ?? 'unknown']());
      },
      {
        inFlightMax: 4,
        ackWaitMs: ACK_WAIT_MS,
        workingMsMax: 10_000,
        backoffMs,
        jitter: 0,
        recordDeadLetter: (entry) => {
          deadLetters.push(entry);
          return Promise.resolve(true);
        },
      },
    );
    await consumer.start();
    for (const orderId of Object.values(orders)) {
      await jetstream(nc).publish(
        names.commandSubject(orderId),
        JSON.stringify({ type: 'CheckOrderStatus', orderId }),
      );
    }
    await waitFor(() => Promise.resolve(deadLetters.length === 3), {
      timeoutMs: 10_000,
      what: 'three dead letters',
    });
    const byOrder = (orderId: string) => {
      const entry = deadLetters.find((letter) => letter.orderId === orderId);
      return { runs: runs.get(orderId), reason: entry?.reason, lastError: entry?.lastError };
    };
    // Asked once: retrying would only ask the PSP the same again.
    expect(byOrder(orders.notRetryable)).toEqual({
      runs: 1,
      reason: 'NON_RETRYABLE',
      lastError: 'the PSP call failed (PERMISSION_DENIED: bad credentials)',
    });
    expect(byOrder(orders.retryable)).toEqual({
      runs: 3,
      reason: 'RETRIES_EXHAUSTED',
      lastError: 'the PSP is unavailable (connection refused)',
    });
    // An error that says nothing of retrying is retried.
    expect(byOrder(orders.unknown)).toEqual({
      runs: 3,
      reason: 'RETRIES_EXHAUSTED',
      lastError: 'a bug: cannot read properties of undefined',
    });
  }, 20_000);
});

describe('a command that is no command of ours', () => {
  const names = topologyNames(`t${uniqueSuffix()}`, 1);
  let nc: NatsConnection | undefined;
  let consumer: CommandConsumer | undefined;
  let database: TestDatabase | undefined;
  afterAll(async () => {
    await consumer?.stop(0);
    if (nc !== undefined) {
      await deleteTopology(nc, names);
      await nc.close();
    }
    await database?.close();
  });

  it('is dead-lettered at once as malformed, with its payload as it fits the table', async () => {
    database = await openTestDatabase('consumer_malformed', { poolSize: 2 });
    const { db } = database;
    nc = await connect({ servers: inject('natsUrl') });
    const jsm = await ensureTopology(nc, names, {
      ackWaitMs: ACK_WAIT_MS,
      maxDeliver: 3,
      maxAckPending: 10,
    });
    const handled: string[] = [];
    consumer = new CommandConsumer(
      nc,
      jetstream(nc),
      jsm,
      names,
      (command) => {
        handled.push(command.orderId);
        // What the actor answers for an order that does not exist.
        return Promise.resolve({
          kind: 'reject',
          reason: `payment order ${command.orderId} does not exist`,
        });
      },
      {
        inFlightMax: 4,
        ackWaitMs: ACK_WAIT_MS,
        workingMsMax: 10_000,
        backoffMs: [50, 50],
        jitter: 0,
        recordDeadLetter: (entry) => recordDeadLetter(db, names.commandStream, entry, new Date()),
      },
    );
    await consumer.start();
    // An order id longer than `dead_letter.order_id` (CHAR(30)) takes.
    const longId = JSON.stringify({
      type: 'PspResult',
      orderId: `ord_${'7'.repeat(200)}`,
      eventId: `evt_${randomUUID()}`,
      outcome: 'SUCCEEDED',
      pspReference: 'psp_1',
      amountMinor: '1000',
      declineCode: null,
    });
    // The stream's largest message (64 KiB), two bytes a character: more than TEXT's 65,535.
    const large = 'é'.repeat(32 * 1024);
    // An amount past int64, which no BIGINT column holds.
    const pastInt64 = JSON.stringify({
      type: 'PspResult',
      orderId: 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
      eventId: `evt_${randomUUID()}`,
      outcome: 'SUCCEEDED',
      pspReference: 'psp_1',
      amountMinor: '9223372036854775808',
      declineCode: null,
    });
    for (const payload of [longId, large, pastInt64]) {
      await jetstream(nc).publish(names.commandSubject('ord'), payload);
    }
    const rows = await waitFor(
      async () => {
        const found = await db
          .selectFrom('dead_letter')
          .select(['order_id', 'reason', 'attempts', 'payload'])
          .orderBy('stream_sequence')
          .execute();
        return found.length === 3 ? found : undefined;
      },
      { timeoutMs: 10_000, what: 'three dead letters' },
    );
    expect(handled).toEqual([]);
    expect(rows).toEqual([
      { order_id: null, reason: 'MALFORMED_COMMAND', attempts: 1, payload: longId },
      {
        order_id: null,
        reason: 'MALFORMED_COMMAND',
        attempts: 1,
        payload: 'é'.repeat(32 * 1024 - 1),
      },
      // Malformed for its amount alone: its order id, in the shape of ours, is kept.
      {
        order_id: 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
        reason: 'MALFORMED_COMMAND',
        attempts: 1,
        payload: pastInt64,
      },
    ]);
    await waitFor(
      async () =>
        (await jsm.consumers.info(names.commandStream, names.runtimeConsumer)).num_ack_pending ===
        0,
      { what: 'all three terminated' },
    );
  }, 30_000);
});

describe('a command stream recreated (its sequences start at 1 again)', () => {
  const names = topologyNames(`t${uniqueSuffix()}`, 1);
  const topology = { ackWaitMs: ACK_WAIT_MS, maxDeliver: 6, maxAckPending: 10 };
  let nc: NatsConnection | undefined;
  let consumer: CommandConsumer | undefined;
  let database: TestDatabase | undefined;
  afterAll(async () => {
    await consumer?.stop(0);
    if (nc !== undefined) {
      await deleteTopology(nc, names);
      await nc.close();
    }
    await database?.close();
  });

  /** What the actor answers for a charge whose amount is not the order's. */
  const refuse: CommandHandler = () =>
    Promise.resolve({ kind: 'reject', reason: 'the PSP charged 999999 but the order is for 1000' });

  const chargeOf = (orderId: string) =>
    JSON.stringify({
      type: 'PspResult',
      orderId,
      eventId: `evt_${randomUUID()}`,
      outcome: 'SUCCEEDED',
      pspReference: `psp_${randomUUID()}`,
      amountMinor: '999999',
      declineCode: null,
    });

  /** Deletes the streams and sets them up again, as after NATS lost its storage. */
  async function recreateStream(connection: NatsConnection, db: TestDatabase['db']) {
    await consumer?.stop(0);
    await deleteTopology(connection, names);
    const jsm = await ensureTopology(connection, names, topology);
    consumer = new CommandConsumer(connection, jetstream(connection), jsm, names, refuse, {
      inFlightMax: 4,
      ackWaitMs: ACK_WAIT_MS,
      workingMsMax: 10_000,
      backoffMs: [100, 100, 100, 100, 100],
      jitter: 0,
      recordDeadLetter: (entry) => recordDeadLetter(db, names.commandStream, entry, new Date()),
    });
    await consumer.start();
    return jsm;
  }

  /** Publishes `payload`, which must land at stream sequence 1, and waits until it is answered. */
  async function deadLetterAtSequenceOne(
    connection: NatsConnection,
    db: TestDatabase['db'],
    payload: string,
  ) {
    const jsm = await recreateStream(connection, db);
    const ack = await jetstream(connection).publish(names.commandSubject('ord'), payload);
    expect(ack.seq).toBe(1);
    await waitFor(
      async () => {
        const info = await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
        return info.delivered.stream_seq === 1 && info.num_ack_pending === 0;
      },
      { what: 'the command terminated' },
    );
  }

  it('keeps a dead letter for each message terminated at a reused sequence', async () => {
    database = await openTestDatabase('consumer_dlq', { poolSize: 2 });
    nc = await connect({ servers: inject('natsUrl') });
    const { db } = database;
    const [first, second] = [newId('order'), newId('order')];
    await deadLetterAtSequenceOne(nc, db, chargeOf(first));
    // Another charge at the same sequence: it used to be taken for the first one's redelivery,
    // terminated with no row at all.
    await deadLetterAtSequenceOne(nc, db, chargeOf(second));
    // The same payload again, a message of its own (a CheckOrderStatus sent anew is one): told
    // apart by the stream's creation time, not by its body. Its first entry is closed by then
    // (an order holds one OPEN entry per reason and command: the repeat of an OPEN one says
    // nothing new and is not kept).
    const check = JSON.stringify({ type: 'CheckOrderStatus', orderId: first });
    await deadLetterAtSequenceOne(nc, db, check);
    await sql`UPDATE dead_letter SET state = 'RESOLVED'
      WHERE order_id = ${first} AND payload = ${check}`.execute(db);
    await deadLetterAtSequenceOne(nc, db, check);

    const rows = await db
      .selectFrom('dead_letter')
      .select(['order_id', 'stream_sequence', 'reason', 'state'])
      .orderBy('id')
      .execute();
    expect(rows).toEqual(
      (
        [
          [first, 'OPEN'],
          [second, 'OPEN'],
          [first, 'RESOLVED'],
          [first, 'OPEN'],
        ] as const
      ).map(([orderId, state]) => ({
        order_id: orderId,
        stream_sequence: '1',
        reason: 'NON_RETRYABLE',
        state,
      })),
    );
  }, 60_000);
});

describe('a backlog behind slow, healthy turns', () => {
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

  it('runs each command once, on its first delivery, holding no more than its slots', async () => {
    nc = await connect({ servers: inject('natsUrl') });
    const jsm = await ensureTopology(nc, names, {
      ackWaitMs: ACK_WAIT_MS,
      maxDeliver: 3,
      maxAckPending: 20,
    });
    const inFlightMax = 4;
    const runs: Array<{ orderId: string; attempt: number }> = [];
    const deadLetters: string[] = [];
    let running = 0;
    let runningMax = 0;
    consumer = new CommandConsumer(
      nc,
      jetstream(nc),
      jsm,
      names,
      async (command, delivery) => {
        runs.push({ orderId: command.orderId, attempt: delivery.attempt });
        running += 1;
        runningMax = Math.max(runningMax, running);
        // A healthy turn longer than ack_wait (two slow PSP calls); it always succeeds.
        await new Promise((resolve) => setTimeout(resolve, 1.5 * ACK_WAIT_MS));
        running -= 1;
        return { kind: 'done' };
      },
      {
        inFlightMax,
        ackWaitMs: ACK_WAIT_MS,
        workingMsMax: 10_000,
        backoffMs: [100, 100],
        jitter: 0,
        recordDeadLetter: () => Promise.resolve(),
        onDeadLetter: (entry) => deadLetters.push(`${entry.orderId ?? '?'} ${entry.reason}`),
      },
    );
    await consumer.start();
    const js = jetstream(nc);
    const orders = Array.from({ length: 16 }, () => newId('order'));
    for (const orderId of orders) {
      await js.publish(
        names.commandSubject(orderId),
        JSON.stringify({ type: 'ExecuteOrder', orderId }),
      );
    }
    // Four rounds of 1.5 s; a command waits up to three of them for a slot, well past ack_wait.
    let ackPendingMax = 0;
    await waitFor(
      async () => {
        const info = await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
        ackPendingMax = Math.max(ackPendingMax, info.num_ack_pending);
        return info.num_ack_pending === 0 && info.num_pending === 0 && runs.length >= orders.length;
      },
      { timeoutMs: 30_000, intervalMs: 50, what: 'the backlog drained' },
    );
    // A redelivery would come an ack_wait after the delivery that was not reported in progress.
    await new Promise((resolve) => setTimeout(resolve, 2 * ACK_WAIT_MS));

    expect(deadLetters).toEqual([]);
    expect(runs.filter((run) => run.attempt !== 1)).toEqual([]);
    expect(runs.map((run) => run.orderId).sort()).toEqual([...orders].sort());
    expect(runningMax).toBe(inFlightMax);
    // What it has no slot for stays on the stream, free for another node to take.
    expect(ackPendingMax).toBeLessThanOrEqual(inFlightMax);
    const info = await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
    expect(info.num_redelivered).toBe(0);
  }, 45_000);
});

describe('stopping with every slot taken by a hung handler', () => {
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

  it('returns within its grace period, and another node takes the commands at once', async () => {
    nc = await connect({ servers: inject('natsUrl') });
    const jsm = await ensureTopology(nc, names, {
      ackWaitMs: ACK_WAIT_MS,
      maxDeliver: 3,
      maxAckPending: 10,
    });
    const options = {
      ackWaitMs: ACK_WAIT_MS,
      workingMsMax: 10_000,
      backoffMs: [100, 100],
      jitter: 0,
      recordDeadLetter: () => Promise.resolve(),
    };
    const started: string[] = [];
    const hung = new CommandConsumer(
      nc,
      jetstream(nc),
      jsm,
      names,
      (command) => {
        started.push(command.orderId);
        return new Promise(() => undefined);
      },
      { ...options, inFlightMax: 1 },
    );
    consumers.push(hung);
    await hung.start();
    const orders = Array.from({ length: 3 }, () => newId('order'));
    for (const orderId of orders) {
      await jetstream(nc).publish(
        names.commandSubject(orderId),
        JSON.stringify({ type: 'ExecuteOrder', orderId }),
      );
    }
    await waitFor(() => Promise.resolve(started.length === 1), { what: 'the first turn' });
    // Time to take (and wait with) more, as a node under load would.
    await new Promise((resolve) => setTimeout(resolve, 200));

    const stopAt = Date.now();
    const stopped = await Promise.race([
      hung.stop(300).then(() => true),
      new Promise<false>((resolve) => setTimeout(() => resolve(false), 5_000)),
    ]);
    expect(stopped).toBe(true);
    expect(Date.now() - stopAt).toBeLessThan(2_000);
    expect(started).toHaveLength(1);

    // The hung command was handed back (nak), so another node runs all three well before
    // ack_wait would have brought it back.
    const runs: Array<{ orderId: string; attempt: number }> = [];
    const other = new CommandConsumer(
      nc,
      jetstream(nc),
      jsm,
      names,
      (command, delivery) => {
        runs.push({ orderId: command.orderId, attempt: delivery.attempt });
        return Promise.resolve({ kind: 'done' });
      },
      { ...options, inFlightMax: 4 },
    );
    consumers.push(other);
    const otherStartedAt = Date.now();
    await other.start();
    await waitFor(() => Promise.resolve(runs.length >= 3), {
      timeoutMs: ACK_WAIT_MS / 2,
      intervalMs: 10,
      what: 'the other node running the three commands',
    });
    expect(Date.now() - otherStartedAt).toBeLessThan(ACK_WAIT_MS / 2);
    expect(runs.map((run) => run.orderId).sort()).toEqual([...orders].sort());
  }, 20_000);
});
