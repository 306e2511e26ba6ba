/**
 * The one place where errors become gRPC statuses (STYLE.md §6). Operating errors (SettleError
 * subclasses) keep their message and map by their stable code; zod validation errors become
 * INVALID_ARGUMENT naming every bad field; a lost database connection or a row lock that
 * outlasted its retries becomes UNAVAILABLE (retryable); anything else is a bug and becomes INTERNAL with a
 * generic message and the request id, never the original message or a stack, and is logged.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as z from 'zod';
import { SettleError, type ErrorCode } from '../domain/errors.js';
import { isConnectionError, isPoolQueueFull, isTransientLockError } from '../storage/errors.js';
import { toUnavailable } from '../storage/transaction.js';

const STATUS_BY_ERROR_CODE: Readonly<Record<ErrorCode, grpc.status>> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  ABORTED: grpc.status.ABORTED,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  UNIMPLEMENTED: grpc.status.UNIMPLEMENTED,
};

/**
 * A status message's length at most, in characters. A message travels in the `grpc-message`
 * trailer, and a Node client whose header limit a trailer exceeds (about 64 KiB) never sees the
 * answer: the call hangs to its deadline and the connection with it. A message that quotes a
 * caller's huge input is therefore cut, and says so.
 */
export const STATUS_MESSAGE_LENGTH_MAX = 1_000;

/** A UTF-16 surrogate without its other half. */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * `message`, cut to STATUS_MESSAGE_LENGTH_MAX characters (never inside one) when longer, with
 * every lone surrogate replaced by U+FFFD. Messages quote a caller's input cut with `slice`,
 * which can split a pair (an emoji at the cut), and grpc-js percent-encodes the message with
 * `encodeURI`, which throws on a lone surrogate: the throw escaped as an uncaught exception (it
 * ends the process) and the call was never answered.
 */
export function boundedStatusMessage(text: string): string {
  const message = text.replace(LONE_SURROGATE, '\ufffd');
  if (message.length <= STATUS_MESSAGE_LENGTH_MAX) return message;
  const points = Array.from(message);
  if (points.length <= STATUS_MESSAGE_LENGTH_MAX) return message;
  const kept = points.slice(0, STATUS_MESSAGE_LENGTH_MAX).join('');
  return `${kept}… (cut at ${STATUS_MESSAGE_LENGTH_MAX} characters)`;
}

/** Trailing-metadata key set to "true" on statuses whose error is retryable. */
export const RETRYABLE_METADATA_KEY = 'settle-retryable';
/** Trailing-metadata key with the error's suggested retry delay, in milliseconds. */
export const RETRY_DELAY_MS_METADATA_KEY = 'settle-retry-delay-ms';

export type ErrorLogContext = Readonly<{
  requestId: string;
  /** The gRPC method path, e.g. /settle.v1.PaymentService/GetPayment, when known. */
  path?: string | undefined;
}>;

/** Receives errors that are bugs (mapped to INTERNAL); operating errors are not logged. */
export type ErrorLogger = (error: unknown, context: ErrorLogContext) => void;

export type GrpcStatus = {
  code: grpc.status;
  details: string;
  /** Retry advice for retryable SettleErrors; absent otherwise. */
  metadata?: grpc.Metadata;
};

export type StatusOptions = Readonly<{
  /** Where INTERNAL errors are logged; console.error by default. */
  log?: ErrorLogger | undefined;
  /** The gRPC method path, passed to the logger. */
  path?: string | undefined;
  /**
   * Renders a zod issue path. The default writes proto field names: camelCase keys (ts-proto's
   * field names) become snake_case and array indexes become `[i]`, e.g. `orders[0].amount_minor`.
   */
  fieldPath?: ((path: readonly PropertyKey[]) => string) | undefined;
}>;

/** Logs to console.error; used when no logger is injected. */
export const defaultErrorLogger: ErrorLogger = (error, context) => {
  console.error('grpc: internal error', context, error);
};

/**
 * Maps any thrown value to the status a client sees. `requestId` goes into INTERNAL details so a
 * user's report can be matched to the log line; one is generated when absent.
 */
export function toGrpcStatus(
  error: unknown,
  requestId?: string,
  options: StatusOptions = {},
): GrpcStatus {
  // A database outage, a full pool queue, or a lock that outlasted its retries, on a path that
  // did not say so.
  if (
    !(error instanceof SettleError) &&
    (isConnectionError(error) || isPoolQueueFull(error) || isTransientLockError(error))
  )
    return toGrpcStatus(toUnavailable(error), requestId, options);
  if (error instanceof SettleError) {
    const status: GrpcStatus = {
      code: STATUS_BY_ERROR_CODE[error.code],
      details: boundedStatusMessage(error.message),
    };
    if (error.retryable) status.metadata = retryMetadata(error.retryDelayMs);
    return status;
  }
  if (error instanceof z.core.$ZodError) {
    const fieldPath = options.fieldPath ?? protoFieldPath;
    const details = error.issues
      .map((issue) =>
        issue.path.length === 0 ? issue.message : `${fieldPath(issue.path)}: ${issue.message}`,
      )
      .join('; ');
    return { code: grpc.status.INVALID_ARGUMENT, details: boundedStatusMessage(details) };
  }
  const id = requestId ?? randomUUID();
  (options.log ?? defaultErrorLogger)(error, { requestId: id, path: options.path });
  return { code: grpc.status.INTERNAL, details: `internal error (request id ${id})` };
}

/** `['orders', 0, 'amountMinor']` → `orders[0].amount_minor`. */
export function protoFieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') {
      out += `[${segment}]`;
    } else {
      const name = String(segment).replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
      out += out === '' ? name : `.${name}`;
    }
  }
  return out;
}

function retryMetadata(retryDelayMs: number | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(RETRYABLE_METADATA_KEY, 'true');
  if (retryDelayMs !== undefined) {
    metadata.set(RETRY_DELAY_MS_METADATA_KEY, String(Math.max(0, Math.round(retryDelayMs))));
  }
  return metadata;
}
