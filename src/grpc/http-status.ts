/**
 * The HTTP face of src/grpc/status.ts, for the REST twin and the admin JSON API: an error is first
 * mapped to its gRPC status by toGrpcStatus (the one mapping of errors), then the gRPC code picks
 * the HTTP status here. So a REST caller and a gRPC caller always see the same code and message.
 */
import * as grpc from '@grpc/grpc-js';
import * as z from 'zod';
import { SettleError } from '../domain/errors.js';
import { toGrpcStatus, type StatusOptions } from './status.js';

/** HTTP status per gRPC code (the mapping grpc-gateway and Google APIs use, FAILED_PRECONDITION → 409). */
const HTTP_STATUS_BY_GRPC_CODE: Readonly<Record<grpc.status, number>> = {
  [grpc.status.OK]: 200,
  [grpc.status.CANCELLED]: 499,
  [grpc.status.UNKNOWN]: 500,
  [grpc.status.INVALID_ARGUMENT]: 400,
  [grpc.status.DEADLINE_EXCEEDED]: 504,
  [grpc.status.NOT_FOUND]: 404,
  [grpc.status.ALREADY_EXISTS]: 409,
  [grpc.status.PERMISSION_DENIED]: 403,
  [grpc.status.RESOURCE_EXHAUSTED]: 429,
  // An illegal state for the request is a conflict with the resource's current state.
  [grpc.status.FAILED_PRECONDITION]: 409,
  [grpc.status.ABORTED]: 409,
  [grpc.status.OUT_OF_RANGE]: 400,
  [grpc.status.UNIMPLEMENTED]: 501,
  [grpc.status.INTERNAL]: 500,
  [grpc.status.UNAVAILABLE]: 503,
  [grpc.status.DATA_LOSS]: 500,
  [grpc.status.UNAUTHENTICATED]: 401,
};

export function httpStatusOf(code: grpc.status): number {
  return HTTP_STATUS_BY_GRPC_CODE[code] ?? 500;
}

/** The gRPC code's name, e.g. `INVALID_ARGUMENT`, as the `code` of an HTTP error body. */
export function grpcCodeName(code: grpc.status): string {
  return grpc.status[code] ?? 'UNKNOWN';
}

export type HttpErrorBody = {
  error: {
    /** The gRPC code name: the same code a gRPC caller would get. */
    code: string;
    /** A stable UPPER_SNAKE cause, finer than the code where one is known. */
    reason: string;
    /** The same message a gRPC caller gets in the status details. */
    message: string;
    /** True when the same request may succeed later. */
    retryable: boolean;
    /**
     * The `x-request-id` of the exchange (the caller's, or one made up and echoed back): it
     * correlates the answer with the server's log lines. Not named request_id, which is the
     * idempotency key everywhere else in the API.
     */
    correlation_id: string;
  };
};

export type HttpErrorAnswer = Readonly<{
  status: number;
  body: HttpErrorBody;
  /** Retry-After (seconds) when the error carries a retry delay. */
  headers: Readonly<Record<string, string>>;
}>;

/**
 * Maps any thrown value to an HTTP error answer via toGrpcStatus. `correlationId` is the
 * exchange's x-request-id; an INTERNAL error's message quotes it too.
 */
export function toHttpError(
  error: unknown,
  correlationId: string,
  options: StatusOptions = {},
): HttpErrorAnswer {
  const status = toGrpcStatus(error, correlationId, options);
  const retryable = error instanceof SettleError && error.retryable;
  const retryDelayMs = error instanceof SettleError ? error.retryDelayMs : undefined;
  const headers: Record<string, string> = {};
  if (retryable)
    headers['retry-after'] = String(Math.max(1, Math.ceil((retryDelayMs ?? 1) / 1000)));
  return {
    status: httpStatusOf(status.code),
    headers,
    body: {
      error: {
        code: grpcCodeName(status.code),
        reason: reasonOf(error, status.code),
        message: status.details,
        retryable,
        correlation_id: correlationId,
      },
    },
  };
}

/**
 * An error's own `reason` when it carries one; else `AlreadyExistsError` → `ALREADY_EXISTS`, zod →
 * `VALIDATION_FAILED`, and bugs → `INTERNAL`.
 */
function reasonOf(error: unknown, code: grpc.status): string {
  if (error instanceof z.core.$ZodError) return 'VALIDATION_FAILED';
  if (error instanceof SettleError) {
    const own = (error as { reason?: unknown }).reason;
    if (typeof own === 'string' && /^[A-Z][A-Z0-9_]{0,63}$/.test(own)) return own;
    return error.name
      .replace(/Error$/, '')
      .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
      .toUpperCase();
  }
  return grpcCodeName(code);
}
