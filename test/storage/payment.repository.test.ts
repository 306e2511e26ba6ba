/**
 * Goal: idempotency keys behave as promised at the storage level: a key is claimed once, a
 * concurrent claim sees it in flight, a dead owner's key is taken over after its lease, and the
 * purge job removes only keys older than the TTL (after which the key may be used again).
 * Method: the repository functions against a fresh, migrated MariaDB database.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/storage/db.js';
import {
  claimIdempotencyKey,
  purgeIdempotencyKeys,
} from '../../src/storage/repositories/payment.repository.js';
import { openTestDatabase } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_idem_t', { poolSize: 2 }));
});
afterAll(async () => {
  await close?.();
});

const key = (requestId: string, now: Date, leaseMs = 30_000) => ({
  buyerId: 'b1',
  requestId,
  requestHash: 'h'.repeat(64),
  now,
  leaseMs,
});

describe('idempotency keys', () => {
  it('claims once; a concurrent claim sees the key in flight', async () => {
    const now = new Date();
    // Two claims at once, on two pooled connections: exactly one inserts the key.
    const claims = await Promise.all([
      claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000001', now)),
      claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000001', now)),
    ]);
    expect(claims.map((claim) => claim.kind).sort()).toEqual(['claimed', 'in-flight']);
  });

  it('takes over a key whose owner died once its lease ran out', async () => {
    const then = new Date(Date.now() - 60_000);
    expect(
      (await claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000002', then, 1_000)))
        .kind,
    ).toBe('claimed');
    expect(
      (await claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000002', new Date()))).kind,
    ).toBe('claimed');
  });

  it('purges only keys older than the cutoff, after which the key can be claimed again', async () => {
    const old = new Date(Date.now() - 25 * 3_600_000);
    await claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000003', old));
    await claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000004', new Date()));
    const purged = await purgeIdempotencyKeys(db, new Date(Date.now() - 24 * 3_600_000), 100);
    expect(purged).toBe(1);
    expect(
      (await claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000003', new Date()))).kind,
    ).toBe('claimed');
    expect(
      (await claimIdempotencyKey(db, key('00000000-0000-4000-8000-000000000004', new Date()))).kind,
    ).toBe('in-flight');
  });
});
