/**
 * The transactional outbox (messages for JetStream, written in the same transaction as the state
 * they announce) and the inbox (inputs from outside, deduplicated by their id).
 */
import { sql, type CompiledQuery } from 'kysely';
import { TERMINAL_STATES } from '../../domain/payment-order.js';
import type { Db } from '../db.js';
import { isDuplicateKey } from '../errors.js';
import { deleteInBatches, type PurgeBounds } from '../sql.js';
import type { Trx } from '../transaction.js';

export type OutboxMessage = Readonly<{
  subject: string;
  msgId: string;
  payload: string;
  /** Held back from the relay until then (a command its own node runs first); due at once when unset. */
  availableAt?: Date;
}>;

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
        available_at: message.availableAt ?? now,
      })),
    )
    .compile();
}

export type PendingOutbox = Readonly<{
  id: string;
  subject: string;
  msgId: string;
  payload: string;
  /** How many times JetStream refused it before (0 for a row never refused). */
  refusals: number;
}>;

export type OutboxRow = Readonly<{
  id: string;
  subject: string;
  msg_id: string;
  payload: string;
  refusals: number | string;
}>;

/**
 * Locks up to `limit` due rows (available at `now` or before) that no other relay holds (SKIP
 * LOCKED), in the order they became due: the statement, built but not run (the relay sends it
 * with START TRANSACTION). It reads through the (available_at, id) index, so rows still held
 * back, and rows parked after a refusal, are neither scanned nor locked.
 */
export function outboxBatchLock(db: Db | Trx, limit: number, now: Date): CompiledQuery<OutboxRow> {
  return db
    .selectFrom('outbox')
    .select(['id', 'subject', 'msg_id', 'payload', 'refusals'])
    .where('available_at', '<=', now)
    .orderBy('available_at')
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
    refusals: Number(row.refusals),
  }));
}

/**
 * Parks rows JetStream refused (at least one id) until `availableAt`, counting the refusal and
 * keeping, in `due_since`, when each first became due: the statement, built but not run (the
 * relay sends it in the transaction that locked them). Parking again keeps the first `due_since`.
 */
export function outboxPark(db: Db | Trx, ids: readonly string[], availableAt: Date): CompiledQuery {
  return db
    .updateTable('outbox')
    .set({
      // MySQL assigns left to right, so `due_since` reads `available_at` before it moves.
      due_since: sql<Date>`COALESCE(due_since, available_at)`,
      available_at: availableAt,
      refusals: sql<number>`refusals + 1`,
    })
    .where('id', 'in', ids)
    .compile();
}

/** Deletes relayed rows (at least one id): the statement, built but not run. */
export function outboxDelete(db: Db | Trx, ids: readonly string[]): CompiledQuery {
  return db.deleteFrom('outbox').where('id', 'in', ids).compile();
}

/**
 * Rows waiting for the relay (due ones, and those parked after JetStream refused them) and how
 * long the oldest has been due, for metrics and health. A parked row counts from when it first
 * became due, so a row JetStream keeps refusing ages like any other; rows still held back for
 * their own node are not lag.
 */
export async function outboxLag(
  db: Db,
  now = new Date(),
  countMax = OUTBOX_LAG_COUNT_MAX,
): Promise<{ pending: number; oldestAgeMs: number }> {
  // Counted up to `countMax` rows each, so a scrape of a node with a large backlog (NATS down for
  // an hour at full load) stays a bounded index read; the oldest is each index's first entry.
  // Parked rows are counted through `outbox_parked` only while they are not due, so none twice.
  const { rows } = await sql<{
    due: string;
    parked: string;
    oldest_due: Date | null;
    oldest_parked: Date | null;
  }>`
    SELECT (SELECT COUNT(*) FROM (
              SELECT 1 FROM outbox WHERE available_at <= ${now} LIMIT ${countMax}) d) AS due,
           (SELECT COUNT(*) FROM (
              SELECT 1 FROM outbox WHERE due_since IS NOT NULL AND available_at > ${now}
               LIMIT ${countMax}) p) AS parked,
           (SELECT MIN(available_at) FROM outbox WHERE available_at <= ${now}) AS oldest_due,
           (SELECT MIN(due_since) FROM outbox WHERE due_since IS NOT NULL) AS oldest_parked`.execute(
    db,
  );
  const row = rows[0];
  const oldest = [row?.oldest_due, row?.oldest_parked]
    .filter((at): at is Date => at !== null && at !== undefined)
    .map((at) => new Date(at).getTime());
  return {
    pending: Math.min(countMax, Number(row?.due ?? 0) + Number(row?.parked ?? 0)),
    oldestAgeMs: oldest.length === 0 ? 0 : Math.max(0, now.getTime() - Math.min(...oldest)),
  };
}

/** The outbox backlog is counted up to this many rows (`settle_outbox_pending` at most). */
export const OUTBOX_LAG_COUNT_MAX = 100_000;

/** Deletes rows by message id (commands their own node ran): one autocommit statement. */
export async function deleteOutboxByMsgId(db: Db, msgIds: readonly string[]): Promise<void> {
  if (msgIds.length === 0) return;
  await db.executeQuery(outboxDeleteByMsgId(db, msgIds));
}

/** The statement of `deleteOutboxByMsgId` (at least one id), built but not run. */
export function outboxDeleteByMsgId(db: Db | Trx, msgIds: readonly string[]): CompiledQuery {
  return db.deleteFrom('outbox').where('msg_id', 'in', msgIds).compile();
}

/** Makes held rows due at `now` (their node is stopping): one autocommit statement. */
export async function makeOutboxDue(db: Db, msgIds: readonly string[], now: Date): Promise<void> {
  if (msgIds.length === 0) return;
  await db
    .updateTable('outbox')
    .set({ available_at: now })
    .where('msg_id', 'in', msgIds)
    .where('available_at', '>', now)
    .execute();
}

/**
 * Hands a held row to the relay: it becomes due at `availableAt`, with a new payload (one that
 * counts the attempt already made). A row already gone (relayed, or deleted) is left gone, and
 * the answer is false.
 */
export async function releaseOutbox(
  db: Db,
  release: Readonly<{ msgId: string; payload: string; availableAt: Date }>,
): Promise<boolean> {
  const result = await db
    .updateTable('outbox')
    .set({ payload: release.payload, available_at: release.availableAt })
    .where('msg_id', '=', release.msgId)
    .executeTakeFirst();
  return result.numUpdatedRows > 0n;
}

export type InboxRow = Readonly<{ source: string; eventId: string; orderId: string; now: Date }>;

/** Records an input by its id; false when it was seen before. */
export async function recordInbox(trx: Trx, input: InboxRow): Promise<boolean> {
  try {
    await trx.executeQuery(inboxInsert(trx, [input]));
    return true;
  } catch (error) {
    if (isDuplicateKey(error)) return false;
    throw error;
  }
}

/** Inserts inbox rows (at least one); a repeated id fails the statement. Built but not run. */
export function inboxInsert(db: Db | Trx, rows: readonly InboxRow[]): CompiledQuery {
  return inboxValues(db, rows).compile();
}

function inboxValues(db: Db | Trx, rows: readonly InboxRow[]) {
  return db.insertInto('inbox').values(
    rows.map((row) => ({
      source: row.source,
      event_id: row.eventId,
      order_id: row.orderId,
      received_at: row.now,
    })),
  );
}

/** The inbox purge's bounds per pass (a minute apart): 5,000 rows a DELETE, 40 DELETEs. */
export const INBOX_PURGE = { rowsPerStatement: 5_000, statementsMax: 40 } as const;

/**
 * Retention: deletes inbox rows received before the cutoff whose order is final, oldest first
 * (the inbox_received index), `rowsPerStatement` per DELETE until one deletes fewer or
 * `statementsMax` have run, and answers how many went. Such a row no longer matters: an event
 * that comes back after it went is recorded again and its PspResult reaches a final order, which
 * changes nothing (a result it has, or a charge after failure it flagged already; one naming
 * another charge is dead-lettered again, as the first delivery was), and the ledger's unique
 * (order, kind) keys would refuse a second booking anyway. A row whose order is not final, or
 * not known at all (its command was dead-lettered for review), is kept whatever its age, and so
 * is every row of an order that has a dead letter: an event naming another charge, sent again
 * after its row went, would be dead-lettered a second time, and an operator could refund the one
 * charge twice. Those rows go once the order's dead letters are closed and purged themselves
 * (`DEAD_LETTER_KEEP_DAYS`).
 */
export async function purgeWebhookInbox(
  db: Db,
  cutoff: Date,
  bounds: PurgeBounds = INBOX_PURGE,
): Promise<number> {
  const { deleted } = await deleteInBatches(bounds, async (limit) => {
    const result = await sql`
      DELETE FROM inbox
      WHERE received_at < ${cutoff}
        AND EXISTS (
          SELECT 1 FROM payment_order o
          WHERE o.id = inbox.order_id AND o.state IN (${sql.join([...TERMINAL_STATES])}))
        AND NOT EXISTS (SELECT 1 FROM dead_letter d WHERE d.order_id = inbox.order_id)
      ORDER BY received_at
      LIMIT ${limit}`.execute(db);
    return Number(result.numAffectedRows ?? 0n);
  });
  return deleted;
}

/**
 * Inbox rows of inputs applied in this same transaction (a webhook applied straight to its
 * order), built but not run. An id seen before is left as it is: the transition, not this row,
 * is what the version check deduplicates, so a repeat must not fail the transaction.
 */
export function inboxAppliedStatement(db: Db | Trx, rows: readonly InboxRow[]): CompiledQuery {
  return inboxValues(db, rows)
    .onDuplicateKeyUpdate({ received_at: sql<Date>`received_at` })
    .compile();
}
