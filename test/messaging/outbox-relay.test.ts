/**
 * Goal: a row JetStream will never take (a payload over the command stream's max_msg_size, a
 * subject no stream covers) does not hold back the rows behind it: they are published and
 * deleted, the refused row stays in the outbox (counted as lag) and its failure is reported on
 * every pass (the pass fails when nothing else went, so the loop backs off); a stopping relay
 * ends after the batch in flight rather than after a whole backlog. Method: real MariaDB (migrated, the relay's one-packet pool) and NATS JetStream
 * with the runtime's own topology under a namespace of this file.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it, inject, vi } from 'vitest';
import { deleteTopology, ensureTopology } from '../../src/messaging/nats.js';
import { OutboxRelay } from '../../src/messaging/outbox-relay.js';
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
afterAll(async () => {
  await deleteTopology(nc, names).catch(() => undefined);
  await nc.close();
  await close?.();
});

async function streamMessages(): Promise<number> {
  return (await jsm.streams.info(names.commandStream)).state.messages;
}

describe('outbox relay', () => {
  it('publishes the rows behind one JetStream refuses, and keeps reporting the refused one', async () => {
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
    // Only refused rows left: the pass fails, naming them, and the loop backs off.
    await expect(relay.relayOnce()).rejects.toThrow(/big-1.*nowhere-1/s);
    await db.deleteFrom('outbox').execute();
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
