/**
 * Goal: reconciliation runs stay right when nodes lose their connections, leases or locks:
 * - a node whose run was taken over, failing later, never undoes what the new owner loaded
 *   (its cleanup runs only while the run is still its own);
 * - a run notices that the classification lock is gone (its connection dropped) and stops,
 *   instead of classifying beside another run;
 * - runs waiting for the lock do not take the connections of the run that holds it (the lock
 *   has a pool of its own): a main pool of one connection still finishes a run;
 * - a node admits at most runsMax runs at once, however many calls for other files arrive
 *   together (calls for one file still share its run), and a run waits for a connection of the
 *   lock's pool no longer than for the lock.
 * Method: ReconciliationService instances on a migrated database of the real MariaDB, files in a
 * temporary folder, a second connection that holds the lock or kills a connection, as a failing
 * network would, or holds every run's row so that new runs wait at their INSERT.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { createConnection, type Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResourceExhaustedError, UnavailableError } from '../../src/domain/errors.js';
import { addUtcDays, utcDayOf } from '../../src/domain/utc-day.js';
import { withClassificationLock } from '../../src/reconciliation/reconciliation.repository.js';
import {
  ReconciliationService,
  type ReconciliationOptions,
} from '../../src/reconciliation/reconciliation.service.js';
import { openDatabase, parseMysqlUrl, serverAddress } from '../../src/storage/db.js';
import { openTestDatabase, waitFor, type TestDatabase } from '../support/harness.js';

const HEADER = 'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';
const LOCK = "CONCAT('settle.recon.', MD5(DATABASE()))";

let database: TestDatabase;
let dir: string;
let control: Connection;
beforeAll(async () => {
  database = await openTestDatabase('takeover', { poolSize: 8 });
  dir = await mkdtemp(path.join(os.tmpdir(), 'settle-takeover-'));
  const target = parseMysqlUrl(database.url);
  control = await createConnection({ ...serverAddress(target), database: target.database });
});
afterAll(async () => {
  await control?.end().catch(() => undefined);
  await database?.close();
  await rm(dir, { recursive: true, force: true });
});

async function fileOf(day: string, rows: number): Promise<string> {
  const lines = [HEADER];
  for (let i = 0; i < rows; i += 1) {
    lines.push(
      `psp_${day}_${i},ord_${day}_${i},payment,USD,10.00,0.30,9.70,b1,${day}T10:00:00.000Z`,
    );
  }
  const name = `settlement-${day}.csv`;
  await writeFile(path.join(dir, name), `${lines.join('\n')}\n`);
  return name;
}

function service(name: string, options: Partial<ReconciliationOptions> = {}) {
  return new ReconciliationService({
    db: database.db,
    dir,
    nodeName: name,
    batchRows: 1_000,
    rowsMax: 100_000,
    waitMs: 0,
    ...options,
  });
}

async function stagedRows(runId: string): Promise<number> {
  const { rows } = await sql<{ n: string }>`
    SELECT COUNT(*) AS n FROM recon_file_row WHERE run_id = ${runId}`.execute(database.db);
  return Number(rows[0]?.n);
}

/** The id of the connection running a statement that starts with `prefix` on this database. */
async function connectionRunning(prefix: string): Promise<number> {
  return waitFor(
    async () => {
      const [rows] = await control.query(
        'SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND info LIKE ?',
        [`${prefix}%`],
      );
      return (rows as Array<{ id: number }>)[0]?.id;
    },
    { what: `a connection running ${prefix}` },
  );
}

describe('a run taken over by another node', () => {
  it('is not undone by its first owner failing later', async () => {
    const day = addUtcDays(utcDayOf(new Date()), -3);
    await fileOf(day, 20);
    // Another run classifies: this connection holds the lock, so A waits for it.
    await control.query(`SELECT GET_LOCK(${LOCK}, 0)`);
    const a = service('node-a');
    const b = service('node-b');
    try {
      const runId = await a.start({ settlementDate: day });
      const waiting = await connectionRunning('SELECT GET_LOCK');
      // A's lease runs out (its renewals failed), and B takes the run over and loads it.
      await sql`UPDATE recon_run SET lease_until = NOW(3) - INTERVAL 1 MINUTE
        WHERE id = ${runId}`.execute(database.db);
      expect(await b.start({ settlementDate: day })).toBe(runId);
      await waitFor(async () => (await stagedRows(runId)) === 20 || undefined, {
        what: 'B to load the file',
      });
      // A's connection drops while it waits: A fails, and must leave B's rows alone.
      await control.query(`KILL ${waiting}`);
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(await stagedRows(runId)).toBe(20);
      await control.query(`SELECT RELEASE_LOCK(${LOCK})`);
      const report = await waitFor(
        async () => {
          const run = await b.getReport(runId);
          return run.state === 'RUNNING' ? undefined : run;
        },
        { what: 'B to finish' },
      );
      expect(report.state).toBe('SUCCEEDED');
      expect(report.counts.MISSING_IN_LEDGER).toBe(20n);
    } finally {
      await control.query(`SELECT RELEASE_LOCK(${LOCK})`);
      await a.stop();
      await b.stop();
    }
  });
});

describe('a run whose lease could not be renewed', () => {
  it('is failed, to be run again at once, not left RUNNING under an expired lease', async () => {
    const day = addUtcDays(utcDayOf(new Date()), -5);
    await fileOf(day, 5);
    // Renewals fail: the run's row is held by another connection, and the node's pool waits
    // for a row lock 1 s at most.
    const pool = openDatabase(database.url, { poolSize: 4, lockWaitTimeoutS: 1 });
    const node = service('node-blip', { db: pool.db, leaseMs: 2_000, heartbeatMs: 300 });
    await control.query(`SELECT GET_LOCK(${LOCK}, 0)`);
    const held = await createConnection({
      ...serverAddress(parseMysqlUrl(database.url)),
      database: parseMysqlUrl(database.url).database,
    });
    try {
      const runId = await node.start({ settlementDate: day });
      // Loaded, and waiting for the lock: from here only the heartbeat writes the run's row.
      await connectionRunning('SELECT GET_LOCK');
      await held.query('START TRANSACTION');
      await held.query('SELECT id FROM recon_run WHERE id = ? FOR UPDATE', [runId]);
      // Longer than the lease: the node must give the run up...
      await new Promise((resolve) => setTimeout(resolve, 2_500));
      // ...and, once the database answers again, fail it rather than leave it RUNNING.
      await held.query('ROLLBACK');
      const failed = await waitFor(
        async () => {
          const run = await node.getReport(runId);
          return run.state === 'FAILED' ? run : undefined;
        },
        { what: 'the run to be failed', timeoutMs: 10_000 },
      );
      expect(failed.error).toBe(
        'its lease could not be renewed (the database did not answer); run it again',
      );
    } finally {
      await held.end().catch(() => undefined);
      await control.query(`SELECT RELEASE_LOCK(${LOCK})`);
      await node.stop();
      await pool.close();
    }
  });
});

describe('calls for one file at the same time', () => {
  it('share one read of it, and one run', async () => {
    const day = addUtcDays(utcDayOf(new Date()), -6);
    await fileOf(day, 20_000);
    const validated: number[] = [];
    const node = service('node-shared', {
      onEvent: (event) => {
        if (event.type === 'validated') validated.push(event.rows);
      },
    });
    try {
      const runIds = await Promise.all([1, 2, 3, 4].map(() => node.start({ settlementDate: day })));
      expect(new Set(runIds).size).toBe(1);
      expect(validated).toEqual([20_000]);
    } finally {
      await node.stop();
    }
  });
});

describe('the classification lock', () => {
  it('tells a run that it is gone once its connection dropped', async () => {
    const outcome = await withClassificationLock(
      database.db,
      { waitMsMax: 10_000, stillOurs: async () => undefined },
      async (stillHeld) => {
        await stillHeld();
        const [rows] = await control.query(`SELECT IS_USED_LOCK(${LOCK}) AS holder`);
        await control.query(`KILL ${(rows as Array<{ holder: number }>)[0]?.holder}`);
        return stillHeld().then(
          () => 'still held',
          (error: unknown) => error,
        );
      },
    ).catch((error: unknown) => error);
    expect(outcome).toBeInstanceOf(UnavailableError);
    expect((outcome as Error).message).toBe(
      'the classification lock was lost (its database connection dropped); run it again',
    );
  });

  it('is held on a pool of its own: a run finishes with a main pool of one connection', async () => {
    const day = addUtcDays(utcDayOf(new Date()), -4);
    await fileOf(day, 5);
    const small = openDatabase(database.url, { poolSize: 1 });
    const locks = openDatabase(database.url, { poolSize: 2 });
    const node = service('node-small', { db: small.db, lockDb: locks.db });
    try {
      const runId = await node.start({ settlementDate: day });
      const report = await waitFor(
        async () => {
          const run = await node.getReport(runId);
          return run.state === 'RUNNING' ? undefined : run;
        },
        { what: 'the run to finish', timeoutMs: 15_000 },
      );
      expect(report.state).toBe('SUCCEEDED');
    } finally {
      await node.stop();
      await small.close();
      await locks.close();
    }
  });

  it('bounds the wait for a connection of its pool as it bounds the wait for the lock', async () => {
    const locks = openDatabase(database.url, { poolSize: 1 });
    let release = () => {};
    const holding = withClassificationLock(
      locks.db,
      { waitMsMax: 10_000, stillOurs: async () => undefined },
      () => new Promise<void>((resolve) => (release = resolve)),
    );
    try {
      await waitFor(async () => (await lockHolder()) !== null || undefined, {
        what: 'the first run to hold the lock',
      });
      // The pool's one connection is taken: the second run waits for a connection, not the lock.
      const waiting = withClassificationLock(
        locks.db,
        { waitMsMax: 1_000, stillOurs: async () => undefined },
        async () => 'ran',
      );
      const outcome = await within(waiting, 10_000);
      expect(outcome).toBeInstanceOf(UnavailableError);
      expect((outcome as Error).message).toBe(
        "no connection of the classification lock's pool was free for 1000 ms; run it again",
      );
      // A run that is no longer ours stops waiting at its next check, with that reason.
      const stopped = new UnavailableError('the node is stopping');
      const stopping = withClassificationLock(
        locks.db,
        { waitMsMax: 60_000, stillOurs: () => Promise.reject(stopped) },
        async () => 'ran',
      );
      expect(await within(stopping, 10_000)).toBe(stopped);
      // The connection the abandoned waits are given goes back: the pool still serves a run.
      release();
      await holding;
      const next = withClassificationLock(
        locks.db,
        { waitMsMax: 5_000, stillOurs: async () => undefined },
        async () => 'ran',
      );
      expect(await within(next, 10_000)).toBe('ran');
    } finally {
      release();
      await holding.catch(() => undefined);
      await locks.close();
    }
  });
});

describe("a node's capacity (runsMax)", () => {
  it('admits at most runsMax new runs at once, refuses the next writing nothing, and lets a call for an admitted file join it', async () => {
    const days = [-10, -11, -12].map((ago) => addUtcDays(utcDayOf(new Date()), ago));
    for (const day of days) await fileOf(day, 5);
    // The run rows' INSERTs wait for `held` at most this pool's 30 s, not the default 5 s.
    const pool = openDatabase(database.url, { poolSize: 8, lockWaitTimeoutS: 30 });
    let validated = 0;
    const node = service('node-full', {
      db: pool.db,
      runsMax: 2,
      onEvent: (event) => {
        if (event.type === 'validated') validated += 1;
      },
    });
    const held = await createConnection({
      ...serverAddress(parseMysqlUrl(database.url)),
      database: parseMysqlUrl(database.url).database,
    });
    try {
      // Every INSERT INTO recon_run waits behind these locks (the scan locks every gap), while
      // plain reads go on: each call passes its checks and stops where its run would be written.
      await held.query('START TRANSACTION');
      await held.query('SELECT id FROM recon_run FOR UPDATE');
      const answers: Array<{ day: string; runId?: string; error?: unknown }> = [];
      const calls = days.map((day) =>
        node.start({ settlementDate: day }).then(
          (runId) => answers.push({ day, runId }),
          (error: unknown) => answers.push({ day, error }),
        ),
      );
      // Each call for another day has been refused or is writing its run: all were admitted
      // or refused before any run was registered.
      await waitFor(
        async () => {
          const [rows] = await control.query(
            `SELECT COUNT(*) AS n FROM information_schema.processlist
             WHERE db = DATABASE() AND info LIKE 'insert into \`recon_run\`%'`,
          );
          const inserting = Number((rows as Array<{ n: number }>)[0]?.n);
          return inserting + answers.length >= days.length || undefined;
        },
        { what: 'every call to be refused or to write its run' },
      );
      // A call for an admitted file, meanwhile, joins its run rather than take a slot.
      const admittedDay = days.find((day) => !answers.some((answer) => answer.day === day));
      const joining = node
        .start({ settlementDate: admittedDay ?? '' })
        .catch((error: unknown) => error);
      await waitFor(async () => validated === days.length + 1 || undefined, {
        what: 'the joining call to read its file',
      });
      await held.query('ROLLBACK');
      await Promise.all(calls);

      const admitted = answers.filter((answer) => answer.runId !== undefined);
      expect(admitted).toHaveLength(2);
      const refused = answers.find((answer) => answer.error !== undefined);
      expect(refused?.error).toBeInstanceOf(ResourceExhaustedError);
      expect((refused?.error as Error).message).toBe(
        'this node is already running 2 reconciliations, the most it runs at once; ' +
          'retry when one has ended',
      );
      expect(await joining).toBe(admitted.find((answer) => answer.day === admittedDay)?.runId);
      const { rows } = await sql<{ n: string }>`
        SELECT COUNT(*) AS n FROM recon_run WHERE settlement_date = ${refused?.day}`.execute(
        database.db,
      );
      expect(Number(rows[0]?.n)).toBe(0);

      // Once the admitted runs have ended, the refused day is admitted: its slot was given back.
      for (const { runId } of admitted) {
        expect((await finished(node, runId ?? '')).state).toBe('SUCCEEDED');
      }
      const again = await node.start({ settlementDate: refused?.day ?? '' });
      expect((await finished(node, again)).state).toBe('SUCCEEDED');
    } finally {
      await held.end().catch(() => undefined);
      await node.stop();
      await pool.close();
    }
  });
});

/** The run once it has ended. */
async function finished(node: ReconciliationService, runId: string) {
  return waitFor(
    async () => {
      const run = await node.getReport(runId);
      return run.state === 'RUNNING' ? undefined : run;
    },
    { what: `run ${runId} to end`, timeoutMs: 15_000 },
  );
}

/** The connection holding the classification lock, or null. */
async function lockHolder(): Promise<number | null> {
  const [rows] = await control.query(`SELECT IS_USED_LOCK(${LOCK}) AS holder`);
  return (rows as Array<{ holder: number | null }>)[0]?.holder ?? null;
}

/** What `promise` settles with (its error when it rejects), or a note that it did not in `ms`. */
async function within(promise: Promise<unknown>, ms: number): Promise<unknown> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(`still waiting after ${ms} ms`), ms);
  });
  try {
    return await Promise.race([promise.catch((error: unknown) => error), late]);
  } finally {
    clearTimeout(timer);
  }
}
