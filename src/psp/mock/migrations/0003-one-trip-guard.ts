/**
 * `psp_one_trip_guard`: the mock's decisions commit in one packet behind a row-count guard, as
 * Settle's transitions do (storage/one-trip.ts). Like Settle's `one_trip_guard`, its CHECK refuses
 * the guard's id, so no row can ever be stored and a tripped guard fails whatever the table holds.
 * Its own name and constraint name keep the mock's tables `psp_` and apart from Settle's, should
 * the two share a schema (MySQL names CHECK constraints per schema).
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from '../../../storage/migrations/steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(
    `CREATE TABLE psp_one_trip_guard (
        id TINYINT NOT NULL PRIMARY KEY,
        CONSTRAINT psp_one_trip_row_count_differs CHECK (id <> 1)
      ) ENGINE=InnoDB`,
  ),
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP TABLE IF EXISTS psp_one_trip_guard').execute(db);
}
