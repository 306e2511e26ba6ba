/**
 * A transaction in two round trips instead of one per statement: `START TRANSACTION` and every
 * statement go to MySQL as one multi-statement packet, the caller inspects all their results, and
 * only then does a second packet say COMMIT, or ROLLBACK. On this kind of machine each statement
 * costs ~0.2 ms of CPU in each of Node and MariaDB whatever it does (socket writes and wake-ups),
 * so a group-commit transaction of eight statements pays mostly for its round trips.
 *
 * The checks stay before the commit: `decide` sees every statement's result (affected rows, the
 * rows of a SELECT), and unless it answers commit the transaction rolls back. A statement that fails stops the packet
 * there (the server runs none after it) and the transaction is rolled back. The statements are
 * compiled by Kysely with bound parameters; none is built from a string that came from outside.
 */
import { CompiledQuery } from 'kysely';
import type { Db } from './db.js';

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
  db: Db,
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

export function affectedRows(result: StatementResult | undefined): number {
  return result !== undefined && !Array.isArray(result) && 'affectedRows' in result
    ? result.affectedRows
    : -1;
}

export function resultRows<R>(result: StatementResult | undefined): readonly R[] {
  return Array.isArray(result) ? (result as readonly R[]) : [];
}
