/**
 * Goal: a dead letter whose order reached a final state without a replay (the janitor asked the
 * PSP, a late webhook arrived) stops asking an operator for anything: the janitor's pass marks
 * it RESOLVED with the order's state in its note, leaves the entries of unfinished orders OPEN,
 * and a resolved entry can be neither replayed nor discarded (FAILED_PRECONDITION).
 * Method: the real janitor and dead-letter functions on a migrated database of the real MariaDB,
 * orders written in the states each case needs.
 */
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  discardDeadLetter,
  findDeadLetter,
  listDeadLetters,
  recordDeadLetter,
  replayDeadLetter,
} from '../../src/admin/dead-letters.js';
import { FailedPreconditionError } from '../../src/domain/errors.js';
import { newId } from '../../src/domain/ids.js';
import { Janitor } from '../../src/jobs/janitor.js';
import { parseCommand } from '../../src/messaging/commands.js';
import { names } from '../../src/messaging/subjects.js';
import {
  insertPaymentOfOneOrder,
  openTestDatabase,
  type TestDatabase,
} from '../support/harness.js';

let database: TestDatabase;
/** The fixtures' command stream was created then (StreamInfo.created). */
const STREAM_CREATED_AT = '2026-01-01T00:00:00.000000000Z';
beforeAll(async () => {
  database = await openTestDatabase('dlresolve', { poolSize: 2 });
});
afterAll(async () => database?.close());

async function deadLetterOf(
  orderState: string,
  sequence: number,
  command: (orderId: string) => object = (orderId) => ({ type: 'ExecuteOrder', orderId }),
): Promise<string> {
  const orderId = newId('order');
  await insertPaymentOfOneOrder(database.db, {
    paymentId: newId('payment'),
    orderId,
    paymentState:
      orderState === 'SUCCEEDED'
        ? 'SUCCEEDED'
        : orderState === 'EXECUTING'
          ? 'EXECUTING'
          : 'FAILED',
    orderState,
    at: new Date(),
  });
  await recordDeadLetter(
    database.db,
    'TEST_DLQ',
    {
      streamCreatedAt: STREAM_CREATED_AT,
      streamSequence: sequence,
      orderId,
      subject: 'settle.test.cmd.execute',
      reason: 'RETRIES_EXHAUSTED',
      attempts: 6,
      lastError: 'the PSP was unavailable',
      payload: JSON.stringify(command(orderId)),
      deadLetteredAt: new Date().toISOString(),
    },
    new Date(),
  );
  const [entry] = await listDeadLetters(database.db, { orderIds: [orderId], limit: 1 });
  if (entry === undefined) throw new Error(`no dead letter for ${orderId}`);
  return entry.id;
}

/** A charge the PSP made (a PspResult SUCCEEDED), as its command's payload. */
const chargeOf = (orderId: string) => ({
  type: 'PspResult',
  orderId,
  eventId: `evt-${orderId}`,
  outcome: 'SUCCEEDED',
  pspReference: `psp-${orderId.slice(4)}`,
  amountMinor: '500',
  declineCode: null,
});

/** A janitor for which nothing is due (the orders are new, none stuck): it only resolves. */
function janitorOf(batchMax: number): Janitor {
  return new Janitor(
    database.db,
    names('dlresolve', 1),
    { orderExpiryMs: 3_600_000, stuckMs: 3_600_000, intervalMs: 60_000, batchMax, leaseMs: 1_000 },
    { now: () => new Date(), wakeRelay: () => undefined },
  );
}

describe('dead letters of orders that finished on their own', () => {
  it('are found behind a full page of entries kept open on purpose', async () => {
    const kept: string[] = [];
    for (let i = 0; i < 3; i += 1) {
      kept.push(await deadLetterOf('EXPIRED', 100 + i, chargeOf));
    }
    const moot = await deadLetterOf('EXPIRED', 103);
    // Pages of 3: the first is all charges kept open.
    const janitor = janitorOf(3);
    expect((await janitor.runOnce()).resolvedDeadLetters).toEqual([moot]);
    for (const id of kept) {
      expect(await findDeadLetter(database.db, id)).toMatchObject({ state: 'OPEN' });
    }
    // Later tests count what a pass resolves: these are done with.
    await sql`DELETE FROM dead_letter WHERE id IN (${sql.join([...kept, moot])})`.execute(
      database.db,
    );
  });

  it('are RESOLVED by the janitor; those of unfinished orders stay OPEN', async () => {
    const succeeded = await deadLetterOf('SUCCEEDED', 1);
    const expired = await deadLetterOf('EXPIRED', 2);
    const executing = await deadLetterOf('EXECUTING', 3);
    // A charge the PSP made for an order that then expired: money not booked. Only its replay
    // (the order flagged for review) tells an operator, so it stays OPEN.
    const charge = await deadLetterOf('EXPIRED', 4, chargeOf);
    const janitor = janitorOf(100);
    const pass = await janitor.runOnce();
    expect(pass.resolvedDeadLetters.sort()).toEqual([succeeded, expired].sort());
    expect(await findDeadLetter(database.db, succeeded)).toMatchObject({
      state: 'RESOLVED',
      resolutionNote: 'the order reached SUCCEEDED without a replay',
    });
    expect(await findDeadLetter(database.db, expired)).toMatchObject({
      state: 'RESOLVED',
      resolutionNote: 'the order reached EXPIRED without a replay',
    });
    expect(await findDeadLetter(database.db, executing)).toMatchObject({ state: 'OPEN' });
    const stored = await findDeadLetter(database.db, charge);
    expect(stored).toMatchObject({ state: 'OPEN' });
    // A well-formed command, so it is kept for what it is, not for failing to parse.
    expect(parseCommand(new TextEncoder().encode(stored?.payload ?? ''))?.type).toBe('PspResult');
    // A second pass finds nothing more to do.
    expect((await janitor.runOnce()).resolvedDeadLetters).toEqual([]);

    const deps = { db: database.db, wakeRelay: () => undefined, now: () => new Date() };
    await expect(replayDeadLetter(deps, succeeded, 'ops')).rejects.toThrow(
      new FailedPreconditionError(
        `dead letter ${succeeded} is resolved (the order reached SUCCEEDED without a replay); nothing to replay`,
      ),
    );
    await expect(discardDeadLetter(deps, succeeded, 'not needed any more', 'ops')).rejects.toThrow(
      FailedPreconditionError,
    );
  });
});
