/**
 * The operator surface on Settle's HTTP port, wired in one place: the REST twin (/v1/payments),
 * Prometheus metrics (/metrics) and the admin panel (/admin). startSettle adds these routes;
 * everything they need comes from the node that is already running.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { Config } from '../config.js';
import type { WrongTokenLimit } from '../admin/auth.js';
import type { ClientResolver } from '../admin/client-address.js';
import type { ApiTokens } from '../grpc/api-auth.js';
import type { ApiRateLimit } from '../grpc/api-rate-limit.js';
import { adminRoutes } from '../admin/routes.js';
import { tableDeadLetters } from '../admin/dead-letter-source.js';
import type { ConsumerProgress } from '../messaging/command-consumer.js';
import type { Names } from '../messaging/subjects.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import {
  ConsumerInfoReads,
  operationsSnapshot,
  PaymentCounts,
  probeWithin,
} from '../observability/operations.js';
import { restCallObserver } from '../observability/request-log.js';
import type { PaymentService } from '../payments/payment.service.js';
import type { Db } from '../storage/db.js';
import { paymentRoutes } from './payments.routes.js';
import type { Route } from './router.js';

/** How long each operations probe (NATS, MySQL) may take on a page view or scrape. */
const PROBE_TIMEOUT_MS = 2_000;
/** How long counts of payments in final states are reused (they only grow with the table). */
const FINAL_PAYMENT_COUNTS_REUSE_MS = 60_000;

export type OperatorDeps = Readonly<{
  config: Config;
  db: Db;
  jsm: JetStreamManager;
  names: Names;
  registry: { size: number; passivated: number; mailboxDepth(): number };
  /** What the node's runtime consumer last saw, for the consumer lag (no request to NATS). */
  consumerProgress: () => ConsumerProgress;
  psp: object;
  payments: PaymentService;
  metrics: Metrics;
  logger: Logger;
  nodeName: string;
  /** Wakes the outbox relay after a replay wrote to the outbox. */
  wakeRelay: () => void;
  now: () => Date;
  /** The node's bound on wrong admin tokens, shared with AdminService. */
  adminWrongTokens: WrongTokenLimit;
  /** Who sends a request (TRUSTED_PROXIES), shared with AdminService. */
  adminClients: ClientResolver;
  /** API_TOKENS: the REST twin asks for one, as the gRPC API does. */
  apiTokens: ApiTokens;
  /** API_RATE_LIMIT_PER_S, shared with the gRPC API; undefined when off. */
  apiRateLimit?: ApiRateLimit | undefined;
}>;

export function operatorRoutes(deps: OperatorDeps): Route[] {
  const { config, logger } = deps;
  const log = (error: unknown, context: Record<string, unknown>) =>
    logger.error({ err: error, ...context }, 'internal error in operator route');
  const deadLetters = tableDeadLetters({ db: deps.db, wakeRelay: deps.wakeRelay, now: deps.now });
  const paymentCounts = new PaymentCounts(deps.db, FINAL_PAYMENT_COUNTS_REUSE_MS);
  const snapshot = () =>
    operationsSnapshot({
      db: deps.db,
      jsm: deps.jsm,
      names: deps.names,
      consumerProgress: deps.consumerProgress,
      registry: deps.registry,
      psp: deps.psp,
      deadLetters,
      probeTimeoutMs: PROBE_TIMEOUT_MS,
      paymentCounts,
    });
  deps.metrics.setSnapshotSource(snapshot);
  const consumerInfoReads = new ConsumerInfoReads(deps.jsm, deps.names);
  return [
    ...paymentRoutes(deps.payments, {
      log,
      observe: restCallObserver(logger, deps.metrics, deps.apiTokens),
      apiTokens: deps.apiTokens,
      apiRateLimit: deps.apiRateLimit,
    }),
    {
      method: 'GET',
      path: '/metrics',
      handle: async () => {
        const { contentType, body } = await deps.metrics.render();
        return { status: 200, headers: { 'content-type': contentType }, body };
      },
    },
    ...adminRoutes({
      db: deps.db,
      names: deps.names,
      auth: { token: config.ADMIN_TOKEN, readonlyOpen: config.ADMIN_READONLY_OPEN },
      // A panel this node serves over HTTPS itself is only ever reached through TLS.
      cookie: { secure: config.ADMIN_COOKIE_SECURE || config.HTTP_TLS_CERT_FILE !== undefined },
      deadLetters,
      snapshot,
      consumerInfo: () => probeWithin(() => consumerInfoReads.read(), PROBE_TIMEOUT_MS),
      psp: deps.psp,
      nodeName: deps.nodeName,
      settings: [
        ['RETRY_BACKOFF_MS', config.RETRY_BACKOFF_MS.join(',')],
        ['CONSUMER_ACK_WAIT_MS', String(config.CONSUMER_ACK_WAIT_MS)],
        ['CONSUMER_MAX_ACK_PENDING', String(config.CONSUMER_MAX_ACK_PENDING)],
        ['PSP_CALL_TIMEOUT_MS', String(config.PSP_CALL_TIMEOUT_MS)],
        [
          'PSP breaker (reset ms / error % / volume)',
          `${config.PSP_BREAKER_RESET_MS} / ${config.PSP_BREAKER_ERROR_PERCENT} / ${config.PSP_BREAKER_VOLUME_THRESHOLD}`,
        ],
        [
          'ACTOR_MAILBOX_CAPACITY / ACTORS_MAX',
          `${config.ACTOR_MAILBOX_CAPACITY} / ${config.ACTORS_MAX}`,
        ],
        [
          'OUTBOX_BATCH_MAX / OUTBOX_POLL_MS',
          `${config.OUTBOX_BATCH_MAX} / ${config.OUTBOX_POLL_MS}`,
        ],
      ],
      now: deps.now,
      wrongTokens: deps.adminWrongTokens,
      clients: deps.adminClients,
      log,
      onAction: (action) =>
        (action.outcome === 'OK' ? logger.info : logger.warn).call(
          logger,
          { admin: action },
          `admin ${action.action} on ${action.target} by ${action.actor}: ${action.outcome}`,
        ),
    }),
  ];
}
