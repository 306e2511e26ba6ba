/**
 * Goal: the node's housekeeping runs its purges on its own timer, a pass at a time: the first
 * pass after `firstPassMs`, then one every `intervalMs`; a task that fails is reported and does
 * not stop the others; passes never overlap, a runOnce() from outside included; stop() waits for the pass in progress and no pass
 * starts after it. (What the purges delete is tested with the real database: retention.test.ts
 * and payment.repository.test.ts.)
 * Method: tasks that record their calls and wait on promises the test resolves; short real
 * timers.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { Housekeeping, type HousekeepingTask } from '../../src/jobs/housekeeping.js';

let running: Housekeeping | undefined;
afterEach(async () => {
  await running?.stop();
  running = undefined;
});

/** A task that records when it ran and answers `rows`, or throws when `rows` is an Error. */
function recording(name: string, rows: number | Error, calls: string[]): HousekeepingTask {
  return {
    name,
    run: async () => {
      calls.push(name);
      if (rows instanceof Error) throw rows;
      return rows;
    },
  };
}

describe('Housekeeping', () => {
  it('runs a first pass after firstPassMs, then one every intervalMs', async () => {
    const calls: string[] = [];
    const started = Date.now();
    running = new Housekeeping([recording('a', 0, calls)], { intervalMs: 40, firstPassMs: 150 });
    running.start();
    await sleep(80);
    expect(calls, 'no pass before firstPassMs').toEqual([]);
    // Three passes come (bounded wait), and no sooner than 150 + 2 × 40 ms, less a few ms of
    // timer rounding: the timer waits its interval after each pass rather than looping. A
    // loaded machine only delays them.
    for (let i = 0; i < 500 && calls.length < 3; i += 1) await sleep(10);
    expect(calls.length).toBeGreaterThanOrEqual(3);
    expect(Date.now() - started).toBeGreaterThanOrEqual(225);
  });

  it('reports a failing task and still runs the others, passing on what each deleted', async () => {
    const calls: string[] = [];
    const purged: Array<{ task: string; rows: number }> = [];
    const errors: string[] = [];
    const housekeeping = new Housekeeping(
      [
        recording('broken', new Error('lock wait timeout'), calls),
        recording('keys', 7, calls),
        recording('idle', 0, calls),
      ],
      {
        intervalMs: 60_000,
        onPurged: (p) => purged.push(p),
        onError: (task, error) => errors.push(`${task}: ${(error as Error).message}`),
      },
    );
    expect(await housekeeping.runOnce()).toEqual({ broken: -1, keys: 7, idle: 0 });
    expect(calls).toEqual(['broken', 'keys', 'idle']);
    expect(errors).toEqual(['broken: lock wait timeout']);
    expect(purged, 'only tasks that deleted rows are reported').toEqual([
      { task: 'keys', rows: 7 },
    ]);
  });

  it('never overlaps passes, and stop() waits for the pass in progress', async () => {
    const waiting: Array<() => void> = [];
    const release = () => waiting.splice(0).forEach((resolve) => resolve());
    let inFlight = 0;
    let most = 0;
    let passes = 0;
    const slow: HousekeepingTask = {
      name: 'slow',
      run: async () => {
        passes += 1;
        inFlight += 1;
        most = Math.max(most, inFlight);
        await new Promise<void>((resolve) => waiting.push(resolve));
        inFlight -= 1;
        return 1;
      },
    };
    const housekeeping = new Housekeeping([slow], { intervalMs: 5, firstPassMs: 0 });
    running = housekeeping;
    housekeeping.start();
    // The pass outlasts many intervals: no second one may start meanwhile.
    await sleep(100);
    if (passes !== 1) release();
    expect(passes).toBe(1);
    let stopped = false;
    const stopping = housekeeping.stop().then(() => (stopped = true));
    await sleep(30);
    expect(stopped, 'stop() waits for the pass in progress').toBe(false);
    release();
    await stopping;
    await sleep(50);
    expect(passes, 'no pass after stop()').toBe(1);
    expect(most).toBe(1);
  });

  it('makes a runOnce() from outside wait for the timer pass in progress', async () => {
    const order: string[] = [];
    let release: () => void = () => undefined;
    let first = true;
    const task: HousekeepingTask = {
      name: 'keys',
      run: async () => {
        if (first) {
          first = false;
          order.push('timer pass starts');
          await new Promise<void>((resolve) => (release = resolve));
          order.push('timer pass ends');
          return 2;
        }
        order.push('outside pass');
        return 0;
      },
    };
    const housekeeping = new Housekeeping([task], { intervalMs: 60_000, firstPassMs: 0 });
    running = housekeeping;
    housekeeping.start();
    for (let i = 0; i < 200 && order.length === 0; i += 1) await sleep(5);
    expect(order).toEqual(['timer pass starts']);
    const outside = housekeeping.runOnce();
    await sleep(30);
    const seen = [...order];
    release();
    expect(seen, 'the outside pass has not started while the timer pass runs').toEqual([
      'timer pass starts',
    ]);
    expect(await outside).toEqual({ keys: 0 });
    expect(order).toEqual(['timer pass starts', 'timer pass ends', 'outside pass']);
  });
});
