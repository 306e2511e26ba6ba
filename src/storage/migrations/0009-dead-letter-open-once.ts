/**
 * One OPEN dead letter per order, reason and command: a command that is sent again and refused
 * again the same way (the janitor's status check of an order whose PSP answer Settle cannot
 * store, every JANITOR_STUCK_MS) adds nothing for an operator, and used to add a row each time.
 * The unique key spans the order, the reason, the payload's SHA-256 and a flag that is 1 while
 * the entry is OPEN and NULL once it is closed, so closed entries and those of no order (NULLs)
 * never collide, and two different commands of one order (two webhooks' results) never do.
 * Generated columns, so no writer can forget to clear the flag. MariaDB refuses CONCAT of a CHAR
 * column in a generated column (its value depends on sql_mode), hence several columns in the key
 * rather than one string. Repeats already recorded are closed first (RESOLVED, naming the entry
 * kept), or the key could not be added. SQL that MySQL 8.4 and MariaDB 10.11 accept.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  {
    sql: `ALTER TABLE dead_letter
      ADD COLUMN payload_sha256 BINARY(32) GENERATED ALWAYS AS (UNHEX(SHA2(payload, 256))) STORED,
      ADD COLUMN open_flag TINYINT GENERATED ALWAYS AS (IF(state = 'OPEN', 1, NULL)) STORED`,
    alreadyDone: [AlreadyDone.COLUMN_EXISTS],
  },
  // The oldest of each set of repeats stays OPEN. Safe to run again: it finds none the second
  // time. The derived table is grouped, so MySQL materializes it (no error 1093).
  {
    sql: `UPDATE dead_letter d
      JOIN (SELECT order_id, reason, payload_sha256, MIN(id) AS kept
              FROM dead_letter
             WHERE open_flag = 1 AND order_id IS NOT NULL
             GROUP BY order_id, reason, payload_sha256
            HAVING COUNT(*) > 1) k
        ON d.order_id = k.order_id AND d.reason = k.reason
       AND d.payload_sha256 = k.payload_sha256 AND d.open_flag = 1 AND d.id <> k.kept
       SET d.state = 'RESOLVED',
           d.resolution_note = CONCAT('a repeat of dead letter ', k.kept, ', which stays open'),
           d.updated_at = CURRENT_TIMESTAMP(3)`,
    alreadyDone: [],
  },
  {
    sql: `CREATE UNIQUE INDEX dead_letter_open_once
      ON dead_letter (order_id, reason, payload_sha256, open_flag)`,
    alreadyDone: [AlreadyDone.KEY_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP INDEX dead_letter_open_once ON dead_letter').execute(db);
  await sql
    .raw('ALTER TABLE dead_letter DROP COLUMN open_flag, DROP COLUMN payload_sha256')
    .execute(db);
}
