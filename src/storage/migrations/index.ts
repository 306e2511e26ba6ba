/**
 * The migration list, imported statically so it works the same under tsx, vitest and compiled
 * code (Kysely's FileMigrationProvider does not work under vitest). Each migration is a list of
 * steps run by steps.ts, which resumes one that stopped midway. Append; never edit a shipped one
 * (its steps are recorded by index).
 */
import type { MigrationProvider } from 'kysely';
import * as m0001 from './0001-initial.js';
import * as m0002 from './0002-failure-handling.js';
import * as m0003 from './0003-reconciliation.js';
import * as m0004 from './0004-admin.js';
import * as m0005 from './0005-outbox-hold.js';
import * as m0006 from './0006-one-trip-guard.js';
import * as m0007 from './0007-dead-letter-resolved.js';
import * as m0008 from './0008-dead-letter-retention.js';
import * as m0009 from './0009-dead-letter-open-once.js';
import * as m0010 from './0010-outbox-parking.js';
import * as m0011 from './0011-dead-letter-order-dropped.js';
import * as m0012 from './0012-ledger-entry-mark.js';
import * as m0013 from './0013-ledger-sums.js';
import {
  MIGRATION_STEP_TABLE,
  steppedMigrationProvider,
  type SteppedMigration,
  type StepHooks,
} from './steps.js';

export type { StepHooks, StepProgress } from './steps.js';

const migrations: Readonly<Record<string, SteppedMigration>> = {
  '0001-initial': m0001,
  '0002-failure-handling': m0002,
  '0003-reconciliation': m0003,
  '0004-admin': m0004,
  '0005-outbox-hold': m0005,
  '0006-one-trip-guard': m0006,
  '0007-dead-letter-resolved': m0007,
  '0008-dead-letter-retention': m0008,
  '0009-dead-letter-open-once': m0009,
  '0010-outbox-parking': m0010,
  '0011-dead-letter-order-dropped': m0011,
  '0012-ledger-entry-mark': m0012,
  '0013-ledger-sums': m0013,
};

/** Settle's migrations for Kysely's Migrator; `hooks` are for tests. */
export function migrationProvider(hooks: StepHooks = {}): MigrationProvider {
  return steppedMigrationProvider(migrations, { stepTable: MIGRATION_STEP_TABLE, hooks });
}
