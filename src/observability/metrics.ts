/**
 * Prometheus metrics of one Settle node, on its own prom-client Registry (never the global one),
 * so several nodes in one process (tests) keep separate counts. Counters and histograms are fed by
 * hooks (gRPC adapters, actor transitions and completed orders, group-commit batches, PSP calls,
 * consumer retries and dead letters); gauges are read at scrape time from one operations snapshot
 * shared by all of them (reconciliation's included).
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LOCKOUT_SCOPE, type LockoutScope } from '../admin/auth.js';
import { API_TOKEN_REFUSAL, type ApiTokenRefusal } from '../grpc/api-auth.js';
import type { ApiTransport } from '../grpc/api-rate-limit.js';
import type { ClientSurface } from '../admin/client-address.js';
import {
  WEBHOOK_REJECTION,
  type WebhookRejection,
  type WebhookWay,
} from '../http/webhook.route.js';
import { HOUSEKEEPING_TASK } from '../jobs/housekeeping.js';
import { DEAD_LETTER_REASON } from '../messaging/command-consumer.js';
import { BREAKER_STATE } from '../psp/client.js';
import {
  failedInternalChecks,
  internalCheckOutcomes,
  type Run,
} from '../reconciliation/reconciliation.repository.js';
import { PAYMENT_STATE } from '../storage/repositories/payment.repository.js';
import { TLS_HANDSHAKE_FAILURE, type TlsHandshakeFailure } from '../tls.js';
import { UNSETTLED_COUNT_MAX, type OperationsSnapshot } from './operations.js';

export type GrpcObservation = Readonly<{
  /** e.g. settle.v1.PaymentService */
  service: string;
  /** e.g. CreatePayment */
  method: string;
  type: 'unary' | 'server_stream';
  /** The gRPC code name, e.g. OK, INVALID_ARGUMENT. */
  code: string;
  ms: number;
}>;

/** A scrape within this long of the last reuses its snapshot (several gauges read one scrape). */
const SNAPSHOT_REUSE_MS = 1_000;

export type Metrics = Readonly<{
  registry: Registry;
  /** Where gauges read the node's state; set once the node is wired. */
  setSnapshotSource: (source: () => Promise<OperationsSnapshot>) => void;
  grpcCall: (call: GrpcObservation) => void;
  /** The gRPC server's bound of open connections (GRPC_CONNECTIONS_MAX); set once at start. */
  grpcConnectionsMax: (max: number) => void;
  /** The gRPC server's open connections changed (one accepted or closed). */
  grpcConnectionsOpen: (open: number) => void;
  /** The gRPC server closed a new connection unanswered: its bound of open connections was reached. */
  grpcConnectionRefused: () => void;
  /** A gRPC listener failed to accept a connection (out of file descriptors) and goes on. */
  grpcAcceptFailed: () => void;
  /**
   * The certificate a TLS port serves now (at start, and each time new files are applied): its
   * expiry is exported as a gauge, which a plaintext port never has.
   */
  tlsCertificate: (certificate: { port: 'grpc' | 'http'; validTo: Date }) => void;
  /**
   * A TLS port's files were read to see whether they changed (the timer, SIGHUP), whatever they
   * held: `count` 1 per read, and 0 once at start, so the series exists from 0.
   */
  tlsFileChecks: (checks: { port: 'grpc' | 'http'; count: 0 | 1 }) => void;
  /**
   * A port's TLS files changed and were read again: served from now on, or refused; `count` 0
   * once per outcome at start, for a TLS port only, so its series exist from 0.
   */
  tlsReload: (reload: { port: 'grpc' | 'http'; outcome: 'applied' | 'refused'; count?: 0 }) => void;
  /**
   * Whether a TLS port's files, as last read, are ones the node refused (it serves an older
   * certificate): set at start (false) and at each read that found them changed.
   */
  tlsFilesRefused: (files: { port: 'grpc' | 'http'; refused: boolean }) => void;
  /**
   * The HTTP port serves TLS: its handshake failures' series are created at 0, so increase() sees
   * the first failure. A plaintext port has none, which a dashboard would read as "no failures".
   */
  tlsHandshakesServed: (port: 'http') => void;
  /** A client's TLS handshake failed on the HTTP port (the gRPC port's are grpc-js's, unseen). */
  tlsHandshakeFailed: (failure: { port: 'http'; reason: TlsHandshakeFailure }) => void;
  httpRequest: (request: { method: string; route: string; status: number }) => void;
  /**
   * A call to the API that API_TOKENS guards finished (gRPC or the REST twin): `caller` from
   * ApiTokens.callerLabel, `method` from the guarded methods and routes, `code` its gRPC code
   * name or HTTP status. All three come from closed or configured sets.
   */
  apiRequest: (request: { caller: string; method: string; code: string }) => void;
  orderTransition: (transition: { from: string; to: string; event: string }) => void;
  /** An order reached a final state, `seconds` after it was created. */
  orderCompleted: (order: { state: string; seconds: number }) => void;
  /**
   * A PSP webhook was answered 200, after its commit: applied at once, applied late (its fast
   * attempt committed after its wait, found by the durable way), queued, or a duplicate.
   */
  webhookAccepted: (webhook: { way: WebhookWay; ms: number }) => void;
  /** A PSP webhook was refused, nothing written (a wrong secret rejects every one). */
  webhookRejected: (webhook: { rejection: WebhookRejection }) => void;
  /** One group-commit batch ended (creations, transitions, loads or webhooks). */
  groupCommitBatch: (batch: { kind: string; size: number; ms: number; ok: boolean }) => void;
  /** `notSent`: refused by the circuit breaker, so no PSP latency to observe. */
  pspCall: (call: { op: string; ok: boolean; ms: number; notSent?: boolean }) => void;
  retry: () => void;
  deadLetter: (reason: string) => void;
  /** A dead letter not recorded: its order has an OPEN entry for the same command and reason. */
  deadLetterRepeated: (reason: string) => void;
  /** Housekeeping deleted expired rows (`task`: what they were, e.g. idempotency_key). */
  rowsPurged: (purged: { task: string; rows: number }) => void;
  /** A housekeeping task failed (it is tried again at the next pass). */
  housekeepingFailed: (failed: { task: string }) => void;
  /** An admin credential was refused: wrong, or unchecked while wrong ones are bounded. */
  adminCredentialRefused: (refused: { path: string; reason: string }) => void;
  /** A bound on wrong admin tokens was reached: a client's, or the node's (everyone refused). */
  adminLockout: (lockout: { scope: LockoutScope }) => void;
  /** A call to the non-admin API was refused for its credential (API_TOKENS; gRPC or REST). */
  apiCredentialRefused: (refused: { reason: ApiTokenRefusal }) => void;
  /** A call to the non-admin API was refused for its caller's rate limit (API_RATE_LIMIT_PER_S). */
  apiThrottled: (throttled: { caller: string; transport: ApiTransport }) => void;
  /** A trusted proxy sent an X-Forwarded-For that could not be read: its own address stood in. */
  forwardedForMalformed: (malformed: { surface: ClientSurface }) => void;
  /** The exposition text and its content type. */
  render: () => Promise<{ contentType: string; body: string }>;
}>;

export function createMetrics(): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  let source: (() => Promise<OperationsSnapshot>) | undefined;
  let cached: { at: number; snapshot: Promise<OperationsSnapshot | undefined> } | undefined;
  const snapshot = (): Promise<OperationsSnapshot | undefined> => {
    const now = Date.now();
    if (cached === undefined || now - cached.at > SNAPSHOT_REUSE_MS) {
      cached = { at: now, snapshot: source === undefined ? Promise.resolve(undefined) : source() };
    }
    return cached.snapshot;
  };

  const grpcHandled = new Counter({
    name: 'grpc_server_handled_total',
    help: 'gRPC calls completed on the server, by method and status code.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method', 'grpc_code'] as const,
    registers: [registry],
  });
  const grpcSeconds = new Histogram({
    name: 'grpc_server_handling_seconds',
    help: 'Time from a gRPC call arriving to its status being sent, in seconds.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  const grpcConnectionsOpen = new Gauge({
    name: 'settle_grpc_connections_open',
    help: "Connections open to this node's gRPC port now.",
    registers: [registry],
  });
  const grpcConnectionsMax = new Gauge({
    name: 'settle_grpc_connections_max',
    help: 'Connections the gRPC port takes at once (GRPC_CONNECTIONS_MAX); past it new ones are closed.',
    registers: [registry],
  });
  // Without labels it exists from the start at 0, so increase() sees the first refusal.
  const grpcConnectionsRefused = new Counter({
    name: 'settle_grpc_connections_refused_total',
    help:
      'Connections to the gRPC port this node closed as soon as it accepted them, unanswered, ' +
      'because GRPC_CONNECTIONS_MAX were open (the client sees UNAVAILABLE).',
    registers: [registry],
  });
  const grpcAcceptErrors = new Counter({
    name: 'settle_grpc_accept_errors_total',
    help:
      "Connections the gRPC port's listener failed to accept (EMFILE or ENFILE: the process or " +
      'the machine is out of file descriptors); the listener goes on listening.',
    registers: [registry],
  });
  const tlsCertificateExpiry = new Gauge({
    name: 'settle_tls_certificate_expiry_timestamp_seconds',
    help:
      'When the certificate a TLS port serves expires (its notAfter), in Unix seconds; no sample ' +
      'for a plaintext port.',
    labelNames: ['port'] as const,
    registers: [registry],
  });
  const tlsReloads = new Counter({
    name: 'settle_tls_reloads_total',
    help:
      "Changes to a TLS port's files the node read (TLS_RELOAD_INTERVAL_S, SIGHUP): applied to " +
      'new connections, or refused (the old certificate is still served; a warn line says why); ' +
      'no sample for a plaintext port.',
    labelNames: ['port', 'outcome'] as const,
    registers: [registry],
  });
  const tlsFileChecks = new Counter({
    name: 'settle_tls_file_checks_total',
    help:
      "Reads of a TLS port's files to see whether they changed (every TLS_RELOAD_INTERVAL_S, " +
      'and on SIGHUP), whatever they held: it goes up by about one per interval while the ' +
      'timer runs; no sample for a plaintext port.',
    labelNames: ['port'] as const,
    registers: [registry],
  });
  // A refusal is counted once per change of the files, so the counter's increase ends with its
  // window while the refused files stay on disk; this says whether they still are.
  const tlsFilesRefused = new Gauge({
    name: 'settle_tls_files_refused',
    help:
      "1 while a TLS port's files, as last read, are ones the node refused (it still serves " +
      'the certificate it had; a warn line says why), 0 once it serves what they hold; no ' +
      'sample for a plaintext port.',
    labelNames: ['port'] as const,
    registers: [registry],
  });
  const tlsHandshakeFailures = new Counter({
    name: 'settle_tls_handshake_failures_total',
    help:
      "TLS handshakes of clients that failed on the node's HTTP port, by why: timeout, " +
      'no_client_certificate, client_certificate_refused (mTLS), server_certificate_refused ' +
      "(the client refused the port's certificate with an alert: an untrusted CA, expired, not " +
      'yet valid), protocol (not TLS the port speaks: plaintext, an old version), ' +
      "closed (the client left mid-handshake, as a Node client that does not trust the port's " +
      "certificate does), other. No sample while the port is plaintext; the gRPC port's are " +
      'not counted.',
    labelNames: ['port', 'reason'] as const,
    registers: [registry],
  });
  const httpRequests = new Counter({
    name: 'settle_http_requests_total',
    help: 'REST twin requests, by route and HTTP status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  // Apart from grpc_server_handled_total and settle_http_requests_total, whose labels dashboards
  // know (grpc_server_handled_total's are go-grpc-prometheus's, and the alert rules read it): it
  // also counts AdminService, health and reflection, where no API token is asked, and a caller
  // label there would split every existing series by a value most of them cannot have.
  const apiRequests = new Counter({
    name: 'settle_api_requests_total',
    help:
      'Calls to the payment, wallet, ledger and reconciliation services and the REST twin, by ' +
      "caller (the name of the call's API token; ANONYMOUS: refused for no token or a wrong " +
      'one; NO_API_TOKENS: the node has none), method (e.g. PaymentService.CreatePayment, or ' +
      'POST /v1/payments) and code (the gRPC code name, or the REST twin’s HTTP status).',
    labelNames: ['caller', 'method', 'code'] as const,
    registers: [registry],
  });
  const transitions = new Counter({
    name: 'settle_payment_order_transitions_total',
    help: 'Committed payment-order transitions on this node, by from/to state and event.',
    labelNames: ['from', 'to', 'event'] as const,
    registers: [registry],
  });
  const pspSeconds = new Histogram({
    name: 'settle_psp_call_seconds',
    help:
      'PSP call latency from this node, by operation and outcome (ok, error, or breaker_open: ' +
      'refused by the circuit breaker without a call).',
    labelNames: ['op', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  });
  const completionSeconds = new Histogram({
    name: 'settle_payment_order_completion_seconds',
    help:
      'Time from an order being created to its final state, by that state, in seconds ' +
      '(includes the buyer on the hosted page; observed by the node that committed it).',
    labelNames: ['state'] as const,
    // Fine from 10 to 250 ms (where the latency goal and an unloaded node are), then coarse up
    // to a day (buyers on the hosted page).
    buckets: [
      0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400,
    ],
    registers: [registry],
  });
  const webhookSeconds = new Histogram({
    name: 'settle_webhook_seconds',
    help:
      'Time from a PSP webhook arriving to its 200, the commit included, by the way it took: ' +
      "applied (the order's transition committed at once), applied_late (committed after the " +
      'wait, found by the durable way), queued (recorded for the durable way), duplicate.',
    labelNames: ['way'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const webhooksRejected = new Counter({
    name: 'settle_webhooks_rejected_total',
    help:
      'PSP webhooks this node refused without writing anything, by why (SIGNATURE_REJECTED: ' +
      'missing, malformed, stale or wrong signature; NOT_UTF8, MALFORMED_JSON, NOT_A_PSP_EVENT, ' +
      'UNKNOWN_ORDER_ID: not an order id Settle issues; all 4xx. UNAVAILABLE: 503 for the PSP ' +
      'to retry, MySQL unreachable or too many webhooks being recorded).',
    labelNames: ['rejection'] as const,
    registers: [registry],
  });
  // Every series exists from the start at 0, so increase() sees the first rejection.
  for (const rejection of Object.values(WEBHOOK_REJECTION)) webhooksRejected.inc({ rejection }, 0);
  const batchUnits = new Histogram({
    name: 'settle_group_commit_batch_units',
    help: 'Units written per group-commit batch (1 = alone), by kind.',
    labelNames: ['kind'] as const,
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [registry],
  });
  const batchSeconds = new Histogram({
    name: 'settle_group_commit_seconds',
    help:
      'Duration of one group-commit transaction, connection wait included, by kind and ' +
      'outcome (error: it failed; a failed batch of several is then written unit by unit).',
    labelNames: ['kind', 'outcome'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const retries = new Counter({
    name: 'settle_command_retries_total',
    help: 'Commands nak-ed for a retry with backoff on this node.',
    registers: [registry],
  });
  const deadLetters = new Counter({
    name: 'settle_dead_letters_total',
    help: 'Commands this node sent to the dead-letter stream, by reason.',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  // Every series exists from the start at 0, so increase() sees the first dead letter.
  for (const reason of Object.values(DEAD_LETTER_REASON)) deadLetters.inc({ reason }, 0);
  const deadLetterRepeats = new Counter({
    name: 'settle_dead_letter_repeats_total',
    help:
      'Dead letters this node did not record because the order already has an OPEN entry for ' +
      'the same command and reason (the command was sent again and refused again the same way, ' +
      'e.g. the janitor checking an order whose PSP answer Settle cannot store), by reason.',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  for (const reason of Object.values(DEAD_LETTER_REASON)) deadLetterRepeats.inc({ reason }, 0);
  const rowsPurged = new Counter({
    name: 'settle_rows_purged_total',
    help:
      'Expired rows this node deleted in housekeeping, by task (idempotency_key: past ' +
      'IDEMPOTENCY_TTL_MS; settlement_staging: past RECONCILIATION_KEEP_DAYS; webhook_inbox: ' +
      'past WEBHOOK_INBOX_KEEP_DAYS, order final; dead_letter: closed, past DEAD_LETTER_KEEP_DAYS; ' +
      'command_stream: acknowledged commands purged from the JetStream command stream).',
    labelNames: ['task'] as const,
    registers: [registry],
  });
  const housekeepingFailures = new Counter({
    name: 'settle_housekeeping_failures_total',
    help:
      'Housekeeping passes in which a task failed on this node, by task (it is tried again a ' +
      'minute later).',
    labelNames: ['task'] as const,
    registers: [registry],
  });
  // Every series exists from the start at 0, so increase() sees the first failure (and purge).
  for (const task of Object.values(HOUSEKEEPING_TASK)) {
    housekeepingFailures.inc({ task }, 0);
    rowsPurged.inc({ task }, 0);
  }

  const adminCredentialsRefused = new Counter({
    name: 'settle_admin_credentials_refused_total',
    help:
      'Admin credentials this node refused, by where they were presented (form, bearer, ' +
      'session, grpc) and why (wrong_token: compared and wrong; rate_limited: refused ' +
      'unchecked, the right token included, while the bound on wrong tokens was reached).',
    labelNames: ['path', 'reason'] as const,
    registers: [registry],
  });

  const adminLockouts = new Counter({
    name: 'settle_admin_lockouts_total',
    help:
      'Times a bound on wrong admin tokens was reached on this node, by scope (client: one ' +
      'client address, or IPv6 /64, is refused for the rest of its window; node: every ' +
      'client is, the right token included).',
    labelNames: ['scope'] as const,
    registers: [registry],
  });
  // Both series exist from the start at 0, so increase() sees the first lockout.
  for (const scope of Object.values(LOCKOUT_SCOPE)) adminLockouts.inc({ scope }, 0);

  const apiCredentialsRefused = new Counter({
    name: 'settle_api_credentials_refused_total',
    help:
      'Calls to the payment, wallet, ledger and reconciliation services and the REST twin this ' +
      'node refused for their credential while API_TOKENS is set, by why (MISSING_API_TOKEN: no ' +
      'bearer token; WRONG_API_TOKEN: none of API_TOKENS, e.g. a client left on a rotated-out ' +
      'token; SCOPE_TOO_NARROW: a token of scope read on a method that writes, the log line ' +
      'names it).',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  for (const reason of Object.values(API_TOKEN_REFUSAL)) apiCredentialsRefused.inc({ reason }, 0);

  const apiThrottled = new Counter({
    name: 'settle_api_throttled_total',
    help:
      'Calls to the payment, wallet, ledger and reconciliation services and the REST twin this ' +
      'node refused because their caller was over API_RATE_LIMIT_PER_S (RESOURCE_EXHAUSTED, ' +
      '429 on REST), by caller (the name of its API token, or NO_API_TOKENS on a node without ' +
      'API_TOKENS, where all callers share one limit) and transport (grpc or rest).',
    labelNames: ['caller', 'transport'] as const,
    registers: [registry],
  });

  const forwardedForMalformed = new Counter({
    name: 'settle_forwarded_for_malformed_total',
    help:
      'Admin requests (surface http: the panel; grpc: AdminService) from a trusted proxy ' +
      '(TRUSTED_PROXIES) whose X-Forwarded-For could not be read: an entry that is no IP ' +
      'address, or more hops than are read. The proxy itself was taken as the client.',
    labelNames: ['surface'] as const,
    registers: [registry],
  });
  for (const surface of ['http', 'grpc'] as const) forwardedForMalformed.inc({ surface }, 0);

  // Gauges read at scrape time. A labelled gauge is cleared first, so a series whose probe failed
  // has no sample (absent, not 0). An unlabelled one keeps its last value instead: prom-client
  // would expose a cleared one as 0, which reads as "no dead letters, no backlog" during the very
  // outage that hides them, and resets the alerts' `for` timers. `settle_probe_up` says which
  // values are stale.
  const gauge = <L extends string>(
    name: string,
    help: string,
    labelNames: readonly L[],
    read: (g: Gauge<L>, s: OperationsSnapshot) => void,
  ) =>
    new Gauge<L>({
      name,
      help,
      labelNames,
      registers: [registry],
      async collect() {
        if (labelNames.length > 0) this.reset();
        const current = await snapshot();
        if (current !== undefined) read(this, current);
      },
    });

  gauge(
    'settle_payments',
    'Payments by state, from MySQL; final states are recounted at most once a minute per node.',
    ['state'],
    (g, s) => {
      if (!s.payments.ok) return;
      // A state no payment is in reads 0: MySQL's GROUP BY has no row for it, and a series that
      // vanished would read "no data" to a graph or an alert rather than "none".
      for (const state of Object.values(PAYMENT_STATE)) g.set({ state }, 0);
      for (const row of s.payments.value) g.set({ state: row.state }, row.count);
    },
  );
  gauge(
    'settle_psp_breaker_state',
    'PSP circuit breaker state: 1 for the current state, 0 for the others.',
    ['state'],
    (g, s) => {
      if (s.breaker === undefined) return;
      for (const state of Object.values(BREAKER_STATE))
        g.set({ state }, s.breaker === state ? 1 : 0);
    },
  );
  gauge('settle_outbox_pending', 'Outbox rows not yet published to JetStream.', [], (g, s) => {
    if (s.outbox.ok) g.set(s.outbox.value.pending);
  });
  gauge(
    'settle_outbox_oldest_age_seconds',
    'Age of the oldest unpublished outbox row, in seconds (0 when empty).',
    [],
    (g, s) => {
      if (s.outbox.ok) g.set(s.outbox.value.oldestAgeMs / 1000);
    },
  );
  gauge(
    'settle_ledger_sums_unsummed_entries',
    'Ledger entries after the running sums’ checkpoint, which every trial balance read adds up ' +
      'itself (counted up to 100,000).',
    [],
    (g, s) => {
      if (s.ledgerSums.ok) g.set(s.ledgerSums.value.unsummed);
    },
  );
  gauge(
    'settle_ledger_sums_lag_seconds',
    'How long the running sums have trailed the ledger (0 when no entry waits): the age of the ' +
      'oldest entry not in them, or the time since they last moved if shorter. A few seconds ' +
      'normally; it grows while a ledger transaction stays open or every pass fails.',
    [],
    (g, s) => {
      if (s.ledgerSums.ok) g.set(s.ledgerSums.value.lagMs / 1000);
    },
  );
  const consumerGauge = (
    name: string,
    help: string,
    pick: (s: OperationsSnapshot) => number | undefined,
  ) =>
    gauge(name, help, [], (g, s) => {
      const value = pick(s);
      if (value !== undefined) g.set(value);
    });
  consumerGauge(
    'settle_jetstream_consumer_pending',
    'Commands in the stream not yet delivered to the runtime consumer: the stream’s last ' +
      'sequence less the consumer’s delivered one as of the last delivery or pull heartbeat ' +
      'this node saw (no consumer info asked of NATS).',
    (s) => (s.consumer.ok ? s.consumer.value.pending : undefined),
  );
  consumerGauge(
    'settle_jetstream_consumer_ack_pending',
    'Commands delivered to this node by the runtime consumer and not yet acknowledged.',
    (s) => (s.consumer.ok ? s.consumer.value.ackPending : undefined),
  );
  consumerGauge(
    'settle_jetstream_consumer_redelivered',
    'Commands this node holds unacknowledged that were delivered more than once.',
    (s) => (s.consumer.ok ? s.consumer.value.redelivered : undefined),
  );
  // The command stream refuses every publish once full (discard new): housekeeping purges what
  // the consumer is done with from half full, so a stream that keeps filling past that means the
  // purge fails or the consumer is stuck below its ack floor.
  consumerGauge(
    'settle_command_stream_bytes',
    'Bytes stored in the JetStream command stream (acknowledged commands included until purged).',
    (s) => (s.commandStream.ok ? s.commandStream.value.bytes : undefined),
  );
  consumerGauge(
    'settle_command_stream_max_bytes',
    "The JetStream command stream's max_bytes: full, it refuses every publish (-1: no limit).",
    (s) => (s.commandStream.ok ? s.commandStream.value.bytesMax : undefined),
  );
  gauge(
    'settle_dead_letters_open',
    'Dead letters no operator has replayed or discarded yet.',
    [],
    (g, s) => {
      if (s.deadLetters.ok) g.set(s.deadLetters.value.open);
    },
  );
  gauge('settle_dead_letters_stored', 'Dead letters kept in the DLQ.', [], (g, s) => {
    if (s.deadLetters.ok) g.set(s.deadLetters.value.total);
  });
  gauge('settle_actors', 'Live payment-order actors on this node.', [], (g, s) =>
    g.set(s.actors.live),
  );
  gauge(
    'settle_actor_mailbox_depth',
    'Messages waiting or being handled in all actor mailboxes on this node.',
    [],
    (g, s) => g.set(s.actors.mailboxDepth),
  );
  // What the last reconciliation found: alert on mismatches, on a day not reconciled, on money
  // the PSP has not settled. The latest run's gauges carry its day as a label, so that before the
  // first run they have no sample at all (rather than a 0 that reads as "reconciled in 1970").
  const lastRunGauge = <L extends string>(
    name: string,
    help: string,
    labelNames: readonly L[],
    read: (g: Gauge<'settlement_day' | L>, run: Run) => void,
  ) =>
    gauge<'settlement_day' | L>(name, help, ['settlement_day', ...labelNames], (g, s) => {
      const run = s.reconciliation.ok ? s.reconciliation.value.lastRun : undefined;
      if (run !== undefined) read(g, run);
    });
  gauge(
    'settle_reconciliation_last_success_timestamp_seconds',
    'When the latest settlement day reconciled was first reconciled (its earliest succeeded run ' +
      'completed), in Unix seconds: another file for that day, run later, does not move it; no ' +
      'sample before the first run.',
    ['settlement_day'],
    (g, s) => {
      if (!s.reconciliation.ok) return;
      const { lastRun, lastDayReconciledAt } = s.reconciliation.value;
      if (lastRun !== undefined && lastDayReconciledAt !== undefined) {
        g.set({ settlement_day: lastRun.day }, lastDayReconciledAt.getTime() / 1000);
      }
    },
  );
  lastRunGauge(
    'settle_reconciliation_last_settlement_day_timestamp_seconds',
    'The latest settlement day reconciled, as Unix seconds at 00:00 UTC of that day; no sample ' +
      'before the first run.',
    [],
    (g, run) => g.set({ settlement_day: run.day }, Date.parse(`${run.day}T00:00:00Z`) / 1000),
  );
  lastRunGauge(
    'settle_reconciliation_last_run_mismatches',
    'Mismatches the latest settlement day’s reconciliation found, by class.',
    ['class'],
    (g, run) => {
      for (const [mismatchClass, n] of Object.entries(run.counts)) {
        if (mismatchClass !== 'MATCHED') {
          g.set({ settlement_day: run.day, class: mismatchClass }, Number(n));
        }
      }
    },
  );
  lastRunGauge(
    'settle_reconciliation_last_run_internal_check_failures',
    'Internal checks the latest reconciliation found failing: the ledger not balanced, wallets ' +
      'not equal to the ledger, the trial balance’s running sums not equal to the ledger entries ' +
      'or not compared with them (0 when all hold; a run from before the sums were checked did ' +
      'not fail that check).',
    [],
    (g, run) => {
      const check = run.internalCheck;
      if (check === undefined) return;
      g.set({ settlement_day: run.day }, failedInternalChecks(check).length);
    },
  );
  lastRunGauge(
    'settle_reconciliation_last_run_internal_check_failed',
    'Each internal check of the latest reconciliation: 1 failed, 0 passed. LEDGER_NOT_BALANCED ' +
      'and WALLETS_DIFFER mean money invented or lost in the books; SUMS_DIFFER means only the ' +
      'trial balance’s running sums differ from the ledger entries; SUMS_UNCHECKED that they ' +
      'could not be compared with them (a statement past its deadline, say), so they may differ ' +
      '(then SUMS_DIFFER has no sample). Neither has a sample for a run from before the sums ' +
      'were checked.',
    ['check'],
    (g, run) => {
      if (run.internalCheck === undefined) return;
      for (const { check, failed } of internalCheckOutcomes(run.internalCheck)) {
        g.set({ settlement_day: run.day, check }, failed ? 1 : 0);
      }
    },
  );
  gauge(
    'settle_reconciliation_unsettled_orders',
    'Orders booked as paid that no settlement file has settled yet (open MISSING_IN_SETTLEMENT; ' +
      `counted from at most ${UNSETTLED_COUNT_MAX.toLocaleString('en')} of them).`,
    [],
    (g, s) => {
      if (s.reconciliation.ok) g.set(s.reconciliation.value.unsettledOrders);
    },
  );
  gauge(
    'settle_probe_up',
    '1 when the probe behind a group of gauges answered in time at the last scrape, else 0.',
    ['probe'],
    (g, s) => {
      g.set({ probe: 'jetstream_consumer' }, s.consumer.ok ? 1 : 0);
      g.set({ probe: 'command_stream' }, s.commandStream.ok ? 1 : 0);
      g.set({ probe: 'dead_letters' }, s.deadLetters.ok ? 1 : 0);
      g.set({ probe: 'outbox' }, s.outbox.ok ? 1 : 0);
      g.set({ probe: 'ledger_sums' }, s.ledgerSums.ok ? 1 : 0);
      g.set({ probe: 'payments' }, s.payments.ok ? 1 : 0);
      g.set({ probe: 'reconciliation' }, s.reconciliation.ok ? 1 : 0);
    },
  );

  return {
    registry,
    setSnapshotSource: (next) => {
      source = next;
      cached = undefined;
    },
    grpcCall: (call) => {
      const labels = { grpc_type: call.type, grpc_service: call.service, grpc_method: call.method };
      grpcHandled.inc({ ...labels, grpc_code: call.code });
      grpcSeconds.observe(labels, call.ms / 1000);
    },
    grpcConnectionsMax: (max) => grpcConnectionsMax.set(max),
    grpcConnectionsOpen: (open) => grpcConnectionsOpen.set(open),
    grpcConnectionRefused: () => grpcConnectionsRefused.inc(),
    grpcAcceptFailed: () => grpcAcceptErrors.inc(),
    tlsCertificate: ({ port, validTo }) =>
      tlsCertificateExpiry.set({ port }, Math.floor(validTo.getTime() / 1000)),
    tlsFileChecks: ({ port, count }) => tlsFileChecks.inc({ port }, count),
    tlsReload: ({ port, outcome, count }) => tlsReloads.inc({ port, outcome }, count ?? 1),
    tlsFilesRefused: ({ port, refused }) => tlsFilesRefused.set({ port }, refused ? 1 : 0),
    // grpc-js runs the gRPC port's handshakes on a server of its own, whose failures it does not
    // tell: only the HTTP port's series exist, and only while it serves TLS.
    tlsHandshakesServed: (port) => {
      for (const reason of Object.values(TLS_HANDSHAKE_FAILURE)) {
        tlsHandshakeFailures.inc({ port, reason }, 0);
      }
    },
    tlsHandshakeFailed: (failure) => tlsHandshakeFailures.inc(failure),
    httpRequest: (request) =>
      httpRequests.inc({
        method: request.method,
        route: request.route,
        status: String(request.status),
      }),
    apiRequest: (request) => apiRequests.inc(request),
    apiThrottled: (throttled) => apiThrottled.inc(throttled),
    orderTransition: (transition) => transitions.inc(transition),
    orderCompleted: (order) =>
      completionSeconds.observe({ state: order.state }, Math.max(0, order.seconds)),
    webhookAccepted: (webhook) => webhookSeconds.observe({ way: webhook.way }, webhook.ms / 1000),
    webhookRejected: (webhook) => webhooksRejected.inc({ rejection: webhook.rejection }),
    groupCommitBatch: (batch) => {
      batchSeconds.observe(
        { kind: batch.kind, outcome: batch.ok ? 'ok' : 'error' },
        batch.ms / 1000,
      );
      // A failed batch was rewritten unit by unit: its size says nothing about what was written
      // together.
      if (batch.ok) batchUnits.observe({ kind: batch.kind }, batch.size);
    },
    pspCall: (call) =>
      pspSeconds.observe(
        { op: call.op, outcome: call.notSent === true ? 'breaker_open' : call.ok ? 'ok' : 'error' },
        call.ms / 1000,
      ),
    retry: () => retries.inc(),
    deadLetter: (reason) => deadLetters.inc({ reason }),
    deadLetterRepeated: (reason) => deadLetterRepeats.inc({ reason }),
    rowsPurged: (purged) => rowsPurged.inc({ task: purged.task }, purged.rows),
    housekeepingFailed: (failed) => housekeepingFailures.inc({ task: failed.task }),
    adminCredentialRefused: (refused) => adminCredentialsRefused.inc(refused),
    adminLockout: (lockout) => adminLockouts.inc(lockout),
    apiCredentialRefused: (refused) => apiCredentialsRefused.inc(refused),
    forwardedForMalformed: (malformed) => forwardedForMalformed.inc(malformed),
    render: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),
  };
}
