/**
 * Goal: `npm run bench:compare` puts runs side by side: each row's value per run, a Δ column for
 * two runs that marks a change for the worse, – where a run lacks a value, and no row that no run
 * has. Method: two small results shaped as `npm run bench -- --json` writes them.
 */
import { describe, expect, it } from 'vitest';
import { compareRuns, type BenchResult } from '../../bench/compare.js';

const before: BenchResult = {
  calibration: { hotUs: 500, afterIdleUs: 1500 },
  ceiling: { spread: { ordersPerS: 800 } },
  spread: {
    ordersPerS: 800,
    orders: 1000,
    terminalMs: { p50: 60, p95: 100, p99: 120 },
    createMs: { p99: 40 },
    usage: { cpuMs: { settle: 700 }, machineBusyMs: 1800, wallMs: 1000 },
  },
  ok: true,
};

const after: BenchResult = {
  ...before,
  spread: {
    ...before.spread,
    ordersPerS: 1000,
    terminalMs: { p50: 50, p95: 90, p99: 150 },
    within: { within: [10, 40, 90, 100], total: 100 },
  },
  goals: [{ verdict: 'met' }, { verdict: 'met' }, { verdict: 'not met' }, { verdict: '–' }],
};

/** The cells of the row whose label is `label`. */
function row(table: string, label: string): string[] | undefined {
  return table
    .split('\n')
    .map((line) => line.split('|').map((cell) => cell.trim()))
    .find((cells) => cells[1] === label)
    ?.slice(2, -1);
}

describe('compareRuns', () => {
  it('gives each run a column and, for two, the change with "!" when it is for the worse', () => {
    const table = compareRuns([
      { name: 'a', result: before },
      { name: 'b', result: after },
    ]);
    expect(
      table
        .split('\n')[0]
        ?.split('|')
        .map((cell) => cell.trim()),
    ).toEqual(['', '', 'a', 'b', 'Δ', '']);
    expect(row(table, 'spread: orders/s')).toEqual(['800', '1000', '+25.0 %']);
    expect(row(table, 'spread: % of the ceiling')).toEqual(['100', '125', '+25.0 %']);
    expect(row(table, 'spread: create→terminal p50 ms')).toEqual(['60', '50', '-16.7 %']);
    expect(row(table, 'spread: create→terminal p99 ms')).toEqual(['120', '150', '+25.0 % !']);
    expect(row(table, 'spread: CPU ms per order, settle')).toEqual(['0.70', '0.70', '0.0 %']);
    expect(row(table, 'spread: cores busy')).toEqual(['1.80', '1.80', '0.0 %']);
    // Only the second run has it: – and no change.
    expect(row(table, 'spread: % within 50 ms (load generator)')).toEqual(['–', '40.0', '–']);
    expect(row(table, 'invariants and phases ok (1 = yes)')).toEqual(['1', '1', '0.0 %']);
    // Goals are counted where a run recorded them.
    expect(row(table, 'performance goals met (of 5)')).toEqual(['–', '2', '–']);
  });

  it('computes the change from the values as printed, so 0.0 beside 0.0 is no change', () => {
    const tiny = (share: number): BenchResult => ({
      ...before,
      spread: { ...before.spread, within: { within: [0, share, 50, 100], total: 1_000_000 } },
    });
    // 0.3 and 0.1 in a million: both print as 0.0 %, which once showed as "-66.7 % !".
    const table = compareRuns([
      { name: 'a', result: tiny(3) },
      { name: 'b', result: tiny(1) },
    ]);
    expect(row(table, 'spread: % within 50 ms (load generator)')).toEqual(['0.0', '0.0', '0 %']);
  });

  it('leaves out rows no run has, and the Δ column for more than two runs', () => {
    const table = compareRuns([
      { name: 'a', result: before },
      { name: 'b', result: after },
      { name: 'c', result: { ...after, ok: false } },
    ]);
    expect(table).not.toContain('Δ');
    expect(table).not.toContain('hot seller');
    expect(table).not.toContain('open loop');
    expect(row(table, 'invariants and phases ok (1 = yes)')).toEqual(['1', '1', '0']);
  });
});
