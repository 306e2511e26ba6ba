/**
 * Goal: the bench reads Settle's event-loop delay over a phase from the metrics a node exports
 * (prom-client's nodejs_eventloop_lag_*), less the timer interval they include, and each scrape
 * starts a new window, so a phase's reading is that phase's alone.
 * Method: Settle's own metrics registry (createMetrics) in this process; its event loop held
 * busy for 120 ms, then scraped, then left idle and scraped again.
 */
import { describe, expect, it } from 'vitest';
import { lateMs, settleLoopDelay } from '../../bench/loop-delay.js';
import { createMetrics } from '../../src/observability/metrics.js';

const idle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('settleLoopDelay', () => {
  it("reads a blocked loop's delay from /metrics, and the next window without it", async () => {
    const metrics = createMetrics();
    await metrics.registry.metrics(); // starts the first window
    await idle(50);
    const until = Date.now() + 120;
    while (Date.now() < until); // the event loop held for 120 ms
    await idle(50);
    const blocked = settleLoopDelay(await metrics.registry.metrics());
    await idle(300);
    const after = settleLoopDelay(await metrics.registry.metrics());

    expect(blocked).toBeDefined();
    // A 10 ms timer due during the 120 ms ran about 110 ms late.
    expect(blocked?.max).toBeGreaterThan(80);
    expect(after).toBeDefined();
    // A new window: the stall is not in it (generous, for a loaded machine).
    expect(after?.max).toBeLessThan(80);
    expect(after?.p50).toBeLessThan(blocked?.max ?? 0);
  });

  it('takes the timer interval off, never below zero, and reads nothing from nothing', () => {
    expect(lateMs(10.2)).toBeCloseTo(0.2);
    expect(lateMs(9.1)).toBe(0);
    expect(lateMs(35)).toBe(25);
    expect(settleLoopDelay(undefined)).toBeUndefined();
    expect(settleLoopDelay('# no such metrics\n')).toBeUndefined();
  });
});
