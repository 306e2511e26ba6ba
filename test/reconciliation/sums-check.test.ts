/**
 * Goal: reconciliation's check of the running sums finds exactly what a repair would mend: the
 * report counts every (account, currency) pair a dry run of the repair counts, past the 1,000 a
 * check lists, names the first 100 the dry run names (rows of zeros for pairs without entries
 * too) and the same currencies, and finds nothing once the repair ran. Method: a
 * ReconciliationService over a fresh MariaDB database, an empty settlement file, the sums damaged
 * by hand with SQL (rows for accounts that have no entries), compared with repairLedgerSums.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReconciliationService, SETTLEMENT_HEADER } from '../../src/reconciliation/index.js';
import type { Db } from '../../src/storage/db.js';
import { repairLedgerSums } from '../../src/storage/repositories/ledger-sums.repository.js';
import { openTestDatabase } from '../support/harness.js';

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

/** The internal check of a run over an empty file of `day` (each day's file is a new run). */
async function internalCheckOf(day: string) {
  await writeFile(path.join(dir, `settlement-${day}.csv`), `${SETTLEMENT_HEADER}\n`);
  const run = await service.run({ settlementDate: day }, { waitMs: 60_000 });
  expect(run.state).toBe('SUCCEEDED');
  return run.internalCheck;
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
      currencySumDifferences: dryRun.currencies.map(({ currency }) => currency),
    });
    expect(dryRun.pairs).toHaveLength(100);
    expect(dryRun.currencies.map(({ currency }) => currency)).toEqual(['EUR', 'USD']);

    await repairLedgerSums(db, { dryRun: false });
    expect(await internalCheckOf('2024-03-02')).toMatchObject({
      ledgerSumsMatch: true,
      ledgerSumsNotMatching: 0n,
      ledgerSumDifferences: [],
      currencySumDifferences: [],
    });
  });
});
