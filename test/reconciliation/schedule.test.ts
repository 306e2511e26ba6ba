/**
 * Goal: the nightly reconciliation runs each day exactly once even with several nodes, only after
 * the configured time, catches up on missed days (bounded), retries a day whose file was missing,
 * takes over a day whose node died, and stops promptly. Method: two ReconciliationSchedule
 * instances (two "nodes", each with its own ReconciliationService) over one real MariaDB
 * database, with a clock the test sets; settlement files written into a temporary folder. The
 * schedulers race by running their checks concurrently; the tables are then read directly.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, utcMinutesOf } from '../../src/config.js';
import { dueUtcDays } from '../../src/domain/utc-day.js';
import {
  ReconciliationSchedule,
  ReconciliationService,
  SETTLEMENT_HEADER,
} from '../../src/reconciliation/index.js';
import type { Db } from '../../src/storage/db.js';
import { openTestDatabase, waitFor } from '../support/harness.js';

const AT_2_AM = 120;

describe('the schedule settings', () => {
  it('take HH:MM in UTC or off, and survive a round trip through the environment', () => {
    expect(utcMinutesOf(loadConfig({ RECONCILIATION_AT: '23:59' }).RECONCILIATION_AT)).toBe(1_439);
    expect(
      utcMinutesOf(loadConfig({ PSP_SETTLEMENT_AT: 'off' }).PSP_SETTLEMENT_AT),
    ).toBeUndefined();
    expect(utcMinutesOf(loadConfig({}).RECONCILIATION_AT)).toBe(120);
    expect(() => loadConfig({ RECONCILIATION_AT: '24:00', PSP_SETTLEMENT_AT: '2:00' })).toThrow(
      'PSP_SETTLEMENT_AT: must be HH:MM (UTC) or off\n  - RECONCILIATION_AT: must be HH:MM (UTC) or off',
    );
  });
});

describe('dueUtcDays', () => {
  it('makes yesterday due only once the time of day has passed', () => {
    expect(dueUtcDays(new Date('2024-06-10T01:59:59.999Z'), AT_2_AM, 1)).toEqual(['2024-06-08']);
    expect(dueUtcDays(new Date('2024-06-10T02:00:00.000Z'), AT_2_AM, 1)).toEqual(['2024-06-09']);
    expect(dueUtcDays(new Date('2024-06-10T02:00:00.000Z'), AT_2_AM, 3)).toEqual([
      '2024-06-07',
      '2024-06-08',
      '2024-06-09',
    ]);
    expect(dueUtcDays(new Date('2024-03-01T00:00:00.000Z'), 0, 2)).toEqual([
      '2024-02-28',
      '2024-02-29',
    ]);
  });
});

describe('ReconciliationSchedule', () => {
  let db: Db;
  let close: () => Promise<void>;
  let dir: string;
  let clock: Date;
  const services: ReconciliationService[] = [];

  beforeAll(async () => {
    ({ db, close } = await openTestDatabase('settle_t', { poolSize: 8 }));
    dir = await mkdtemp(path.join(tmpdir(), 'settle-schedule-'));
  });
  afterAll(async () => {
    for (const service of services) await service.stop();
    await close?.();
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    for (const table of [
      'reconciliation_schedule',
      'recon_mismatch',
      'recon_file_row',
      'recon_run',
    ]) {
      await sql`DELETE FROM ${sql.table(table)}`.execute(db);
    }
  });

  function node(name: string, options: { catchUpDays?: number; checkMsMax?: number } = {}) {
    const reconciliation = new ReconciliationService({
      db,
      dir,
      nodeName: name,
      batchRows: 1_000,
      rowsMax: 10_000,
      waitMs: 0,
      now: () => clock,
    });
    services.push(reconciliation);
    return new ReconciliationSchedule({
      db,
      reconciliation,
      nodeName: name,
      atMinutes: AT_2_AM,
      catchUpDays: options.catchUpDays ?? 3,
      retryMs: 3_600_000,
      now: () => clock,
      ...(options.checkMsMax !== undefined ? { checkMsMax: options.checkMsMax } : {}),
    });
  }

  async function fileFor(day: string): Promise<void> {
    await writeFile(
      path.join(dir, `settlement-${day}.csv`),
      `${SETTLEMENT_HEADER}\npsp_${day},ord_${day},payment,USD,1.00,0.33,0.67,b,${day}T10:00:00.000Z\n`,
    );
  }

  async function scheduleRows() {
    const result = await sql<{
      day: string;
      state: string;
      attempts: number;
      run_id: string | null;
    }>`
      SELECT DATE_FORMAT(day, '%Y-%m-%d') AS day, state, attempts, run_id
      FROM reconciliation_schedule ORDER BY day`.execute(db);
    return result.rows.map((row) => ({ ...row, attempts: Number(row.attempts) }));
  }

  async function runCount(): Promise<number> {
    const result = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_run`.execute(db);
    return Number(result.rows[0]?.n);
  }

  it('runs each due day once across two racing nodes, and never again', async () => {
    clock = new Date('2024-06-10T02:30:00Z');
    for (const day of ['2024-06-07', '2024-06-08', '2024-06-09']) await fileFor(day);
    const [a, b] = [node('node-a'), node('node-b')];
    const [outA, outB] = await Promise.all([a.runDue(), b.runDue()]);
    const ran = [...outA, ...outB].map((outcome) => `${outcome.day} ${outcome.state}`).sort();
    expect(ran).toEqual(['2024-06-07 SUCCEEDED', '2024-06-08 SUCCEEDED', '2024-06-09 SUCCEEDED']);
    const rows = await scheduleRows();
    expect(rows.map((row) => [row.day, row.state, row.attempts])).toEqual([
      ['2024-06-07', 'SUCCEEDED', 1],
      ['2024-06-08', 'SUCCEEDED', 1],
      ['2024-06-09', 'SUCCEEDED', 1],
    ]);
    expect(rows.every((row) => row.run_id?.startsWith('rcn_'))).toBe(true);
    expect(await runCount()).toBe(3);

    // Later the same day, and the next racing checks: nothing to do.
    clock = new Date('2024-06-10T23:00:00Z');
    expect([...(await a.runDue()), ...(await b.runDue())]).toEqual([]);
    expect(await runCount()).toBe(3);
  });

  it('waits for the time of day, then catches up on missed days, at most catchUpDays', async () => {
    for (const day of ['2024-07-01', '2024-07-02', '2024-07-03', '2024-07-04', '2024-07-05']) {
      await fileFor(day);
    }
    const scheduler = node('node-c', { catchUpDays: 2 });
    clock = new Date('2024-07-03T01:00:00Z');
    const describe = (outcomes: Array<{ day: string; state: string }>) =>
      outcomes.map((outcome) => `${outcome.day} ${outcome.state}`);
    // Before 02:00 on 07-03, 07-02 is not due yet.
    expect(describe(await scheduler.runDue())).toEqual([
      '2024-06-30 NO_FILE',
      '2024-07-01 SUCCEEDED',
    ]);
    // Down from 07-03 01:00 until 07-06 09:00: 07-02 and 07-03 are older than the two days
    // caught up.
    clock = new Date('2024-07-06T09:00:00Z');
    expect(describe(await scheduler.runDue())).toEqual([
      '2024-07-04 SUCCEEDED',
      '2024-07-05 SUCCEEDED',
    ]);
    expect((await scheduleRows()).map((row) => row.day)).toEqual([
      '2024-06-30',
      '2024-07-01',
      '2024-07-04',
      '2024-07-05',
    ]);
  });

  it('marks a day without a file NO_FILE and tries it again after retryMs', async () => {
    const scheduler = node('node-d', { catchUpDays: 1 });
    clock = new Date('2024-08-02T02:00:00Z');
    expect(await scheduler.runDue()).toEqual([
      {
        day: '2024-08-01',
        state: 'NO_FILE',
        error: "settlement file 'settlement-2024-08-01.csv' not found",
      },
    ]);
    await fileFor('2024-08-01');
    clock = new Date('2024-08-02T02:30:00Z');
    expect(await scheduler.runDue()).toEqual([]);
    clock = new Date('2024-08-02T03:00:01Z');
    const [retried] = await scheduler.runDue();
    expect(retried).toMatchObject({ day: '2024-08-01', state: 'SUCCEEDED' });
    expect(await scheduleRows()).toEqual([
      { day: '2024-08-01', state: 'SUCCEEDED', attempts: 2, run_id: retried?.runId },
    ]);
  });

  it('takes over a day whose node died mid-run once its claim expired', async () => {
    await fileFor('2024-09-01');
    clock = new Date('2024-09-02T02:00:00Z');
    await sql`
      INSERT INTO reconciliation_schedule (day, state, attempts, lease_owner, lease_until,
        created_at, updated_at)
      VALUES ('2024-09-01', 'RUNNING', 1, 'dead-node', ${new Date('2024-09-02T02:00:30Z')},
        ${clock}, ${clock})`.execute(db);
    const scheduler = node('node-e', { catchUpDays: 1 });
    expect(await scheduler.runDue()).toEqual([]);
    clock = new Date('2024-09-02T02:01:00Z');
    expect(await scheduler.runDue()).toMatchObject([{ day: '2024-09-01', state: 'SUCCEEDED' }]);
    expect((await scheduleRows())[0]).toMatchObject({ state: 'SUCCEEDED', attempts: 2 });
  });

  it('runs on its timer when started and stops promptly', async () => {
    await fileFor('2024-10-01');
    clock = new Date('2024-10-02T05:00:00Z');
    const [a, b] = [node('node-f', { catchUpDays: 1 }), node('node-g', { catchUpDays: 1 })];
    a.start();
    b.start();
    await waitFor(async () => (await scheduleRows())[0]?.state === 'SUCCEEDED', {
      timeoutMs: 10_000,
      what: 'the timer to reconcile 2024-10-01',
    });
    const started = Date.now();
    await Promise.all([a.stop(), b.stop()]);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await runCount()).toBe(1);
  });
});
