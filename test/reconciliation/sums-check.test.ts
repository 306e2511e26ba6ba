/**
 * Goal: reconciliation's check of the running sums finds exactly what a repair would mend: the
 * report counts every (account, currency) pair a dry run of the repair counts, past the 1,000 a
 * check lists, names the first 100 the dry run names (rows of zeros for pairs without entries
 * too), counts every currency and names the same first 100 currencies (a run stored before they
 * were counted counts its list), and finds nothing once the repair ran. A comparison that could
 * not run (a table gone, a statement past its deadline) is stored as unchecked, with a reason
 * that quotes no SQL, and fails (SUMS_UNCHECKED, its gauge 1) rather than read as passed while
 * the sums differ; a run stored before the sums were checked still has no sample for either.
 * Method: a ReconciliationService over a fresh MariaDB database, an empty settlement file, the
 * sums damaged by hand with SQL (rows for accounts that have no entries), compared with
 * repairLedgerSums; the comparison made to fail by a sums table renamed for one run; /metrics
 * rendered by createMetrics from the stored run, read back from the database.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMetrics } from '../../src/observability/metrics.js';
import {
  failedInternalChecks,
  ReconciliationService,
  SETTLEMENT_HEADER,
  type Run,
} from '../../src/reconciliation/index.js';
import {
  findRun,
  INTERNAL_CHECK_FAILURE,
} from '../../src/reconciliation/reconciliation.repository.js';
import type { Db } from '../../src/storage/db.js';
import { repairLedgerSums } from '../../src/storage/repositories/ledger-sums.repository.js';
import { metricSample, openTestDatabase } from '../support/harness.js';
import { insertBogusCurrencySums } from '../support/ledger.js';
import { operationsSnapshot } from '../support/operations-snapshot.js';

let db: Db;
let close: () => Promise<void>;
let dir: string;
let service: ReconciliationService;

beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_sums_check_t', { poolSize: 8 }));
  dir = await mkdtemp(path.join(tmpdir(), 'settle-sums-check-'));
  service = new ReconciliationService({
    db,
    dir,
    nodeName: 'node-a',
    batchRows: 1_000,
    rowsMax: 1_000,
    waitMs: 0,
  });
});
afterAll(async () => {
  await service?.stop();
  await close?.();
  await rm(dir, { recursive: true, force: true });
});

/** A succeeded run over an empty file of `day` (each day's file is a new run). */
async function runOf(day: string): Promise<Run> {
  await writeFile(path.join(dir, `settlement-${day}.csv`), `${SETTLEMENT_HEADER}\n`);
  const run = await service.run({ settlementDate: day }, { waitMs: 60_000 });
  expect(run.state).toBe('SUCCEEDED');
  return run;
}

/** The internal check of a run over an empty file of `day`. */
async function internalCheckOf(day: string) {
  return (await runOf(day)).internalCheck;
}

/** What /metrics says of each internal check of `run`, as the latest run (no sample: absent). */
async function checkGauges(run: Run): Promise<Record<string, number | undefined>> {
  const metrics = createMetrics();
  metrics.setSnapshotSource(() =>
    Promise.resolve(
      operationsSnapshot({
        reconciliation: {
          ok: true,
          value: { lastRun: run, lastDayReconciledAt: run.completedAt, unsettledOrders: 0 },
        },
      }),
    ),
  );
  const text = (await metrics.render()).body;
  return Object.fromEntries(
    Object.values(INTERNAL_CHECK_FAILURE).map((check) => [
      check,
      metricSample(text, 'settle_reconciliation_last_run_internal_check_failed', {
        settlement_day: run.day,
        check,
      }),
    ]),
  );
}

/** `id`'s run as the database holds it, parsed again. */
async function storedRun(id: string): Promise<Run> {
  const run = await findRun(db, id);
  if (run === undefined) throw new Error(`run ${id} is not stored`);
  return run;
}

describe("reconciliation's check of the running sums", () => {
  it('reports what a dry run of the repair reports, every pair counted, and nothing once repaired', async () => {
    // No entries: every row is one a repair deletes, the rows of zeros included.
    const ghosts = Array.from({ length: 1_001 }, (_, i) => `ghost:${String(i).padStart(4, '0')}`);
    await sql`INSERT INTO ledger_account_sum VALUES ${sql.join(
      ghosts.map((account) => sql`(${account}, 'USD', ${account.endsWith('7') ? 0 : 1}, 0)`),
    )}`.execute(db);
    await sql`INSERT INTO ledger_currency_sum VALUES ('EUR', 0, 0), ('USD', 5, 0)`.execute(db);
    const dryRun = await repairLedgerSums(db, { dryRun: true });
    expect(dryRun.pairsRepaired).toBe(1_001);
    expect(await internalCheckOf('2024-03-01')).toMatchObject({
      ledgerSumsMatch: false,
      ledgerSumsNotMatching: BigInt(dryRun.pairsRepaired),
      ledgerSumDifferences: dryRun.pairs.map(({ account, currency }) => ({ account, currency })),
      currencySumsNotMatching: BigInt(dryRun.currenciesRepaired),
      currencySumDifferences: dryRun.currencies.map(({ currency }) => currency),
    });
    expect(dryRun.pairs).toHaveLength(100);
    expect(dryRun.currencies.map(({ currency }) => currency)).toEqual(['EUR', 'USD']);

    await repairLedgerSums(db, { dryRun: false });
    expect(await internalCheckOf('2024-03-02')).toMatchObject({
      ledgerSumsMatch: true,
      ledgerSumsUnchecked: undefined,
      ledgerSumsNotMatching: 0n,
      ledgerSumDifferences: [],
      currencySumsNotMatching: 0n,
      currencySumDifferences: [],
    });
  });

  it('counts every currency whose sums differ and keeps the first 100, as a repair lists them', async () => {
    // Currency codes Settle never books, in a damaged table: each one a repair (a deletion).
    const codes = await insertBogusCurrencySums(db, 1_005);
    const dryRun = await repairLedgerSums(db, { dryRun: true });
    expect(dryRun.currenciesRepaired).toBe(1_005);
    const run = await runOf('2024-03-05');
    const found = {
      ledgerSumsMatch: false,
      ledgerSumsNotMatching: 0n,
      currencySumsNotMatching: 1_005n,
      currencySumDifferences: codes.slice(0, 100),
    };
    expect(run.internalCheck).toMatchObject(found);
    expect((await storedRun(run.id)).internalCheck).toMatchObject(found);
    expect(dryRun.currencies.map(({ currency }) => currency)).toEqual(codes.slice(0, 100));

    // A run stored before the currencies were counted listed them all: it counts its list.
    await sql`
      UPDATE recon_run
      SET internal_check = JSON_REMOVE(internal_check, '$.currencySumsNotMatching')
      WHERE id = ${run.id}`.execute(db);
    expect((await storedRun(run.id)).internalCheck).toMatchObject({
      ...found,
      currencySumsNotMatching: 100n,
    });
    await repairLedgerSums(db, { dryRun: false });
  });

  it('fails as unchecked, not passed, when the comparison cannot run while the sums differ', async () => {
    // A real difference, which the comparison would find, and a sums table out of the way for
    // the run, so the comparison fails (an error from MySQL that names the table).
    await sql`INSERT INTO ledger_account_sum VALUES ('ghost', 'USD', 1, 0)`.execute(db);
    await sql`RENAME TABLE ledger_currency_sum TO ledger_currency_sum_away`.execute(db);
    let run: Run;
    try {
      run = await runOf('2024-03-03');
    } finally {
      await sql`RENAME TABLE ledger_currency_sum_away TO ledger_currency_sum`.execute(db);
    }
    const stored = await storedRun(run.id);
    expect(stored.internalCheck).toMatchObject({
      ledgerBalanced: true,
      walletsMatchLedger: true,
      ledgerSumsMatch: undefined,
      ledgerSumsUnchecked: 'the comparison failed: ER_NO_SUCH_TABLE (errno 1146)',
      ledgerSumsNotMatching: 0n,
    });
    // The kind of failure only: the server's message names the database and the table.
    expect(stored.internalCheck?.ledgerSumsUnchecked).not.toContain('ledger_currency_sum');
    expect(failedInternalChecks(stored.internalCheck!)).toEqual(['SUMS_UNCHECKED']);
    // SUMS_DIFFER has no sample (not compared), so SettleLedgerSumsDiffer resolves, while
    // SettleLedgerSumsUnchecked fires on SUMS_UNCHECKED.
    expect(await checkGauges(stored)).toEqual({
      LEDGER_NOT_BALANCED: 0,
      WALLETS_DIFFER: 0,
      SUMS_DIFFER: undefined,
      SUMS_UNCHECKED: 1,
    });

    // Compared again, the sums differ: found, and the comparison ran.
    const again = await storedRun((await runOf('2024-03-04')).id);
    expect(again.internalCheck).toMatchObject({
      ledgerSumsMatch: false,
      ledgerSumsUnchecked: undefined,
      ledgerSumDifferences: [{ account: 'ghost', currency: 'USD' }],
    });
    expect(await checkGauges(again)).toEqual({
      LEDGER_NOT_BALANCED: 0,
      WALLETS_DIFFER: 0,
      SUMS_DIFFER: 1,
      SUMS_UNCHECKED: 0,
    });
    await repairLedgerSums(db, { dryRun: false });

    // A run stored before the sums were checked says nothing of them: no sample for either.
    await sql`
      UPDATE recon_run
      SET internal_check = JSON_REMOVE(internal_check, '$.ledgerSumsMatch',
        '$.ledgerSumsNotMatching', '$.ledgerSumDifferences', '$.currencySumsNotMatching',
        '$.currencySumDifferences')
      WHERE id = ${again.id}`.execute(db);
    const older = await storedRun(again.id);
    expect(older.internalCheck).toMatchObject({
      ledgerSumsMatch: undefined,
      ledgerSumsUnchecked: undefined,
    });
    expect(failedInternalChecks(older.internalCheck!)).toEqual([]);
    expect(await checkGauges(older)).toEqual({
      LEDGER_NOT_BALANCED: 0,
      WALLETS_DIFFER: 0,
      SUMS_DIFFER: undefined,
      SUMS_UNCHECKED: undefined,
    });
  });
});
