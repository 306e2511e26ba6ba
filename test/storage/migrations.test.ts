/**
 * Goal: a migration stopped after any of its steps, with that step's record committed or lost
 * (the DDL committed, the node gone before its record), resumes on the next start and leaves a
 * schema identical to a clean run's; so does one whose connection is killed mid-migration, and one
 * left half-applied by the code before steps were recorded; the resumed step takes only its own
 * "already done" errors, and a later step fails as before; a database whose migrations were all
 * recorded before steps existed runs nothing again; two nodes migrating one database at once both
 * start, on one schema. Method: real MariaDB, a fresh database per case, the migration stopped by
 * a step hook that throws (as a node killed there would) or by KILL from another connection, and
 * schemas compared column by column, index by index and constraint by constraint through
 * information_schema.
 */
import { sql } from 'kysely';
import { beforeAll, describe, expect, it } from 'vitest';
import { migrateToLatest, openDatabase, type Db } from '../../src/storage/db.js';
import type { StepProgress } from '../../src/storage/migrations/index.js';
import {
  describeStop,
  freshDatabase as freshDatabaseFor,
  schemaOf as schemaIn,
  stopAt,
  stopsOf,
} from '../support/schema.js';

/** The schema of the database `db` is on, as rows that compare equal across databases. */
const schemaOf = (db: Db) => schemaIn(db, 'kysely_migration');

/** The steps of each migration: a shipped migration never changes, so neither does this. */
const STEPS_PER_MIGRATION: ReadonlyArray<readonly [string, number]> = [
  ['0001-initial', 9],
  ['0002-failure-handling', 2],
  ['0003-reconciliation', 5],
  ['0004-admin', 2],
  ['0005-outbox-hold', 2],
  ['0006-one-trip-guard', 1],
  ['0007-dead-letter-resolved', 2],
  ['0008-dead-letter-retention', 1],
  ['0009-dead-letter-open-once', 3],
  ['0010-outbox-parking', 3],
  ['0011-dead-letter-order-dropped', 1],
  ['0012-ledger-entry-mark', 1],
  ['0013-ledger-sums', 4],
];
const MIGRATIONS = STEPS_PER_MIGRATION.map(([name]) => name);

/** Every point a migration can stop at: after each step ran, and after its record committed. */
const STOPS: readonly StepProgress[] = stopsOf(STEPS_PER_MIGRATION);

const freshDatabase = () => freshDatabaseFor('settle_migrate_t');

let clean: Record<string, unknown[]>;
const cleanProgress: StepProgress[] = [];

beforeAll(async () => {
  const fresh = await freshDatabase();
  try {
    await migrateToLatest(fresh.db, {
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

describe('resumable migrations', () => {
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
          migrateToLatest(fresh.db, { hooks: { afterStep: stopAt(at) } }),
        ).rejects.toThrow(`migration ${at.migration} failed: stopped after ${describeStop(at)}`);
        await migrateToLatest(fresh.db);
        expect(await schemaOf(fresh.db)).toEqual(clean);
      } finally {
        await fresh.close();
      }
    },
  );

  it('resumes after the connection was killed between a step and its record', async () => {
    const fresh = await freshDatabase();
    const killer = openDatabase(fresh.url, { poolSize: 1 });
    try {
      const kill = async (progress: StepProgress) => {
        if (progress.migration !== '0002-failure-handling' || progress.phase !== 'RAN') return;
        const { rows } = await sql<{ id: string }>`
          SELECT ID AS id FROM information_schema.PROCESSLIST
           WHERE DB = DATABASE() AND ID <> CONNECTION_ID()`.execute(killer.db);
        for (const { id } of rows)
          await sql.raw(`KILL CONNECTION ${Number(id)}`).execute(killer.db);
      };
      // Kysely's release of the lock fails on the dead connection too, and its error wins.
      await expect(migrateToLatest(fresh.db, { hooks: { afterStep: kill } })).rejects.toThrow(
        /^migration .* failed: /,
      );
      const steps = await sql`SELECT migration, step FROM schema_migration_step
        WHERE migration = '0002-failure-handling'`.execute(fresh.db);
      expect(steps.rows).toEqual([]); // the first step ran, its record did not
      await migrateToLatest(fresh.db);
      expect(await schemaOf(fresh.db)).toEqual(clean);
    } finally {
      await killer.close();
      await fresh.close();
    }
  });

  it('0009 closes the OPEN repeats recorded before its key, keeping the oldest of each OPEN', async () => {
    const fresh = await freshDatabase();
    try {
      // The generated columns are there, the key is not: as a database upgraded from 0008.
      const at = { migration: '0009-dead-letter-open-once', step: 0, phase: 'RECORDED' } as const;
      await expect(migrateToLatest(fresh.db, { hooks: { afterStep: stopAt(at) } })).rejects.toThrow(
        /stopped after/,
      );
      const check = JSON.stringify({ type: 'CheckOrderStatus', orderId: 'ord_repeat' });
      const expire = JSON.stringify({ type: 'ExpireOrder', orderId: 'ord_repeat' });
      const rows: Array<[string, string | null, string, string]> = [
        ['k1', 'ord_repeat', check, 'OPEN'],
        ['k2', 'ord_repeat', check, 'OPEN'],
        ['k3', 'ord_repeat', check, 'OPEN'],
        ['k4', 'ord_repeat', expire, 'OPEN'],
        ['k5', 'ord_repeat', check, 'DISCARDED'],
        ['k6', null, check, 'OPEN'],
        ['k7', null, check, 'OPEN'],
      ];
      for (const [key, orderId, payload, state] of rows) {
        await sql`INSERT INTO dead_letter (dedupe_key, stream_sequence, order_id, subject, reason,
            attempts, last_error, payload, state, created_at, updated_at)
          VALUES (${key}, 1, ${orderId}, 'settle.t.cmd.0', 'NON_RETRYABLE', 1, 'refused',
            ${payload}, ${state}, NOW(3), NOW(3))`.execute(fresh.db);
      }
      await migrateToLatest(fresh.db);
      expect(await schemaOf(fresh.db)).toEqual(clean);
      const after = await sql<{
        dedupe_key: string;
        state: string;
        resolution_note: string | null;
      }>`
        SELECT dedupe_key, state, resolution_note FROM dead_letter ORDER BY id`.execute(fresh.db);
      const kept = await sql<{ id: string }>`SELECT id FROM dead_letter
        WHERE dedupe_key = 'k1'`.execute(fresh.db);
      const note = `a repeat of dead letter ${kept.rows[0]?.id ?? '?'}, which stays open`;
      expect(after.rows).toEqual([
        { dedupe_key: 'k1', state: 'OPEN', resolution_note: null },
        { dedupe_key: 'k2', state: 'RESOLVED', resolution_note: note },
        { dedupe_key: 'k3', state: 'RESOLVED', resolution_note: note },
        { dedupe_key: 'k4', state: 'OPEN', resolution_note: null },
        { dedupe_key: 'k5', state: 'DISCARDED', resolution_note: null },
        { dedupe_key: 'k6', state: 'OPEN', resolution_note: null },
        { dedupe_key: 'k7', state: 'OPEN', resolution_note: null },
      ]);
    } finally {
      await fresh.close();
    }
  });

  it('keeps one index that starts with dead_letter.order_id, the unique dead_letter_open_once', () => {
    // 0011 dropped 0002's dead_letter_order, which 0009's unique key made redundant. No foreign
    // key is on dead_letter, so none needs an index of its own.
    const ofDeadLetter = (rows: unknown[] = []) =>
      (rows as Array<Record<string, unknown>>).filter((row) => row['TABLE_NAME'] === 'dead_letter');
    const byOrderId = ofDeadLetter(clean['indexes']).filter(
      (row) => row['COLUMN_NAME'] === 'order_id' && Number(row['SEQ_IN_INDEX']) === 1,
    );
    expect(byOrderId.map((row) => [row['INDEX_NAME'], Number(row['NON_UNIQUE'])])).toEqual([
      ['dead_letter_open_once', 0],
    ]);
    const foreignKeys = ofDeadLetter(clean['constraints']).filter(
      (row) => row['CONSTRAINT_TYPE'] === 'FOREIGN KEY',
    );
    expect(foreignKeys).toEqual([]);
  });

  it('resumes a migration left half-applied before steps were recorded', async () => {
    const fresh = await freshDatabase();
    try {
      // Migrated, then brought back by hand to where the code before step records left a node
      // killed after the first statement of 0005: available_at added, nothing else of 0005 on.
      await migrateToLatest(fresh.db);
      for (const statement of [
        `DELETE FROM kysely_migration WHERE name >= '0005'`,
        'DROP TABLE IF EXISTS schema_migration_step',
        'DROP TABLE one_trip_guard',
        'DROP INDEX outbox_due ON outbox',
        'DROP INDEX outbox_parked ON outbox',
        'ALTER TABLE outbox DROP COLUMN due_since',
        'ALTER TABLE outbox DROP COLUMN refusals',
        'ALTER TABLE dead_letter DROP CONSTRAINT dead_letter_state_known',
        `ALTER TABLE dead_letter ADD CONSTRAINT dead_letter_state_known
           CHECK (state IN ('OPEN', 'REPLAYED', 'DISCARDED'))`,
        // 0009 came after step records: a database of the code before them has none of it.
        'DROP INDEX dead_letter_open_once ON dead_letter',
        'ALTER TABLE dead_letter DROP COLUMN open_flag, DROP COLUMN payload_sha256',
        // So did 0011: that code's dead_letter still has 0002's index.
        'CREATE INDEX dead_letter_order ON dead_letter (order_id)',
        // Nor the tables of 0012 and 0013.
        'DROP TABLE ledger_entry_mark',
        'DROP TABLE ledger_sum_checkpoint',
        'DROP TABLE ledger_account_sum',
        'DROP TABLE ledger_currency_sum',
      ]) {
        await sql.raw(statement).execute(fresh.db);
      }
      await migrateToLatest(fresh.db);
      expect(await schemaOf(fresh.db)).toEqual(clean);
    } finally {
      await fresh.close();
    }
  });

  it('takes "already done" only from the step it resumes at', async () => {
    const fresh = await freshDatabase();
    try {
      const at = { migration: '0005-outbox-hold', step: 0, phase: 'RAN' } as const;
      await expect(migrateToLatest(fresh.db, { hooks: { afterStep: stopAt(at) } })).rejects.toThrow(
        /stopped after/,
      );
      // The next step's effect, made by someone else: it is not this migration's to take.
      await sql`CREATE INDEX outbox_due ON outbox (available_at, id)`.execute(fresh.db);
      await expect(migrateToLatest(fresh.db)).rejects.toThrow(
        "migration 0005-outbox-hold failed: step 2 of 2: ER_DUP_KEYNAME: Duplicate key name 'outbox_due'",
      );
    } finally {
      await fresh.close();
    }
  });

  it('runs nothing again on a database migrated before steps were recorded', async () => {
    const fresh = await freshDatabase();
    try {
      await migrateToLatest(fresh.db);
      await sql`DROP TABLE IF EXISTS schema_migration_step`.execute(fresh.db);
      const ran: StepProgress[] = [];
      await migrateToLatest(fresh.db, {
        hooks: {
          afterStep: (progress) => {
            ran.push(progress);
            return Promise.resolve();
          },
        },
      });
      expect(ran).toEqual([]);
      const tables = await sql`SELECT TABLE_NAME FROM information_schema.TABLES
        WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'schema_migration_step'`.execute(fresh.db);
      expect(tables.rows).toEqual([]);
    } finally {
      await fresh.close();
    }
  });

  it('lets one of two nodes starting at once migrate, and the other find it done', async () => {
    const fresh = await freshDatabase();
    const other = openDatabase(fresh.url, { poolSize: 2 });
    try {
      const ran: StepProgress[] = [];
      const record = (progress: StepProgress) => {
        if (progress.phase === 'RAN') ran.push(progress);
        return Promise.resolve();
      };
      await Promise.all([
        migrateToLatest(fresh.db, { hooks: { afterStep: record } }),
        migrateToLatest(other.db, { hooks: { afterStep: record } }),
      ]);
      expect(ran).toEqual(STOPS.filter((at) => at.phase === 'RAN'));
      expect(await schemaOf(fresh.db)).toEqual(clean);
    } finally {
      await other.close();
      await fresh.close();
    }
  });
});
