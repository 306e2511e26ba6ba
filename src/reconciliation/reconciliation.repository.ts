/**
 * Reconciliation's SQL. The file is loaded into recon_file_row in batches and classified there
 * set-based, a range of lines per statement, by joins against the ledger: the rules of
 * compare.ts, in the same order. Each mismatch is copied to recon_mismatch with its evidence (the
 * file row and the order's ledger entries as JSON text, built by the database). Classification
 * runs in READ COMMITTED, so it takes no gap locks on the ledger that live payments write to.
 *
 * Runs are fenced by a lease: every write of a running run's progress names its owner, and a run
 * whose owner stopped renewing can be taken over by another node.
 */
import { sql, type RawBuilder, type Selectable } from 'kysely';
import { CLASSIFICATION_LOCK_STEP_S } from '../config.js';
import { addUtcDays, startOfUtcDay, type UtcDay } from '../domain/utc-day.js';
import type { Db } from '../storage/db.js';
import { isDuplicateKey, isTransientLockError } from '../storage/errors.js';
import { UnavailableError } from '../domain/errors.js';
import { isCurrencyCode, type CurrencyCode } from '../domain/money.js';
import {
  ACCOUNT,
  postLedgerTransactions,
  UnbalancedLedgerTransactionError,
} from '../storage/repositories/ledger.repository.js';
import { inTransaction, toUnavailable, type Trx } from '../storage/transaction.js';
import { RECONCILIATION_CLASS, type ReconciliationClass } from './compare.js';
import { reconDb, RUN_STATE, type ReconRunTable, type RunState } from './reconciliation.table.js';
import type { SettlementRow } from './settlement-file.js';

/** Lines classified per statement (and per transaction). */
const CLASSIFY_CHUNK_LINES = 20_000;
/** Rows deleted per statement when a run's old data is cleared. */
const DELETE_CHUNK_ROWS = 20_000;
/** Attempts of one transaction that hits a deadlock or a lock wait timeout. */
const TRANSACTION_ATTEMPTS_MAX = 4;
/** At most this many wallet differences are kept in a report. */
export const WALLET_DIFFERENCES_MAX = 100;
/**
 * At most this many (account, currency) pairs whose running sums differ are kept in a report, and
 * as many currencies: the repair's own lists are as long, and all are counted.
 */
export const SUM_DIFFERENCES_MAX = 100;

export const FEE_LEDGER_KIND = {
  transaction: 'PSP_FEE',
  expense: 'PSP_FEE_EXPENSE',
  receivable: 'PSP_FEE_RECEIVABLE',
} as const;

export type ClassCounts = Readonly<Record<ReconciliationClass, bigint>>;

export type InternalCheck = Readonly<{
  /** The trial balance is zero in every currency. */
  ledgerBalanced: boolean;
  totals: ReadonlyArray<
    Readonly<{ currency: string; debitMinor: bigint; creditMinor: bigint; balanceMinor: bigint }>
  >;
  walletsChecked: bigint;
  walletsMatchLedger: boolean;
  walletsNotMatching: bigint;
  /** The first WALLET_DIFFERENCES_MAX of them. */
  walletDifferences: ReadonlyArray<
    Readonly<{ sellerId: string; walletMinor: bigint; ledgerMinor: bigint }>
  >;
  /**
   * The trial balance's running sums (ledger-sums.repository.ts) equal the entries they count.
   * Undefined when they could not be compared (then `ledgerSumsUnchecked` says why), and in a run
   * stored before this check existed: not checked, which is not a failure.
   */
  ledgerSumsMatch: boolean | undefined;
  /**
   * Why the running sums could not be compared with the entries (a statement past its deadline
   * on a very large ledger, a table gone), in a few words that hold no SQL and no values (at most
   * SUMS_UNCHECKED_REASON_LENGTH_MAX characters): a check that could not run, which fails, unlike
   * one never run. Undefined when they were compared, and in a run stored before this field
   * existed (one whose comparison failed then reads as never checked).
   */
  ledgerSumsUnchecked: string | undefined;
  /**
   * (account, currency) pairs whose sums differ, all of them: as many as a repair would mend. A
   * run stored before the check was the repair's dry run counted 1,000 at most.
   */
  ledgerSumsNotMatching: bigint;
  /** The first SUM_DIFFERENCES_MAX of them. */
  ledgerSumDifferences: ReadonlyArray<Readonly<{ account: string; currency: string }>>;
  /**
   * Currencies whose sums differ, all of them: as many as a repair would mend. A run stored before
   * they were counted listed every one (up to 1,000), so it counts its list.
   */
  currencySumsNotMatching: bigint;
  /** The first SUM_DIFFERENCES_MAX of them, by currency (a run stored before: up to 1,000). */
  currencySumDifferences: readonly string[];
}>;

/** The internal checks, by the name a failure of each is reported under. */
export const INTERNAL_CHECK_FAILURE = {
  ledgerNotBalanced: 'LEDGER_NOT_BALANCED',
  walletsDiffer: 'WALLETS_DIFFER',
  sumsDiffer: 'SUMS_DIFFER',
  sumsUnchecked: 'SUMS_UNCHECKED',
} as const;

/** The longest reason `ledgerSumsUnchecked` holds, in characters. */
export const SUMS_UNCHECKED_REASON_LENGTH_MAX = 200;

/**
 * An internal check that failed: the ledger unbalanced, wallets off it, the running sums off
 * the entries, or the running sums not compared with them.
 */
export type InternalCheckFailure =
  (typeof INTERNAL_CHECK_FAILURE)[keyof typeof INTERNAL_CHECK_FAILURE];

/**
 * Each check `check` ran, in that order, and whether it failed. A run stored before the running
 * sums were checked has neither of their outcomes: that check was not run, which is not a
 * failure. Since, SUMS_UNCHECKED says whether the comparison could run (failed when it could
 * not), and SUMS_DIFFER, only when it ran, whether the sums differ: a comparison that could not
 * run says nothing of them either way, and must not read as passed.
 */
export function internalCheckOutcomes(
  check: InternalCheck,
): Array<Readonly<{ check: InternalCheckFailure; failed: boolean }>> {
  const outcomes: Array<Readonly<{ check: InternalCheckFailure; failed: boolean }>> = [
    { check: INTERNAL_CHECK_FAILURE.ledgerNotBalanced, failed: !check.ledgerBalanced },
    { check: INTERNAL_CHECK_FAILURE.walletsDiffer, failed: !check.walletsMatchLedger },
  ];
  if (check.ledgerSumsMatch !== undefined) {
    outcomes.push({ check: INTERNAL_CHECK_FAILURE.sumsDiffer, failed: !check.ledgerSumsMatch });
  }
  if (check.ledgerSumsMatch !== undefined || check.ledgerSumsUnchecked !== undefined) {
    outcomes.push({
      check: INTERNAL_CHECK_FAILURE.sumsUnchecked,
      failed: check.ledgerSumsUnchecked !== undefined,
    });
  }
  return outcomes;
}

/** The checks `check` failed, in that order (a check not run did not fail). */
export function failedInternalChecks(check: InternalCheck): InternalCheckFailure[] {
  return internalCheckOutcomes(check)
    .filter(({ failed }) => failed)
    .map(({ check: failure }) => failure);
}

export type Run = Readonly<{
  id: string;
  day: UtcDay;
  fileName: string;
  fileSha256: string;
  state: RunState;
  rowsTotal: bigint;
  rowsLoaded: bigint;
  counts: ClassCounts;
  currency: string;
  grossMinor: bigint;
  feeMinor: bigint;
  netMinor: bigint;
  settledGrossMinor: bigint;
  settledFeeMinor: bigint;
  settledNetMinor: bigint;
  internalCheck: InternalCheck | undefined;
  error: string | undefined;
  attempts: number;
  leaseOwner: string | undefined;
  leaseUntil: Date;
  createdAt: Date;
  completedAt: Date | undefined;
}>;

export type Mismatch = Readonly<{
  id: bigint;
  runId: string;
  class: ReconciliationClass;
  lineNumber: number | undefined;
  orderId: string;
  pspReference: string | undefined;
  fileAmountMinor: bigint | undefined;
  ledgerAmountMinor: bigint | undefined;
  orderState: string | undefined;
  fileRowJson: string | undefined;
  ledgerEntriesJson: string;
  detail: string;
  resolvedByRunId: string | undefined;
  createdAt: Date;
}>;

// ---------------------------------------------------------------------------------------------
// Runs

export async function insertRun(
  db: Db,
  run: {
    id: string;
    day: UtcDay;
    fileName: string;
    fileSha256: string;
    rowsTotal: number;
    owner: string;
    leaseUntil: Date;
    now: Date;
  },
): Promise<boolean> {
  try {
    await reconDb(db)
      .insertInto('recon_run')
      .values({
        id: run.id,
        settlement_date: run.day,
        file_name: run.fileName,
        file_sha256: run.fileSha256,
        state: RUN_STATE.running,
        rows_total: BigInt(run.rowsTotal),
        lease_owner: run.owner,
        lease_until: run.leaseUntil,
        created_at: run.now,
        updated_at: run.now,
      })
      .execute();
    return true;
  } catch (error) {
    if (isDuplicateKey(error)) return false;
    throw toUnavailable(error);
  }
}

export async function findRun(db: Db, id: string): Promise<Run | undefined> {
  const row = await reconDb(db)
    .selectFrom('recon_run')
    .selectAll()
    .where('id', '=', id)
    .executeTakeFirst()
    .catch(rethrow);
  return row === undefined ? undefined : toRun(row);
}

export async function findRunByFile(
  db: Db,
  day: UtcDay,
  fileSha256: string,
): Promise<Run | undefined> {
  const row = await reconDb(db)
    .selectFrom('recon_run')
    .selectAll()
    .where(sql<boolean>`settlement_date = ${day}`)
    .where('file_sha256', '=', fileSha256)
    .executeTakeFirst()
    .catch(rethrow);
  return row === undefined ? undefined : toRun(row);
}

/** Runs, newest first, optionally of one day; `beforeId` is the last id of the previous page. */
export async function listRuns(
  db: Db,
  filter: { day?: UtcDay; beforeId?: string; limit: number },
): Promise<Run[]> {
  let query = reconDb(db).selectFrom('recon_run').selectAll().orderBy('id', 'desc');
  if (filter.day !== undefined) query = query.where(sql<boolean>`settlement_date = ${filter.day}`);
  if (filter.beforeId !== undefined) query = query.where('id', '<', filter.beforeId);
  const rows = await query.limit(filter.limit).execute().catch(rethrow);
  return rows.map(toRun);
}

/**
 * The latest settlement day's newest succeeded run (by day, then id); undefined before the first.
 * Walks the (settlement_date, id) index from its end.
 */
export async function latestSucceededRun(db: Db): Promise<Run | undefined> {
  const row = await reconDb(db)
    .selectFrom('recon_run')
    .selectAll()
    .where('state', '=', RUN_STATE.succeeded)
    .orderBy('settlement_date', 'desc')
    .orderBy('id', 'desc')
    .limit(1)
    .executeTakeFirst()
    .catch(rethrow);
  return row === undefined ? undefined : toRun(row);
}

/**
 * When `day` was first reconciled: its earliest succeeded run's completion. A later file for the
 * same day (a corrected one, loaded by hand) succeeds later but reconciles no newer day, so it
 * must not make the latest day look recent while the nights after it keep failing.
 */
export async function firstSucceededAt(db: Db, day: UtcDay): Promise<Date | undefined> {
  const row = await reconDb(db)
    .selectFrom('recon_run')
    .select((eb) => eb.fn.min('completed_at').as('first'))
    .where(sql<boolean>`settlement_date = ${day}`)
    .where('state', '=', RUN_STATE.succeeded)
    .executeTakeFirst()
    .catch(rethrow);
  return row?.first ?? undefined;
}

/**
 * Orders booked as paid that no settlement file has settled yet: their MISSING_IN_SETTLEMENT
 * mismatches that no later file resolved, found through the recon_mismatch_open index. Counted up
 * to `max` mismatches, so a scrape stays cheap after a day whose file lacked most rows (a day of
 * a million payments would otherwise be a million row reads on every scrape of every node).
 */
export async function countUnsettledOrders(db: Db, max: number): Promise<number> {
  const { rows } = await sql<{ n: string }>`
    SELECT COUNT(DISTINCT order_id) AS n FROM (
      SELECT order_id FROM recon_mismatch
      WHERE class = ${RECONCILIATION_CLASS.missingInSettlement} AND resolved_by_run_id IS NULL
      LIMIT ${max}) open_mismatches`
    .execute(db)
    .catch(rethrow);
  return Number(rows[0]?.n ?? 0);
}

/**
 * Takes a run over to run it again: a FAILED run, or a RUNNING one whose lease expired (its node
 * died). False when the run is SUCCEEDED or another node holds it.
 */
export async function claimRun(
  db: Db,
  claim: { id: string; owner: string; leaseUntil: Date; now: Date },
): Promise<boolean> {
  const result = await sql`
    UPDATE recon_run
    SET state = ${RUN_STATE.running}, attempts = attempts + 1, error = NULL, rows_loaded = 0,
        lease_owner = ${claim.owner}, lease_until = ${claim.leaseUntil}, updated_at = ${claim.now}
    WHERE id = ${claim.id}
      AND (state = ${RUN_STATE.failed}
           OR (state = ${RUN_STATE.running} AND lease_until < ${claim.now}))`
    .execute(db)
    .catch(rethrow);
  return result.numAffectedRows === 1n;
}

/** Extends the lease and records progress; false when the run is no longer ours. */
export async function renewRunLease(
  db: Db,
  lease: { id: string; owner: string; leaseUntil: Date; rowsLoaded?: number; now: Date },
): Promise<boolean> {
  const result = await sql`
    UPDATE recon_run
    SET lease_until = ${lease.leaseUntil}, updated_at = ${lease.now}
        ${lease.rowsLoaded === undefined ? sql`` : sql`, rows_loaded = ${lease.rowsLoaded}`}
    WHERE id = ${lease.id} AND lease_owner = ${lease.owner} AND state = ${RUN_STATE.running}`
    .execute(db)
    .catch(rethrow);
  return result.numAffectedRows === 1n;
}

/** Marks our run FAILED with a reason; false when it is no longer ours. */
export async function failRun(
  db: Db,
  failure: { id: string; owner: string; error: string; now: Date },
): Promise<boolean> {
  const result = await sql`
    UPDATE recon_run
    SET state = ${RUN_STATE.failed}, error = ${failure.error.slice(0, 1_000)},
        lease_owner = NULL, updated_at = ${failure.now}
    WHERE id = ${failure.id} AND lease_owner = ${failure.owner} AND state = ${RUN_STATE.running}`
    .execute(db)
    .catch(rethrow);
  return result.numAffectedRows === 1n;
}

export type RunSummary = Readonly<{
  counts: ClassCounts;
  rowsLoaded: bigint;
  grossMinor: bigint;
  feeMinor: bigint;
  netMinor: bigint;
  settledGrossMinor: bigint;
  settledFeeMinor: bigint;
  settledNetMinor: bigint;
}>;

/** Records the report and marks the run SUCCEEDED; false when the run is no longer ours. */
export async function completeRun(
  db: Db,
  done: { id: string; owner: string; summary: RunSummary; internalCheck: InternalCheck; now: Date },
): Promise<boolean> {
  const { counts } = done.summary;
  const result = await reconDb(db)
    .updateTable('recon_run')
    .set({
      state: RUN_STATE.succeeded,
      rows_loaded: done.summary.rowsLoaded,
      matched_count: counts.MATCHED,
      missing_in_ledger_count: counts.MISSING_IN_LEDGER,
      missing_in_settlement_count: counts.MISSING_IN_SETTLEMENT,
      amount_mismatch_count: counts.AMOUNT_MISMATCH,
      duplicate_count: counts.DUPLICATE,
      timing_count: counts.TIMING,
      gross_minor: done.summary.grossMinor,
      fee_minor: done.summary.feeMinor,
      net_minor: done.summary.netMinor,
      settled_gross_minor: done.summary.settledGrossMinor,
      settled_fee_minor: done.summary.settledFeeMinor,
      settled_net_minor: done.summary.settledNetMinor,
      internal_check: JSON.stringify(done.internalCheck, (_key, value: unknown) =>
        typeof value === 'bigint' ? value.toString() : value,
      ),
      lease_owner: null,
      updated_at: done.now,
      completed_at: done.now,
    })
    .where('id', '=', done.id)
    .where('lease_owner', '=', done.owner)
    .where('state', '=', RUN_STATE.running)
    .executeTakeFirst()
    .catch(rethrow);
  return result.numUpdatedRows === 1n;
}

// ---------------------------------------------------------------------------------------------
// Loading and classifying

/**
 * Undoes an attempt of the run while `owner` holds it (RUNNING, its lease): what it resolved is
 * open again, its staging rows and mismatches go. Run when an attempt starts (what an earlier
 * one left) and when one fails. Each step is a transaction that
 * first locks the run's row and checks the owner, so a node that took the run over (its claim
 * waits for that lock) never loses what it loads afterwards. Answers false, having stopped, as
 * soon as the run is no longer this owner's.
 */
export async function clearRunDataAsOwner(
  db: Db,
  run: { id: string; owner: string },
): Promise<boolean> {
  const steps: Array<(trx: Trx) => Promise<bigint>> = [
    async (trx) => (await unresolveStatement(run.id).execute(trx)).numAffectedRows ?? 0n,
  ];
  for (const table of ['recon_file_row', 'recon_mismatch'] as const) {
    steps.push(
      async (trx) =>
        (
          await sql`DELETE FROM ${sql.table(table)} WHERE run_id = ${run.id}
            LIMIT ${DELETE_CHUNK_ROWS}`.execute(trx)
        ).numAffectedRows ?? 0n,
    );
  }
  for (const [index, step] of steps.entries()) {
    // The first step runs once; each DELETE until a chunk comes back short (bounded by the run's
    // rows, at most RECONCILIATION_FILE_ROWS_MAX / DELETE_CHUNK_ROWS + 1 chunks).
    for (let chunk = 0; chunk < 10_000; chunk += 1) {
      const outcome = await inTransaction(db, async (trx) => {
        const { rows } = await sql<{ n: string }>`
          SELECT COUNT(*) AS n FROM recon_run
          WHERE id = ${run.id} AND lease_owner = ${run.owner} AND state = ${RUN_STATE.running}
          FOR UPDATE`.execute(trx);
        if (Number(rows[0]?.n) !== 1) return 'not ours' as const;
        return step(trx);
      });
      if (outcome === 'not ours') return false;
      if (index === 0 || outcome < BigInt(DELETE_CHUNK_ROWS)) break;
    }
  }
  return true;
}

function unresolveStatement(runId: string) {
  // What an earlier attempt of this run resolved is open again: the next attempt decides anew
  // (its fees stay booked, once per order, and are not booked again).
  return sql`
    UPDATE recon_mismatch SET resolved_by_run_id = NULL
    WHERE class IN (${RECONCILIATION_CLASS.missingInSettlement},
                    ${RECONCILIATION_CLASS.missingInLedger})
      AND resolved_by_run_id = ${runId}`;
}

/** The purge's bounds per housekeeping pass (about a minute apart): 100,000 rows, 5,000 a DELETE. */
const STAGING_PURGE_BOUNDS = { rowsPerDelete: 5_000, deletesMax: 20 } as const;

/**
 * Retention: deletes the staging rows of the runs of settlement days before `before`, oldest day
 * first, in at most `deletesMax` statements of `rowsPerDelete` rows, and answers how many rows
 * went. Runs still RUNNING are left alone. The runs themselves, their counts and their
 * mismatches (which carry their own evidence) stay: every report can still be read.
 */
export async function purgeStagingRows(
  db: Db,
  before: UtcDay,
  bounds: Readonly<{ rowsPerDelete: number; deletesMax: number }> = STAGING_PURGE_BOUNDS,
): Promise<number> {
  const runs = await sql<{ id: string }>`
    SELECT u.id FROM recon_run u
    WHERE u.settlement_date < ${before} AND u.state <> ${RUN_STATE.running}
      AND EXISTS (SELECT 1 FROM recon_file_row r WHERE r.run_id = u.id)
    ORDER BY u.settlement_date, u.id
    LIMIT ${bounds.deletesMax}`
    .execute(db)
    .catch(rethrow);
  let deleted = 0;
  let deletes = 0;
  for (const { id } of runs.rows) {
    while (deletes < bounds.deletesMax) {
      deletes += 1;
      // The primary key (run_id, line_no) walks one run's rows in order: no other run's locked.
      const result = await sql`
        DELETE FROM recon_file_row WHERE run_id = ${id}
        ORDER BY line_no LIMIT ${bounds.rowsPerDelete}`
        .execute(db)
        .catch(rethrow);
      const rows = Number(result.numAffectedRows ?? 0n);
      deleted += rows;
      if (rows < bounds.rowsPerDelete) break;
    }
  }
  return deleted;
}

/** One multi-row INSERT of parsed rows into the staging table. */
export async function insertFileRows(
  db: Db,
  runId: string,
  rows: readonly SettlementRow[],
): Promise<void> {
  if (rows.length === 0) return;
  await reconDb(db)
    .insertInto('recon_file_row')
    .values(
      rows.map((row) => ({
        run_id: runId,
        line_no: row.lineNumber,
        psp_reference: row.pspReference,
        merchant_reference: row.merchantReference,
        type: row.type,
        currency: row.currency,
        gross_minor: row.grossMinor,
        fee_minor: row.feeMinor,
        net_minor: row.netMinor,
        batch_id: row.batchId,
        created_utc: row.createdUtc,
        class: null,
        ledger_amount_minor: null,
        duplicate_of: null,
      })),
    )
    .execute()
    .catch(rethrow);
}

/**
 * Rule 2: a payment row naming an order that an earlier payment row of the same file named is a
 * DUPLICATE. One statement over the whole file (only duplicates are written).
 */
export async function markDuplicatesInFile(db: Db, runId: string): Promise<void> {
  await sql`
    UPDATE recon_file_row r
    JOIN (SELECT merchant_reference, MIN(line_no) AS first_line
          FROM recon_file_row
          WHERE run_id = ${runId} AND type = 'payment'
          GROUP BY merchant_reference
          HAVING COUNT(*) > 1) d
      ON d.merchant_reference = r.merchant_reference
    SET r.class = ${RECONCILIATION_CLASS.duplicate},
        r.duplicate_of = CONCAT('line ', d.first_line)
    WHERE r.run_id = ${runId} AND r.type = 'payment' AND r.line_no > d.first_line
      AND r.class IS NULL`
    .execute(db)
    .catch(rethrow);
}

/** The line numbers of the classification chunks of a file with `rows` data rows. */
export function classifyChunks(rows: number): Array<{ fromLine: number; toLine: number }> {
  const chunks: Array<{ fromLine: number; toLine: number }> = [];
  for (let fromLine = 2; fromLine <= rows + 1; fromLine += CLASSIFY_CHUNK_LINES) {
    chunks.push({ fromLine, toLine: Math.min(rows + 1, fromLine + CLASSIFY_CHUNK_LINES - 1) });
  }
  return chunks;
}

/**
 * Rules 3-7 for lines [fromLine, toLine], then copies that range's mismatches with their
 * evidence; one READ COMMITTED transaction.
 */
export async function classifyChunk(
  db: Db,
  chunk: { runId: string; day: UtcDay; fromLine: number; toLine: number; now: Date },
): Promise<void> {
  const { runId, day, fromLine, toLine } = chunk;
  const dayStart = startOfUtcDay(day);
  const dayEnd = startOfUtcDay(addUtcDays(day, 1));
  await inReadCommitted(db, async (trx) => {
    // Rule 3: already settled by a payment row of another day's reconciled file.
    // STRAIGHT_JOIN and FORCE INDEX: this chunk's rows first, then one index lookup each into
    // the other runs' rows; the optimizer otherwise starts from every other run's rows.
    await sql`
      UPDATE recon_file_row r
      STRAIGHT_JOIN recon_file_row p FORCE INDEX (recon_file_row_merchant)
        ON p.merchant_reference = r.merchant_reference AND p.run_id <> r.run_id
      STRAIGHT_JOIN recon_run u ON u.id = p.run_id
      SET r.class = ${RECONCILIATION_CLASS.duplicate},
          r.duplicate_of = CONCAT(p.run_id, ' line ', p.line_no)
      WHERE r.run_id = ${runId} AND r.line_no BETWEEN ${fromLine} AND ${toLine}
        AND r.class IS NULL AND r.type = 'payment'
        AND p.type = 'payment' AND p.class <> ${RECONCILIATION_CLASS.duplicate}
        AND u.state = ${RUN_STATE.succeeded} AND u.settlement_date <> ${day}`.execute(trx);
    // Rules 1 and 4-7.
    await sql`
      UPDATE recon_file_row r
      LEFT JOIN ledger_transaction lt ON lt.order_id = r.merchant_reference AND lt.kind = 'PAYMENT'
      SET r.ledger_amount_minor = lt.amount_minor,
          r.class = CASE
            WHEN r.type <> 'payment' OR lt.id IS NULL THEN ${RECONCILIATION_CLASS.missingInLedger}
            WHEN lt.amount_minor <> r.gross_minor OR lt.currency <> r.currency
              OR r.fee_minor > r.gross_minor THEN ${RECONCILIATION_CLASS.amountMismatch}
            WHEN r.created_utc < ${dayStart} OR r.created_utc >= ${dayEnd}
              THEN ${RECONCILIATION_CLASS.timing}
            ELSE ${RECONCILIATION_CLASS.matched}
          END
      WHERE r.run_id = ${runId} AND r.line_no BETWEEN ${fromLine} AND ${toLine}
        AND r.class IS NULL`.execute(trx);
    await sql`
      INSERT INTO recon_mismatch (run_id, class, line_no, order_id, psp_reference,
        file_amount_minor, ledger_amount_minor, order_state, file_row, ledger_entries, detail,
        created_at)
      SELECT r.run_id, r.class, r.line_no, r.merchant_reference, r.psp_reference, r.gross_minor,
             r.ledger_amount_minor, o.state, ${fileRowJson()},
             ${ledgerEntriesJson(sql.ref('r.merchant_reference'))},
             CASE r.class
               WHEN 'DUPLICATE' THEN CONCAT('already settled: ', r.duplicate_of)
               WHEN 'AMOUNT_MISMATCH' THEN CASE
                 WHEN r.fee_minor > r.gross_minor AND r.ledger_amount_minor = r.gross_minor
                   THEN CONCAT('file fee ', r.fee_minor, ' exceeds its gross ', r.gross_minor, ' ',
                     r.currency, ' minor units; the fee is not booked')
                 ELSE CONCAT('file gross ', r.gross_minor, ' ', r.currency,
                   ' minor units; ledger ', r.ledger_amount_minor)
               END
               WHEN 'TIMING' THEN CONCAT('created ', DATE_FORMAT(r.created_utc, '%Y-%m-%d'),
                 ', settled in the file of ', ${day})
               ELSE CASE
                 WHEN r.type <> 'payment' THEN CONCAT('a ', r.type,
                   ' row: Settle books no ', r.type, ' from settlement files')
                 WHEN o.id IS NULL THEN 'no payment order with this id'
                 ELSE CONCAT('payment order is ', o.state, ' with no PAYMENT ledger transaction')
               END
             END,
             ${chunk.now}
      FROM recon_file_row r
      LEFT JOIN payment_order o ON o.id = r.merchant_reference
      WHERE r.run_id = ${runId} AND r.line_no BETWEEN ${fromLine} AND ${toLine}
        AND r.class <> ${RECONCILIATION_CLASS.matched}`.execute(trx);
  });
}

/**
 * Books the PSP's fee of every settled row (MATCHED or TIMING) of lines [fromLine, toLine] that
 * has no PSP_FEE ledger transaction yet: a transaction per order (debit fee_expense, credit
 * psp_receivable, same amount), set-based in three statements of one transaction. Ids are
 * `idPrefix` (ltx_, 10 time and 6 random base-32 characters, fresh per attempt) followed by the
 * zero-padded line number, so they are unique and sort by time like newId(). The invariants of
 * postLedgerTransaction hold: each transaction balances by construction, and the stored entries
 * are checked again before the commit. The unique (order, kind) key makes a repeated run, or two
 * runs naming the same order, book a fee once (the loser's batch fails with errno 1062 and is
 * retried without the booked orders). Returns how many transactions were booked.
 */
export async function bookFees(
  db: Db,
  chunk: { runId: string; fromLine: number; toLine: number; idPrefix: string; now: Date },
): Promise<number> {
  if (!/^ltx_[0-9A-HJKMNP-TV-Z]{16}$/.test(chunk.idPrefix)) {
    throw new Error(`bad ledger id prefix ${chunk.idPrefix}`);
  }
  const idOf = (line: number) => `${chunk.idPrefix}${String(line).padStart(10, '0')}`;
  const [firstId, lastId] = [idOf(chunk.fromLine), idOf(chunk.toLine)];
  return inTransaction(db, async (trx) => {
    const booked = await sql`
      INSERT INTO ledger_transaction (id, order_id, kind, currency, amount_minor, created_at)
      SELECT CONCAT(${chunk.idPrefix}, LPAD(r.line_no, 10, '0')), r.merchant_reference,
             ${FEE_LEDGER_KIND.transaction}, r.currency, r.fee_minor, ${chunk.now}
      FROM recon_file_row r
      LEFT JOIN ledger_transaction f
        ON f.order_id = r.merchant_reference AND f.kind = ${FEE_LEDGER_KIND.transaction}
      WHERE r.run_id = ${chunk.runId} AND r.line_no BETWEEN ${chunk.fromLine} AND ${chunk.toLine}
        AND r.class IN (${RECONCILIATION_CLASS.matched}, ${RECONCILIATION_CLASS.timing})
        AND r.fee_minor > 0 AND f.id IS NULL`.execute(trx);
    const count = Number(booked.numAffectedRows ?? 0n);
    if (count === 0) return 0;
    await sql`
      INSERT INTO ledger_entry (transaction_id, account, order_id, kind, currency, debit_minor,
        credit_minor, created_at)
      SELECT t.id, ${ACCOUNT.feeExpense}, t.order_id, ${FEE_LEDGER_KIND.expense}, t.currency,
             t.amount_minor, 0, t.created_at
      FROM ledger_transaction t WHERE t.id BETWEEN ${firstId} AND ${lastId}
      UNION ALL
      SELECT t.id, ${ACCOUNT.pspReceivable}, t.order_id, ${FEE_LEDGER_KIND.receivable},
             t.currency, 0, t.amount_minor, t.created_at
      FROM ledger_transaction t WHERE t.id BETWEEN ${firstId} AND ${lastId}`.execute(trx);
    // The pair assertion: every new transaction has its two entries and balances.
    const check = await sql<{ transactions: string; wrong: string }>`
      SELECT COUNT(*) AS transactions,
             COALESCE(SUM(e.debits <> e.credits OR e.entries <> 2 OR e.debits <> t.amount_minor), 0)
               AS wrong
      FROM ledger_transaction t
      JOIN (SELECT transaction_id, SUM(debit_minor) AS debits, SUM(credit_minor) AS credits,
                   COUNT(*) AS entries
            FROM ledger_entry WHERE transaction_id BETWEEN ${firstId} AND ${lastId}
            GROUP BY transaction_id) e ON e.transaction_id = t.id
      WHERE t.id BETWEEN ${firstId} AND ${lastId}`.execute(trx);
    const result = check.rows[0];
    if (Number(result?.transactions) !== count || Number(result?.wrong) !== 0) {
      throw new UnbalancedLedgerTransactionError(
        `fee transactions ${firstId}..${lastId} do not balance: ${count} booked, ` +
          `${result?.transactions ?? 0} stored with entries, ${result?.wrong ?? '?'} wrong`,
      );
    }
    return count;
  });
}

/**
 * The last rule: payments booked on the day that no payment row of this file names, no other
 * day's reconciled file settled, and this run did not settle as late bookings (an earlier run of
 * this day's file named them before they were booked). Runs after settleLateBookings.
 */
export async function insertMissingInSettlement(
  db: Db,
  run: { runId: string; day: UtcDay; now: Date },
): Promise<void> {
  const dayStart = startOfUtcDay(run.day);
  const dayEnd = startOfUtcDay(addUtcDays(run.day, 1));
  // FORCE INDEX: inside INSERT ... SELECT, MariaDB runs NOT EXISTS as a dependent subquery and
  // would otherwise scan the whole run for each ledger row.
  await inReadCommitted(db, async (trx) => {
    await sql`
      INSERT INTO recon_mismatch (run_id, class, line_no, order_id, psp_reference,
        file_amount_minor, ledger_amount_minor, order_state, file_row, ledger_entries, detail,
        created_at)
      SELECT ${run.runId}, ${RECONCILIATION_CLASS.missingInSettlement}, NULL, lt.order_id,
             o.psp_reference, NULL, lt.amount_minor, o.state, NULL,
             ${ledgerEntriesJson(sql.ref('lt.order_id'))},
             CONCAT('booked ', DATE_FORMAT(lt.created_at, '%Y-%m-%dT%H:%i:%s.%fZ'),
                    '; no row in this file or an earlier one'),
             ${run.now}
      FROM ledger_transaction lt
      LEFT JOIN payment_order o ON o.id = lt.order_id
      WHERE lt.kind = 'PAYMENT' AND lt.created_at >= ${dayStart} AND lt.created_at < ${dayEnd}
        AND NOT EXISTS (
          SELECT 1 FROM recon_file_row r FORCE INDEX (recon_file_row_merchant)
          WHERE r.merchant_reference = lt.order_id AND r.run_id = ${run.runId}
            AND r.type = 'payment')
        AND NOT EXISTS (
          SELECT 1 FROM recon_file_row p FORCE INDEX (recon_file_row_merchant)
          JOIN recon_run u ON u.id = p.run_id
          WHERE p.merchant_reference = lt.order_id AND p.type = 'payment'
            AND p.class <> ${RECONCILIATION_CLASS.duplicate}
            AND u.state = ${RUN_STATE.succeeded} AND u.settlement_date <> ${run.day})
        AND NOT EXISTS (
          SELECT 1 FROM recon_mismatch s FORCE INDEX (recon_mismatch_order)
          WHERE s.order_id = lt.order_id AND s.run_id = ${run.runId} AND s.line_no IS NULL
            AND s.class IN (${RECONCILIATION_CLASS.timing},
                            ${RECONCILIATION_CLASS.amountMismatch}))`.execute(trx);
  });
}

/** Late bookings settled per transaction, and passes per run (so at most 100,000 per run). */
const LATE_BOOKINGS_PER_PASS = 1_000;
const LATE_BOOKING_PASSES_MAX = 100;

/**
 * A late booking's earlier row (`p`) agrees with its PAYMENT transaction (`lt`) as rule 5 of
 * classifyChunk asks: same gross and currency, and a fee no larger than the gross.
 */
const settledAlike = sql`p.gross_minor = lt.amount_minor AND p.currency = lt.currency
  AND p.fee_minor <= p.gross_minor`;

/**
 * Payments booked on or before the run's day whose PSP row came in a file reconciled before they
 * were booked (an earlier day's, or an earlier run of this day's): that row is an open
 * MISSING_IN_LEDGER, and this file does not settle the order: it does not name it (the PSP settled
 * it once), or names it only as a DUPLICATE of that earlier row (rule 3), which settles nothing. A
 * payment booked on its file's own day after that day was reconciled is one: the same file again
 * returns the stored report, and no later day's file names it. Each is settled here: with the same
 * amount and currency and a fee no larger than the gross (rule 5) it is TIMING (settled late in the
 * ledger) and its fee, from the earlier row, is booked now; otherwise it is AMOUNT_MISMATCH. Either
 * way it is a mismatch of this run, and the earlier MISSING_IN_LEDGER is resolved by it. Without
 * this, such an order was never matched, never reported missing and never charged its fee. An order
 * with several open MISSING_IN_LEDGER mismatches (two runs of one day named it) is settled once,
 * with one mismatch and at most one fee, and resolves them all. Runs one at a time (see
 * withClassificationLock). Returns how many orders it settled.
 */
export async function settleLateBookings(
  db: Db,
  run: { runId: string; day: UtcDay; now: Date; newLedgerId: () => string },
): Promise<number> {
  const dayEnd = startOfUtcDay(addUtcDays(run.day, 1));
  let settled = 0;
  for (let pass = 0; pass < LATE_BOOKING_PASSES_MAX; pass += 1) {
    let found = 0;
    let orders = 0;
    await inReadCommitted(db, async (trx) => {
      // Driven from the open mismatches (few) into the ledger and the rows by their keys. No
      // lower bound on when the payment was booked: a payment row is MISSING_IN_LEDGER only when
      // the order had no PAYMENT as it was classified, so one found now was booked after that
      // (even during that run, after its chunk was classified).
      const candidates = await sql<{
        mismatch_id: string;
        order_id: string;
        fee_minor: string;
        currency: string;
        same: number;
        fee_booked: number;
      }>`
        SELECT m.id AS mismatch_id, m.order_id, p.fee_minor, p.currency,
               (${settledAlike}) AS same,
               (f.id IS NOT NULL) AS fee_booked
        FROM recon_mismatch m FORCE INDEX (recon_mismatch_open)
        STRAIGHT_JOIN recon_file_row p ON p.run_id = m.run_id AND p.line_no = m.line_no
        STRAIGHT_JOIN recon_run u ON u.id = m.run_id
        STRAIGHT_JOIN ledger_transaction lt ON lt.order_id = m.order_id AND lt.kind = 'PAYMENT'
        LEFT JOIN ledger_transaction f
          ON f.order_id = m.order_id AND f.kind = ${FEE_LEDGER_KIND.transaction}
        WHERE m.class = ${RECONCILIATION_CLASS.missingInLedger} AND m.resolved_by_run_id IS NULL
          AND m.run_id <> ${run.runId} AND p.type = 'payment'
          AND u.state = ${RUN_STATE.succeeded} AND lt.created_at < ${dayEnd}
          AND NOT EXISTS (
            SELECT 1 FROM recon_file_row r FORCE INDEX (recon_file_row_merchant)
            WHERE r.merchant_reference = m.order_id AND r.run_id = ${run.runId}
              AND r.type = 'payment' AND r.class <> ${RECONCILIATION_CLASS.duplicate})
        ORDER BY m.id
        LIMIT ${LATE_BOOKINGS_PER_PASS}
        FOR UPDATE`.execute(trx);
      found = candidates.rows.length;
      if (found === 0) return;
      // Two runs of one day (an on-demand file, then the complete one) each leave an open
      // MISSING_IN_LEDGER for the same order: the order is settled once, from its first mismatch
      // (a second fee would break the unique (order, kind) key and fail every run for good).
      const firsts = firstPerOrder(candidates.rows);
      orders = firsts.length;
      const fees = firsts
        .filter((row) => Number(row.same) === 1 && Number(row.fee_booked) === 0)
        .filter((row) => BigInt(row.fee_minor) > 0n);
      await postLedgerTransactions(
        trx,
        fees.map((row) => ({
          id: run.newLedgerId(),
          orderId: row.order_id,
          kind: FEE_LEDGER_KIND.transaction,
          currency: toCurrency(row.currency),
          entries: [
            {
              account: ACCOUNT.feeExpense,
              kind: FEE_LEDGER_KIND.expense,
              debitMinor: BigInt(row.fee_minor),
              creditMinor: 0n,
            },
            {
              account: ACCOUNT.pspReceivable,
              kind: FEE_LEDGER_KIND.receivable,
              debitMinor: 0n,
              creditMinor: BigInt(row.fee_minor),
            },
          ],
          now: run.now,
        })),
      );
      const ids = firsts.map((row) => row.mismatch_id);
      await sql`
        INSERT INTO recon_mismatch (run_id, class, line_no, order_id, psp_reference,
          file_amount_minor, ledger_amount_minor, order_state, file_row, ledger_entries, detail,
          created_at)
        SELECT ${run.runId},
               CASE WHEN ${settledAlike}
                 THEN ${RECONCILIATION_CLASS.timing} ELSE ${RECONCILIATION_CLASS.amountMismatch}
               END,
               NULL, m.order_id, p.psp_reference, p.gross_minor, lt.amount_minor, o.state,
               ${fileRowJson('p')}, ${ledgerEntriesJson(sql.ref('m.order_id'))},
               CONCAT('booked ', DATE_FORMAT(lt.created_at, '%Y-%m-%dT%H:%i:%s.%fZ'),
                 ', after the file of ', DATE_FORMAT(u.settlement_date, '%Y-%m-%d'), ' (', m.run_id,
                 ' line ', p.line_no, ') was reconciled: ',
                 CASE WHEN ${settledAlike}
                   THEN 'settled late in the ledger, fee booked now'
                   WHEN p.gross_minor = lt.amount_minor AND p.currency = lt.currency
                   THEN CONCAT('file fee ', p.fee_minor, ' exceeds its gross ', p.gross_minor, ' ',
                     p.currency, ' minor units; the fee is not booked')
                   ELSE CONCAT('file gross ', p.gross_minor, ' ', p.currency,
                     ' minor units; ledger ', lt.amount_minor)
                 END,
                 '; resolves its MISSING_IN_LEDGER'),
               ${run.now}
        FROM recon_mismatch m
        JOIN recon_file_row p ON p.run_id = m.run_id AND p.line_no = m.line_no
        JOIN recon_run u ON u.id = m.run_id
        JOIN ledger_transaction lt ON lt.order_id = m.order_id AND lt.kind = 'PAYMENT'
        LEFT JOIN payment_order o ON o.id = m.order_id
        WHERE m.id IN (${sql.join(ids)})
        ORDER BY m.id`.execute(trx);
      // Every open MISSING_IN_LEDGER of a payment row of these orders, including those past this
      // pass's LIMIT: a later pass would otherwise settle the order a second time.
      const orderIds = firsts.map((row) => row.order_id);
      const resolved = await sql`
        UPDATE recon_mismatch m FORCE INDEX (recon_mismatch_order)
        STRAIGHT_JOIN recon_file_row p ON p.run_id = m.run_id AND p.line_no = m.line_no
        SET m.resolved_by_run_id = ${run.runId}
        WHERE m.order_id IN (${sql.join(orderIds)})
          AND m.class = ${RECONCILIATION_CLASS.missingInLedger} AND m.resolved_by_run_id IS NULL
          AND m.run_id <> ${run.runId} AND p.type = 'payment'`.execute(trx);
      if (Number(resolved.numAffectedRows ?? 0n) < found) {
        throw new Error(
          `late bookings: ${found} mismatches to resolve, ${resolved.numAffectedRows} resolved`,
        );
      }
    });
    settled += orders;
    if (found < LATE_BOOKINGS_PER_PASS) return settled;
  }
  return settled;
}

/** The first row of each order, in the rows' order. */
function firstPerOrder<T extends { order_id: string }>(rows: readonly T[]): T[] {
  const seen = new Set<string>();
  return rows.filter((row) => {
    if (seen.has(row.order_id)) return false;
    seen.add(row.order_id);
    return true;
  });
}

function toCurrency(code: string): CurrencyCode {
  if (!isCurrencyCode(code)) throw new Error(`settlement row currency ${code} is not supported`);
  return code;
}

/**
 * Runs `work` while holding this database's reconciliation lock (MySQL's GET_LOCK, on a
 * connection of its own, released when `work` ends or the connection drops). The checks across
 * days (rule 3, the missing and late rules, resolving earlier mismatches) read other runs'
 * results, so runs classify one at a time, across nodes: two days classified at once missed a
 * DUPLICATE between them. Waits in steps of LOCK_STEP_S, calling `stillOurs` between them, at
 * most `waitMsMax` for a connection of `db` and the lock together (UnavailableError after that).
 * `work` gets `stillHeld`, which throws once the lock is gone (its connection dropped): a run
 * must call it between its steps.
 */
export async function withClassificationLock<T>(
  db: Db,
  options: { waitMsMax: number; stillOurs: () => Promise<void> },
  work: (stillHeld: () => Promise<void>) => Promise<T>,
): Promise<T> {
  const name = sql`CONCAT('settle.recon.', MD5(DATABASE()))`;
  const deadline = Date.now() + options.waitMsMax;
  // mysql2 queues a request for a connection with no deadline and cannot take it back: the wait
  // is given up here, at the deadline or once the run is no longer ours, and a connection that
  // comes after that goes straight back to the pool.
  let wait: 'waiting' | 'connected' | 'given up' = 'waiting';
  let giveUp: (error: Error) => void = () => undefined;
  const givenUp = new Promise<never>((_, reject) => {
    giveUp = (error) => {
      if (wait !== 'waiting') return;
      wait = 'given up';
      reject(error);
    };
  });
  const poll = setInterval(
    () => {
      options.stillOurs().then(() => {
        if (Date.now() < deadline) return;
        giveUp(
          new UnavailableError(
            `no connection of the classification lock's pool was free for ${options.waitMsMax} ms; run it again`,
          ),
        );
      }, giveUp);
    },
    Math.min(LOCK_STEP_S * 1_000, options.waitMsMax),
  );
  const locked = db.connection().execute(async (connection) => {
    clearInterval(poll);
    // Nobody awaits this error: the caller had its own when the wait was given up.
    if (wait === 'given up') throw new UnavailableError('the wait for a connection was given up');
    wait = 'connected';
    // The server drops the lock with its connection, and nothing would tell `work`: it asks
    // between its steps (which also keeps the connection from idling out).
    const stillHeld = async () => {
      const held = await sql<{ held: number | null }>`
        SELECT IS_USED_LOCK(${name}) = CONNECTION_ID() AS held`
        .execute(connection)
        .catch(() => undefined);
      if (Number(held?.rows[0]?.held) !== 1) {
        throw new UnavailableError(
          'the classification lock was lost (its database connection dropped); run it again',
        );
      }
    };
    for (;;) {
      const got = await sql<{ got: number | null }>`SELECT GET_LOCK(${name}, ${LOCK_STEP_S}) AS got`
        .execute(connection)
        .catch(rethrow);
      if (Number(got.rows[0]?.got) === 1) break;
      await options.stillOurs();
      if (Date.now() >= deadline) {
        throw new UnavailableError(
          `another reconciliation held the classification lock for ${options.waitMsMax} ms; run it again`,
        );
      }
    }
    try {
      return await work(stillHeld);
    } finally {
      await sql`SELECT RELEASE_LOCK(${name})`.execute(connection).catch(() => undefined);
    }
  });
  try {
    return await Promise.race([locked, givenUp]);
  } finally {
    clearInterval(poll);
  }
}

/** Seconds of one GET_LOCK wait: in config.ts, which keeps MYSQL_STATEMENT_TIMEOUT_MS above it. */
const LOCK_STEP_S = CLASSIFICATION_LOCK_STEP_S;

/**
 * A row this file settles (MATCHED or TIMING) resolves a MISSING_IN_SETTLEMENT of an earlier
 * day's report (the PSP settled it late), and the open MISSING_IN_LEDGER of an earlier payment
 * row naming the order (an earlier run of this day's file, say an on-demand one, classified it
 * before the payment was booked; rule 3 makes an earlier day's row a DUPLICATE instead).
 */
export async function resolveEarlierMismatches(db: Db, runId: string): Promise<void> {
  // Driven from the open mismatches (few) into this run's rows by index, never the reverse.
  await sql`
    UPDATE recon_mismatch m FORCE INDEX (recon_mismatch_open)
    STRAIGHT_JOIN recon_file_row r FORCE INDEX (recon_file_row_merchant)
      ON r.merchant_reference = m.order_id AND r.run_id = ${runId}
    SET m.resolved_by_run_id = ${runId}
    WHERE m.class = ${RECONCILIATION_CLASS.missingInSettlement}
      AND m.resolved_by_run_id IS NULL AND m.run_id <> ${runId}
      AND r.class IN (${RECONCILIATION_CLASS.matched}, ${RECONCILIATION_CLASS.timing})`
    .execute(db)
    .catch(rethrow);
  // A refund or fee row's MISSING_IN_LEDGER stays: Settle books none from files.
  await sql`
    UPDATE recon_mismatch m FORCE INDEX (recon_mismatch_open)
    STRAIGHT_JOIN recon_file_row r FORCE INDEX (recon_file_row_merchant)
      ON r.merchant_reference = m.order_id AND r.run_id = ${runId}
    STRAIGHT_JOIN recon_file_row p ON p.run_id = m.run_id AND p.line_no = m.line_no
    SET m.resolved_by_run_id = ${runId}
    WHERE m.class = ${RECONCILIATION_CLASS.missingInLedger}
      AND m.resolved_by_run_id IS NULL AND m.run_id <> ${runId}
      AND r.class IN (${RECONCILIATION_CLASS.matched}, ${RECONCILIATION_CLASS.timing})
      AND p.type = 'payment'`
    .execute(db)
    .catch(rethrow);
}

/** Counts per class and the file's totals, from the classified rows. */
export async function summarizeRun(db: Db, runId: string): Promise<RunSummary> {
  const byClass = await sql<{
    class: string;
    n: string;
    gross: string;
    fee: string;
    net: string;
  }>`
    SELECT class, COUNT(*) AS n, SUM(gross_minor) AS gross, SUM(fee_minor) AS fee,
           SUM(net_minor) AS net
    FROM recon_file_row WHERE run_id = ${runId} GROUP BY class`
    .execute(db)
    .catch(rethrow);
  // Mismatches with no line of this file: payments missing from it, and late bookings.
  const lineless = await sql<{ class: string; n: string }>`
    SELECT class, COUNT(*) AS n FROM recon_mismatch
    WHERE run_id = ${runId} AND line_no IS NULL GROUP BY class`
    .execute(db)
    .catch(rethrow);
  const counts: Record<ReconciliationClass, bigint> = {
    MATCHED: 0n,
    MISSING_IN_LEDGER: 0n,
    MISSING_IN_SETTLEMENT: 0n,
    AMOUNT_MISMATCH: 0n,
    DUPLICATE: 0n,
    TIMING: 0n,
  };
  for (const row of lineless.rows) counts[row.class as ReconciliationClass] += BigInt(row.n);
  const totals = {
    rowsLoaded: 0n,
    grossMinor: 0n,
    feeMinor: 0n,
    netMinor: 0n,
    settledGrossMinor: 0n,
    settledFeeMinor: 0n,
    settledNetMinor: 0n,
  };
  for (const row of byClass.rows) {
    if (!isRowClass(row.class)) throw new Error(`run ${runId} has unclassified rows`);
    counts[row.class] += BigInt(row.n);
    totals.rowsLoaded += BigInt(row.n);
    totals.grossMinor += BigInt(row.gross);
    totals.feeMinor += BigInt(row.fee);
    totals.netMinor += BigInt(row.net);
    if (row.class === RECONCILIATION_CLASS.matched || row.class === RECONCILIATION_CLASS.timing) {
      totals.settledGrossMinor += BigInt(row.gross);
      totals.settledFeeMinor += BigInt(row.fee);
      totals.settledNetMinor += BigInt(row.net);
    }
  }
  return { counts, ...totals };
}

export async function countWallets(db: Db): Promise<bigint> {
  const result = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM wallet`
    .execute(db)
    .catch(rethrow);
  return BigInt(result.rows[0]?.n ?? '0');
}

// ---------------------------------------------------------------------------------------------
// Mismatches

export async function listMismatches(
  db: Db,
  filter: { runId: string; class?: ReconciliationClass; afterId?: bigint; limit: number },
): Promise<Mismatch[]> {
  let query = reconDb(db)
    .selectFrom('recon_mismatch')
    .selectAll()
    .where('run_id', '=', filter.runId)
    .orderBy('id')
    .limit(filter.limit);
  if (filter.class !== undefined) query = query.where('class', '=', filter.class);
  if (filter.afterId !== undefined) query = query.where('id', '>', filter.afterId.toString());
  const rows = await query.execute().catch(rethrow);
  return rows.map((row) => ({
    id: BigInt(row.id),
    runId: row.run_id,
    class: row.class as ReconciliationClass,
    lineNumber: row.line_no ?? undefined,
    orderId: row.order_id,
    pspReference: row.psp_reference ?? undefined,
    fileAmountMinor: optionalBigInt(row.file_amount_minor),
    ledgerAmountMinor: optionalBigInt(row.ledger_amount_minor),
    orderState: row.order_state ?? undefined,
    fileRowJson: row.file_row ?? undefined,
    ledgerEntriesJson: row.ledger_entries,
    detail: row.detail,
    resolvedByRunId: row.resolved_by_run_id ?? undefined,
    createdAt: row.created_at,
  }));
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** The file row as parsed, as a JSON object; amounts are strings of minor units. */
function fileRowJson(alias: 'r' | 'p' = 'r'): RawBuilder<string> {
  const t = sql.raw(alias);
  return sql<string>`json_object(
    'line', ${t}.line_no, 'psp_reference', ${t}.psp_reference,
    'merchant_reference', ${t}.merchant_reference, 'type', ${t}.type, 'currency', ${t}.currency,
    'gross_minor', CAST(${t}.gross_minor AS CHAR), 'fee_minor', CAST(${t}.fee_minor AS CHAR),
    'net_minor', CAST(${t}.net_minor AS CHAR), 'batch_id', ${t}.batch_id,
    'created_utc', DATE_FORMAT(${t}.created_utc, '%Y-%m-%dT%H:%i:%s.%fZ'))`;
}

/** Every ledger entry of an order, as a JSON array (empty when there is none). */
function ledgerEntriesJson(orderId: RawBuilder<unknown>) {
  return sql<string>`(
    SELECT COALESCE(json_arrayagg(json_object(
             'entry_id', CAST(e.id AS CHAR), 'transaction_id', e.transaction_id,
             'account', e.account, 'kind', e.kind, 'currency', e.currency,
             'debit_minor', CAST(e.debit_minor AS CHAR),
             'credit_minor', CAST(e.credit_minor AS CHAR),
             'created_at', DATE_FORMAT(e.created_at, '%Y-%m-%dT%H:%i:%s.%fZ'))), json_array())
    FROM ledger_entry e WHERE e.order_id = ${orderId})`;
}

/** One READ COMMITTED transaction, retried whole on deadlock or lock wait timeout (bounded). */
async function inReadCommitted(
  db: Db,
  work: (
    trx: Parameters<Parameters<ReturnType<Db['transaction']>['execute']>[0]>[0],
  ) => Promise<void>,
): Promise<void> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      await db.transaction().setIsolationLevel('read committed').execute(work);
      return;
    } catch (error) {
      if (isTransientLockError(error) && attempt < TRANSACTION_ATTEMPTS_MAX) {
        await new Promise((resolve) => setTimeout(resolve, 10 * attempt + Math.random() * 20));
        continue;
      }
      throw toUnavailable(error);
    }
  }
}

function toRun(row: Selectable<ReconRunTable>): Run {
  return {
    id: row.id,
    day: row.settlement_date.toISOString().slice(0, 10),
    fileName: row.file_name,
    fileSha256: row.file_sha256,
    state: row.state,
    rowsTotal: BigInt(row.rows_total),
    rowsLoaded: BigInt(row.rows_loaded),
    counts: {
      MATCHED: BigInt(row.matched_count),
      MISSING_IN_LEDGER: BigInt(row.missing_in_ledger_count),
      MISSING_IN_SETTLEMENT: BigInt(row.missing_in_settlement_count),
      AMOUNT_MISMATCH: BigInt(row.amount_mismatch_count),
      DUPLICATE: BigInt(row.duplicate_count),
      TIMING: BigInt(row.timing_count),
    },
    currency: row.currency,
    grossMinor: BigInt(row.gross_minor),
    feeMinor: BigInt(row.fee_minor),
    netMinor: BigInt(row.net_minor),
    settledGrossMinor: BigInt(row.settled_gross_minor),
    settledFeeMinor: BigInt(row.settled_fee_minor),
    settledNetMinor: BigInt(row.settled_net_minor),
    internalCheck: row.internal_check === null ? undefined : parseInternalCheck(row.internal_check),
    error: row.error ?? undefined,
    attempts: Number(row.attempts),
    leaseOwner: row.lease_owner ?? undefined,
    leaseUntil: row.lease_until,
    createdAt: row.created_at,
    completedAt: row.completed_at ?? undefined,
  };
}

function parseInternalCheck(text: string): InternalCheck {
  const raw = JSON.parse(text) as {
    ledgerBalanced: boolean;
    totals: Array<{
      currency: string;
      debitMinor: string;
      creditMinor: string;
      balanceMinor: string;
    }>;
    walletsChecked: string;
    walletsMatchLedger: boolean;
    walletsNotMatching: string;
    walletDifferences: Array<{ sellerId: string; walletMinor: string; ledgerMinor: string }>;
    // Absent from runs stored before the running sums were checked.
    ledgerSumsMatch?: boolean;
    // Absent too from runs stored before a comparison that could not run was told apart.
    ledgerSumsUnchecked?: string;
    ledgerSumsNotMatching?: string;
    ledgerSumDifferences?: Array<{ account: string; currency: string }>;
    // Absent too from runs stored before the currencies were counted.
    currencySumsNotMatching?: string;
    currencySumDifferences?: string[];
  };
  const currencySumDifferences = raw.currencySumDifferences ?? [];
  return {
    ledgerBalanced: raw.ledgerBalanced,
    totals: raw.totals.map((total) => ({
      currency: total.currency,
      debitMinor: BigInt(total.debitMinor),
      creditMinor: BigInt(total.creditMinor),
      balanceMinor: BigInt(total.balanceMinor),
    })),
    walletsChecked: BigInt(raw.walletsChecked),
    walletsMatchLedger: raw.walletsMatchLedger,
    walletsNotMatching: BigInt(raw.walletsNotMatching),
    walletDifferences: raw.walletDifferences.map((difference) => ({
      sellerId: difference.sellerId,
      walletMinor: BigInt(difference.walletMinor),
      ledgerMinor: BigInt(difference.ledgerMinor),
    })),
    ledgerSumsMatch: raw.ledgerSumsMatch,
    ledgerSumsUnchecked: raw.ledgerSumsUnchecked,
    ledgerSumsNotMatching: BigInt(raw.ledgerSumsNotMatching ?? '0'),
    ledgerSumDifferences: (raw.ledgerSumDifferences ?? []).map(({ account, currency }) => ({
      account,
      currency,
    })),
    currencySumsNotMatching: BigInt(raw.currencySumsNotMatching ?? currencySumDifferences.length),
    currencySumDifferences,
  };
}

function isRowClass(value: string): value is Exclude<ReconciliationClass, 'MISSING_IN_SETTLEMENT'> {
  return (
    value === RECONCILIATION_CLASS.matched ||
    value === RECONCILIATION_CLASS.missingInLedger ||
    value === RECONCILIATION_CLASS.amountMismatch ||
    value === RECONCILIATION_CLASS.duplicate ||
    value === RECONCILIATION_CLASS.timing
  );
}

function optionalBigInt(value: string | null): bigint | undefined {
  return value === null ? undefined : BigInt(value);
}

function rethrow(error: unknown): never {
  throw toUnavailable(error);
}
