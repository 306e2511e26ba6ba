/**
 * `npm run bench`: Settle's throughput, latency and memory, measured side by side with what the
 * same durable MySQL writes reach without Settle (the ceiling), in one run on this machine.
 *
 * Phases: (1) the ceiling (bench/ceiling.ts as a child process), spread over many sellers and for
 * one hot seller; (2) Settle end to end at maximum load (closed loop), every order paid by the PSP
 * mock's auto-pay; (3) latency at half that load (open loop; `--open-loop-percent` sets another
 * share); (4) the hot seller; (5) memory with many idle (registered, unpaid) orders and
 * passivated actors. Settle and the PSP mock are child processes with their own databases and
 * NATS namespace; the run ends with the money invariants and exits non-zero if any fails. See
 * `--help`.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { createPool, type RowDataPacket } from 'mysql2/promise';
import { PspServiceClient } from '../src/grpc/generated/settle/psp/v1/psp.js';
import { dropDatabase, parseMysqlUrl, serverAddress, withDatabaseName } from '../src/storage/db.js';
import { metricSample } from '../src/observability/prometheus-text.js';
import { markdownTable } from './table.js';
import type { CeilingResult } from './ceiling.js';
import { checkInvariants, type Check } from './invariants.js';
import { CompletionWatcher, LoadDriver, quantile, type LoadResult } from './load.js';
import { calibrate, type Calibration } from './calibrate.js';
import { summarizeProfile, type ProfileSummary } from './profile.js';
import { checkGoals, goalsTable, type GoalResult } from './goals.js';
import { stageLatencies, type StageLatency } from './stages.js';
import { settleLoopDelay, takeBenchLoopDelay, type LoopDelay } from './loop-delay.js';
import {
  CREATE_PATH_BOUNDS_MS,
  createPathBetween,
  createPathFrom,
  createPathRows,
  withinOf,
  type CreatePath,
} from './create-path.js';
import {
  findPids,
  sampleMachine,
  sampleMainThread,
  sampleProcess,
  sampleSwitches,
  sampleSyscalls,
  type ProcSample,
  type Switches,
  type Syscalls,
  type ThreadSchedule,
} from './proc.js';
import { sleep } from '../src/chaos/processes.js';
import { REPO_ROOT, startStack, type BenchStack } from './stack.js';
import { chooseMysqlRoute, MYSQL_TRANSPORTS, type MysqlTransport } from './mysql-transport.js';
import { names as topologyNames } from '../src/messaging/subjects.js';

const HELP = `npm run bench -- [options]

  --payments <n>            at most this many payments per load phase (default 1000000)
  --orders-per-payment <n>  orders (sellers) per payment (default 1)
  --concurrency <n>         payments in flight in the closed loops and the ceiling (default 64)
  --sellers <n>             sellers the spread load picks from (default 1000)
  --psp-latency-ms <n>      latency the PSP mock adds to every merchant API call (default 0)
  --duration <s>            seconds per load phase (default 15)
  --warmup <s>              seconds of unmeasured closed-loop load first, for V8's JIT (default 10)
  --idle-orders <n>         idle orders for the memory phase; 0 skips it (default 100000)
  --no-hot-seller           skip the hot-seller phase
  --open-loop-percent <n>   the open-loop phase's rate, in % of the spread rate (default 50: half load)
  --quick                   a short run for CI (~1 min): 3 s phases, 1 s warm-up, 2000 idle orders
  --profile                 CPU profiles: Settle's during the spread and half-load phases, the PSP mock's whole life
  --profile-dir <dir>       with --profile: also keep the raw .cpuprofile files there (for DevTools)
  --json <file>             also write the results as JSON
  --settle-env K=V[,K=V]    extra environment of the Settle node, to compare settings
                            (e.g. GROUP_COMMIT_MAX=1 turns group commit off)
  --mysql-url <url>         server for the bench databases (default mysql://root@127.0.0.1:3306/x)
  --mysql-transport <way>   auto (default: the server's Unix socket when it has one here, else TCP),
                            socket or tcp; every process of the run goes the same way
  --nats-url <url>          NATS with JetStream (default nats://127.0.0.1:4222)`;

type Options = Readonly<{
  paymentsMax: number;
  ordersPerPayment: number;
  concurrency: number;
  sellers: number;
  pspLatencyMs: number;
  durationMs: number;
  warmupMs: number;
  idleOrders: number;
  hotSeller: boolean;
  /** The open-loop phase's rate in % of the spread phase's (50: the issue's "half load"). */
  openLoopPercent: number;
  quick: boolean;
  profile: boolean;
  profileKeepDir: string | undefined;
  json: string | undefined;
  settleEnv: Record<string, string>;
  mysqlBaseUrl: string;
  mysqlTransport: MysqlTransport;
  /** How the run reaches MySQL, for the report (set once chosen). */
  mysqlWay: string;
  natsUrl: string;
  actorIdleMs: number;
}>;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    allowNegative: true,
    options: {
      payments: { type: 'string' },
      'orders-per-payment': { type: 'string' },
      concurrency: { type: 'string' },
      sellers: { type: 'string' },
      'psp-latency-ms': { type: 'string' },
      duration: { type: 'string' },
      warmup: { type: 'string' },
      'idle-orders': { type: 'string' },
      'hot-seller': { type: 'boolean', default: true },
      'open-loop-percent': { type: 'string' },
      quick: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      'profile-dir': { type: 'string' },
      json: { type: 'string' },
      'settle-env': { type: 'string' },
      'mysql-url': { type: 'string', default: 'mysql://root@127.0.0.1:3306/x' },
      'mysql-transport': { type: 'string', default: 'auto' },
      'nats-url': { type: 'string', default: 'nats://127.0.0.1:4222' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    process.exit(0);
  }
  const quick = values.quick;
  const int = (name: string, value: string | undefined, fallback: number, min: number) => {
    if (value === undefined) return fallback;
    const number = Number(value);
    if (!Number.isInteger(number) || number < min) {
      throw new Error(`--${name} must be an integer ≥ ${min}, got '${value}'`);
    }
    return number;
  };
  const url = new URL(values['mysql-url']);
  if (Number(values['orders-per-payment'] ?? 1) > Number(values.sellers ?? 1_000)) {
    throw new Error('--orders-per-payment must not exceed --sellers (one order per seller)');
  }
  if (url.hostname !== '127.0.0.1' && url.hostname !== 'localhost') {
    throw new Error('--mysql-url must point at 127.0.0.1: the bench only talks to this machine');
  }
  const transport = values['mysql-transport'] as MysqlTransport;
  if (!MYSQL_TRANSPORTS.includes(transport)) {
    throw new Error(`--mysql-transport must be one of ${MYSQL_TRANSPORTS.join(', ')}`);
  }
  return {
    paymentsMax: int('payments', values.payments, 1_000_000, 1),
    ordersPerPayment: int('orders-per-payment', values['orders-per-payment'], 1, 1),
    concurrency: int('concurrency', values.concurrency, 64, 1),
    sellers: int('sellers', values.sellers, 1_000, 1),
    pspLatencyMs: int('psp-latency-ms', values['psp-latency-ms'], 0, 0),
    durationMs: int('duration', values.duration, quick ? 3 : 15, 1) * 1000,
    warmupMs: int('warmup', values.warmup, quick ? 1 : 10, 0) * 1000,
    idleOrders: int('idle-orders', values['idle-orders'], quick ? 2_000 : 100_000, 0),
    hotSeller: values['hot-seller'],
    openLoopPercent: int('open-loop-percent', values['open-loop-percent'], 50, 1),
    quick,
    profile: values.profile || values['profile-dir'] !== undefined,
    profileKeepDir: values['profile-dir'],
    json: values.json,
    settleEnv: Object.fromEntries(
      (values['settle-env'] ?? '')
        .split(',')
        .filter((pair) => pair.includes('='))
        .map((pair) => [
          pair.slice(0, pair.indexOf('=')).trim(),
          pair.slice(pair.indexOf('=') + 1),
        ]),
    ),
    mysqlBaseUrl: values['mysql-url'],
    mysqlTransport: transport,
    mysqlWay: '',
    natsUrl: values['nats-url'],
    actorIdleMs: quick ? 2_000 : 5_000,
  };
}

/** The open-loop phase's name: "half load" at the default 50 %, else "<n> % load". */
function openLoopName(options: Pick<Options, 'openLoopPercent'>): string {
  return options.openLoopPercent === 50 ? 'half load' : `${options.openLoopPercent} % load`;
}

// ---------------------------------------------------------------------------------------------
// Progress and cleanup

const runStarted = Date.now();
function log(line: string): void {
  const seconds = ((Date.now() - runStarted) / 1000).toFixed(1).padStart(6);
  process.stdout.write(`[${seconds}s] ${line}\n`);
}

const cleanups: Array<() => Promise<void>> = [];
let interrupted = false;

async function cleanUp(): Promise<void> {
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop();
    await cleanup?.().catch((error: unknown) => log(`cleanup failed: ${String(error)}`));
  }
}

process.on('SIGINT', () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  log('SIGINT: stopping the children and dropping the bench databases (Ctrl-C again to force)');
  void cleanUp().then(() => process.exit(130));
});

function checkInterrupted(): void {
  if (interrupted) throw new Error('interrupted');
}

// ---------------------------------------------------------------------------------------------
// Resource accounting per phase

type Snapshot = Readonly<{
  at: number;
  procs: Record<string, ProcSample | undefined>;
  /** Context switches of every thread of each process (settle, psp-mock, the shared ones, bench). */
  switches: Record<string, Switches | undefined>;
  /** Read and write system calls of the Node processes (settle, psp-mock, bench). */
  syscalls: Record<string, Syscalls | undefined>;
  machine: { busyMs: number; totalMs: number };
  settleStats: SettleStats | undefined;
  settleMainThread: ThreadSchedule | undefined;
  /** Settle's own completion histogram (SUCCEEDED orders), cumulative count per bucket bound. */
  settleCompletions: Completions | undefined;
  /** Settle's histograms of a CreatePayment's parts, cumulative count per bucket bound. */
  settleCreatePath: CreatePath | undefined;
  /** Event-loop delay since the previous snapshot: Settle's (its /metrics resets it) and ours. */
  eventLoopDelay: Readonly<{ settle: LoopDelay | undefined; bench: LoopDelay }>;
  benchCpuMs: number;
}>;

/** Upper bounds (ms) of the buckets of settle_payment_order_completion_seconds the bench reads. */
const COMPLETION_BOUNDS_MS = [25, 50, 100, 250] as const;

/** Orders finished within each of COMPLETION_BOUNDS_MS (same order), and in all. */
type Completions = Readonly<{ within: readonly number[]; total: number }>;

/**
 * Settle's own view of create→terminal: the histogram a node exports for operators, read from
 * /metrics (SUCCEEDED orders; from the order's creation to its success being committed).
 */
async function settleMetricsText(stack: BenchStack): Promise<string | undefined> {
  try {
    const response = await fetch(`${stack.settleHttp}/metrics`, {
      signal: AbortSignal.timeout(5_000),
    });
    return response.ok ? await response.text() : undefined;
  } catch {
    return undefined;
  }
}

function settleCompletions(text: string | undefined): Completions | undefined {
  if (text === undefined) return undefined;
  const bucket = (le: string) =>
    metricSample(text, 'settle_payment_order_completion_seconds_bucket', {
      state: 'SUCCEEDED',
      le,
    }) ?? 0;
  return {
    within: COMPLETION_BOUNDS_MS.map((ms) => bucket(String(ms / 1000))),
    total: bucket('+Inf'),
  };
}

type TimerStats = { count: number; totalMs: number; maxMs: number };
type SettleStats = {
  cpuUserMs: number;
  cpuSystemMs: number;
  memory: { rssBytes: number; heapUsedBytes: number };
  eventLoop: { utilization: number; active: number; idle: number };
  actors: { live: number; passivated: number; mailboxDepth: number };
  timers: Record<string, TimerStats>;
};

async function settleStats(
  stack: BenchStack,
  options: { gc?: boolean } = {},
): Promise<SettleStats | undefined> {
  try {
    const response = await fetch(`${stack.settleHttp}/debug/stats${options.gc ? '?gc=1' : ''}`, {
      signal: AbortSignal.timeout(5_000),
    });
    return response.ok ? ((await response.json()) as SettleStats) : undefined;
  } catch {
    return undefined;
  }
}

const sharedPids = {
  mariadbd: findPids('mariadbd').concat(findPids('mysqld')),
  'nats-server': findPids('nats-server'),
};

/** The field-by-field sum of a shared service's processes' samples; undefined when none. */
function sumSamples<T extends Readonly<Record<string, number>>>(
  samples: ReadonlyArray<T | undefined>,
): T | undefined {
  const present = samples.filter((sample): sample is T => sample !== undefined);
  if (present.length === 0) return undefined;
  const total: Record<string, number> = {};
  for (const sample of present) {
    for (const [field, value] of Object.entries(sample)) total[field] = (total[field] ?? 0) + value;
  }
  return total as T;
}

/** Per process, `after` minus `before` field by field; processes missing from either are left out. */
function differences<T extends Readonly<Record<string, number>>>(
  before: Readonly<Record<string, T | undefined>>,
  after: Readonly<Record<string, T | undefined>>,
): Record<string, T> {
  const out: Record<string, T> = {};
  for (const [name, end] of Object.entries(after)) {
    const start = before[name];
    if (end === undefined || start === undefined) continue;
    const diff: Record<string, number> = {};
    for (const [field, value] of Object.entries(end)) diff[field] = value - (start[field] ?? 0);
    out[name] = diff as T;
  }
  return out;
}

async function snapshot(stack: BenchStack | undefined): Promise<Snapshot> {
  const procs: Record<string, ProcSample | undefined> = {};
  const switches: Record<string, Switches | undefined> = {};
  const syscalls: Record<string, Syscalls | undefined> = {};
  if (stack !== undefined) {
    procs['settle'] = sampleProcess(stack.settle.pid);
    procs['psp-mock'] = sampleProcess(stack.psp.pid);
    switches['settle'] = sampleSwitches(stack.settle.pid);
    switches['psp-mock'] = sampleSwitches(stack.psp.pid);
    syscalls['settle'] = sampleSyscalls(stack.settle.pid);
    syscalls['psp-mock'] = sampleSyscalls(stack.psp.pid);
  }
  switches['bench'] = sampleSwitches(process.pid);
  syscalls['bench'] = sampleSyscalls(process.pid);
  for (const [name, pids] of Object.entries(sharedPids)) {
    procs[name] = sumSamples(pids.map(sampleProcess));
    switches[name] = sumSamples(pids.map(sampleSwitches));
  }
  const cpu = process.cpuUsage();
  // In the order they were always taken: the stats, the main thread, then /metrics.
  const at = Date.now();
  const machine = sampleMachine();
  const stats = stack === undefined ? undefined : await settleStats(stack);
  const mainThread = stack === undefined ? undefined : sampleMainThread(stack.settle.pid);
  const metricsText = stack === undefined ? undefined : await settleMetricsText(stack);
  return {
    at,
    procs,
    switches,
    syscalls,
    machine,
    settleStats: stats,
    settleMainThread: mainThread,
    settleCompletions: settleCompletions(metricsText),
    settleCreatePath: metricsText === undefined ? undefined : createPathFrom(metricsText),
    eventLoopDelay: { settle: settleLoopDelay(metricsText), bench: takeBenchLoopDelay() },
    benchCpuMs: (cpu.user + cpu.system) / 1000,
  };
}

type Usage = Readonly<{
  wallMs: number;
  /** CPU ms per process over the phase, with 'bench' (this process) and 'other' (the rest). */
  cpuMs: Record<string, number>;
  machineBusyMs: number;
  machineTotalMs: number;
  settleEventLoopUtilization: number | undefined;
  /** Settle's event-loop thread over the phase: CPU, waits for a CPU, preemptions. */
  settleMainThread: ThreadSchedule | undefined;
  /** Context switches of every thread of each process over the phase. */
  switches: Record<string, Switches>;
  /** Read and write system calls of the Node processes over the phase. */
  syscalls: Record<string, Syscalls>;
  timers: Record<string, TimerStats>;
  /** Orders Settle's histogram saw succeed during the phase, by bucket. */
  settleCompletions: Completions | undefined;
  /** Settle's histograms of a CreatePayment's parts over the phase. */
  settleCreatePath: CreatePath | undefined;
  /** Event-loop delay over the phase (read at its end). */
  eventLoopDelay: Readonly<{ settle: LoopDelay | undefined; bench: LoopDelay }>;
}>;

function usageBetween(
  before: Snapshot,
  after: Snapshot,
  extraCpu: Record<string, number> = {},
): Usage {
  const cpuMs: Record<string, number> = {};
  for (const [name, sample] of Object.entries(after.procs)) {
    const start = before.procs[name];
    if (sample !== undefined && start !== undefined) cpuMs[name] = sample.cpuMs - start.cpuMs;
  }
  cpuMs['bench'] = after.benchCpuMs - before.benchCpuMs;
  Object.assign(cpuMs, extraCpu);
  const switches = differences(before.switches, after.switches);
  const syscalls = differences(before.syscalls, after.syscalls);
  const machineBusyMs = after.machine.busyMs - before.machine.busyMs;
  const known = Object.values(cpuMs).reduce((sum, ms) => sum + ms, 0);
  cpuMs['other'] = Math.max(0, machineBusyMs - known);
  const timers: Record<string, TimerStats> = {};
  const beforeTimers = before.settleStats?.timers ?? {};
  for (const [name, timer] of Object.entries(after.settleStats?.timers ?? {})) {
    const start = beforeTimers[name] ?? { count: 0, totalMs: 0, maxMs: 0 };
    if (timer.count > start.count) {
      timers[name] = {
        count: timer.count - start.count,
        totalMs: timer.totalMs - start.totalMs,
        maxMs: timer.maxMs,
      };
    }
  }
  let settleEventLoopUtilization: number | undefined;
  const a = before.settleStats?.eventLoop;
  const b = after.settleStats?.eventLoop;
  if (a !== undefined && b !== undefined) {
    const active = b.active - a.active;
    const idle = b.idle - a.idle;
    settleEventLoopUtilization = active + idle > 0 ? active / (active + idle) : undefined;
  }
  const c0 = before.settleCompletions;
  const c1 = after.settleCompletions;
  const m0 = before.settleMainThread;
  const m1 = after.settleMainThread;
  return {
    wallMs: after.at - before.at,
    cpuMs,
    machineBusyMs,
    machineTotalMs: after.machine.totalMs - before.machine.totalMs,
    settleEventLoopUtilization,
    settleMainThread:
      m0 === undefined || m1 === undefined
        ? undefined
        : {
            runMs: m1.runMs - m0.runMs,
            waitMs: m1.waitMs - m0.waitMs,
            preemptions: m1.preemptions - m0.preemptions,
            wakeUps: m1.wakeUps - m0.wakeUps,
          },
    switches,
    syscalls,
    timers,
    eventLoopDelay: after.eventLoopDelay,
    settleCreatePath:
      before.settleCreatePath === undefined || after.settleCreatePath === undefined
        ? undefined
        : createPathBetween(before.settleCreatePath, after.settleCreatePath),
    settleCompletions:
      c0 === undefined || c1 === undefined
        ? undefined
        : {
            within: c1.within.map((n, i) => n - (c0.within[i] ?? 0)),
            total: c1.total - c0.total,
          },
  };
}

// ---------------------------------------------------------------------------------------------
// Phases

type CeilingRun = CeilingResult & {
  mariadbCpuMs: number;
  otherCpuMs: number;
  machineBusyMs: number;
};

async function runCeilingChild(options: Options, hotSeller: boolean): Promise<CeilingRun> {
  const url = withDatabaseName(
    options.mysqlBaseUrl,
    `settle_bench_ceil_${randomBytes(4).toString('hex')}`,
  );
  const drop = () => dropDatabase(url);
  cleanups.push(drop);
  const before = await snapshot(undefined);
  const args = [
    '--import',
    'tsx',
    'bench/ceiling.ts',
    '--mysql-url',
    url,
    '--concurrency',
    String(hotSeller ? options.concurrency * options.ordersPerPayment : options.concurrency),
    '--orders-per-payment',
    String(hotSeller ? 1 : options.ordersPerPayment),
    '--sellers',
    String(options.sellers),
    '--duration',
    String(options.durationMs / 1000),
    '--payments',
    String(options.paymentsMax),
    ...(hotSeller ? ['--hot-seller'] : []),
  ];
  const child = spawn(process.execPath, args, {
    cwd: REPO_ROOT,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: process.env['HOME'] ?? '/tmp' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8').slice(0, 10_000)));
  const killOnInterrupt = async () => {
    child.kill('SIGKILL');
  };
  cleanups.push(killOnInterrupt);
  const code = await new Promise<number | null>((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), options.durationMs + 120_000);
    child.once('exit', (exitCode) => {
      clearTimeout(timer);
      resolve(exitCode);
    });
  });
  cleanups.splice(cleanups.indexOf(killOnInterrupt), 1);
  const after = await snapshot(undefined);
  await drop();
  cleanups.splice(cleanups.indexOf(drop), 1);
  if (code !== 0) throw new Error(`the ceiling script failed (exit ${code}): ${stderr.trim()}`);
  const result = JSON.parse(stdout.trim().split('\n').pop() ?? '{}') as CeilingResult;
  const usage = usageBetween(before, after, {});
  // The child's own CPU is in its result; this process only waited.
  const mariadbCpuMs = usage.cpuMs['mariadbd'] ?? 0;
  return {
    ...result,
    mariadbCpuMs,
    otherCpuMs: Math.max(
      0,
      usage.machineBusyMs -
        mariadbCpuMs -
        (usage.cpuMs['nats-server'] ?? 0) -
        result.cpuMs -
        (usage.cpuMs['bench'] ?? 0),
    ),
    machineBusyMs: usage.machineBusyMs,
  };
}

type LoadPhase = Readonly<{
  name: string;
  load: LoadResult;
  usage: Usage;
  orders: number;
  ordersPerS: number;
  createMs: { p50: number; p95: number; p99: number };
  terminalMs: { p50: number; p95: number; p99: number; max: number };
  timedOut: number;
  notSucceeded: number;
  /** Payments seen terminal within each of COMPLETION_BOUNDS_MS of their create call, of all done. */
  within: Completions;
}>;

function summarize(name: string, load: LoadResult, usage: Usage): LoadPhase {
  const done = load.samples.filter((s) => s.terminalMs !== undefined);
  const orders = done.reduce((sum, s) => sum + s.orders, 0);
  const creates = load.samples.map((s) => s.createMs);
  const terminals = done.map((s) => s.terminalMs ?? 0);
  return {
    name,
    load,
    usage,
    orders,
    ordersPerS: (orders * 1000) / Math.max(1, load.elapsedMs),
    createMs: {
      p50: quantile(creates, 0.5),
      p95: quantile(creates, 0.95),
      p99: quantile(creates, 0.99),
    },
    terminalMs: {
      p50: quantile(terminals, 0.5),
      p95: quantile(terminals, 0.95),
      p99: quantile(terminals, 0.99),
      max: quantile(terminals, 1),
    },
    timedOut: load.samples.length - done.length,
    notSucceeded: done.filter((s) => s.state !== 'SUCCEEDED').length,
    within: {
      within: COMPLETION_BOUNDS_MS.map((ms) => terminals.filter((t) => t <= ms).length),
      total: terminals.length,
    },
  };
}

/**
 * Settle's main thread inside socket writes, per order, by writer and phase. A write on loopback
 * wakes its reader; on a busy machine the reader (a MariaDB connection thread, nats-server) then
 * often runs on the writer's vCPU first, and the event loop waits inside the write meanwhile.
 */
function socketWritesTable(
  profiled: readonly SettleProfiled[],
  profiles: Readonly<Record<string, ProfileSummary>>,
): string[] {
  const perOrder = (ms: number, orders: number) =>
    orders === 0 ? '–' : ((ms * 1000) / orders).toFixed(0);
  const phases = profiled.flatMap(({ phase, orders, profile }) => {
    const summary = profiles[profile];
    return summary === undefined ? [] : [{ phase, orders, summary }];
  });
  const writers = new Map<string, number>();
  for (const { summary } of phases) {
    for (const write of summary.writes)
      writers.set(write.caller, (writers.get(write.caller) ?? 0) + write.ms);
  }
  const top = [...writers.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 8)
    .map(([caller]) => caller);
  const rows = top.map((caller) => [
    caller,
    ...phases.map(({ summary, orders }) =>
      perOrder(summary.writes.find((write) => write.caller === caller)?.ms ?? 0, orders),
    ),
  ]);
  rows.push([
    'all socket writes',
    ...phases.map(({ summary, orders }) => perOrder(summary.writesMs, orders)),
  ]);
  rows.push([
    'everything else (busy)',
    ...phases.map(({ summary, orders }) => perOrder(summary.busyMs - summary.writesMs, orders)),
  ]);
  return [
    "Settle's main thread inside socket writes, µs per order (profile samples: on a busy machine the",
    "woken reader often runs on the writer's vCPU first, so this is mostly waiting for a CPU):",
    markdownTable(['writer', ...phases.map(({ phase }) => phase)], rows),
  ];
}

function describeCalibration(calibration: Calibration): string {
  return (
    `a fixed JS work unit takes ${calibration.hotUs.toFixed(0)} µs of CPU hot and ` +
    `${calibration.afterIdleUs.toFixed(0)} µs after ${calibration.idleMs} ms asleep ` +
    `(×${(calibration.afterIdleUs / calibration.hotUs).toFixed(1)}; bench/calibrate.ts)`
  );
}

async function setPspBehavior(
  stack: BenchStack,
  behavior: { autoPayCard: string; latencyMs: number },
) {
  const client = new PspServiceClient(stack.pspGrpc, grpc.credentials.createInsecure());
  try {
    await new Promise<void>((resolve, reject) =>
      client.setBehavior(
        { autoPayCard: behavior.autoPayCard, latencyMs: behavior.latencyMs },
        new grpc.Metadata(),
        { deadline: Date.now() + 5_000 },
        (error) => (error ? reject(error) : resolve()),
      ),
    );
  } finally {
    client.close();
  }
}

async function startTrackedStack(
  options: Options,
  settleEnv: Record<string, string>,
  pspNodeArgs: string[] = [],
) {
  const stack = await startStack({
    mysqlBaseUrl: options.mysqlBaseUrl,
    natsUrl: options.natsUrl,
    settleEnv: { ...settleEnv, ...options.settleEnv },
    pspNodeArgs,
    log,
  });
  cleanups.push(stack.stop);
  log(
    `started PSP mock (pid ${stack.psp.pid}) and Settle (pid ${stack.settle.pid}, gRPC ${stack.settleGrpc}), ` +
      `namespace ${stack.namespace}`,
  );
  return stack;
}

async function stopTrackedStack(stack: BenchStack): Promise<void> {
  const index = cleanups.indexOf(stack.stop);
  if (index >= 0) cleanups.splice(index, 1);
  await stack.stop();
}

function progressReporter(label: string, ordersPerPayment: number) {
  let last = Date.now();
  return (done: number) => {
    if (Date.now() - last < 2_000) return;
    last = Date.now();
    log(`  ${label}: ${done * ordersPerPayment} orders done`);
  };
}

type ThroughputResults = {
  spread: LoadPhase;
  half: LoadPhase | undefined;
  hot: LoadPhase | undefined;
  settlePeakRssBytes: number;
  pspPeakRssBytes: number;
  childOutputLines: Record<string, number>;
  invariants: Check[];
  profiles: Record<string, ProfileSummary> | undefined;
  /** Where create→terminal time went, per phase (from the transition history). */
  stages: Record<string, StageLatency[]>;
  /** With --profile: Settle's profiled phases, their orders and their key in `profiles`. */
  settleProfiled: SettleProfiled[];
};

type SettleProfiled = Readonly<{ phase: string; orders: number; profile: string }>;

async function throughputPhases(options: Options): Promise<ThroughputResults> {
  const profileDir = options.profile
    ? mkdtempSync(join(tmpdir(), 'settle-bench-prof-'))
    : undefined;
  const stack = await startTrackedStack(
    options,
    { ACTOR_IDLE_MS: String(options.actorIdleMs) },
    profileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${profileDir}`],
  );
  const profiles: Record<string, ProfileSummary> = {};
  const settleProfiled: SettleProfiled[] = [];
  const keepProfile = (name: string, text: string) => {
    if (options.profileKeepDir === undefined) return;
    mkdirSync(options.profileKeepDir, { recursive: true });
    writeFileSync(join(options.profileKeepDir, name), text);
    log(`  kept ${join(options.profileKeepDir, name)}`);
  };
  const summarizePspProfile = () => {
    if (profileDir === undefined) return;
    // One file per thread, named CPU.<date>.<time>.<pid>.<thread>.<seq>; the main thread is 0.
    const file = readdirSync(profileDir).find((name) => name.includes(`.${stack.psp.pid}.0.`));
    if (file !== undefined) {
      profiles['psp-mock (its whole life, start-up included)'] = summarizeProfile(
        join(profileDir, file),
      );
      keepProfile('psp-mock.cpuprofile', readFileSync(join(profileDir, file), 'utf8'));
    }
    rmSync(profileDir, { recursive: true, force: true });
  };
  // Settle's profile of one phase (fetched while the phase runs), kept with its order count.
  const profileSettle = () =>
    options.profile
      ? fetch(`${stack.settleHttp}/debug/profile?ms=${options.durationMs}`, {
          signal: AbortSignal.timeout(options.durationMs + 60_000),
        })
          .then((response) => response.json() as Promise<object>)
          .catch((error: unknown) => log(`  settle profile failed: ${String(error)}`))
      : undefined;
  const keepSettleProfile = async (
    pending: ReturnType<typeof profileSettle>,
    phase: string,
    orders: number,
  ) => {
    const profile = await pending;
    if (!profile) return;
    const key = `settle (${phase} phase)`;
    profiles[key] = summarizeProfile(profile);
    settleProfiled.push({ phase, orders, profile: key });
    keepProfile(`settle-${phase.replace(/ /g, '-')}.cpuprofile`, JSON.stringify(profile));
  };
  await setPspBehavior(stack, { autoPayCard: '4242424242424242', latencyMs: options.pspLatencyMs });
  const watcher = new CompletionWatcher(stack.mysqlUrl, {
    natsUrl: options.natsUrl,
    subject: topologyNames(stack.namespace, 1).paymentEventSubjectAll,
  });
  const driver = new LoadDriver(stack.settleGrpc, watcher);
  cleanups.push(async () => {
    driver.close();
    await watcher.stop();
  });
  let paymentsCreated = 0;
  const shape = {
    ordersPerPayment: options.ordersPerPayment,
    sellers: options.sellers,
    hotSeller: undefined,
  };
  try {
    // Long enough for V8 to optimise the hot paths of every process: after 3 s, the spread phase
    // (the first one measured) ran 3–7 % slower than after 10 s, in A/B runs of one hour.
    const warmupMs = options.warmupMs;
    log(`warm-up: ${warmupMs / 1000} s closed loop (not measured)`);
    const warm = await driver.closedLoop({
      shape,
      concurrency: options.concurrency,
      durationMs: warmupMs,
      paymentsMax: options.paymentsMax,
    });
    paymentsCreated += warm.samples.length;
    checkInterrupted();

    log(
      `spread: closed loop, ${options.concurrency} payments in flight, ${options.sellers} sellers`,
    );
    let before = await snapshot(stack);
    const settleProfile = profileSettle();
    const spreadLoad = await driver.closedLoop({
      shape,
      concurrency: options.concurrency,
      durationMs: options.durationMs,
      paymentsMax: options.paymentsMax,
      onProgress: progressReporter('spread', options.ordersPerPayment),
    });
    paymentsCreated += spreadLoad.samples.length;
    const spread = summarize('spread', spreadLoad, usageBetween(before, await snapshot(stack)));
    await keepSettleProfile(settleProfile, 'spread', spread.orders);
    log(
      `  spread: ${spread.ordersPerS.toFixed(0)} orders/s, create→terminal p99 ${spread.terminalMs.p99} ms`,
    );
    checkInterrupted();

    const openLoop = openLoopName(options);
    const halfRate = Math.max(
      1,
      (spread.ordersPerS / options.ordersPerPayment) * (options.openLoopPercent / 100),
    );
    log(`${openLoop}: open loop, ${halfRate.toFixed(0)} payments/s`);
    before = await snapshot(stack);
    const halfProfile = profileSettle();
    const halfLoad = await driver.openLoop({
      shape,
      ratePerS: halfRate,
      durationMs: options.durationMs,
      paymentsMax: options.paymentsMax,
      inFlightMax: options.concurrency * 8,
    });
    paymentsCreated += halfLoad.samples.length;
    const half = summarize(openLoop, halfLoad, usageBetween(before, await snapshot(stack)));
    await keepSettleProfile(halfProfile, openLoop.replace(/ /g, '-'), half.orders);
    log(
      `  ${openLoop}: ${half.ordersPerS.toFixed(0)} orders/s, create→terminal p99 ${half.terminalMs.p99} ms`,
    );
    checkInterrupted();

    let hot: LoadPhase | undefined;
    if (options.hotSeller) {
      log(`hot seller: closed loop, every order to seller-hot`);
      before = await snapshot(stack);
      // A payment has one order per seller, so the hot seller gets one-order payments, as many
      // more of them in flight as a payment has orders elsewhere.
      const hotLoad = await driver.closedLoop({
        shape: { ...shape, ordersPerPayment: 1, hotSeller: 'seller-hot' },
        concurrency: options.concurrency * options.ordersPerPayment,
        durationMs: options.durationMs,
        paymentsMax: options.paymentsMax,
        onProgress: progressReporter('hot seller', options.ordersPerPayment),
      });
      paymentsCreated += hotLoad.samples.length;
      hot = summarize('hot seller', hotLoad, usageBetween(before, await snapshot(stack)));
      log(`  hot seller: ${hot.ordersPerS.toFixed(0)} orders/s`);
    }
    const settleSample = sampleProcess(stack.settle.pid);
    const pspSample = sampleProcess(stack.psp.pid);
    log('checking invariants');
    const invariants = await checkInvariants({
      mysqlUrl: stack.mysqlUrl,
      pspMysqlUrl: stack.pspMysqlUrl,
      expect: 'terminal',
      paymentsCreated,
    });
    const stages: Record<string, StageLatency[]> = {};
    for (const phase of [spread, half, hot]) {
      if (phase === undefined) continue;
      const seenAt = new Map<string, number>();
      for (const sample of phase.load.samples) {
        if (sample.terminalMs !== undefined)
          seenAt.set(sample.paymentId, sample.startedAt + sample.terminalMs);
      }
      stages[phase.name] = await stageLatencies(
        stack.mysqlUrl,
        phase.load.samples.map((sample) => sample.paymentId),
        seenAt,
      );
    }
    // The PSP mock's profile is written when it exits.
    await stopTrackedStack(stack);
    summarizePspProfile();
    return {
      profiles,
      settleProfiled,
      spread,
      half,
      hot,
      settlePeakRssBytes: settleSample?.hwmBytes ?? 0,
      pspPeakRssBytes: pspSample?.hwmBytes ?? 0,
      childOutputLines: { settle: stack.settle.lines(), 'psp-mock': stack.psp.lines() },
      invariants,
      stages,
    };
  } catch (error) {
    log(`settle output (last lines):\n${stack.settle.output().join('\n')}`);
    throw error;
  } finally {
    driver.close();
    await watcher.stop();
    await stopTrackedStack(stack);
  }
}

type MemoryResults = {
  orders: number;
  createMs: number;
  liveActorsPeak: number;
  liveActorsAfterIdle: number;
  passivated: number;
  rssWithActorsBytes: number;
  rssAfterIdleBytes: number;
  heapUsedAfterIdleBytes: number;
  peakRssBytes: number;
  invariants: Check[];
};

async function memoryPhase(options: Options): Promise<MemoryResults> {
  // The janitor would start re-checking these orders with the PSP after JANITOR_STUCK_MS (and
  // so wake their actors): pushed past the phase, so passivation is measured alone.
  const stack = await startTrackedStack(options, {
    ACTOR_IDLE_MS: String(options.actorIdleMs),
    JANITOR_STUCK_MS: String(30 * 60_000),
  });
  await setPspBehavior(stack, { autoPayCard: '', latencyMs: 0 });
  const watcher = new CompletionWatcher(stack.mysqlUrl, {
    natsUrl: options.natsUrl,
    subject: topologyNames(stack.namespace, 1).paymentEventSubjectAll,
  });
  const driver = new LoadDriver(stack.settleGrpc, watcher);
  const target = parseMysqlUrl(stack.mysqlUrl);
  const pool = createPool({
    ...serverAddress(target),
    database: target.database,
    connectionLimit: 1,
    connectTimeout: 5_000,
  });
  try {
    const perPayment = Math.min(10, options.idleOrders, options.sellers);
    const paymentsWanted = Math.ceil(options.idleOrders / perPayment);
    const orders = paymentsWanted * perPayment;
    log(`memory: creating ${orders} orders (${perPayment} per payment), auto-pay off`);
    const started = Date.now();
    let created = 0;
    const errors: Record<string, number> = {};
    let liveActorsPeak = 0;
    let rssWithActorsBytes = 0;
    const registeredCount = async () => {
      const [rows] = await pool.query<RowDataPacket[]>(
        'SELECT COUNT(*) AS n FROM payment_order WHERE psp_token IS NOT NULL',
      );
      return Number(rows[0]?.['n'] ?? 0);
    };
    const sampleActors = async () => {
      const stats = await settleStats(stack);
      if (stats !== undefined && stats.actors.live > liveActorsPeak) {
        liveActorsPeak = stats.actors.live;
        rssWithActorsBytes = sampleProcess(stack.settle.pid)?.rssBytes ?? 0;
      }
    };
    let next = 0;
    let lastLog = Date.now();
    await Promise.all(
      Array.from({ length: options.concurrency }, async () => {
        while (next < paymentsWanted && !interrupted) {
          next += 1;
          const payment = await driver.create(
            { ordersPerPayment: perPayment, sellers: options.sellers, hotSeller: undefined },
            errors,
          );
          if (payment !== undefined) created += 1;
          if (Date.now() - lastLog > 2_000) {
            lastLog = Date.now();
            await sampleActors();
            log(
              `  memory: ${created * perPayment} orders created, ${liveActorsPeak} live actors at most`,
            );
          }
        }
      }),
    );
    checkInterrupted();
    // Registration trails creation; give up when it stops moving for longer than Settle's
    // retry backoff adds up to (31 s), or after an overall bound.
    const registerDeadline = Date.now() + Math.max(60_000, orders * 5);
    let registered = 0;
    let progressAt = Date.now();
    while (Date.now() < registerDeadline && Date.now() - progressAt < 40_000 && !interrupted) {
      const now = await registeredCount();
      if (now > registered) progressAt = Date.now();
      registered = now;
      await sampleActors();
      if (registered >= created * perPayment) break;
      await sleep(500);
    }
    const createMs = Date.now() - started;
    for (const [code, n] of Object.entries(errors)) log(`  memory: CreatePayment ${code} × ${n}`);
    log(
      `  memory: ${registered} orders registered at the PSP in ${(createMs / 1000).toFixed(1)} s; waiting for passivation`,
    );
    const idleDeadline = Date.now() + options.actorIdleMs * 3 + 15_000;
    let stats = await settleStats(stack);
    while (Date.now() < idleDeadline && !interrupted) {
      stats = await settleStats(stack);
      if (stats !== undefined && stats.actors.live <= Math.max(10, orders / 1000)) break;
      await sleep(250);
    }
    // A full collection first: the heap figure then counts what is really kept.
    const collected = await settleStats(stack, { gc: true });
    await sleep(1_000);
    const sample = sampleProcess(stack.settle.pid);
    log('checking invariants (idle orders)');
    const invariants = await checkInvariants({
      mysqlUrl: stack.mysqlUrl,
      pspMysqlUrl: stack.pspMysqlUrl,
      expect: 'idle',
      paymentsCreated: created,
    });
    return {
      orders: registered,
      createMs,
      liveActorsPeak,
      liveActorsAfterIdle: stats?.actors.live ?? -1,
      passivated: stats?.actors.passivated ?? -1,
      rssWithActorsBytes,
      rssAfterIdleBytes: sample?.rssBytes ?? 0,
      heapUsedAfterIdleBytes: collected?.memory.heapUsedBytes ?? 0,
      peakRssBytes: sample?.hwmBytes ?? 0,
      invariants,
    };
  } finally {
    await pool.end();
    driver.close();
    await watcher.stop();
    await stopTrackedStack(stack);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const MB = 1024 * 1024;
const f0 = (n: number | undefined) => (n === undefined || Number.isNaN(n) ? '–' : n.toFixed(0));
const pct = (n: number) => `${(n * 100).toFixed(0)} %`;

function cpuRow(phase: LoadPhase): string[] {
  const perOrder = (name: string) =>
    ((phase.usage.cpuMs[name] ?? 0) / Math.max(1, phase.orders)).toFixed(2);
  const cores = phase.usage.machineBusyMs / Math.max(1, phase.usage.wallMs);
  return [
    phase.name,
    perOrder('settle'),
    perOrder('psp-mock'),
    perOrder('mariadbd'),
    perOrder('nats-server'),
    perOrder('bench'),
    perOrder('other'),
    cores.toFixed(2),
    phase.usage.settleEventLoopUtilization === undefined
      ? '–'
      : pct(phase.usage.settleEventLoopUtilization),
  ];
}

/**
 * A table of two counts per order for each process, by phase ("a / b"), for the counters the
 * bench reads from /proc; a process with no count in a phase shows –.
 */
function perOrderPairs<T extends Readonly<Record<string, number>>>(
  title: string,
  phases: readonly LoadPhase[],
  names: readonly string[],
  counts: (usage: Usage) => Readonly<Record<string, T>>,
  pair: (counted: T) => readonly [number, number],
): string[] {
  const shown = phases.filter((phase) => Object.keys(counts(phase.usage)).length > 0);
  if (shown.length === 0) return [];
  const cell = (phase: LoadPhase, name: string) => {
    const counted = counts(phase.usage)[name];
    if (counted === undefined) return '–';
    const orders = Math.max(1, phase.orders);
    const [a, b] = pair(counted);
    return `${(a / orders).toFixed(2)} / ${(b / orders).toFixed(2)}`;
  };
  return [
    title,
    markdownTable(
      ['phase', ...names],
      shown.map((phase) => [phase.name, ...names.map((name) => cell(phase, name))]),
    ),
  ];
}

/**
 * Context switches per order of every thread of each process, by phase: how often each slept
 * and was woken, and how often it lost its CPU while it could still run. Batching shows here:
 * the fewer orders share a packet or a message, the more wake-ups each order costs.
 */
function switchesTable(phases: readonly LoadPhase[]): string[] {
  return perOrderPairs(
    'Context switches per order, every thread of each process (/proc/<pid>/task/*/status): ' +
      'woken / preempted.',
    phases,
    ['settle', 'psp-mock', 'mariadbd', 'nats-server', 'bench'],
    (usage) => usage.switches,
    (counted) => [counted.wakeUps, counted.preemptions],
  );
}

/**
 * Read and write system calls per order of the Node processes, by phase. A Node process reads a
 * socket once each time it is woken for it and writes about once per packet it sends: the fewer
 * orders share a wake-up or a packet, the more of both each order costs. MariaDB answers each
 * statement of a one-trip packet with a packet of its own (docs/performance.md, "Over MariaDB's
 * Unix socket").
 */
function syscallsTable(phases: readonly LoadPhase[]): string[] {
  return perOrderPairs(
    'System calls per order of the Node processes (/proc/<pid>/io): reads / writes. A socket is ' +
      'read once per wake-up; MariaDB sends a packet per statement.',
    phases,
    ['settle', 'psp-mock', 'bench'],
    (usage) => usage.syscalls,
    (counted) => [counted.reads, counted.writes],
  );
}

function breakdown(phase: LoadPhase): string[][] {
  const entries = Object.entries(phase.usage.timers);
  const sqlTotal = entries
    .filter(([n]) => n.startsWith('sql.'))
    .reduce((s, [, t]) => s + t.totalMs, 0);
  const sqlCount = entries
    .filter(([n]) => n.startsWith('sql.'))
    .reduce((s, [, t]) => s + t.count, 0);
  const orders = Math.max(1, phase.orders);
  const rows: string[][] = [
    [
      'all SQL statements (Settle)',
      (sqlCount / orders).toFixed(1),
      (sqlTotal / orders).toFixed(2),
      sqlCount === 0 ? '–' : (sqlTotal / sqlCount).toFixed(2),
    ],
  ];
  for (const [name, timer] of entries.sort((a, b) => b[1].totalMs - a[1].totalMs).slice(0, 12)) {
    rows.push([
      name,
      (timer.count / orders).toFixed(2),
      (timer.totalMs / orders).toFixed(2),
      (timer.totalMs / timer.count).toFixed(2),
    ]);
  }
  return rows;
}

/** The performance goals, checked against this run. */
function goalsOf(
  options: Options,
  ceiling: CeilingRun,
  { spread, half, hot }: ThroughputResults,
  memory: MemoryResults | undefined,
): GoalResult[] {
  return checkGoals({
    ceilingOrdersPerS: ceiling.ordersPerS,
    spreadOrdersPerS: spread.ordersPerS,
    pspLatencyMs: options.pspLatencyMs,
    ...(half !== undefined && {
      openLoop: { percent: options.openLoopPercent, p99Ms: half.terminalMs.p99 },
    }),
    ...(hot !== undefined && { hotOrdersPerS: hot.ordersPerS }),
    ...(memory !== undefined && {
      idle: { orders: memory.orders, rssAfterPassivationBytes: memory.rssAfterIdleBytes },
    }),
  });
}

function report(
  options: Options,
  calibration: Calibration,
  ceiling: { spread: CeilingRun; hot: CeilingRun | undefined },
  throughput: ThroughputResults,
  memory: MemoryResults | undefined,
  goals: readonly GoalResult[],
): string {
  const { spread, half, hot } = throughput;
  const out: string[] = [];
  out.push(
    `Settle benchmark: ${options.concurrency} payments in flight, ${options.ordersPerPayment} order(s) per payment, ` +
      `${options.sellers} sellers, PSP latency ${options.pspLatencyMs} ms, ${options.durationMs / 1000} s per phase after a ${options.warmupMs / 1000} s warm-up`,
  );
  out.push(`Machine: ${describeCalibration(calibration)}`);
  out.push(`MySQL: ${options.mysqlWay}`);
  out.push('');
  out.push(
    markdownTable(
      [
        'load',
        'ceiling orders/s',
        'Settle orders/s',
        'Settle/ceiling',
        'create p50/p95/p99 ms',
        'create→terminal p50/p95/p99 ms',
      ],
      [
        [
          `spread (closed loop)`,
          f0(ceiling.spread.ordersPerS),
          f0(spread.ordersPerS),
          pct(spread.ordersPerS / ceiling.spread.ordersPerS),
          `${f0(spread.createMs.p50)} / ${f0(spread.createMs.p95)} / ${f0(spread.createMs.p99)}`,
          `${f0(spread.terminalMs.p50)} / ${f0(spread.terminalMs.p95)} / ${f0(spread.terminalMs.p99)}`,
        ],
        ...(half === undefined
          ? []
          : [
              [
                `${half.name} (open loop)`,
                '–',
                f0(half.ordersPerS),
                '–',
                `${f0(half.createMs.p50)} / ${f0(half.createMs.p95)} / ${f0(half.createMs.p99)}`,
                `${f0(half.terminalMs.p50)} / ${f0(half.terminalMs.p95)} / ${f0(half.terminalMs.p99)}`,
              ],
            ]),
        ...(hot === undefined || ceiling.hot === undefined
          ? []
          : [
              [
                `hot seller (closed loop)`,
                f0(ceiling.hot.ordersPerS),
                f0(hot.ordersPerS),
                pct(hot.ordersPerS / ceiling.hot.ordersPerS),
                `${f0(hot.createMs.p50)} / ${f0(hot.createMs.p95)} / ${f0(hot.createMs.p99)}`,
                `${f0(hot.terminalMs.p50)} / ${f0(hot.terminalMs.p95)} / ${f0(hot.terminalMs.p99)}`,
              ],
            ]),
      ],
    ),
  );
  if (hot !== undefined)
    out.push(`hot seller / spread: ${pct(hot.ordersPerS / spread.ordersPerS)}`);
  const stagePhases = Object.entries(throughput.stages).filter(([, list]) => list.length > 0);
  if (stagePhases.length > 0) {
    out.push(
      'Where create→terminal time goes (gaps between the times the actor decided each transition, then to the load generator seeing the payment final; p50 / p95 / p99 ms, each stage on its own, so they do not add up to the total):',
    );
    const names = [...new Set(stagePhases.flatMap(([, list]) => list.map((s) => s.stage)))];
    out.push(
      markdownTable(
        ['stage', ...stagePhases.map(([phase]) => phase)],
        names.map((stage) => [
          stage,
          ...stagePhases.map(([, list]) => {
            const found = list.find((s) => s.stage === stage);
            return found === undefined
              ? '–'
              : `${f0(found.p50)} / ${f0(found.p95)} / ${f0(found.p99)}`;
          }),
        ]),
      ),
    );
  }
  const measured = [spread, half, hot].filter((phase): phase is LoadPhase => phase !== undefined);
  if (measured.some((phase) => phase.usage.settleCompletions !== undefined)) {
    out.push(
      'Share finished within a bound: the load generator (payments: create call → terminal seen) · ' +
        "Settle's own histogram for operators (orders: created → SUCCEEDED committed, " +
        'settle_payment_order_completion_seconds):',
    );
    const share = (c: Completions | undefined, i: number) =>
      // One decimal: the goal is a p99, so 98.6 % must not read as 99 %.
      c === undefined || c.total === 0
        ? '–'
        : `${((100 * (c.within[i] ?? 0)) / c.total).toFixed(1)} %`;
    out.push(
      markdownTable(
        ['phase', ...COMPLETION_BOUNDS_MS.map((ms) => `≤ ${ms} ms`), 'orders (Settle)'],
        measured.map((phase) => [
          phase.name,
          ...COMPLETION_BOUNDS_MS.map(
            (_, i) => `${share(phase.within, i)} · ${share(phase.usage.settleCompletions, i)}`,
          ),
          String(phase.usage.settleCompletions?.total ?? '–'),
        ]),
      ),
    );
  }
  if (measured.some((phase) => phase.usage.settleCreatePath !== undefined)) {
    out.push(
      "Where a CreatePayment's time goes, share of calls within a bound: the load generator's " +
        "calls answered at their first attempt, Settle's handling of it (grpc_server_handling_seconds), its creation's commit " +
        '(settle_group_commit_seconds, creations, per batch) and the PSP call that follows ' +
        "(settle_psp_call_seconds, register); a tail the client sees and Settle's handling " +
        "does not is outside the handler (the transport, or waiting for Settle's event loop):",
    );
    out.push(
      markdownTable(
        ['phase', 'measure', ...CREATE_PATH_BOUNDS_MS.map((ms) => `≤ ${ms} ms`), 'count'],
        measured.flatMap((phase) =>
          createPathRows(
            phase.name,
            // Answered at the first attempt: a retried call's time holds several server calls.
            withinOf(
              phase.load.samples
                .filter((sample) => sample.attempts === 1)
                .map((sample) => sample.createMs),
            ),
            phase.usage.settleCreatePath,
          ),
        ),
      ),
    );
  }
  // Noise-robust view: the rate if the processes doing this work had every core to themselves.
  const cores = cpus().length;
  const capacity = (cpuMsPerOrder: number) => (cores * 1000) / Math.max(0.001, cpuMsPerOrder);
  const perOrder = (phase: LoadPhase, names: string[]) =>
    names.reduce((sum, name) => sum + (phase.usage.cpuMs[name] ?? 0), 0) /
    Math.max(1, phase.orders);
  const ceilingCpu =
    (ceiling.spread.cpuMs + ceiling.spread.mariadbCpuMs) / Math.max(1, ceiling.spread.orders);
  const pipeline = ['settle', 'psp-mock', 'mariadbd', 'nats-server', 'bench'];
  out.push(
    `CPU-derived capacity on ${cores} cores (1 000 ms of CPU per core-second / CPU ms per order; ` +
      `mariadbd's CPU includes other users' queries, so these are lower bounds): ` +
      `ceiling ${f0(capacity(ceilingCpu))} orders/s (script + mariadbd); ` +
      `Settle spread ${f0(capacity(perOrder(spread, pipeline)))} orders/s with the PSP mock and the ` +
      `load generator, ${f0(capacity(perOrder(spread, ['settle', 'mariadbd', 'nats-server'])))} ` +
      `without them; Settle alone (one event loop) ${f0(1000 / Math.max(0.001, perOrder(spread, ['settle'])))} orders/s`,
  );
  const noise: Array<[string, number]> = [
    ['ceiling', ceiling.spread.otherCpuMs / Math.max(1, ceiling.spread.elapsedMs * cpus().length)],
    ...[spread, half, hot]
      .filter((p): p is LoadPhase => p !== undefined)
      .map((p): [string, number] => [
        p.name,
        (p.usage.cpuMs['other'] ?? 0) / Math.max(1, p.usage.machineTotalMs),
      ]),
  ];
  out.push(
    `other users' share of this machine's CPU during each phase: ${noise
      .map(([name, share]) => `${name} ${pct(share)}`)
      .join(', ')} (high values mean disturbed numbers)`,
  );
  out.push('');
  out.push(
    'CPU ms per order (process CPU time over the phase / orders finished), machine cores busy, Settle event-loop utilisation:',
  );
  out.push(
    markdownTable(
      [
        'phase',
        'settle',
        'psp-mock',
        'mariadbd',
        'nats-server',
        'bench',
        'other',
        'cores busy',
        'settle ELU',
      ],
      [
        [
          'ceiling (spread)',
          '–',
          '–',
          (ceiling.spread.mariadbCpuMs / Math.max(1, ceiling.spread.orders)).toFixed(2),
          '–',
          (ceiling.spread.cpuMs / Math.max(1, ceiling.spread.orders)).toFixed(2),
          (ceiling.spread.otherCpuMs / Math.max(1, ceiling.spread.orders)).toFixed(2),
          (ceiling.spread.machineBusyMs / Math.max(1, ceiling.spread.elapsedMs)).toFixed(2),
          '–',
        ],
        cpuRow(spread),
        ...(half === undefined ? [] : [cpuRow(half)]),
        ...(hot === undefined ? [] : [cpuRow(hot)]),
      ],
    ),
  );
  out.push(
    `("bench" is the load generator, or the ceiling script in the ceiling row; "other" is CPU no listed process used: other users of this shared machine.)`,
  );
  out.push(...switchesTable([spread, half, hot].filter((p) => p !== undefined)));
  out.push(...syscallsTable([spread, half, hot].filter((p) => p !== undefined)));
  const scheduled = [spread, half, hot].filter(
    (p): p is LoadPhase => p !== undefined && p.usage.settleMainThread !== undefined,
  );
  if (scheduled.length > 0) {
    out.push(
      "Settle's event-loop thread per order (/proc/<pid>/task/<pid>/schedstat and status): time on " +
        'a CPU, time runnable but waiting for one, times preempted, and times it slept and was woken.',
      'Work that comes in small pieces (fewer orders per wake-up) runs slower cold (see Machine above) and is preempted more:',
    );
    out.push(
      markdownTable(
        ['phase', 'on a CPU ms', 'waiting for a CPU ms', 'preempted', 'woken'],
        scheduled.map((p) => {
          const thread = p.usage.settleMainThread as ThreadSchedule;
          const orders = Math.max(1, p.orders);
          return [
            p.name,
            (thread.runMs / orders).toFixed(2),
            (thread.waitMs / orders).toFixed(2),
            (thread.preemptions / orders).toFixed(2),
            (thread.wakeUps / orders).toFixed(2),
          ];
        }),
      ),
    );
  }
  out.push(
    'Event-loop delay over each phase, p50 / p99 / max ms (monitorEventLoopDelay: how much later ' +
      "than due a 10 ms timer ran; Settle's from its nodejs_eventloop_lag_* metrics, less the 10 " +
      'ms interval they include): a callback ready in ' +
      'that process waited this long for its event loop, so a tail here is in every latency ' +
      'the load generator measures (its own delay included, since it times the calls):',
  );
  const delay = (d: LoopDelay | undefined) =>
    d === undefined ? '–' : `${d.p50.toFixed(1)} / ${d.p99.toFixed(1)} / ${f0(d.max)}`;
  out.push(
    markdownTable(
      ['phase', 'settle', 'load generator'],
      measured.map((p) => [
        p.name,
        delay(p.usage.eventLoopDelay.settle),
        delay(p.usage.eventLoopDelay.bench),
      ]),
    ),
  );
  out.push(
    `peak RSS (VmHWM): settle ${f0(throughput.settlePeakRssBytes / MB)} MB, psp-mock ${f0(throughput.pspPeakRssBytes / MB)} MB; ` +
      `log lines at LOG_LEVEL=warn: settle ${throughput.childOutputLines['settle'] ?? 0}, psp-mock ${throughput.childOutputLines['psp-mock'] ?? 0}`,
  );
  out.push(
    "(mariadbd and nats-server are shared by everyone on this machine: their CPU includes other users' work.)",
  );
  out.push('');
  out.push(
    'Where Settle waits, spread phase (timers are wall time of awaited calls, they overlap across orders):',
  );
  out.push(markdownTable(['timer', 'calls/order', 'ms/order', 'ms/call'], breakdown(spread)));
  if (throughput.settleProfiled.length > 0)
    out.push('', ...socketWritesTable(throughput.settleProfiled, throughput.profiles ?? {}));
  for (const [name, profile] of Object.entries(throughput.profiles ?? {})) {
    out.push('');
    out.push(`${name} CPU profile, ${f0(profile.busyMs)} ms busy; self time by area:`);
    out.push(
      markdownTable(
        ['area', 'ms', 'share'],
        profile.areas.map((a) => [a.area, f0(a.ms), pct(a.share)]),
      ),
    );
    out.push(
      'the same, with Node internals and natives charged to the package or src/ folder calling them:',
    );
    out.push(
      markdownTable(
        ['caller', 'ms', 'share'],
        profile.callers.map((a) => [a.area, f0(a.ms), pct(a.share)]),
      ),
    );
    out.push('hottest functions:');
    out.push(
      markdownTable(
        ['function', 'ms', 'share'],
        profile.functions.map((f) => [f.name.slice(0, 90), f0(f.ms), pct(f.share)]),
      ),
    );
  }
  if (memory !== undefined) {
    out.push('');
    out.push(
      markdownTable(
        ['memory', 'value'],
        [
          ['idle orders (EXECUTING, registered, unpaid)', String(memory.orders)],
          ['created and registered in', `${(memory.createMs / 1000).toFixed(1)} s`],
          ['live actors, peak seen', String(memory.liveActorsPeak)],
          ['Settle RSS at that peak', `${f0(memory.rssWithActorsBytes / MB)} MB`],
          [
            `live actors after ACTOR_IDLE_MS=${options.actorIdleMs}`,
            String(memory.liveActorsAfterIdle),
          ],
          ['actors passivated', String(memory.passivated)],
          ['Settle RSS after passivation', `${f0(memory.rssAfterIdleBytes / MB)} MB`],
          [
            'Settle heap used after passivation and a full GC',
            `${f0(memory.heapUsedAfterIdleBytes / MB)} MB`,
          ],
          ['Settle peak RSS (VmHWM)', `${f0(memory.peakRssBytes / MB)} MB`],
        ],
      ),
    );
  }
  out.push('');
  const phases = [spread, half, hot].filter((p): p is LoadPhase => p !== undefined);
  const problems = phases.flatMap((p) => [
    ...(p.timedOut > 0
      ? [`${p.name}: ${p.timedOut} payments not terminal within the timeout`]
      : []),
    ...(p.notSucceeded > 0 ? [`${p.name}: ${p.notSucceeded} payments ended not SUCCEEDED`] : []),
    ...Object.entries(p.load.createErrors).map(
      ([code, n]) => `${p.name}: CreatePayment ${code} × ${n}`,
    ),
    ...(p.load.skipped > 0
      ? [`${p.name}: ${p.load.skipped} starts skipped (too many in flight)`]
      : []),
  ]);
  for (const problem of problems) out.push(`note: ${problem}`);
  out.push(
    'The performance goals, for this run only (a verdict needs its phase run on the goal\'s terms; README, "Performance", gives every full run):',
  );
  out.push(goalsTable(goals));
  out.push('');
  const checks = [...throughput.invariants, ...(memory?.invariants ?? [])];
  out.push('Invariants:');
  for (const check of checks)
    out.push(`  ${check.ok ? 'ok  ' : 'FAIL'} ${check.name}: ${check.detail}`);
  return out.join('\n');
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const parsed = parseOptions(process.argv.slice(2));
  const route = await chooseMysqlRoute(parsed.mysqlBaseUrl, parsed.mysqlTransport);
  const options: Options = { ...parsed, mysqlBaseUrl: route.url, mysqlWay: route.way };
  log(`MySQL: ${route.way}`);
  log(
    `bench: ${options.quick ? 'quick' : 'full'} run; machine ${cpus().length} cores, ` +
      `load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  const calibration = await calibrate();
  log(`machine: ${describeCalibration(calibration)}`);
  log(`ceiling (spread): the same writes without Settle, ${options.concurrency} in flight`);
  const ceilingSpread = await runCeilingChild(options, false);
  log(
    `  ceiling spread: ${ceilingSpread.ordersPerS.toFixed(0)} orders/s (${ceilingSpread.commitsPerOrder} commits, ${ceilingSpread.statementsPerOrder} statements per order)`,
  );
  checkInterrupted();
  let ceilingHot: CeilingRun | undefined;
  if (options.hotSeller) {
    log(`ceiling (hot seller)`);
    ceilingHot = await runCeilingChild(options, true);
    log(`  ceiling hot seller: ${ceilingHot.ordersPerS.toFixed(0)} orders/s`);
  }
  checkInterrupted();
  const throughput = await throughputPhases(options);
  checkInterrupted();
  const memory = options.idleOrders > 0 ? await memoryPhase(options) : undefined;

  const goals = goalsOf(options, ceilingSpread, throughput, memory);
  const text = report(
    options,
    calibration,
    { spread: ceilingSpread, hot: ceilingHot },
    throughput,
    memory,
    goals,
  );
  process.stdout.write(`\n${text}\n`);
  const checks = [...throughput.invariants, ...(memory?.invariants ?? [])];
  const phases = [throughput.spread, throughput.half, throughput.hot].filter(
    (p) => p !== undefined,
  );
  const completed = phases.every((p) => p.timedOut === 0 && p.notSucceeded === 0 && p.orders > 0);
  if (options.json !== undefined) {
    const strip = (phase: LoadPhase | undefined) =>
      phase === undefined
        ? undefined
        : {
            ...phase,
            load: { ...phase.load, samples: undefined, payments: phase.load.samples.length },
          };
    writeFileSync(
      options.json,
      `${JSON.stringify(
        {
          options,
          startedAt: new Date(runStarted).toISOString(),
          calibration,
          ceiling: { spread: ceilingSpread, hot: ceilingHot },
          spread: strip(throughput.spread),
          half: strip(throughput.half),
          hot: strip(throughput.hot),
          stages: throughput.stages,
          settlePeakRssBytes: throughput.settlePeakRssBytes,
          pspPeakRssBytes: throughput.pspPeakRssBytes,
          memory,
          goals,
          invariants: checks,
          ok: completed && checks.every((c) => c.ok),
        },
        null,
        2,
      )}\n`,
    );
    log(`wrote ${options.json}`);
  }
  if (!completed || !checks.every((check) => check.ok)) {
    log('FAILED: a phase did not complete or an invariant does not hold');
    process.exitCode = 1;
  }
}

main()
  .catch((error: unknown) => {
    log(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exitCode = 1;
  })
  .finally(async () => {
    await cleanUp();
    if (!interrupted) process.exit(process.exitCode ?? 0);
  });
