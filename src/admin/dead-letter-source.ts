/**
 * The admin panel's view of the dead-letter queue: a thin adapter over src/admin/dead-letters.ts
 * (the `dead_letter` table and its replay/discard functions, shared with gRPC AdminService), so
 * the panel and the API act through one implementation. The adapter only adds what the pages
 * need: keyset pages, the entries of a payment's orders, and the counts.
 */
import type { Db } from '../storage/db.js';
import type { DeadLetterCounts } from '../observability/operations.js';
import {
  countDeadLetters,
  DEAD_LETTER_STATE,
  discardDeadLetter,
  findDeadLetter,
  listDeadLetters,
  replayDeadLetter,
  type DeadLetterRecord,
  type DeadLetterState,
} from './dead-letters.js';

export { DEAD_LETTER_STATE, type DeadLetterState, type DeadLetterCounts };
export type DeadLetterEntry = DeadLetterRecord;

export type DeadLetterPage = Readonly<{
  entries: DeadLetterEntry[];
  /** Pass as `beforeId` for the next (older) page; undefined on the last page. */
  nextBeforeId: string | undefined;
}>;

export interface DeadLetterSource {
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

/** A payment has at most 50 orders; each shows at most this many dead letters. */
const PER_ORDER_MAX = 20;

export function deadLetterAuditTarget(id: string): string {
  return `dead-letter:${id}`;
}

export function tableDeadLetters(deps: {
  db: Db;
  wakeRelay: () => void;
  now: () => Date;
}): DeadLetterSource {
  const { db } = deps;
  return {
    auditTarget: deadLetterAuditTarget,
    async list(filter) {
      const rows = await listDeadLetters(db, { ...filter, limit: filter.limit + 1 });
      const entries = rows.slice(0, filter.limit);
      return {
        entries,
        nextBeforeId: rows.length > filter.limit ? entries[entries.length - 1]?.id : undefined,
      };
    },
    get: (id) => (/^\d{1,19}$/.test(id) ? findDeadLetter(db, id) : Promise.resolve(undefined)),
    async forOrders(orderIds) {
      const perOrder = await Promise.all(
        orderIds.map((orderId) => listDeadLetters(db, { orderId, limit: PER_ORDER_MAX })),
      );
      return perOrder.flat().sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime());
    },
    counts: () => countDeadLetters(db),
    replay: (id, actor) => replayDeadLetter(deps, id, actor),
    discard: (id, reason, actor) => discardDeadLetter(deps, id, reason, actor),
  };
}
