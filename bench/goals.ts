/**
 * The performance goals (README, "Performance"), checked against one run: for each goal, what
 * this run measured and whether it met it. A goal whose phase did not run, or ran on other terms
 * than the goal names (the open loop at another share of the spread rate, fewer idle orders),
 * gets no verdict rather than a misleading one.
 *
 * A verdict holds for this run on this machine only: the goals are set for a 2-core machine, and
 * the README gives every full run so far.
 */
import { markdownTable } from './table.js';

export type GoalInputs = Readonly<{
  ceilingOrdersPerS: number;
  spreadOrdersPerS: number;
  pspLatencyMs: number;
  /** The open-loop phase: its rate as a share of the spread rate (50: half load), and its p99. */
  openLoop?: Readonly<{ percent: number; p99Ms: number }>;
  hotOrdersPerS?: number;
  /** The memory phase: idle orders created, and Settle's RSS once they were passivated. */
  idle?: Readonly<{ orders: number; rssAfterPassivationBytes: number }>;
}>;

export type Verdict = 'met' | 'not met' | '–';

export type GoalResult = Readonly<{ goal: string; measured: string; verdict: Verdict }>;

const RATE_MIN = 1_000;
const SHARE_OF_CEILING_MIN = 0.5;
const HOT_SHARE_OF_SPREAD_MIN = 0.5;
const P99_OVER_PSP_LATENCY_MAX_MS = 50;
const IDLE_ORDERS = 100_000;
const RSS_MAX_BYTES = 300 * 1024 * 1024;
const MB = 1024 * 1024;

const verdict = (ok: boolean): Verdict => (ok ? 'met' : 'not met');
const percent = (share: number) => `${(share * 100).toFixed(0)} %`;

export function checkGoals(inputs: GoalInputs): GoalResult[] {
  const share = inputs.spreadOrdersPerS / inputs.ceilingOrdersPerS;
  const p99Max = inputs.pspLatencyMs + P99_OVER_PSP_LATENCY_MAX_MS;
  const goals: GoalResult[] = [
    {
      goal: 'spread ≥ 50 % of the ceiling',
      measured: Number.isFinite(share) ? percent(share) : '–',
      verdict: Number.isFinite(share) ? verdict(share >= SHARE_OF_CEILING_MIN) : '–',
    },
    {
      goal: 'spread ≥ 1,000 orders/s',
      measured: `${inputs.spreadOrdersPerS.toFixed(0)} orders/s`,
      verdict: verdict(inputs.spreadOrdersPerS >= RATE_MIN),
    },
  ];
  const { openLoop } = inputs;
  goals.push({
    goal: `half load: p99 create→terminal ≤ PSP latency + 50 ms (${p99Max} ms)`,
    measured:
      openLoop === undefined
        ? 'not run'
        : `${openLoop.p99Ms.toFixed(0)} ms${openLoop.percent === 50 ? '' : ` at ${openLoop.percent} % load`}`,
    verdict:
      openLoop === undefined || openLoop.percent !== 50 ? '–' : verdict(openLoop.p99Ms <= p99Max),
  });
  const hotShare =
    inputs.hotOrdersPerS === undefined ? undefined : inputs.hotOrdersPerS / inputs.spreadOrdersPerS;
  goals.push({
    goal: 'hot seller ≥ 50 % of spread',
    measured: hotShare === undefined || !Number.isFinite(hotShare) ? 'not run' : percent(hotShare),
    verdict:
      hotShare === undefined || !Number.isFinite(hotShare)
        ? '–'
        : verdict(hotShare >= HOT_SHARE_OF_SPREAD_MIN),
  });
  const { idle } = inputs;
  goals.push({
    goal: 'RSS ≤ 300 MB with 100,000 idle orders',
    measured:
      idle === undefined
        ? 'not run'
        : `${(idle.rssAfterPassivationBytes / MB).toFixed(0)} MB with ${idle.orders} idle orders`,
    verdict:
      idle === undefined || idle.orders < IDLE_ORDERS
        ? '–'
        : verdict(idle.rssAfterPassivationBytes <= RSS_MAX_BYTES),
  });
  return goals;
}

/** The goals as the report's table. */
export function goalsTable(results: readonly GoalResult[]): string {
  return markdownTable(
    ['goal', 'this run', 'verdict'],
    results.map((result) => [result.goal, result.measured, result.verdict]),
  );
}
