/**
 * Adapters from async functions to grpc-js handlers. Every Settle handler goes through one of them
 * (STYLE.md §6), because grpc-js sends an unmapped error's message as UNKNOWN, does not handle a
 * rejected async handler, and a callback-style handler easily answers twice.
 *
 * Invariants: each call gets a request id (the caller's `x-request-id` when it is sane, else a
 * random UUID) that is echoed in the response metadata; each call is answered exactly once; every
 * error goes through toGrpcStatus. The request id is a correlation id for logs, not the
 * idempotency key that some requests carry in their `request_id` field.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, PermissionDeniedError } from '../domain/errors.js';
import { ORDER_ID_PATTERN, PAYMENT_ID_PATTERN } from '../domain/ids.js';
import { ApiRateLimitError } from './api-rate-limit.js';
import { assertDecodes, requestTypeOf } from './contract.js';
import { defaultErrorLogger, toGrpcStatus, type ErrorLogger, type GrpcStatus } from './status.js';

/** Metadata key of the request id, read from the request and echoed in the response. */
export const REQUEST_ID_METADATA_KEY = 'x-request-id';

// Printable, header-safe and short enough to log; anything else is replaced by a fresh UUID.
const REQUEST_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export type CallContext = Readonly<{
  /** The call's request id, echoed to the client in the `x-request-id` response metadata. */
  requestId: string;
  /** Aborted when the client cancels or the deadline passes; pass it to I/O the handler does. */
  signal: AbortSignal;
}>;

export type AdapterOptions = Readonly<{
  /** Where errors that map to INTERNAL are logged; console.error by default. */
  log?: ErrorLogger;
  /** Called once per call after its status is sent (one log line, metrics). */
  observe?: (call: CallObservation) => void;
  /**
   * Runs first on every call, before the request is looked at, and throws to refuse it (the
   * API's bearer token and its scope, api-auth.ts, then the caller's rate limit,
   * api-rate-limit.ts); the refusal is answered and observed as any error is. Returns the
   * caller's name for the call's log line (never a credential), or undefined when the call is
   * anonymous; a PermissionDeniedError or an ApiRateLimitError names the refused caller.
   */
  authenticate?: (metadata: grpc.Metadata, path: string) => string | undefined;
}>;

/** What one finished call looked like, for logs and metrics. */
export type CallObservation = Readonly<{
  /** e.g. /settle.v1.PaymentService/GetPayment */
  path: string;
  type: 'unary' | 'server_stream';
  code: grpc.status;
  ms: number;
  requestId: string;
  /** Who made the call: the name of its API token (`authenticate`), when it has one. */
  caller?: string | undefined;
  /**
   * The call was refused for its caller's rate limit (an ApiRateLimitError): a RESOURCE_EXHAUSTED
   * the client caused, not load shedding, so it is logged at info.
   */
  rateLimited?: boolean | undefined;
  /** The payment or order the call was about, when the request or response names one. */
  paymentId?: string | undefined;
  orderId?: string | undefined;
}>;

/** The request id of a call: the caller's `x-request-id` if sane, else a random UUID. */
export function requestIdOf(metadata: grpc.Metadata): string {
  return requestIdOrNew(metadata.get(REQUEST_ID_METADATA_KEY)[0]);
}

/** `value` if it is a sane request id, else a random UUID; REST reads its header with it too. */
export function requestIdOrNew(value: unknown): string {
  return typeof value === 'string' && REQUEST_ID_PATTERN.test(value) ? value : randomUUID();
}

/**
 * A request whose bytes are not a message of the method's type. grpc-js answers a deserializer
 * that throws with INTERNAL ("Error deserializing request") before any handler runs, so the call
 * is neither logged nor counted; `refuseUndecodable` hands this marker to the adapters instead,
 * which answer INVALID_ARGUMENT through the usual path.
 */
class UndecodableRequest {
  constructor(readonly reason: string) {}
}

/**
 * `service` with every request deserializer made total: bytes that are not a well-formed message
 * of the method's request type in the contract (checked strictly at every depth, see contract.ts)
 * become an UndecodableRequest, refused by `unary` and `serverStream`; the service must be defined
 * in src/grpc/descriptors.binpb, else this throws. Only for services whose handlers are
 * all built with those adapters, or check `undecodableRefusal` before anything else (the PSP
 * mock's adapter does): another handler would receive the marker as its request.
 */
export function refuseUndecodable<Service extends grpc.ServiceDefinition>(
  service: Service,
): Service {
  const methods = Object.entries(service).map(([name, method]) => {
    const decode = method.requestDeserialize;
    const type = requestTypeOf(method.path);
    const requestDeserialize = (bytes: Buffer): unknown => {
      try {
        assertDecodes(type, bytes);
        return decode(bytes);
      } catch (error) {
        return new UndecodableRequest(error instanceof Error ? error.message : String(error));
      }
    };
    return [name, { ...method, requestDeserialize }];
  });
  return Object.fromEntries(methods) as Service;
}

/**
 * The INVALID_ARGUMENT to answer when `request` is the marker `refuseUndecodable` hands over for
 * bytes that did not decode (`path`: the call's method, named in the message); undefined for a
 * real request.
 */
export function undecodableRefusal(
  request: unknown,
  path: string,
): InvalidArgumentError | undefined {
  if (!(request instanceof UndecodableRequest)) return undefined;
  return new InvalidArgumentError(
    'request',
    `the bytes sent are not a protobuf message of ${path}'s request type (${request.reason}); ` +
      'send the message your generated client or the service descriptor (reflection) describes',
  );
}

/**
 * Turns `handler` into a grpc-js unary handler: awaits it (a synchronous throw counts as a
 * rejection), maps any error with toGrpcStatus and calls back exactly once. The request id goes
 * out in the initial metadata and, on errors, in the trailers too (clients see trailers on
 * ServiceError.metadata). Handlers must not send initial metadata themselves.
 */
export function unary<Request, Response>(
  handler: (
    request: Request,
    call: grpc.ServerUnaryCall<Request, Response>,
    context: CallContext,
  ) => Promise<Response>,
  options: AdapterOptions = {},
): grpc.handleUnaryCall<Request, Response> {
  return (call, callback) => {
    const started = performance.now();
    const requestId = requestIdOf(call.metadata);
    const cancel = abortOnCancel(call);
    const context = { requestId, signal: cancel.signal };
    let caller: string | undefined;
    let rateLimited = false;
    let answered = false;
    const answer = (error: grpc.StatusObject | null, response?: Response): void => {
      if (answered) return;
      answered = true;
      cancel.release();
      call.sendMetadata(requestIdMetadata(requestId));
      if (error) callback(error);
      else callback(null, response);
      observe(options, {
        path: call.getPath(),
        type: 'unary',
        code: error?.code ?? grpc.status.OK,
        ms: performance.now() - started,
        requestId,
        caller,
        ...(rateLimited && { rateLimited }),
        ...subjectIds(call.request, response),
      });
    };
    void (async () => {
      let response: Response;
      try {
        caller = options.authenticate?.(call.metadata, call.getPath());
        const refusal = undecodableRefusal(call.request, call.getPath());
        if (refusal !== undefined) throw refusal;
        response = await handler(call.request, call, context);
      } catch (error) {
        caller ??= refusedCallerOf(error);
        rateLimited = error instanceof ApiRateLimitError;
        answer(statusObject(error, requestId, call.getPath(), options, context.signal));
        return;
      }
      answer(null, response);
    })().catch((error: unknown) => {
      // grpc-js's callback does not throw today; if it ever does, log instead of crashing.
      (options.log ?? defaultErrorLogger)(error, { requestId, path: call.getPath() });
    });
  };
}

/**
 * Turns `handler` into a grpc-js server-streaming handler. The handler writes with `call.write`
 * and resolves when done; the adapter then ends the call with OK (handlers do not end it). A
 * rejection is sent as the mapped status with `call.emit('error', …)`, after the messages already
 * written (never `call.destroy(err)`: that sends no status and the client hangs). `signal` aborts
 * when the client cancels or the deadline passes, so the handler's loops stop; nothing is sent
 * after that.
 */
export function serverStream<Request, Response>(
  handler: (
    request: Request,
    call: grpc.ServerWritableStream<Request, Response>,
    signal: AbortSignal,
    context: CallContext,
  ) => Promise<void>,
  options: AdapterOptions = {},
): grpc.handleServerStreamingCall<Request, Response> {
  return (call) => {
    const started = performance.now();
    const requestId = requestIdOf(call.metadata);
    const { signal, release } = abortOnCancel(call);
    // Streams may wait long for their first message; send the request id at once.
    call.sendMetadata(requestIdMetadata(requestId));
    void (async () => {
      let failure: { error: unknown } | undefined;
      let caller: string | undefined;
      let rateLimited = false;
      try {
        caller = options.authenticate?.(call.metadata, call.getPath());
        const refusal = undecodableRefusal(call.request, call.getPath());
        if (refusal !== undefined) throw refusal;
        await handler(call.request, call, signal, { requestId, signal });
      } catch (error) {
        caller ??= refusedCallerOf(error);
        failure = { error };
        rateLimited = error instanceof ApiRateLimitError;
      }
      const status = failure
        ? statusObject(failure.error, requestId, call.getPath(), options, signal)
        : undefined;
      const observation = {
        path: call.getPath(),
        type: 'server_stream',
        ms: performance.now() - started,
        requestId,
        caller,
        ...(rateLimited && { rateLimited }),
        ...subjectIds(call.request, undefined),
      } as const;
      release();
      // A cancelled client cannot be answered; a handler that ended the call itself was answered.
      if (call.cancelled || call.writableEnded) {
        observe(options, {
          ...observation,
          code: call.cancelled ? grpc.status.CANCELLED : (status?.code ?? grpc.status.OK),
        });
        return;
      }
      if (status) call.emit('error', status);
      else call.end();
      observe(options, { ...observation, code: status?.code ?? grpc.status.OK });
    })();
  };
}

function statusObject(
  error: unknown,
  requestId: string,
  path: string,
  options: AdapterOptions,
  signal?: AbortSignal,
): grpc.StatusObject {
  // A rejection caused by our own abort (client cancelled) is expected, not a bug to log.
  const log = signal && isAbortOf(error, signal) ? () => {} : options.log;
  const status: GrpcStatus = toGrpcStatus(error, requestId, { log, path });
  const metadata = status.metadata ?? new grpc.Metadata();
  metadata.set(REQUEST_ID_METADATA_KEY, requestId);
  return { code: status.code, details: status.details, metadata };
}

/**
 * The caller a refusal names: a known caller refused for what its credential allows, or for
 * being over its rate limit.
 */
export function refusedCallerOf(error: unknown): string | undefined {
  if (error instanceof PermissionDeniedError) return error.caller;
  return error instanceof ApiRateLimitError ? error.caller : undefined;
}

function observe(options: AdapterOptions, observation: CallObservation): void {
  try {
    options.observe?.(observation);
  } catch (error) {
    // Observing must never break a call.
    (options.log ?? defaultErrorLogger)(error, { requestId: observation.requestId });
  }
}

/** The payment and order ids a request or response names (fields paymentId / orderId / payment). */
function subjectIds(request: unknown, response: unknown): { paymentId?: string; orderId?: string } {
  const pick = (value: unknown, key: string, pattern: RegExp): string | undefined => {
    if (typeof value !== 'object' || value === null) return undefined;
    const field = (value as Record<string, unknown>)[key];
    return typeof field === 'string' && pattern.test(field) ? field : undefined;
  };
  const responsePayment =
    typeof response === 'object' && response !== null
      ? (response as { payment?: unknown }).payment
      : undefined;
  const paymentId =
    pick(request, 'paymentId', PAYMENT_ID_PATTERN) ??
    pick(responsePayment, 'paymentId', PAYMENT_ID_PATTERN);
  const orderId = pick(request, 'orderId', ORDER_ID_PATTERN);
  return {
    ...(paymentId !== undefined ? { paymentId } : {}),
    ...(orderId !== undefined ? { orderId } : {}),
  };
}

function isAbortOf(error: unknown, signal: AbortSignal): boolean {
  return (
    signal.aborted &&
    (error === signal.reason || (error instanceof Error && error.name === 'AbortError'))
  );
}

function requestIdMetadata(requestId: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(REQUEST_ID_METADATA_KEY, requestId);
  return metadata;
}

/**
 * A signal that aborts when the client cancels (or the deadline passes), and `release` to stop
 * listening once the call is answered: grpc-js emits 'cancelled' when a call's stream closes,
 * after a normal answer too, and an abort then would only build a DOMException for nobody.
 */
function abortOnCancel(call: grpc.ServerUnaryCall<unknown, unknown>): {
  signal: AbortSignal;
  release: () => void;
} {
  const controller = new AbortController();
  const abort = () => controller.abort();
  if (call.cancelled) controller.abort();
  else call.once('cancelled', abort);
  return { signal: controller.signal, release: () => call.removeListener('cancelled', abort) };
}
