/**
 * Goal: the relay takes only due outbox rows: a row held back (a new order's ExecuteOrder, run by
 * its own node first) is neither returned nor counted as lag before its time, and is after it; a
 * row inserted without `available_at`, as a node of the previous version does during a rolling
 * upgrade, is due at once. Method: real MariaDB, migrated; the relay's own lock statement.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/storage/db.js';
import {
  outboxBatchLock,
  outboxInsert,
  outboxLag,
  type OutboxRow,
} from '../../src/storage/repositories/outbox.repository.js';
import { openTestDatabase } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_outbox_t', { poolSize: 2 }));
});
afterAll(async () => {
  await close();
});

/** The msg ids the relay would lock at `now` (in a transaction it rolls back). */
async function dueAt(now: Date): Promise<string[]> {
  return db.transaction().execute(async (trx) => {
    const result = await trx.executeQuery<OutboxRow>(outboxBatchLock(trx, 100, now));
    return result.rows.map((row) => row.msg_id);
  });
}

describe('outbox due times', () => {
  it('holds a row back until its time, and counts only due rows as lag', async () => {
    const now = new Date();
    const heldUntil = new Date(now.getTime() + 10_000);
    await db.executeQuery(
      outboxInsert(
        db,
        [
          { subject: 's.1', msgId: 'due-1', payload: '{}' },
          { subject: 's.1', msgId: 'held-1', payload: '{}', availableAt: heldUntil },
        ],
        now,
      ),
    );
    expect(await dueAt(now)).toEqual(['due-1']);
    expect((await outboxLag(db, now)).pending).toBe(1);
    expect(await dueAt(heldUntil)).toEqual(['due-1', 'held-1']);
    expect((await outboxLag(db, heldUntil)).pending).toBe(2);
    // Counted up to a bound; the oldest row's age is still the true one.
    const capped = await outboxLag(db, heldUntil, 1);
    expect(capped).toEqual({ pending: 1, oldestAgeMs: heldUntil.getTime() - now.getTime() });
    await db.deleteFrom('outbox').execute();
  });

  it('takes a row written without available_at (a previous-version node) at once', async () => {
    await sql`INSERT INTO outbox (subject, msg_id, payload, created_at)
      VALUES ('s.1', 'old-node-1', '{}', NOW(3))`.execute(db);
    // The database's clock set the default; allow it a little skew against ours.
    expect(await dueAt(new Date(Date.now() + 1_000))).toEqual(['old-node-1']);
    await db.deleteFrom('outbox').execute();
  });
});
