/**
 * Connection pool, Kysely instance, database creation and migrations. mysql2 is told to return
 * BIGINT as exact decimal strings and to use UTC, so money and time never lose precision.
 */
import { createPool, type Pool } from 'mysql2';
import { createConnection, type Connection, type RowDataPacket } from 'mysql2/promise';
import {
  Kysely,
  Migrator,
  MysqlAdapter,
  MysqlDialect,
  type DialectAdapter,
  type LogEvent,
} from 'kysely';
import { FailedPreconditionError, UnavailableError } from '../domain/errors.js';
import { isConnectionError } from './errors.js';
import { migrationProvider, type StepHooks } from './migrations/index.js';
import type { Database } from './schema.js';
import { StatementDeadlines } from './statement-deadline.js';

/** MariaDB supports INSERT ... RETURNING; Kysely's MySQL adapter would drop the rows silently. */
class MariaDbAdapter extends MysqlAdapter {
  override get supportsReturning(): boolean {
    return true;
  }
}

class SettleMysqlDialect extends MysqlDialect {
  override createAdapter(): DialectAdapter {
    return new MariaDbAdapter();
  }
}

export type DatabaseUrl = Readonly<{
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** A Unix socket to connect through instead of host:port (`?socket=/run/mysqld/mysqld.sock`). */
  socketPath?: string;
}>;

export function parseMysqlUrl(url: string): DatabaseUrl {
  const parsed = new URL(url);
  const socketPath = parsed.searchParams.get('socket') ?? '';
  return {
    host: parsed.hostname,
    port: parsed.port ? Number(parsed.port) : 3306,
    user: decodeURIComponent(parsed.username || 'root'),
    password: decodeURIComponent(parsed.password),
    database: parsed.pathname.replace(/^\//, ''),
    ...(socketPath !== '' && { socketPath }),
  };
}

/**
 * The mysql2 options that reach the server of `target`: its Unix socket when the URL names one
 * (a server on the same machine: no TCP stack on either side, about a quarter less CPU per
 * statement here), else host and port.
 */
export function serverAddress(target: DatabaseUrl) {
  return {
    ...(target.socketPath === undefined
      ? { host: target.host, port: target.port }
      : { socketPath: target.socketPath }),
    user: target.user,
    password: target.password,
  };
}

/** Where `target` is, for messages. */
export function describeAddress(target: DatabaseUrl): string {
  return target.socketPath ?? `${target.host}:${target.port}`;
}

export type Db = Kysely<Database>;

/** How long a statement waits for a row lock before MySQL answers 1205, in seconds. */
export const LOCK_WAIT_TIMEOUT_S_DEFAULT = 5;

/**
 * The deadline of a statement, in ms (MYSQL_STATEMENT_TIMEOUT_MS). Generous on purpose: it is
 * there for a server that stopped answering, not to cut slow statements. It is above
 * innodb_lock_wait_timeout (5 s; a lock wait answers 1205 first, a definite failure), above the
 * trial balance's scan of the whole ledger (about 1.2 s per 533,000 entries here), and above the
 * housekeeping purges' DELETEs of 5,000 rows and the classification lock's GET_LOCK steps (2 s).
 */
export const STATEMENT_TIMEOUT_MS_DEFAULT = 30_000;

/**
 * The deadline of bulk statements, in ms (MYSQL_BULK_STATEMENT_TIMEOUT_MS): migrations (an ALTER
 * of a large table) and reconciliation, whose statements over a whole settlement file (duplicates,
 * the report's sums, up to 5,000,000 rows) took 24 s together per 1,000,000 rows here.
 */
export const BULK_STATEMENT_TIMEOUT_MS_DEFAULT = 600_000;

export type OpenedDatabase = Readonly<{
  db: Db;
  /** The same pool, with the bulk deadline on every statement (migrations, reconciliation). */
  bulkDb: Db;
  pool: Pool;
  close: () => Promise<void>;
}>;

/** MySQL's answers to a login it refuses. */
const LOGIN_REFUSED: ReadonlySet<string> = new Set([
  'ER_ACCESS_DENIED_ERROR',
  'ER_ACCESS_DENIED_NO_PASSWORD_ERROR',
  'ER_DBACCESS_DENIED_ERROR',
  'ER_HOST_NOT_PRIVILEGED',
  'ER_NOT_SUPPORTED_AUTH_MODE',
]);

/**
 * Creates the database if it is missing. Fails with UnavailableError naming the address when the
 * server cannot be reached.
 */
export async function ensureDatabase(url: string, connectTimeoutMs = 5_000): Promise<void> {
  const target = parseMysqlUrl(url);
  let connection;
  try {
    connection = await createConnection({
      ...serverAddress(target),
      connectTimeout: connectTimeoutMs,
    });
  } catch (error) {
    // The server answered, and refused the login: credentials to fix, not a server to start.
    if (LOGIN_REFUSED.has(String((error as { code?: unknown } | null)?.code))) {
      throw new FailedPreconditionError(
        `MySQL at ${describeAddress(target)} refused the login (${describe(error)}); check the ` +
          'user, password and their grants in MYSQL_URL',
        { cause: error },
      );
    }
    throw new UnavailableError(
      `MySQL is unreachable at ${describeAddress(target)} (${describe(error)}); start it ` +
        `(start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd) or set MYSQL_URL`,
      { cause: error },
    );
  }
  try {
    await connection.query({
      sql: `CREATE DATABASE IF NOT EXISTS \`${target.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
      timeout: STATEMENT_TIMEOUT_MS_DEFAULT,
    });
    await ensureBinaryCollation(connection, target.database);
  } catch (error) {
    // mysql2's `timeout` answers the query but leaves the connection waiting for its result: an
    // end() would queue behind it forever.
    connection.destroy();
    if (isConnectionError(error)) {
      throw new UnavailableError(
        `MySQL at ${describeAddress(target)} stopped answering (${describe(error)})`,
        { cause: error },
      );
    }
    throw error;
  }
  await connection.end();
}

/**
 * Ids are compared byte for byte: under a case-insensitive collation (a server's default, for a
 * database created by hand before Settle's first start) sellers 'Abc' and 'abc' would share one
 * wallet row, and their money one balance. Every text column must compare in binary (a collation
 * ending in `_bin`), whatever the database's default says: one whose tables compare otherwise is
 * refused, naming a column, before anything is written. A database whose default is not binary
 * is then given a binary one, for the tables the migrations create.
 */
async function ensureBinaryCollation(connection: Connection, database: string): Promise<void> {
  const timeout = STATEMENT_TIMEOUT_MS_DEFAULT;
  const [columns] = await connection.query<RowDataPacket[]>({
    timeout,
    sql: `SELECT TABLE_NAME AS tableName, COLUMN_NAME AS columnName, COLLATION_NAME AS collation
       FROM information_schema.COLUMNS
      WHERE TABLE_SCHEMA = ? AND COLLATION_NAME IS NOT NULL AND COLLATION_NAME NOT LIKE '%\\_bin'
      ORDER BY TABLE_NAME, ORDINAL_POSITION LIMIT 1`,
    values: [database],
  });
  const column = columns[0];
  if (column !== undefined) {
    throw new FailedPreconditionError(
      `database '${database}' compares text case-insensitively (column ` +
        `${String(column['tableName'])}.${String(column['columnName'])} has collation ` +
        `${String(column['collation'])}), so ids differing only in case would share rows; ` +
        `it needs utf8mb4_bin: use a new database, or convert every table ` +
        `(ALTER TABLE … CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin)`,
    );
  }
  const [schemata] = await connection.query<RowDataPacket[]>({
    timeout,
    sql: 'SELECT DEFAULT_COLLATION_NAME AS collation FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?',
    values: [database],
  });
  if (String(schemata[0]?.['collation'] ?? '').endsWith('_bin')) return;
  await connection.query({
    timeout,
    sql: `ALTER DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`,
  });
}

/** The same server URL with another database name (tests, the bench and the chaos demo). */
export function withDatabaseName(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

/** Drops a database if it exists (cleanup of tests, the bench and the chaos demo). */
export async function dropDatabase(url: string, connectTimeoutMs = 5_000): Promise<void> {
  const target = parseMysqlUrl(url);
  const connection = await createConnection({
    ...serverAddress(target),
    connectTimeout: connectTimeoutMs,
  });
  try {
    await connection.query(`DROP DATABASE IF EXISTS \`${target.database}\``);
  } finally {
    await connection.end();
  }
}

export function openDatabase<DB = Database>(
  url: string,
  options: {
    poolSize: number;
    /** Called after every statement with its SQL text and duration (timers; off when unset). */
    onQuery?: (sql: string, ms: number) => void;
    /**
     * Lets one packet carry several statements, which one-packet transactions need
     * (storage/one-trip.ts). Off by default: on a pool without it, a statement that somehow
     * carried a `;` and a second statement is refused by the server instead of run.
     */
    multipleStatements?: boolean;
    /**
     * innodb_lock_wait_timeout of every connection, in seconds (default
     * LOCK_WAIT_TIMEOUT_S_DEFAULT). The server's own default, 50 s, held a transition's batch,
     * its row locks and its group-commit slot for minutes behind one row locked elsewhere.
     */
    lockWaitTimeoutS?: number;
    /**
     * The deadline of every statement of `db`, in ms (default STATEMENT_TIMEOUT_MS_DEFAULT). One
     * past it fails with a connection error (outcome unknown) and its connection is closed.
     */
    statementTimeoutMs?: number;
    /** The deadline of every statement of `bulkDb`, in ms (BULK_STATEMENT_TIMEOUT_MS_DEFAULT). */
    bulkStatementTimeoutMs?: number;
  },
): { db: Kysely<DB>; bulkDb: Kysely<DB>; pool: Pool; close: () => Promise<void> } {
  const target = parseMysqlUrl(url);
  const pool = createPool({
    ...serverAddress(target),
    database: target.database,
    connectionLimit: options.poolSize,
    // A request that cannot get a connection fails instead of waiting forever.
    queueLimit: options.poolSize * 64,
    connectTimeout: 5_000,
    supportBigNumbers: true,
    bigNumberStrings: true,
    dateStrings: false,
    timezone: 'Z',
    charset: 'utf8mb4',
    enableKeepAlive: true,
    multipleStatements: options.multipleStatements ?? false,
  });
  const lockWaitTimeoutS = options.lockWaitTimeoutS ?? LOCK_WAIT_TIMEOUT_S_DEFAULT;
  if (!Number.isInteger(lockWaitTimeoutS) || lockWaitTimeoutS < 1) {
    throw new Error(
      `lockWaitTimeoutS must be a whole number of seconds ≥ 1, got ${lockWaitTimeoutS}`,
    );
  }
  // Watches the pool's connections before anything else sends a statement on them.
  const deadlines = new StatementDeadlines(
    pool,
    options.statementTimeoutMs ?? STATEMENT_TIMEOUT_MS_DEFAULT,
  );
  // Runs before any other statement on the new connection: mysql2 queues them in order.
  pool.on('connection', (connection) => {
    // With a callback: an error of a query without one is thrown out of mysql2's packet parser.
    // A connection whose setting failed is not used with the server's 50 s wait: it is dropped.
    connection.query(`SET SESSION innodb_lock_wait_timeout = ${lockWaitTimeoutS}`, (error) => {
      if (error) connection.destroy();
    });
  });
  const onQuery = options.onQuery;
  const log =
    onQuery === undefined
      ? {}
      : {
          log: (event: LogEvent) => {
            if (event.level === 'query') onQuery(event.query.sql, event.queryDurationMillis);
          },
        };
  const db = new Kysely<DB>({
    dialect: new SettleMysqlDialect({ pool: deadlines.direct() }),
    ...log,
  });
  const bulkDb = new Kysely<DB>({
    dialect: new SettleMysqlDialect({
      pool: deadlines.through(options.bulkStatementTimeoutMs ?? BULK_STATEMENT_TIMEOUT_MS_DEFAULT),
    }),
    ...log,
  });
  const close = async () => {
    deadlines.stop();
    await bulkDb.destroy();
    await db.destroy();
    await new Promise<void>((resolve, reject) =>
      pool.end((error) => (error ? reject(error) : resolve())),
    );
  };
  return { db, bulkDb, pool, close };
}

/**
 * Applies every pending migration; throws with the failing migration's name. A migration that
 * stopped midway (a node killed, a connection lost) resumes at its first unrecorded step
 * (migrations/steps.ts). Kysely's Migrator holds a GET_LOCK on its connection while it runs, so
 * of several nodes starting at once one migrates and the others wait, then find nothing pending.
 */
// Kysely types migration databases as Kysely<any>: migrations see the schema as it was then.
export async function migrateToLatest(
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  db: Kysely<any>,
  options: Readonly<{ hooks?: StepHooks }> = {},
): Promise<void> {
  // Unordered: migrations from parallel branches may land in any order on a long-lived database.
  const migrator = new Migrator({
    db,
    provider: migrationProvider(options.hooks),
    allowUnorderedMigrations: true,
  });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((result) => result.status === 'Error');
  if (error !== undefined) {
    throw new Error(
      `migration ${failed?.migrationName ?? '(unknown)'} failed: ${describe(error)}`,
      {
        cause: error,
      },
    );
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return typeof code === 'string' ? `${code}: ${error.message}` : error.message;
  }
  return String(error);
}
