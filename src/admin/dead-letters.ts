/**
 * The dead-letter queue as operators use it: commands that exhausted their retries (or can never
 * succeed) are recorded in MySQL with their reason, attempts and last error; an operator replays
 * one (it goes back through the normal path: outbox → JetStream → the order's actor) or discards
 * it with a reason. Both are idempotent: the transition is conditional on the entry's state, and
 * the replayed command is handled like any redelivery (a finished order ignores it).
 */
import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../domain/errors.js';
import { ORDER_ID_LENGTH } from '../domain/ids.js';
import { isInt64Decimal, parseInt64Decimal } from '../domain/int64.js';
import { TERMINAL_STATES } from '../domain/payment-order.js';
import { deadLetterKey, type DeadLetter } from '../messaging/command-consumer.js';
import type { Db } from '../storage/db.js';
import { isDuplicateKey } from '../storage/errors.js';
import { deleteInBatches, type PurgeBounds } from '../storage/sql.js';
import { enqueueOutbox, outboxDeleteByMsgId } from '../storage/repositories/outbox.repository.js';
import { executeOrderPayload, parseCommand } from '../messaging/commands.js';
import { inTransaction, type Trx } from '../storage/transaction.js';
import { requireReason } from './audit.js';

export const DEAD_LETTER_STATE = {
  open: 'OPEN',
  replayed: 'REPLAYED',
  discarded: 'DISCARDED',
  /** The order reached a final state without a replay; set by the janitor. */
  resolved: 'RESOLVED',
} as const;
export type DeadLetterState = (typeof DEAD_LETTER_STATE)[keyof typeof DEAD_LETTER_STATE];

export type DeadLetterRecord = Readonly<{
  id: string;
  streamSequence: bigint;
  orderId: string | undefined;
  subject: string;
  reason: string;
  attempts: number;
  lastError: string;
  payload: string;
  state: DeadLetterState;
  resolutionNote: string | undefined;
  createdAt: Date;
  updatedAt: Date;
}>;

/**
 * Records a dead letter once per stream message (a second record of the same one is ignored);
 * answers whether this call recorded it. A message is its deadLetterKey; should a different
 * message still meet a row under that key (a stream recreated while its creation time was not
 * read anew), its payload tells them apart and it is kept under a key of its own: a dead letter
 * dropped is a message terminated that no operator will see. A message whose order already has
 * an OPEN entry with the same reason and the same payload (the same command, sent again and
 * refused again the same way: the janitor's status check of an order whose PSP answer Settle
 * cannot store) is not recorded again either: that entry already says all it would, but
 * `onOpenRepeat` hears of it, so a command that keeps failing is still seen.
 */
export async function recordDeadLetter(
  db: Db,
  streamName: string,
  given: DeadLetter,
  now: Date,
  options: RecordOptions = {},
): Promise<boolean> {
  const entry = fittedToColumns(given);
  if (await recordedUnderSequenceKey(db, streamName, entry)) return false;
  const key = deadLetterKey(streamName, entry);
  const inserted = await insertDeadLetter(db, key, entry, now);
  if (inserted !== INSERTED.keyTaken) return reported(inserted, entry, options);
  const stored = await db
    .selectFrom('dead_letter')
    .select('payload')
    .where('dedupe_key', '=', key)
    .executeTakeFirst();
  if (stored?.payload === entry.payload) return false;
  const insertedApart = await insertDeadLetter(
    db,
    `${key}#${payloadDigest(entry.payload)}`,
    entry,
    now,
  );
  return reported(insertedApart, entry, options);
}

export type RecordOptions = Readonly<{
  /**
   * Called, after the fact, for a dead letter not recorded because its order has an OPEN entry
   * with the same reason and command: another message, refused again the same way (not a
   * redelivery of a message already recorded, which is no news at all). The node counts it in
   * settle_dead_letter_repeats_total and logs it at info.
   */
  onOpenRepeat?: (entry: DeadLetter) => void;
}>;

/**
 * Records the dead letter of a command refused for good by the node that wrote it, before any
 * relay published it (a new order's ExecuteOrder run there: actors/payment-order/local-execute.ts),
 * and deletes the command's held outbox row in the same transaction, so the relay never publishes
 * it to be refused again. The entry is the one the consumer would record (same reason, payload
 * and OPEN-repeat rule); it names no stream message (sequence 0) and is keyed by the row's
 * message id instead. Answers whether this call recorded it.
 */
export async function recordHeldDeadLetter(
  db: Db,
  msgId: string,
  given: DeadLetter,
  now: Date,
  options: RecordOptions = {},
): Promise<boolean> {
  const entry = fittedToColumns(given);
  const inserted = await inTransaction(db, async (trx) => {
    // A duplicate key fails the INSERT alone, not the transaction: the row goes all the same.
    const result = await insertDeadLetter(trx, `outbox:${msgId}`, entry, now);
    await trx.executeQuery(outboxDeleteByMsgId(trx, [msgId]));
    return result;
  });
  return reported(inserted, entry, options);
}

/** What an insert of a dead letter did. */
const INSERTED = {
  yes: 'YES',
  /** A row has the dedupe key already. */
  keyTaken: 'KEY_TAKEN',
  /** The order has an OPEN entry with the same reason and payload (dead_letter_open_once). */
  openRepeat: 'OPEN_REPEAT',
} as const;
type Inserted = (typeof INSERTED)[keyof typeof INSERTED];

/** Whether the insert recorded the entry; an OPEN repeat is told to `onOpenRepeat` on the way. */
function reported(inserted: Inserted, entry: DeadLetter, options: RecordOptions): boolean {
  if (inserted === INSERTED.openRepeat) options.onOpenRepeat?.(entry);
  return inserted === INSERTED.yes;
}

/** `payload` and `last_error` are TEXT: 65,535 bytes. */
const TEXT_BYTES_MAX = 65_535;
/** `subject` is VARCHAR(200). */
const SUBJECT_CHARS_MAX = 200;

/**
 * The entry cut to what its columns take, since a dead letter that cannot be stored is a message
 * that comes back until its deliveries run out and is then lost: the payload and error to whole
 * UTF-8 characters within TEXT (a message may be 64 KiB, and one character more than one byte),
 * the subject to its column (no trailing dot, so a replay can still publish to it), and an order
 * id longer than any order's dropped (the payload keeps it).
 */
function fittedToColumns(entry: DeadLetter): DeadLetter {
  return {
    ...entry,
    orderId: (entry.orderId?.length ?? 0) <= ORDER_ID_LENGTH ? entry.orderId : null,
    subject:
      entry.subject.length <= SUBJECT_CHARS_MAX
        ? entry.subject
        : entry.subject.slice(0, SUBJECT_CHARS_MAX).replace(/\.+$/, ''),
    lastError: utf8Prefix(entry.lastError, TEXT_BYTES_MAX),
    payload: utf8Prefix(entry.payload, TEXT_BYTES_MAX),
  };
}

/** The longest prefix of `text` whose UTF-8 takes at most `bytesMax` bytes. */
function utf8Prefix(text: string, bytesMax: number): string {
  // A UTF-16 code unit takes 3 bytes at most (a surrogate pair, two units, takes 4).
  if (text.length * 3 <= bytesMax) return text;
  const { read } = new TextEncoder().encodeInto(text, new Uint8Array(bytesMax));
  return text.slice(0, read);
}

/**
 * Rows written before the key named the stream's creation time are keyed `stream:sequence`.
 * One of them is this message's when its payload is the same and it was written after the
 * stream was created (an older one is of a previous life of the stream), so a redelivery of a
 * message dead-lettered before the upgrade is not recorded twice.
 */
async function recordedUnderSequenceKey(
  db: Db,
  streamName: string,
  entry: DeadLetter,
): Promise<boolean> {
  const row = await db
    .selectFrom('dead_letter')
    .select('payload')
    .where('dedupe_key', '=', `${streamName}:${entry.streamSequence}`)
    .where('created_at', '>=', new Date(entry.streamCreatedAt))
    .executeTakeFirst();
  return row !== undefined && row.payload === entry.payload;
}

/** Inserts the entry under `dedupeKey`, unless a row has that key or is its OPEN repeat. */
async function insertDeadLetter(
  db: Db | Trx,
  dedupeKey: string,
  entry: DeadLetter,
  now: Date,
): Promise<Inserted> {
  try {
    await db
      .insertInto('dead_letter')
      .values({
        dedupe_key: dedupeKey,
        stream_sequence: BigInt(entry.streamSequence),
        order_id: entry.orderId,
        subject: entry.subject,
        reason: entry.reason,
        attempts: entry.attempts,
        last_error: entry.lastError,
        payload: entry.payload,
        state: DEAD_LETTER_STATE.open,
        resolution_note: null,
        created_at: now,
        updated_at: now,
      })
      .execute();
    return INSERTED.yes;
  } catch (error) {
    if (isDuplicateKey(error, 'dead_letter_dedupe')) return INSERTED.keyTaken;
    if (isDuplicateKey(error, 'dead_letter_open_once')) return INSERTED.openRepeat;
    throw error;
  }
}

/** 16 hex digits of the payload's SHA-256: enough to tell two messages at one key apart. */
function payloadDigest(payload: string): string {
  return createHash('sha256').update(payload).digest('hex').slice(0, 16);
}

type Row = {
  id: string;
  stream_sequence: string;
  order_id: string | null;
  subject: string;
  reason: string;
  attempts: number;
  last_error: string;
  payload: string;
  state: DeadLetterState;
  resolution_note: string | null;
  created_at: Date;
  updated_at: Date;
};

function toRecord(row: Row): DeadLetterRecord {
  return {
    id: row.id,
    streamSequence: BigInt(row.stream_sequence),
    orderId: row.order_id ?? undefined,
    subject: row.subject,
    reason: row.reason,
    attempts: row.attempts,
    lastError: row.last_error,
    payload: row.payload,
    state: row.state,
    resolutionNote: row.resolution_note ?? undefined,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/**
 * The id as the table holds it (`0004` is entry 4), or undefined when it is no dead-letter id:
 * not decimal digits, or past the BIGINT the table keys by (isInt64Decimal), which no entry has.
 * Ids are looked up and audited in this form only: MySQL would find entry 4 under `0004`, but an
 * audit row naming `dead-letter:0004` would be missing from the payment's page, which looks its
 * entries up by their own ids.
 */
export function canonicalDeadLetterId(id: string): string | undefined {
  return parseInt64Decimal(id)?.toString();
}

/** Newest first; `beforeId` pages. */
export async function listDeadLetters(
  db: Db,
  filter: {
    state?: DeadLetterState;
    orderIds?: readonly string[];
    beforeId?: string;
    limit: number;
  },
): Promise<DeadLetterRecord[]> {
  if (filter.orderIds?.length === 0) return [];
  let query = db.selectFrom('dead_letter').selectAll().orderBy('id', 'desc').limit(filter.limit);
  if (filter.state !== undefined) query = query.where('state', '=', filter.state);
  if (filter.orderIds !== undefined) query = query.where('order_id', 'in', filter.orderIds);
  if (filter.beforeId !== undefined) query = query.where('id', '<', filter.beforeId);
  return (await query.execute()).map(toRecord);
}

export type DeadLetterPage = Readonly<{
  entries: DeadLetterRecord[];
  /** Pass as `beforeId` for the next (older) page; undefined on the last page. */
  nextBeforeId: string | undefined;
}>;

/**
 * One page, newest first. `beforeId` comes back from a client (gRPC page_token, the panel's
 * `before`), so it must look like an id; `cursorField` names it in the error.
 */
export async function listDeadLetterPage(
  db: Db,
  filter: { state?: DeadLetterState; orderId?: string; beforeId?: string; limit: number },
  cursorField: string,
): Promise<DeadLetterPage> {
  if (filter.beforeId !== undefined && !isInt64Decimal(filter.beforeId)) {
    throw new InvalidArgumentError(cursorField, `invalid; start again without ${cursorField}`);
  }
  const rows = await listDeadLetters(db, {
    ...(filter.state !== undefined ? { state: filter.state } : {}),
    ...(filter.orderId !== undefined ? { orderIds: [filter.orderId] } : {}),
    ...(filter.beforeId !== undefined ? { beforeId: filter.beforeId } : {}),
    limit: filter.limit + 1,
  });
  const entries = rows.slice(0, filter.limit);
  return {
    entries,
    nextBeforeId: rows.length > filter.limit ? entries[entries.length - 1]?.id : undefined,
  };
}

export async function findDeadLetter(db: Db, id: string): Promise<DeadLetterRecord | undefined> {
  const row = await db
    .selectFrom('dead_letter')
    .selectAll()
    .where('id', '=', id)
    .executeTakeFirst();
  return row === undefined ? undefined : toRecord(row);
}

/** Entries still waiting for an operator, and all kept: one scan for both. */
export async function countDeadLetters(db: Db): Promise<{ open: number; total: number }> {
  const result = await sql<{ total: string; open: string | null }>`
    SELECT COUNT(*) AS total, SUM(state = 'OPEN') AS open FROM dead_letter`.execute(db);
  const row = result.rows[0];
  return { open: Number(row?.open ?? 0), total: Number(row?.total ?? 0) };
}

export type DeadLetterDeps = Readonly<{ db: Db; wakeRelay: () => void; now: () => Date }>;

/** The canonical id (canonicalDeadLetterId), or InvalidArgumentError. */
function parseId(id: string): string {
  const canonical = canonicalDeadLetterId(id);
  if (canonical === undefined)
    throw new InvalidArgumentError('id', `'${id.slice(0, 40)}' is not a dead-letter id`);
  return canonical;
}

/**
 * Puts the command back on its normal path. Replaying an entry that was already replayed is a
 * no-op that returns it; a discarded entry cannot be replayed.
 */
export async function replayDeadLetter(
  deps: DeadLetterDeps,
  givenId: string,
  actor: string,
): Promise<DeadLetterRecord> {
  const id = parseId(givenId);
  const now = deps.now();
  const replayed = await inTransaction(deps.db, async (trx) => {
    const row = await trx
      .selectFrom('dead_letter')
      .selectAll()
      .where('id', '=', id)
      .forUpdate()
      .executeTakeFirst();
    if (row === undefined) throw new NotFoundError('dead letter', id);
    if (row.state === DEAD_LETTER_STATE.replayed) return false;
    if (row.state === DEAD_LETTER_STATE.discarded) {
      throw new FailedPreconditionError(`dead letter ${id} was discarded; it cannot be replayed`);
    }
    if (row.state === DEAD_LETTER_STATE.resolved) {
      throw new FailedPreconditionError(
        `dead letter ${id} is resolved (${row.resolution_note ?? 'its order is final'}); nothing to replay`,
      );
    }
    await enqueueOutbox(
      trx,
      [{ subject: row.subject, msgId: `replay:${row.id}`, payload: freshAttempts(row.payload) }],
      now,
    );
    await trx
      .updateTable('dead_letter')
      .set({
        state: DEAD_LETTER_STATE.replayed,
        resolution_note: `replayed by ${actor}`,
        updated_at: now,
      })
      .where('id', '=', row.id)
      .execute();
    return true;
  });
  if (replayed) deps.wakeRelay();
  const record = await findDeadLetter(deps.db, id);
  if (record === undefined) throw new NotFoundError('dead letter', id);
  return record;
}

/**
 * A replayed command starts its retries afresh: the attempts its node made before handing it to
 * JetStream (`priorAttempts`) are dropped. Any other payload is replayed as it was stored.
 */
function freshAttempts(payload: string): string {
  const command = parseCommand(new TextEncoder().encode(payload));
  if (command?.type !== 'ExecuteOrder' || command.priorAttempts === undefined) return payload;
  return executeOrderPayload(command.orderId, 0);
}

/** Closes an entry without replaying it; the reason is kept. Discarding twice is a no-op. */
export async function discardDeadLetter(
  deps: DeadLetterDeps,
  givenId: string,
  reason: string,
  actor: string,
): Promise<DeadLetterRecord> {
  const why = requireReason(reason);
  const id = parseId(givenId);
  const now = deps.now();
  await inTransaction(deps.db, async (trx) => {
    const row = await trx
      .selectFrom('dead_letter')
      .selectAll()
      .where('id', '=', id)
      .forUpdate()
      .executeTakeFirst();
    if (row === undefined) throw new NotFoundError('dead letter', id);
    if (row.state === DEAD_LETTER_STATE.discarded) return;
    if (row.state === DEAD_LETTER_STATE.replayed) {
      throw new FailedPreconditionError(
        `dead letter ${id} was already replayed; it cannot be discarded`,
      );
    }
    if (row.state === DEAD_LETTER_STATE.resolved) {
      throw new FailedPreconditionError(
        `dead letter ${id} is resolved (${row.resolution_note ?? 'its order is final'}); nothing to discard`,
      );
    }
    await trx
      .updateTable('dead_letter')
      .set({
        state: DEAD_LETTER_STATE.discarded,
        resolution_note: `discarded by ${actor}: ${why}`,
        updated_at: now,
      })
      .where('id', '=', row.id)
      .execute();
  });
  const record = await findDeadLetter(deps.db, id);
  if (record === undefined) throw new NotFoundError('dead letter', id);
  return record;
}

/** The states an entry is closed in: nothing is left for an operator to do with it. */
const CLOSED_STATES = [
  DEAD_LETTER_STATE.replayed,
  DEAD_LETTER_STATE.discarded,
  DEAD_LETTER_STATE.resolved,
] as const;

/** The purge's bounds per housekeeping pass (a minute apart): 500 rows a DELETE, 10 DELETEs. */
export const DEAD_LETTER_PURGE = { rowsPerStatement: 500, statementsMax: 10 } as const;

/**
 * Retention: deletes the entries closed (REPLAYED, DISCARDED, RESOLVED) before the cutoff, one
 * state after the other, oldest first through the (state, updated_at) index, `rowsPerStatement`
 * per DELETE (a payload may be 64 KiB) and `statementsMax` DELETEs in all; answers how many
 * went. OPEN entries are never deleted. The cutoff is at least 31 days back (config), longer
 * than JetStream keeps a command, so the message of a deleted entry cannot be delivered again;
 * should one be, its dedupe key is free and it is recorded OPEN anew, never dropped. Admin audit
 * rows naming a deleted entry stay.
 */
export async function purgeClosedDeadLetters(
  db: Db,
  cutoff: Date,
  bounds: PurgeBounds = DEAD_LETTER_PURGE,
): Promise<number> {
  let purged = 0;
  let statements = 0;
  for (const state of CLOSED_STATES) {
    if (statements >= bounds.statementsMax) break;
    const done = await deleteInBatches(
      { ...bounds, statementsMax: bounds.statementsMax - statements },
      async (limit) => {
        const result = await sql`
          DELETE FROM dead_letter
          WHERE state = ${state} AND updated_at < ${cutoff}
          ORDER BY updated_at
          LIMIT ${limit}`.execute(db);
        return Number(result.numAffectedRows ?? 0n);
      },
    );
    purged += done.deleted;
    statements += done.statements;
  }
  return purged;
}

/**
 * The commands a final order makes moot: its execution, its expiry and its status check. A
 * PspResult is never among them: a charge dead-lettered for an order that then expired or failed
 * is money the PSP took and Settle has not booked, and only its replay (the order flagged for
 * review) tells an operator.
 */
/** Pages of candidates one call reads at most (each of `limit` entries). */
const RESOLVE_PAGES_MAX = 20;

const MOOT_WHEN_FINAL: ReadonlySet<string> = new Set([
  'ExecuteOrder',
  'ExpireOrder',
  'CheckOrderStatus',
]);

/**
 * Closes the OPEN dead letters whose order has reached a final state since (the janitor asked the
 * PSP, a late webhook arrived) and whose command that state makes moot (MOOT_WHEN_FINAL):
 * RESOLVED, with the state in the note, so operators and the `settle_dead_letters_open` alert see
 * only entries that still need them. At most `limit` candidates per call, found through the
 * (state, id) index; each UPDATE re-checks both states, so several nodes can run it at once.
 * Answers the ids it resolved.
 */
export async function resolveFinishedDeadLetters(
  db: Db,
  now: Date,
  limit: number,
): Promise<string[]> {
  // Paged by id: entries kept open on purpose (a PSP result, a payload that does not parse) must
  // not fill every page and starve the moot ones behind them. At most RESOLVE_PAGES_MAX pages.
  const encoder = new TextEncoder();
  const ids: string[] = [];
  let after = '0';
  for (let page = 0; page < RESOLVE_PAGES_MAX && ids.length < limit; page += 1) {
    const { rows } = await sql<{ id: string; payload: string }>`
      SELECT d.id, d.payload FROM dead_letter d FORCE INDEX (dead_letter_state)
      JOIN payment_order o ON o.id = d.order_id
      WHERE d.state = ${DEAD_LETTER_STATE.open} AND d.id > ${after}
        AND o.state IN (${sql.join([...TERMINAL_STATES])})
      ORDER BY d.id LIMIT ${limit}`.execute(db);
    for (const row of rows) {
      if (MOOT_WHEN_FINAL.has(parseCommand(encoder.encode(row.payload))?.type ?? '')) {
        ids.push(row.id);
      }
    }
    if (rows.length < limit) break;
    after = rows[rows.length - 1]?.id ?? after;
  }
  if (ids.length === 0) return [];
  await sql`
    UPDATE dead_letter d JOIN payment_order o ON o.id = d.order_id
    SET d.state = ${DEAD_LETTER_STATE.resolved},
        d.resolution_note = CONCAT('the order reached ', o.state, ' without a replay'),
        d.updated_at = ${now}
    WHERE d.id IN (${sql.join(ids)}) AND d.state = ${DEAD_LETTER_STATE.open}
      AND o.state IN (${sql.join([...TERMINAL_STATES])})`.execute(db);
  const resolved = await db
    .selectFrom('dead_letter')
    .select('id')
    .where('id', 'in', ids)
    .where('state', '=', DEAD_LETTER_STATE.resolved)
    .where('updated_at', '=', now)
    .execute();
  return resolved.map((row) => row.id);
}
