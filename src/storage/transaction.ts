/**
 * Runs a unit of work in one InnoDB transaction and retries it whole on deadlock or lock wait
 * timeout (bounded). Connection failures become UnavailableError, so callers answer UNAVAILABLE.
 */
import type { Transaction } from 'kysely';
import { UnavailableError } from '../domain/errors.js';
import type { Db } from './db.js';
import { isConnectionError, isTransientLockError } from './errors.js';
import type { Database } from './schema.js';

export type Trx = Transaction<Database>;

export async function inTransaction<T>(
  db: Db,
  work: (trx: Trx) => Promise<T>,
  options: { attemptsMax?: number } = {},
): Promise<T> {
  const attemptsMax = options.attemptsMax ?? 4;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await db.transaction().execute(work);
    } catch (error) {
      if (isTransientLockError(error) && attempt < attemptsMax) {
        await new Promise((resolve) => setTimeout(resolve, 5 * attempt + Math.random() * 10));
        continue;
      }
      throw toUnavailable(error);
    }
  }
}

/** Wraps connection-level failures so they surface as UNAVAILABLE; passes others through. */
export function toUnavailable(error: unknown): unknown {
  if (isConnectionError(error)) {
    return new UnavailableError('the database is unavailable; retry later', { cause: error });
  }
  return error;
}
