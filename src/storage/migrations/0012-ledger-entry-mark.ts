/**
 * `ledger_entry_mark`: what ListEntries knows of how far ledger entry ids were handed out, and
 * when (storage/repositories/ledger-horizon.repository.ts). A row says that every ledger_entry
 * id up to `max_id` had been given to an INSERT by `taken_at` (UTC): an id at most `max_id` that
 * is not in the table some seconds later never will be, its INSERT having failed or been rolled
 * back. The rows are a ring of 4,096 slots, one per mark interval (a second: 68 minutes, above
 * the longest settle window MYSQL_LOCK_WAIT_TIMEOUT_S allows), so the table never grows. Nothing
 * else reads or writes it. SQL that MySQL 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(
    `CREATE TABLE ledger_entry_mark (
        slot      SMALLINT     NOT NULL PRIMARY KEY,
        taken_at  DATETIME(6)  NOT NULL,
        max_id    BIGINT       NOT NULL,
        KEY ledger_entry_mark_taken (taken_at, max_id)
      ) ENGINE=InnoDB`,
  ),
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP TABLE ledger_entry_mark').execute(db);
}
