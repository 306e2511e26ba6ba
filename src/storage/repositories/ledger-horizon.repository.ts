/**
 * Pages of ledger entries that can be tailed: each page ends before the settled horizon, the
 * lowest entry id whose booking may still commit. Ids are handed out (AUTO_INCREMENT) when a
 * booking's INSERT runs and become visible when its transaction commits, and bookings commit
 * concurrently (group commit, one-packet transactions, reconciliation's fee bookings), so an entry
 * can commit after entries with higher ids did. A page cut by id alone lets a caller's cursor pass
 * such an entry before it commits, and it is then never listed. Below the horizon, nothing can
 * appear any more: a cursor there never skips an entry, whenever the entry commits.
 *
 * What can still commit below the page's last id, and how each is found, without any lock:
 * - A row inserted by a transaction still open: a READ UNCOMMITTED read of the page's id range
 *   sees it, and the committed read that gave the page does not. That read is taken after the
 *   committed one, so a row that commits between the two is counted as in flight (a later page
 *   gets it); one rolled back in between is gone for good.
 * - An id handed out to an INSERT that has not put its row in the table yet: InnoDB takes the id
 *   first and inserts the row next, and the insert can wait for a lock in between (at most
 *   innodb_lock_wait_timeout, after which the statement fails and the id is never used). Such an
 *   id is a gap in the ids, which a rolled-back or failed INSERT leaves too, for good; the two
 *   cannot be told apart when the gap is young. So a gap is passed only once it is old: ids up to
 *   the `max_id` of a mark (table ledger_entry_mark) taken at least `reservationSettleMs` ago
 *   were all handed out before it, and are in the table by now or never will be. Above the
 *   newest such mark, the page ends at the first gap. Every node takes a mark each
 *   `markIntervalMs` (LedgerMarker), and a listing takes one when the newest is older, so a gap
 *   holds a caller at the head of the ledger for about reservationSettleMs + markIntervalMs.
 *   A listing of one payment order skips this: an order's bookings are made one after another
 *   (its actor's PAYMENT, then reconciliation's PSP_FEE, which needs the PAYMENT committed), so
 *   none of them can take an id below one of the order's entries already committed.
 *
 * The settled head (findSettledHead) is where such pages end when read on from an id already
 * settled: a tail that starts there gets every entry that commits from then on, and none of the
 * entries settled before.
 *
 * The bound assumes that only Settle's connections write ledger_entry (they wait for a lock for
 * MYSQL_LOCK_WAIT_TIMEOUT_S at most) and that the database server's clock does not step back.
 */
import { sql } from 'kysely';
import { LOCK_WAIT_TIMEOUT_S_DEFAULT, type Db } from '../db.js';
import { assertWholeAtLeastOne } from '../options.js';
import type { Trx } from '../transaction.js';
import { listLedgerEntries, type LedgerEntry } from './ledger.repository.js';

/**
 * How long an id handed out to an INSERT may take to show up as a row, beyond the lock wait, in
 * ms: the insert of one row, on a server that may be busy.
 */
export const RESERVATION_MARGIN_MS = 5_000;

/**
 * How long after a mark a gap below its `max_id` is known to stay a gap, in ms: the longest an
 * INSERT can hold an id before its row is in the table (its lock wait, then RESERVATION_MARGIN_MS).
 */
export function reservationSettleMsFor(lockWaitTimeoutS: number): number {
  return lockWaitTimeoutS * 1_000 + RESERVATION_MARGIN_MS;
}

export type LedgerHorizonOptions = Readonly<{
  /** See reservationSettleMsFor; under MARK_RING_SLOTS - 1 mark intervals. */
  reservationSettleMs: number;
  /** A new mark is taken when the newest is older than this, in ms. */
  markIntervalMs: number;
  /** Ids checked for gaps by one page at most (GAP_CHECK_IDS_MAX). */
  gapCheckIdsMax: number;
  /** Entries findSettledHead reads at most (HEAD_SEARCH_ENTRIES_MAX when left out). */
  headSearchEntriesMax?: number;
  /** Told when a listing's own mark cannot be written (the page is answered anyway). */
  onMarkError?: (error: unknown) => void;
}>;

/**
 * Slots of the mark ring (migration 0012): one per markIntervalMs, the newest mark of each kept,
 * so 68 minutes of marks at one a second.
 */
export const MARK_RING_SLOTS = 4_096;

/**
 * Ids above the newest old mark checked for gaps by one page at most. A page whose candidates
 * reach beyond ends there, and the next page goes on from there, so a listing of an account with
 * few entries among many of others' reads a bounded range per call.
 */
export const GAP_CHECK_IDS_MAX = 20_000;

/** Entries a search for the settled head reads per page. */
const HEAD_SEARCH_PAGE_ENTRIES = 1_000;

/**
 * Entries findSettledHead reads at most: the most one pass of the running sums adds
 * (LEDGER_SUMS_DEFAULTS.entriesPerPassMax), so a search from their checkpoint reaches the head
 * whenever the sums keep up with the ledger.
 */
const HEAD_SEARCH_ENTRIES_MAX = 50_000;

export const LEDGER_HORIZON_DEFAULTS: LedgerHorizonOptions = {
  reservationSettleMs: reservationSettleMsFor(LOCK_WAIT_TIMEOUT_S_DEFAULT),
  markIntervalMs: 1_000,
  gapCheckIdsMax: GAP_CHECK_IDS_MAX,
};

export type SettledPage = Readonly<{
  /** At most `limit` entries, oldest first, all below the horizon. */
  entries: LedgerEntry[];
  /** Committed entries follow the page (beyond `limit`, or beyond the horizon). */
  more: boolean;
  /** The page holds fewer than `limit` entries because the horizon cut it. */
  stoppedAtHorizon: boolean;
  /**
   * Where the next page starts after: every entry of the filter up to it has been answered or
   * can no longer commit. The last entry's id, or up to the horizon when the page was not full
   * (so a listing of a rare account moves on through others' ids); undefined when neither the
   * page nor `afterId` gave one.
   */
  resumeAfter: bigint | undefined;
}>;

/**
 * Up to `limit` committed entries after `afterId` (from the start without it), oldest first, that
 * end before the settled horizon (see the module comment): an entry with a lower id than the last
 * one answered can no longer commit, so a cursor at that last id misses nothing. Four to six
 * statements, none of which locks a row of ledger_entry; one more, on ledger_entry_mark, when the
 * newest mark is older than `markIntervalMs`.
 */
export async function listSettledLedgerEntries(
  db: Db,
  page: Readonly<{ account?: string; orderId?: string; afterId?: bigint; limit: number }>,
  options: LedgerHorizonOptions = LEDGER_HORIZON_DEFAULTS,
): Promise<SettledPage> {
  assertOptions(options);
  const marks = await readMarks(db, options);
  const candidates = await listLedgerEntries(db, { ...page, limit: page.limit + 1 });
  const top = candidates[candidates.length - 1]?.id;
  const horizon = await db
    .transaction()
    .setIsolationLevel('read uncommitted')
    .execute(async (trx) => {
      // The gap check first, then the in-flight read: a row missing at the first is a gap; a row
      // there at the first is still there at the second (unless rolled back, then gone for good)
      // and, not being in the committed read, counts as in flight. The other order lets a row
      // that lands between the two reads pass both (not in the table yet for the in-flight read,
      // no gap any more for the gap check), and the cursor would move past it.
      const missing =
        top === undefined || page.orderId !== undefined
          ? undefined
          : await firstMissing(trx, page, marks, { top, idsMax: options.gapCheckIdsMax });
      const inFlight =
        top === undefined
          ? undefined
          : await firstInFlight(trx, {
              ...page,
              top,
              committed: candidates.map((entry) => entry.id),
            });
      // What a mark promises holds for every id in the table as it is now, committed or not.
      const maxId = marks.fresh ? undefined : await maxEntryId(trx);
      return { below: minDefined(inFlight, missing), maxId };
    });
  // Best effort, not waited for: the page stands without it, and LedgerMarker takes marks anyway.
  // A mark that cannot be written soon (a lock, a slow server) must neither fail nor slow a read.
  if (horizon.maxId !== undefined) markWithoutWaiting(db, horizon.maxId, options);
  const below = horizon.below;
  const settled = below === undefined ? candidates : candidates.filter((entry) => entry.id < below);
  const entries = settled.slice(0, page.limit);
  const last = entries[entries.length - 1]?.id;
  // Below the horizon every entry of the filter that will ever exist has committed, and each one
  // after afterId was a candidate (the horizon is at most the last candidate's id): when all of
  // them are on this page, the next page can start at the horizon.
  const resumeAfter =
    settled.length > page.limit || below === undefined ? (last ?? page.afterId) : below - 1n;
  return {
    entries,
    more: candidates.length > entries.length,
    stoppedAtHorizon: settled.length < Math.min(candidates.length, page.limit),
    resumeAfter,
  };
}

/**
 * The settled head: the highest id at or below which every entry has committed or never will,
 * so that a cursor there misses no entry that commits later. Its search starts at `settledId`,
 * an id known to be settled already (the running sums' checkpoint), and reads on through the
 * same pages ListEntries answers until one cannot move on: it is empty at the newest committed
 * entry, or held at the horizon where the page before it ended. That is where a listing from the
 * head would be allowed to end now. It cannot start nearer the head: a booking still open can
 * hold any id, however old, and only a read of the ids since a settled one finds it (a page sees
 * its rows in flight). Pages are HEAD_SEARCH_PAGE_ENTRIES entries, or `gapCheckIdsMax`
 * when fewer, so that a page without gaps is never cut short by its gap check; the search reads
 * about `headSearchEntriesMax` entries at most, and one page more to find it cannot move on.
 * Undefined when that was not enough to reach the head.
 */
export async function findSettledHead(
  db: Db,
  settledId: bigint,
  options: LedgerHorizonOptions = LEDGER_HORIZON_DEFAULTS,
): Promise<bigint | undefined> {
  assertOptions(options);
  const entriesMax = options.headSearchEntriesMax ?? HEAD_SEARCH_ENTRIES_MAX;
  const limit = Math.min(HEAD_SEARCH_PAGE_ENTRIES, options.gapCheckIdsMax, entriesMax);
  const pagesMax = Math.ceil(entriesMax / limit) + 1;
  let head = settledId;
  for (let pages = 0; pages < pagesMax; pages += 1) {
    const page = await listSettledLedgerEntries(db, { afterId: head, limit }, options);
    // A page starts after `head` and never ends before it.
    const end = page.resumeAfter ?? head;
    // Nothing committed after it, or the horizon holds it where it started: the head is there.
    // A page cut by the horizon that did move on is followed by one that finds it cannot.
    if (!page.more || end === head) return end;
    head = end;
  }
  return undefined;
}

/** A listing's mark being written, per database: one at a time, the others skipped. */
const listingMarks = new WeakMap<Db, Promise<void>>();

function markWithoutWaiting(db: Db, maxId: bigint, options: LedgerHorizonOptions): void {
  if (listingMarks.has(db)) return;
  listingMarks.set(
    db,
    writeMark(db, maxId, options.markIntervalMs)
      .catch((error: unknown) => options.onMarkError?.(error))
      .finally(() => listingMarks.delete(db)),
  );
}

/**
 * Takes a mark every `markIntervalMs` (unless one is fresh), so that ListEntries always finds one
 * about reservationSettleMs old, whoever listed last: a gap then holds a tail for that long at
 * most, and a listing checks for gaps only among the ids of that last while.
 */
export class LedgerMarker {
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(
    private readonly db: Db,
    private readonly options: LedgerHorizonOptions,
    private readonly onError: (error: unknown) => void,
  ) {
    assertOptions(options);
  }

  start(): void {
    this.#timer = setInterval(() => {
      // One at a time: a tick while a mark is still being written (a slow database) is skipped,
      // not queued behind it.
      if (this.#running !== undefined) return;
      this.#running = this.takeMark()
        .catch(this.onError)
        .finally(() => (this.#running = undefined));
    }, this.options.markIntervalMs);
    this.#timer.unref();
  }

  /** Stops the timer and waits for a mark being written. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }

  /** Writes a mark unless the newest is younger than markIntervalMs. */
  async takeMark(): Promise<void> {
    const marks = await readMarks(this.db, this.options);
    if (marks.fresh) return;
    await writeMark(this.db, await maxEntryId(this.db), this.options.markIntervalMs);
  }
}

type Marks = Readonly<{
  /** Ids up to it are in the table or never will be; undefined when no mark is old enough. */
  floor: bigint | undefined;
  /** The newest mark is younger than markIntervalMs: no new one is needed. */
  fresh: boolean;
}>;

async function readMarks(db: Db, options: LedgerHorizonOptions): Promise<Marks> {
  const settleUs = options.reservationSettleMs * 1_000;
  const intervalUs = options.markIntervalMs * 1_000;
  // The newest old mark, and the newest of all: two lookups in ledger_entry_mark_taken.
  const result = await sql<{ floor_id: string | null; fresh: number | string | null }>`
    SELECT (SELECT max_id FROM ledger_entry_mark
            WHERE taken_at <= UTC_TIMESTAMP(6) - INTERVAL ${settleUs} MICROSECOND
            ORDER BY taken_at DESC LIMIT 1) AS floor_id,
           (SELECT MAX(taken_at) FROM ledger_entry_mark)
             > UTC_TIMESTAMP(6) - INTERVAL ${intervalUs} MICROSECOND AS fresh`.execute(db);
  const row = result.rows[0];
  return {
    floor: row?.floor_id === null || row?.floor_id === undefined ? undefined : BigInt(row.floor_id),
    fresh: Number(row?.fresh ?? 0) === 1,
  };
}

/**
 * Notes that every id up to `maxId` (read before this statement) was handed out by now. The slot
 * is this mark interval's; a mark written there a turn of the ring ago is replaced, one of this
 * interval kept if it is newer. `max_id` is assigned first: MySQL's later assignments see the
 * earlier ones. Any slot would be correct (each row is a true mark); the ring keeps one mark per
 * interval, so that one about reservationSettleMs old is always there.
 */
async function writeMark(db: Db, maxId: bigint, markIntervalMs: number): Promise<void> {
  await sql`
    INSERT INTO ledger_entry_mark (slot, taken_at, max_id)
    VALUES (FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000 / ${markIntervalMs}) MOD ${MARK_RING_SLOTS},
            UTC_TIMESTAMP(6), ${maxId})
    ON DUPLICATE KEY UPDATE
      max_id = IF(VALUES(taken_at) > taken_at, VALUES(max_id), max_id),
      taken_at = GREATEST(taken_at, VALUES(taken_at))`.execute(db);
}

/**
 * The lowest id of an entry of the page's filter in (afterId, top] that the committed read did not
 * give: its transaction was open when it was read (or committed just after the committed read).
 */
async function firstInFlight(
  trx: Trx,
  range: Readonly<{
    account?: string;
    orderId?: string;
    afterId?: bigint;
    top: bigint;
    committed: readonly bigint[];
  }>,
): Promise<bigint | undefined> {
  const result = await sql<{ id: string | null }>`
    SELECT MIN(id) AS id FROM ledger_entry
    WHERE id > ${range.afterId ?? 0n} AND id <= ${range.top}
      AND id NOT IN (${sql.join(range.committed)})
      ${range.account !== undefined ? sql`AND account = ${range.account}` : sql``}
      ${range.orderId !== undefined ? sql`AND order_id = ${range.orderId}` : sql``}`.execute(trx);
  const id = result.rows[0]?.id;
  return id === null || id === undefined ? undefined : BigInt(id);
}

/**
 * The first id missing from the table in (from, top], `from` being afterId or the newest old
 * mark's `max_id`, whichever is higher; of any account (the entry an id not yet in the table will
 * be may be anyone's); or the first id past `idsMax` of them. Every id below it is in the table
 * (committed or not) or at most that `max_id`. Undefined when none is missing up to `top`.
 */
async function firstMissing(
  trx: Trx,
  page: Readonly<{ afterId?: bigint }>,
  marks: Marks,
  range: Readonly<{ top: bigint; idsMax: number }>,
): Promise<bigint | undefined> {
  const { top } = range;
  const after = page.afterId ?? 0n;
  const from = marks.floor !== undefined && marks.floor > after ? marks.floor : after;
  if (from >= top) return undefined;
  const idsMax = BigInt(range.idsMax);
  const checkedTo = from + idsMax < top ? from + idsMax : top;
  // The range's first id when it is missing (`from` itself may be: a cursor can sit anywhere),
  // else the successor of the first id there whose successor is.
  const first = from + 1n;
  const result = await sql<{ id: string | number | null }>`
    SELECT CASE
      WHEN NOT EXISTS (SELECT 1 FROM ledger_entry WHERE id = ${first}) THEN ${first}
      ELSE (SELECT MIN(a.id) + 1 FROM ledger_entry a
            WHERE a.id >= ${first} AND a.id < ${checkedTo}
              AND NOT EXISTS (SELECT 1 FROM ledger_entry b WHERE b.id = a.id + 1))
    END AS id`.execute(trx);
  const id = result.rows[0]?.id;
  if (id !== null && id !== undefined) return BigInt(id);
  return checkedTo < top ? checkedTo + 1n : undefined;
}

async function maxEntryId(trx: Db | Trx): Promise<bigint> {
  const result = await sql<{ id: string | null }>`SELECT MAX(id) AS id FROM ledger_entry`.execute(
    trx,
  );
  return BigInt(result.rows[0]?.id ?? 0);
}

function minDefined(a: bigint | undefined, b: bigint | undefined): bigint | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return a < b ? a : b;
}

function assertOptions(options: LedgerHorizonOptions): void {
  const { reservationSettleMs, markIntervalMs, gapCheckIdsMax, headSearchEntriesMax } = options;
  assertWholeAtLeastOne('gapCheckIdsMax', gapCheckIdsMax);
  if (headSearchEntriesMax !== undefined) {
    assertWholeAtLeastOne('headSearchEntriesMax', headSearchEntriesMax);
  }
  assertWholeAtLeastOne('markIntervalMs', markIntervalMs);
  if (
    !Number.isInteger(reservationSettleMs) ||
    reservationSettleMs < 1 ||
    reservationSettleMs + markIntervalMs >= MARK_RING_SLOTS * markIntervalMs
  ) {
    throw new RangeError(
      `reservationSettleMs must be a whole number ≥ 1 and, with markIntervalMs, under the mark ` +
        `ring's ${MARK_RING_SLOTS} intervals, got ${reservationSettleMs}`,
    );
  }
}
