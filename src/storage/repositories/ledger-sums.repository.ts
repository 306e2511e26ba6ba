/**
 * The trial balance without reading the whole ledger. Running sums of debits and credits, per
 * (account, currency) and per currency (migration 0013), count every entry up to a checkpoint id;
 * a balance is the sums plus the entries after the checkpoint, read in one consistent snapshot,
 * so sums and checkpoint always match. What a page or the totals read thus grows with the
 * entries after the checkpoint, not with the ledger: the totals read a row per currency and a
 * range of the primary key; a page reads a row per account and the same range at most. The
 * checkpoint trails the head by a few seconds, or by as long as a booking stays open (the
 * horizon stops before it): readers then read all the entries after it, which the metrics
 * `settle_ledger_sums_*` show.
 *
 * The checkpoint moves only below the ledger's settled horizon (ledger-horizon.repository.ts):
 * every entry at most the checkpoint has committed or never will, so an entry is never counted
 * twice (it is in the sums or after the checkpoint, never both) nor missed (one committing late,
 * below entries already counted, holds the checkpoint below it until it commits). Each node runs
 * a LedgerSummer: one pass reads the settled entries after the checkpoint through the same pages
 * ListEntries answers, adds them up in memory, and writes the new sums and checkpoint in one
 * transaction, conditional on the checkpoint not having moved meanwhile (another node's pass):
 * the loser's pass is dropped, so no entry is added twice. No row of ledger_entry is locked.
 *
 * The sums are as correct as the assumption the ledger rests on: entries are appended, never
 * updated or deleted. An entry changed by hand below the checkpoint is not seen by the trial
 * balance; `trialBalanceByCurrency` (ledger.repository.ts), which the invariant checks and
 * reconciliation use, still sums every entry, and `ledgerSumsDrift` compares the two (at the end
 * of every reconciliation run, in its internal check).
 */
import { sql } from 'kysely';
import { FailedPreconditionError } from '../../domain/errors.js';
import type { Db } from '../db.js';
import { inTransaction, type Trx } from '../transaction.js';
import {
  listSettledLedgerEntries,
  type LedgerHorizonOptions,
} from './ledger-horizon.repository.js';
import {
  currencyBalance,
  type AccountBalance,
  type AccountKey,
  type CurrencyBalance,
} from './ledger.repository.js';

/** Entries read per ListEntries-sized page by a pass. */
const PASS_PAGE_ENTRIES = 1_000;

/** (account, currency) pairs listed at most by ledgerSumsDrift. */
const DRIFT_LISTED_MAX = 1_000;

/** Rows written per upsert statement by a pass. */
const UPSERT_ROWS_MAX = 500;

export type LedgerSumsOptions = Readonly<{
  /** Where the settled horizon is (as for ListEntries). */
  horizon: LedgerHorizonOptions;
  /** Entries one pass adds at most; the next pass goes on from there. */
  entriesPerPassMax: number;
}>;

/**
 * A pass every 5 s, of 50,000 entries at most: far above the ledger's rate at full load (two
 * entries per order), so the sums stay within a pass and the settle window of the head.
 */
export const LEDGER_SUMS_DEFAULTS = { intervalMs: 5_000, entriesPerPassMax: 50_000 } as const;

export type LedgerSumsPass = Readonly<{
  /** The checkpoint before the pass. */
  from: bigint;
  /** The checkpoint after it: `from` when nothing was settled, or another node's pass won. */
  to: bigint;
  /** Entries added to the sums. */
  entries: number;
  /** Another node's pass moved the checkpoint meanwhile; this one was dropped. */
  lost: boolean;
}>;

/** The checkpoint: entries up to this id are in the sums, and no other can appear below it. */
export async function ledgerSumsCheckpoint(
  db: Db | Trx,
): Promise<Readonly<{ uptoId: bigint; advancedAt: Date }>> {
  const result = await sql<{ upto_id: string; advanced_at: Date }>`
    SELECT upto_id, advanced_at FROM ledger_sum_checkpoint WHERE id = 1`.execute(db);
  const row = result.rows[0];
  if (row === undefined) throw missingCheckpoint();
  return { uptoId: BigInt(row.upto_id), advancedAt: row.advanced_at };
}

/**
 * Adds the settled entries after the checkpoint to the sums (at most `entriesPerPassMax`), and
 * moves the checkpoint past them, in one transaction that first checks the checkpoint is where
 * the pass started from.
 */
export async function advanceLedgerSums(
  db: Db,
  options: LedgerSumsOptions,
): Promise<LedgerSumsPass> {
  if (!Number.isInteger(options.entriesPerPassMax) || options.entriesPerPassMax < 1) {
    throw new RangeError(
      `entriesPerPassMax must be a whole number ≥ 1, got ${options.entriesPerPassMax}`,
    );
  }
  const from = (await ledgerSumsCheckpoint(db)).uptoId;
  const byAccount = new Map<string, Map<string, Sums>>();
  const byCurrency = new Map<string, Sums>();
  let to = from;
  let entries = 0;
  while (entries < options.entriesPerPassMax) {
    const page = await listSettledLedgerEntries(
      db,
      { afterId: to, limit: Math.min(PASS_PAGE_ENTRIES, options.entriesPerPassMax - entries) },
      options.horizon,
    );
    for (const entry of page.entries) {
      let currencies = byAccount.get(entry.account);
      if (currencies === undefined)
        byAccount.set(entry.account, (currencies = new Map<string, Sums>()));
      add(currencies, entry.currency, entry);
      add(byCurrency, entry.currency, entry);
    }
    entries += page.entries.length;
    if (page.resumeAfter !== undefined && page.resumeAfter > to) to = page.resumeAfter;
    if (!page.more || page.stoppedAtHorizon || page.entries.length === 0) break;
  }
  if (to === from) return { from, to, entries: 0, lost: false };
  // Another node's pass may have moved the checkpoint while this one read: then drop this one
  // now, rather than wait below for that pass's row lock to learn it.
  if ((await checkpointIn(db)) !== from) return { from, to: from, entries: 0, lost: true };
  const moved = await inTransaction(db, async (trx) => {
    // The row lock this takes makes a concurrent pass wait here, then find the checkpoint moved.
    const result = await sql`
      UPDATE ledger_sum_checkpoint SET upto_id = ${to}, advanced_at = UTC_TIMESTAMP(3)
      WHERE id = 1 AND upto_id = ${from}`.execute(trx);
    if (Number(result.numAffectedRows ?? 0n) !== 1) return false;
    const accountRows = [...byAccount].flatMap(([account, currencies]) =>
      [...currencies].map(([currency, sums]) => ({ account, currency, sums })),
    );
    for (const chunk of chunks(accountRows)) {
      await sql`
        INSERT INTO ledger_account_sum (account, currency, debit_minor, credit_minor)
        VALUES ${sql.join(
          chunk.map(
            ({ account, currency, sums }) =>
              sql`(${account}, ${currency}, ${sums.debit}, ${sums.credit})`,
          ),
        )}
        ON DUPLICATE KEY UPDATE debit_minor = debit_minor + VALUES(debit_minor),
                                credit_minor = credit_minor + VALUES(credit_minor)`.execute(trx);
    }
    for (const chunk of chunks([...byCurrency.entries()])) {
      await sql`
        INSERT INTO ledger_currency_sum (currency, debit_minor, credit_minor)
        VALUES ${sql.join(chunk.map(([currency, sums]) => sql`(${currency}, ${sums.debit}, ${sums.credit})`))}
        ON DUPLICATE KEY UPDATE debit_minor = debit_minor + VALUES(debit_minor),
                                credit_minor = credit_minor + VALUES(credit_minor)`.execute(trx);
    }
    return true;
  });
  return moved ? { from, to, entries, lost: false } : { from, to: from, entries: 0, lost: true };
}

/**
 * Debits minus credits over every account, per currency: the sums plus the entries after the
 * checkpoint. Equal to trialBalanceByCurrency's full scan at the same instant. Two statements in
 * one REPEATABLE READ transaction, the checkpoint read first and given to the second as a
 * literal (see trialBalancePage), so that the range over the ids after it does not rest on how
 * the server plans a subquery.
 */
export async function trialBalanceTotals(db: Db): Promise<CurrencyBalance[]> {
  const rows = await inSnapshot(db, async (trx) => {
    const uptoId = await checkpointIn(trx);
    const result = await sql<{ currency: string; debits: string; credits: string }>`
      SELECT currency, SUM(debit_minor) AS debits, SUM(credit_minor) AS credits
      FROM (
        SELECT currency, debit_minor, credit_minor FROM ledger_currency_sum
        UNION ALL
        SELECT currency, debit_minor, credit_minor FROM ledger_entry WHERE id > ${uptoId}
      ) AS counted
      GROUP BY currency
      ORDER BY currency`.execute(trx);
    return result.rows;
  });
  return rows.map((row) => currencyBalance(row.currency, row));
}

/** Rows answered at most by one `trialBalancePage`. */
export const TRIAL_BALANCE_PAGE_ROWS_MAX = 1_000;

export type TrialBalancePage = Readonly<{
  accounts: AccountBalance[];
  /** The key to read the next page after; undefined on the last page. */
  next: AccountKey | undefined;
}>;

/**
 * Debits minus credits per (account, currency), in that order: at most `limit` rows from just
 * after `after` (keyset paging; from the start without it). The page's accounts are picked first
 * from the (account, id) index; each one's balance is its sums plus its entries after the
 * checkpoint. One row more than `limit` is read to know whether a next page exists; since the
 * cursor's own account may have no currency left after it, one account more than that is picked.
 * Three statements in one REPEATABLE READ transaction, whose first read fixes the snapshot of all
 * three: the checkpoint is read first and given to the last as a literal. Compared with a column
 * of a joined or sub-selected checkpoint, MariaDB read every entry of each page account (a
 * `ref` on the account, the id filtered row by row: 1.5 s for a page holding psp_receivable
 * with 500,000 entries); with a literal it reads a range of ids, the entries after the
 * checkpoint at most.
 */
export async function trialBalancePage(
  db: Db,
  page: Readonly<{ after?: AccountKey | undefined; limit: number }>,
): Promise<TrialBalancePage> {
  if (!Number.isInteger(page.limit) || page.limit < 1 || page.limit > TRIAL_BALANCE_PAGE_ROWS_MAX) {
    throw new RangeError(`limit must be 1-${TRIAL_BALANCE_PAGE_ROWS_MAX}, got ${page.limit}`);
  }
  const after = page.after;
  const result = await inSnapshot(db, async (trx) => {
    const uptoId = await checkpointIn(trx);
    // An account is in ledger_account_sum only once it has entries, and entries are never
    // deleted: the accounts of ledger_entry are all of them.
    const picked = await sql<{ account: string }>`
        SELECT DISTINCT account FROM ledger_entry
        ${after !== undefined ? sql`WHERE account >= ${after.account}` : sql``}
        ORDER BY account LIMIT ${page.limit + 2}`.execute(trx);
    if (picked.rows.length === 0) return [];
    const accounts = sql.join(picked.rows.map((row) => row.account));
    const balances = await sql<{
      account: string;
      currency: string;
      debits: string;
      credits: string;
    }>`
        SELECT account, currency, SUM(debit_minor) AS debits, SUM(credit_minor) AS credits
        FROM (
          SELECT account, currency, debit_minor, credit_minor FROM ledger_account_sum
          WHERE account IN (${accounts})
          UNION ALL
          SELECT account, currency, debit_minor, credit_minor FROM ledger_entry
          WHERE account IN (${accounts}) AND id > ${uptoId}
        ) AS counted
        ${after !== undefined ? sql`WHERE account > ${after.account} OR currency > ${after.currency}` : sql``}
        GROUP BY account, currency
        ORDER BY account, currency
        LIMIT ${page.limit + 1}`.execute(trx);
    return balances.rows;
  });
  const accounts = result
    .slice(0, page.limit)
    .map((row) => ({ account: row.account, ...currencyBalance(row.currency, row) }));
  const last = accounts[accounts.length - 1];
  return {
    accounts,
    next:
      result.length > page.limit && last !== undefined
        ? { account: last.account, currency: last.currency }
        : undefined,
  };
}

/** Entries after the checkpoint counted at most by ledgerSumsLag (a bounded index range). */
export const LEDGER_SUMS_LAG_COUNT_MAX = 100_000;

export type LedgerSumsLag = Readonly<{
  /** Entries after the checkpoint, not yet in the sums (at most LEDGER_SUMS_LAG_COUNT_MAX). */
  unsummed: number;
  /**
   * How long the sums have trailed the ledger, 0 when no entry waits: the age of the oldest
   * entry not yet in them, or the time since the checkpoint last moved if that is shorter. A
   * checkpoint moving through a backlog (a node upgraded onto a large ledger) is not behind; one
   * that waits for an open booking, or for passes that keep failing, is, for as long as it waits.
   */
  lagMs: number;
}>;

/**
 * How far the sums trail the ledger: what every trial balance read has to add up on its own.
 * A few seconds' worth normally; it grows while a booking stays open (the horizon stops before
 * it) or while every node's pass fails.
 */
export async function ledgerSumsLag(
  db: Db,
  now = new Date(),
  countMax = LEDGER_SUMS_LAG_COUNT_MAX,
): Promise<LedgerSumsLag> {
  const checkpoint = await ledgerSumsCheckpoint(db);
  const { rows } = await sql<{ unsummed: string; oldest: Date | null }>`
    SELECT (SELECT COUNT(*) FROM (
              SELECT 1 FROM ledger_entry WHERE id > ${checkpoint.uptoId} LIMIT ${countMax}
            ) AS unsummed_ids) AS unsummed,
           (SELECT created_at FROM ledger_entry WHERE id > ${checkpoint.uptoId}
            ORDER BY id LIMIT 1) AS oldest`.execute(db);
  const row = rows[0];
  const oldest = row?.oldest ?? null;
  if (oldest === null) return { unsummed: 0, lagMs: 0 };
  const since = Math.max(new Date(oldest).getTime(), checkpoint.advancedAt.getTime());
  return { unsummed: Number(row?.unsummed ?? 0), lagMs: Math.max(0, now.getTime() - since) };
}

export type LedgerSumsDrift = Readonly<{
  /** The (account, currency) pairs whose sums differ from their entries up to the checkpoint. */
  accounts: AccountKey[];
  /** The currencies whose sums differ from their entries up to the checkpoint. */
  currencies: string[];
}>;

/**
 * Where the sums differ from the entries they count (every entry up to the checkpoint, summed
 * again): nothing, unless an entry below the checkpoint was changed by hand or a bug added one
 * twice. A full scan, like trialBalanceByCurrency: for checks, not for serving.
 */
export async function ledgerSumsDrift(db: Db): Promise<LedgerSumsDrift> {
  return inSnapshot(db, async (trx) => {
    const uptoId = await checkpointIn(trx);
    const accounts = await sql<{ account: string; currency: string }>`
      SELECT account, currency FROM (
        SELECT account, currency, debit_minor, credit_minor FROM ledger_account_sum
        UNION ALL
        SELECT account, currency, -SUM(debit_minor), -SUM(credit_minor) FROM ledger_entry
        WHERE id <= ${uptoId} GROUP BY account, currency
      ) AS both_sides
      GROUP BY account, currency
      HAVING SUM(debit_minor) <> 0 OR SUM(credit_minor) <> 0
      ORDER BY account, currency
      LIMIT ${DRIFT_LISTED_MAX}`.execute(trx);
    const currencies = await sql<{ currency: string }>`
      SELECT currency FROM (
        SELECT currency, debit_minor, credit_minor FROM ledger_currency_sum
        UNION ALL
        SELECT currency, -SUM(debit_minor), -SUM(credit_minor) FROM ledger_entry
        WHERE id <= ${uptoId} GROUP BY currency
      ) AS both_sides
      GROUP BY currency
      HAVING SUM(debit_minor) <> 0 OR SUM(credit_minor) <> 0
      ORDER BY currency`.execute(trx);
    return {
      accounts: accounts.rows.map((row) => ({ account: row.account, currency: row.currency })),
      currencies: currencies.rows.map((row) => row.currency),
    };
  });
}

/**
 * Runs a pass every `intervalMs`, unless another node's pass moved the checkpoint within the
 * interval, so several nodes share the work rather than repeat it. One pass at a time: a tick while
 * one runs is skipped.
 */
export class LedgerSummer {
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(
    private readonly db: Db,
    private readonly options: LedgerSumsOptions & Readonly<{ intervalMs: number }>,
    private readonly onError: (error: unknown) => void,
  ) {
    if (!Number.isInteger(options.intervalMs) || options.intervalMs < 1) {
      throw new RangeError(`intervalMs must be a whole number ≥ 1, got ${options.intervalMs}`);
    }
  }

  start(): void {
    this.#timer = setInterval(() => {
      if (this.#running !== undefined) return;
      this.#running = this.pass()
        .then(() => undefined)
        .catch(this.onError)
        .finally(() => (this.#running = undefined));
    }, this.options.intervalMs);
    this.#timer.unref();
  }

  /** Stops the timer and waits for a pass under way. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }

  /** One pass, unless the checkpoint moved less than half an interval ago. */
  async pass(): Promise<LedgerSumsPass | undefined> {
    const fresh = await sql<{ fresh: number | string }>`
      SELECT advanced_at > UTC_TIMESTAMP(3) - INTERVAL ${this.options.intervalMs * 500} MICROSECOND
        AS fresh
      FROM ledger_sum_checkpoint WHERE id = 1`.execute(this.db);
    if (Number(fresh.rows[0]?.fresh ?? 0) === 1) return undefined;
    return advanceLedgerSums(this.db, this.options);
  }
}

/**
 * Runs `read` in a REPEATABLE READ transaction: its first read fixes the snapshot every later one
 * sees, so the checkpoint read first and the sums and entries read after it agree.
 */
function inSnapshot<T>(db: Db, read: (trx: Trx) => Promise<T>): Promise<T> {
  return db.transaction().setIsolationLevel('repeatable read').execute(read);
}

async function checkpointIn(db: Db | Trx): Promise<bigint> {
  return (await ledgerSumsCheckpoint(db)).uptoId;
}

/** The checkpoint row is written by migration 0013: without it, the schema is not this Settle's. */
function missingCheckpoint(): FailedPreconditionError {
  return new FailedPreconditionError(
    'ledger_sum_checkpoint has no row: the database was not migrated by this version of Settle ' +
      '(migration 0013-ledger-sums); start a node on it to migrate, then retry',
  );
}

type Sums = { debit: bigint; credit: bigint };

function add(
  sums: Map<string, Sums>,
  key: string,
  entry: Readonly<{ debitMinor: bigint; creditMinor: bigint }>,
): void {
  const found = sums.get(key);
  if (found === undefined) sums.set(key, { debit: entry.debitMinor, credit: entry.creditMinor });
  else {
    found.debit += entry.debitMinor;
    found.credit += entry.creditMinor;
  }
}

function* chunks<T>(items: readonly T[]): Generator<T[]> {
  for (let i = 0; i < items.length; i += UPSERT_ROWS_MAX) yield items.slice(i, i + UPSERT_ROWS_MAX);
}
