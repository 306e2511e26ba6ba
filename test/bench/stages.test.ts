/**
 * Goal: the bench's "where create→terminal time goes" table measures each stage from Settle's
 * own records: created → PspRegistered and PspRegistered → PspSucceeded from the order's row and
 * its history rows, and the last stage from the payment's last decision (over all its orders) to
 * the time the load generator saw it final; payments it never saw final add nothing there.
 * Method: a migrated database on the real MariaDB, with orders and history rows written at known
 * times.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stageLatencies } from '../../bench/stages.js';
import { paymentInserts } from '../../src/storage/repositories/payment.repository.js';
import {
  insertPaymentOfOneOrder,
  openTestDatabase,
  type TestDatabase,
} from '../support/harness.js';

let database: TestDatabase;
beforeAll(async () => {
  database = await openTestDatabase('stages', { poolSize: 2 });
});
afterAll(async () => {
  await database?.close();
});

const T0 = Date.parse('2026-11-26T10:00:00.000Z');

async function history(
  orderId: string,
  paymentId: string,
  rows: ReadonlyArray<readonly [event: string, msAfterCreation: number]>,
): Promise<void> {
  for (const [index, [event, after]] of rows.entries()) {
    await sql`INSERT INTO payment_order_transition
                (order_id, payment_id, version, from_state, to_state, event_type, detail, created_at)
              VALUES (${orderId}, ${paymentId}, ${index + 2}, 'EXECUTING', 'EXECUTING', ${event},
                      '{}', ${new Date(T0 + after)})`.execute(database.db);
  }
}

describe('stageLatencies', () => {
  it('times each stage from the records, and the last one to the load generator’s sighting', async () => {
    // Three payments of one order, created at T0; their decisions at known gaps.
    const gaps = [
      { registered: 10, succeeded: 30, seen: 34 },
      { registered: 20, succeeded: 60, seen: 70 },
      { registered: 40, succeeded: 100, seen: 130 },
    ];
    for (const [i, gap] of gaps.entries()) {
      const paymentId = `pay_stages_${i}`;
      const orderId = `ord_stages_${i}`;
      await insertPaymentOfOneOrder(database.db, {
        paymentId,
        orderId,
        paymentState: 'SUCCEEDED',
        orderState: 'SUCCEEDED',
        at: new Date(T0),
      });
      await history(orderId, paymentId, [
        ['PspRegistered', gap.registered],
        ['PspSucceeded', gap.succeeded],
      ]);
    }
    // A payment the load generator never saw final: its decisions count, no sighting.
    await insertPaymentOfOneOrder(database.db, {
      paymentId: 'pay_stages_unseen',
      orderId: 'ord_stages_unseen',
      paymentState: 'EXECUTING',
      orderState: 'EXECUTING',
      at: new Date(T0),
    });
    await history('ord_stages_unseen', 'pay_stages_unseen', [['PspRegistered', 20]]);

    const seenAt = new Map(gaps.map((gap, i) => [`pay_stages_${i}`, T0 + gap.seen]));
    const stages = await stageLatencies(
      database.url,
      [...gaps.keys()].map((i) => `pay_stages_${i}`).concat('pay_stages_unseen'),
      seenAt,
    );
    const byName = Object.fromEntries(stages.map((stage) => [stage.stage, stage]));
    expect(Object.keys(byName)).toEqual([
      '→ PspRegistered',
      '→ PspSucceeded',
      '→ seen by the load generator',
    ]);
    // Registered after 10, 20, 20 (unseen) and 40 ms; succeeded 20, 40 and 60 ms after that;
    // seen 4, 10 and 30 ms after the last decision.
    expect(byName['→ PspRegistered']?.p99).toBe(40);
    expect(byName['→ PspSucceeded']).toMatchObject({ p50: 40, p99: 60 });
    expect(byName['→ seen by the load generator']).toMatchObject({ p50: 10, p99: 30 });
  });

  it('takes a payment’s last decision over all its orders', async () => {
    // One payment of two orders, through the creation's own statements.
    const order = (id: string) => ({
      id,
      sellerId: `seller-${id}`,
      amountMinor: 500n,
      state: 'SUCCEEDED',
      failureReason: undefined,
      attempts: 1,
    });
    for (const statement of paymentInserts(database.db, [
      {
        payment: {
          id: 'pay_stages_two',
          buyerId: 'buyer-stages',
          requestId: 'stages-two',
          currency: 'USD',
          amountMinor: 1_000n,
          state: 'SUCCEEDED',
          failureReason: undefined,
          orders: [order('ord_stages_two_a'), order('ord_stages_two_b')],
        },
        now: new Date(T0),
      },
    ])) {
      await database.db.executeQuery(statement);
    }
    await history('ord_stages_two_a', 'pay_stages_two', [
      ['PspRegistered', 5],
      ['PspSucceeded', 50],
    ]);
    await history('ord_stages_two_b', 'pay_stages_two', [
      ['PspRegistered', 5],
      ['PspSucceeded', 80],
    ]);
    const stages = await stageLatencies(
      database.url,
      ['pay_stages_two'],
      new Map([['pay_stages_two', T0 + 95]]),
    );
    expect(stages.find((stage) => stage.stage === '→ seen by the load generator')).toMatchObject({
      p50: 15,
      p99: 15,
    });
  });
});
