/**
 * Goal: a row JetStream refuses (a payload over the command stream's max_msg_size, a subject no
 * stream covers) does not hold back the rows behind it, even when refused rows outnumber a whole
 * batch: they are parked, the rows behind them are published and deleted, the parked rows stay in
 * the outbox (counted as lag from when they became due), are reported, and are tried again after
 * a bounded, doubling backoff, and go once JetStream takes them; while only refused rows are left
 * the loop does not back off, so a new row goes within its poll interval; a row whose publish got
 * no answer (an outage) is not parked but stays due, and the pass fails; a stopping relay ends
 * after the batch in flight rather than after a whole backlog. Method: real MariaDB (migrated,
 * the relay's one-packet pool) and NATS JetStream with the runtime's own topology under a
 * namespace of this file; a publish nobody answers comes from a core subscriber on its subject.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, JetStreamApiError, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, beforeEach, describe, expect, it, inject, vi } from 'vitest';
import { deleteTopology, ensureTopology } from '../../src/messaging/nats.js';
import { isRefusal, OutboxRelay } from '../../src/messaging/outbox-relay.js';
import { names as namesOf, type Names } from '../../src/messaging/subjects.js';
import { executeOrderMessage } from '../../src/messaging/commands.js';
import type { Db } from '../../src/storage/db.js';
import { outboxInsert, outboxLag } from '../../src/storage/repositories/outbox.repository.js';
import { newId } from '../../src/domain/ids.js';
import { openTestDatabase, uniqueSuffix } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
let nc: NatsConnection;
let jsm: JetStreamManager;
let names: Names;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_relay_t', {
    poolSize: 2,
    multipleStatements: true,
  }));
  nc = await connect({ servers: inject('natsUrl') });
  names = namesOf(`relay${uniqueSuffix()}`, 4);
  jsm = await ensureTopology(nc, names, { ackWaitMs: 30_000, maxDeliver: 5, maxAckPending: 100 });
});
// A test that failed midway leaves its rows; the next one starts from an empty outbox.
beforeEach(async () => {
  await db.deleteFrom('outbox').execute();
});
afterAll(async () => {
  await deleteTopology(nc, names).catch(() => undefined);
  await nc.close();
  await close?.();
});

async function streamMessages(): Promise<number> {
  return (await jsm.streams.info(names.commandStream)).state.messages;
}

/** Rows the relay would claim now (due, parked or not). */
async function dueRows(): Promise<number> {
  const rows = await db
    .selectFrom('outbox')
    .select(({ fn }) => fn.countAll().as('n'))
    .where('available_at', '<=', new Date())
    .execute();
  return Number(rows[0]?.n);
}

describe('outbox relay', () => {
  it('publishes the rows behind ones JetStream refuses, and parks and reports those', async () => {
    const before = new Date(Date.now() - 60_000);
    const orderId = newId('order');
    // Due first, so every batch claims them first. The biggest payload the column holds, with
    // the Nats-Msg-Id header, is over the stream's max_msg_size (64 KiB).
    const tooBig = {
      subject: names.commandSubject(orderId),
      msgId: 'big-1',
      payload: 'x'.repeat(65_535),
    };
    const nowhere = {
      subject: `settle.${names.namespace}.nowhere`,
      msgId: 'nowhere-1',
      payload: '{}',
    };
    await db.executeQuery(outboxInsert(db, [tooBig, nowhere], before));
    const good = Array.from({ length: 5 }, () => executeOrderMessage(names, newId('order')));
    await db.executeQuery(outboxInsert(db, good, new Date(before.getTime() + 1_000)));

    const errors: unknown[] = [];
    const relay = new OutboxRelay(db, jetstream(nc), {
      batchMax: 3,
      pollMs: 50,
      publishTimeoutMs: 2_000,
      onError: (error) => errors.push(error),
    });
    const relayed = await relay.relayOnce().catch((error: unknown) => {
      errors.push(error);
      return 0;
    });

    expect(relayed).toBe(5);
    expect(await streamMessages()).toBe(5);
    const left = await db.selectFrom('outbox').select('msg_id').orderBy('msg_id').execute();
    expect(left.map((row) => row.msg_id)).toEqual(['big-1', 'nowhere-1']);
    expect((await outboxLag(db)).pending).toBe(2);
    expect(errors.length).toBeGreaterThan(0);
    expect(String(errors[0])).toMatch(/big-1/);
    expect(String(errors[0])).toMatch(/nowhere-1/);
    // Only parked rows left: nothing is due, and the pass goes well.
    await expect(relay.relayOnce()).resolves.toBe(0);
    await db.deleteFrom('outbox').execute();
  });

  it('parks refused rows that fill whole batches, so the rows behind them go', async () => {
    const dueAt = new Date(Date.now() - 60_000);
    // More refused rows than a batch, all due before the good ones.
    const refused = Array.from({ length: 600 }, (_, index) => ({
      subject: `settle.${names.namespace}.parked.${index}`,
      msgId: `parked-${index}`,
      payload: '{}',
    }));
    await db.executeQuery(outboxInsert(db, refused, dueAt));
    const good = Array.from({ length: 5 }, () => executeOrderMessage(names, newId('order')));
    await db.executeQuery(outboxInsert(db, good, new Date(dueAt.getTime() + 1_000)));
    const before = await streamMessages();

    const errors: unknown[] = [];
    const relay = new OutboxRelay(db, jetstream(nc), {
      batchMax: 500,
      pollMs: 50,
      publishTimeoutMs: 2_000,
      parkMsMin: 300,
      parkMsMax: 1_000,
      onError: (error) => errors.push(error),
    });
    const passStartedAt = Date.now();
    await expect(relay.relayOnce()).resolves.toBe(5);
    expect(await streamMessages()).toBe(before + 5);
    expect(String(errors[0])).toMatch(/refused 600 outbox row\(s\), parked/);

    // Parked: not due, counted once each, and as old as when they first became due.
    const parked = await db
      .selectFrom('outbox')
      .select(['refusals', 'available_at', 'due_since'])
      .execute();
    expect(parked).toHaveLength(600);
    for (const row of parked) {
      expect(row.refusals).toBe(1);
      expect(row.due_since?.getTime()).toBe(dueAt.getTime());
      expect(row.available_at.getTime()).toBeGreaterThanOrEqual(passStartedAt + 300);
    }
    const lag = await outboxLag(db);
    expect(lag.pending).toBe(600);
    expect(lag.oldestAgeMs).toBeGreaterThanOrEqual(60_000);

    // Tried again once due, parked for twice as long, then never longer than parkMsMax.
    for (const [refusals, parkMs] of [
      [2, 600],
      [3, 1_000],
      [4, 1_000],
    ] as const) {
      await vi.waitFor(async () => expect(await dueRows()).toBe(600), {
        timeout: 5_000,
        interval: 50,
      });
      const triedAt = Date.now();
      await expect(relay.relayOnce()).resolves.toBe(0);
      const rows = await db.selectFrom('outbox').select(['refusals', 'available_at']).execute();
      for (const row of rows) {
        expect(row.refusals).toBe(refusals);
        expect(row.available_at.getTime()).toBeGreaterThanOrEqual(triedAt + parkMs);
        expect(row.available_at.getTime()).toBeLessThanOrEqual(Date.now() + parkMs);
      }
    }
    expect((await outboxLag(db)).oldestAgeMs).toBeGreaterThanOrEqual(60_000);

    // Once a stream takes their subject, the next try publishes them.
    const extra = `SETTLE_${names.namespace.toUpperCase()}_PARKED`;
    await jsm.streams.add({ name: extra, subjects: [`settle.${names.namespace}.parked.>`] });
    try {
      await vi.waitFor(async () => expect(await dueRows()).toBe(600), { timeout: 5_000 });
      await expect(relay.relayOnce()).resolves.toBe(600);
      expect(await outboxLag(db)).toEqual({ pending: 0, oldestAgeMs: 0 });
    } finally {
      await jsm.streams.delete(extra);
    }
  });

  it('keeps a row whose publish got no answer due, and fails the pass so the loop backs off', async () => {
    // Something takes the subject and never answers: the publish times out, as with NATS down.
    const subject = `settle.${names.namespace}.silent`;
    const silent = nc.subscribe(subject);
    try {
      await db.executeQuery(
        outboxInsert(db, [{ subject, msgId: 'silent-1', payload: '{}' }], new Date()),
      );
      const relay = new OutboxRelay(db, jetstream(nc), {
        batchMax: 10,
        pollMs: 50,
        publishTimeoutMs: 200,
      });
      await expect(relay.relayOnce()).rejects.toThrow(
        /JetStream did not answer for 1 outbox row\(s\), kept for the next pass: silent-1/,
      );
      expect(await db.selectFrom('outbox').select(['refusals', 'due_since']).execute()).toEqual([
        { refusals: 0, due_since: null },
      ]);
      expect(await dueRows()).toBe(1);
    } finally {
      silent.unsubscribe();
    }
  });

  it('sends a new row without backing off while only a refused row is left', async () => {
    await db.executeQuery(
      outboxInsert(
        db,
        [{ subject: `settle.${names.namespace}.nowhere`, msgId: newId('order'), payload: '{}' }],
        new Date(Date.now() - 1_000),
      ),
    );
    const errors: unknown[] = [];
    const relay = new OutboxRelay(db, jetstream(nc), {
      batchMax: 10,
      pollMs: 50,
      publishTimeoutMs: 2_000,
      onError: (error) => errors.push(error),
    });
    relay.start();
    try {
      // Refused a few times in a row (a relay that backs off now waits its longest), or parked.
      await vi.waitFor(
        async () => expect(errors.length >= 6 || (await dueRows()) === 0).toBe(true),
        { timeout: 15_000, interval: 20 },
      );
      // Written by another node: no wake-up here, only the poll finds it.
      const before = await streamMessages();
      const insertedAt = Date.now();
      await db.executeQuery(
        outboxInsert(db, [executeOrderMessage(names, newId('order'))], new Date()),
      );
      await vi.waitFor(async () => expect(await streamMessages()).toBe(before + 1), {
        timeout: 10_000,
        interval: 10,
      });
      // A relay backing off waits 5 s; one polling, 50 ms. Room for a loaded machine between.
      expect(Date.now() - insertedAt).toBeLessThan(2_000);
    } finally {
      await relay.stop();
      await db.deleteFrom('outbox').execute();
    }
  });

  it('stops after the batch in flight, leaving the rest of a backlog to the next start', async () => {
    const backlog = Array.from({ length: 300 }, () => executeOrderMessage(names, newId('order')));
    await db.executeQuery(outboxInsert(db, backlog, new Date(Date.now() - 1_000)));
    let stopping: Promise<void> | undefined;
    const relay: OutboxRelay = new OutboxRelay(db, jetstream(nc), {
      batchMax: 10,
      pollMs: 50,
      publishTimeoutMs: 2_000,
      onRelayed: () => {
        stopping ??= relay.stop();
      },
    });
    relay.start();
    await vi.waitFor(() => expect(stopping).toBeDefined(), { timeout: 10_000 });
    await stopping;
    expect(relay.relayed).toBe(10);
    const left = await db
      .selectFrom('outbox')
      .select(({ fn }) => fn.countAll().as('n'))
      .execute();
    expect(Number(left[0]?.n)).toBe(290);
    await db.deleteFrom('outbox').execute();
  });
});

describe('what the relay takes for a refusal', () => {
  // nats.js's own error types, as a publish rejects with them.
  it.each<[string, Error, boolean]>([
    [
      'a message over max_msg_size',
      new JetStreamApiError({ code: 400, err_code: 10054, description: 'message size exceeds' }),
      true,
    ],
    [
      'JetStream temporarily unavailable (503)',
      new JetStreamApiError({ code: 503, err_code: 10008, description: 'temporarily unavailable' }),
      false,
    ],
    ['a timeout', Object.assign(new Error('TIMEOUT'), { name: 'TimeoutError' }), false],
  ])('%s', (_name, error, refusal) => {
    expect(isRefusal(error)).toBe(refusal);
  });
});
