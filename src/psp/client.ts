/**
 * Settle's client to the PSP (settle.psp.v1.PspService over gRPC), guarded by ONE opossum circuit
 * breaker shared by every method.
 *
 * - Every call has its own gRPC deadline (callTimeoutMs); opossum runs with `timeout: false`, so no
 *   shared AbortController can poison later calls (docs: TOOLCHAIN §7).
 * - Only transport-level failures count against the breaker (UNAVAILABLE, DEADLINE_EXCEEDED,
 *   INTERNAL, ...). Business answers (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION,
 *   INVALID_ARGUMENT) say the PSP is healthy, so errorFilter keeps them out of the failure count.
 * - Calls in flight are bounded by inFlightMax: a call beyond it is rejected at once with a
 *   retryable ResourceExhaustedError rather than queued, because a queue would only spend the
 *   caller's deadline waiting and the caller already has a retry policy. Rejected calls never
 *   reach the breaker, so back-pressure cannot open it.
 * - Errors come out as domain errors with `retryable` set: breaker open, UNAVAILABLE,
 *   DEADLINE_EXCEEDED and connection failures are UnavailableError (retryable); ALREADY_EXISTS is
 *   AlreadyExistsError; INVALID_ARGUMENT and FAILED_PRECONDITION are FailedPreconditionError (not
 *   retryable).
 * - An answer with a value longer than Settle can store (value-limits.ts) is a PspProtocolError
 *   (not retryable): the PSP broke its contract, the same question would get the same answer, and
 *   an operator has to look, since the PSP may hold a registration or a charge Settle cannot book.
 */
import {
  credentials,
  Metadata,
  status as grpcStatus,
  type ServiceError,
  type ClientUnaryCall,
  type CallOptions,
} from '@grpc/grpc-js';
import CircuitBreaker from 'opossum';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../domain/errors.js';
import type { CurrencyCode } from '../domain/money.js';
import { fitsColumn, PSP_VALUE_LENGTH_MAX, type PspValueField } from './value-limits.js';
import {
  PaymentStatus,
  PspServiceClient,
  type CancelPaymentResponse,
  type GetPaymentStatusResponse,
  type RegisterPaymentResponse,
} from '../grpc/generated/settle/psp/v1/psp.js';

/** A payment's state at the PSP. */
export const PSP_STATUS = {
  registered: 'REGISTERED',
  succeeded: 'SUCCEEDED',
  declined: 'DECLINED',
  cancelled: 'CANCELLED',
} as const;
export type PspStatus = (typeof PSP_STATUS)[keyof typeof PSP_STATUS];

/** What GetPaymentStatus reports about one payment. */
export type PspPaymentStatus = Readonly<{
  nonce: string;
  token: string;
  status: PspStatus;
  amountMinor: bigint;
  currency: string;
  /** Set once charged. */
  pspReference: string | undefined;
  /** Set when declined, for example "card_declined". */
  declineCode: string | undefined;
  updateTime: Date | undefined;
}>;

export const BREAKER_STATE = {
  closed: 'CLOSED',
  open: 'OPEN',
  halfOpen: 'HALF_OPEN',
} as const;
export type BreakerState = (typeof BREAKER_STATE)[keyof typeof BREAKER_STATE];

export type PspClientOptions = Readonly<{
  /** host:port of the PSP's gRPC API. */
  address: string;
  /** The gRPC deadline of every call, in milliseconds. */
  callTimeoutMs: number;
  breaker: Readonly<{
    /** How long the breaker stays open before it lets one probe call through, in milliseconds. */
    resetTimeoutMs: number;
    /** Failure percentage in the rolling window above which the breaker opens. */
    errorThresholdPercentage: number;
    /** Calls in the rolling window before the percentage is considered at all. */
    volumeThreshold: number;
    /** Length of the rolling window, in milliseconds (10 buckets). Default 10 000. */
    rollingWindowMs?: number;
  }>;
  /** Calls in flight at most; further calls fail at once with ResourceExhaustedError. */
  inFlightMax: number;
}>;

export type PspRegisterInput = Readonly<{
  /** The merchant's unique id of the payment (Settle: the payment order id). */
  nonce: string;
  amountMinor: bigint;
  currency: CurrencyCode;
  /** Where the PSP sends this payment's webhooks; '' for the PSP's default. */
  notificationUrl: string;
}>;

export interface PspClient {
  /**
   * Registers a payment; idempotent by nonce. AlreadyExistsError if the nonce is known with
   * another amount or currency.
   */
  register(input: PspRegisterInput): Promise<{ token: string; checkoutUrl: string }>;
  /** The PSP's view of a payment; undefined if the nonce was never registered. */
  getStatus(nonce: string): Promise<PspPaymentStatus | undefined>;
  /**
   * Cancels an unpaid payment. When the PSP already decided it, returns that decision instead
   * (SUCCEEDED or DECLINED). NotFoundError if the nonce was never registered.
   */
  cancel(nonce: string): Promise<'CANCELLED' | 'SUCCEEDED' | 'DECLINED'>;
  breakerState(): BreakerState;
  /** Calls `listener` on every breaker transition; returns a function that unsubscribes. */
  onStateChange(listener: (state: BreakerState, previous: BreakerState) => void): () => void;
  /** Closes the channel and the breaker; later calls fail with UnavailableError. */
  close(): void;
}

/**
 * The PSP answered with a value Settle cannot store (longer than its column): a protocol error of
 * the PSP, not retryable. The message names the call, the field, its length and the limit, never
 * the value (a token opens its payment's checkout page).
 */
export class PspProtocolError extends FailedPreconditionError {}

export function isPspProtocolError(error: unknown): error is PspProtocolError {
  return error instanceof PspProtocolError;
}

/** Throws PspProtocolError when `value` is longer than `field`'s column. */
function assertStorable(rpc: string, field: PspValueField, value: string | undefined): void {
  if (value === undefined || fitsColumn(field, value)) return;
  throw new PspProtocolError(
    `the PSP answered ${rpc} with a ${field} of ${Array.from(value).length} characters, ` +
      `longer than the ${PSP_VALUE_LENGTH_MAX[field]} Settle stores: refused as a PSP protocol ` +
      'error; check the payment at the PSP (it may be registered or charged)',
  );
}

/** Reconnection backoff of the channel. grpc-js' default grows to 120 s, which would keep the
 * channel failing long after the PSP is back and defeat the breaker's half-open probe. */
const RECONNECT_BACKOFF_MS_INITIAL = 250;
const RECONNECT_BACKOFF_MS_MAX = 2_000;
const ROLLING_WINDOW_MS_DEFAULT = 10_000;
const ROLLING_WINDOW_BUCKETS = 10;

/** Answers that come from a healthy PSP and must not open the breaker. */
const BUSINESS_CODES: ReadonlySet<number> = new Set([
  grpcStatus.NOT_FOUND,
  grpcStatus.ALREADY_EXISTS,
  grpcStatus.FAILED_PRECONDITION,
  grpcStatus.INVALID_ARGUMENT,
]);

/** Answers that mean "the PSP could not be reached or did not answer in time": retry later. */
const TRANSIENT_CODES: ReadonlySet<number> = new Set([
  grpcStatus.UNAVAILABLE,
  grpcStatus.DEADLINE_EXCEEDED,
  grpcStatus.CANCELLED,
  grpcStatus.RESOURCE_EXHAUSTED,
  grpcStatus.ABORTED,
  grpcStatus.INTERNAL,
  grpcStatus.UNKNOWN,
]);

type Operation = () => Promise<unknown>;

export function createPspClient(options: PspClientOptions): PspClient {
  assertPositiveInt('callTimeoutMs', options.callTimeoutMs);
  assertPositiveInt('inFlightMax', options.inFlightMax);
  assertPositiveInt('breaker.resetTimeoutMs', options.breaker.resetTimeoutMs);

  const grpcClient = new PspServiceClient(options.address, credentials.createInsecure(), {
    'grpc.initial_reconnect_backoff_ms': RECONNECT_BACKOFF_MS_INITIAL,
    'grpc.max_reconnect_backoff_ms': RECONNECT_BACKOFF_MS_MAX,
  });
  const breaker = new CircuitBreaker<[Operation], unknown>((operation) => operation(), {
    name: 'psp',
    // The per-call gRPC deadline bounds every call; opossum's own timeout would share one
    // AbortController between concurrent calls.
    timeout: false,
    resetTimeout: options.breaker.resetTimeoutMs,
    errorThresholdPercentage: options.breaker.errorThresholdPercentage,
    volumeThreshold: options.breaker.volumeThreshold,
    rollingCountTimeout: options.breaker.rollingWindowMs ?? ROLLING_WINDOW_MS_DEFAULT,
    rollingCountBuckets: ROLLING_WINDOW_BUCKETS,
    allowWarmUp: false,
    errorFilter: (error: unknown) => isServiceError(error) && BUSINESS_CODES.has(error.code),
  });

  let state: BreakerState = BREAKER_STATE.closed;
  const listeners = new Set<(state: BreakerState, previous: BreakerState) => void>();
  const moveTo = (next: BreakerState) => {
    const previous = state;
    if (previous === next) return;
    state = next;
    for (const listener of listeners) {
      try {
        listener(next, previous);
      } catch {
        // A listener's bug must not break the breaker.
      }
    }
  };
  breaker.on('open', () => moveTo(BREAKER_STATE.open));
  breaker.on('halfOpen', () => moveTo(BREAKER_STATE.halfOpen));
  breaker.on('close', () => moveTo(BREAKER_STATE.closed));

  let inFlight = 0;
  const deadline = (): Partial<CallOptions> => ({ deadline: Date.now() + options.callTimeoutMs });

  /** Runs one gRPC call through the in-flight bound and the breaker; raw errors come out. */
  async function guarded<T>(call: () => Promise<T>): Promise<T> {
    if (inFlight >= options.inFlightMax) {
      throw new ResourceExhaustedError(
        `too many PSP calls in flight (at most ${options.inFlightMax}); retry shortly`,
      );
    }
    inFlight += 1;
    try {
      return (await breaker.fire(call)) as T;
    } finally {
      inFlight -= 1;
    }
  }

  /** Maps anything a guarded call can throw to a domain error. */
  function toDomainError(error: unknown, nonce: string): Error {
    if (isOpossumError(error, 'EOPENBREAKER')) {
      return new UnavailableError(
        `the PSP is unavailable: circuit breaker open (retry after ~${options.breaker.resetTimeoutMs} ms)`,
        { cause: error, retryDelayMs: options.breaker.resetTimeoutMs },
      );
    }
    if (isOpossumError(error, 'ESHUTDOWN')) {
      return new UnavailableError('the PSP client is closed', { cause: error });
    }
    if (!isServiceError(error)) {
      return error instanceof Error ? error : new Error(String(error));
    }
    const details = `${grpcStatus[error.code] ?? error.code}: ${error.details}`;
    switch (error.code) {
      case grpcStatus.NOT_FOUND:
        return new NotFoundError('PSP payment', nonce);
      case grpcStatus.ALREADY_EXISTS:
        return new AlreadyExistsError(`the PSP refused the payment: ${error.details}`, {
          cause: error,
        });
      case grpcStatus.INVALID_ARGUMENT:
        return new FailedPreconditionError(`the PSP rejected the request: ${error.details}`, {
          cause: error,
        });
      case grpcStatus.FAILED_PRECONDITION:
        return new FailedPreconditionError(`the PSP refused: ${error.details}`, { cause: error });
      default:
        if (TRANSIENT_CODES.has(error.code)) {
          return new UnavailableError(`the PSP is unavailable (${details})`, { cause: error });
        }
        // UNIMPLEMENTED, UNAUTHENTICATED, PERMISSION_DENIED, ...: misconfiguration; a retry
        // would get the same answer.
        return new FailedPreconditionError(`the PSP call failed (${details})`, { cause: error });
    }
  }

  function unary<Response>(
    invoke: (
      metadata: Metadata,
      callOptions: Partial<CallOptions>,
      callback: (error: ServiceError | null, response: Response) => void,
    ) => ClientUnaryCall,
  ): Promise<Response> {
    return new Promise<Response>((resolve, reject) => {
      invoke(new Metadata(), deadline(), (error, response) =>
        error === null ? resolve(response) : reject(error),
      );
    });
  }

  async function getStatus(nonce: string): Promise<PspPaymentStatus | undefined> {
    try {
      const response = await guarded(() =>
        unary<GetPaymentStatusResponse>((metadata, callOptions, callback) =>
          grpcClient.getPaymentStatus({ nonce }, metadata, callOptions, callback),
        ),
      );
      const pspReference = response.pspReference === '' ? undefined : response.pspReference;
      const declineCode = response.declineCode === '' ? undefined : response.declineCode;
      assertStorable('GetPaymentStatus', 'token', response.token);
      assertStorable('GetPaymentStatus', 'pspReference', pspReference);
      // A decline code is not checked: the machine cuts a longer one to fit the failure reason
      // (failureReasonOf) and keeps it whole in the timeline, so it writes and the order fails.
      return {
        nonce: response.nonce,
        token: response.token,
        status: fromProtoStatus(response.status),
        amountMinor: response.amountMinor,
        currency: response.currencyCode,
        pspReference,
        declineCode,
        updateTime: response.updateTime,
      };
    } catch (error) {
      if (isServiceError(error) && error.code === grpcStatus.NOT_FOUND) return undefined;
      throw toDomainError(error, nonce);
    }
  }

  return {
    async register(input) {
      try {
        const response = await guarded(() =>
          unary<RegisterPaymentResponse>((metadata, callOptions, callback) =>
            grpcClient.registerPayment(
              {
                nonce: input.nonce,
                amountMinor: input.amountMinor,
                currencyCode: input.currency,
                notificationUrl: input.notificationUrl,
              },
              metadata,
              callOptions,
              callback,
            ),
          ),
        );
        assertStorable('RegisterPayment', 'token', response.token);
        assertStorable('RegisterPayment', 'checkoutUrl', response.checkoutUrl);
        return { token: response.token, checkoutUrl: response.checkoutUrl };
      } catch (error) {
        throw toDomainError(error, input.nonce);
      }
    },

    getStatus,

    async cancel(nonce) {
      try {
        const response = await guarded(() =>
          unary<CancelPaymentResponse>((metadata, callOptions, callback) =>
            grpcClient.cancelPayment({ nonce }, metadata, callOptions, callback),
          ),
        );
        const status = fromProtoStatus(response.status);
        if (status !== PSP_STATUS.cancelled) {
          throw new FailedPreconditionError(`the PSP answered CancelPayment with ${status}`);
        }
        return status;
      } catch (error) {
        if (isServiceError(error) && error.code === grpcStatus.FAILED_PRECONDITION) {
          // Already decided: the decision is the answer.
          const current = await getStatus(nonce);
          if (current?.status === PSP_STATUS.succeeded || current?.status === PSP_STATUS.declined) {
            return current.status;
          }
        }
        if (error instanceof FailedPreconditionError) throw error;
        throw toDomainError(error, nonce);
      }
    },

    breakerState: () => state,

    onStateChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },

    close() {
      breaker.shutdown();
      grpcClient.close();
      listeners.clear();
    },
  };
}

function fromProtoStatus(status: PaymentStatus): PspStatus {
  switch (status) {
    case PaymentStatus.PAYMENT_STATUS_REGISTERED:
      return PSP_STATUS.registered;
    case PaymentStatus.PAYMENT_STATUS_SUCCEEDED:
      return PSP_STATUS.succeeded;
    case PaymentStatus.PAYMENT_STATUS_DECLINED:
      return PSP_STATUS.declined;
    case PaymentStatus.PAYMENT_STATUS_CANCELLED:
      return PSP_STATUS.cancelled;
    case PaymentStatus.PAYMENT_STATUS_UNSPECIFIED:
    case PaymentStatus.UNRECOGNIZED:
    default:
      throw new FailedPreconditionError(
        `the PSP answered with an unknown payment status ${status}`,
      );
  }
}

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === 'number' &&
    typeof (error as Partial<ServiceError>).details === 'string'
  );
}

/**
 * Whether `error` is the breaker's refusal (the call never left this node), as a PSP port's
 * caller sees it: the domain error whose cause is opossum's EOPENBREAKER.
 */
export function isBreakerOpen(error: unknown): boolean {
  return (
    isOpossumError(error, 'EOPENBREAKER') ||
    (error instanceof Error && isOpossumError(error.cause, 'EOPENBREAKER'))
  );
}

function isOpossumError(error: unknown, code: string): boolean {
  return error instanceof Error && (error as { code?: unknown }).code === code;
}

function assertPositiveInt(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`createPspClient: ${name} must be a positive integer, got ${value}`);
  }
}
