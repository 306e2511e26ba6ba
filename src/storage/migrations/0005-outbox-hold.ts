/**
 * `outbox.available_at`: the time from which the relay may publish a row. A new order's
 * ExecuteOrder is held back for a few seconds while the node that created the order runs it
 * itself (see actors/payment-order/local-execute.ts); every other row is due when written.
 * The relay reads due rows through the (available_at, id) index, so held rows are neither
 * scanned nor locked by it. SQL that MySQL 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  // The default keeps a node of the previous version working during a rolling upgrade: its
  // inserts do not name the column, and their rows are due at once, as they were.
  {
    sql: `ALTER TABLE outbox ADD COLUMN available_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)`,
    alreadyDone: [AlreadyDone.COLUMN_EXISTS],
  },
  {
    sql: `CREATE INDEX outbox_due ON outbox (available_at, id)`,
    alreadyDone: [AlreadyDone.KEY_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP INDEX outbox_due ON outbox').execute(db);
  await sql.raw('ALTER TABLE outbox DROP COLUMN available_at').execute(db);
}
