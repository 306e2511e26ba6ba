/**
 * Retention of closed dead letters: housekeeping deletes those an operator or the janitor closed
 * (REPLAYED, DISCARDED, RESOLVED) longer ago than DEAD_LETTER_KEEP_DAYS, oldest first, one state
 * at a time. The (state, updated_at) index gives each DELETE its rows in order without scanning
 * the OPEN ones, which are never purged. The webhook inbox's purge walks the existing
 * inbox_received index. SQL that MySQL 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  {
    sql: 'CREATE INDEX dead_letter_closed ON dead_letter (state, updated_at)',
    alreadyDone: [AlreadyDone.KEY_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP INDEX dead_letter_closed ON dead_letter').execute(db);
}
