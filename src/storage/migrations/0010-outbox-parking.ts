/**
 * Parking of outbox rows JetStream refuses (a payload over the command stream's max_msg_size, a
 * subject no stream covers, a full stream): the relay moves such a row's `available_at` past a
 * backoff that doubles with `refusals`, so the relay's batches, which read due rows only, are
 * never filled by rows that will not go. `due_since` keeps the time the row first became due while
 * it is parked, so the outbox-age metric still counts it from then; the `outbox_parked` index
 * gives that metric its oldest parked row without a scan. The defaults keep a node of the
 * previous version working during a rolling upgrade: its inserts do not name the columns. SQL
 * that MySQL 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  {
    sql: 'ALTER TABLE outbox ADD COLUMN refusals INT NOT NULL DEFAULT 0',
    alreadyDone: [AlreadyDone.COLUMN_EXISTS],
  },
  {
    sql: 'ALTER TABLE outbox ADD COLUMN due_since DATETIME(3) NULL',
    alreadyDone: [AlreadyDone.COLUMN_EXISTS],
  },
  {
    sql: 'CREATE INDEX outbox_parked ON outbox (due_since)',
    alreadyDone: [AlreadyDone.KEY_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP INDEX outbox_parked ON outbox').execute(db);
  await sql.raw('ALTER TABLE outbox DROP COLUMN due_since').execute(db);
  await sql.raw('ALTER TABLE outbox DROP COLUMN refusals').execute(db);
}
