/**
 * Goal: GroupCommit's batching in itself, apart from what the batches write (the e2e group-commit
 * tests write real transitions through it). Method: units submitted a few milliseconds apart, as
 * at moderate load, to a GroupCommit whose writers record the batches they were given.
 */
import { describe, expect, it } from 'vitest';
import { GroupCommit } from '../../src/storage/group-commit.js';

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
