/**
 * Goal: a registration the PSP refuses for good during a run here is asked once: the order fails
 * in that same turn and its held row goes with the FAILED write, so nothing is handed to
 * JetStream to ask the PSP again. And when a run here fails and its held outbox row is handed to
 * JetStream, a deadlock with
 * another writer of the outbox (the relay's pass) does not lose the hand-over: the row is still
 * released, with the attempt made here counted and due after the first backoff step, rather than
 * left held until its hold ends and relayed as if no attempt had been made.
 * Method: real MariaDB, migrated; a real deadlock. A transaction heavier than the hand-over's
 * UPDATE (it inserted rows first, so InnoDB picks the UPDATE as the victim) locks the row's
 * primary key; the UPDATE (by msg_id) takes the unique-key entry and waits for the primary key;
 * the transaction then asks for the unique-key entry, and the cycle is closed.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PaymentOrderActor, type OrderMessage } from '../../../src/actors/payment-order/actor.js';
import { LocalExecutor } from '../../../src/actors/payment-order/local-execute.js';
import { ActorRegistry } from '../../../src/actors/runtime/registry.js';
import { FailedPreconditionError } from '../../../src/domain/errors.js';
import { newId } from '../../../src/domain/ids.js';
import type { HandleOutcome } from '../../../src/messaging/command-consumer.js';
import { findPaymentOrder } from '../../../src/storage/repositories/payment-order.repository.js';
import { executeOrderMsgId, executeOrderPayload } from '../../../src/messaging/commands.js';
import type { Db } from '../../../src/storage/db.js';
import { outboxInsert } from '../../../src/storage/repositories/outbox.repository.js';
import type { PaymentOrder } from '../../../src/domain/payment-order.js';
import {
  count,
  insertPaymentOfOneOrder,
  openTestDatabase,
  uniqueSuffix,
  waitFor,
} from '../../support/harness.js';

const RETRY_DELAY_MS = 60_000;
/** For runs that are never refused for good: a dead letter would fail the test. */
const noDeadLetters = {
  commandSubject: () => 'settle.t.cmd.0',
  deadLetter: () => Promise.reject(new Error('no dead letter expected')),
};
const HOLD_MS = 600_000;

let db: Db;
let close: () => Promise<void>;
let databaseName: string;
beforeAll(async () => {
  let url: string;
  // One connection for the heavy transaction, one for the hand-over, one to watch them.
  ({ db, close, url } = await openTestDatabase('settle_local_exec_t', { poolSize: 3 }));
  databaseName = new URL(url).pathname.slice(1);
});
afterAll(async () => {
  await close();
});

/**
 * Statements of this database waiting for a row lock, by their text. InnoDB refreshes these
 * tables only when they were last read more than 0.1 s ago: poll them slower than that.
 */
async function waitingForLock(db: Db, like: string): Promise<number> {
  return count(
    db,
    sql`SELECT COUNT(*) AS n FROM information_schema.innodb_trx t
      JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
      WHERE t.trx_state = 'LOCK WAIT' AND p.db = ${databaseName} AND t.trx_query LIKE ${like}`,
  );
}

describe('handing a failed local run to JetStream', () => {
  it('releases the held row even when its UPDATE is a deadlock victim', async () => {
    const orderId = `ord_${uniqueSuffix()}`;
    const msgId = executeOrderMsgId(orderId);
    const createdAt = new Date();
    await db.executeQuery(
      outboxInsert(
        db,
        [
          {
            subject: 'settle.t.cmd.0',
            msgId,
            payload: executeOrderPayload(orderId, 0),
            availableAt: new Date(createdAt.getTime() + HOLD_MS),
          },
        ],
        createdAt,
      ),
    );
    const errors: unknown[] = [];
    const executor = new LocalExecutor(
      {
        db,
        // The PSP call failed: hand it over for a retry.
        send: () => Promise.resolve({ kind: 'retry', reason: 'PSP unavailable' }),
        ...noDeadLetters,
        wakeRelay: () => undefined,
        now: () => new Date(),
        onError: (error) => errors.push(error),
      },
      { holdMs: HOLD_MS, inFlightMax: 1, retryDelayMs: RETRY_DELAY_MS },
    );
    expect(executor.reserve(1, createdAt)).toBeDefined();

    await db.transaction().execute(async (trx) => {
      // Weight: InnoDB rolls back the lighter side of a deadlock.
      for (let i = 0; i < 20; i += 1) {
        await trx.executeQuery(
          outboxInsert(
            trx,
            [{ subject: 'settle.t.cmd.0', msgId: `filler:${orderId}:${i}`, payload: '{}' }],
            createdAt,
          ),
        );
      }
      const row = await trx
        .selectFrom('outbox')
        .select('id')
        .where('msg_id', '=', msgId)
        .executeTakeFirstOrThrow();
      // The primary key only (the relay's pass locks its rows by primary key too).
      await sql`SELECT id FROM outbox WHERE id = ${row.id} FOR UPDATE`.execute(trx);

      executor.run([{ id: orderId } as PaymentOrder]);
      await waitFor(async () => (await waitingForLock(db, '%update%outbox%')) === 1, {
        intervalMs: 250,
        what: 'the hand-over waiting for the primary key',
      });
      // Closes the cycle: the UPDATE holds the msg_id entry this asks for.
      await sql`SELECT id FROM outbox WHERE msg_id = ${msgId} FOR UPDATE`.execute(trx);
    });
    await executor.stop(10_000);

    expect(errors).toEqual([]);
    const row = await db
      .selectFrom('outbox')
      .select(['payload', 'available_at'])
      .where('msg_id', '=', msgId)
      .executeTakeFirstOrThrow();
    // The attempt made here is counted, and the retry is due after the first backoff step.
    expect(JSON.parse(row.payload)).toEqual({ type: 'ExecuteOrder', orderId, priorAttempts: 1 });
    expect(row.available_at.getTime()).toBeLessThan(createdAt.getTime() + 2 * RETRY_DELAY_MS);
  });
});

describe('a registration refused for good during a run here', () => {
  it('asks the PSP once, fails the order and deletes the held row with that write', async () => {
    const orderId = newId('order');
    const createdAt = new Date();
    await insertPaymentOfOneOrder(db, {
      paymentId: newId('payment'),
      orderId,
      paymentState: 'EXECUTING',
      orderState: 'EXECUTING',
      at: createdAt,
    });
    const msgId = executeOrderMsgId(orderId);
    await db.executeQuery(
      outboxInsert(
        db,
        [
          {
            subject: 'settle.t.cmd.0',
            msgId,
            payload: executeOrderPayload(orderId, 0),
            availableAt: new Date(createdAt.getTime() + HOLD_MS),
          },
        ],
        createdAt,
      ),
    );
    let registrations = 0;
    const unused = () => Promise.reject(new Error('not used by this test'));
    const registry = new ActorRegistry<OrderMessage, HandleOutcome>(
      'payment-order',
      (id) =>
        new PaymentOrderActor(id, {
          db,
          psp: {
            register: () => {
              registrations += 1;
              return Promise.reject(new FailedPreconditionError('the PSP refused: bad request'));
            },
            cancel: unused,
            getStatus: unused,
          },
          notificationUrl: 'http://127.0.0.1:1/webhooks/psp',
          now: () => new Date(),
          onTransition: () => undefined,
        }),
      { mailboxCapacity: 4, idleMsMax: 60_000, actorsMax: 10 },
    );
    const handovers: unknown[] = [];
    const executor = new LocalExecutor(
      {
        db,
        send: (id, message) => registry.send(id, message),
        ...noDeadLetters,
        wakeRelay: () => undefined,
        now: () => new Date(),
        onHandover: (handover) => handovers.push(handover),
      },
      { holdMs: HOLD_MS, inFlightMax: 1, retryDelayMs: RETRY_DELAY_MS },
    );
    const order = await findPaymentOrder(db, orderId);
    expect(executor.reserve(1, createdAt)).toBeDefined();
    executor.run(order === undefined ? [] : [order]);
    await executor.stop(10_000);
    registry.stop();

    expect(registrations).toBe(1);
    expect(handovers).toEqual([]);
    expect(executor.counts).toEqual({ deletedWithTransition: 1, handedOver: 0 });
    expect(await findPaymentOrder(db, orderId)).toMatchObject({
      state: 'FAILED',
      failureReason: 'PSP_REGISTRATION_REFUSED',
    });
    const rows = await db.selectFrom('outbox').select('id').where('msg_id', '=', msgId).execute();
    expect(rows).toEqual([]);
  });
});
