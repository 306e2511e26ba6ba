/**
 * Drops 0002's `dead_letter_order (order_id)`: 0009's unique key `dead_letter_open_once` starts
 * with order_id, so it answers every lookup by order (the admin list and timeline, the inbox
 * purge's NOT EXISTS) and the second index only cost writes and space. A page of one order's
 * entries, newest first, now sorts that order's few rows instead of reading them in id order. No
 * foreign key names order_id. MySQL has no DROP INDEX IF EXISTS, so a drop whose record was lost
 * takes the missing key as done, as 0007 takes a missing constraint. SQL that MySQL 8.4 and
 * MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  {
    sql: 'DROP INDEX dead_letter_order ON dead_letter',
    alreadyDone: [AlreadyDone.KEY_MISSING],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('CREATE INDEX dead_letter_order ON dead_letter (order_id)').execute(db);
}
