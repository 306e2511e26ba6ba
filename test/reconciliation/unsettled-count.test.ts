/**
 * Goal: the unsettled-orders gauge counts each order with an open MISSING_IN_SETTLEMENT once,
 * leaves out mismatches a later file resolved and other classes, and reads at most `max` open
 * mismatches, so a scrape stays cheap after a day whose file lacked most of its rows.
 * Method: recon_mismatch rows written directly into a migrated test database on the real MariaDB,
 * then countUnsettledOrders.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countUnsettledOrders } from '../../src/reconciliation/reconciliation.repository.js';
import { reconDb } from '../../src/reconciliation/reconciliation.table.js';
import { openTestDatabase, type TestDatabase } from '../support/harness.js';

let database: TestDatabase;

beforeAll(async () => {
  database = await openTestDatabase('settle_t_unsettled', { poolSize: 2 });
});
afterAll(async () => database?.close());

async function mismatch(
  runId: string,
  mismatchClass: string,
  orderId: string,
  resolvedBy: string | null = null,
): Promise<void> {
  await reconDb(database.db)
    .insertInto('recon_mismatch')
    .values({
      run_id: runId,
      class: mismatchClass,
      line_no: null,
      order_id: orderId,
      psp_reference: null,
      file_amount_minor: null,
      ledger_amount_minor: null,
      order_state: null,
      file_row: null,
      ledger_entries: '[]',
      detail: 'test',
      resolved_by_run_id: resolvedBy,
      created_at: new Date(),
    })
    .execute();
}

describe('countUnsettledOrders', () => {
  it('counts each order with an open MISSING_IN_SETTLEMENT once, up to max', async () => {
    expect(await countUnsettledOrders(database.db, 100)).toBe(0);
    const run1 = `rcn_${'1'.repeat(26)}`;
    const run2 = `rcn_${'2'.repeat(26)}`;
    // The same day reconciled twice (two files): one order, two open mismatches.
    await mismatch(run1, 'MISSING_IN_SETTLEMENT', 'ord_a');
    await mismatch(run2, 'MISSING_IN_SETTLEMENT', 'ord_a');
    await mismatch(run1, 'MISSING_IN_SETTLEMENT', 'ord_b');
    await mismatch(run1, 'MISSING_IN_SETTLEMENT', 'ord_c');
    // Settled by a later file, and mismatches of other classes: not counted.
    await mismatch(run1, 'MISSING_IN_SETTLEMENT', 'ord_late', run2);
    await mismatch(run1, 'AMOUNT_MISMATCH', 'ord_d');
    await mismatch(run1, 'TIMING', 'ord_e');
    expect(await countUnsettledOrders(database.db, 100)).toBe(3);
    // Reading at most two open mismatches.
    expect(await countUnsettledOrders(database.db, 2)).toBeLessThanOrEqual(2);
    expect(await countUnsettledOrders(database.db, 2)).toBeGreaterThanOrEqual(1);
  });
});
