/**
 * Goal: the bench's verdict on the performance goals says "met" exactly when a run meets each
 * one (at its boundary included), measures the half-load p99 against the PSP latency the run was
 * given, and gives no verdict where the phase did not run or ran on other terms (the open loop at
 * another share, fewer than 100,000 idle orders). Method: the pure check, on hand-made results.
 */
import { describe, expect, it } from 'vitest';
import { checkGoals, goalsTable, type GoalInputs } from '../../bench/goals.js';

const MB = 1024 * 1024;

const fullRun: GoalInputs = {
  ceilingOrdersPerS: 1_200,
  spreadOrdersPerS: 1_000,
  pspLatencyMs: 0,
  openLoop: { percent: 50, p99Ms: 50 },
  hotOrdersPerS: 500,
  idle: { orders: 100_000, rssAfterPassivationBytes: 300 * MB },
};

const verdicts = (inputs: GoalInputs) => checkGoals(inputs).map((goal) => goal.verdict);

describe('checkGoals', () => {
  it('meets every goal at its boundary', () => {
    expect(verdicts(fullRun)).toEqual(['met', 'met', 'met', 'met', 'met']);
    expect(
      verdicts({
        ...fullRun,
        ceilingOrdersPerS: 2_000,
        spreadOrdersPerS: 1_000,
        hotOrdersPerS: 500,
      }),
      '50 % of the ceiling and hot seller at 50 % of spread are met',
    ).toEqual(['met', 'met', 'met', 'met', 'met']);
  });

  it('misses each goal just past its boundary, alone', () => {
    expect(verdicts({ ...fullRun, ceilingOrdersPerS: 2_001 })).toEqual([
      'not met',
      'met',
      'met',
      'met',
      'met',
    ]);
    expect(verdicts({ ...fullRun, spreadOrdersPerS: 999, hotOrdersPerS: 500 })).toEqual([
      'met',
      'not met',
      'met',
      'met',
      'met',
    ]);
    expect(verdicts({ ...fullRun, openLoop: { percent: 50, p99Ms: 51 } })).toEqual([
      'met',
      'met',
      'not met',
      'met',
      'met',
    ]);
    expect(verdicts({ ...fullRun, hotOrdersPerS: 499 })).toEqual([
      'met',
      'met',
      'met',
      'not met',
      'met',
    ]);
    expect(
      verdicts({ ...fullRun, idle: { orders: 100_000, rssAfterPassivationBytes: 300 * MB + 1 } }),
    ).toEqual(['met', 'met', 'met', 'met', 'not met']);
  });

  it('measures the half-load p99 against the PSP latency of the run', () => {
    const withLatency = checkGoals({
      ...fullRun,
      pspLatencyMs: 100,
      openLoop: { percent: 50, p99Ms: 140 },
    });
    expect(withLatency[2]).toEqual({
      goal: 'half load: p99 create→terminal ≤ PSP latency + 50 ms (150 ms)',
      measured: '140 ms',
      verdict: 'met',
    });
  });

  it('gives no verdict for a phase not run or run on other terms', () => {
    const { openLoop: _open, hotOrdersPerS: _hot, idle: _idle, ...throughputOnly } = fullRun;
    expect(verdicts(throughputOnly)).toEqual(['met', 'met', '–', '–', '–']);
    const other = checkGoals({
      ...fullRun,
      openLoop: { percent: 25, p99Ms: 20 },
      idle: { orders: 2_000, rssAfterPassivationBytes: 100 * MB },
    });
    expect(other[2]).toMatchObject({ measured: '20 ms at 25 % load', verdict: '–' });
    expect(other[4]).toMatchObject({ measured: '100 MB with 2000 idle orders', verdict: '–' });
  });

  it('prints one row per goal', () => {
    const table = goalsTable(checkGoals(fullRun));
    expect(table.split('\n')).toHaveLength(2 + 5);
    expect(table).toContain('| spread ≥ 1,000 orders/s');
  });
});
