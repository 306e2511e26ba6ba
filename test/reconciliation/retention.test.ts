/**
 * Goal: the settlement files' staging rows do not grow forever. Past RECONCILIATION_KEEP_DAYS the
 * node's housekeeping deletes a day's staging rows, a bounded number per pass, whether or not the
 * nightly job runs, and leaves every report and mismatch readable; a day past the window can no
 * longer be reconciled (FAILED_PRECONDITION, nothing written), because its checks across days
 * would compare with purged rows.
 * Method: a ReconciliationService and the housekeeping's staging task over one real MariaDB
 * database with a clock the test sets; settlement files in a temporary folder, for orders the
 * ledger does not know (each row is then a MISSING_IN_LEDGER mismatch with its evidence); the
 * staging table is counted directly. Then a real node (PSP mock and Settle, the nightly job off):
 * its housekeeping purges and counts what it purged, and a task that fails, in /metrics.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { FailedPreconditionError } from '../../src/domain/errors.js';
import { addUtcDays, utcDayOf } from '../../src/domain/utc-day.js';
import { Housekeeping } from '../../src/jobs/housekeeping.js';
import {
  purgeExpiredStaging,
  ReconciliationService,
  RUN_STATE,
  SETTLEMENT_HEADER,
} from '../../src/reconciliation/index.js';
import type { Db } from '../../src/storage/db.js';
import { count, metricSample, openTestDatabase, scrapeMetrics } from '../support/harness.js';
import { startReconStack, type ReconStack } from './support.js';

const KEEP_DAYS = 40;

describe('retention of the staging rows (RECONCILIATION_KEEP_DAYS)', () => {
  let db: Db;
  let close: () => Promise<void>;
  let dir: string;
  let clock = new Date('2024-01-11T03:00:00.000Z');
  let service: ReconciliationService;
  let housekeeping: Housekeeping;
  const purges: Array<{ task: string; rows: number }> = [];

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase('settle_retention_t', { poolSize: 4 }));
    dir = await mkdtemp(path.join(tmpdir(), 'settle-retention-'));
    service = new ReconciliationService({
      db,
      dir,
      nodeName: 'node-1',
      batchRows: 1_000,
      rowsMax: 10_000,
      waitMs: 0,
      keepDays: KEEP_DAYS,
      now: () => clock,
    });
    housekeeping = new Housekeeping(
      [
        {
          name: 'settlement_staging',
          // Small bounds, so that one pass cannot purge a whole file.
          run: (at) => purgeExpiredStaging(db, at, KEEP_DAYS, { rowsPerDelete: 4, deletesMax: 3 }),
        },
      ],
      { intervalMs: 60_000, now: () => clock, onPurged: (purged) => purges.push(purged) },
    );
  });
  afterAll(async () => {
    await housekeeping?.stop();
    await service?.stop();
    await close?.();
    await rm(dir, { recursive: true, force: true });
  });

  /** A settlement file of `rows` payments of unknown orders; `tag` changes its content. */
  async function fileFor(day: string, rows: number, tag = ''): Promise<void> {
    const lines = Array.from(
      { length: rows },
      (_, i) =>
        `psp_${day}_${tag}${i},ord_${day}_${tag}${i},payment,USD,1.00,0.33,0.67,b,${day}T10:00:00.000Z`,
    );
    await writeFile(
      path.join(dir, `settlement-${day}.csv`),
      `${SETTLEMENT_HEADER}\n${lines.join('\n')}\n`,
    );
  }

  async function reconcile(day: string): Promise<string> {
    const run = await service.runToCompletion({ settlementDate: day }, { timeoutMs: 30_000 });
    expect(run.state, run.error).toBe(RUN_STATE.succeeded);
    return run.id;
  }

  const stagingRows = (runId: string) =>
    count(db, sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_file_row WHERE run_id = ${runId}`);

  let oldRun = '';
  let recentRun = '';

  it('purges the rows of days past the window, a bounded number per pass, and keeps every report', async () => {
    clock = new Date('2024-01-11T03:00:00.000Z');
    await fileFor('2024-01-10', 14);
    oldRun = await reconcile('2024-01-10');
    clock = new Date('2024-03-01T03:00:00.000Z');
    await fileFor('2024-02-28', 3);
    recentRun = await reconcile('2024-02-28');
    const reportBefore = await service.getReport(oldRun);
    expect(reportBefore.counts.MISSING_IN_LEDGER).toBe(14n);
    expect(await stagingRows(oldRun)).toBe(14);

    // 2024-03-01 minus 40 days is 2024-01-21: 2024-01-10 is past the window, 2024-02-28 is not.
    // Three DELETEs of four rows per pass.
    expect(await housekeeping.runOnce()).toEqual({ settlement_staging: 12 });
    expect(await stagingRows(oldRun)).toBe(2);
    expect(await housekeeping.runOnce()).toEqual({ settlement_staging: 2 });
    expect(await housekeeping.runOnce()).toEqual({ settlement_staging: 0 });
    expect(await stagingRows(oldRun)).toBe(0);
    expect(await stagingRows(recentRun)).toBe(3);
    expect(purges).toEqual([
      { task: 'settlement_staging', rows: 12 },
      { task: 'settlement_staging', rows: 2 },
    ]);

    // The report and its mismatches, with their evidence, are all still there.
    const reportAfter = await service.getReport(oldRun);
    expect(reportAfter.counts).toEqual(reportBefore.counts);
    expect(reportAfter.grossMinor).toBe(reportBefore.grossMinor);
    const mismatches = await service.listMismatches({
      reportId: oldRun,
      class: undefined,
      pageSize: 100,
      pageToken: '',
    });
    expect(mismatches.items).toHaveLength(14);
    expect(mismatches.items.every((m) => m.class === 'MISSING_IN_LEDGER')).toBe(true);
  });

  it('refuses to reconcile a day past the window and writes nothing; its report stays readable', async () => {
    clock = new Date('2024-03-01T03:00:00.000Z');
    const runsBefore = await count(db, sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_run`);
    // The same day's file again, with other content: a new run would be needed.
    await fileFor('2024-01-10', 2, 'again');
    const refused = await service.start({ settlementDate: '2024-01-10' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(FailedPreconditionError);
    expect((refused as Error).message).toBe(
      'settlement day 2024-01-10 is older than the retention window (RECONCILIATION_KEEP_DAYS=40, ' +
        'so days from 2024-01-21): the staging rows of older days are purged and it could not ' +
        'be checked against them; raise RECONCILIATION_KEEP_DAYS to reconcile it',
    );
    expect(await count(db, sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_run`)).toBe(
      runsBefore,
    );
    expect((await service.getReport(oldRun)).state).toBe(RUN_STATE.succeeded);

    // The first day the window keeps is reconciled as usual.
    await fileFor('2024-01-21', 1);
    const kept = await reconcile('2024-01-21');
    expect(await stagingRows(kept)).toBe(1);
  });

  it('leaves the rows of a run still RUNNING', async () => {
    // Forty days on, 2024-02-28 and 2024-01-21 are past the window too. The run of 2024-02-28
    // is made RUNNING again, as if a node were still loading it: its rows are left alone.
    clock = new Date('2024-04-10T03:00:00.000Z');
    await sql`UPDATE recon_run SET state = ${RUN_STATE.running} WHERE id = ${recentRun}`.execute(
      db,
    );
    await housekeeping.runOnce();
    expect(await stagingRows(recentRun)).toBe(3);
    expect(
      await count(db, sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_file_row`),
      'only the RUNNING run keeps rows',
    ).toBe(3);
    await sql`UPDATE recon_run SET state = ${RUN_STATE.failed} WHERE id = ${recentRun}`.execute(db);
    await housekeeping.runOnce();
    expect(await stagingRows(recentRun)).toBe(0);
  });
});

describe('a node with the nightly job off (RECONCILIATION_AT=off)', () => {
  let stack: ReconStack | undefined;
  afterAll(async () => stack?.close());

  it('purges expired staging rows in its housekeeping and counts them, and its failures, in /metrics', async () => {
    stack = await startReconStack({ RECONCILIATION_AT: 'off', RECONCILIATION_KEEP_DAYS: '32' });
    const { db } = stack.settle;
    const yesterday = addUtcDays(utcDayOf(new Date()), -1);
    const lines = ['a', 'b', 'c'].map(
      (tag) => `psp_${tag},ord_${tag},payment,USD,1.00,0.33,0.67,b,${yesterday}T10:00:00.000Z`,
    );
    await writeFile(
      path.join(stack.dir, `settlement-${yesterday}.csv`),
      `${SETTLEMENT_HEADER}\n${lines.join('\n')}\n`,
    );
    const run = await stack.settle.reconciliation.runToCompletion(
      { settlementDate: yesterday },
      { timeoutMs: 30_000 },
    );
    expect(run.state, run.error).toBe(RUN_STATE.succeeded);
    const staged = () =>
      count(
        db,
        sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_file_row WHERE run_id = ${run.id}`,
      );
    expect(await staged()).toBe(3);

    // Kept while inside the window; once its day is 33 days old, the next pass purges it.
    expect((await stack.settle.housekeeping.runOnce()).settlement_staging).toBe(0);
    const old = addUtcDays(utcDayOf(new Date()), -33);
    await sql`UPDATE recon_run SET settlement_date = ${old} WHERE id = ${run.id}`.execute(db);
    expect(await stack.settle.housekeeping.runOnce()).toEqual({
      idempotency_key: 0,
      settlement_staging: 3,
      webhook_inbox: 0,
      dead_letter: 0,
      command_stream: 0,
    });
    expect(await staged()).toBe(0);
    expect((await stack.settle.reconciliation.getReport(run.id)).counts.MISSING_IN_LEDGER).toBe(3n);
    const metrics = await scrapeMetrics(stack.settleHttp);
    expect(metricSample(metrics, 'settle_rows_purged_total', { task: 'settlement_staging' })).toBe(
      3,
    );

    // A task that fails is counted (the alert SettleHousekeepingFailing reads it), and the other
    // task still runs in that pass.
    await sql`RENAME TABLE recon_file_row TO recon_file_row_away`.execute(db);
    try {
      expect(await stack.settle.housekeeping.runOnce()).toEqual({
        idempotency_key: 0,
        settlement_staging: -1,
        webhook_inbox: 0,
        dead_letter: 0,
        command_stream: 0,
      });
    } finally {
      await sql`RENAME TABLE recon_file_row_away TO recon_file_row`.execute(db);
    }
    const after = await scrapeMetrics(stack.settleHttp);
    expect(
      metricSample(after, 'settle_housekeeping_failures_total', { task: 'settlement_staging' }),
    ).toBe(1);
    // Every task's series exists from the start, at 0 until it fails.
    expect(
      metricSample(after, 'settle_housekeeping_failures_total', { task: 'idempotency_key' }),
    ).toBe(0);
  });
});

describe('RECONCILIATION_KEEP_DAYS', () => {
  it('defaults to 400 days and keeps at least 32 (more than the catch-up days)', () => {
    expect(loadConfig({}).RECONCILIATION_KEEP_DAYS).toBe(400);
    expect(loadConfig({ RECONCILIATION_KEEP_DAYS: '32' }).RECONCILIATION_KEEP_DAYS).toBe(32);
    expect(() => loadConfig({ RECONCILIATION_KEEP_DAYS: '31' })).toThrow(
      'RECONCILIATION_KEEP_DAYS',
    );
  });
});
