/**
 * The migration list, imported statically so it works the same under tsx, vitest and compiled
 * code (Kysely's FileMigrationProvider does not work under vitest). Append; never edit a shipped one.
 */
import type { Migration, MigrationProvider } from 'kysely';
import * as m0001 from './0001-initial.js';
import * as m0003 from './0003-reconciliation.js';

const migrations: Record<string, Migration> = {
  '0001-initial': m0001,
  '0003-reconciliation': m0003,
};

export const migrationProvider: MigrationProvider = {
  getMigrations: () => Promise.resolve(migrations),
};
