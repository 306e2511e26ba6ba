/**
 * The one configuration schema of Settle and its PSP mock. Every setting comes from the
 * environment, is validated here once, and the frozen result is passed down; nothing else reads
 * process.env. Every problem is reported at once (not just the first one).
 */
import { z } from 'zod';
import { TRUSTED_PROXIES_MAX, trustedProxyRange } from './admin/client-address.js';
import {
  ADMIN_TOKEN_CHARACTERS,
  apiTokenListProblems,
  parseApiTokenItem,
  type ApiTokenEntry,
} from './domain/api-token.js';
import { GRPC_CONNECTIONS_MAX_DEFAULT } from './grpc/limits.js';

const PORT_MAX = 65_535;

/** Whether `port` (the text after a URL's host) is a port number; '' (no port) passes. */
function isPort(port: string): boolean {
  return port === '' || (/^\d{1,5}$/.test(port) && Number(port) <= PORT_MAX);
}

/** Whether `value` parses as a URL whose port, if any, is a port number. */
function parsesWithPort(value: string): boolean {
  try {
    return isPort(new URL(value).port);
  } catch {
    return false;
  }
}

const hostPort = z
  .string()
  .regex(/^[^:\s]+:\d{1,5}$/, 'must be host:port, for example 127.0.0.1:50051')
  .refine((value) => Number(value.slice(value.lastIndexOf(':') + 1)) <= PORT_MAX, {
    error: `the port must be 0-${PORT_MAX}`,
    abort: true,
  })
  .transform((value) => {
    const index = value.lastIndexOf(':');
    return { host: value.slice(0, index), port: Number(value.slice(index + 1)) };
  });

const MYSQL_URL_SHAPE =
  'must be mysql://user[:password]@host:port/database[?socket=/path/to/mysqld.sock]';
const mysqlUrl = z
  .string()
  .regex(/^mysql:\/\/[^/]+\/[A-Za-z0-9_]+(\?.*)?$/, MYSQL_URL_SHAPE)
  .refine(parsesWithPort, { error: `${MYSQL_URL_SHAPE}, with a port of 0-${PORT_MAX}` });

const NATS_URL_SHAPE = 'must be nats://host:port (several separated by commas)';
const natsUrl = z
  .string()
  .regex(/^(nats|tls):\/\/\S+$/, NATS_URL_SHAPE)
  .refine((value) => value.split(',').every((server) => parsesWithPort(server.trim())), {
    error: `${NATS_URL_SHAPE}, each with a port of 0-${PORT_MAX}`,
  });

/** A number from the environment, with messages that say what is expected. */
const number = () =>
  z.coerce
    .number({ error: (issue) => (issue.code === 'invalid_type' ? 'must be a number' : undefined) })
    .refine(Number.isFinite, 'must be a number');
const fraction = number().min(0).max(1);
const positiveInt = number().int('must be a whole number').positive('must be greater than 0');
const nonNegativeInt = number().int('must be a whole number').nonnegative('must be 0 or more');
const csv = z.string().transform((value) =>
  value
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item.length > 0),
);

/** Tokens API_TOKENS may list at once: the current ones and those being rotated out. */
const API_TOKENS_MAX = 16;
/** The highest API_RATE_LIMIT_PER_S: far more than one node serves, so any real limit fits. */
const API_RATE_LIMIT_PER_S_MAX = 1_000_000;
/** The highest API_RATE_LIMIT_BURST: ten seconds of the highest rate. */
const API_RATE_LIMIT_BURST_MAX = 10_000_000;

/** A time of day "HH:MM" in UTC, or "off"; kept as text so a parsed config can be re-parsed. */
const utcTimeOrOff = z
  .string()
  .regex(/^(off|([01]\d|2[0-3]):[0-5]\d)$/, 'must be HH:MM (UTC) or off');

export const configSchema = z.object({
  SETTLE_GRPC_ADDR: hostPort.prefault('127.0.0.1:50051'),
  SETTLE_HTTP_ADDR: hostPort.prefault('127.0.0.1:8080'),
  /** Base URL the PSP uses to reach Settle's webhook endpoint; derived from SETTLE_HTTP_ADDR when unset. */
  SETTLE_PUBLIC_URL: z.url().optional(),
  SETTLE_NAMESPACE: z
    .string()
    .regex(/^[a-z0-9_]{1,32}$/, 'must be 1-32 characters of a-z, 0-9 and _')
    .default('dev'),
  MYSQL_URL: mysqlUrl.default('mysql://root@127.0.0.1:3306/settle'),
  MYSQL_POOL_SIZE: positiveInt.max(256).default(16),
  MYSQL_LOCK_WAIT_TIMEOUT_S: positiveInt.max(3_600).default(5),
  /**
   * The deadline of every MySQL statement, in ms: one whose server stops answering (a partition,
   * a frozen server) fails past it as the database being unavailable, outcome unknown, instead of
   * waiting ~15 minutes for TCP to give up. Generous, because it is not there to cut slow
   * statements: above MYSQL_LOCK_WAIT_TIMEOUT_S and the classification lock's GET_LOCK wait
   * (CLASSIFICATION_LOCK_STEP_S; loadConfig checks both; storage/db.ts says what else it clears).
   */
  MYSQL_STATEMENT_TIMEOUT_MS: positiveInt.min(1_000).max(3_600_000).default(30_000),
  /** The same for migrations and reconciliation, whose statements span whole files and tables. */
  MYSQL_BULK_STATEMENT_TIMEOUT_MS: positiveInt.min(1_000).max(86_400_000).default(600_000),
  NATS_URL: natsUrl.default('nats://127.0.0.1:4222'),
  /**
   * At start, how long a node waits for MySQL and NATS to become reachable, trying again with
   * backoff, before it gives up (exit 3). 0 gives up at the first failure.
   */
  STARTUP_WAIT_MS: nonNegativeInt.max(3_600_000).default(60_000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),

  PSP_GRPC_ADDR: hostPort.prefault('127.0.0.1:50052'),
  /**
   * Connections the PSP mock's gRPC port takes at once; past it a new one is closed as soon as it
   * is accepted. Its callers are Settle nodes (one channel each), test drivers and tools, so a
   * thousand is far more than it meets; idle, they hold some 22 MiB.
   */
  PSP_GRPC_CONNECTIONS_MAX: positiveInt.max(1_000_000).default(1_000),
  PSP_HTTP_ADDR: hostPort.prefault('127.0.0.1:8081'),
  /** Base URL of the PSP mock's hosted pages; derived from PSP_HTTP_ADDR when unset. */
  PSP_PUBLIC_URL: z.url().optional(),
  PSP_MYSQL_URL: mysqlUrl.default('mysql://root@127.0.0.1:3306/settle_psp'),
  /** Shared secret of the webhook signatures (HMAC-SHA256). The default is for local use only. */
  PSP_WEBHOOK_SECRET: z.string().min(16).default('whsec_settle_local_development'),
  /**
   * The secret being rotated out: webhooks signed with it are accepted beside PSP_WEBHOOK_SECRET
   * until the PSP signs with the new one. Unset outside a rotation.
   */
  PSP_WEBHOOK_SECRET_PREVIOUS: z.string().min(16).optional(),
  PSP_WEBHOOK_TOLERANCE_S: positiveInt.max(3600).default(300),
  /**
   * How long a webhook waits for its order's actor on this node to apply it in the same
   * transaction as its inbox row; past it (or on any other outcome) the event goes the durable way
   * (inbox + outbox command through JetStream). 0 always takes the durable way.
   */
  WEBHOOK_APPLY_WAIT_MS: nonNegativeInt.max(30_000).default(2_000),
  PSP_SUCCESS_RATE: fraction.default(0.9),
  PSP_LATENCY_MS: nonNegativeInt.max(60_000).default(0),
  PSP_ERROR_RATE: fraction.default(0),
  PSP_CALL_TIMEOUT_MS: positiveInt.max(60_000).default(3_000),
  PSP_BREAKER_RESET_MS: positiveInt.max(600_000).default(5_000),
  /**
   * The breaker opens when more than this share of the window's calls failed: at 100 no share is
   * more, and it would never open, so 99 is the most.
   */
  PSP_BREAKER_ERROR_PERCENT: positiveInt
    .max(99, 'must be at most 99: the breaker opens above it, and no failure share is above 100')
    .default(50),
  PSP_BREAKER_VOLUME_THRESHOLD: positiveInt.max(1_000).default(5),
  PSP_IN_FLIGHT_MAX: positiveInt.max(10_000).default(256),

  RISK_MAX_PAYMENT_AMOUNT_MINOR: z.coerce
    .bigint({
      error: (issue) =>
        issue.code === 'invalid_type' ? 'must be a whole number of minor units' : undefined,
    })
    .positive('must be greater than 0')
    .default(100_000_000n),
  RISK_BLOCKED_BUYERS: csv.prefault(''),

  CMD_PARTITIONS: positiveInt.max(256).default(16),
  CONSUMER_ACK_WAIT_MS: positiveInt.min(1_000).max(600_000).default(30_000),
  CONSUMER_MAX_ACK_PENDING: positiveInt.max(100_000).default(2_048),
  /** Redelivery delays of a failed command; its length is the number of retries (at most 5). */
  RETRY_BACKOFF_MS: csv
    .transform((items) => items.map(Number))
    .pipe(z.array(z.number().int().positive().max(3_600_000)).min(1).max(5))
    .prefault('1000,2000,4000,8000,16000'),
  /** Group commit: units (transitions, creations, webhooks) per transaction at most; 1 = off. */
  GROUP_COMMIT_MAX: positiveInt.max(1_000).default(128),
  /** Group commit: batch transactions of one kind running at once at most. */
  GROUP_COMMITS_IN_FLIGHT: positiveInt.max(64).default(4),
  ACTOR_MAILBOX_CAPACITY: positiveInt.max(100_000).default(64),
  ACTOR_IDLE_MS: positiveInt.max(3_600_000).default(10_000),
  ACTORS_MAX: positiveInt.max(10_000_000).default(100_000),
  OUTBOX_BATCH_MAX: positiveInt.max(10_000).default(500),
  OUTBOX_POLL_MS: positiveInt.max(60_000).default(250),
  /**
   * A new order's ExecuteOrder runs on the node that created it, and its outbox row is held back
   * from the relay this long: past it (this node died, or the run took that long) any node
   * relays it through JetStream. 0 sends every ExecuteOrder through JetStream at once. Keep it
   * above PSP_CALL_TIMEOUT_MS.
   */
  LOCAL_EXECUTE_HOLD_MS: nonNegativeInt.max(600_000).default(10_000),
  /** How long CreatePayment waits for the PSP to register the orders before it answers. */
  CREATE_WAIT_MS: nonNegativeInt.max(30_000).default(2_000),
  /**
   * How long a request_id is remembered per buyer (and at least until its payment is final).
   * At least an hour, and at least ORDER_EXPIRY_MS (loadConfig checks): a client retrying with
   * the same request_id within it gets the same payment, never a second charge.
   */
  IDEMPOTENCY_TTL_MS: positiveInt.min(3_600_000).default(24 * 3_600_000),
  /**
   * Retention of the webhook inbox: housekeeping deletes the rows of webhooks received more than
   * this many days ago whose order is final (SUCCEEDED, FAILED, EXPIRED). At least 31: longer
   * than a PSP retries an event (the mock: minutes; real PSPs: up to 30 days). An event that
   * comes back after its row went is recorded again and changes nothing: its order is final.
   */
  WEBHOOK_INBOX_KEEP_DAYS: positiveInt.min(31).max(36_500).default(90),
  /**
   * Retention of closed dead letters (REPLAYED, DISCARDED, RESOLVED): housekeeping deletes those
   * closed more than this many days ago; OPEN ones are kept whatever their age. At least 31:
   * longer than JetStream keeps a command (7 days) or its dead-letter copy (30 days), so no
   * message whose dead letter went can be delivered again.
   */
  DEAD_LETTER_KEEP_DAYS: positiveInt.min(31).max(36_500).default(90),
  /** An order not paid this long after creation expires (its PSP registration is cancelled). */
  ORDER_EXPIRY_MS: positiveInt.max(7 * 24 * 3_600_000).default(15 * 60_000),
  /** An unfinished order quiet this long is checked with the PSP by the janitor. */
  JANITOR_STUCK_MS: positiveInt.max(24 * 3_600_000).default(120_000),
  JANITOR_INTERVAL_MS: positiveInt.max(3_600_000).default(5_000),
  JANITOR_BATCH_MAX: positiveInt.max(10_000).default(200),
  /** After acting on an order the janitor leaves it alone this long (on every node). */
  JANITOR_LEASE_MS: positiveInt.max(24 * 3_600_000).default(120_000),
  /**
   * When set, AdminService calls need `authorization: Bearer <token>`. The admin panel needs it
   * (bearer or login form) and refuses everyone while it is unset.
   */
  // It travels in an `authorization` header, which carries printable ASCII only (the CLI refuses
  // to send any other), and the node trims spaces from its ends: ADMIN_TOKEN_CHARACTERS.
  ADMIN_TOKEN: z
    .string()
    .min(16)
    .regex(
      ADMIN_TOKEN_CHARACTERS,
      'must be printable ASCII with no space at either end (it travels in a header)',
    )
    .optional(),
  /**
   * Bearer tokens of the non-admin API (PaymentService, WalletService, LedgerService,
   * ReconciliationService, the REST twin), separated by commas; several while one is rotated
   * out. Each item is a token alone (named `unnamed`, scope write: every method, as before names
   * and scopes), or `<name> <scope> <token>` separated by spaces, scope `read` (only the methods
   * that read) or `write` (src/domain/api-token.ts says why spaces, and why an item written
   * `<name>:<scope>:<token>` is refused). Unset: that API is open to anyone who reaches the ports
   * (the node warns at start).
   */
  API_TOKENS: csv
    .transform((items, context): readonly ApiTokenEntry[] => {
      if (items.length > API_TOKENS_MAX) {
        context.addIssue({ code: 'custom', message: `at most ${API_TOKENS_MAX} tokens` });
      }
      const entries: ApiTokenEntry[] = [];
      for (const [index, item] of items.entries()) {
        const parsed = parseApiTokenItem(item);
        if ('problem' in parsed) {
          context.addIssue({ code: 'custom', path: [index], message: parsed.problem });
        } else entries.push(parsed);
      }
      // Names and tokens are compared once every item reads well, so positions stay right.
      if (entries.length === items.length) {
        for (const { index, problem } of apiTokenListProblems(entries)) {
          context.addIssue({ code: 'custom', path: [index], message: problem });
        }
      }
      return entries;
    })
    .prefault(''),
  /**
   * Requests a second each caller of the non-admin API may make to this node (src/grpc/api-rate-limit.ts):
   * a caller is a token's name in API_TOKENS (all its tokens share one bucket), or, on a node
   * without API_TOKENS, everyone at once. Past it a call is refused RESOURCE_EXHAUSTED (429 on
   * the REST twin) before anything is done for it. Per node: N nodes allow N times as much. 0, the
   * default: no limit.
   */
  API_RATE_LIMIT_PER_S: nonNegativeInt.max(API_RATE_LIMIT_PER_S_MAX).default(0),
  /**
   * Requests a caller may make at once after a quiet spell (the bucket's size), 1 or more: below
   * API_RATE_LIMIT_PER_S it smooths a caller's traffic (100/s in bursts of 10). Unset:
   * API_RATE_LIMIT_PER_S (a second's worth). Ignored while API_RATE_LIMIT_PER_S is 0 (the node
   * warns at start), so an operator can switch the limit off with the rate alone.
   */
  API_RATE_LIMIT_BURST: positiveInt.max(API_RATE_LIMIT_BURST_MAX).optional(),
  /**
   * The reverse proxies and load balancers in front of the admin panel and AdminService:
   * addresses and CIDR ranges, IPv4 or IPv6, separated by commas. A request whose TCP peer is one
   * of them is counted against the client its `X-Forwarded-For` names (the rightmost entry that
   * is not itself a trusted proxy; src/admin/client-address.ts). Unset: the peer is the client.
   */
  TRUSTED_PROXIES: csv
    .superRefine((entries, context) => {
      if (entries.length > TRUSTED_PROXIES_MAX) {
        context.addIssue({
          code: 'custom',
          message: `at most ${TRUSTED_PROXIES_MAX} entries; list networks (CIDR) rather than hosts`,
        });
      }
      for (const entry of entries) {
        const range = trustedProxyRange(entry);
        if (typeof range === 'string') context.addIssue({ code: 'custom', message: range });
      }
    })
    .prefault(''),
  /**
   * Marks the admin panel's session cookie `Secure`, so browsers send it over HTTPS only. Off by
   * default because the panel is served over plain HTTP (127.0.0.1:8080), and browsers keep a
   * Secure cookie only from HTTPS pages (most also from localhost); turn it on behind TLS.
   */
  ADMIN_COOKIE_SECURE: z
    .enum(['true', 'false'])
    .default('false')
    .transform((value) => value === 'true'),
  /**
   * TLS of the gRPC port: its certificate chain (the port's own certificate first) and private
   * key, PEM files read at start (src/tls.ts), both or neither. Unset: plaintext, as the Quick
   * start needs; a node listening beyond loopback without TLS warns at start.
   */
  GRPC_TLS_CERT_FILE: z.string().optional(),
  GRPC_TLS_KEY_FILE: z.string().optional(),
  /**
   * With GRPC_TLS_CERT_FILE: the CA certificates (PEM) whose client certificates the gRPC port
   * requires (mTLS); a client without one fails its handshake. Unset: none is asked for.
   */
  GRPC_TLS_CLIENT_CA_FILE: z.string().optional(),
  /**
   * The same for the HTTP port (webhooks, REST twin, admin panel, /metrics, /healthz): it then
   * serves HTTPS only, and the webhook URL derived for the PSP (SETTLE_PUBLIC_URL unset) is https.
   * A client CA there shuts out every PSP and browser without a client certificate.
   */
  HTTP_TLS_CERT_FILE: z.string().optional(),
  HTTP_TLS_KEY_FILE: z.string().optional(),
  HTTP_TLS_CLIENT_CA_FILE: z.string().optional(),
  /**
   * How often a node reads its TLS files again, in seconds (src/tls-reload.ts): new files that
   * pass the start's checks are served to new connections; others are refused with a warning and
   * the old ones kept. SIGHUP reads them at once. A day at most, so a renewal is never missed for
   * longer than short-lived certificates allow.
   */
  TLS_RELOAD_INTERVAL_S: positiveInt.max(86_400).default(60),
  GRPC_MESSAGE_BYTES_MAX: positiveInt.max(64 * 1024 * 1024).default(1024 * 1024),
  /**
   * Connections the gRPC port takes at once; past it a new one is closed as soon as it is
   * accepted. The default is the server's own (src/grpc/limits.ts says why).
   */
  GRPC_CONNECTIONS_MAX: positiveInt.max(1_000_000).default(GRPC_CONNECTIONS_MAX_DEFAULT),
  SHUTDOWN_GRACE_MS: positiveInt.max(120_000).default(10_000),

  /** Local development only: admin pages are readable without the token (actions still need it). */
  ADMIN_READONLY_OPEN: z
    .enum(['true', 'false'])
    .default('false')
    .transform((v) => v === 'true'),
  /** Serves GET /debug/stats (timers, CPU, memory, actors) on the HTTP port; for `npm run bench`. */
  DEBUG_STATS: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((value) => value === 'true' || value === '1'),

  /** Folder of the PSP's settlement files: the mock writes them, reconciliation reads them. */
  SETTLEMENT_DIR: z.string().min(1).default('./.settle/settlements'),
  /** The PSP mock's fee per charge: PSP_FEE_PERCENT_BP basis points (290 = 2.9 %) plus a fixed part. */
  PSP_FEE_PERCENT_BP: nonNegativeInt.max(10_000).default(290),
  PSP_FEE_FIXED_MINOR: nonNegativeInt.max(100_000).default(30),
  /** UTC time at which the PSP mock writes yesterday's settlement file, or "off". */
  PSP_SETTLEMENT_AT: utcTimeOrOff.default('00:10'),
  /** UTC time of the nightly reconciliation of yesterday's file, or "off". */
  RECONCILIATION_AT: utcTimeOrOff.default('02:00'),
  /** After downtime, the nightly job catches up on at most this many past days. */
  RECONCILIATION_CATCH_UP_DAYS: positiveInt.max(31).default(7),
  /**
   * Retention of the settlement files' staging rows: the node's housekeeping deletes those of
   * days more than this many days old, and such days can no longer be reconciled (their reports
   * stay).
   */
  RECONCILIATION_KEEP_DAYS: positiveInt.min(32).max(36_500).default(400),
  /** How long the nightly job waits before trying a day again (file missing, run failed). */
  RECONCILIATION_RETRY_MS: positiveInt.min(1_000).max(86_400_000).default(3_600_000),
  /** How long RunReconciliation waits for the report before answering RUNNING. */
  RECONCILIATION_WAIT_MS: nonNegativeInt.max(60_000).default(2_000),
  /** Rows per INSERT into the staging table and per batch of fee bookings. */
  RECONCILIATION_BATCH_ROWS: positiveInt.min(100).max(5_000).default(5_000),
  /** The largest settlement file accepted, in rows. */
  RECONCILIATION_FILE_ROWS_MAX: positiveInt.max(50_000_000).default(5_000_000),
});

export type Config = Readonly<z.infer<typeof configSchema>>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

/**
 * The environment of a local run, Settle and the PSP mock in one process (`npm start`): admin
 * reads are open unless ADMIN_READONLY_OPEN says otherwise. Actions still need ADMIN_TOKEN.
 */
export function localRunDefaults(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return env['ADMIN_READONLY_OPEN'] === undefined ? { ...env, ADMIN_READONLY_OPEN: 'true' } : env;
}

/** Parses the environment; throws ConfigError listing every problem. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const known = Object.fromEntries(
    Object.keys(configSchema.shape)
      .filter((key) => env[key] !== undefined && env[key] !== '')
      .map((key) => [key, env[key]]),
  );
  const result = configSchema.safeParse(known);
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`),
    );
  }
  const problems = settingsThatDisagree(result.data);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(result.data);
}

/**
 * The PSP breaker's rolling window, in ms: it opens on the share of calls that failed among those
 * made in this window (app.ts passes it to the PSP client).
 */
export const PSP_BREAKER_WINDOW_MS = 10_000;

/**
 * The most calls a PSP that stopped answering can get in one breaker window: each of the
 * PSP_IN_FLIGHT_MAX calls in flight waits out its PSP_CALL_TIMEOUT_MS before the next can start,
 * and calls beyond the bound never reach the breaker.
 */
export function pspCallsPerWindowMax(config: {
  PSP_IN_FLIGHT_MAX: number;
  PSP_CALL_TIMEOUT_MS: number;
}): number {
  return config.PSP_IN_FLIGHT_MAX * Math.ceil(PSP_BREAKER_WINDOW_MS / config.PSP_CALL_TIMEOUT_MS);
}

/**
 * The per-caller rate limit of the non-admin API, or undefined when API_RATE_LIMIT_PER_S is 0 (no
 * limit): its rate and its burst (API_RATE_LIMIT_BURST, else the rate).
 */
export function apiRateLimitOf(config: {
  API_RATE_LIMIT_PER_S: number;
  API_RATE_LIMIT_BURST?: number | undefined;
}): { perS: number; burst: number } | undefined {
  const perS = config.API_RATE_LIMIT_PER_S;
  if (perS === 0) return undefined;
  return { perS, burst: config.API_RATE_LIMIT_BURST ?? perS };
}

/**
 * Seconds of one GET_LOCK wait of reconciliation's classification lock (reconciliation.repository.ts
 * waits for the lock in such steps). It is a statement on a pool with MYSQL_STATEMENT_TIMEOUT_MS as
 * its deadline, which loadConfig therefore keeps above it.
 */
export const CLASSIFICATION_LOCK_STEP_S = 2;

/** Settings valid alone whose combination would break a guarantee or make one meaningless. */
function settingsThatDisagree(config: Readonly<z.infer<typeof configSchema>>): string[] {
  const problems: string[] = [];
  if (config.PSP_BREAKER_RESET_MS <= config.PSP_CALL_TIMEOUT_MS) {
    problems.push(
      `PSP_BREAKER_RESET_MS: ${config.PSP_BREAKER_RESET_MS} is not above PSP_CALL_TIMEOUT_MS ` +
        `(${config.PSP_CALL_TIMEOUT_MS}): the open breaker would let its probe call through while ` +
        'calls made before it opened still wait for their deadline, and their late answers, not ' +
        'the probe, would decide whether it closes; raise PSP_BREAKER_RESET_MS above ' +
        'PSP_CALL_TIMEOUT_MS',
    );
  }
  const callsPerWindowMax = pspCallsPerWindowMax(config);
  if (config.PSP_BREAKER_VOLUME_THRESHOLD > callsPerWindowMax) {
    problems.push(
      `PSP_BREAKER_VOLUME_THRESHOLD: ${config.PSP_BREAKER_VOLUME_THRESHOLD} is more than the ` +
        `${callsPerWindowMax} calls a PSP that stopped answering can get in the breaker's ` +
        `${PSP_BREAKER_WINDOW_MS} ms window with PSP_IN_FLIGHT_MAX (${config.PSP_IN_FLIGHT_MAX}) ` +
        `calls in flight that each wait PSP_CALL_TIMEOUT_MS (${config.PSP_CALL_TIMEOUT_MS}): ` +
        `the breaker would never open on a hung PSP; lower it to at most ${callsPerWindowMax}, ` +
        'or raise PSP_IN_FLIGHT_MAX',
    );
  }
  const lockWaitMs = config.MYSQL_LOCK_WAIT_TIMEOUT_S * 1_000;
  for (const name of ['MYSQL_STATEMENT_TIMEOUT_MS', 'MYSQL_BULK_STATEMENT_TIMEOUT_MS'] as const) {
    if (config[name] <= lockWaitMs) {
      problems.push(
        `${name}: ${config[name]} is not above MYSQL_LOCK_WAIT_TIMEOUT_S ` +
          `(${config.MYSQL_LOCK_WAIT_TIMEOUT_S}, ${lockWaitMs} ms): a statement waiting for a row ` +
          'lock would be cut by its deadline (connection closed, outcome unknown) before MySQL ' +
          `answers a plain lock wait timeout; raise ${name} above ${lockWaitMs}, or lower ` +
          'MYSQL_LOCK_WAIT_TIMEOUT_S',
      );
    }
  }
  const lockStepMs = CLASSIFICATION_LOCK_STEP_S * 1_000;
  if (config.MYSQL_STATEMENT_TIMEOUT_MS <= lockStepMs) {
    problems.push(
      `MYSQL_STATEMENT_TIMEOUT_MS: ${config.MYSQL_STATEMENT_TIMEOUT_MS} is not above the ` +
        `reconciliation classification lock's GET_LOCK wait (${CLASSIFICATION_LOCK_STEP_S} s, ` +
        `${lockStepMs} ms): while another run holds the lock, each wait would be cut by its ` +
        'deadline (connection closed) and the run would fail instead of waiting its turn; raise ' +
        `MYSQL_STATEMENT_TIMEOUT_MS above ${lockStepMs}`,
    );
  }
  if (config.JANITOR_LEASE_MS <= config.JANITOR_INTERVAL_MS) {
    problems.push(
      `JANITOR_LEASE_MS: ${config.JANITOR_LEASE_MS} is not above JANITOR_INTERVAL_MS ` +
        `(${config.JANITOR_INTERVAL_MS}): a claim would end before the next janitor pass, so ` +
        'every pass would act on the same quiet order again and ask the PSP about it each time; ' +
        'raise JANITOR_LEASE_MS above JANITOR_INTERVAL_MS',
    );
  }
  for (const [port, prefix] of [
    ['gRPC', 'GRPC_TLS'],
    ['HTTP', 'HTTP_TLS'],
  ] as const) {
    const cert = `${prefix}_CERT_FILE` as const;
    const key = `${prefix}_KEY_FILE` as const;
    const clientCa = `${prefix}_CLIENT_CA_FILE` as const;
    const [set, unset] = config[cert] === undefined ? [key, cert] : [cert, key];
    if ((config[cert] === undefined) !== (config[key] === undefined)) {
      problems.push(
        `${unset}: is unset while ${set} is set: the ${port} port serves TLS with both its ` +
          `certificate and its private key, or neither; set ${unset}, or unset ${set} for plaintext`,
      );
    } else if (config[clientCa] !== undefined && config[cert] === undefined) {
      problems.push(
        `${clientCa}: is set while ${cert} and ${key} are not: client certificates are asked ` +
          `for only on a port that serves TLS; set them too, or unset ${clientCa}`,
      );
    }
  }
  if (config.IDEMPOTENCY_TTL_MS < config.ORDER_EXPIRY_MS) {
    problems.push(
      `IDEMPOTENCY_TTL_MS: ${config.IDEMPOTENCY_TTL_MS} is shorter than ORDER_EXPIRY_MS ` +
        `(${config.ORDER_EXPIRY_MS}): a client retrying a request after its key expired, while ` +
        'its payment could still be paid, would create and charge a second one; raise it to at ' +
        'least ORDER_EXPIRY_MS',
    );
  }
  return problems;
}

/**
 * Secrets printed in this repository (the default, docker-compose.yml, README examples): anyone
 * can read them, so a node that faces a real PSP and real operators must not run with them.
 */
const PUBLISHED_WEBHOOK_SECRETS: ReadonlySet<string> = new Set([
  'whsec_settle_local_development',
  'whsec_settle_compose_change_me',
]);
const PUBLISHED_ADMIN_TOKENS: ReadonlySet<string> = new Set([
  'change-me-to-16-chars-or-more',
  'compose-admin-token-change-me',
]);

/**
 * What is wrong with a configuration's secrets for Settle run alone (`--settle-only`: Docker,
 * a deployment), where the PSP is not in the process: a webhook secret left at its public
 * default lets anyone who reaches the HTTP port sign a "payment succeeded" and credit a seller
 * with no charge behind it. A local run with the PSP mock in the process is exempt.
 */
export function publishedSecretProblems(config: Config): string[] {
  const problems: string[] = [];
  if (PUBLISHED_WEBHOOK_SECRETS.has(config.PSP_WEBHOOK_SECRET)) {
    problems.push(
      'PSP_WEBHOOK_SECRET: is unset or a value published in this repository, so anyone could ' +
        'sign webhooks that credit sellers; set the secret your PSP signs with (the same on the ' +
        'PSP mock), for example $(openssl rand -hex 32)',
    );
  }
  if (
    config.PSP_WEBHOOK_SECRET_PREVIOUS !== undefined &&
    PUBLISHED_WEBHOOK_SECRETS.has(config.PSP_WEBHOOK_SECRET_PREVIOUS)
  ) {
    problems.push(
      'PSP_WEBHOOK_SECRET_PREVIOUS: is a value published in this repository, so anyone could ' +
        'sign webhooks with it; leave it unset unless you are rotating away from a secret of your own',
    );
  }
  if (config.ADMIN_TOKEN !== undefined && PUBLISHED_ADMIN_TOKENS.has(config.ADMIN_TOKEN)) {
    problems.push(
      'ADMIN_TOKEN: is an example published in this repository; choose your own, for example ' +
        '$(openssl rand -hex 24)',
    );
  }
  return problems;
}

/**
 * The base URL the PSP reaches Settle's HTTP port at: SETTLE_PUBLIC_URL, else SETTLE_HTTP_ADDR,
 * https when that port serves TLS.
 */
export function settlePublicUrl(config: Config): string {
  const scheme = config.HTTP_TLS_CERT_FILE === undefined ? 'http' : 'https';
  return (
    config.SETTLE_PUBLIC_URL ??
    `${scheme}://${config.SETTLE_HTTP_ADDR.host}:${config.SETTLE_HTTP_ADDR.port}`
  );
}

export function pspPublicUrl(config: Config): string {
  return (
    config.PSP_PUBLIC_URL ?? `http://${config.PSP_HTTP_ADDR.host}:${config.PSP_HTTP_ADDR.port}`
  );
}

/** Minutes after midnight UTC of a validated "HH:MM" setting; undefined for "off". */
export function utcMinutesOf(setting: string): number | undefined {
  if (setting === 'off') return undefined;
  return Number(setting.slice(0, 2)) * 60 + Number(setting.slice(3, 5));
}
