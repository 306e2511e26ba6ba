/**
 * A dead letter can be RESOLVED: its order reached a final state without a replay (the janitor
 * re-drove it, a late webhook arrived), so nothing is left for an operator to do. Only the CHECK
 * of the known states changes. `DROP CONSTRAINT` is MySQL 8.0.19+ and MariaDB 10.2+; it and the
 * new CHECK are two statements, as MySQL refuses a name dropped and added in one.
 */
import { sql, type Kysely } from 'kysely';
import { AlreadyDone, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  {
    sql: 'ALTER TABLE dead_letter DROP CONSTRAINT dead_letter_state_known',
    alreadyDone: [AlreadyDone.CONSTRAINT_MISSING],
  },
  {
    sql: `ALTER TABLE dead_letter ADD CONSTRAINT dead_letter_state_known
         CHECK (state IN ('OPEN', 'REPLAYED', 'DISCARDED', 'RESOLVED'))`,
    alreadyDone: [AlreadyDone.CONSTRAINT_EXISTS],
  },
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('ALTER TABLE dead_letter DROP CONSTRAINT dead_letter_state_known').execute(db);
  await sql
    .raw(
      `ALTER TABLE dead_letter ADD CONSTRAINT dead_letter_state_known
         CHECK (state IN ('OPEN', 'REPLAYED', 'DISCARDED'))`,
    )
    .execute(db);
}
