/**
 * Goal: GroupCommit's batching in itself, apart from what the batches write (the e2e group-commit
 * tests write real transitions through it), and the replay of a failed batch. Method: units
 * submitted a few milliseconds apart, as at moderate load, to a GroupCommit whose writers record
 * the batches they were given; for the replay, writers that count how many run at once, and one
 * replay on a real MariaDB pool as small as the writers' pool.
 */
import { sql } from 'kysely';
import { afterAll, describe, expect, it } from 'vitest';
import { ResourceExhaustedError } from '../../src/domain/errors.js';
import { GroupCommit, REPLAY_IN_FLIGHT_MAX_DEFAULT } from '../../src/storage/group-commit.js';
import { toUnavailable } from '../../src/storage/transaction.js';
import { openTestDatabase } from '../support/harness.js';

function recording(lingerMs: number | undefined) {
  const batches: number[][] = [];
  const group = new GroupCommit<number, number>({
    name: 'numbers',
    batchMax: 100,
    inFlightMax: 4,
    queueMax: 1_000,
    ...(lingerMs !== undefined && { lingerMs }),
    writeOne: async (unit) => {
      batches.push([unit]);
      return unit * 10;
    },
    writeBatch: async (units) => {
      batches.push([...units]);
      return units.map((unit) => unit * 10);
    },
  });
  return { group, batches };
}

/** Submits 1..count, `gapMs` apart; answers every unit's result. */
async function trickle(group: GroupCommit<number, number>, count: number, gapMs: number) {
  const answers: Promise<number>[] = [];
  for (let unit = 1; unit <= count; unit += 1) {
    answers.push(group.submit(unit));
    await new Promise((resolve) => setTimeout(resolve, gapMs));
  }
  return Promise.all(answers);
}

describe('GroupCommit', () => {
  it('sends a unit that finds a free slot at once, alone, without a linger', async () => {
    const { group, batches } = recording(undefined);
    expect(await trickle(group, 4, 5)).toEqual([10, 20, 30, 40]);
    expect(batches).toEqual([[1], [2], [3], [4]]);
  });

  it('with a linger, holds the first unit that long and sends those that came meanwhile with it', async () => {
    const { group, batches } = recording(200);
    const started = performance.now();
    expect(await trickle(group, 4, 5)).toEqual([10, 20, 30, 40]);
    expect(performance.now() - started).toBeGreaterThanOrEqual(195);
    expect(batches).toEqual([[1, 2, 3, 4]]);
  });

  it('stop() waits for units still lingering', async () => {
    const { group, batches } = recording(100);
    const answer = group.submit(7);
    await group.stop(5_000);
    expect(batches).toEqual([[7]]);
    expect(await answer).toBe(70);
  });
});

/** A row locked elsewhere for the whole wait, which batches rethrow so each unit goes alone. */
function lockWaitTimeout(): Error {
  return Object.assign(new Error('Lock wait timeout exceeded; try restarting transaction'), {
    errno: 1205,
  });
}

/** A GroupCommit whose batches all fail and whose `writeOne` counts how many run at once. */
function failingBatches(options: {
  replayInFlightMax?: number;
  writeOne: (unit: number) => Promise<string>;
}) {
  const counts = { running: 0, runningMax: 0, writes: new Map<number, number>() };
  const group = new GroupCommit<number, string>({
    name: 'numbers',
    batchMax: 256,
    inFlightMax: 1,
    queueMax: 10_000,
    ...(options.replayInFlightMax !== undefined && {
      replayInFlightMax: options.replayInFlightMax,
    }),
    writeBatch: () => Promise.reject(lockWaitTimeout()),
    writeOne: async (unit) => {
      counts.running += 1;
      counts.runningMax = Math.max(counts.runningMax, counts.running);
      counts.writes.set(unit, (counts.writes.get(unit) ?? 0) + 1);
      try {
        return await options.writeOne(unit);
      } finally {
        counts.running -= 1;
      }
    },
  });
  return { group, counts };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('the replay of a failed batch', () => {
  it('writes a few units at a time, not the whole batch at once', async () => {
    const { group, counts } = failingBatches({
      writeOne: (unit) => sleep(2).then(() => `${unit}`),
    });
    const units = Array.from({ length: 200 }, (_, i) => i);
    expect(await Promise.all(units.map(group.submit))).toEqual(units.map(String));
    expect(counts.runningMax).toBe(REPLAY_IN_FLIGHT_MAX_DEFAULT);
    expect([...counts.writes.values()].every((n) => n === 1)).toBe(true);
  });

  it('takes its bound from replayInFlightMax', async () => {
    const { group, counts } = failingBatches({
      replayInFlightMax: 2,
      writeOne: (unit) => sleep(1).then(() => `${unit}`),
    });
    await Promise.all(Array.from({ length: 50 }, (_, i) => group.submit(i)));
    expect(counts.runningMax).toBe(2);
  });

  it('answers every unit once, each with its own outcome, even when writeOne throws at once', async () => {
    const { group, counts } = failingBatches({
      writeOne: (unit) => {
        if (unit === 3) throw new Error('unit 3 thrown'); // not even a rejected promise
        if (unit % 10 === 7) return Promise.reject(new Error(`unit ${unit} refused`));
        return sleep(1).then(() => `${unit}`);
      },
    });
    const results = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => group.submit(i)));
    results.forEach((result, unit) => {
      if (unit === 3) expect(result).toMatchObject({ status: 'rejected' });
      else if (unit % 10 === 7) {
        expect(result).toEqual({ status: 'rejected', reason: new Error(`unit ${unit} refused`) });
      } else expect(result).toEqual({ status: 'fulfilled', value: `${unit}` });
    });
    expect(counts.writes.size).toBe(40);
    expect([...counts.writes.values()].every((n) => n === 1)).toBe(true);
  });

  it('is not tried when the pool refused the batch for being full: the same error for all', async () => {
    const full = new ResourceExhaustedError('too many statements waiting; retry later');
    let writeOnes = 0;
    const group = new GroupCommit<number, number>({
      name: 'numbers',
      batchMax: 100,
      inFlightMax: 1,
      queueMax: 1_000,
      writeBatch: () => Promise.reject(full),
      writeOne: async (unit) => {
        writeOnes += 1;
        return unit;
      },
    });
    // Submitted in one turn of the event loop: one batch of ten.
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => group.submit(i)));
    expect(results).toEqual(results.map(() => ({ status: 'rejected', reason: full })));
    expect(writeOnes).toBe(0);
  });

  describe("on a real pool as small as the writers' pool", () => {
    let close: (() => Promise<void>) | undefined;
    afterAll(async () => {
      await close?.();
    });

    it('fits in the pool: no unit is refused with "Queue limit reached"', async () => {
      // 3 connections, as GROUP_COMMITS_IN_FLIGHT=1 gives the writers; mysql2 queues 192 more.
      const opened = await openTestDatabase('settle_gc_replay', { poolSize: 3 });
      close = opened.close;
      const { group, counts } = failingBatches({
        writeOne: async (unit) => {
          try {
            await sql`SELECT SLEEP(0.02)`.execute(opened.db);
            return `ok ${unit}`;
          } catch (error) {
            throw toUnavailable(error);
          }
        },
      });
      const results = await Promise.allSettled(
        Array.from({ length: 256 }, (_, i) => group.submit(i)),
      );
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(failed.map((r) => String(r.reason))).toEqual([]);
      expect(counts.runningMax).toBeLessThanOrEqual(REPLAY_IN_FLIGHT_MAX_DEFAULT);
    });
  });
});
