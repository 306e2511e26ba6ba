/**
 * A deadline on every statement of a mysql2 pool. Without one, a statement sent on a connection
 * whose server side stopped answering (a partition, a frozen server, a half-open socket after a
 * failover) waits for TCP to give up, about 15 minutes on Linux with data in flight, holding its
 * actor's turn, its group-commit slot and its connection all that time.
 *
 * One interval per pool, not one timer per statement: each connection notes when its current
 * statement started (a number read from a clock the sweep advances, no clock call per statement)
 * and the sweep, every `sweepMs`, destroys the socket of any connection whose statement has run
 * past its deadline. Destroying the socket with an error is mysql2's own path for a broken
 * connection: the statement's callback and any queued after it fail with that error, and the
 * connection leaves the pool, so a connection that may still owe a result is never reused.
 *
 * mysql2's per-query `timeout` option was not used: it starts a timer per statement, and on expiry
 * it answers the callback but leaves the connection as it was, still waiting for that result; a
 * statement queued behind it would then never start, nor start its own timer.
 *
 * A statement past its deadline fails with code PROTOCOL_SEQUENCE_TIMEOUT (mysql2's code for a
 * query timeout), which `isConnectionError` counts as the database being unreachable: its outcome
 * is unknown (a COMMIT may have run), and callers re-read, as after any lost connection.
 */
import type { Pool, PoolConnection } from 'mysql2';

/** What kysely's MySQL dialect needs of a pool (kysely's `MysqlPool`). */
export type DeadlinePool = Readonly<{
  getConnection: (callback: (error: unknown, connection: PoolConnection) => void) => void;
  end: (callback: (error: unknown) => void) => void;
}>;

/** A connection's current statement, as the sweep sees it. */
type Watch = {
  /** Statements sent and not answered (more than one only when callers queue them). */
  pending: number;
  /** The coarse clock when the oldest pending statement started (or the one before it ended). */
  startedMs: number;
  /** The deadline of this connection's statements, set by whoever acquired it. */
  deadlineMs: number;
};

const WATCH = Symbol('settle.statementWatch');

type WatchedConnection = PoolConnection & { [WATCH]?: Watch };

type QueryCallback = (error: unknown, rows?: unknown, fields?: unknown) => void;

export class StatementDeadlines {
  readonly #connections = new Set<WatchedConnection>();
  readonly #sweepMs: number;
  readonly #timer: NodeJS.Timeout;
  /** performance.now() at the last sweep: a clock statements read without calling it. */
  readonly #clock = { nowMs: performance.now() };

  /**
   * Watches every connection `pool` opens from now on. `deadlineMs` is the deadline of statements
   * on connections taken straight from `pool`; `through()` gives other deadlines.
   */
  constructor(
    private readonly pool: Pool,
    private readonly deadlineMs: number,
  ) {
    assertDeadline(deadlineMs);
    // The sweep's step bounds how late a deadline is noticed: at most two steps.
    this.#sweepMs = Math.max(10, Math.min(1_000, Math.floor(deadlineMs / 4)));
    this.#timer = setInterval(() => this.#sweep(), this.#sweepMs);
    this.#timer.unref();
    pool.on('connection', (connection) => this.#watch(connection));
  }

  /**
   * A pool for kysely whose connections' statements have `deadlineMs` (another deadline on the
   * same connections). Ending it ends nothing: the pool is ended once, by its owner.
   */
  through(deadlineMs: number): DeadlinePool {
    assertDeadline(deadlineMs);
    return {
      getConnection: (callback) => {
        this.pool.getConnection((error, connection: WatchedConnection) => {
          const watch = connection?.[WATCH];
          if (watch !== undefined) watch.deadlineMs = deadlineMs;
          callback(error, connection);
        });
      },
      end: (callback) => callback(null),
    };
  }

  /** The pool itself for kysely, statements getting the default deadline. */
  direct(): DeadlinePool {
    return this.through(this.deadlineMs);
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#connections.clear();
  }

  #watch(connection: WatchedConnection): void {
    const watch: Watch = { pending: 0, startedMs: 0, deadlineMs: this.deadlineMs };
    connection[WATCH] = watch;
    this.#connections.add(connection);
    // eslint-disable-next-line @typescript-eslint/unbound-method -- called below with its `this`
    const query = connection.query as (sql: unknown, values: unknown, callback: unknown) => unknown;
    const clock = this.#clock;
    const tracked = (callback: QueryCallback): QueryCallback => {
      if (watch.pending === 0) watch.startedMs = clock.nowMs;
      watch.pending += 1;
      return (error, rows, fields) => {
        watch.pending -= 1;
        // The statement queued next starts now (the sweep's clock is at most a step behind).
        if (watch.pending > 0) watch.startedMs = clock.nowMs;
        callback(error, rows, fields);
      };
    };
    // Kysely calls query(sql, parameters, callback); the pool's set-up calls query(sql,
    // callback). A call without a callback (a stream) is not watched.
    function watched(this: PoolConnection, sql: unknown, values: unknown, callback: unknown) {
      if (typeof callback === 'function') {
        return query.call(this, sql, values, tracked(callback as QueryCallback));
      }
      if (typeof values === 'function') {
        return query.call(this, sql, tracked(values as QueryCallback), undefined);
      }
      return query.call(this, sql, values, callback);
    }
    connection.query = watched as PoolConnection['query'];
  }

  #sweep(): void {
    const nowMs = (this.#clock.nowMs = performance.now());
    for (const connection of this.#connections) {
      const stream = (
        connection as { stream?: { destroyed?: boolean; destroy: (e: Error) => void } }
      ).stream;
      if (stream === undefined || stream.destroyed === true) {
        this.#connections.delete(connection);
        continue;
      }
      const watch = connection[WATCH];
      if (watch === undefined || watch.pending === 0) continue;
      // startedMs may lag the true start by one step: a statement is cut only once it has
      // surely run for its whole deadline.
      const runMs = nowMs - watch.startedMs - this.#sweepMs;
      if (runMs < watch.deadlineMs) continue;
      this.#connections.delete(connection);
      stream.destroy(statementTimeoutError(watch.deadlineMs));
    }
  }
}

function assertDeadline(deadlineMs: number): void {
  if (!Number.isInteger(deadlineMs) || deadlineMs < 1) {
    throw new Error(`a statement deadline must be a whole number of ms ≥ 1, got ${deadlineMs}`);
  }
}

function statementTimeoutError(deadlineMs: number): Error {
  return Object.assign(
    new Error(
      `MySQL did not answer a statement within its deadline of ${deadlineMs} ms; its ` +
        'connection was closed, so whether the statement took effect is unknown',
    ),
    { code: 'PROTOCOL_SEQUENCE_TIMEOUT', fatal: true },
  );
}
