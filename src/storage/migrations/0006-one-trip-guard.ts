/**
 * `one_trip_guard`: the table guards of one-packet transactions insert into when a check fails
 * (storage/one-trip.ts). Every CHECK refuses its own id, so no row can ever be stored and a
 * tripped guard fails whatever the table holds; the constraint's name in the error says which
 * check it was. Nothing reads or writes it otherwise. SQL that MySQL 8.4 and MariaDB 10.11
 * accept (both enforce CHECK constraints).
 */
import { sql, type Kysely } from 'kysely';
import { createTable, type MigrationStep } from './steps.js';

export const steps: readonly MigrationStep[] = [
  createTable(
    `CREATE TABLE one_trip_guard (
        id TINYINT NOT NULL PRIMARY KEY,
        CONSTRAINT one_trip_row_count_differs CHECK (id <> 1),
        CONSTRAINT one_trip_ledger_unbalanced CHECK (id <> 2)
      ) ENGINE=InnoDB`,
  ),
];

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql.raw('DROP TABLE one_trip_guard').execute(db);
}
