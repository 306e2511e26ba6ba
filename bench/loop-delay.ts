/**
 * Event-loop delay over a bench phase, of Settle (from the metrics it exports) and of the load
 * generator (its own): a callback ready in a process waits this long for its event loop, so a
 * tail here is in every latency the load generator measures, its own delay included.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { metricSample } from '../src/observability/prometheus-text.js';

/**
 * Event-loop delay percentiles, ms: how late a timer of LOOP_DELAY_RESOLUTION_MS ran. Node's
 * monitorEventLoopDelay records the timer's whole interval (an idle loop reads about 10 ms at a
 * 10 ms resolution), so the interval is taken off: 0 means on time.
 */
export type LoopDelay = Readonly<{ p50: number; p99: number; max: number }>;

/** prom-client's default (eventLoopMonitoringPrecision), which Settle keeps; the bench's too. */
const LOOP_DELAY_RESOLUTION_MS = 10;

export const lateMs = (intervalMs: number) => Math.max(0, intervalMs - LOOP_DELAY_RESOLUTION_MS);

/**
 * Settle's event-loop delay since its /metrics was last read: prom-client's default metrics read
 * a monitorEventLoopDelay histogram and reset it on every scrape, and the bench is the only one
 * scraping, at each phase's start and end.
 */
export function settleLoopDelay(text: string | undefined): LoopDelay | undefined {
  if (text === undefined) return undefined;
  const ms = (name: string) => {
    const seconds = metricSample(text, name);
    return seconds === undefined ? undefined : lateMs(seconds * 1000);
  };
  const p50 = ms('nodejs_eventloop_lag_p50_seconds');
  const p99 = ms('nodejs_eventloop_lag_p99_seconds');
  const max = ms('nodejs_eventloop_lag_max_seconds');
  return p50 === undefined || p99 === undefined || max === undefined
    ? undefined
    : { p50, p99, max };
}

/** The load generator's own event-loop delay, read and reset at each snapshot. */
const benchLoopDelay = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });
benchLoopDelay.enable();

export function takeBenchLoopDelay(): LoopDelay {
  const delay = {
    p50: lateMs(benchLoopDelay.percentile(50) / 1e6),
    p99: lateMs(benchLoopDelay.percentile(99) / 1e6),
    max: lateMs(benchLoopDelay.max / 1e6),
  };
  benchLoopDelay.reset();
  return delay;
}
