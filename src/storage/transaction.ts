/**
 * Runs a unit of work in one InnoDB transaction and retries it whole on deadlock (up to
 * `attemptsMax` tries) or lock wait timeout (one retry: a lock held for the whole wait is
 * seldom gone a moment later, and each wait costs innodb_lock_wait_timeout). Connection
 * failures, and lock errors that outlast the retries, become UnavailableError, so callers
 * answer UNAVAILABLE and JetStream retries later.
 */
import type { Transaction } from 'kysely';
import { ResourceExhaustedError, UnavailableError } from '../domain/errors.js';
import type { Db } from './db.js';
import {
  isConnectionError,
  isDeadlock,
  isLockWaitTimeout,
  isPoolQueueFull,
  isTransientLockError,
} from './errors.js';
import type { Database } from './schema.js';

export type Trx = Transaction<Database>;

/** Tries of a unit that waited out innodb_lock_wait_timeout: the first and one retry. */
const LOCK_WAIT_ATTEMPTS_MAX = 2;

export async function inTransaction<T>(
  db: Db,
  work: (trx: Trx) => Promise<T>,
  options: { attemptsMax?: number } = {},
): Promise<T> {
  const attemptsMax = options.attemptsMax ?? 4;
  try {
    return await retryLockErrors(() => db.transaction().execute(work), {
      deadlockAttemptsMax: attemptsMax,
      lockWaitAttemptsMax: Math.min(attemptsMax, LOCK_WAIT_ATTEMPTS_MAX),
    });
  } catch (error) {
    throw toUnavailable(error);
  }
}

/** Runs `work` again after a short pause while its lock errors are within their attempts. */
async function retryLockErrors<T>(
  work: () => Promise<T>,
  limits: { deadlockAttemptsMax: number; lockWaitAttemptsMax: number },
): Promise<T> {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await work();
    } catch (error) {
      const attemptsMax = isDeadlock(error)
        ? limits.deadlockAttemptsMax
        : isLockWaitTimeout(error)
          ? limits.lockWaitAttemptsMax
          : 0;
      if (attempt >= attemptsMax) throw error;
      await new Promise((resolve) => setTimeout(resolve, 5 * attempt + Math.random() * 10));
    }
  }
}

/**
 * Runs `work` (an autocommit statement, or any unit that is safe to repeat) and runs it again
 * when it was a deadlock's victim, at most `attemptsMax` times in all, with inTransaction's
 * pause. Only deadlocks: a lock wait timeout has already waited innodb_lock_wait_timeout, and
 * whoever holds the lock may hold it as long again.
 */
export function retryOnDeadlock<T>(
  work: () => Promise<T>,
  options: { attemptsMax?: number } = {},
): Promise<T> {
  return retryLockErrors(work, {
    deadlockAttemptsMax: options.attemptsMax ?? 4,
    lockWaitAttemptsMax: 1,
  });
}

/**
 * Wraps connection-level failures, and deadlocks and lock waits that outlasted their retries, so
 * they surface as UNAVAILABLE, and a full pool queue as RESOURCE_EXHAUSTED; passes others through.
 */
export function toUnavailable(error: unknown): unknown {
  if (isPoolQueueFull(error)) {
    return new ResourceExhaustedError(
      'too many database statements are waiting for a connection on this node; retry later',
      { cause: error },
    );
  }
  if (isConnectionError(error)) {
    return new UnavailableError('the database is unavailable; retry later', { cause: error });
  }
  if (isTransientLockError(error)) {
    return new UnavailableError(
      'the database is busy (a row stayed locked past its retries); retry later',
      { cause: error },
    );
  }
  return error;
}
