/**
 * The transactional outbox (messages for JetStream, written in the same transaction as the state
 * they announce) and the inbox (inputs from outside, deduplicated by their id).
 */
import { sql, type CompiledQuery } from 'kysely';
import type { Db } from '../db.js';
import { isDuplicateKey } from '../errors.js';
import type { Trx } from '../transaction.js';

export type OutboxMessage = Readonly<{ subject: string; msgId: string; payload: string }>;

export async function enqueueOutbox(trx: Trx, messages: readonly OutboxMessage[], now: Date) {
  if (messages.length === 0) return;
  await trx.executeQuery(outboxInsert(trx, messages, now));
}

/** The statement of `enqueueOutbox` (at least one message), built but not run. */
export function outboxInsert(
  db: Db | Trx,
  messages: readonly OutboxMessage[],
  now: Date,
): CompiledQuery {
  return db
    .insertInto('outbox')
    .values(
      messages.map((message) => ({
        subject: message.subject,
        msg_id: message.msgId,
        payload: message.payload,
        created_at: now,
      })),
    )
    .compile();
}

export type PendingOutbox = Readonly<{
  id: string;
  subject: string;
  msgId: string;
  payload: string;
}>;

export type OutboxRow = Readonly<{ id: string; subject: string; msg_id: string; payload: string }>;

/**
 * Locks up to `limit` unsent rows that no other relay holds (SKIP LOCKED), oldest first: the
 * statement, built but not run (the relay sends it with START TRANSACTION).
 */
export function outboxBatchLock(db: Db | Trx, limit: number): CompiledQuery<OutboxRow> {
  return db
    .selectFrom('outbox')
    .select(['id', 'subject', 'msg_id', 'payload'])
    .orderBy('id')
    .limit(limit)
    .forUpdate()
    .skipLocked()
    .compile();
}

export function toPendingOutbox(rows: readonly OutboxRow[]): PendingOutbox[] {
  return rows.map((row) => ({
    id: row.id,
    subject: row.subject,
    msgId: row.msg_id,
    payload: row.payload,
  }));
}

/** Deletes relayed rows (at least one id): the statement, built but not run. */
export function outboxDelete(db: Db | Trx, ids: readonly string[]): CompiledQuery {
  return db.deleteFrom('outbox').where('id', 'in', ids).compile();
}

/** Rows waiting and the age of the oldest, for metrics and health. */
export async function outboxLag(db: Db): Promise<{ pending: number; oldestAgeMs: number }> {
  const row = await db
    .selectFrom('outbox')
    .select([sql<string>`COUNT(*)`.as('pending'), sql<Date | null>`MIN(created_at)`.as('oldest')])
    .executeTakeFirstOrThrow();
  return {
    pending: Number(row.pending),
    oldestAgeMs: row.oldest === null ? 0 : Date.now() - new Date(row.oldest).getTime(),
  };
}

/** Records an input by its id; false when it was seen before. */
export async function recordInbox(
  trx: Trx,
  input: { source: string; eventId: string; orderId: string; now: Date },
): Promise<boolean> {
  try {
    await trx
      .insertInto('inbox')
      .values({
        source: input.source,
        event_id: input.eventId,
        order_id: input.orderId,
        received_at: input.now,
      })
      .execute();
    return true;
  } catch (error) {
    if (isDuplicateKey(error)) return false;
    throw error;
  }
}

export type InboxRow = Readonly<{ source: string; eventId: string; orderId: string; now: Date }>;

/**
 * Records inputs that are being applied in this same transaction (a webhook applied straight to
 * its order). An id seen before is left as it is: the transition, not this row, is what the
 * version check deduplicates, so a repeat must not fail the transaction.
 */
export async function recordInboxApplied(trx: Trx, rows: readonly InboxRow[]): Promise<void> {
  if (rows.length === 0) return;
  await trx.executeQuery(inboxAppliedStatement(trx, rows));
}

/** The statement of `recordInboxApplied`, built but not run. */
export function inboxAppliedStatement(db: Db | Trx, rows: readonly InboxRow[]): CompiledQuery {
  return db
    .insertInto('inbox')
    .values(
      rows.map((row) => ({
        source: row.source,
        event_id: row.eventId,
        order_id: row.orderId,
        received_at: row.now,
      })),
    )
    .onDuplicateKeyUpdate({ received_at: sql<Date>`received_at` })
    .compile();
}
