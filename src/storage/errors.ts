/**
 * Classifies driver errors by errno (mysql2's `code` strings are wrong for some MariaDB errnos).
 */
const ERRNO = {
  duplicateEntry: 1062,
  lockWaitTimeout: 1205,
  deadlock: 1213,
  checkFailedMariaDb: 4025,
  checkFailedMySql: 3819,
} as const;

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_CON_COUNT_ERROR',
  'POOL_CLOSED',
  'ENOTFOUND',
  'EHOSTUNREACH',
]);

function errnoOf(error: unknown): number | undefined {
  const errno = (error as { errno?: unknown } | null)?.errno;
  return typeof errno === 'number' ? errno : undefined;
}

/** A duplicate entry; with `key`, only on that unique key (MariaDB and MySQL name it alike). */
export function isDuplicateKey(error: unknown, key?: string): boolean {
  if (errnoOf(error) !== ERRNO.duplicateEntry) return false;
  if (key === undefined) return true;
  const message = error instanceof Error ? error.message : '';
  return message.includes(`${key}'`);
}

export function isCheckViolation(error: unknown): boolean {
  const errno = errnoOf(error);
  return errno === ERRNO.checkFailedMariaDb || errno === ERRNO.checkFailedMySql;
}

/** A deadlock: InnoDB rolled back this statement's transaction, which may be run again at once. */
export function isDeadlock(error: unknown): boolean {
  return errnoOf(error) === ERRNO.deadlock;
}

/** Deadlocks and lock wait timeouts: the whole unit of work may be retried. */
export function isTransientLockError(error: unknown): boolean {
  const errno = errnoOf(error);
  return errno === ERRNO.deadlock || errno === ERRNO.lockWaitTimeout;
}

export function isLockWaitTimeout(error: unknown): boolean {
  return errnoOf(error) === ERRNO.lockWaitTimeout;
}

export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true;
  const message = error instanceof Error ? error.message : '';
  return /Pool is closed|Connection lost|connect ETIMEDOUT|closed state/i.test(message);
}

/**
 * mysql2's pool refused a statement because `queueLimit` requests already wait for a connection:
 * this node asks too much of a healthy database (an overload, RESOURCE_EXHAUSTED), and the
 * statement was never sent, so nothing of it happened. Not a connection error: that would report
 * the database down, and a lost COMMIT's outcome as unknown.
 */
export function isPoolQueueFull(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith('Queue limit reached');
}
