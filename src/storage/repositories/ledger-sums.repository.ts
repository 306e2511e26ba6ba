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
 * reconciliation use, still sums every entry. `repairLedgerSums` sums the entries up to the
 * checkpoint again and writes the rows that differ, holding the checkpoint row locked meanwhile
 * so that no pass adds to the sums under it; `ledgerSumsDrift`, reconciliation's check at the end
 * of every run, is its dry run, so the check finds exactly what a repair mends.
 */
import { sql } from 'kysely';
import { AbortedError, FailedPreconditionError, UnavailableError } from '../../domain/errors.js';
import type { Db } from '../db.js';
import { isLockWaitTimeout } from '../errors.js';
import { assertWholeAtLeastOne } from '../options.js';
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
  assertWholeAtLeastOne('entriesPerPassMax', options.entriesPerPassMax);
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

/** Accounts a repair compares per page: its memory is bounded by them, not by the ledger. */
const REPAIR_ACCOUNTS_PER_PAGE = 1_000;

/** Repaired (account, currency) pairs a repair's result lists at most; all are counted. */
const REPAIRS_LISTED_MAX = 100;

/**
 * Repaired currencies a repair's result lists at most; all are counted. Settle books a closed
 * list of currencies (domain/money.ts), but a damaged ledger_currency_sum can hold a row for any
 * three characters, each one a repair (a deletion) the answer would otherwise have to carry.
 */
export const CURRENCY_REPAIRS_LISTED_MAX = 100;

/** Pages one repair reads at most: a billion accounts at the default page size. */
const REPAIR_PAGES_MAX = 1_000_000;

/** Debits and credits of a sums row, or of the entries it should count, in minor units. */
export type SumAmounts = Readonly<{ debitMinor: bigint; creditMinor: bigint }>;

/** A sums row that differed from its entries: what it held, and what it holds once repaired. */
export type SumRepair = Readonly<{
  /** The row as it was; undefined when there was none (its entries were missing from the sums). */
  before: SumAmounts | undefined;
  /** What its entries up to the checkpoint add up to; undefined when there are none (deleted). */
  after: SumAmounts | undefined;
}>;

export type LedgerSumsRepair = Readonly<{
  /** The checkpoint the sums were compared at: every entry with an id up to it. */
  uptoId: bigint;
  /** Nothing was written: the repairs are what a repair would have made. */
  dryRun: boolean;
  /** Accounts compared: every one with entries or sums. */
  accountsChecked: number;
  /** (account, currency) pairs whose sums differed, all of them. */
  pairsRepaired: number;
  /** The first REPAIRS_LISTED_MAX of those pairs, by account, then currency. */
  pairs: ReadonlyArray<AccountKey & SumRepair>;
  /** Currencies whose sums differed, all of them. */
  currenciesRepaired: number;
  /** The first CURRENCY_REPAIRS_LISTED_MAX of those currencies, by currency. */
  currencies: ReadonlyArray<Readonly<{ currency: string }> & SumRepair>;
}>;

export type RepairLedgerSumsOptions = Readonly<{
  /** Compare only, in a snapshot that locks nothing, and write nothing. */
  dryRun: boolean;
  /** Accounts compared per page (REPAIR_ACCOUNTS_PER_PAGE). */
  accountsPerPage?: number;
  /** Checked between pages and before the commit: once aborted, the repair writes nothing. */
  signal?: AbortSignal | undefined;
  /** For tests: awaited after each page is compared and before its repairs are written. */
  beforePageWrite?: () => Promise<void>;
  /**
   * Awaited with the repair's transaction and result once everything is written and `signal` is
   * checked for the last time, just before the commit; not for a dry run. What it writes with
   * `trx` commits with the repair or not at all (its audit row); a throw rolls the repair back.
   */
  beforeCommit?: (trx: Trx, repair: LedgerSumsRepair) => Promise<void>;
}>;

/**
 * Sums every entry up to the checkpoint again and makes the running sums equal to it: rows that
 * differ are set to the exact sums, missing ones inserted, and rows of pairs without entries up
 * to the checkpoint deleted, per (account, currency) and per currency. What ledgerSumsDrift finds
 * (the same comparison) is gone afterwards, and a second repair finds nothing.
 *
 * One REPEATABLE READ transaction whose first statement locks the checkpoint row (FOR UPDATE):
 * a pass's conditional UPDATE of that row then waits until the repair commits (still waiting
 * after innodb_lock_wait_timeout twice, with inTransaction's retry, the pass fails and runs again
 * at its next interval), so no pass adds to a row between the repair's read of it and its write,
 * which would lose that pass's entries. The checkpoint is not moved. The entries are read by
 * consistent reads, which lock no row of ledger_entry (an `INSERT … SELECT` from it would lock
 * every row it scans, and hold the ledger's inserts for the whole repair). A full scan, a page of
 * accounts at a time through the (account, id) index: for operators, not for serving. A dry run
 * reads the same in a snapshot that locks nothing, so it holds up no pass.
 *
 * Fails with UnavailableError when the checkpoint row stays locked past innodb_lock_wait_timeout
 * (another repair holds it), and with AbortedError, nothing written, when `signal` aborts before
 * its last check; past that check, and during the COMMIT, the repair goes on to commit. What
 * `beforeCommit` writes commits with it, so an audit row written there is there exactly when the
 * repair committed, whatever its caller was told.
 */
export async function repairLedgerSums(
  db: Db,
  options: RepairLedgerSumsOptions,
): Promise<LedgerSumsRepair> {
  const compare = {
    ...options,
    ...pagingOf(options),
    pairsListedMax: REPAIRS_LISTED_MAX,
    currenciesListedMax: CURRENCY_REPAIRS_LISTED_MAX,
    abortedMessage: REPAIR_ABORTED,
  };
  if (options.dryRun) return compareInSnapshot(db, compare);
  return db
    .transaction()
    .setIsolationLevel('repeatable read')
    .execute(async (trx) => repairUpTo(trx, await lockCheckpoint(trx), compare));
}

export type LedgerSumsDrift = Readonly<{
  /** The (account, currency) pairs whose sums differ from their entries, all of them. */
  pairsDiffering: number;
  /** The first `listedMax` of those pairs, by account, then currency. */
  accounts: AccountKey[];
  /** The currencies whose sums differ from their entries, all of them. */
  currenciesDiffering: number;
  /** The first `listedMax` of those currencies, by currency. */
  currencies: string[];
}>;

/**
 * Where the sums differ from the entries they count (every entry up to the checkpoint, summed
 * again): nothing, unless an entry below the checkpoint was changed by hand or a bug added one
 * twice. It is repairLedgerSums's dry run, so what a check finds is exactly what a repair
 * mends: a comparison of its own (one grouped query over the whole ledger) missed what a repair
 * deletes, rows of zeros for pairs without entries, and any change to one would have had to be
 * made to the other. A full scan, a page of accounts at a time, in a snapshot that locks
 * nothing: for checks, not for serving. Its longest statement reads the page of the busiest
 * account (psp_receivable, half the ledger), less than that one query read; the whole took
 * about as long as it over 400,000 entries of 2,000 accounts, and half as long over 100,000.
 */
export async function ledgerSumsDrift(
  db: Db,
  options: Readonly<{
    /**
     * Pairs, and currencies, listed at most: what the caller keeps (a reconciliation, 100).
     * Every differing one is counted; only these are kept while the pages are compared.
     */
    listedMax: number;
    /** Accounts compared per page (REPAIR_ACCOUNTS_PER_PAGE). */
    accountsPerPage?: number;
    /** Checked between pages: once aborted, the comparison stops with AbortedError. */
    signal?: AbortSignal | undefined;
  }>,
): Promise<LedgerSumsDrift> {
  assertWholeAtLeastOne('listedMax', options.listedMax);
  const found = await compareInSnapshot(db, {
    dryRun: true,
    signal: options.signal,
    ...pagingOf(options),
    pairsListedMax: options.listedMax,
    currenciesListedMax: options.listedMax,
    abortedMessage: DRIFT_ABORTED,
  });
  return {
    pairsDiffering: found.pairsRepaired,
    accounts: found.pairs.map(({ account, currency }) => ({ account, currency })),
    currenciesDiffering: found.currenciesRepaired,
    currencies: found.currencies.map(({ currency }) => currency),
  };
}

/**
 * What repairUpTo is given: the repair's options, checked, how many pairs and currencies to list,
 * and what its AbortedError says (a repair's advice is not a check's).
 */
type CompareOptions = RepairLedgerSumsOptions &
  Readonly<{
    accountsPerPage: number;
    pairsListedMax: number;
    currenciesListedMax: number;
    abortedMessage: string;
  }>;

const REPAIR_ABORTED =
  'the repair of the running sums was abandoned before it committed (its call was cancelled ' +
  'or passed its deadline); nothing was written: call again with a longer deadline';

/** Its caller (a reconciliation) says what stopping means for it: the node stopped, say. */
const DRIFT_ABORTED =
  'the comparison of the running sums with the ledger entries was stopped before it ended ' +
  '(its caller stopped it); it found nothing and changed nothing';

function pagingOf(options: Readonly<{ accountsPerPage?: number }>): { accountsPerPage: number } {
  const accountsPerPage = options.accountsPerPage ?? REPAIR_ACCOUNTS_PER_PAGE;
  assertWholeAtLeastOne('accountsPerPage', accountsPerPage);
  return { accountsPerPage };
}

/** A dry run: the repair's comparison in a snapshot that locks nothing, and writes nothing. */
function compareInSnapshot(db: Db, options: CompareOptions): Promise<LedgerSumsRepair> {
  return inSnapshot(db, async (trx) =>
    repairUpTo(trx, await checkpointIn(trx), { ...options, dryRun: true }),
  );
}

/** The checkpoint, its row locked until the transaction ends. */
async function lockCheckpoint(trx: Trx): Promise<bigint> {
  let rows: Array<{ upto_id: string }>;
  try {
    ({ rows } = await sql<{ upto_id: string }>`
      SELECT upto_id FROM ledger_sum_checkpoint WHERE id = 1 FOR UPDATE`.execute(trx));
  } catch (error) {
    if (!isLockWaitTimeout(error)) throw error;
    // A pass holds the row for the few milliseconds of its writes: one held this long is
    // another repair's (or a pass stuck on a dead connection, until the server drops it).
    throw new UnavailableError(
      'the running sums are being written by someone else (another RepairLedgerSums, most ' +
        'likely): their checkpoint row stayed locked past innodb_lock_wait_timeout; retry once ' +
        'that repair has ended',
      { cause: error },
    );
  }
  const row = rows[0];
  if (row === undefined) throw missingCheckpoint();
  return BigInt(row.upto_id);
}

async function repairUpTo(
  trx: Trx,
  uptoId: bigint,
  options: CompareOptions,
): Promise<LedgerSumsRepair> {
  // The entries' sums per currency, over every page: what ledger_currency_sum should hold.
  const byCurrency = new Map<string, Sums>();
  const pairs: Array<AccountKey & SumRepair> = [];
  let pairsRepaired = 0;
  let accountsChecked = 0;
  let after: string | undefined;
  for (let page = 0; ; page += 1) {
    if (page >= REPAIR_PAGES_MAX) {
      throw new Error(`a repair of the running sums read ${REPAIR_PAGES_MAX} pages of accounts`);
    }
    throwIfAborted(options);
    const accounts = await pageAccounts(trx, after, options.accountsPerPage);
    const last = accounts[accounts.length - 1];
    if (last === undefined) break;
    const repairs = await comparePage(trx, uptoId, { after, last }, byCurrency);
    accountsChecked += accounts.length;
    pairsRepaired += repairs.length;
    pairs.push(...repairs.slice(0, options.pairsListedMax - pairs.length));
    await options.beforePageWrite?.();
    if (!options.dryRun) await writeAccountSums(trx, repairs);
    after = last;
  }
  // Every differing currency is written; only the first are listed.
  const currencies = await compareCurrencies(trx, byCurrency);
  if (!options.dryRun) await writeCurrencySums(trx, currencies);
  // Aborted after this, the commit goes ahead, with what beforeCommit writes (the audit row
  // that tells the repair happened): the caller, gone, is told nothing either way.
  throwIfAborted(options);
  const repair = {
    uptoId,
    dryRun: options.dryRun,
    accountsChecked,
    pairsRepaired,
    pairs,
    currenciesRepaired: currencies.length,
    currencies: currencies.slice(0, options.currenciesListedMax),
  };
  if (!options.dryRun) await options.beforeCommit?.(trx, repair);
  return repair;
}

function throwIfAborted({ signal, abortedMessage }: CompareOptions): void {
  if (signal?.aborted !== true) return;
  throw new AbortedError(abortedMessage, { cause: signal.reason });
}

/**
 * The next `limit` accounts after `after` (from the first without it) that have entries or sums,
 * in the table's order. Each side is a range of an index read in order and cut at `limit`, and
 * the server merges them, so its collation decides the order and what is one account.
 */
async function pageAccounts(trx: Trx, after: string | undefined, limit: number): Promise<string[]> {
  const from = after !== undefined ? sql`WHERE account > ${after}` : sql``;
  const { rows } = await sql<{ account: string }>`
    SELECT account FROM (
      (SELECT DISTINCT account FROM ledger_entry ${from} ORDER BY account LIMIT ${limit})
      UNION
      (SELECT DISTINCT account FROM ledger_account_sum ${from} ORDER BY account LIMIT ${limit})
    ) AS accounts
    ORDER BY account
    LIMIT ${limit}`.execute(trx);
  return rows.map((row) => row.account);
}

/**
 * The sums rows of the accounts after `after` up to `last` that differ from their entries up to
 * `uptoId`, with what those entries add up to; adds those up per currency into `byCurrency`.
 * One statement puts the rows and the entries side by side, grouped by the server. The entries
 * are read through the (account, id) index, forced: on a page whose accounts hold much of the
 * ledger (600,000 entries, 1,000 accounts holding a third of them) MariaDB 10.11 chose a range
 * of the primary key over every id up to the checkpoint instead, reading 1.8 times the rows, and
 * would read that range again on every page.
 */
async function comparePage(
  trx: Trx,
  uptoId: bigint,
  range: Readonly<{ after: string | undefined; last: string }>,
  byCurrency: Map<string, Sums>,
): Promise<Array<AccountKey & SumRepair>> {
  const accounts =
    range.after !== undefined
      ? sql`account > ${range.after} AND account <= ${range.last}`
      : sql`account <= ${range.last}`;
  const { rows } = await sql<{
    account: string;
    currency: string;
    in_sums: string;
    sum_debit: string;
    sum_credit: string;
    in_entries: string;
    entry_debit: string;
    entry_credit: string;
  }>`
    SELECT account, currency,
           SUM(in_sums) AS in_sums, SUM(sum_debit) AS sum_debit, SUM(sum_credit) AS sum_credit,
           SUM(in_entries) AS in_entries, SUM(entry_debit) AS entry_debit,
           SUM(entry_credit) AS entry_credit
    FROM (
      SELECT account, currency, 1 AS in_sums, debit_minor AS sum_debit,
             credit_minor AS sum_credit, 0 AS in_entries, 0 AS entry_debit, 0 AS entry_credit
      FROM ledger_account_sum WHERE ${accounts}
      UNION ALL
      SELECT account, currency, 0, 0, 0, 1, SUM(debit_minor), SUM(credit_minor)
      FROM ledger_entry FORCE INDEX (ledger_entry_account)
      WHERE ${accounts} AND id <= ${uptoId}
      GROUP BY account, currency
    ) AS both_sides
    GROUP BY account, currency
    ORDER BY account, currency`.execute(trx);
  const repairs: Array<AccountKey & SumRepair> = [];
  for (const row of rows) {
    const before = row.in_sums !== '0' ? amounts(row.sum_debit, row.sum_credit) : undefined;
    const entries = row.in_entries !== '0' ? amounts(row.entry_debit, row.entry_credit) : undefined;
    if (entries !== undefined) add(byCurrency, row.currency, entries);
    if (!sameAmounts(before, entries)) {
      repairs.push({ account: row.account, currency: row.currency, before, after: entries });
    }
  }
  return repairs;
}

/** The currencies whose sums differ from `byCurrency`, the entries' sums of every page. */
async function compareCurrencies(
  trx: Trx,
  byCurrency: ReadonlyMap<string, Sums>,
): Promise<Array<Readonly<{ currency: string }> & SumRepair>> {
  const { rows } = await sql<{ currency: string; debit_minor: string; credit_minor: string }>`
    SELECT currency, debit_minor, credit_minor FROM ledger_currency_sum`.execute(trx);
  const held = new Map(
    rows.map((row) => [row.currency, amounts(row.debit_minor, row.credit_minor)]),
  );
  const currencies = [...new Set([...held.keys(), ...byCurrency.keys()])].sort();
  return currencies.flatMap((currency) => {
    const before = held.get(currency);
    const sums = byCurrency.get(currency);
    const after = sums && { debitMinor: sums.debit, creditMinor: sums.credit };
    return sameAmounts(before, after) ? [] : [{ currency, before, after }];
  });
}

/** Sets each repaired pair's row to its entries' sums, or deletes it when they have none. */
async function writeAccountSums(
  trx: Trx,
  repairs: ReadonlyArray<AccountKey & SumRepair>,
): Promise<void> {
  const rows = repairs.flatMap(({ account, currency, after }) =>
    after !== undefined ? [{ account, currency, after }] : [],
  );
  for (const chunk of chunks(rows)) {
    await sql`
      INSERT INTO ledger_account_sum (account, currency, debit_minor, credit_minor)
      VALUES ${sql.join(
        chunk.map(
          ({ account, currency, after }) =>
            sql`(${account}, ${currency}, ${after.debitMinor}, ${after.creditMinor})`,
        ),
      )}
      ON DUPLICATE KEY UPDATE debit_minor = VALUES(debit_minor),
                              credit_minor = VALUES(credit_minor)`.execute(trx);
  }
  const gone = repairs.filter((repair) => repair.after === undefined);
  for (const chunk of chunks(gone)) {
    await sql`
      DELETE FROM ledger_account_sum
      WHERE ${sql.join(
        chunk.map(
          ({ account, currency }) => sql`(account = ${account} AND currency = ${currency})`,
        ),
        sql` OR `,
      )}`.execute(trx);
  }
}

/** Sets each repaired currency's row to its entries' sums, or deletes it when they have none. */
async function writeCurrencySums(
  trx: Trx,
  repairs: ReadonlyArray<Readonly<{ currency: string }> & SumRepair>,
): Promise<void> {
  for (const { currency, after } of repairs) {
    if (after === undefined) {
      await sql`DELETE FROM ledger_currency_sum WHERE currency = ${currency}`.execute(trx);
      continue;
    }
    await sql`
      INSERT INTO ledger_currency_sum (currency, debit_minor, credit_minor)
      VALUES (${currency}, ${after.debitMinor}, ${after.creditMinor})
      ON DUPLICATE KEY UPDATE debit_minor = VALUES(debit_minor),
                              credit_minor = VALUES(credit_minor)`.execute(trx);
  }
}

function amounts(debits: string, credits: string): SumAmounts {
  return { debitMinor: BigInt(debits), creditMinor: BigInt(credits) };
}

function sameAmounts(a: SumAmounts | undefined, b: SumAmounts | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.debitMinor === b.debitMinor && a.creditMinor === b.creditMinor;
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
    assertWholeAtLeastOne('intervalMs', options.intervalMs);
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
