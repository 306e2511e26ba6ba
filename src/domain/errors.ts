/**
 * Operating errors: expected failures a caller can act on. Each has a stable code, which
 * src/grpc/status.ts maps to a gRPC status (and the REST twin to an HTTP status). Anything that is
 * not a SettleError is a bug and leaves the process as INTERNAL with a generic message.
 */
export const ERROR_CODE = {
  invalidArgument: 'INVALID_ARGUMENT',
  notFound: 'NOT_FOUND',
  alreadyExists: 'ALREADY_EXISTS',
  failedPrecondition: 'FAILED_PRECONDITION',
  aborted: 'ABORTED',
  unauthenticated: 'UNAUTHENTICATED',
  permissionDenied: 'PERMISSION_DENIED',
  resourceExhausted: 'RESOURCE_EXHAUSTED',
  unavailable: 'UNAVAILABLE',
  unimplemented: 'UNIMPLEMENTED',
} as const;
export type ErrorCode = (typeof ERROR_CODE)[keyof typeof ERROR_CODE];

export type SettleErrorOptions = ErrorOptions & {
  /** True when the same call may succeed later. */
  retryable?: boolean;
  /** A hint for when to retry, in milliseconds. */
  retryDelayMs?: number;
};

export abstract class SettleError extends Error {
  abstract readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly retryDelayMs: number | undefined;
  constructor(message: string, options: SettleErrorOptions = {}) {
    super(message, options);
    this.retryable = options.retryable ?? false;
    this.retryDelayMs = options.retryDelayMs;
  }
}

export class InvalidArgumentError extends SettleError {
  override readonly name = 'InvalidArgumentError';
  readonly code = ERROR_CODE.invalidArgument;
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

export class NotFoundError extends SettleError {
  override readonly name = 'NotFoundError';
  readonly code = ERROR_CODE.notFound;
  constructor(
    readonly resource: string,
    readonly id: string,
  ) {
    super(`${resource} '${id}' not found`);
  }
}

export class AlreadyExistsError extends SettleError {
  override readonly name = 'AlreadyExistsError';
  readonly code = ERROR_CODE.alreadyExists;
}

export class FailedPreconditionError extends SettleError {
  override readonly name = 'FailedPreconditionError';
  readonly code = ERROR_CODE.failedPrecondition;
}

export class AbortedError extends SettleError {
  override readonly name = 'AbortedError';
  readonly code = ERROR_CODE.aborted;
  constructor(message: string, options: SettleErrorOptions = {}) {
    super(message, { retryable: true, ...options });
  }
}

export class UnauthenticatedError extends SettleError {
  override readonly name = 'UnauthenticatedError';
  readonly code = ERROR_CODE.unauthenticated;
}

/**
 * A caller known by its credential asked for something that credential does not allow, e.g. a
 * read-only API token calling a method that writes. `caller` is the credential's name (never the
 * credential), so the refusal's log line can still say who it was.
 */
export class PermissionDeniedError extends SettleError {
  override readonly name = 'PermissionDeniedError';
  readonly code = ERROR_CODE.permissionDenied;
  constructor(
    message: string,
    readonly caller: string,
  ) {
    super(message);
  }
}

export class ResourceExhaustedError extends SettleError {
  override readonly name = 'ResourceExhaustedError';
  readonly code = ERROR_CODE.resourceExhausted;
  constructor(message: string, options: SettleErrorOptions = {}) {
    super(message, { retryable: true, ...options });
  }
}

export class UnavailableError extends SettleError {
  override readonly name = 'UnavailableError';
  readonly code = ERROR_CODE.unavailable;
  constructor(message: string, options: SettleErrorOptions = {}) {
    super(message, { retryable: true, ...options });
  }
}

/** An operation the API does not have, e.g. a REST path asked with a method it does not take. */
export class UnimplementedError extends SettleError {
  override readonly name = 'UnimplementedError';
  readonly code = ERROR_CODE.unimplemented;
}

export function assertNever(value: never, what = 'value'): never {
  throw new Error(`unexpected ${what}: ${JSON.stringify(value)}`);
}
