/**
 * What the resumable-migration tests compare and how they stop a migration: a database's schema
 * as rows that compare equal across databases, and a step hook that stops a migration where a
 * node killed there would have. Settle's and the PSP mock's migration tests both use them.
 */
import { sql, type Kysely } from 'kysely';
import { dropDatabase, ensureDatabase, openDatabase, type Db } from '../../src/storage/db.js';
import type { StepProgress } from '../../src/storage/migrations/steps.js';
import { testDatabaseUrl } from './harness.js';

export type FreshDatabase = Readonly<{ db: Db; url: string; close: () => Promise<void> }>;

/** An empty database of its own (named after `prefix`), dropped again by `close`. */
export async function freshDatabase(prefix: string): Promise<FreshDatabase> {
  const url = testDatabaseUrl(prefix);
  await ensureDatabase(url);
  const opened = openDatabase(url, { poolSize: 2 });
  return {
    db: opened.db,
    url,
    close: async () => {
      await opened.close();
      await dropDatabase(url);
    },
  };
}

/**
 * The schema of the database `db` is on: columns, indexes, constraints, CHECK clauses, and the
 * migrations Kysely recorded as complete in `migrationTable`.
 */
export async function schemaOf(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>,
  migrationTable: string,
): Promise<Record<string, unknown[]>> {
  const columns = await sql`
    SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT,
           EXTRA, COLLATION_NAME
      FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()
     ORDER BY TABLE_NAME, ORDINAL_POSITION`.execute(db);
  const indexes = await sql`
    SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE
      FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
     ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX`.execute(db);
  const constraints = await sql`
    SELECT TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE
      FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = DATABASE()
     ORDER BY TABLE_NAME, CONSTRAINT_NAME`.execute(db);
  const checks = await sql`
    SELECT CONSTRAINT_NAME, CHECK_CLAUSE
      FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()
     ORDER BY CONSTRAINT_NAME`.execute(db);
  const migrations = await sql`SELECT name FROM ${sql.table(migrationTable)} ORDER BY name`.execute(
    db,
  );
  return {
    columns: columns.rows,
    indexes: indexes.rows,
    constraints: constraints.rows,
    checks: checks.rows,
    migrations: migrations.rows,
  };
}

/** Every point migrations of these step counts can stop at: after each step ran and recorded. */
export function stopsOf(
  stepsPerMigration: ReadonlyArray<readonly [string, number]>,
): StepProgress[] {
  return stepsPerMigration.flatMap(([migration, count]) =>
    Array.from({ length: count }, (_, step) =>
      (['RAN', 'RECORDED'] as const).map((phase) => ({ migration, step, phase })),
    ).flat(),
  );
}

/** A hook that stops the migration at `at`, as a node killed there would. */
export function stopAt(at: StepProgress) {
  return (progress: StepProgress) =>
    progress.migration === at.migration && progress.step === at.step && progress.phase === at.phase
      ? Promise.reject(new Error(`stopped after ${describeStop(at)}`))
      : Promise.resolve();
}

export function describeStop(at: StepProgress): string {
  return `${at.migration} step ${at.step + 1} ${at.phase}`;
}
