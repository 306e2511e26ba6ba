/**
 * The admin panel's view of the dead-letter queue: a thin adapter over src/admin/dead-letters.ts
 * (the `dead_letter` table and its replay/discard functions, shared with gRPC AdminService), so
 * the panel and the API act through one implementation. The adapter only adds what the pages
 * need: keyset pages, the entries of a payment's orders, and the counts.
 */
import type { Db } from '../storage/db.js';
import type { DeadLetterCounts } from '../observability/operations.js';
import {
  canonicalDeadLetterId,
  countDeadLetters,
  DEAD_LETTER_STATE,
  discardDeadLetter,
  findDeadLetter,
  listDeadLetterPage,
  listDeadLetters,
  replayDeadLetter,
  type DeadLetterPage,
  type DeadLetterRecord,
  type DeadLetterState,
} from './dead-letters.js';

export { DEAD_LETTER_STATE, type DeadLetterPage, type DeadLetterState, type DeadLetterCounts };
export type DeadLetterEntry = DeadLetterRecord;

export interface DeadLetterSource {
  /** Throws InvalidArgumentError('before') for a `beforeId` that is no dead-letter id. */
  list(filter: {
    state?: DeadLetterState;
    beforeId?: string;
    limit: number;
  }): Promise<DeadLetterPage>;
  get(id: string): Promise<DeadLetterEntry | undefined>;
  /** The dead letters of these orders, newest first. */
  forOrders(orderIds: readonly string[]): Promise<DeadLetterEntry[]>;
  counts(): Promise<DeadLetterCounts>;
  /** The admin_audit target naming an entry. */
  auditTarget(id: string): string;
  replay(id: string, actor: string): Promise<DeadLetterEntry>;
  discard(id: string, reason: string, actor: string): Promise<DeadLetterEntry>;
}

/** A payment has at most 50 orders; it shows at most this many dead letters per order. */
const PER_ORDER_MAX = 20;

/**
 * The admin_audit target naming an entry, by its canonical id (`0004` is entry 4), so the panel
 * and AdminService audit an entry where its payment's page looks. Text that is no id (a refused
 * request) is kept, cut to fit the column.
 */
export function deadLetterAuditTarget(id: string): string {
  return `dead-letter:${canonicalDeadLetterId(id) ?? id.slice(0, 64)}`;
}

export function tableDeadLetters(deps: {
  db: Db;
  wakeRelay: () => void;
  now: () => Date;
}): DeadLetterSource {
  const { db } = deps;
  return {
    auditTarget: deadLetterAuditTarget,
    list: (filter) => listDeadLetterPage(db, filter, 'before'),
    get: (id) => {
      const canonical = canonicalDeadLetterId(id);
      return canonical !== undefined ? findDeadLetter(db, canonical) : Promise.resolve(undefined);
    },
    forOrders: (orderIds) =>
      listDeadLetters(db, { orderIds, limit: orderIds.length * PER_ORDER_MAX }),
    counts: () => countDeadLetters(db),
    replay: (id, actor) => replayDeadLetter(deps, id, actor),
    discard: (id, reason, actor) => discardDeadLetter(deps, id, reason, actor),
  };
}
