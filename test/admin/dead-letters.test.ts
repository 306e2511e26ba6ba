/**
 * Goal: recording a dead letter keeps one row per stream message, never fewer: a repeat of the
 * same message is ignored (answered false), but a different message that meets its key (a reused
 * sequence whose stream's creation time was read stale) gets a row of its own, and a row written
 * before the key named the stream's creation time still dedupes its own message's redelivery;
 * an order holds one OPEN entry per reason and command (payload), so a command sent again and
 * refused again the same way (the janitor's status checks) does not pile up, while another
 * command, another reason or a closed entry's repeat is recorded, and each repeat left out is
 * told to the caller (the node counts and logs it); and an entry longer than its columns is cut
 * to fit rather than refused.
 * Method: recordDeadLetter on a migrated database of the real MariaDB; rows read back.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recordDeadLetter, recordHeldDeadLetter } from '../../src/admin/dead-letters.js';
import { newId } from '../../src/domain/ids.js';
import type { DeadLetter } from '../../src/messaging/command-consumer.js';
import { executeOrderMsgId, executeOrderPayload } from '../../src/messaging/commands.js';
import { outboxInsert } from '../../src/storage/repositories/outbox.repository.js';
import { openTestDatabase, type TestDatabase } from '../support/harness.js';

let database: TestDatabase;
beforeAll(async () => {
  database = await openTestDatabase('dlrecord', { poolSize: 2 });
});
afterAll(async () => database?.close());

const STREAM = 'SETTLE_TEST_CMD';
const STREAM_CREATED_AT = '2026-01-01T00:00:00.123456789Z';

function entryOf(orderId: string, fields: Partial<DeadLetter> = {}): DeadLetter {
  return {
    orderId,
    subject: 'settle.test.cmd.0',
    streamCreatedAt: STREAM_CREATED_AT,
    streamSequence: 7,
    attempts: 1,
    reason: 'NON_RETRYABLE',
    lastError: 'the PSP charged 999999 but the order is for 1000',
    payload: JSON.stringify({ type: 'CheckOrderStatus', orderId }),
    deadLetteredAt: new Date().toISOString(),
    ...fields,
  };
}

const record = (entry: DeadLetter) => recordDeadLetter(database.db, STREAM, entry, new Date());

async function ordersRecorded(): Promise<Array<string | null>> {
  const rows = await database.db
    .selectFrom('dead_letter')
    .select('order_id')
    .orderBy('id')
    .execute();
  return rows.map((row) => row.order_id);
}

describe('recording a dead letter', () => {
  beforeAll(async () => {
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('records the same message once, whoever records it', async () => {
    const entry = entryOf(newId('order'));
    expect(await record(entry)).toBe(true);
    expect(await record({ ...entry, reason: 'MAX_DELIVERIES', attempts: 6 })).toBe(false);
    expect(await ordersRecorded()).toEqual([entry.orderId]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('keeps a different message under the same key as a row of its own, once', async () => {
    const [first, second] = [entryOf(newId('order')), entryOf(newId('order'))];
    expect(await record(first)).toBe(true);
    expect(await record(second)).toBe(true);
    // Each one's redelivery is still a repeat.
    expect(await record(second)).toBe(false);
    expect(await record(first)).toBe(false);
    expect(await ordersRecorded()).toEqual([first.orderId, second.orderId]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('a message of a stream created anew at the same sequence is another message', async () => {
    const entry = entryOf(newId('order'));
    expect(await record(entry)).toBe(true);
    expect(
      await record({
        ...entry,
        streamCreatedAt: '2026-01-02T00:00:00.000000001Z',
        // Another command of the order: the same one would be an OPEN repeat (below).
        payload: JSON.stringify({ type: 'ExpireOrder', orderId: entry.orderId }),
      }),
    ).toBe(true);
    expect(await ordersRecorded()).toEqual([entry.orderId, entry.orderId]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('is stored whatever its lengths: cut to what the columns take, never refused', async () => {
    const longId = `ord_${'7'.repeat(200)}`;
    const subject = `settle.test.cmd.${'a'.repeat(183)}.${'b'.repeat(100)}`;
    const entry = entryOf(longId, {
      subject,
      lastError: '€'.repeat(30_000),
      payload: JSON.stringify({ type: 'CheckOrderStatus', orderId: longId }),
    });
    expect(await record(entry)).toBe(true);
    expect(await record(entry)).toBe(false);
    const row = await database.db
      .selectFrom('dead_letter')
      .select(['order_id', 'subject', 'last_error', 'payload'])
      .executeTakeFirstOrThrow();
    // The payload keeps the id, which the column could not; the subject ends with a whole token.
    expect(row).toEqual({
      order_id: null,
      subject: `settle.test.cmd.${'a'.repeat(183)}`,
      last_error: '€'.repeat(21_845),
      payload: entry.payload,
    });
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('a row keyed by the sequence alone (before the upgrade) dedupes its own message only', async () => {
    const entry = entryOf(newId('order'));
    const writtenAt = new Date('2026-01-01T12:00:00.000Z');
    // As the earlier code wrote it.
    await database.db
      .insertInto('dead_letter')
      .values({
        dedupe_key: `${STREAM}:${entry.streamSequence}`,
        stream_sequence: BigInt(entry.streamSequence),
        order_id: entry.orderId,
        subject: entry.subject,
        reason: entry.reason,
        attempts: entry.attempts,
        last_error: entry.lastError,
        payload: entry.payload,
        state: 'OPEN',
        resolution_note: null,
        created_at: writtenAt,
        updated_at: writtenAt,
      })
      .execute();
    // Its redelivery: the stream was created before the row was written.
    expect(await record(entry)).toBe(false);
    // Another message at that sequence.
    const other = entryOf(newId('order'));
    expect(await record(other)).toBe(true);
    // The same body in a stream created after the row was written: a message of its own (with
    // another reason, as the same command refused the same way is an OPEN repeat, below).
    expect(
      await record({
        ...entry,
        streamCreatedAt: '2026-01-02T00:00:00.000000000Z',
        reason: 'RETRIES_EXHAUSTED',
      }),
    ).toBe(true);
    expect(await ordersRecorded()).toEqual([entry.orderId, other.orderId, entry.orderId]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });
  it('keeps one OPEN entry per order, reason and command: a repeat of it is not recorded', async () => {
    const orderId = newId('order');
    const check = entryOf(orderId, { streamSequence: 21 });
    expect(await record(check)).toBe(true);
    // The janitor's next check of the order, refused the same way: another stream message.
    expect(await record({ ...check, streamSequence: 22, attempts: 1 })).toBe(false);
    expect(await record({ ...check, streamSequence: 23, attempts: 1 })).toBe(false);
    // Another reason, another command: entries of their own.
    expect(await record({ ...check, streamSequence: 24, reason: 'RETRIES_EXHAUSTED' })).toBe(true);
    const expire = JSON.stringify({ type: 'ExpireOrder', orderId });
    expect(await record({ ...check, streamSequence: 25, payload: expire })).toBe(true);
    // No order (a malformed command): never taken for a repeat.
    const malformed = entryOf(orderId, { orderId: null, reason: 'MALFORMED_COMMAND' });
    expect(await record({ ...malformed, streamSequence: 26 })).toBe(true);
    expect(await record({ ...malformed, streamSequence: 27 })).toBe(true);
    expect(await ordersRecorded()).toEqual([orderId, orderId, orderId, null, null]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('tells of each OPEN repeat it does not record, and of nothing else', async () => {
    // A command that keeps failing must still be visible: the node counts and logs these.
    const orderId = newId('order');
    const repeats: DeadLetter[] = [];
    const options = { onOpenRepeat: (entry: DeadLetter) => repeats.push(entry) };
    const recordTelling = (entry: DeadLetter) =>
      recordDeadLetter(database.db, STREAM, entry, new Date(), options);
    const check = entryOf(orderId, { streamSequence: 51 });
    expect(await recordTelling(check)).toBe(true);
    // The same message again (a redelivery, another node's advisory): no news, not a repeat.
    expect(await recordTelling({ ...check, reason: 'MAX_DELIVERIES', attempts: 6 })).toBe(false);
    expect(repeats).toEqual([]);
    // The janitor's next checks, refused the same way: repeats, each told once.
    expect(await recordTelling({ ...check, streamSequence: 52 })).toBe(false);
    expect(await recordTelling({ ...check, streamSequence: 53 })).toBe(false);
    expect(repeats.map((entry) => [entry.orderId, entry.reason, entry.streamSequence])).toEqual([
      [orderId, 'NON_RETRYABLE', 52],
      [orderId, 'NON_RETRYABLE', 53],
    ]);
    // Recorded by the node that wrote the command (a local run): the same rule.
    const msgId = `held-${orderId}`;
    const held = entryOf(orderId, { streamSequence: 0, streamCreatedAt: '' });
    expect(await recordHeldDeadLetter(database.db, msgId, held, new Date(), options)).toBe(false);
    expect(repeats).toHaveLength(3);
    expect(repeats[2]?.orderId).toBe(orderId);
    expect(await ordersRecorded()).toEqual([orderId]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });

  it('records the repeat anew once the OPEN entry is closed', async () => {
    const orderId = newId('order');
    const check = entryOf(orderId, { streamSequence: 31 });
    expect(await record(check)).toBe(true);
    await sql`UPDATE dead_letter SET state = 'RESOLVED' WHERE order_id = ${orderId}`.execute(
      database.db,
    );
    expect(await record({ ...check, streamSequence: 32 })).toBe(true);
    // And that one is OPEN again: its own repeat is not recorded.
    expect(await record({ ...check, streamSequence: 33 })).toBe(false);
    const rows = await database.db
      .selectFrom('dead_letter')
      .select(['stream_sequence', 'state'])
      .where('order_id', '=', orderId)
      .orderBy('id')
      .execute();
    expect(rows).toEqual([
      { stream_sequence: '31', state: 'RESOLVED' },
      { stream_sequence: '32', state: 'OPEN' },
    ]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });
  it('records a held command refused on its node with its row deleted, and the consumer as a repeat', async () => {
    const orderId = newId('order');
    const msgId = executeOrderMsgId(orderId);
    const payload = executeOrderPayload(orderId, 0);
    const now = new Date();
    await database.db.executeQuery(
      outboxInsert(
        database.db,
        [
          {
            subject: 'settle.test.cmd.0',
            msgId,
            payload,
            availableAt: new Date(now.getTime() + 60_000),
          },
        ],
        now,
      ),
    );
    const refused = entryOf(orderId, { streamSequence: 0, streamCreatedAt: '', payload });
    expect(await recordHeldDeadLetter(database.db, msgId, refused, now)).toBe(true);
    const held = await database.db
      .selectFrom('outbox')
      .select('id')
      .where('msg_id', '=', msgId)
      .execute();
    expect(held).toEqual([]);
    // Run again there (it cannot be relayed now), or relayed before the row went and refused by
    // the consumer the same way: the same entry, not a second one.
    expect(await recordHeldDeadLetter(database.db, msgId, refused, now)).toBe(false);
    expect(
      await record({ ...refused, streamSequence: 41, streamCreatedAt: STREAM_CREATED_AT }),
    ).toBe(false);
    const rows = await database.db
      .selectFrom('dead_letter')
      .select(['dedupe_key', 'stream_sequence', 'payload'])
      .where('order_id', '=', orderId)
      .execute();
    expect(rows).toEqual([{ dedupe_key: `outbox:${msgId}`, stream_sequence: '0', payload }]);
    await sql`DELETE FROM dead_letter`.execute(database.db);
  });
});
