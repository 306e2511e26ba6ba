/**
 * The PSP mock's migrations, imported statically so they run the same under tsx, vitest and
 * compiled code. Each is a list of steps run by Settle's storage/migrations/steps.ts, which
 * resumes one that stopped midway (a mock killed, a connection lost) at its first unrecorded step.
 * They are recorded in their own tables (psp_migration, psp_migration_lock, psp_migration_step),
 * so the mock could even share a schema with Settle without the two migrators colliding.
 * Append; never edit a shipped migration (its steps are recorded by index).
 */
import { Migrator, type Kysely, type MigrationProvider } from 'kysely';
import {
  steppedMigrationProvider,
  type SteppedMigration,
  type StepHooks,
} from '../../../storage/migrations/steps.js';
import * as m0001 from './0001-initial.js';
import * as m0002 from './0002-settlement.js';
import * as m0003 from './0003-one-trip-guard.js';

/** The mock's step records: its migration names overlap Settle's. */
export const PSP_MIGRATION_STEP_TABLE = 'psp_migration_step';

const migrations: Readonly<Record<string, SteppedMigration>> = {
  '0001-initial': m0001,
  '0002-settlement': m0002,
  '0003-one-trip-guard': m0003,
};

/** The mock's migrations for Kysely's Migrator; `hooks` are for tests. */
export function pspMigrationProvider(hooks: StepHooks = {}): MigrationProvider {
  return steppedMigrationProvider(migrations, { stepTable: PSP_MIGRATION_STEP_TABLE, hooks });
}

/**
 * Applies every pending migration; throws naming the failing one. One that stopped midway resumes
 * at its first unrecorded step.
 */
// Kysely types migration databases as Kysely<any>: migrations see the schema as it was then.
export async function migratePspToLatest(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>,
  options: Readonly<{ hooks?: StepHooks }> = {},
): Promise<void> {
  const migrator = new Migrator({
    db,
    provider: pspMigrationProvider(options.hooks),
    migrationTableName: 'psp_migration',
    migrationLockTableName: 'psp_migration_lock',
  });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((result) => result.status === 'Error');
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`PSP migration ${failed?.migrationName ?? '(unknown)'} failed: ${message}`, {
      cause: error,
    });
  }
}
