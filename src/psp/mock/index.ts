/**
 * The PSP mock's public API: startPspMock() runs the whole mock in-process (its own database and
 * migrations, the gRPC API, the hosted page and the webhook sender) and returns a handle to stop
 * it and to change its behaviour. src/psp/mock/main.ts runs it as a standalone process; tests
 * start it on port 0 with a database of their own.
 */
import {
  ConfigError,
  pspPublicUrl,
  settlePublicUrl,
  utcMinutesOf,
  type Config,
} from '../../config.js';
import { ensureDatabase, openDatabase } from '../../storage/db.js';
import { assertGuardsTrip } from '../../storage/one-trip.js';
import type { GroupCommitBatch } from '../../storage/group-commit.js';
import {
  BehaviorStore,
  initialBehavior,
  type PspBehavior,
  type PspBehaviorPatch,
} from './behavior.js';
import { BoundedTasks } from './bounded-tasks.js';
import { startPspGrpcServer } from './grpc-server.js';
import { startPspHttpServer } from './http-server.js';
import { migratePspToLatest } from './migrations/index.js';
import { PspPayments } from './payments.js';
import { PSP_GUARD_TABLE, type PspDatabase } from './schema.js';
import {
  injectSettlementDiscrepancy,
  settlementDirProblem,
  SettlementFileSchedule,
  writeSettlementFile,
  type SettlementDiscrepancy,
} from './settlement-file.js';
import {
  WEBHOOK_SENDER_DEFAULTS,
  WebhookSender,
  type WebhookSenderOptions,
} from './webhook-sender.js';

export type { PspBehavior, PspBehaviorPatch } from './behavior.js';
export type { WebhookSenderOptions } from './webhook-sender.js';
export { TEST_CARD, DECLINE_CODE } from './card.js';
export { PSP_PAYMENT_STATE, type PspPaymentState } from './schema.js';
export { settlementFeeMinor, settlementFileName, writeSettlementFile } from './settlement-file.js';

/**
 * Auto-pay runs at most this many payments at once and queues at most this many more. Their
 * decisions are group-committed (two transactions in flight at most), so the concurrency sets
 * how many can share a transaction rather than how many connections are busy.
 */
const AUTO_PAY_CONCURRENCY_MAX = 64;
const AUTO_PAY_QUEUE_MAX = 10_000;
/** Connections of the mock's own pool. */
const POOL_SIZE = 8;
/**
 * Batches in flight of each of the mock's three group commits (registrations, decisions,
 * delivered marks) at most, whatever GROUP_COMMITS_IN_FLIGHT says: together they may hold
 * three quarters of the pool, and the poll, claims and reads keep the rest.
 */
const GROUP_COMMITS_IN_FLIGHT_MAX = POOL_SIZE / 4;
/** After downtime, the mock writes the missing settlement files of at most this many days. */
const SETTLEMENT_CATCH_UP_DAYS = 7;

export type StartPspMockOptions = Readonly<{
  config: Config;
  /** gRPC port; 0 picks a free one. Default: config.PSP_GRPC_ADDR's port. */
  grpcPort?: number;
  /** Hosted-page port; 0 picks a free one. Default: config.PSP_HTTP_ADDR's port. */
  httpPort?: number;
  /** The mock's own database. Default: config.PSP_MYSQL_URL. Created if missing. */
  mysqlUrl?: string;
  /** Receives one line per notable event; silent by default. */
  log?: (line: string) => void;
  /** Overrides of the webhook sender's timing (tests use short backoffs). */
  webhook?: Partial<WebhookSenderOptions>;
  /**
   * Told of every group-commit batch ('psp registrations', 'psp decisions', 'webhook
   * deliveries'), so tests can see that batches of several units really commit.
   */
  onBatch?: (name: string, batch: GroupCommitBatch) => void;
}>;

export type PspMock = Readonly<{
  grpcPort: number;
  httpPort: number;
  /** Base URL of the hosted pages, e.g. http://127.0.0.1:8081 (checkout URLs start with it). */
  publicUrl: string;
  /**
   * Stops accepting calls (gRPC, then HTTP), waits for running auto-pays, stops the webhook
   * sender (attempts in flight are aborted and retried after a restart), closes the database.
   * Idempotent.
   */
  stop: () => Promise<void>;
  /** Changes the behaviour as SetBehavior does; throws InvalidArgumentError for a bad field. */
  setBehavior: (patch: PspBehaviorPatch) => PspBehavior;
  /** The current behaviour. */
  behavior: () => PspBehavior;
}>;

/**
 * Starts the PSP mock. Fails with UnavailableError (naming the address) when MySQL is
 * unreachable; everything started before a failure is stopped again.
 */
export async function startPspMock(options: StartPspMockOptions): Promise<PspMock> {
  const { config } = options;
  const log = options.log ?? (() => undefined);
  const mysqlUrl = options.mysqlUrl ?? config.PSP_MYSQL_URL;
  const cleanups: Array<() => Promise<void>> = [];
  const cleanUp = async () => {
    for (const cleanup of cleanups.reverse()) {
      await cleanup().catch((error: unknown) =>
        log(`psp mock: stop step failed: ${String(error)}`),
      );
    }
    cleanups.length = 0;
  };

  try {
    // A folder the mock cannot write is a setting to fix, told at start, not at the first file.
    const settlementDir = await settlementDirProblem(config.SETTLEMENT_DIR);
    if (settlementDir !== undefined) throw new ConfigError([`SETTLEMENT_DIR: ${settlementDir}`]);
    await ensureDatabase(mysqlUrl);
    // Registrations, decisions and webhook rows are written in one-packet transactions.
    const database = openDatabase<PspDatabase>(mysqlUrl, {
      poolSize: POOL_SIZE,
      multipleStatements: true,
    });
    cleanups.push(database.close);
    await migratePspToLatest(database.db);
    // Decisions commit in one packet behind a row-count guard: it must be able to fail.
    await assertGuardsTrip(database.db, PSP_GUARD_TABLE);

    const behavior = new BehaviorStore(initialBehavior(config));
    const groupCommit = {
      batchMax: config.GROUP_COMMIT_MAX,
      inFlightMax: Math.min(config.GROUP_COMMITS_IN_FLIGHT, GROUP_COMMITS_IN_FLIGHT_MAX),
    };
    const sender = new WebhookSender({
      db: database.db,
      secret: config.PSP_WEBHOOK_SECRET,
      options: { ...WEBHOOK_SENDER_DEFAULTS, ...options.webhook },
      log,
      groupCommit,
      onBatch: options.onBatch,
    });
    sender.start();
    cleanups.push(() => sender.stop());

    const payments = new PspPayments({
      db: database.db,
      behavior,
      defaultNotificationUrl: `${settlePublicUrl(config).replace(/\/+$/, '')}/webhooks/psp`,
      webhooks: sender,
      groupCommit,
      onBatch: options.onBatch,
    });

    const autoPay = new BoundedTasks({
      concurrencyMax: AUTO_PAY_CONCURRENCY_MAX,
      queueMax: AUTO_PAY_QUEUE_MAX,
      onError: (error) => log(`psp auto-pay failed: ${String(error)}`),
    });
    cleanups.push(() => autoPay.close());

    const httpPortWanted = options.httpPort ?? config.PSP_HTTP_ADDR.port;
    const http = await startPspHttpServer({
      payments,
      host: config.PSP_HTTP_ADDR.host,
      port: httpPortWanted,
      log,
    });
    cleanups.push(http.stop);
    // On an ephemeral port the configured public URL cannot be right; the real port is.
    const publicUrl = httpPortWanted === 0 ? `http://127.0.0.1:${http.port}` : pspPublicUrl(config);

    const fees = { percentBp: config.PSP_FEE_PERCENT_BP, fixedMinor: config.PSP_FEE_FIXED_MINOR };
    const settlement = {
      generate: (day: string) =>
        writeSettlementFile({ db: database.db, dir: config.SETTLEMENT_DIR, day, fees }),
      inject: (discrepancy: SettlementDiscrepancy) =>
        injectSettlementDiscrepancy(database.db, discrepancy, new Date()),
    };
    const settlementAt = utcMinutesOf(config.PSP_SETTLEMENT_AT);
    if (settlementAt !== undefined) {
      const files = new SettlementFileSchedule({
        db: database.db,
        dir: config.SETTLEMENT_DIR,
        fees,
        atMinutes: settlementAt,
        catchUpDays: SETTLEMENT_CATCH_UP_DAYS,
        checkMsMax: 60_000,
        now: () => new Date(),
        log,
      });
      files.start();
      cleanups.push(() => files.stop());
    }

    const grpc = await startPspGrpcServer({
      settlement,
      payments,
      behavior,
      publicUrl,
      host: config.PSP_GRPC_ADDR.host,
      port: options.grpcPort ?? config.PSP_GRPC_ADDR.port,
      connectionsMax: config.PSP_GRPC_CONNECTIONS_MAX,
      log,
      onRegistered: (payment) => {
        const card = behavior.get().autoPayCard;
        if (card === undefined) return;
        const queued = autoPay.push(async () => {
          await payments.payRegistered(payment, card);
        });
        if (!queued) log(`psp auto-pay: queue full, payment ${payment.token} stays REGISTERED`);
      },
    });
    cleanups.push(grpc.stop);

    log(
      `psp mock: gRPC ${config.PSP_GRPC_ADDR.host}:${grpc.port}, hosted pages ${publicUrl}, ` +
        `database ${new URL(mysqlUrl).pathname.slice(1)}`,
    );

    let stopping: Promise<void> | undefined;
    return Object.freeze({
      grpcPort: grpc.port,
      httpPort: http.port,
      publicUrl,
      stop: () => (stopping ??= cleanUp()),
      setBehavior: (patch: PspBehaviorPatch) => behavior.patch(patch),
      behavior: () => behavior.get(),
    });
  } catch (error) {
    await cleanUp();
    throw error;
  }
}
