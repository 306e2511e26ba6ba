/**
 * The admin panel's view of the dead-letter queue, behind one small interface so the panel does
 * not care where dead letters live.
 *
 * This branch has no `dead_letter` table yet (it is planned with src/admin/dead-letters.ts:
 * listDeadLetters / replayDeadLetter / discardDeadLetter). Until it lands, `jetStreamDeadLetters`
 * reads the DLQ stream (names.deadLetterStream) READ-ONLY: entries are the stream's messages, id =
 * the message's sequence in the DLQ stream. An entry's state is derived from the admin audit
 * trail: the last successful REPLAY_DEAD_LETTER or DISCARD_DEAD_LETTER on `dlq-stream:<seq>`.
 *
 * - Replay writes the original command back to the outbox, in the same transaction as its audit
 *   row, so the normal path (relay → JetStream → consumer → actor) runs it again. The actor treats
 *   a command for an order that has moved on as a no-op, so a late replay does no harm; the
 *   outbox msg id `replay:<seq>` makes a second replay of one entry fail instead of repeating.
 * - Discard only records the decision; the stream message stays until the stream's max age.
 *
 * To switch to the table: implement DeadLetterSource with the functions of
 * src/admin/dead-letters.ts and return it from `createDeadLetterSource` (the one place to swap).
 */
import { z } from 'zod';
import type { JetStreamManager } from '@nats-io/jetstream';
import { FailedPreconditionError, NotFoundError } from '../domain/errors.js';
import type { Names } from '../messaging/subjects.js';
import type { DeadLetterCounts } from '../observability/operations.js';
import type { Db } from '../storage/db.js';
import {
  latestSuccessfulActions,
  type AuditRecord,
} from '../storage/repositories/admin-audit.repository.js';
import { enqueueOutbox } from '../storage/repositories/outbox.repository.js';
import type { Trx } from '../storage/transaction.js';

export const DEAD_LETTER_STATE = {
  open: 'OPEN',
  replayed: 'REPLAYED',
  discarded: 'DISCARDED',
} as const;
export type DeadLetterState = (typeof DEAD_LETTER_STATE)[keyof typeof DEAD_LETTER_STATE];

export const ADMIN_ACTION = {
  login: 'LOGIN',
  logout: 'LOGOUT',
  replayDeadLetter: 'REPLAY_DEAD_LETTER',
  discardDeadLetter: 'DISCARD_DEAD_LETTER',
} as const;

export type DeadLetterEntry = Readonly<{
  /** The source's id: the DLQ stream sequence here, the table's id later. */
  id: string;
  /** The command's sequence in the command stream. */
  streamSequence: number;
  orderId: string | null;
  subject: string;
  reason: string;
  attempts: number;
  lastError: string;
  payload: string;
  state: DeadLetterState;
  /** Who resolved it, when and why; undefined while OPEN. */
  resolution: Readonly<{ actor: string; at: Date; note: string }> | undefined;
  createdAt: Date;
}>;

export type DeadLetterPage = Readonly<{
  entries: DeadLetterEntry[];
  /** Pass as `beforeId` for the next (older) page; undefined on the last page. */
  nextBeforeId: string | undefined;
  /** True when the scan budget ran out before the page was full (only with a state filter). */
  truncated: boolean;
}>;

export type { DeadLetterCounts };

export interface DeadLetterSource {
  /** Where the entries come from, shown on the page. */
  readonly description: string;
  list(filter: {
    state?: DeadLetterState;
    beforeId?: string;
    limit: number;
  }): Promise<DeadLetterPage>;
  get(id: string): Promise<DeadLetterEntry | undefined>;
  /** Entries of these orders among the newest `scanMax` dead letters. */
  forOrders(orderIds: readonly string[]): Promise<DeadLetterEntry[]>;
  counts(): Promise<DeadLetterCounts>;
  /** The admin_audit target naming an entry. */
  auditTarget(id: string): string;
  /** Sends the entry's command back through the normal path; runs inside the audit's transaction. */
  replay(trx: Trx, id: string): Promise<Record<string, unknown>>;
  /** Checks that the entry may be discarded; the audit row written with it is the decision. */
  discard(trx: Trx, id: string): Promise<Record<string, unknown>>;
}

/** The one place that picks the dead-letter source (see the module comment). */
export function createDeadLetterSource(deps: {
  db: Db;
  jsm: JetStreamManager;
  names: Names;
}): DeadLetterSource {
  return jetStreamDeadLetters(deps);
}

// The DeadLetter JSON the command consumer publishes (src/messaging/command-consumer.ts).
const deadLetterSchema = z.object({
  orderId: z.string().nullable(),
  subject: z.string(),
  streamSequence: z.number().int(),
  attempts: z.number().int(),
  reason: z.string(),
  lastError: z.string(),
  payload: z.string(),
  deadLetteredAt: z.string(),
});

/** Messages read per list page at most, so a filtered page cannot scan the whole stream. */
const LIST_SCAN_MAX = 1_000;
/** How far back the payment page looks for an order's dead letters. */
const ORDER_SCAN_MAX = 2_000;
const READ_CONCURRENCY = 16;
const TARGET_PREFIX = 'dlq-stream:';

export function jetStreamDeadLetters(deps: {
  db: Db;
  jsm: JetStreamManager;
  names: Names;
}): DeadLetterSource {
  const { db, jsm, names } = deps;
  const stream = names.deadLetterStream;
  const commandSubjectPrefix = names.commandSubjectAll.replace(/>$/, '');
  const auditTarget = (id: string) => `${TARGET_PREFIX}${id}`;
  const resolutionActions = [ADMIN_ACTION.replayDeadLetter, ADMIN_ACTION.discardDeadLetter];

  type Raw = Readonly<{ seq: number; time: Date; letter: z.infer<typeof deadLetterSchema> }>;

  async function read(seq: number): Promise<Raw | undefined> {
    const message = await jsm.streams.getMessage(stream, { seq });
    if (message === null) return undefined;
    let letter;
    try {
      letter = deadLetterSchema.parse(JSON.parse(message.string()));
    } catch {
      // Not a DeadLetter record: show it as such rather than hide it.
      letter = {
        orderId: null,
        subject: message.subject,
        streamSequence: 0,
        attempts: 0,
        reason: 'UNREADABLE_DEAD_LETTER',
        lastError: 'the DLQ message is not a DeadLetter JSON record',
        payload: message.string().slice(0, 64 * 1024),
        deadLetteredAt: message.time.toISOString(),
      };
    }
    return { seq, time: message.time, letter };
  }

  /** Reads the sequences newest first, READ_CONCURRENCY at a time, skipping deleted ones. */
  async function readMany(seqs: readonly number[]): Promise<Raw[]> {
    const out: Raw[] = [];
    for (let i = 0; i < seqs.length; i += READ_CONCURRENCY) {
      const chunk = await Promise.all(seqs.slice(i, i + READ_CONCURRENCY).map(read));
      for (const raw of chunk) if (raw !== undefined) out.push(raw);
    }
    return out;
  }

  async function withState(db: Db | Trx, raws: readonly Raw[]): Promise<DeadLetterEntry[]> {
    const decisions = await latestSuccessfulActions(
      db,
      raws.map((raw) => auditTarget(String(raw.seq))),
      resolutionActions,
    );
    return raws.map((raw) => toEntry(raw, decisions.get(auditTarget(String(raw.seq)))));
  }

  function toEntry(raw: Raw, decision: AuditRecord | undefined): DeadLetterEntry {
    const state =
      decision === undefined
        ? DEAD_LETTER_STATE.open
        : decision.action === ADMIN_ACTION.replayDeadLetter
          ? DEAD_LETTER_STATE.replayed
          : DEAD_LETTER_STATE.discarded;
    const createdAt = new Date(raw.letter.deadLetteredAt);
    return {
      id: String(raw.seq),
      streamSequence: raw.letter.streamSequence,
      orderId: raw.letter.orderId,
      subject: raw.letter.subject,
      reason: raw.letter.reason,
      attempts: raw.letter.attempts,
      lastError: raw.letter.lastError,
      payload: raw.letter.payload,
      state,
      resolution:
        decision === undefined
          ? undefined
          : { actor: decision.actor, at: decision.createdAt, note: decision.reason },
      createdAt: Number.isNaN(createdAt.getTime()) ? raw.time : createdAt,
    };
  }

  async function bounds(): Promise<{ first: number; last: number; messages: number }> {
    const info = await jsm.streams.info(stream);
    return {
      first: info.state.first_seq,
      last: info.state.last_seq,
      messages: info.state.messages,
    };
  }

  function parseId(id: string): number {
    if (!/^\d{1,15}$/.test(id)) throw new NotFoundError('dead letter', id.slice(0, 40));
    return Number(id);
  }

  async function getOpen(trx: Trx, id: string): Promise<DeadLetterEntry> {
    const raw = await read(parseId(id));
    if (raw === undefined) throw new NotFoundError('dead letter', id);
    const [entry] = await withState(trx, [raw]);
    if (entry === undefined) throw new NotFoundError('dead letter', id);
    if (entry.state !== DEAD_LETTER_STATE.open) {
      throw new FailedPreconditionError(
        `dead letter ${id} is already ${entry.state} (by ${entry.resolution?.actor ?? '?'} at ` +
          `${entry.resolution?.at.toISOString() ?? '?'})`,
      );
    }
    return entry;
  }

  return {
    description:
      `JetStream stream ${stream}, read-only; states come from the admin audit trail ` +
      '(the dead_letter table is not on this build yet)',
    auditTarget,

    async list(filter) {
      const { first, last } = await bounds();
      const lowest = Math.max(first, 1);
      // The next sequence to read, going down; entries below `cursor + 1` are still to come.
      let cursor = filter.beforeId === undefined ? last : parseId(filter.beforeId) - 1;
      const entries: DeadLetterEntry[] = [];
      let scanned = 0;
      while (cursor >= lowest && entries.length < filter.limit && scanned < LIST_SCAN_MAX) {
        const wanted = filter.state === undefined ? filter.limit - entries.length : 100;
        const seqs: number[] = [];
        for (
          let seq = cursor;
          seq >= lowest && seqs.length < Math.min(wanted, LIST_SCAN_MAX - scanned);
          seq -= 1
        ) {
          seqs.push(seq);
        }
        scanned += seqs.length;
        cursor = (seqs[seqs.length - 1] ?? lowest) - 1;
        for (const entry of await withState(db, await readMany(seqs))) {
          if (filter.state !== undefined && entry.state !== filter.state) continue;
          entries.push(entry);
          if (entries.length === filter.limit) {
            cursor = Number(entry.id) - 1;
            break;
          }
        }
      }
      const more = cursor >= lowest;
      return {
        entries,
        nextBeforeId: more ? String(cursor + 1) : undefined,
        truncated: more && entries.length < filter.limit,
      };
    },

    async get(id) {
      const raw = await read(parseId(id));
      if (raw === undefined) return undefined;
      return (await withState(db, [raw]))[0];
    },

    async forOrders(orderIds) {
      if (orderIds.length === 0) return [];
      const wanted = new Set(orderIds);
      const { first, last } = await bounds();
      const seqs: number[] = [];
      for (let seq = last; seq >= first && seq > 0 && seqs.length < ORDER_SCAN_MAX; seq -= 1) {
        seqs.push(seq);
      }
      const raws = (await readMany(seqs)).filter(
        (raw) => raw.letter.orderId !== null && wanted.has(raw.letter.orderId),
      );
      return withState(db, raws);
    },

    async counts() {
      const { first, last, messages } = await bounds();
      if (messages === 0) return { open: 0, total: 0 };
      // Resolutions are few (one per operator decision): count those inside the stream's window.
      const rows = await db
        .selectFrom('admin_audit')
        .select('target')
        .distinct()
        .where('target', 'like', `${TARGET_PREFIX}%`)
        .where('action', 'in', resolutionActions)
        .where('outcome', '=', 'OK')
        .limit(100_000)
        .execute();
      const resolved = rows.filter((row) => {
        const seq = Number(row.target.slice(TARGET_PREFIX.length));
        return seq >= first && seq <= last;
      }).length;
      return { open: Math.max(0, messages - resolved), total: messages };
    },

    async replay(trx, id) {
      const entry = await getOpen(trx, id);
      if (entry.orderId === null || !entry.subject.startsWith(commandSubjectPrefix)) {
        throw new FailedPreconditionError(
          `dead letter ${id} is not a command of this namespace (${entry.reason}); discard it instead`,
        );
      }
      const msgId = `replay:${stream}:${id}`;
      await enqueueOutbox(
        trx,
        [{ subject: entry.subject, msgId, payload: entry.payload }],
        new Date(),
      );
      return {
        orderId: entry.orderId,
        subject: entry.subject,
        msgId,
        deadLetterReason: entry.reason,
      };
    },

    async discard(trx, id) {
      const entry = await getOpen(trx, id);
      return { orderId: entry.orderId, deadLetterReason: entry.reason };
    },
  };
}
