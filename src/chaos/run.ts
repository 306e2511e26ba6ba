/**
 * One chaos run, start to finish: plan (seeded), start a throw-away cluster, drive payments while
 * the planned faults happen, heal everything, wait (bounded) for every order to end, check the
 * invariants, and clean up. Used by `npm run chaos` (src/chaos/main.ts) and by the test suite
 * (test/chaos/chaos.test.ts).
 */
import { setMaxListeners } from 'node:events';
import { sql } from 'kysely';
import { ChaosCluster } from './cluster.js';
import {
  FAULT_KINDS,
  FaultInjector,
  faultsPerKind,
  planFaults,
  type PlannedFault,
} from './faults.js';
import { evaluate, lostOrders, observe, readDeadLetters, type Evaluation } from './invariants.js';
import { sleep } from './processes.js';
import { checkHealth } from './rpc.js';
import { DeadLetterState } from '../client/index.js';
import { TERMINAL_STATES } from '../domain/payment-order.js';
import { Rng } from './random.js';
import { PaymentDriver, planPayments, type DriverStats } from './workload.js';

export type ChaosOptions = Readonly<{
  seed: number;
  payments: number;
  durationMs: number;
  nodes: number;
  /** The longest wait, after the faults end, for every order to end. */
  settleMs: number;
  /** Faults of each kind; by default from the duration (faultsPerKind). */
  perKind?: number;
  /** Share of orders paid with the card that is always declined. */
  declineShare?: number;
  /** Share of orders never paid: they must expire. */
  abandonShare?: number;
  /** ORDER_EXPIRY_MS of the nodes; the settle-down waits for the abandoned orders to expire. */
  orderExpiryMs?: number;
  mysqlUrl: string;
  natsUrl: string;
  baseEnv: Readonly<Record<string, string | undefined>>;
  logDir: string;
  /** Progress lines. */
  out: (line: string) => void;
  signal?: AbortSignal;
}>;

/** Settings of every node in a chaos run: short timers so faults heal within the run. */
export const CHAOS_NODE_ENV: Readonly<Record<string, string>> = {
  // The janitor checks orders quiet for 8 s with the PSP (lost webhooks, lost ExecuteOrder).
  JANITOR_STUCK_MS: '8000',
  JANITOR_INTERVAL_MS: '1000',
  JANITOR_LEASE_MS: '8000',
  // A killed node's unacked commands, and the new orders it was running itself, come back to the
  // others after 3 s.
  CONSUMER_ACK_WAIT_MS: '3000',
  LOCAL_EXECUTE_HOLD_MS: '3000',
  RETRY_BACKOFF_MS: '200,400,800,1600,3200',
  PSP_CALL_TIMEOUT_MS: '1000',
  PSP_BREAKER_RESET_MS: '1500',
  PSP_BREAKER_VOLUME_THRESHOLD: '5',
  CREATE_WAIT_MS: '500',
  OUTBOX_POLL_MS: '100',
  SHUTDOWN_GRACE_MS: '3000',
};

export type HealthSamples = { serving: number; notServing: number; unreachable: number };

export type LogStats = {
  breaker: Record<string, number>;
  retries: number;
  deadLettered: number;
  webhooksRejected: number;
  errors: number;
};

export type ChaosResult = Readonly<{
  options: Omit<ChaosOptions, 'out' | 'signal' | 'baseEnv'>;
  evaluation: Evaluation;
  faultsPlanned: Readonly<Record<string, number>>;
  faultsInjected: Readonly<Record<string, number>>;
  faultsSkipped: Readonly<Record<string, number>>;
  webhooks: FaultInjector['webhooks'];
  driver: DriverStats;
  logs: LogStats;
  /** grpc.health.v1 answers of the running nodes, sampled every second. */
  health: HealthSamples;
  deadLettersReplayed: number;
  /** From the end of the faults until every order ended (or the deadline). */
  settleTookMs: number;
  settled: boolean;
  elapsedMs: number;
  aborted: boolean;
}>;

const SETTLE_POLL_MS = 500;
const DEFAULT_ORDER_EXPIRY_MS = 30_000;
/** Dead letters replayed by one run at most. */
const REPLAYS_MAX = 5_000;
const DRIVER_CONCURRENCY_MAX = 32;

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const startedAt = Date.now();
  const { out } = options;
  const at = () => `[${((Date.now() - startedAt) / 1000).toFixed(1).padStart(6)}s]`;
  const rng = new Rng(options.seed);
  const perKind = options.perKind ?? faultsPerKind(options.durationMs);
  const plan = planPayments(rng.fork('payments'), {
    payments: options.payments,
    durationMs: options.durationMs,
    nodes: options.nodes,
    declineShare: options.declineShare ?? 0.2,
    abandonShare: options.abandonShare ?? 0.05,
  });
  const orderExpiryMs = options.orderExpiryMs ?? DEFAULT_ORDER_EXPIRY_MS;
  const faults = planFaults(rng.fork('faults'), {
    durationMs: options.durationMs,
    nodes: options.nodes,
    perKind,
  });
  const faultsPlanned: Record<string, number> = {};
  for (const fault of faults) faultsPlanned[fault.kind] = (faultsPlanned[fault.kind] ?? 0) + 1;

  const logs: LogStats = {
    breaker: {},
    retries: 0,
    deadLettered: 0,
    webhooksRejected: 0,
    errors: 0,
  };
  const breakerNow = new Map<string, string>();
  const onLine = (name: string, line: string) => {
    if (!line.startsWith('{')) return;
    let entry: { level?: string; msg?: string; breaker?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      return;
    }
    if (typeof entry.breaker === 'string') {
      logs.breaker[entry.breaker] = (logs.breaker[entry.breaker] ?? 0) + 1;
      breakerNow.set(name, entry.breaker);
      out(`${at()} ${name}: PSP circuit breaker ${entry.breaker}`);
    }
    const msg = entry.msg ?? '';
    if (msg.startsWith('retrying order')) logs.retries += 1;
    else if (msg.startsWith('dead-lettered')) logs.deadLettered += 1;
    else if (msg === 'webhook rejected') logs.webhooksRejected += 1;
    else if (entry.level === 'error' || entry.level === 'fatal') logs.errors += 1;
  };

  out(
    `chaos: seed ${options.seed}, ${options.payments} payments over ${options.durationMs / 1000} s, ` +
      `${options.nodes} node(s), ${faults.length} faults (${perKind} of each of ${FAULT_KINDS.length} kinds); logs in ${options.logDir}`,
  );
  const cluster = await ChaosCluster.start({
    nodes: options.nodes,
    mysqlUrl: options.mysqlUrl,
    natsUrl: options.natsUrl,
    baseEnv: options.baseEnv,
    nodeEnv: { ...CHAOS_NODE_ENV, ORDER_EXPIRY_MS: String(orderExpiryMs) },
    logDir: options.logDir,
    onLine,
  });
  const ticker: { timer?: NodeJS.Timeout } = {};
  const health: HealthSamples = { serving: 0, notServing: 0, unreachable: 0 };
  try {
    out(
      `${at()} cluster up: PSP mock ${cluster.pspGrpcAddress}, ` +
        `${cluster.nodes.map((n) => `${n.name} ${n.grpcAddress}`).join(', ')}, namespace ${cluster.namespace}`,
    );
    const runController = new AbortController();
    const abortRun = () => runController.abort();
    options.signal?.addEventListener('abort', abortRun, { once: true });
    const signal = runController.signal;
    // Every planned payment sleeps on this signal until its start time.
    setMaxListeners(plan.length + 64, signal);

    const driver = new PaymentDriver(cluster, plan, {
      concurrencyMax: DRIVER_CONCURRENCY_MAX,
      log: (line) => out(`${at()} driver: ${line}`),
    });
    const injector = new FaultInjector({
      cluster,
      rng: rng.fork('fault-targets'),
      paid: () => driver.paid,
      log: (line) => out(`${at()} ${line}`),
    });
    const runStart = Date.now();
    const deadline = runStart + options.durationMs + options.settleMs;
    const driving = driver.run(runStart, deadline, signal);

    let progressBusy = false;
    ticker.timer = setInterval(() => {
      if (progressBusy) return;
      progressBusy = true;
      void progressLine(cluster, driver.stats, plan.length, injector, breakerNow, health)
        .then((line) => out(`${at()} ${line}`))
        .catch(() => undefined)
        .finally(() => (progressBusy = false));
    }, 1_000);

    await injectAll(faults, runStart, injector, signal, (line) => out(`${at()} fault ${line}`));
    await sleep(Math.max(0, runStart + options.durationMs - Date.now()), signal);
    out(`${at()} faults over: healing the network, the PSP and every node`);
    await injector.healAll();

    const settleStart = Date.now();
    let settled = await waitUntilSettled(cluster, driver.stats, plan.length, deadline, signal, {
      dlqExcuses: true,
    });
    // What an operator does next: replay every open dead letter once (ReplayDeadLetter is
    // idempotent, and harmless for an order that has finished since), then wait again, this
    // time for every order to be final: the checks no longer excuse one for its dead letter.
    const replayed = settled
      ? await replayDeadLetters(cluster, signal).catch((error: unknown) => {
          out(`${at()} replaying dead letters failed: ${String(error)}`);
          return 0;
        })
      : 0;
    if (replayed > 0) {
      out(`${at()} replayed ${replayed} open dead letter(s) through AdminService`);
    }
    if (settled) {
      settled = await waitUntilSettled(cluster, driver.stats, plan.length, deadline, signal, {
        dlqExcuses: false,
      });
    }
    const settleTookMs = Date.now() - settleStart;
    out(
      `${at()} ${settled ? 'settled' : 'NOT settled'} ${(settleTookMs / 1000).toFixed(1)} s after the faults ended`,
    );
    runController.abort();
    await driving;
    clearInterval(ticker.timer);
    options.signal?.removeEventListener('abort', abortRun);

    const observed = await observe({ db: cluster.db, psp: cluster.pspApi });
    const evaluation = evaluate(observed, {
      paymentsRequested: driver.stats.requested,
      paymentsAcknowledged: driver.stats.acknowledged,
      requestsAcknowledged: driver.stats.acknowledgedRequests,
      abandonedOrders: driver.stats.abandonedOrderIds,
      ordersMustBeFinal: true,
      forgedWebhooksSent: injector.webhooks.forgedSent,
      forgedWebhooksAccepted: injector.webhooks.forgedAccepted,
      lateDeclinedOrders: [...injector.lateDeclined],
      genuineWebhooksRefused: injector.webhooks.unexpected,
      faultsInjected: injector.injected,
      faultKindsPlanned: [...new Set(faults.map((fault) => fault.kind))],
    });
    return {
      options: {
        seed: options.seed,
        payments: options.payments,
        durationMs: options.durationMs,
        nodes: options.nodes,
        settleMs: options.settleMs,
        perKind,
        mysqlUrl: options.mysqlUrl,
        natsUrl: options.natsUrl,
        logDir: options.logDir,
      },
      evaluation,
      faultsPlanned,
      faultsInjected: injector.injected,
      faultsSkipped: injector.skipped,
      webhooks: injector.webhooks,
      driver: driver.stats,
      logs,
      health,
      deadLettersReplayed: replayed,
      settleTookMs,
      settled,
      elapsedMs: Date.now() - startedAt,
      aborted: options.signal?.aborted ?? false,
    };
  } finally {
    clearInterval(ticker.timer);
    await cluster.destroy().catch((error: unknown) => out(`cleanup: ${String(error)}`));
  }
}

async function injectAll(
  faults: readonly PlannedFault[],
  runStart: number,
  injector: FaultInjector,
  signal: AbortSignal,
  out: (line: string) => void,
): Promise<void> {
  for (const fault of faults) {
    await sleep(Math.max(0, runStart + fault.atMs - Date.now()), signal);
    if (signal.aborted) return;
    try {
      const line = await injector.inject(fault);
      out(`${fault.kind}: ${line ?? 'skipped (no target yet)'}`);
    } catch (error) {
      out(`${fault.kind}: failed to inject: ${String(error)}`);
    }
  }
}

/**
 * Every payment created (or given up), every order terminal (or, with `dlqExcuses`, held in the
 * dead-letter table), outbox empty.
 */
async function waitUntilSettled(
  cluster: ChaosCluster,
  stats: DriverStats,
  planned: number,
  deadline: number,
  signal: AbortSignal,
  options: Readonly<{ dlqExcuses: boolean }>,
): Promise<boolean> {
  while (Date.now() < deadline && !signal.aborted) {
    try {
      const created = stats.acknowledged.length + stats.createErrors.length;
      if (created >= planned || stats.finished >= planned) {
        const open = await cluster.db
          .selectFrom('payment_order')
          .select(['id', 'state'])
          .where('state', 'not in', [...TERMINAL_STATES])
          .limit(10_000)
          .execute();
        const outbox = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`.execute(
          cluster.db,
        );
        if (Number(outbox.rows[0]?.n ?? 0) === 0) {
          if (open.length === 0) return true;
          if (options.dlqExcuses) {
            const deadLetters = await readDeadLetters(cluster.db);
            if (lostOrders({ orders: open, deadLetters }).length === 0) return true;
          }
        }
      }
    } catch {
      // The database may be briefly unreachable; look again.
    }
    await sleep(SETTLE_POLL_MS, signal);
  }
  return false;
}

/** Replays every OPEN dead letter once, through any running node; returns how many. */
async function replayDeadLetters(cluster: ChaosCluster, signal: AbortSignal): Promise<number> {
  const client = cluster.upNodes()[0]?.client;
  if (client === undefined) return 0;
  const metadata = { authorization: `Bearer ${cluster.adminToken}` };
  const ids: string[] = [];
  let pageToken = '';
  do {
    const page = await client.admin.listDeadLetters(
      { pageSize: 100, pageToken, state: DeadLetterState.DEAD_LETTER_STATE_OPEN, orderId: '' },
      { metadata },
    );
    ids.push(...page.deadLetters.map((entry) => entry.id));
    pageToken = page.nextPageToken;
  } while (pageToken !== '' && ids.length < REPLAYS_MAX && !signal.aborted);
  for (const id of ids) {
    if (signal.aborted) break;
    await client.admin.replayDeadLetter({ id, reason: '' }, { metadata });
  }
  return ids.length;
}

async function progressLine(
  cluster: ChaosCluster,
  stats: DriverStats,
  planned: number,
  injector: FaultInjector,
  breakerNow: ReadonlyMap<string, string>,
  health: HealthSamples,
): Promise<string> {
  const answers = await Promise.all(
    cluster.upNodes().map((node) => checkHealth(node.grpcAddress, 500)),
  );
  for (const answer of answers) {
    if (answer === 'SERVING') health.serving += 1;
    else if (answer === 'NOT_SERVING') health.notServing += 1;
    else health.unreachable += 1;
  }
  const rows = await cluster.db
    .selectFrom('payment_order')
    .select(['state', (eb) => eb.fn.countAll<string>().as('n')])
    .groupBy('state')
    .execute()
    .catch(() => []);
  const states = rows.map((row) => `${row.state} ${row.n}`).join(', ') || 'no orders yet';
  const up = cluster.upNodes().length;
  const faults = Object.values(injector.injected).reduce((sum, n) => sum + n, 0);
  const breakers = [...new Set(breakerNow.values())];
  return (
    `payments ${stats.acknowledged.length}/${planned} created, ${stats.ordersPaid} orders paid · ` +
    `orders: ${states} · nodes up ${up}/${cluster.nodes.length}, ` +
    `serving ${answers.filter((a) => a === 'SERVING').length} · ` +
    `breaker ${breakers.length === 0 ? 'CLOSED' : breakers.join('/')} · faults ${faults}`
  );
}
