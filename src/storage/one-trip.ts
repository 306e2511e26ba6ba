/**
 * Transactions in few round trips instead of one per statement. On this kind of machine each
 * round trip costs ~0.2 ms of CPU in each of Node and MariaDB whatever it carries (socket writes
 * and wake-ups), so a group-commit transaction of eight statements pays mostly for its trips.
 *
 * `commitInOneTrip`: `START TRANSACTION`, the statements and `COMMIT` in one packet. The checks
 * that must hold before the commit run inside the packet as guards (`guard`, `rowCountGuard`):
 * a guard whose condition holds fails its statement, the server runs nothing after a failed
 * statement of a packet, so the COMMIT never runs, and the transaction is rolled back.
 *
 * `transactionInOneTrip`: two round trips, for a caller that must see the results (or do other
 * work, as the relay publishes) before it decides: `START TRANSACTION` and every statement go as
 * one packet, the caller inspects all their results, and only then does a second packet say
 * COMMIT, or ROLLBACK.
 *
 * The checks stay before the commit: `decide` sees every statement's result (affected rows, the
 * rows of a SELECT), and unless it answers commit the transaction rolls back. A statement that fails stops the packet
 * there (the server runs none after it) and the transaction is rolled back. The statements are
 * compiled by Kysely with bound parameters; none is built from a string that came from outside.
 */
import { CompiledQuery, type Kysely } from 'kysely';
import { isCheckViolation } from './errors.js';

/**
 * A Kysely database on a mysql2 pool opened with `multipleStatements` (storage/db.ts): Settle's
 * pool of one-packet writers (its main pool refuses such packets), and the PSP mock's, which has
 * a guard table of its own.
 */
// The schema does not matter here: only raw compiled statements are run.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyDb = Kysely<any>;

/** One statement's result: a row list for a SELECT, a header with `affectedRows` otherwise. */
export type StatementResult = ReadonlyArray<Record<string, unknown>> | { affectedRows: number };

export type OneTripOutcome<T> =
  Readonly<{ committed: true; value: T }> | Readonly<{ committed: false; reason: string }>;

/**
 * What `decide` answers: commit (after running `then`, statements decided from the results, in the
 * same packet as the COMMIT), or roll back.
 */
export type Decision<T> =
  Readonly<{ commit: T; then?: readonly CompiledQuery[] }> | Readonly<{ rollback: string }>;

/**
 * Runs `statements` in one transaction; `decide` gets their results in order and returns the value
 * to commit with, or a reason to roll back. It may do other work before it answers (the relay
 * publishes what it selected); the transaction stays open meanwhile. Throws what MySQL threw, or
 * what `decide` threw, after rolling back.
 */
export async function transactionInOneTrip<T>(
  db: AnyDb,
  statements: readonly CompiledQuery[],
  decide: (results: readonly StatementResult[]) => Decision<T> | Promise<Decision<T>>,
): Promise<OneTripOutcome<T>> {
  const packet = CompiledQuery.raw(
    ['START TRANSACTION', ...statements.map((statement) => statement.sql)].join(';\n'),
    statements.flatMap((statement) => [...statement.parameters]),
  );
  return db.connection().execute(async (connection) => {
    let decision: Decision<T>;
    try {
      const { rows } = await connection.executeQuery(packet);
      const results = rows as unknown as StatementResult[];
      // results[0] is START TRANSACTION's header.
      if (results.length !== statements.length + 1) {
        throw new Error(
          `a packet of ${statements.length + 1} statements answered ${results.length} results ` +
            '(is multipleStatements off?)',
        );
      }
      decision = await decide(results.slice(1));
    } catch (error) {
      await connection.executeQuery(CompiledQuery.raw('ROLLBACK')).catch(() => undefined);
      throw error;
    }
    if ('rollback' in decision) {
      await connection.executeQuery(CompiledQuery.raw('ROLLBACK'));
      return { committed: false, reason: decision.rollback };
    }
    const then = decision.then ?? [];
    try {
      await connection.executeQuery(
        CompiledQuery.raw(
          [...then.map((statement) => statement.sql), 'COMMIT'].join(';\n'),
          then.flatMap((statement) => [...statement.parameters]),
        ),
      );
    } catch (error) {
      await connection.executeQuery(CompiledQuery.raw('ROLLBACK')).catch(() => undefined);
      throw error;
    }
    return { committed: true, value: decision.commit };
  });
}

/**
 * What a guard checks. Each is a CHECK constraint of the table `one_trip_guard` (migration 0006)
 * that no row can pass, so a guard fails by inserting its row, whatever the table holds. Its
 * name comes back in the error, which tells which guard it was.
 */
export const GUARD = {
  /** The statement before the guard changed another number of rows than expected. */
  rowCount: { id: 1, constraint: 'one_trip_row_count_differs' },
  /** Ledger transactions just written do not balance as stored (or are not all there). */
  ledgerUnbalanced: { id: 2, constraint: 'one_trip_ledger_unbalanced' },
} as const;

export type GuardKind = keyof typeof GUARD;

/**
 * Settle's guard table. The PSP mock has its own, `psp_one_trip_guard` (its migration 0003), with
 * the row-count check only, under a constraint name that contains Settle's.
 */
export const GUARD_TABLE = 'one_trip_guard';

/**
 * A statement that fails when `condition` (SQL, with its parameters) holds, and does nothing
 * otherwise: an INSERT of no row, which takes no row lock. The condition must not read tables:
 * the SELECT of an INSERT ... SELECT takes shared next-key locks on what it reads (so does
 * SET @v = (SELECT ...)). Read into a user variable with `SELECT ... INTO @v` first, a
 * consistent read, and test the variable here.
 */
export function guard(
  kind: GuardKind,
  condition: Readonly<{ sql: string; parameters: readonly unknown[] }>,
  table = GUARD_TABLE,
): CompiledQuery {
  return CompiledQuery.raw(
    `INSERT INTO ${table} (id) SELECT ${GUARD[kind].id} FROM DUAL WHERE ${condition.sql}`,
    [...condition.parameters],
  );
}

/**
 * A guard that fails unless the statement right before it changed exactly `expected` rows
 * (ROW_COUNT() is the previous statement's count; mysql2 connects with FOUND_ROWS, so for an
 * UPDATE it counts matched rows, which is what a version-checked UPDATE changes anyway).
 */
export function rowCountGuard(expected: number, table = GUARD_TABLE): CompiledQuery {
  return guard('rowCount', { sql: 'ROW_COUNT() <> ?', parameters: [expected] }, table);
}

/** The guard a failed statement was, if it was one. */
export function trippedGuard(error: unknown): GuardKind | undefined {
  if (!isCheckViolation(error)) return undefined;
  const message = error instanceof Error ? error.message : '';
  return (Object.keys(GUARD) as GuardKind[]).find((kind) =>
    message.includes(GUARD[kind].constraint),
  );
}

/**
 * Proves on this server, at start-up, that a tripped guard fails its statement: that CHECK
 * constraints are enforced (MariaDB can be told not to, `check_constraint_checks=OFF`). Throws
 * otherwise, so that a node never commits through checks that cannot fail.
 */
export async function assertGuardsTrip(db: AnyDb, table = GUARD_TABLE): Promise<void> {
  const outcome = await commitInOneTrip(db, [
    guard('rowCount', { sql: '1 = 1', parameters: [] }, table),
  ]);
  if (outcome.committed) {
    await db.executeQuery(CompiledQuery.raw(`DELETE FROM ${table}`));
    throw new Error(
      'this MySQL server does not enforce CHECK constraints (MariaDB: check_constraint_checks ' +
        'is OFF), so one-packet transactions could commit past a failed check; turn ' +
        'it on (SET GLOBAL check_constraint_checks = ON) and start again',
    );
  }
}

export type OneTripCommit =
  | Readonly<{ committed: true; results: readonly StatementResult[] }>
  | Readonly<{ committed: false; tripped: GuardKind }>;

/**
 * Runs `statements` (guards among them) in one transaction of one round trip. Committed unless a
 * guard tripped (then rolled back, and which one is answered); throws what MySQL threw for any
 * other failing statement, after rolling back. A connection lost during the packet leaves the
 * outcome unknown, as a lost COMMIT always does: callers re-read (version checks decide).
 */
export async function commitInOneTrip(
  db: AnyDb,
  statements: readonly CompiledQuery[],
): Promise<OneTripCommit> {
  const packet = CompiledQuery.raw(
    ['START TRANSACTION', ...statements.map((statement) => statement.sql), 'COMMIT'].join(';\n'),
    statements.flatMap((statement) => [...statement.parameters]),
  );
  return db.connection().execute(async (connection) => {
    try {
      const { rows } = await connection.executeQuery(packet);
      // rows[0] is START TRANSACTION's header, the last one COMMIT's.
      return { committed: true, results: (rows as unknown as StatementResult[]).slice(1, -1) };
    } catch (error) {
      // The packet stopped at the failed statement: the transaction is open. Close it before the
      // connection goes back to the pool.
      await connection.executeQuery(CompiledQuery.raw('ROLLBACK')).catch(() => undefined);
      const tripped = trippedGuard(error);
      if (tripped !== undefined) return { committed: false, tripped };
      throw error;
    }
  });
}

export function affectedRows(result: StatementResult | undefined): number {
  return result !== undefined && !Array.isArray(result) && 'affectedRows' in result
    ? result.affectedRows
    : -1;
}

export function resultRows<R>(result: StatementResult | undefined): readonly R[] {
  return Array.isArray(result) ? (result as readonly R[]) : [];
}
