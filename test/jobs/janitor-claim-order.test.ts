/**
 * Goal: a janitor pass claims the due orders that have waited longest, across both unfinished
 * states (NOT_STARTED and EXECUTING, which it reads one state at a time, each in its index's
 * order), skips the ones another pass has leased, and takes at most batchMax. Method: a migrated
 * database of its own with orders of both states written a second apart; one pass with a batch
 * smaller than what is due; the claimed ids and the lease columns are read back. And an order past
 * its expiry is expired even when it is the status check's claim that finds it (more orders due
 * for expiry than a batch, after a PSP outage): a check would register one that never reached the
 * PSP, handing out a checkout past the order's deadline. Read back from the outbox. Nor does a
 * status check's lease put off the order's expiry: passes at chosen times, leases read back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { Janitor } from '../../src/jobs/janitor.js';
import { names } from '../../src/messaging/subjects.js';
import type { Db } from '../../src/storage/db.js';
import { insertPaymentOfOneOrder, openTestDatabase } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_janitor_order', { poolSize: 2 }));
});
afterAll(async () => close?.());

const HOUR_MS = 3_600_000;

async function insertOrder(suffix: string, state: 'NOT_STARTED' | 'EXECUTING', at: Date) {
  const orderId = `ord_01JD2Q7Z8X9Y0A1B2C3D4E5${suffix}`;
  await insertPaymentOfOneOrder(db, {
    paymentId: `pay_01JD2Q7Z8X9Y0A1B2C3D4E5${suffix}`,
    orderId,
    paymentState: 'EXECUTING',
    orderState: state,
    at,
    attempts: 0,
  });
  return orderId;
}

describe('janitor claim order', () => {
  it('claims the longest-waiting due orders of both states first, skips leased ones, takes batchMax', async () => {
    const now = new Date();
    const first = now.getTime() - HOUR_MS;
    // Due for expiry, a second apart; the oldest is leased elsewhere. The pass reads
    // NOT_STARTED first, so only merging by age takes the two older EXECUTING orders first.
    const leased = await insertOrder('O01', 'EXECUTING', new Date(first));
    const b = await insertOrder('O02', 'EXECUTING', new Date(first + 1_000));
    const c = await insertOrder('O03', 'EXECUTING', new Date(first + 2_000));
    const d = await insertOrder('O04', 'NOT_STARTED', new Date(first + 3_000));
    const newest = await insertOrder('O05', 'NOT_STARTED', new Date(first + 4_000));
    await sql`UPDATE payment_order SET janitor_lease_until = ${new Date(now.getTime() + HOUR_MS)},
      janitor_owner = 'another-pass' WHERE id = ${leased}`.execute(db);

    const janitor = new Janitor(
      db,
      names('jorder', 1),
      {
        orderExpiryMs: 15 * 60_000,
        stuckMs: 2 * HOUR_MS, // nothing is due for a status check
        intervalMs: 60_000,
        batchMax: 3,
        leaseMs: 60_000,
      },
      { now: () => now, wakeRelay: () => {} },
    );
    const pass = await janitor.runOnce();
    expect([...pass.expired].sort()).toEqual([b, c, d].sort());
    expect(pass.checked).toEqual([]);

    const { rows } = await sql<{ id: string; janitor_owner: string | null }>`
      SELECT id, janitor_owner FROM payment_order ORDER BY created_at`.execute(db);
    const owners = Object.fromEntries(rows.map((row) => [row.id, row.janitor_owner]));
    expect(owners[leased]).toBe('another-pass');
    expect(owners[newest]).toBeNull();
    for (const id of [b, c, d]) expect(owners[id]).toMatch(/:x$/);

    // The next pass takes what is left: the newest.
    const next = await janitor.runOnce();
    expect(next.expired).toEqual([newest]);
  });

  it('expires an order past its expiry that the status check finds, rather than checking it', async () => {
    // Only this case's orders are unfinished.
    await sql`UPDATE payment_order SET state = 'FAILED'`.execute(db);
    const now = new Date();
    const older = await insertOrder('X01', 'EXECUTING', new Date(now.getTime() - HOUR_MS));
    const newer = await insertOrder('X02', 'EXECUTING', new Date(now.getTime() - HOUR_MS + 1_000));
    const janitor = new Janitor(
      db,
      names('jorder', 1),
      {
        orderExpiryMs: 15 * 60_000,
        stuckMs: 60_000, // both are quiet long enough for a status check too
        intervalMs: 60_000,
        batchMax: 1, // the expiry's claim takes one of the two
        leaseMs: 60_000,
      },
      { now: () => now, wakeRelay: () => {} },
    );
    const pass = await janitor.runOnce();
    expect([...pass.expired].sort()).toEqual([older, newer].sort());
    expect(pass.checked).toEqual([]);
    const { rows } = await sql<{ payload: string }>`
      SELECT payload FROM outbox WHERE payload LIKE ${'%"orderId":"ord_01JD2Q7Z8X9Y0A1B2C3D4E5X0%'}`.execute(
      db,
    );
    expect(rows.map((row) => JSON.parse(row.payload) as unknown)).toEqual(
      expect.arrayContaining([
        { type: 'ExpireOrder', orderId: older },
        { type: 'ExpireOrder', orderId: newer },
      ]),
    );
    expect(rows).toHaveLength(2);
  });

  it("expires an unpaid order at its deadline even while a status check's lease runs", async () => {
    await sql`UPDATE payment_order SET state = 'FAILED'`.execute(db);
    const start = Date.now();
    const expiryMs = 15 * 60_000;
    const createdAt = new Date(start - 10 * 60_000);
    const orderId = await insertOrder('L01', 'EXECUTING', createdAt);
    let nowMs = start;
    const janitor = new Janitor(
      db,
      names('jorder', 1),
      {
        orderExpiryMs: expiryMs,
        stuckMs: 60_000,
        intervalMs: 60_000,
        batchMax: 10,
        leaseMs: 60 * 60_000, // far beyond the order's deadline
      },
      { now: () => new Date(nowMs), wakeRelay: () => {} },
    );
    expect(await janitor.runOnce()).toMatchObject({ expired: [], checked: [orderId] });
    const { rows } = await sql<{ lease: Date }>`
      SELECT janitor_lease_until AS lease FROM payment_order WHERE id = ${orderId}`.execute(db);
    expect(rows[0]?.lease.getTime()).toBe(createdAt.getTime() + expiryMs);

    // Just past the deadline, well within what the check's lease would have been.
    nowMs = createdAt.getTime() + expiryMs + 1_000;
    expect(await janitor.runOnce()).toMatchObject({ expired: [orderId], checked: [] });
  });
});
