/**
 * Where a node's time goes, for the benchmark (`npm run bench`) and for people looking at a slow
 * node: named timers (SQL statements by kind and table, PSP calls, gRPC handlers), the process's
 * CPU time, memory and event-loop utilisation, and the actor registry's size. Served as JSON on
 * GET /debug/stats only when DEBUG_STATS is on; off, nothing is recorded at all.
 *
 * Timers are wall-clock durations of awaited calls, so they overlap under concurrency: they say
 * how long work waited on each dependency, not how much CPU it used (the CPU time does that).
 */
import { Session } from 'node:inspector/promises';
import { performance } from 'node:perf_hooks';
import { json, type Route } from '../http/router.js';

/** Distinct timer names at most: a bug that makes names unbounded cannot grow memory forever. */
const TIMER_NAMES_MAX = 500;

export type TimerSnapshot = Readonly<{ count: number; totalMs: number; maxMs: number }>;

export class Timings {
  private readonly timers = new Map<string, { count: number; totalMs: number; maxMs: number }>();

  record(name: string, ms: number): void {
    let timer = this.timers.get(name);
    if (timer === undefined) {
      if (this.timers.size >= TIMER_NAMES_MAX) return;
      timer = { count: 0, totalMs: 0, maxMs: 0 };
      this.timers.set(name, timer);
    }
    timer.count += 1;
    timer.totalMs += ms;
    if (ms > timer.maxMs) timer.maxMs = ms;
  }

  snapshot(): Record<string, TimerSnapshot> {
    const out: Record<string, TimerSnapshot> = {};
    for (const [name, timer] of this.timers) {
      out[name] = { count: timer.count, totalMs: round(timer.totalMs), maxMs: round(timer.maxMs) };
    }
    return out;
  }
}

/**
 * A short, bounded name for a SQL statement: its verb and first table, e.g. `sql.update
 * payment_order`, `sql.commit`. Values never appear in it.
 */
export function sqlTimerName(statement: string): string {
  const text = statement.trimStart().slice(0, 400);
  const verb = /^(\w+)/.exec(text)?.[1]?.toLowerCase() ?? 'other';
  let table: string | undefined;
  if (verb === 'insert' || verb === 'replace')
    table = /^\w+\s+(?:ignore\s+)?into\s+`?(\w+)/i.exec(text)?.[1];
  else if (verb === 'update') table = /^update\s+`?(\w+)/i.exec(text)?.[1];
  else if (verb === 'select' || verb === 'delete') table = /\bfrom\s+`?(\w+)/i.exec(text)?.[1];
  else if (!['begin', 'commit', 'rollback', 'savepoint', 'release', 'start'].includes(verb)) {
    return 'sql.other';
  }
  return table === undefined ? `sql.${verb}` : `sql.${verb} ${table}`;
}

export type RuntimeStatsSources = Readonly<{
  timings: Timings;
  actors: () => { live: number; passivated: number; mailboxDepth: number };
  node: string;
}>;

/** The JSON a stats request answers with. */
export function runtimeStats(
  sources: RuntimeStatsSources,
  startedElu: ReturnType<typeof performance.eventLoopUtilization>,
) {
  const cpu = process.cpuUsage();
  const memory = process.memoryUsage();
  return {
    node: sources.node,
    pid: process.pid,
    uptimeMs: Math.round(process.uptime() * 1000),
    cpuUserMs: Math.round(cpu.user / 1000),
    cpuSystemMs: Math.round(cpu.system / 1000),
    memory: {
      rssBytes: memory.rss,
      heapUsedBytes: memory.heapUsed,
      heapTotalBytes: memory.heapTotal,
      externalBytes: memory.external,
    },
    eventLoop: performance.eventLoopUtilization(startedElu),
    actors: sources.actors(),
    timers: sources.timings.snapshot(),
  };
}

export const DEBUG_STATS_PATH = '/debug/stats';

/**
 * GET /debug/stats: the node's runtime statistics as JSON. With `?gc=1` a full garbage
 * collection runs first, so the heap figures count live objects only (a memory check, not a
 * thing to call under load).
 */
export function debugStatsRoute(sources: RuntimeStatsSources): Route {
  const startedElu = performance.eventLoopUtilization();
  return {
    method: 'GET',
    path: DEBUG_STATS_PATH,
    handle: async (request) => {
      if (request.query.get('gc') === '1') {
        const session = new Session();
        session.connect();
        try {
          await session.post('HeapProfiler.collectGarbage');
        } finally {
          session.disconnect();
        }
      }
      return json(200, runtimeStats(sources, startedElu));
    },
  };
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

export const DEBUG_PROFILE_PATH = '/debug/profile';
/** The longest CPU profile one request may take, in milliseconds. */
const PROFILE_MS_MAX = 120_000;

/**
 * GET /debug/profile?ms=N: records this process's CPU for N milliseconds (V8's sampling
 * profiler, the same as `node --cpu-prof`) and answers with the .cpuprofile JSON. One at a time.
 */
export function debugProfileRoute(): Route {
  let running = false;
  return {
    method: 'GET',
    path: DEBUG_PROFILE_PATH,
    handle: async (request) => {
      const ms = Number(request.query.get('ms') ?? '5000');
      if (!Number.isInteger(ms) || ms < 1 || ms > PROFILE_MS_MAX) {
        return json(400, { error: `ms must be an integer in [1, ${PROFILE_MS_MAX}]` });
      }
      if (running) return json(409, { error: 'a profile is already being recorded' });
      running = true;
      const session = new Session();
      session.connect();
      try {
        await session.post('Profiler.enable');
        await session.post('Profiler.start');
        await new Promise((resolve) => setTimeout(resolve, ms));
        const { profile } = await session.post('Profiler.stop');
        return json(200, profile);
      } finally {
        session.disconnect();
        running = false;
      }
    },
  };
}
