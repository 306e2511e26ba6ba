/**
 * Goal: a file of 10,000 rows (the 1,000,000-row bench, scaled down) reconciles through the
 * batched, set-based path: many staging batches, several classification and fee ranges, the
 * injected discrepancies counted exactly, every settled row's fee booked once, the ledger still
 * balanced, and a second run of the same file writing nothing. Method: the bench's own fixture
 * (bench/recon-large/fixture.ts) builds fresh databases with 10,000 orders, ledger rows, wallets
 * and PSP charges and writes the file with the PSP mock's writer; ReconciliationService runs it
 * with small batches so the batching is exercised; the tables are read directly.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  generateLargeFixture,
  reconcileLarge,
  type LargeFixture,
} from '../../bench/recon-large/fixture.js';
import { openDatabase, type Db } from '../../src/storage/db.js';
import { expectMoneyInvariants } from '../support/harness.js';
import { allRowCounts } from './support.js';

let fixture: LargeFixture;
let db: Db;
let close: () => Promise<void>;

beforeAll(async () => {
  fixture = await generateLargeFixture({ rows: 10_000, mysqlUrl: inject('mysqlUrl') });
  ({ db, close } = openDatabase(fixture.settleUrl, { poolSize: 2 }));
}, 120_000);
afterAll(async () => {
  await close?.();
  await fixture?.remove();
});

describe('a 10,000-row settlement file', () => {
  it('reconciles in batches with every discrepancy counted and fees booked once', async () => {
    const { report } = await reconcileLarge({
      settleUrl: fixture.settleUrl,
      dir: fixture.dir,
      day: fixture.day,
      batchRows: 700,
    });
    expect(report.state, report.error).toBe('SUCCEEDED');
    expect(report.rowsTotal).toBe(BigInt(fixture.rows));
    expect(report.counts).toEqual(fixture.expected);
    expect(report.internalCheck).toMatchObject({ ledgerBalanced: true, walletsMatchLedger: true });
    const fees = await sql<{ n: string; total: string }>`
      SELECT COUNT(*) AS n, SUM(amount_minor) AS total
      FROM ledger_transaction WHERE kind = 'PSP_FEE'`.execute(db);
    expect(BigInt(fees.rows[0]?.n ?? '0')).toBe(fixture.expected.MATCHED);
    expect(BigInt(fees.rows[0]?.total ?? '0')).toBe(report.settledFeeMinor);
    // psp_receivable now holds what the PSP pays out for the settled orders, plus the booked
    // amounts of the orders the file does not settle as booked.
    const receivable = await sql<{ balance: string }>`
      SELECT SUM(debit_minor) - SUM(credit_minor) AS balance
      FROM ledger_entry WHERE account = 'psp_receivable'`.execute(db);
    const unsettled = await sql<{ total: string }>`
      SELECT COALESCE(SUM(ledger_amount_minor), 0) AS total FROM recon_mismatch
      WHERE run_id = ${report.id} AND class IN ('MISSING_IN_SETTLEMENT', 'AMOUNT_MISMATCH')`.execute(
      db,
    );
    expect(BigInt(receivable.rows[0]?.balance ?? '0')).toBe(
      report.settledNetMinor + BigInt(unsettled.rows[0]?.total ?? '0'),
    );
    await expectMoneyInvariants(db);

    const before = await allRowCounts(db);
    const again = await reconcileLarge({
      settleUrl: fixture.settleUrl,
      dir: fixture.dir,
      day: fixture.day,
    });
    expect(again.report).toEqual(report);
    expect(await allRowCounts(db)).toEqual(before);
  }, 120_000);
});
