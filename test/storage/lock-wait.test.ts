/**
 * Goal: a row held locked elsewhere costs a transition a bounded wait, never minutes: every
 * connection waits at most its `innodb_lock_wait_timeout` (the server's default is 50 s), a
 * batch that met such a lock lets its other orders through at once instead of waiting again
 * with them, the orders behind the lock fail as UNAVAILABLE (retryable) once their retries are
 * spent, and nothing of theirs is half-written.
 * Method: the real TransitionBatcher on a migrated database of the real MariaDB, its pool at a
 * 1 s lock wait; a second connection holds the hot seller's wallet row FOR UPDATE while a batch
 * of three hot orders and one cold order succeeds.
 */
import { createConnection, type Connection } from 'mysql2/promise';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { transition } from '../../src/actors/payment-order/machine.js';
import {
  TransitionBatcher,
  type TransitionWrite,
} from '../../src/actors/payment-order/persistence.js';
import { UnavailableError } from '../../src/domain/errors.js';
import { newId } from '../../src/domain/ids.js';
import { toGrpcStatus } from '../../src/grpc/status.js';
import {
  LOCK_WAIT_TIMEOUT_S_DEFAULT,
  openDatabase,
  parseMysqlUrl,
  serverAddress,
} from '../../src/storage/db.js';
import { findPaymentOrder } from '../../src/storage/repositories/payment-order.repository.js';
import type { Database } from '../../src/storage/schema.js';
import { status } from '@grpc/grpc-js';
import {
  count,
  insertPaymentOfOneOrder,
  openTestDatabase,
  type TestDatabase,
} from '../support/harness.js';

let database: TestDatabase;
let writers: ReturnType<typeof openDatabase<Database>>;
let holder: Connection;
beforeAll(async () => {
  database = await openTestDatabase('lockwait', { poolSize: 2 });
  writers = openDatabase(database.url, {
    poolSize: 4,
    multipleStatements: true,
    lockWaitTimeoutS: 1,
  });
  const target = parseMysqlUrl(database.url);
  holder = await createConnection({ ...serverAddress(target), database: target.database });
});
afterAll(async () => {
  await holder?.end().catch(() => undefined);
  await writers?.close();
  await database?.close();
});

async function succeededWrite(sellerId: string): Promise<TransitionWrite> {
  const orderId = newId('order');
  await insertPaymentOfOneOrder(database.db, {
    paymentId: newId('payment'),
    orderId,
    paymentState: 'EXECUTING',
    orderState: 'EXECUTING',
    at: new Date(Date.now() - 1_000),
    sellerId,
  });
  const previous = await findPaymentOrder(database.db, orderId);
  if (previous === undefined) throw new Error(`order ${orderId} vanished`);
  const event = {
    type: 'PspSucceeded',
    eventId: `evt-${orderId}`,
    pspReference: `psp-${orderId.slice(4)}`,
    amountMinor: previous.amountMinor,
  } as const;
  const now = new Date();
  const moved = transition(previous, event, now);
  if (!moved.ok) throw new Error(`PspSucceeded is illegal for ${orderId}`);
  return {
    previous,
    next: moved.order,
    event,
    effects: moved.effects,
    now,
    receipt: { source: 'psp', eventId: event.eventId },
  };
}

describe('a row locked elsewhere', () => {
  it('gives every connection the configured lock wait, not the server default', async () => {
    const read = sql<{ t: string }>`SELECT @@SESSION.innodb_lock_wait_timeout AS t`;
    expect(Number((await read.execute(writers.db)).rows[0]?.t)).toBe(1);
    expect(Number((await read.execute(database.db)).rows[0]?.t)).toBe(LOCK_WAIT_TIMEOUT_S_DEFAULT);
  });

  it('lets a batch mate through at once, and fails the locked orders as UNAVAILABLE, untouched', async () => {
    const hot = [
      await succeededWrite('seller-hot'),
      await succeededWrite('seller-hot'),
      await succeededWrite('seller-hot'),
    ];
    const cold = await succeededWrite('seller-cold');
    await sql`INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
      VALUES ('seller-hot', 'USD', 0, 0, NOW(3))`.execute(database.db);
    await holder.query('START TRANSACTION');
    await holder.query("SELECT * FROM wallet WHERE seller_id = 'seller-hot' FOR UPDATE");
    // One batch of all four: they are submitted together into an idle batcher of one slot.
    const batcher = new TransitionBatcher(writers.db, {
      batchMax: 8,
      inFlightMax: 1,
      queueMax: 100,
    });
    const started = Date.now();
    const settled = [...hot, cold].map((write) =>
      batcher.persist(write).then(
        (written) => ({ written, ms: Date.now() - started }),
        (error: unknown) => ({ error, ms: Date.now() - started }),
      ),
    );
    try {
      const coldOutcome = await settled[3];
      expect(coldOutcome).toMatchObject({ written: true });
      // One lock wait (the batch's packet), then the cold order alone: before, it waited out
      // the batch's four statement-by-statement tries as well.
      expect(coldOutcome?.ms).toBeLessThan(3_000);
      const hotOutcomes = await Promise.all(settled.slice(0, 3));
      for (const outcome of hotOutcomes) {
        expect('error' in outcome && outcome.error).toBeInstanceOf(UnavailableError);
        // The batch's packet, each alone in one packet, then one retry: four waits of 1 s.
        expect(outcome.ms).toBeLessThan(8_000);
      }
      const hotError = (hotOutcomes[0] as { error: unknown }).error;
      expect(toGrpcStatus(hotError).code).toBe(status.UNAVAILABLE);
    } finally {
      await holder.query('ROLLBACK');
      await batcher.stop(1_000);
    }
    for (const write of hot) {
      const order = await findPaymentOrder(database.db, write.previous.id);
      expect(order).toMatchObject({ state: 'EXECUTING', version: write.previous.version });
    }
    const hotIds = hot.map((write) => write.previous.id);
    expect(
      await count(
        database.db,
        sql`SELECT COUNT(*) AS n FROM ledger_transaction WHERE order_id IN (${sql.join(hotIds)})`,
      ),
    ).toBe(0);
    expect(await findPaymentOrder(database.db, cold.previous.id)).toMatchObject({
      state: 'SUCCEEDED',
    });
  });

  it('maps a raw lock wait timeout that reached an RPC to UNAVAILABLE, never INTERNAL', () => {
    const raw = Object.assign(new Error('Lock wait timeout exceeded; try restarting transaction'), {
      errno: 1205,
      code: 'ER_LOCK_WAIT_TIMEOUT',
    });
    const mapped = toGrpcStatus(raw, 'req-1', { log: () => undefined });
    expect(mapped.code).toBe(status.UNAVAILABLE);
    expect(mapped.details).toMatch(/the database is busy/);
  });
});
