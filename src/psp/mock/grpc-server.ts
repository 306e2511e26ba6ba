/**
 * The PSP mock's gRPC service, settle.psp.v1.PspService. Every handler goes through one unary()
 * adapter, which refuses request bytes that do not decode (INVALID_ARGUMENT, as Settle's
 * services do: refuseUndecodable), injects the configured faults, awaits the work, maps errors to
 * statuses in one place (toStatus) and calls back exactly once; an unexpected error answers
 * INTERNAL with a reference, never a stack trace.
 *
 * Faults apply to the merchant API (RegisterPayment, GetPaymentStatus, CancelPayment) only; the
 * test-driver RPCs (PayWithCard, SetBehavior, ResendWebhook, ListCharges, the settlement files)
 * always answer, or a test could not switch a fault off again. A "hang" does the work and then holds the answer until
 * the client gives up (its deadline or cancellation), at most HANG_MS_MAX: the classic
 * lost-response case in which the side effect happened but the caller never heard of it.
 *
 * It runs on Settle's GrpcServer (src/grpc/server.ts) with Settle's limits (message size both
 * ways, keepalive, concurrent calls per connection, the idle limit) and its own bound on open
 * connections, PSP_GRPC_CONNECTIONS_MAX: past it a new connection is closed as soon as it is
 * accepted, and the calls on open ones go on.
 */
import {
  status as grpcStatus,
  type ServerUnaryCall,
  type handleUnaryCall,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import {
  assertNever,
  InvalidArgumentError,
  SettleError,
  UnavailableError,
} from '../../domain/errors.js';
import { isConnectionError, isPoolQueueFull } from '../../storage/errors.js';
import {
  PaymentStatus,
  PspServiceService,
  SettlementDiscrepancy as SettlementDiscrepancyKind,
  type InjectSettlementDiscrepancyRequest,
  type PspServiceServer,
} from '../../grpc/generated/settle/psp/v1/psp.js';
import { isUtcDay, utcDayAt } from '../../domain/utc-day.js';
import type { SettlementDiscrepancy, SettlementFile } from './settlement-file.js';
import type { BehaviorStore, PspBehaviorPatch } from './behavior.js';
import type { PspPayment } from './payment.repository.js';
import { checkoutUrl, type PspPayments } from './payments.js';
import { refuseUndecodable, undecodableRefusal } from '../../grpc/adapters.js';
import { addReflection } from '../../grpc/reflection/index.js';
import { ACCEPT_FAILED_MESSAGE, createGrpcServer, listen } from '../../grpc/server.js';
import { boundedStatusMessage } from '../../grpc/status.js';
import { PSP_PAYMENT_STATE, SETTLEMENT_ADJUSTMENT, type PspPaymentState } from './schema.js';

/** The PSP mock's one gRPC service, fully qualified. */
const PSP_SERVICE_NAME = 'settle.psp.v1.PspService';

/** The longest a hanging call is held, in milliseconds. */
export const HANG_MS_MAX = 60_000;
/** Requests are small; anything larger is refused by grpc-js before it reaches a handler. */
const REQUEST_BYTES_MAX = 64 * 1024;
/**
 * Answers can be large: ListCharges answers up to LIST_CHARGES_MAX charges (about 80 bytes each)
 * when the chaos run checks every charge. 4 MiB is what a grpc-js client takes by default.
 */
const RESPONSE_BYTES_MAX = 4 * 1024 * 1024;
/** How long stop() waits for calls in progress before it cuts them off, in milliseconds. */
const SHUTDOWN_GRACE_MS = 2_000;
/** Refused connections are logged at most once a minute, as Settle logs them. */
const REFUSED_CONNECTION_LOG_MS = 60_000;
/** Accept failures (out of file descriptors) are logged at most once a second. */
const ACCEPT_FAILED_LOG_MS = 1_000;

export type PspGrpcServer = Readonly<{ port: number; stop: () => Promise<void> }>;

type Context = Readonly<{
  payments: PspPayments;
  behavior: BehaviorStore;
  /** Base URL of the hosted pages, for checkout URLs. */
  publicUrl: string;
  log: (line: string) => void;
  /** Aborted by stop(): ends latency waits and hangs at once. */
  stopSignal: AbortSignal;
  /** Called with every newly registered payment (auto-pay). */
  onRegistered: (payment: PspPayment) => void;
  settlement: SettlementFiles;
}>;

/** The settlement-file operations the gRPC API exposes. */
export type SettlementFiles = Readonly<{
  generate: (day: string) => Promise<SettlementFile>;
  inject: (discrepancy: SettlementDiscrepancy) => Promise<string>;
}>;

export async function startPspGrpcServer(options: {
  payments: PspPayments;
  behavior: BehaviorStore;
  publicUrl: string;
  host: string;
  port: number;
  /** Open connections at once (PSP_GRPC_CONNECTIONS_MAX); past it a new one is closed. */
  connectionsMax: number;
  log: (line: string) => void;
  onRegistered: (payment: PspPayment) => void;
  settlement: SettlementFiles;
}): Promise<PspGrpcServer> {
  const stopController = new AbortController();
  const context: Context = {
    payments: options.payments,
    behavior: options.behavior,
    publicUrl: options.publicUrl,
    log: options.log,
    stopSignal: stopController.signal,
    onRegistered: options.onRegistered,
    settlement: options.settlement,
  };
  const { connectionsMax, log } = options;
  const logRefused = sparseLog(REFUSED_CONNECTION_LOG_MS, (refused) =>
    log(
      `psp mock: gRPC connections refused: ${connectionsMax} open (PSP_GRPC_CONNECTIONS_MAX); ` +
        `${refused} refused since the last line`,
    ),
  );
  const logAcceptFailed = sparseLog(ACCEPT_FAILED_LOG_MS, (failed, error?: Error) =>
    log(`psp mock: ${ACCEPT_FAILED_MESSAGE}: ${String(error)}; ${failed} since the last line`),
  );
  // Settle's limits: message size both ways, keepalive, concurrent streams, the idle limit and a
  // bound on open connections; grpc-js's own bindAsync has none of the last.
  const server = createGrpcServer({
    maxMessageBytes: REQUEST_BYTES_MAX,
    maxSendBytes: RESPONSE_BYTES_MAX,
    connectionsMax,
    observer: { refused: () => logRefused(), acceptFailed: (error) => logAcceptFailed(error) },
  });
  // Bytes that are not a request message reach unary() as a marker it refuses with
  // INVALID_ARGUMENT, as Settle's services do; grpc-js alone would answer INTERNAL.
  server.addService(refuseUndecodable(PspServiceService), handlers(context));
  // grpcurl and buf curl find the PSP's methods the same way as Settle's.
  addReflection(server, { services: [PSP_SERVICE_NAME] });
  const port = await listen(server, options.host, options.port, {
    addressVariable: 'PSP_GRPC_ADDR',
  });
  return {
    port,
    stop: async () => {
      stopController.abort();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, SHUTDOWN_GRACE_MS);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

/**
 * A log for events that may come thousands a second: the first is written at once, then at most
 * one line per `everyMs`, told how many came since the last line (the latest one included).
 */
function sparseLog<Event>(
  everyMs: number,
  write: (since: number, latest?: Event) => void,
): (event?: Event) => void {
  let writtenAtMs = Number.NEGATIVE_INFINITY;
  let since = 0;
  return (event) => {
    since += 1;
    const at = Date.now();
    if (at - writtenAtMs < everyMs) return;
    write(since, event);
    writtenAtMs = at;
    since = 0;
  };
}

function handlers(context: Context): PspServiceServer {
  const { payments, behavior } = context;
  return {
    registerPayment: unary(context, 'registration', async (request) => {
      const result = await payments.register({
        nonce: request.nonce,
        amountMinor: request.amountMinor,
        currencyCode: request.currencyCode,
        notificationUrl: request.notificationUrl,
      });
      if (result.created) context.onRegistered(result.payment);
      const { token } = result.payment;
      return { token, checkoutUrl: checkoutUrl(context.publicUrl, token) };
    }),
    getPaymentStatus: unary(context, 'merchant', async (request) => {
      const payment = await payments.getByNonce(request.nonce);
      return {
        nonce: payment.nonce,
        token: payment.token,
        status: toProtoStatus(payment.status),
        amountMinor: payment.amountMinor,
        currencyCode: payment.currency,
        pspReference: payment.pspReference ?? '',
        declineCode: payment.declineCode ?? '',
        updateTime: payment.updatedAt,
      };
    }),
    cancelPayment: unary(context, 'merchant', async (request) => {
      const state = await payments.cancel(request.nonce);
      return { status: toProtoStatus(state) };
    }),
    payWithCard: unary(context, 'driver', async (request) => {
      const { payment } = await payments.pay(request.token, request.cardNumber);
      return {
        status: toProtoStatus(payment.status),
        pspReference: payment.pspReference ?? '',
        declineCode: payment.declineCode ?? '',
      };
    }),
    setBehavior: unary(context, 'driver', (request) => {
      const patch: PspBehaviorPatch = {};
      if (request.successRate !== undefined) patch.successRate = request.successRate;
      if (request.latencyMs !== undefined) patch.latencyMs = request.latencyMs;
      if (request.errorRate !== undefined) patch.errorRate = request.errorRate;
      if (request.failNextRegistrations !== undefined) {
        patch.failNextRegistrations = request.failNextRegistrations;
      }
      if (request.hangRate !== undefined) patch.hangRate = request.hangRate;
      if (request.autoPayCard !== undefined) patch.autoPayCard = request.autoPayCard;
      const next = behavior.patch(patch);
      context.log(`psp behaviour: ${JSON.stringify(next)}`);
      return Promise.resolve({});
    }),
    resendWebhook: unary(context, 'driver', async (request) => ({
      eventId: await payments.resendWebhook(request.nonce),
    })),
    listCharges: unary(context, 'driver', async (request) => {
      const charges = await payments.listCharges(request.nonce);
      return {
        charges: charges.map((charge) => ({
          pspReference: charge.pspReference,
          nonce: charge.nonce,
          amountMinor: charge.amountMinor,
          currencyCode: charge.currency,
          createTime: charge.createdAt,
        })),
      };
    }),
    generateSettlementFile: unary(context, 'driver', async (request) => {
      const file = await context.settlement.generate(request.settlementDate);
      return { path: file.path, rows: BigInt(file.rows) };
    }),
    injectSettlementDiscrepancy: unary(context, 'driver', async (request) => ({
      pspReference: await context.settlement.inject(discrepancyFromProto(request)),
    })),
  };
}

function discrepancyFromProto(request: InjectSettlementDiscrepancyRequest): SettlementDiscrepancy {
  if (request.nonce === '') throw new InvalidArgumentError('nonce', 'nonce is required');
  switch (request.discrepancy) {
    case SettlementDiscrepancyKind.SETTLEMENT_DISCREPANCY_UNRECORDED_CHARGE: {
      if (request.settlementDate !== '' && !isUtcDay(request.settlementDate)) {
        throw new InvalidArgumentError('settlement_date', 'must be YYYY-MM-DD');
      }
      const at =
        request.settlementDate === '' ? new Date() : utcDayAt(request.settlementDate, 12 * 60);
      return {
        kind: 'UNRECORDED_CHARGE',
        nonce: request.nonce,
        amountMinor: request.amountMinor,
        at,
      };
    }
    case SettlementDiscrepancyKind.SETTLEMENT_DISCREPANCY_UNSETTLED:
      return { kind: SETTLEMENT_ADJUSTMENT.unsettled, nonce: request.nonce };
    case SettlementDiscrepancyKind.SETTLEMENT_DISCREPANCY_AMOUNT:
      return {
        kind: SETTLEMENT_ADJUSTMENT.amount,
        nonce: request.nonce,
        amountMinor: request.amountMinor,
      };
    case SettlementDiscrepancyKind.SETTLEMENT_DISCREPANCY_DUPLICATE:
      return { kind: SETTLEMENT_ADJUSTMENT.duplicate, nonce: request.nonce };
    case SettlementDiscrepancyKind.SETTLEMENT_DISCREPANCY_LATE:
      return { kind: SETTLEMENT_ADJUSTMENT.late, nonce: request.nonce };
    default:
      throw new InvalidArgumentError('discrepancy', 'must name a discrepancy');
  }
}

/** Which faults a method is exposed to. */
type FaultScope = 'registration' | 'merchant' | 'driver';

function unary<Request, Response>(
  context: Context,
  scope: FaultScope,
  work: (request: Request) => Promise<Response>,
): handleUnaryCall<Request, Response> {
  return (call: ServerUnaryCall<Request, Response>, callback: sendUnaryData<Response>) => {
    void run(context, scope, call, work).then(
      (response) => callback(null, response),
      (error: unknown) => callback(toStatus(error, context.log)),
    );
  };
}

async function run<Request, Response>(
  context: Context,
  scope: FaultScope,
  call: ServerUnaryCall<Request, Response>,
  work: (request: Request) => Promise<Response>,
): Promise<Response> {
  // Before any fault: a garbled request is the caller's to fix, whatever the behaviour.
  const refusal = undecodableRefusal(call.request, call.getPath());
  if (refusal !== undefined) throw refusal;
  if (scope === 'driver') return work(call.request);
  const behavior = context.behavior.get();
  if (behavior.latencyMs > 0) await delay(behavior.latencyMs, context.stopSignal);
  if (scope === 'registration' && context.behavior.takeRegistrationFailure()) {
    throw new UnavailableError('injected fault: fail_next_registrations');
  }
  if (behavior.errorRate > 0 && Math.random() < behavior.errorRate) {
    throw new UnavailableError('injected fault');
  }
  const hang = behavior.hangRate > 0 && Math.random() < behavior.hangRate;
  const response = await work(call.request);
  if (hang) await holdUntilAbandoned(call, context.stopSignal);
  return response;
}

function delay(ms: number, stopSignal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (stopSignal.aborted) return reject(shuttingDown());
    const timer = setTimeout(() => {
      stopSignal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(shuttingDown());
    };
    stopSignal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Resolves when the client cancels or its deadline passes, on stop, or after HANG_MS_MAX. */
function holdUntilAbandoned(call: ServerUnaryCall<unknown, unknown>, stopSignal: AbortSignal) {
  return new Promise<void>((resolve) => {
    if (call.cancelled || stopSignal.aborted) return resolve();
    const timer = setTimeout(done, HANG_MS_MAX);
    call.once('cancelled', done);
    stopSignal.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      call.off('cancelled', done);
      stopSignal.removeEventListener('abort', done);
      resolve();
    }
  });
}

function shuttingDown(): UnavailableError {
  return new UnavailableError('the PSP is shutting down');
}

const STATUS_BY_CODE = {
  INVALID_ARGUMENT: grpcStatus.INVALID_ARGUMENT,
  NOT_FOUND: grpcStatus.NOT_FOUND,
  ALREADY_EXISTS: grpcStatus.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpcStatus.FAILED_PRECONDITION,
  ABORTED: grpcStatus.ABORTED,
  UNAUTHENTICATED: grpcStatus.UNAUTHENTICATED,
  PERMISSION_DENIED: grpcStatus.PERMISSION_DENIED,
  RESOURCE_EXHAUSTED: grpcStatus.RESOURCE_EXHAUSTED,
  UNAVAILABLE: grpcStatus.UNAVAILABLE,
  UNIMPLEMENTED: grpcStatus.UNIMPLEMENTED,
} as const satisfies Record<SettleError['code'], grpcStatus>;

/** The one place where the mock turns an error into a gRPC status. */
function toStatus(
  error: unknown,
  log: (line: string) => void,
): { code: grpcStatus; details: string } {
  if (error instanceof SettleError)
    return { code: STATUS_BY_CODE[error.code], details: boundedStatusMessage(error.message) };
  if (isPoolQueueFull(error)) {
    return {
      code: grpcStatus.RESOURCE_EXHAUSTED,
      details: 'too many PSP database statements are waiting for a connection; retry later',
    };
  }
  if (isConnectionError(error)) {
    return {
      code: grpcStatus.UNAVAILABLE,
      details: 'the PSP database is unavailable; retry later',
    };
  }
  const reference = randomUUID();
  log(
    `psp grpc: internal error ${reference}: ` +
      (error instanceof Error ? (error.stack ?? error.message) : String(error)),
  );
  return { code: grpcStatus.INTERNAL, details: `internal error (reference ${reference})` };
}

function toProtoStatus(state: PspPaymentState): PaymentStatus {
  switch (state) {
    case PSP_PAYMENT_STATE.registered:
      return PaymentStatus.PAYMENT_STATUS_REGISTERED;
    case PSP_PAYMENT_STATE.succeeded:
      return PaymentStatus.PAYMENT_STATUS_SUCCEEDED;
    case PSP_PAYMENT_STATE.declined:
      return PaymentStatus.PAYMENT_STATUS_DECLINED;
    case PSP_PAYMENT_STATE.cancelled:
      return PaymentStatus.PAYMENT_STATUS_CANCELLED;
    default:
      return assertNever(state, 'psp payment state');
  }
}
