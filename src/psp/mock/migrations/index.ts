/**
 * The PSP mock's migrations, imported statically so they run the same under tsx, vitest and
 * compiled code. They are recorded in their own Kysely tables (psp_migration, psp_migration_lock),
 * so the mock could even share a schema with Settle without the two migrators colliding.
 * Append; never edit a shipped migration.
 */
import { Migrator, type Kysely, type Migration, type MigrationProvider } from 'kysely';
import * as m0001 from './0001-initial.js';
import * as m0002 from './0002-settlement.js';
import * as m0003 from './0003-one-trip-guard.js';

const migrations: Record<string, Migration> = {
  '0001-initial': m0001,
  '0002-settlement': m0002,
  '0003-one-trip-guard': m0003,
};

export const pspMigrationProvider: MigrationProvider = {
  getMigrations: () => Promise.resolve(migrations),
};

/** Applies every pending migration; throws naming the failing one. */
// Kysely types migration databases as Kysely<any>: migrations see the schema as it was then.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function migratePspToLatest(db: Kysely<any>): Promise<void> {
  const migrator = new Migrator({
    db,
    provider: pspMigrationProvider,
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
