/**
 * Wires one Settle node: MySQL (migrated), JetStream topology, the PSP client, the outbox relay,
 * the payment-order actor runtime fed by the command consumer, the gRPC API and the HTTP port.
 * `startSettle` is used by main.ts and by the tests; `stop()` undoes it in reverse order.
 */
import https from 'node:https';
import type * as grpc from '@grpc/grpc-js';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { withDeadline } from './domain/deadline.js';
import { isTerminal } from './domain/payment-order.js';
import {
  apiRateLimitOf,
  PSP_BREAKER_WINDOW_MS,
  settlePublicUrl,
  utcMinutesOf,
  type Config,
} from './config.js';
import { ActorRegistry } from './actors/runtime/registry.js';
import { PaymentOrderActor, type OrderMessage } from './actors/payment-order/actor.js';
import { OrderLoader, TransitionBatcher } from './actors/payment-order/persistence.js';
import { LocalExecutor } from './actors/payment-order/local-execute.js';
import type { OrderEvent, PaymentOrder } from './actors/payment-order/machine.js';
import type { PspPort } from './actors/payment-order/effects.js';
import {
  CommandConsumer,
  maxDeliveries,
  publishDeadLetterCopy,
  type DeadLetter,
  type HandleOutcome,
} from './messaging/command-consumer.js';
import type { Command } from './messaging/commands.js';
import { CommandStreamPurge, connectNats, ensureTopology } from './messaging/nats.js';
import { OutboxRelay } from './messaging/outbox-relay.js';
import { names as topologyNames, type Names } from './messaging/subjects.js';
import { PaymentEvents } from './payments/payment-events.js';
import { PaymentService, WATCHES_MAX } from './payments/payment.service.js';
import { createPspClient, type PspClient } from './psp/client.js';
import { ensureDatabase, migrateToLatest, openDatabase, type Db } from './storage/db.js';
import { assertGuardsTrip } from './storage/one-trip.js';
import type { GroupCommitBatch } from './storage/group-commit.js';
import { purgeIdempotencyKeys } from './storage/repositories/payment.repository.js';
import { purgeWebhookInbox } from './storage/repositories/outbox.repository.js';
import {
  LEDGER_HORIZON_DEFAULTS,
  LedgerMarker,
  reservationSettleMsFor,
} from './storage/repositories/ledger-horizon.repository.js';
import {
  LEDGER_SUMS_DEFAULTS,
  LedgerSummer,
} from './storage/repositories/ledger-sums.repository.js';
import { refuseUndecodable, type AdapterOptions } from './grpc/adapters.js';
import { ApiTokens } from './grpc/api-auth.js';
import { API_TRANSPORT, ApiRateLimit } from './grpc/api-rate-limit.js';
import { apiMethodOfPath, type ApiGuardedService } from './grpc/api-scopes.js';
import {
  ACCEPT_FAILED_MESSAGE,
  createGrpcServer,
  listen,
  serverCredentials,
} from './grpc/server.js';
import { createHealth, HEALTH_SERVICE_NAME, type Health } from './grpc/health.js';
import { addReflection } from './grpc/reflection/index.js';
import { PaymentServiceService } from './grpc/generated/settle/v1/payment.js';
import { LedgerServiceService, WalletServiceService } from './grpc/generated/settle/v1/wallet.js';
import { paymentHandlers } from './grpc/handlers/payment.handlers.js';
import { adminHandlers } from './grpc/handlers/admin.handlers.js';
import { AdminServiceService } from './grpc/generated/settle/v1/admin.js';
import { ledgerHandlers, walletHandlers } from './grpc/handlers/ledger.handlers.js';
import {
  createHttpServer,
  httpsContextOptions,
  json,
  listenHttp,
  type Route,
} from './http/router.js';
import { WEBHOOK_PATH, webhookRoute, type FastApply } from './http/webhook.route.js';
import { INBOX_SOURCE_PSP, WebhookInbox, type WebhookEvent } from './http/webhook-inbox.js';
import { createLogger, type Logger } from './observability/logger.js';
import { createMetrics, type Metrics } from './observability/metrics.js';
import { grpcCallObserver } from './observability/request-log.js';
import { repeatingFailureLog } from './observability/repeating-failure.js';
import { operatorRoutes } from './http/operator.routes.js';
import { WrongTokenLimit, type WrongTokenLimitOptions } from './admin/auth.js';
import { ClientResolver } from './admin/client-address.js';
import {
  purgeClosedDeadLetters,
  recordDeadLetter,
  recordHeldDeadLetter,
} from './admin/dead-letters.js';
import { Housekeeping, HOUSEKEEPING_TASK } from './jobs/housekeeping.js';
import { Janitor } from './jobs/janitor.js';
import { HealthMonitor } from './observability/health-monitor.js';
import {
  debugProfileRoute,
  debugStatsRoute,
  sqlTimerName,
  Timings,
} from './observability/runtime-stats.js';
import {
  purgeExpiredStaging,
  ReconciliationSchedule,
  ReconciliationService,
} from './reconciliation/index.js';
import { ReconciliationServiceService } from './grpc/generated/settle/v1/reconciliation.js';
import { reconciliationHandlers } from './grpc/handlers/reconciliation.handlers.js';
import { readServerTls, tlsStartupLines, type ServerTls } from './tls.js';
import { TlsReloader, type TlsReloadOutcome } from './tls-reload.js';

/** Housekeeping (expired rows): a pass a minute, the first one 30 s after start-up. */
const HOUSEKEEPING_INTERVAL_MS = 60_000;
const HOUSEKEEPING_FIRST_PASS_MS = 30_000;
const DAY_MS = 24 * 3_600_000;

/** The instant `days` whole days before `at`: the cutoff of a retention in days. */
function daysBefore(at: Date, days: number): Date {
  return new Date(at.getTime() - days * DAY_MS);
}

/** Reconciliations a node works on at once (each holds or waits for the classification lock). */
const RECONCILIATION_RUNS_MAX = 2;

/**
 * How long a webhook whose fast attempt ran out of WEBHOOK_APPLY_WAIT_MS, and which the durable
 * way then found already recorded, waits on for that attempt (FastApply.appliedLate). If the row
 * found is the attempt's own, the attempt has committed (the row is seen only then) and answers
 * within milliseconds; a real duplicate's attempt may be queued behind a slow message, and this
 * bounds how much later its answer comes.
 */
const WEBHOOK_LATE_APPLY_WAIT_MS = 1_000;

export const SETTLE_SERVICES = [
  'settle.v1.PaymentService',
  'settle.v1.WalletService',
  'settle.v1.LedgerService',
  'settle.v1.AdminService',
  'settle.v1.ReconciliationService',
] as const;

export type SettleOverrides = Partial<{
  /** 0 picks a free port. */
  grpcPort: number;
  httpPort: number;
  logger: Logger;
  /** Replaces the real PSP client (tests of the actor runtime only). */
  psp: PspPort & { close?: () => void };
  /** A name for this node in logs and NATS connection names. */
  nodeName: string;
  /** The bound on wrong admin tokens: its clock and sizes (tests end its window at will). */
  adminWrongTokens: Pick<
    WrongTokenLimitOptions,
    'max' | 'nodeMax' | 'clientsMax' | 'windowMs' | 'nowMs'
  >;
  /** How long the server lets one WatchPayment run, in ms (an hour; tests end watches sooner). */
  watchDurationMsMax: number;
  /**
   * The ports' TLS as already read from the files of GRPC_TLS_* and HTTP_TLS_* (main.ts reads
   * them before it waits for MySQL and NATS); read here, first of all, when left out.
   */
  tls: ServerTls;
}>;

export type SettleNode = Readonly<{
  config: Config;
  grpcPort: number;
  httpPort: number;
  db: Db;
  /** The pool of one-packet transactions (creations, transitions, the outbox relay). */
  oneTripDb: Db;
  nc: NatsConnection;
  names: Names;
  payments: PaymentService;
  relay: OutboxRelay;
  /** Runs this node's new orders here first; JetStream is the backstop. */
  local: LocalExecutor;
  consumer: CommandConsumer;
  registry: ActorRegistry<OrderMessage, HandleOutcome>;
  janitor: Janitor;
  /** Deletes expired rows (idempotency keys, settlement staging rows) a bounded number a pass. */
  housekeeping: Housekeeping;
  psp: PspPort;
  health: Health;
  logger: Logger;
  /** This node's Prometheus registry and hooks (served at /metrics). */
  metrics: Metrics;
  /** Settlement-file reconciliation (the RPCs and the nightly schedule use it). */
  reconciliation: ReconciliationService;
  /** Extra HTTP routes may be added before requests arrive (admin, REST, metrics). */
  routes: Route[];
  /** Delivers a command to its order's actor, as the consumer does. */
  dispatch: (command: Command) => Promise<HandleOutcome>;
  /**
   * Reads the TLS files of the ports that serve TLS again now (SIGHUP; the node also does every
   * TLS_RELOAD_INTERVAL_S) and serves new ones that pass the start's checks to new connections.
   */
  reloadTls: () => Partial<Record<'grpc' | 'http', TlsReloadOutcome>>;
  stop: () => Promise<void>;
}>;

/**
 * How many MySQL connections a node opens, and how many group-commit batches of one kind it
 * runs at once on each pool. The one-packet writers' pool holds every creation and transition
 * batch in flight plus the outbox relay's pass, so none of them waits for a connection; the
 * batches that write through the main pool (order loads, webhook inboxes) share its
 * MYSQL_POOL_SIZE connections with every other query and never take more than all of them.
 */
export function connectionPlan(
  config: Pick<Config, 'MYSQL_POOL_SIZE' | 'GROUP_COMMITS_IN_FLIGHT'>,
): Readonly<{
  mainPool: number;
  writersPool: number;
  inFlight: { writers: number; main: number };
}> {
  const inFlight = config.GROUP_COMMITS_IN_FLIGHT;
  return {
    mainPool: config.MYSQL_POOL_SIZE,
    writersPool: 2 * inFlight + 1,
    inFlight: { writers: inFlight, main: Math.min(inFlight, config.MYSQL_POOL_SIZE) },
  };
}

export async function startSettle(
  config: Config,
  overrides: SettleOverrides = {},
): Promise<SettleNode> {
  // Before anything is opened: a certificate that cannot be read is a configuration error.
  const tls = overrides.tls ?? readServerTls(config);
  const nodeName = overrides.nodeName ?? `settle-${process.pid}`;
  const logger = overrides.logger ?? createLogger({ level: config.LOG_LEVEL, name: 'settle' });
  const metrics = createMetrics();
  const cleanups: Array<() => unknown> = [];
  // One grace period for the whole stop, shared by the steps that wait (gRPC calls, commands in
  // flight, group commits), not one each: a step gets what the steps before it left.
  let stopDeadline = Number.POSITIVE_INFINITY;
  const graceLeft = () =>
    Math.max(0, Math.min(config.SHUTDOWN_GRACE_MS, stopDeadline - Date.now()));
  // Once: a second call (a signal during a stop, a test's teardown) waits for the first.
  let stopped: Promise<void> | undefined;
  const stopAll = (): Promise<void> =>
    (stopped ??= (async () => {
      stopDeadline = Date.now() + config.SHUTDOWN_GRACE_MS;
      // Newest first; a copy, so the list keeps its order.
      for (const cleanup of [...cleanups].reverse()) {
        try {
          await cleanup();
        } catch (error) {
          logger.warn({ err: error }, 'error while stopping');
        }
      }
    })());
  try {
    await ensureDatabase(config.MYSQL_URL);
    const timings = config.DEBUG_STATS ? new Timings() : undefined;
    const onQuery = timings && {
      onQuery: (text: string, ms: number) => timings.record(sqlTimerName(text), ms),
    };
    const connections = connectionPlan(config);
    const deadlines = {
      statementTimeoutMs: config.MYSQL_STATEMENT_TIMEOUT_MS,
      bulkStatementTimeoutMs: config.MYSQL_BULK_STATEMENT_TIMEOUT_MS,
    };
    const {
      db,
      bulkDb,
      close: closeDb,
    } = openDatabase(config.MYSQL_URL, {
      poolSize: connections.mainPool,
      lockWaitTimeoutS: config.MYSQL_LOCK_WAIT_TIMEOUT_S,
      ...deadlines,
      ...onQuery,
    });
    cleanups.push(closeDb);
    // One-packet transactions (the group commits of creations and transitions, the outbox
    // relay) need packets of several statements. They get a pool of their own that allows
    // them; every other query goes through `db`, whose server refuses a second statement.
    const { db: oneTripDb, close: closeOneTripDb } = openDatabase(config.MYSQL_URL, {
      poolSize: connections.writersPool,
      multipleStatements: true,
      lockWaitTimeoutS: config.MYSQL_LOCK_WAIT_TIMEOUT_S,
      ...deadlines,
      ...onQuery,
    });
    cleanups.push(closeOneTripDb);
    await migrateToLatest(bulkDb);
    await assertGuardsTrip(oneTripDb);

    const nc = await connectNats(config.NATS_URL, nodeName);
    cleanups.push(() => nc.drain().catch(() => nc.close()));
    const names = topologyNames(config.SETTLE_NAMESPACE, config.CMD_PARTITIONS);
    await ensureTopology(nc, names, {
      ackWaitMs: config.CONSUMER_ACK_WAIT_MS,
      maxDeliver: maxDeliveries(config.RETRY_BACKOFF_MS),
      maxAckPending: config.CONSUMER_MAX_ACK_PENDING,
    });
    const js = jetstream(nc, { timeout: 5_000 });
    const jsm = await jetstreamManager(nc, { timeout: 5_000 });

    let psp: PspPort & { close?: () => void };
    if (overrides.psp !== undefined) {
      psp = overrides.psp;
    } else {
      const client: PspClient = createPspClient({
        address: `${config.PSP_GRPC_ADDR.host}:${config.PSP_GRPC_ADDR.port}`,
        callTimeoutMs: config.PSP_CALL_TIMEOUT_MS,
        breaker: {
          resetTimeoutMs: config.PSP_BREAKER_RESET_MS,
          errorThresholdPercentage: config.PSP_BREAKER_ERROR_PERCENT,
          volumeThreshold: config.PSP_BREAKER_VOLUME_THRESHOLD,
          // loadConfig checks the volume threshold against this window.
          rollingWindowMs: PSP_BREAKER_WINDOW_MS,
        },
        inFlightMax: config.PSP_IN_FLIGHT_MAX,
      });
      client.onStateChange((state) =>
        logger.warn({ breaker: state }, `PSP circuit breaker ${state}`),
      );
      psp = client;
    }
    cleanups.push(() => psp.close?.());

    // A connection of its own, without echo: the hub tells this node's waiters itself.
    const eventsNc = await connectNats(config.NATS_URL, `${nodeName}-events`, { noEcho: true });
    cleanups.push(() => eventsNc.drain().catch(() => eventsNc.close()));
    // Room for every watch PaymentService admits (WATCHES_MAX) and as many CreatePayment waits
    // again: watchers alone can never fill the table and leave a create's wait to poll.
    const events = new PaymentEvents(eventsNc, names, WATCHES_MAX + 10_000);
    events.start();
    cleanups.push(() => events.stop());

    const relay = new OutboxRelay(oneTripDb, js, {
      batchMax: config.OUTBOX_BATCH_MAX,
      pollMs: config.OUTBOX_POLL_MS,
      publishTimeoutMs: 5_000,
      onError: repeatingFailureLog(logger, 'outbox relay pass failed; retrying'),
    });

    // `pool`: the pool the batches of this kind write through.
    const groupCommit = (kind: string, pool: 'writers' | 'main') => ({
      batchMax: config.GROUP_COMMIT_MAX,
      inFlightMax: connections.inFlight[pool],
      queueMax: 10_000,
      onBatch: (batch: GroupCommitBatch) => {
        metrics.groupCommitBatch({ kind, ...batch });
        if (timings === undefined) return;
        timings.record(`tx.${kind}`, batch.ms);
        // A failed batch is rewritten unit by unit: its size says nothing about what was
        // written together, so it is kept apart.
        timings.record(`tx.${kind}.${batch.ok ? 'size' : 'failed size'} (not ms)`, batch.size);
      },
    });
    const batcher = new TransitionBatcher(oneTripDb, groupCommit('transitions', 'writers'));
    const loader = new OrderLoader(db, groupCommit('loads', 'main'));
    cleanups.push(() => batcher.stop(graceLeft()));

    const now = () => new Date();
    // Metrics and logs of every transition: the actor's and the creation's (orders born
    // EXECUTING). Only the actor's are published as payment events: no one can be waiting for a
    // payment that did not exist before the commit, and its creator already has the answer.
    const reportTransition = (previous: PaymentOrder, next: PaymentOrder, event: OrderEvent) => {
      metrics.orderTransition({ from: previous.state, to: next.state, event: event.type });
      if (isTerminal(next.state) && !isTerminal(previous.state)) {
        const seconds = (Date.now() - next.createdAt.getTime()) / 1000;
        metrics.orderCompleted({ state: next.state, seconds });
      }
      if (!logger.isLevelEnabled('info')) return;
      logger.info(
        {
          paymentId: next.paymentId,
          orderId: next.id,
          from: previous.state,
          to: next.state,
          event: event.type,
          version: next.version.toString(),
        },
        `order ${previous.state} -> ${next.state} on ${event.type}`,
      );
    };
    const onTransition = (previous: PaymentOrder, next: PaymentOrder, event: OrderEvent) => {
      events.publish(next.paymentId);
      reportTransition(previous, next, event);
    };
    const notificationUrl = `${settlePublicUrl(config)}${WEBHOOK_PATH}`;
    const registry = new ActorRegistry<OrderMessage, HandleOutcome>(
      'payment-order',
      (orderId) =>
        new PaymentOrderActor(orderId, {
          db,
          persist: batcher.persist,
          load: loader.load,
          psp,
          notificationUrl,
          now,
          onTransition,
          onIllegal: (order, event, message) =>
            logger.warn(
              { orderId: order.id, state: order.state, event: event.type },
              `illegal transition: ${message}`,
            ),
          onPspCall: (call) => {
            metrics.pspCall(call);
            timings?.record(`psp.${call.op}`, call.ms);
            if (call.ok) logger.debug(call, `PSP ${call.op} ok in ${call.ms} ms`);
            else logger.warn(call, `PSP ${call.op} failed: ${call.error ?? ''}`);
          },
          onTurnCut: (cut) =>
            logger.error(
              cut,
              `order ${cut.orderId}: a turn reached its bound of ${cut.eventsMax} events with ` +
                `${cut.left.join(', ')} left; its command is retried`,
            ),
        }),
      {
        mailboxCapacity: config.ACTOR_MAILBOX_CAPACITY,
        idleMsMax: config.ACTOR_IDLE_MS,
        actorsMax: config.ACTORS_MAX,
      },
    );
    cleanups.push(() => registry.stop());

    const dispatch = (command: Command): Promise<HandleOutcome> =>
      registry.send(command.orderId, { event: commandToEvent(command) });
    // No more orders at once (run here or from JetStream) than PSP calls may be in flight: beyond
    // that the PSP client refuses at once, and a backlog (the bench's 100,000 idle orders) burnt
    // its retries on that refusal until orders were dead-lettered. New orders run here take half.
    const localMax =
      config.LOCAL_EXECUTE_HOLD_MS > 0 ? Math.max(1, Math.floor(config.PSP_IN_FLIGHT_MAX / 2)) : 0;
    // A dead letter recorded by this node, the consumer's or a local run's: counted and logged.
    const onDeadLetter = (entry: DeadLetter) => {
      metrics.deadLetter(entry.reason);
      logger.error(
        { orderId: entry.orderId, reason: entry.reason, attempts: entry.attempts },
        `dead-lettered: ${entry.lastError}`,
      );
    };
    // Not recorded again, but an operator must still see a command that keeps failing.
    const onOpenRepeat = (entry: DeadLetter) => {
      metrics.deadLetterRepeated(entry.reason);
      logger.info(
        { orderId: entry.orderId, reason: entry.reason, subject: entry.subject },
        `refused again (${entry.reason}) while the order's OPEN dead letter for the same ` +
          'command waits for an operator; not recorded again',
      );
    };
    const local = new LocalExecutor(
      {
        db,
        send: (orderId, message) => registry.send(orderId, message),
        commandSubject: (orderId) => names.commandSubject(orderId),
        deadLetter: async (entry, msgId) => {
          const recorded = await recordHeldDeadLetter(db, msgId, entry, now(), { onOpenRepeat });
          if (recorded) {
            await publishDeadLetterCopy(js, names, entry, `outbox:${msgId}`, (error) =>
              logger.error(
                { err: error, orderId: entry.orderId },
                'dead-letter stream publish failed',
              ),
            );
          }
          return recorded;
        },
        onDeadLetter,
        wakeRelay: () => relay.wake(),
        now,
        onError: (error, context) =>
          logger.error({ err: error, ...context }, 'running a new order here failed'),
        onHandover: (handover) => {
          if (handover.retry) metrics.retry();
          logger.warn(
            handover,
            `order ${handover.orderId} handed to JetStream in ${handover.delayMs} ms: ${handover.reason}`,
          );
        },
      },
      {
        holdMs: config.LOCAL_EXECUTE_HOLD_MS,
        inFlightMax: localMax,
        // The schema requires at least one step.
        retryDelayMs: config.RETRY_BACKOFF_MS[0] ?? 0,
      },
    );
    cleanups.push(() => local.stop(graceLeft()));
    const consumer = new CommandConsumer(nc, js, jsm, names, (command) => dispatch(command), {
      recordDeadLetter: (entry) =>
        recordDeadLetter(db, names.commandStream, entry, now(), { onOpenRepeat }),
      inFlightMax: Math.max(
        1,
        Math.min(config.CONSUMER_MAX_ACK_PENDING, config.PSP_IN_FLIGHT_MAX - localMax, 1_024),
      ),
      ackWaitMs: config.CONSUMER_ACK_WAIT_MS,
      // A turn makes two PSP calls at most; four times that (and at least one ack_wait) is
      // slow but alive, and a handler still running past it is taken for hung.
      workingMsMax: Math.max(4 * 2 * config.PSP_CALL_TIMEOUT_MS, config.CONSUMER_ACK_WAIT_MS),
      backoffMs: config.RETRY_BACKOFF_MS,
      jitter: 0.2,
      onError: (error, context) =>
        logger.error({ err: error, ...context }, 'command handling failed'),
      onRetry: (retry) => {
        metrics.retry();
        logger.warn(retry, `retrying order ${retry.orderId} in ${retry.delayMs} ms`);
      },
      onDeadLetter,
    });

    const payments = new PaymentService({
      db,
      oneTripDb,
      names,
      risk: {
        maxPaymentAmountMinor: config.RISK_MAX_PAYMENT_AMOUNT_MINOR,
        blockedBuyerIds: new Set(config.RISK_BLOCKED_BUYERS),
      },
      events,
      wakeRelay: () => relay.wake(),
      local,
      onTransition: reportTransition,
      createWaitMs: config.CREATE_WAIT_MS,
      now,
      groupCommit: { creations: groupCommit('creations', 'writers') },
      ...(overrides.watchDurationMsMax !== undefined
        ? { watchDurationMsMax: overrides.watchDurationMsMax }
        : {}),
    });
    cleanups.push(() => payments.stop(graceLeft()));

    // The classification lock's connections: one per run holding or waiting for it.
    const { db: reconciliationLockDb, close: closeReconciliationLockDb } = openDatabase(
      config.MYSQL_URL,
      {
        poolSize: RECONCILIATION_RUNS_MAX,
        lockWaitTimeoutS: config.MYSQL_LOCK_WAIT_TIMEOUT_S,
        ...deadlines,
      },
    );
    cleanups.push(closeReconciliationLockDb);
    const reconciliation = new ReconciliationService({
      // Its statements span whole settlement files: the bulk deadline.
      db: bulkDb,
      lockDb: reconciliationLockDb,
      runsMax: RECONCILIATION_RUNS_MAX,
      dir: config.SETTLEMENT_DIR,
      nodeName,
      batchRows: config.RECONCILIATION_BATCH_ROWS,
      rowsMax: config.RECONCILIATION_FILE_ROWS_MAX,
      waitMs: config.RECONCILIATION_WAIT_MS,
      keepDays: config.RECONCILIATION_KEEP_DAYS,
      now,
      onEvent: (event) =>
        event.type === 'failed'
          ? logger.error(
              { err: event.error, runId: event.runId },
              `reconciliation of ${event.day} failed`,
            )
          : event.type === 'sums-check-skipped'
            ? logger.warn(
                { err: event.error, runId: event.runId },
                'reconciliation could not compare the running sums with the ledger entries; ' +
                  'the run completes with them unchecked, a failed check (SUMS_UNCHECKED): run ' +
                  'it again, or settle ledger-sums repair --dry-run',
              )
            : logger.info(
                event,
                `reconciliation ${event.type}${event.type === 'phase' ? ` ${event.phase}` : ''}`,
              ),
    });
    cleanups.push(() => reconciliation.stop());

    // gRPC
    const health = createHealth([...SETTLE_SERVICES]);
    const monitor = new HealthMonitor(
      db,
      nc,
      { intervalMs: 1_000, probeTimeoutMs: 1_000 },
      (status) => {
        health.setServing(status.serving);
        const line = `dependencies: mysql ${status.mysql ? 'up' : 'DOWN'}, nats ${status.nats ? 'up' : 'DOWN'}`;
        if (status.serving) logger.info(status, line);
        else logger.error(status, line);
      },
    );

    // One bound on wrong admin tokens for the node, whichever way they come (the panel's form,
    // a bearer header, a session cookie, AdminService), so no way in guesses beside the others;
    // it counts per client address, and per node as a backstop.
    const adminWrongTokens = new WrongTokenLimit({
      ...overrides.adminWrongTokens,
      observer: {
        refused: (path, reason) => metrics.adminCredentialRefused({ path, reason }),
        lockedOut: (scope) => metrics.adminLockout({ scope }),
        warn: (fields, message) => logger.warn({ adminTokens: fields }, message),
      },
    });
    // Who sends an admin request, for that bound: the peer, or with TRUSTED_PROXIES the client a
    // trusted proxy forwarded it for; the panel and AdminService resolve it the same way.
    const adminClients = new ClientResolver({
      trustedProxies: config.TRUSTED_PROXIES,
      onMalformed: (surface) => metrics.forwardedForMalformed({ surface }),
    });
    const grpcConnectionsMax = config.GRPC_CONNECTIONS_MAX;
    const warnRefused = refusedConnectionLog(logger, grpcConnectionsMax);
    // Reported once per failed accept, which may be thousands a second: one line a second.
    const warnAcceptFailed = repeatingFailureLog(logger, ACCEPT_FAILED_MESSAGE, { everyMs: 1_000 });
    const grpcCredentials = serverCredentials(tls.grpc);
    const grpcServer = createGrpcServer({
      maxMessageBytes: config.GRPC_MESSAGE_BYTES_MAX,
      connectionsMax: grpcConnectionsMax,
      credentials: grpcCredentials.credentials,
      observer: {
        open: (open) => metrics.grpcConnectionsOpen(open),
        refused: ({ remoteAddress }) => {
          metrics.grpcConnectionRefused();
          warnRefused(remoteAddress);
        },
        acceptFailed: (error) => {
          metrics.grpcAcceptFailed();
          warnAcceptFailed(error);
        },
      },
    });
    metrics.grpcConnectionsMax(grpcConnectionsMax);
    metrics.grpcConnectionsOpen(0);
    const adapterOptions = {
      log: (error: unknown, context: Record<string, unknown>) =>
        logger.error({ err: error, ...context }, 'internal error in gRPC handler'),
      observe: grpcCallObserver(logger, metrics),
    };
    // The non-admin services ask for one of API_TOKENS when it is set, of a scope that covers the
    // method (api-scopes.ts); AdminService has its own token, and health and reflection stay open
    // to probes and tools.
    const apiTokens = new ApiTokens(config.API_TOKENS, {
      onRefused: (reason) => metrics.apiCredentialRefused({ reason }),
    });
    // Their calls are counted by caller as well (settle_api_requests_total), tokens set or not.
    const apiObserve = grpcCallObserver(logger, metrics, apiTokens);
    // API_RATE_LIMIT_PER_S: one bucket per caller, charged after the token check and before
    // anything else, gRPC and REST alike; none at all when the limit is off (the default).
    const rateLimit = apiRateLimitOf(config);
    const apiRateLimit =
      rateLimit === undefined
        ? undefined
        : new ApiRateLimit(apiTokens, {
            ...rateLimit,
            onThrottled: (throttled) => metrics.apiThrottled(throttled),
          });
    const apiOptions = (service: ApiGuardedService): AdapterOptions => {
      const require = (metadata: grpc.Metadata, path: string) =>
        apiTokens.require(
          metadata.get('authorization')[0],
          { name: service, kind: 'grpc' },
          apiMethodOfPath(path),
        )?.name;
      const options = { ...adapterOptions, observe: apiObserve };
      if (apiRateLimit === undefined) {
        return apiTokens.enabled ? { ...options, authenticate: require } : options;
      }
      return {
        ...options,
        authenticate: (metadata, path) => {
          const caller = apiTokens.enabled ? require(metadata, path) : undefined;
          apiRateLimit.charge(caller, API_TRANSPORT.grpc);
          return caller;
        },
      };
    };
    // Where ListEntries pages end for a tail (storage/repositories/ledger-horizon.repository.ts):
    // an INSERT holds an id for MYSQL_LOCK_WAIT_TIMEOUT_S at most before its row is there.
    const onMarkError = repeatingFailureLog(
      logger,
      'could not mark how far ledger entry ids were handed out',
    );
    const ledgerHorizon = {
      ...LEDGER_HORIZON_DEFAULTS,
      reservationSettleMs: reservationSettleMsFor(config.MYSQL_LOCK_WAIT_TIMEOUT_S),
      onMarkError,
    };
    const ledgerMarker = new LedgerMarker(db, ledgerHorizon, onMarkError);
    ledgerMarker.start();
    cleanups.push(() => ledgerMarker.stop());
    // The trial balance's running sums (storage/repositories/ledger-sums.repository.ts), moved up
    // to the settled horizon every few seconds by whichever node gets there first.
    const ledgerSummer = new LedgerSummer(
      db,
      { ...LEDGER_SUMS_DEFAULTS, horizon: ledgerHorizon },
      repeatingFailureLog(logger, 'could not add new ledger entries to the running sums'),
    );
    ledgerSummer.start();
    cleanups.push(() => ledgerSummer.stop());
    grpcServer.addService(
      refuseUndecodable(PaymentServiceService),
      paymentHandlers(payments, apiOptions('PaymentService')),
    );
    grpcServer.addService(
      refuseUndecodable(WalletServiceService),
      walletHandlers(db, apiOptions('WalletService')),
    );
    grpcServer.addService(
      refuseUndecodable(LedgerServiceService),
      ledgerHandlers(db, apiOptions('LedgerService'), ledgerHorizon),
    );
    grpcServer.addService(
      refuseUndecodable(AdminServiceService),
      adminHandlers(
        {
          db,
          bulkDb,
          wakeRelay: () => relay.wake(),
          now,
          access: { token: config.ADMIN_TOKEN, readonlyOpen: config.ADMIN_READONLY_OPEN },
          wrongTokens: adminWrongTokens,
          clients: adminClients,
        },
        adapterOptions,
      ),
    );
    grpcServer.addService(
      refuseUndecodable(ReconciliationServiceService),
      reconciliationHandlers(reconciliation, apiOptions('ReconciliationService')),
    );
    health.addToServer(grpcServer);
    addReflection(grpcServer, { services: [...SETTLE_SERVICES, HEALTH_SERVICE_NAME] });
    const grpcPort = await listen(
      grpcServer,
      config.SETTLE_GRPC_ADDR.host,
      overrides.grpcPort ?? config.SETTLE_GRPC_ADDR.port,
    );
    cleanups.push(() => {
      // Open watches first: each may last an hour, and tryShutdown waits for every open call, so
      // they would hold the stop for the whole grace that the later steps share.
      payments.endWatches();
      return shutdownGrpc(grpcServer, graceLeft());
    });

    // HTTP: webhooks in, health; other modules add routes to `routes`.
    const webhookInbox = new WebhookInbox(db, names, groupCommit('webhooks', 'main'));
    cleanups.push(() => webhookInbox.stop(graceLeft()));
    const applyWebhook = async (event: WebhookEvent): Promise<FastApply> => {
      const message: OrderMessage = {
        event: commandToEvent({ type: 'PspResult', ...event }),
        receipt: { source: INBOX_SOURCE_PSP, eventId: event.eventId },
      };
      // Kept past the deadline, as the actor's transaction may still commit. A full mailbox or a
      // database error is "not stored": the durable way tells the PSP what to do.
      const stored = registry.send(event.orderId, message).then(
        (outcome) => outcome.kind === 'done' && outcome.receiptStored === true,
        (error: unknown) => {
          logger.debug({ err: error, orderId: event.orderId }, 'webhook not applied at once');
          return false;
        },
      );
      try {
        if (await withDeadline(stored, config.WEBHOOK_APPLY_WAIT_MS)) return { applied: true };
        return { applied: false, appliedLate: () => Promise.resolve(false) };
      } catch {
        logger.debug({ orderId: event.orderId }, 'webhook not applied within its wait');
        return {
          applied: false,
          appliedLate: () => withDeadline(stored, WEBHOOK_LATE_APPLY_WAIT_MS).catch(() => false),
        };
      }
    };
    const routes: Route[] = [
      webhookRoute({
        db,
        names,
        record: webhookInbox.record,
        ...(config.WEBHOOK_APPLY_WAIT_MS > 0 && { apply: applyWebhook }),
        secret: config.PSP_WEBHOOK_SECRET,
        previousSecret: config.PSP_WEBHOOK_SECRET_PREVIOUS,
        toleranceS: config.PSP_WEBHOOK_TOLERANCE_S,
        wakeRelay: () => relay.wake(),
        now,
        onRejected: (rejected) => {
          metrics.webhookRejected(rejected);
          logger.warn(
            {
              reason: rejected.message,
              rejection: rejected.rejection,
              requestId: rejected.requestId,
            },
            'webhook rejected',
          );
        },
        onIgnored: (event) =>
          logger.warn(event, 'webhook of a type Settle does not handle: acknowledged, ignored'),
        onAccepted: (event) => {
          metrics.webhookAccepted({ way: event.way, ms: event.ms });
          if (event.unknownOrder) {
            logger.warn(
              event,
              'webhook for an order this runtime does not know: kept, and dead-lettered for review',
            );
          } else if (logger.isLevelEnabled('info')) logger.info(event, 'webhook accepted');
        },
      }),
      // Liveness: answered by the event loop alone, never by MySQL or NATS, so a probe that
      // restarts dead nodes does not restart every node during a dependency outage.
      {
        method: 'GET',
        path: '/livez',
        handle: async () => json(200, { status: 'ok', node: nodeName }),
      },
      // Readiness: 503 while MySQL or NATS is down (HealthMonitor).
      {
        method: 'GET',
        path: '/healthz',
        handle: async () => {
          const status = monitor.status;
          return json(status.serving ? 200 : 503, {
            status: status.serving ? 'ok' : 'degraded',
            node: nodeName,
            mysql: status.mysql ? 'up' : 'down',
            nats: status.nats ? 'up' : 'down',
          });
        },
      },
      // REST twin, /metrics and the admin panel.
      ...operatorRoutes({
        config,
        db,
        jsm,
        names,
        registry,
        consumerProgress: () => consumer.progress(),
        psp,
        payments,
        metrics,
        logger,
        nodeName,
        wakeRelay: () => relay.wake(),
        now,
        adminWrongTokens,
        adminClients,
        apiTokens,
        apiRateLimit,
      }),
    ];
    if (timings !== undefined) {
      routes.push(
        debugProfileRoute(),
        debugStatsRoute({
          timings,
          node: nodeName,
          actors: () => ({
            live: registry.size,
            passivated: registry.passivated,
            mailboxDepth: registry.mailboxDepth(),
          }),
        }),
      );
    }
    const httpServer = createHttpServer(
      () => routes,
      (error, context) =>
        logger.error({ err: error, ...context }, 'internal error in HTTP handler'),
      {
        onClientAborted: (context) =>
          logger.debug(context, 'the client aborted the request before its body ended'),
        tls: tls.http,
        onTlsHandshakeFailed: (reason) => metrics.tlsHandshakeFailed({ port: 'http', reason }),
      },
    );
    if (tls.http !== undefined) metrics.tlsHandshakesServed('http');
    const httpPort = await listenHttp(
      httpServer,
      config.SETTLE_HTTP_ADDR.host,
      overrides.httpPort ?? config.SETTLE_HTTP_ADDR.port,
      'SETTLE_HTTP_ADDR',
    );
    // From here on, renewed certificates reach both ports without a restart.
    const tlsReloader = new TlsReloader({
      config,
      tls,
      apply: {
        grpc: grpcCredentials.update,
        http:
          httpServer instanceof https.Server
            ? (next) => httpServer.setSecureContext(httpsContextOptions(next))
            : undefined,
      },
      logger,
      metrics,
      now,
    });
    tlsReloader.start(config.TLS_RELOAD_INTERVAL_S * 1_000);
    cleanups.push(() => tlsReloader.stop());
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          httpServer.close(() => resolve());
          httpServer.closeAllConnections();
        }),
    );

    // Work: relay and consumer start last, stop first (cleanups run in reverse).
    relay.start();
    cleanups.push(() => relay.stop());
    await consumer.start();
    cleanups.push(() => consumer.stop(graceLeft()));

    const janitor = new Janitor(
      db,
      names,
      {
        orderExpiryMs: config.ORDER_EXPIRY_MS,
        stuckMs: config.JANITOR_STUCK_MS,
        intervalMs: config.JANITOR_INTERVAL_MS,
        batchMax: config.JANITOR_BATCH_MAX,
        leaseMs: config.JANITOR_LEASE_MS,
      },
      {
        now,
        wakeRelay: () => relay.wake(),
        onPass: (pass) =>
          logger.info(
            {
              expired: pass.expired.length,
              checked: pass.checked.length,
              resolvedDeadLetters: pass.resolvedDeadLetters.length,
            },
            'janitor pass acted',
          ),
        onError: repeatingFailureLog(logger, 'janitor pass failed'),
      },
    );
    janitor.start();
    cleanups.push(() => janitor.stop());

    // Bounded deletes of expired rows, whether or not the nightly reconciliation runs. The order
    // transitions and reconciliation mismatches are audit history and are kept.
    const commandStreamPurge = new CommandStreamPurge(jsm, names);
    const housekeeping = new Housekeeping(
      [
        {
          name: HOUSEKEEPING_TASK.idempotencyKey,
          run: (at) => purgeIdempotencyKeys(db, new Date(at.getTime() - config.IDEMPOTENCY_TTL_MS)),
        },
        {
          name: HOUSEKEEPING_TASK.settlementStaging,
          run: (at) => purgeExpiredStaging(db, at, config.RECONCILIATION_KEEP_DAYS),
        },
        {
          name: HOUSEKEEPING_TASK.webhookInbox,
          run: (at) => purgeWebhookInbox(db, daysBefore(at, config.WEBHOOK_INBOX_KEEP_DAYS)),
        },
        {
          name: HOUSEKEEPING_TASK.deadLetter,
          run: (at) => purgeClosedDeadLetters(db, daysBefore(at, config.DEAD_LETTER_KEEP_DAYS)),
        },
        {
          // Consumed commands, before they fill the stream and it refuses the relay's publishes.
          name: HOUSEKEEPING_TASK.commandStream,
          run: () => commandStreamPurge.run(),
        },
      ],
      {
        intervalMs: HOUSEKEEPING_INTERVAL_MS,
        firstPassMs: HOUSEKEEPING_FIRST_PASS_MS,
        now,
        onPurged: ({ task, rows }) => {
          metrics.rowsPurged({ task, rows });
          logger.info({ task, rows }, 'housekeeping deleted expired rows');
        },
        onError: (task, error) => {
          metrics.housekeepingFailed({ task });
          logger.warn({ err: error, task }, 'housekeeping task failed');
        },
      },
    );
    housekeeping.start();
    cleanups.push(() => housekeeping.stop());

    const reconciliationAt = utcMinutesOf(config.RECONCILIATION_AT);
    if (reconciliationAt !== undefined) {
      const schedule = new ReconciliationSchedule({
        db,
        reconciliation,
        nodeName,
        atMinutes: reconciliationAt,
        catchUpDays: config.RECONCILIATION_CATCH_UP_DAYS,
        retryMs: config.RECONCILIATION_RETRY_MS,
        now,
        onOutcome: (outcome) => logger.info(outcome, `nightly reconciliation of ${outcome.day}`),
        onError: (error) => logger.warn({ err: error }, 'nightly reconciliation check failed'),
      });
      schedule.start();
      cleanups.push(() => schedule.stop());
    }

    monitor.start();
    cleanups.push(() => monitor.stop());
    health.setServing(true);
    cleanups.push(() => health.setServing(false));
    logger.info(
      {
        grpc: `${config.SETTLE_GRPC_ADDR.host}:${grpcPort}`,
        http: `${config.SETTLE_HTTP_ADDR.host}:${httpPort}`,
        grpcTls: tlsMode(tls.grpc),
        httpTls: tlsMode(tls.http),
        namespace: config.SETTLE_NAMESPACE,
      },
      'settle node ready',
    );
    const tlsLines = tlsStartupLines(config, tls, { grpc: grpcPort, http: httpPort }, now());
    for (const line of tlsLines.info) logger.info(line);
    for (const line of tlsLines.warn) logger.warn(line);
    if (
      config.LOCAL_EXECUTE_HOLD_MS > 0 &&
      config.LOCAL_EXECUTE_HOLD_MS <= config.PSP_CALL_TIMEOUT_MS
    ) {
      logger.warn(
        `LOCAL_EXECUTE_HOLD_MS (${config.LOCAL_EXECUTE_HOLD_MS}) is not above PSP_CALL_TIMEOUT_MS (${config.PSP_CALL_TIMEOUT_MS}): a slow PSP call can outlast the hold, and the order is then also run through JetStream (harmless, but wasted work); raise the hold`,
      );
    }
    if (!apiTokens.enabled) {
      logger.warn(
        'API_TOKENS is not set: PaymentService, WalletService, LedgerService, ReconciliationService and the REST twin (/v1/payments) answer anyone who reaches the ports; set API_TOKENS (tokens of 16 characters or more, separated by commas) to require "authorization: Bearer <token>"',
      );
    } else {
      // Which callers the node knows, so an operator sees a token given the wrong scope (or an
      // item taken for a token alone) at start, not when a caller is refused.
      const callers = apiTokens.callers.map(({ name, scope }) => `${name} (${scope})`);
      logger.info(
        { apiCallers: apiTokens.callers },
        `API_TOKENS: ${callers.length} tokens: ${callers.join(', ')}`,
      );
    }
    if (apiRateLimit !== undefined) {
      logger.info(
        { apiRateLimit: { perS: apiRateLimit.perS, burst: apiRateLimit.burst } },
        `API_RATE_LIMIT_PER_S: ${apiRateLimit.perS} requests/s (bursts of ${apiRateLimit.burst}) ` +
          `per caller on this node, for ${apiRateLimit.callers.join(', ')}`,
      );
    } else if (config.API_RATE_LIMIT_BURST !== undefined) {
      // Accepted, not refused: an operator who switches the limit off in an incident by setting
      // the rate to 0 must not get a node that will not start over the burst left in its env.
      logger.warn(
        `API_RATE_LIMIT_BURST (${config.API_RATE_LIMIT_BURST}) is ignored while API_RATE_LIMIT_PER_S is 0 (no rate limit); set API_RATE_LIMIT_PER_S to limit callers, or unset API_RATE_LIMIT_BURST`,
      );
    }
    if (config.ADMIN_TOKEN === undefined) {
      logger.warn(
        config.ADMIN_READONLY_OPEN
          ? 'ADMIN_TOKEN is not set: admin reads (panel pages, dead letters, timelines) are open to anyone who reaches the ports (ADMIN_READONLY_OPEN) and admin actions are refused; set ADMIN_TOKEN (16 characters or more) to act'
          : 'ADMIN_TOKEN is not set: the admin panel and AdminService (dead letters, timelines) refuse every call; set ADMIN_TOKEN (16 characters or more) to use them',
      );
    }
    return {
      config,
      grpcPort,
      httpPort,
      db,
      oneTripDb,
      nc,
      names,
      payments,
      relay,
      local,
      consumer,
      registry,
      janitor,
      housekeeping,
      psp,
      health,
      logger,
      metrics,
      reconciliation,
      routes,
      dispatch,
      reloadTls: () => tlsReloader.reload(),
      stop: stopAll,
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

export function commandToEvent(command: Command): OrderEvent {
  switch (command.type) {
    case 'ExecuteOrder':
      return { type: 'ExecuteOrder' };
    case 'ExpireOrder':
      return { type: 'ExpiryDue' };
    case 'CheckOrderStatus':
      return { type: 'StatusCheckDue' };
    case 'PspResult': {
      // Absent from commands queued before they were carried: the machine then checks the amount.
      const payment = {
        ...(command.token !== undefined && { token: command.token }),
        ...(command.currency !== undefined && { currency: command.currency }),
      };
      return command.outcome === 'SUCCEEDED'
        ? {
            type: 'PspSucceeded',
            eventId: command.eventId,
            pspReference: command.pspReference ?? '',
            amountMinor: BigInt(command.amountMinor),
            ...payment,
          }
        : {
            type: 'PspDeclined',
            eventId: command.eventId,
            declineCode: command.declineCode ?? 'declined',
            ...payment,
          };
    }
  }
}

/** How a port serves, for the start-up log: plaintext, TLS, or TLS with client certificates. */
function tlsMode(portTls: ServerTls['grpc']): 'off' | 'tls' | 'mtls' {
  if (portTls === undefined) return 'off';
  return portTls.clientCa === undefined ? 'tls' : 'mtls';
}

/** Refused gRPC connections are logged at most once a minute. */
const REFUSED_CONNECTION_LOG_MS = 60_000;

/**
 * The warning for gRPC connections refused past GRPC_CONNECTIONS_MAX: the first at once, then at
 * most one line a minute counting those refused since, as a client opening connections in a loop
 * would otherwise write a line for each (the metric counts every one).
 */
function refusedConnectionLog(
  logger: Logger,
  connectionsMax: number,
): (remoteAddress: string | undefined) => void {
  let loggedAtMs = Number.NEGATIVE_INFINITY;
  let refused = 0;
  return (remoteAddress) => {
    refused += 1;
    const at = Date.now();
    if (at - loggedAtMs < REFUSED_CONNECTION_LOG_MS) return;
    logger.warn(
      { remoteAddress, refused, connectionsMax },
      `gRPC connections refused: ${connectionsMax} open (GRPC_CONNECTIONS_MAX)`,
    );
    loggedAtMs = at;
    refused = 0;
  };
}

function shutdownGrpc(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
