/**
 * Goal: payments by state (the settle_payments gauge, the operations page) stay exact for the
 * states a payment passes through, while the final states, which grow with the table, are
 * counted at most once per reuse period per node. Method: a migrated database of its own,
 * payments written with the creation's own statements and moved with plain UPDATEs, and a
 * clock the test turns.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PaymentCounts } from '../../src/observability/operations.js';
import type { Db } from '../../src/storage/db.js';
import type { PaymentState } from '../../src/storage/repositories/payment.repository.js';
import { insertPaymentOfOneOrder, openTestDatabase } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_payment_counts', { poolSize: 2 }));
});
afterAll(async () => close?.());

let seq = 0;
async function payment(state: PaymentState): Promise<string> {
  seq += 1;
  const id = `pay_01JD2Q7Z8X9Y0A1B2C3D4E${String(seq).padStart(4, '0')}`;
  await insertPaymentOfOneOrder(db, {
    paymentId: id,
    orderId: `ord_01JD2Q7Z8X9Y0A1B2C3D4E${String(seq).padStart(4, '0')}`,
    paymentState: state,
    orderState: state === 'FAILED' ? 'FAILED' : 'EXECUTING',
    at: new Date(),
    failureReason: state === 'FAILED' ? 'RISK_REJECTED' : undefined,
  });
  return id;
}

const succeed = (id: string) =>
  sql`UPDATE payment SET state = 'SUCCEEDED' WHERE id = ${id}`.execute(db);

describe('PaymentCounts', () => {
  it('counts live states every time and final states once per reuse period', async () => {
    const executing = [await payment('EXECUTING'), await payment('EXECUTING')];
    await payment('SUCCEEDED');
    await payment('SUCCEEDED');
    await payment('FAILED');
    let now = 1_000_000;
    const counts = new PaymentCounts(db, 60_000, () => now);

    expect(await counts.read()).toEqual([
      { state: 'EXECUTING', count: 2 },
      { state: 'FAILED', count: 1 },
      { state: 'SUCCEEDED', count: 2 },
    ]);

    // A payment finishes: its live state drops at once; the final count is the one from before.
    await succeed(executing[0] as string);
    now += 59_000;
    expect(await counts.read()).toEqual([
      { state: 'EXECUTING', count: 1 },
      { state: 'FAILED', count: 1 },
      { state: 'SUCCEEDED', count: 2 },
    ]);

    // Once the reuse period is over, the final states are counted again.
    now += 1_000;
    expect(await counts.read()).toEqual([
      { state: 'EXECUTING', count: 1 },
      { state: 'FAILED', count: 1 },
      { state: 'SUCCEEDED', count: 3 },
    ]);
  });

  it('runs one count of the final states at a time, answering with the last one meanwhile', async () => {
    // Every statement PaymentCounts sends, counted on its way out.
    let statements = 0;
    const counted = db.withPlugin({
      transformQuery: (args) => {
        statements += 1;
        return args.node;
      },
      transformResult: async (args) => args.result,
    });
    let now = 0;
    const counts = new PaymentCounts(counted, 1_000, () => now);
    const failed = (rows: readonly { state: string; count: number }[]) =>
      rows.find((row) => row.state === 'FAILED')?.count ?? 0;
    const before = await counts.read();
    expect(statements).toBe(2); // the live states, then the final ones
    await payment('FAILED');

    now += 1_000;
    statements = 0;
    // The first read past the period starts a count; the two after it do not wait for it, nor
    // start their own: they answer with the last count.
    const counting = counts.read();
    const meanwhile = await Promise.all([counts.read(), counts.read()]);
    const after = await counting;
    expect(statements).toBe(4); // three counts of the live states, one of the final states
    for (const rows of meanwhile) expect(failed(rows)).toBe(failed(before));
    expect(failed(after)).toBe(failed(before) + 1);
  });
});
