/**
 * Goal: the PSP mock's migrations resume as Settle's do. One stopped after any of its steps, with
 * that step's record committed or lost, resumes on the next start to a schema identical to a clean
 * run's; so does one left half-applied by the code before steps were recorded (a mock killed
 * after the first table of 0001); and the mock's step records stay apart from Settle's when both
 * migrate one schema, though their migration names overlap. Method: real MariaDB, a fresh
 * database per case, the migration stopped by a step hook that throws (as a mock killed there
 * would), and schemas compared through information_schema (test/support/schema.ts).
 */
import { sql } from 'kysely';
import { beforeAll, describe, expect, it } from 'vitest';
import { migratePspToLatest } from '../../../src/psp/mock/migrations/index.js';
import { migrateToLatest, type Db } from '../../../src/storage/db.js';
import type { StepProgress } from '../../../src/storage/migrations/index.js';
import {
  describeStop,
  freshDatabase as freshDatabaseFor,
  schemaOf as schemaIn,
  stopAt,
  stopsOf,
} from '../../support/schema.js';

/** The steps of each migration: a shipped migration never changes, so neither does this. */
const STEPS_PER_MIGRATION: ReadonlyArray<readonly [string, number]> = [
  ['0001-initial', 3],
  ['0002-settlement', 1],
  ['0003-one-trip-guard', 1],
];
const MIGRATIONS = STEPS_PER_MIGRATION.map(([name]) => name);
const STOPS: readonly StepProgress[] = stopsOf(STEPS_PER_MIGRATION);

const schemaOf = (db: Db) => schemaIn(db, 'psp_migration');
/** Where each records its steps. */
const PSP_STEP_TABLE = 'psp_migration_step';
const SETTLE_STEP_TABLE = 'schema_migration_step';

const freshDatabase = () => freshDatabaseFor('settle_psp_migrate_t');

async function stepsRecorded(db: Db, table: string): Promise<unknown[]> {
  const { rows } = await sql`SELECT migration, step FROM ${sql.table(table)}
    ORDER BY migration, step`.execute(db);
  return rows;
}

let clean: Record<string, unknown[]>;
const cleanProgress: StepProgress[] = [];

beforeAll(async () => {
  const fresh = await freshDatabase();
  try {
    await migratePspToLatest(fresh.db, {
      hooks: {
        afterStep: (progress) => {
          cleanProgress.push(progress);
          return Promise.resolve();
        },
      },
    });
    clean = await schemaOf(fresh.db);
  } finally {
    await fresh.close();
  }
});

describe("the PSP mock's resumable migrations", () => {
  it('stops at every step of a clean run, in order', () => {
    expect(cleanProgress).toEqual(STOPS);
    expect(clean['migrations']).toEqual(MIGRATIONS.map((name) => ({ name })));
  });

  it.each(STOPS.map((at) => [describeStop(at), at] as const))(
    'resumes a migration stopped after %s to the clean schema',
    async (_, at) => {
      const fresh = await freshDatabase();
      try {
        await expect(
          migratePspToLatest(fresh.db, { hooks: { afterStep: stopAt(at) } }),
        ).rejects.toThrow(
          `PSP migration ${at.migration} failed: stopped after ${describeStop(at)}`,
        );
        await migratePspToLatest(fresh.db);
        expect(await schemaOf(fresh.db)).toEqual(clean);
      } finally {
        await fresh.close();
      }
    },
  );

  it('resumes a migration left half-applied before steps were recorded', async () => {
    const fresh = await freshDatabase();
    try {
      // Migrated, then brought back by hand to where the code before step records left a mock
      // killed after the first statement of 0001: psp_payment made, nothing else.
      await migratePspToLatest(fresh.db);
      for (const statement of [
        'DELETE FROM psp_migration',
        `DROP TABLE IF EXISTS ${PSP_STEP_TABLE}`,
        'DROP TABLE psp_one_trip_guard',
        'DROP TABLE psp_settlement_adjustment',
        'DROP TABLE psp_webhook',
        'DROP TABLE psp_charge',
      ]) {
        await sql.raw(statement).execute(fresh.db);
      }
      await migratePspToLatest(fresh.db);
      expect(await schemaOf(fresh.db)).toEqual(clean);
    } finally {
      await fresh.close();
    }
  });

  it("keeps its step records apart from Settle's in a schema they share", async () => {
    const fresh = await freshDatabase();
    try {
      await migrateToLatest(fresh.db);
      const settleSteps = await stepsRecorded(fresh.db, SETTLE_STEP_TABLE);
      // Settle's 0001-initial has 9 steps recorded; the mock's has 3, and resumes after its 2nd.
      const at = { migration: '0001-initial', step: 1, phase: 'RECORDED' } as const;
      await expect(
        migratePspToLatest(fresh.db, { hooks: { afterStep: stopAt(at) } }),
      ).rejects.toThrow(/stopped after/);
      await migratePspToLatest(fresh.db);
      expect(await stepsRecorded(fresh.db, PSP_STEP_TABLE)).toEqual(
        STOPS.filter((stop) => stop.phase === 'RECORDED').map(({ migration, step }) => ({
          migration,
          step,
        })),
      );
      expect(await stepsRecorded(fresh.db, SETTLE_STEP_TABLE)).toEqual(settleSteps);
      const { rows } = await sql`SELECT name FROM psp_migration ORDER BY name`.execute(fresh.db);
      expect(rows).toEqual(MIGRATIONS.map((name) => ({ name })));
    } finally {
      await fresh.close();
    }
  });
});
