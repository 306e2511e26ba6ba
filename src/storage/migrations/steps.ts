/**
 * Resumable migrations. MySQL and MariaDB commit every DDL statement on its own, so a migration of
 * several statements cannot be applied atomically. Each migration is therefore a list of steps of
 * one statement each, and every step is recorded in `schema_migration_step` right after it ran; a
 * migration that stopped midway (a node killed, a connection lost) resumes at its first
 * unrecorded step. A step's statement and its record are still two commits: the first unrecorded
 * step may have run with its record lost, so it, and only it, takes the errors that say its effect
 * is already there (a duplicate table, column, key or constraint, a key or constraint already
 * dropped) as done. Every statement is one ALTER or CREATE, which InnoDB applies whole or not at
 * all on both servers, so one such error means the whole step is there.
 *
 * The records mean something only while their migration is pending: Kysely's `kysely_migration`
 * row says a migration is complete, and a migration recorded there is never run again.
 *
 * Settle and the PSP mock both migrate this way (`steppedMigrationProvider`), each recording its
 * steps in its own table, as each records its migrations in its own Kysely table: their migration
 * names overlap, and the two may share a schema.
 */
import { sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';

/** The errors that say a step's effect is already there, as a closed set. */
export const AlreadyDone = {
  TABLE_EXISTS: 'TABLE_EXISTS',
  COLUMN_EXISTS: 'COLUMN_EXISTS',
  KEY_EXISTS: 'KEY_EXISTS',
  KEY_MISSING: 'KEY_MISSING',
  CONSTRAINT_EXISTS: 'CONSTRAINT_EXISTS',
  CONSTRAINT_MISSING: 'CONSTRAINT_MISSING',
} as const;
export type AlreadyDone = (typeof AlreadyDone)[keyof typeof AlreadyDone];

/** The server error numbers of each, on MySQL 8.4 and MariaDB 10.11. */
const ALREADY_DONE_ERRNOS: Readonly<Record<AlreadyDone, readonly number[]>> = {
  TABLE_EXISTS: [1050], // ER_TABLE_EXISTS_ERROR
  COLUMN_EXISTS: [1060], // ER_DUP_FIELDNAME
  KEY_EXISTS: [1061], // ER_DUP_KEYNAME
  KEY_MISSING: [1091], // ER_CANT_DROP_FIELD_OR_KEY
  // MySQL: ER_CHECK_CONSTRAINT_DUP_NAME; MariaDB: ER_DUP_CONSTRAINT_NAME.
  CONSTRAINT_EXISTS: [3822, 1826],
  // MySQL: ER_CONSTRAINT_NOT_FOUND; MariaDB: ER_CANT_DROP_FIELD_OR_KEY.
  CONSTRAINT_MISSING: [3940, 1091],
};

/** One statement of a migration, and the errors a second run of it would answer. */
export type MigrationStep = Readonly<{ sql: string; alreadyDone: readonly AlreadyDone[] }>;

/** A migration as a list of steps; `down` is Kysely's, for tests and operators. */
export type SteppedMigration = Readonly<{
  steps: readonly MigrationStep[];
  // Kysely types migration databases as Kysely<any>: migrations see the schema as it was then.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  down: (db: Kysely<any>) => Promise<void>;
}>;

/** A `CREATE TABLE` step. */
export function createTable(statement: string): MigrationStep {
  return { sql: statement, alreadyDone: [AlreadyDone.TABLE_EXISTS] };
}

/** Where a migration got to: a step ran (not yet recorded), or its record committed. */
export type StepProgress = Readonly<{
  migration: string;
  /** The step's index in its migration, from 0. */
  step: number;
  phase: 'RAN' | 'RECORDED';
}>;

export type StepHooks = Readonly<{
  /**
   * Called after each step ran and after its record committed. For tests: one that throws
   * stops the migration there, as a node killed at that point would.
   */
  afterStep?: (progress: StepProgress) => Promise<void>;
}>;

/** Settle's step records. */
export const MIGRATION_STEP_TABLE = 'schema_migration_step';

/**
 * Kysely's Migrator for `migrations`, each run by `runSteps` with its records in `stepTable`; a
 * migration's `down` forgets them, so a new `up` runs it all.
 */
export function steppedMigrationProvider(
  migrations: Readonly<Record<string, SteppedMigration>>,
  options: Readonly<{ stepTable: string; hooks?: StepHooks }>,
): MigrationProvider {
  assertTableName(options.stepTable);
  const kyselyMigrations: Record<string, Migration> = {};
  for (const [name, migration] of Object.entries(migrations)) {
    kyselyMigrations[name] = {
      up: (db) => runSteps(db, name, migration.steps, options.stepTable, options.hooks),
      down: async (db) => {
        await migration.down(db);
        await forgetSteps(db, name, options.stepTable);
      },
    };
  }
  return { getMigrations: () => Promise.resolve(kyselyMigrations) };
}

/** The step table's name goes into DDL as it is: a plain identifier only. */
function assertTableName(table: string): void {
  if (!/^[a-z_][a-z0-9_]{0,63}$/.test(table)) {
    throw new Error(`a migration step table must be a plain lower-case name, got "${table}"`);
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function ensureStepTable(db: Kysely<any>, table: string): Promise<void> {
  assertTableName(table);
  await sql
    .raw(
      `CREATE TABLE IF NOT EXISTS ${table} (
         migration    VARCHAR(255) NOT NULL,
         step         INT          NOT NULL,
         executed_at  DATETIME(3)  NOT NULL,
         PRIMARY KEY (migration, step)
       ) ENGINE=InnoDB`,
    )
    .execute(db);
}

/**
 * Runs the steps of `migration` not yet recorded, recording each in `table` after it ran. `db` is
 * the migrator's connection, which holds the migration lock, so no other node runs steps
 * meanwhile.
 */
async function runSteps(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>,
  migration: string,
  steps: readonly MigrationStep[],
  table: string,
  hooks: StepHooks = {},
): Promise<void> {
  await ensureStepTable(db, table);
  const { rows } = await sql<{ step: number | string }>`
    SELECT step FROM ${sql.table(table)}
     WHERE migration = ${migration} ORDER BY step`.execute(db);
  const recorded = rows.map((row) => Number(row.step));
  // Steps are recorded in order, one after the other: anything else is not this code's record.
  if (recorded.some((step, index) => step !== index) || recorded.length > steps.length) {
    throw new Error(
      `${table} records steps [${recorded.join(', ')}] of ${migration}, which has ` +
        `${steps.length} steps numbered from 0; a shipped migration must not change`,
    );
  }
  const resumeAt = recorded.length;
  for (let index = resumeAt; index < steps.length; index++) {
    const step = steps[index]!;
    try {
      await sql.raw(step.sql).execute(db);
    } catch (error) {
      // Only the first unrecorded step can have run before its record was lost.
      if (index !== resumeAt || !isAlreadyDone(error, step)) {
        throw new Error(`step ${index + 1} of ${steps.length}: ${describe(error)}`, {
          cause: error,
        });
      }
    }
    await hooks.afterStep?.({ migration, step: index, phase: 'RAN' });
    await sql`
      INSERT INTO ${sql.table(table)} (migration, step, executed_at)
      VALUES (${migration}, ${index}, ${new Date()})`.execute(db);
    await hooks.afterStep?.({ migration, step: index, phase: 'RECORDED' });
  }
}

/** Forgets the step records of `migration` once it is rolled back, so a new `up` runs it all. */
async function forgetSteps(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>,
  migration: string,
  table: string,
): Promise<void> {
  await ensureStepTable(db, table);
  await sql`DELETE FROM ${sql.table(table)} WHERE migration = ${migration}`.execute(db);
}

function isAlreadyDone(error: unknown, step: MigrationStep): boolean {
  const errno = (error as { errno?: unknown } | null)?.errno;
  return step.alreadyDone.some((kind) => ALREADY_DONE_ERRNOS[kind].includes(Number(errno)));
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === 'string' ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
