/**
 * What this machine charges for a fixed piece of JavaScript work, hot and after idling: the CPU
 * time of one work unit (map inserts, JSON, property reads: the kind of work a request does) run
 * back to back, then with a sleep between units, as a process at half load sleeps between
 * events. Two numbers that make runs on different machines (or hours) comparable:
 *
 * - `hotUs`: how fast this vCPU is today (runs on machines of one kind here differed by 2×);
 * - `afterIdleUs / hotUs`: how much more the same work costs after the process slept. On the
 *   shared VM this project was measured on (2026-11-26) it was 2.4–2.7× after 20 ms, 1.2× after
 *   1 ms: while a vCPU idles, the host runs others on its core and the caches and predictors go
 *   cold. Timers and epoll add a few µs of it. This, more than Settle's code, is why the CPU per
 *   order doubles at half load in every process of the pipeline (MariaDB's too).
 *
 * Measured with process.cpuUsage (user + system), so other processes' load does not count; it
 * still moves the numbers (they share the caches), so it runs before anything is started.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export type Calibration = Readonly<{
  /** CPU µs per work unit, units run back to back. */
  hotUs: number;
  /** CPU µs per work unit, with `idleMs` of sleep before each. */
  afterIdleUs: number;
  idleMs: number;
}>;

const ITEMS = Array.from({ length: 20_000 }, (_, i) => ({ key: `item-${i}`, value: i }));

/** ~0.3–0.5 ms of mixed work on these vCPUs. */
function workUnit(): number {
  const map = new Map<string, number>();
  let length = 0;
  for (let i = 0; i < 2_000; i += 1) {
    const item = ITEMS[(i * 7_919) % ITEMS.length] as { key: string; value: number };
    map.set(item.key, item.value);
    length += JSON.stringify(item).length;
  }
  return length + map.size;
}

function cpuUs(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/** Mean CPU µs per unit over `units` units, each after `idleMs` of sleep (none when 0). */
async function round(units: number, idleMs: number): Promise<number> {
  let sink = 0;
  const start = cpuUs();
  for (let i = 0; i < units; i += 1) {
    if (idleMs > 0) await sleep(idleMs);
    sink += workUnit();
  }
  if (sink < 0) throw new Error('unreachable');
  return (cpuUs() - start) / units;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

/**
 * ~3 s: a warm-up for the JIT, then five pairs of rounds, hot units then units after `idleMs` of
 * sleep, alternated so that the vCPU's drift over the seconds (±30 % seen here) hits both alike;
 * the median round of each kind.
 */
export async function calibrate(idleMs = 20): Promise<Calibration> {
  await round(200, 0);
  const hot: number[] = [];
  const afterIdle: number[] = [];
  for (let pair = 0; pair < 5; pair += 1) {
    hot.push(await round(100, 0));
    afterIdle.push(await round(20, idleMs));
  }
  return { hotUs: median(hot), afterIdleUs: median(afterIdle), idleMs };
}
