/**
 * Every statement has a deadline (storage/statement-deadline.ts): a statement whose server stops
 * answering fails past it as a connection error (outcome unknown, so callers re-read), its
 * connection is closed and never handed out again, and the bulk deadline lets long statements
 * run. Method: real MariaDB, reached through a TCP proxy that can stop forwarding (a partition),
 * and SLEEP() for a statement that is merely slow.
 */
import net from 'node:net';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.js';
import {
  dropDatabase,
  ensureDatabase,
  migrateToLatest,
  openDatabase,
} from '../../src/storage/db.js';
import { isConnectionError } from '../../src/storage/errors.js';
import { commitInOneTrip, rowCountGuard } from '../../src/storage/one-trip.js';
import { inTransaction, toUnavailable } from '../../src/storage/transaction.js';
import { testDatabaseUrl } from '../support/harness.js';

const DEADLINE_MS = 400;

/** A TCP proxy to MariaDB; while `frozen`, bytes in both directions are dropped. */
class Proxy {
  frozen = false;
  readonly #sockets: net.Socket[] = [];
  readonly #server = net.createServer((client) => {
    const upstream = net.connect(3306, '127.0.0.1');
    this.#sockets.push(client, upstream);
    client.on('data', (chunk) => {
      if (!this.frozen) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!this.frozen) client.write(chunk);
    });
    client.on('error', () => undefined);
    upstream.on('error', () => undefined);
    client.on('close', () => upstream.destroy());
  });

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    return (this.#server.address() as net.AddressInfo).port;
  }

  close(): void {
    for (const socket of this.#sockets) socket.destroy();
    this.#server.close();
  }
}

const proxy = new Proxy();
let url: string;
let viaProxy: string;
const cleanups: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  url = testDatabaseUrl('settle_deadline');
  await ensureDatabase(url);
  const direct = openDatabase(url, { poolSize: 1 });
  await migrateToLatest(direct.db);
  await direct.close();
  cleanups.push(() => dropDatabase(url));
  const port = await proxy.listen();
  viaProxy = url.replace(/@[^/]+\//, `@127.0.0.1:${port}/`);
});

afterAll(async () => {
  proxy.close();
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

/** Settles within `ms` or answers 'still waiting'. */
function within<T>(promise: Promise<T>, ms: number): Promise<PromiseSettledResult<T> | 'waiting'> {
  return Promise.race([
    promise.then(
      (value) => ({ status: 'fulfilled' as const, value }),
      (reason: unknown) => ({ status: 'rejected' as const, reason }),
    ),
    new Promise<'waiting'>((resolve) => setTimeout(() => resolve('waiting'), ms)),
  ]);
}

describe('a partition', () => {
  it('fails a one-packet COMMIT past its deadline as a connection error, and drops the connection', async () => {
    proxy.frozen = false;
    const writers = openDatabase(viaProxy, {
      poolSize: 1,
      multipleStatements: true,
      statementTimeoutMs: DEADLINE_MS,
    });
    cleanups.push(() => writers.close());
    const before = await sql<{ id: string }>`SELECT CONNECTION_ID() AS id`.execute(writers.db);

    proxy.frozen = true;
    const started = performance.now();
    const outcome = await within(
      commitInOneTrip(writers.db, [
        sql`INSERT INTO inbox (source, event_id, order_id, received_at)
            VALUES ('test', 'evt-deadline', 'ord_x', NOW())`.compile(writers.db),
        rowCountGuard(1),
      ]),
      10_000,
    );
    const elapsedMs = performance.now() - started;
    expect(outcome).not.toBe('waiting');
    expect(outcome).toMatchObject({ status: 'rejected' });
    const reason = (outcome as PromiseRejectedResult).reason as Error;
    expect(reason.message).toMatch(/did not answer a statement within its deadline of 400 ms/);
    expect(isConnectionError(reason)).toBe(true);
    expect(toUnavailable(reason)).toBeInstanceOf(UnavailableError);
    // Never before the deadline, and at most two sweeps (100 ms each here) after it.
    expect(elapsedMs).toBeGreaterThanOrEqual(DEADLINE_MS);
    expect(elapsedMs).toBeLessThan(DEADLINE_MS + 1_000);

    // The pool's only connection was the stuck one: the next statement gets a new connection.
    proxy.frozen = false;
    const after = await sql<{ id: string }>`SELECT CONNECTION_ID() AS id`.execute(writers.db);
    expect(after.rows[0]?.id).not.toBe(before.rows[0]?.id);
  });

  it('fails a Kysely transaction past its deadline as UNAVAILABLE', async () => {
    proxy.frozen = false;
    const main = openDatabase(viaProxy, { poolSize: 2, statementTimeoutMs: DEADLINE_MS });
    cleanups.push(() => main.close());
    await sql`SELECT 1`.execute(main.db);

    proxy.frozen = true;
    const outcome = await within(
      inTransaction(main.db, (trx) => sql`SELECT COUNT(*) FROM inbox`.execute(trx)),
      10_000,
    );
    expect(outcome).not.toBe('waiting');
    expect((outcome as PromiseRejectedResult).reason).toBeInstanceOf(UnavailableError);
    proxy.frozen = false;
  });
});

describe('slow statements', () => {
  it('are cut at the default deadline and run to the end under the bulk one', async () => {
    const opened = openDatabase(url, {
      poolSize: 1,
      statementTimeoutMs: DEADLINE_MS,
      bulkStatementTimeoutMs: 5_000,
    });
    cleanups.push(() => opened.close());
    const slow = sql<{ slept: number }>`SELECT SLEEP(0.8) AS slept`;

    await expect(slow.execute(opened.db)).rejects.toSatisfy(isConnectionError);
    const bulk = await slow.execute(opened.bulkDb);
    expect(Number(bulk.rows[0]?.slept)).toBe(0);
    // The same connections, and the default deadline again on the next one taken from the pool.
    await expect(slow.execute(opened.db)).rejects.toSatisfy(isConnectionError);
    await expect(sql`SELECT 1 AS one`.execute(opened.db)).resolves.toBeDefined();
  });
});
