/**
 * Goal: a janitor pass holds locks only on the orders it claims. Its claim walks the due orders
 * in creation order; the ones it passes over (leased by another pass, so not claimed) must stay
 * free for their own transitions while the pass runs, or a backlog of stuck orders would make
 * every pass stall the orders that are being resolved. Method: a migrated database of its own;
 * a pass held open inside its transaction (another connection holds the outbox's insert gap, so
 * the pass waits at its outbox INSERT); meanwhile a third connection updates an order the pass
 * passed over, with a 2 s lock wait timeout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import { Janitor } from '../../src/jobs/janitor.js';
import { names } from '../../src/messaging/subjects.js';
import type { Db } from '../../src/storage/db.js';
import { insertPaymentOfOneOrder, openTestDatabase, waitFor } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_janitor_locks', { poolSize: 4 }));
});
afterAll(async () => close?.());

const HOUR_MS = 3_600_000;

describe('janitor claim', () => {
  it('does not lock the due orders it passes over while its pass is open', async () => {
    const now = new Date();
    const createdAt = new Date(now.getTime() - HOUR_MS);
    // Two orders due for expiry. The one created first is leased by another pass, so this pass
    // walks over it (in creation order) and claims the second one.
    const leased = 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5L01';
    const free = 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5L02';
    for (const [paymentId, orderId, at] of [
      ['pay_01JD2Q7Z8X9Y0A1B2C3D4E5L01', leased, createdAt],
      ['pay_01JD2Q7Z8X9Y0A1B2C3D4E5L02', free, new Date(createdAt.getTime() + 1_000)],
    ] as const) {
      await insertPaymentOfOneOrder(db, {
        paymentId,
        orderId,
        paymentState: 'EXECUTING',
        orderState: 'EXECUTING',
        at,
      });
    }
    await sql`UPDATE payment_order SET janitor_lease_until = ${new Date(now.getTime() + HOUR_MS)},
      janitor_owner = 'another-pass' WHERE id = ${leased}`.execute(db);

    const janitor = new Janitor(
      db,
      names('jlocks', 1),
      {
        orderExpiryMs: 15 * 60_000,
        stuckMs: 2 * HOUR_MS,
        intervalMs: 60_000,
        batchMax: 10,
        leaseMs: 60_000,
      },
      { now: () => now, wakeRelay: () => {} },
    );

    // Hold the outbox's insert gap from another connection, so the pass stops at its INSERT
    // with its claim UPDATE done and its transaction open.
    let releaseGap!: () => void;
    const gapReleased = new Promise<void>((resolve) => (releaseGap = resolve));
    let gapHeld!: () => void;
    const gapIsHeld = new Promise<void>((resolve) => (gapHeld = resolve));
    const holder = db.connection().execute(async (connection) => {
      await sql`SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ`.execute(connection);
      await sql`START TRANSACTION`.execute(connection);
      await sql`SELECT id FROM outbox WHERE id > 0 FOR UPDATE`.execute(connection);
      gapHeld();
      await gapReleased;
      await sql`ROLLBACK`.execute(connection);
    });
    await gapIsHeld;
    const pass = janitor.runOnce();
    try {
      // The pass has claimed (its UPDATE is done) once the outbox INSERT waits for the gap.
      await waitFor(
        async () => {
          const { rows } = await sql<{ n: string }>`
            SELECT COUNT(*) AS n FROM information_schema.processlist
            WHERE db = DATABASE() AND command = 'Query'
              AND info LIKE 'insert into \`outbox\`%'`.execute(db);
          return Number(rows[0]?.n) > 0;
        },
        { what: 'the janitor pass to wait at its outbox INSERT', timeoutMs: 10_000 },
      );
      // The order the pass walked over takes a transition meanwhile, without waiting for it.
      const updated = await db.connection().execute(async (connection) => {
        await sql`SET SESSION innodb_lock_wait_timeout = 2`.execute(connection);
        try {
          const result = await sql`UPDATE payment_order SET version = version + 1
            WHERE id = ${leased}`.execute(connection);
          return Number(result.numAffectedRows);
        } finally {
          await sql`SET SESSION innodb_lock_wait_timeout = DEFAULT`.execute(connection);
        }
      });
      expect(updated).toBe(1);
    } finally {
      releaseGap();
      await holder;
    }
    expect(await pass).toEqual({ expired: [free], checked: [], resolvedDeadLetters: [] });
  });
});
