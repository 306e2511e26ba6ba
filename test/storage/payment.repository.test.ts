/**
 * Goal: idempotency keys behave as promised at the storage level: a key is inserted with its
 * payment and a concurrent insert of the same key fails as a duplicate once the first commits
 * (and goes through if the first rolled back); an IN_FLIGHT key left by an earlier version is
 * deleted only once its lease ran out, a COMPLETED one never; the purge job removes only keys
 * older than the TTL (after which the key may be used again). Method: the repository functions
 * against a fresh, migrated MariaDB database, two pooled connections for the races.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/storage/db.js';
import { isDuplicateKey } from '../../src/storage/errors.js';
import { commitInOneTrip, guard } from '../../src/storage/one-trip.js';
import {
  deleteAbandonedKey,
  findIdempotencyKey,
  idempotencyKeyInserts,
  purgeIdempotencyKeys,
} from '../../src/storage/repositories/payment.repository.js';
import { openTestDatabase } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_idem_t', {
    poolSize: 2,
    multipleStatements: true,
  }));
});
afterAll(async () => {
  await close?.();
});

const key = (requestId: string, now: Date, paymentId = 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G') => ({
  buyerId: 'b1',
  requestId,
  requestHash: 'h'.repeat(64),
  paymentId,
  now,
});
const insert = (requestId: string, now: Date, paymentId?: string) =>
  commitInOneTrip(db, [idempotencyKeyInserts(db, [key(requestId, now, paymentId)])]);
const inFlight = (requestId: string, leaseUntil: Date) =>
  db
    .insertInto('idempotency_key')
    .values({
      buyer_id: 'b1',
      request_id: requestId,
      request_hash: 'h'.repeat(64),
      state: 'IN_FLIGHT',
      payment_id: null,
      lease_until: leaseUntil,
      created_at: new Date(),
    })
    .execute();

describe('idempotency keys', () => {
  it('lets exactly one of two concurrent inserts of a key commit; the other is a duplicate', async () => {
    const id = '00000000-0000-4000-8000-000000000001';
    const outcomes = await Promise.allSettled([
      insert(id, new Date(), 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F61'),
      insert(id, new Date(), 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F62'),
    ]);
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
    const failed = outcomes.filter((o) => o.status === 'rejected');
    expect(failed).toHaveLength(1);
    expect(isDuplicateKey((failed[0] as PromiseRejectedResult).reason)).toBe(true);
    expect(await findIdempotencyKey(db, { buyerId: 'b1', requestId: id })).toMatchObject({
      state: 'COMPLETED',
      requestHash: 'h'.repeat(64),
    });
  });

  it('lets the second insert through when the first rolled back', async () => {
    const id = '00000000-0000-4000-8000-000000000005';
    // The first packet writes the key, then a guard trips: rolled back, the key is free again.
    const first = await commitInOneTrip(db, [
      idempotencyKeyInserts(db, [key(id, new Date())]),
      guard('rowCount', { sql: '1 = 1', parameters: [] }),
    ]);
    expect(first.committed).toBe(false);
    expect(await findIdempotencyKey(db, { buyerId: 'b1', requestId: id })).toBeUndefined();
    expect((await insert(id, new Date())).committed).toBe(true);
  });

  it('deletes an abandoned IN_FLIGHT key only after its lease, and never a COMPLETED one', async () => {
    const now = new Date();
    const alive = '00000000-0000-4000-8000-000000000002';
    const abandoned = '00000000-0000-4000-8000-000000000006';
    const done = '00000000-0000-4000-8000-000000000007';
    await inFlight(alive, new Date(now.getTime() + 5_000));
    await inFlight(abandoned, new Date(now.getTime() - 5_000));
    await insert(done, new Date(now.getTime() - 60_000));
    expect(await deleteAbandonedKey(db, { buyerId: 'b1', requestId: alive }, now)).toBe(false);
    expect(await deleteAbandonedKey(db, { buyerId: 'b1', requestId: abandoned }, now)).toBe(true);
    expect(await deleteAbandonedKey(db, { buyerId: 'b1', requestId: done }, now)).toBe(false);
    expect((await findIdempotencyKey(db, { buyerId: 'b1', requestId: alive }))?.state).toBe(
      'IN_FLIGHT',
    );
    expect(await findIdempotencyKey(db, { buyerId: 'b1', requestId: abandoned })).toBeUndefined();
    expect((await findIdempotencyKey(db, { buyerId: 'b1', requestId: done }))?.state).toBe(
      'COMPLETED',
    );
  });

  it('purges only keys older than the cutoff, after which the key can be used again', async () => {
    const old = new Date(Date.now() - 25 * 3_600_000);
    await insert('00000000-0000-4000-8000-000000000003', old);
    await insert('00000000-0000-4000-8000-000000000004', new Date());
    const purged = await purgeIdempotencyKeys(db, new Date(Date.now() - 24 * 3_600_000));
    expect(purged).toBe(1);
    expect((await insert('00000000-0000-4000-8000-000000000003', new Date())).committed).toBe(true);
    const again = await insert('00000000-0000-4000-8000-000000000004', new Date()).catch(
      (error: unknown) => error,
    );
    expect(isDuplicateKey(again)).toBe(true);
  });

  it('keeps a key past the cutoff while its payment is open, and purges it once it is final', async () => {
    // Without the key a retry of the request would create, and charge, a second payment while
    // the first can still be paid (an ORDER_EXPIRY_MS longer than IDEMPOTENCY_TTL_MS, a stuck
    // order).
    const old = new Date(Date.now() - 25 * 3_600_000);
    const cutoff = new Date(Date.now() - 24 * 3_600_000);
    const open = 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F7A';
    const final = 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F7B';
    for (const [id, state] of [
      [open, 'EXECUTING'],
      [final, 'SUCCEEDED'],
    ] as const) {
      await db
        .insertInto('payment')
        .values({
          id,
          buyer_id: 'b1',
          request_id: '00000000-0000-4000-8000-0000000000aa',
          currency: 'USD',
          amount_minor: 100n,
          state,
          failure_reason: null,
          orders_total: 1,
          orders_succeeded: 0,
          orders_failed: 0,
          version: 0n,
          created_at: old,
          updated_at: old,
        })
        .execute();
    }
    await insert('00000000-0000-4000-8000-0000000002a5', old, open);
    await insert('00000000-0000-4000-8000-0000000002a6', old, final);
    expect(await purgeIdempotencyKeys(db, cutoff)).toBe(1);
    expect(
      await findIdempotencyKey(db, {
        buyerId: 'b1',
        requestId: '00000000-0000-4000-8000-0000000002a5',
      }),
    ).toMatchObject({ paymentId: open });
    await db.updateTable('payment').set({ state: 'FAILED' }).where('id', '=', open).execute();
    expect(await purgeIdempotencyKeys(db, cutoff)).toBe(1);
    expect(
      await findIdempotencyKey(db, {
        buyerId: 'b1',
        requestId: '00000000-0000-4000-8000-0000000002a5',
      }),
    ).toBeUndefined();
  });

  it('purges in several bounded statements a pass, and leaves the rest for the next pass', async () => {
    const old = new Date(Date.now() - 25 * 3_600_000);
    for (let i = 0; i < 7; i += 1) {
      await insert(`00000000-0000-4000-8000-0000000001${String(i).padStart(2, '0')}`, old);
    }
    const cutoff = new Date(Date.now() - 24 * 3_600_000);
    const bounds = { rowsPerStatement: 3, statementsMax: 2 };
    expect(await purgeIdempotencyKeys(db, cutoff, bounds)).toBe(6);
    expect(await purgeIdempotencyKeys(db, cutoff, bounds)).toBe(1);
    expect(await purgeIdempotencyKeys(db, cutoff, bounds)).toBe(0);
  });
});
