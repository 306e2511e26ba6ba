/**
 * Goal: a one-trip transaction (all statements in one packet, then COMMIT or ROLLBACK) commits
 * only what `decide` accepts, leaves nothing behind when it refuses or when a statement fails
 * midway, and hands `decide` every statement's result; MYSQL_URL's `?socket=` reaches the server
 * through its Unix socket. Method: real MariaDB, rows counted after each case.
 */
import { existsSync } from 'node:fs';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, parseMysqlUrl, serverAddress, type Db } from '../../src/storage/db.js';
import { affectedRows, resultRows, transactionInOneTrip } from '../../src/storage/one-trip.js';
import { isDuplicateKey } from '../../src/storage/errors.js';
import { idempotencyKeysCompletion } from '../../src/storage/repositories/payment.repository.js';
import { openTestDatabase } from '../support/harness.js';

let url: string;
let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, url, close } = await openTestDatabase('settle_onetrip_t', { poolSize: 2 }));
});
afterAll(async () => {
  await close?.();
});

const inboxRow = (eventId: string) =>
  db
    .insertInto('inbox')
    .values({ source: 'test', event_id: eventId, order_id: 'ord_x', received_at: new Date() })
    .compile();
const countInbox = async (prefix: string) =>
  Number(
    (
      await sql<{
        n: string;
      }>`SELECT COUNT(*) AS n FROM inbox WHERE event_id LIKE ${`${prefix}%`}`.execute(db)
    ).rows[0]?.n,
  );

describe('transactionInOneTrip', () => {
  it('commits every statement when decide accepts, and gives it each result', async () => {
    const seen: unknown[] = [];
    const outcome = await transactionInOneTrip(
      db,
      [
        inboxRow('a-1'),
        inboxRow('a-2'),
        sql`SELECT event_id FROM inbox WHERE event_id LIKE 'a-%' ORDER BY event_id`.compile(db),
      ],
      (results) => {
        seen.push(affectedRows(results[0]), affectedRows(results[1]));
        seen.push(resultRows<{ event_id: string }>(results[2]).map((row) => row.event_id));
        return { commit: 'ok' };
      },
    );
    expect(outcome).toEqual({ committed: true, value: 'ok' });
    expect(seen).toEqual([1, 1, ['a-1', 'a-2']]);
    expect(await countInbox('a-')).toBe(2);
  });

  it('rolls everything back when decide refuses', async () => {
    const outcome = await transactionInOneTrip(db, [inboxRow('b-1'), inboxRow('b-2')], () => ({
      rollback: 'not today',
    }));
    expect(outcome).toEqual({ committed: false, reason: 'not today' });
    expect(await countInbox('b-')).toBe(0);
  });

  it('rolls back the statements before one that fails, and runs none after it', async () => {
    await transactionInOneTrip(db, [inboxRow('c-0')], () => ({ commit: true }));
    // A session variable outlives the rollback: on the same connection, it shows whether the
    // statement after the failing one ran at all.
    const { error, ran } = await db.connection().execute(async (connection) => {
      await sql`SET @ran_after_failure = 0`.execute(connection);
      const failed = await transactionInOneTrip(
        connection,
        [
          inboxRow('c-1'),
          inboxRow('c-0'),
          sql`SET @ran_after_failure = 1`.compile(connection),
          inboxRow('c-2'),
        ],
        () => ({ commit: true }),
      ).catch((caught: unknown) => caught);
      const variable = await sql<{ ran: number }>`SELECT @ran_after_failure AS ran`.execute(
        connection,
      );
      return { error: failed, ran: Number(variable.rows[0]?.ran) };
    });
    expect(isDuplicateKey(error)).toBe(true);
    expect(ran).toBe(0);
    expect(await countInbox('c-')).toBe(1);
    // The connection went back to the pool clean: the next transaction works.
    await transactionInOneTrip(db, [inboxRow('c-3')], () => ({ commit: true }));
    expect(await countInbox('c-')).toBe(2);
  });
});

describe('transactionInOneTrip with statements decided from the results', () => {
  it('runs them with the COMMIT, after decide did its own (async) work', async () => {
    const outcome = await transactionInOneTrip(
      db,
      [sql`SELECT COUNT(*) AS n FROM inbox WHERE event_id LIKE 'd-%'`.compile(db)],
      async (results) => {
        const n = Number(resultRows<{ n: string }>(results[0])[0]?.n);
        await new Promise((resolve) => setTimeout(resolve, 10));
        return { commit: n, then: [inboxRow(`d-${n}`), inboxRow(`d-${n + 1}`)] };
      },
    );
    expect(outcome).toEqual({ committed: true, value: 0 });
    expect(await countInbox('d-')).toBe(2);
  });

  it('rolls everything back when one of them fails', async () => {
    await transactionInOneTrip(db, [inboxRow('e-0')], () => ({ commit: true }));
    const error = await transactionInOneTrip(db, [inboxRow('e-1')], () => ({
      commit: true,
      then: [inboxRow('e-2'), inboxRow('e-0')],
    })).catch((caught: unknown) => caught);
    expect(isDuplicateKey(error)).toBe(true);
    expect(await countInbox('e-')).toBe(1);
  });

  it('rolls back when decide throws', async () => {
    const error = await transactionInOneTrip(db, [inboxRow('f-1')], () => {
      throw new Error('publish failed');
    }).catch((caught: unknown) => caught);
    expect(String(error)).toMatch(/publish failed/);
    expect(await countInbox('f-')).toBe(0);
  });
});

describe('an idempotency key completed by two owners at once (a slow one and its taker-over)', () => {
  it('lets exactly one of their one-trip transactions commit', async () => {
    const now = new Date();
    await db
      .insertInto('idempotency_key')
      .values({
        buyer_id: 'buyer-race',
        request_id: 'req-race',
        request_hash: 'h',
        state: 'IN_FLIGHT',
        payment_id: null,
        lease_until: now,
        created_at: now,
      })
      .execute();
    // Each owner writes its "payment" (an inbox row stands in for it) and completes the key, as
    // a creation does; the second packet waits on the key's row lock until the first is decided.
    const owner = (name: string) =>
      transactionInOneTrip(
        db,
        [
          inboxRow(`g-${name}`),
          idempotencyKeysCompletion(db, [
            { buyerId: 'buyer-race', requestId: 'req-race', paymentId: `pay_${name}` },
          ]),
        ],
        (results) =>
          affectedRows(results[1]) === 1 ? { commit: name } : { rollback: 'key taken over' },
      );
    const outcomes = await Promise.all([owner('one'), owner('two')]);
    const committed = outcomes.filter((outcome) => outcome.committed);
    expect(committed).toHaveLength(1);
    expect(outcomes.filter((outcome) => !outcome.committed)).toEqual([
      { committed: false, reason: 'key taken over' },
    ]);
    const winner = committed[0]?.committed === true ? committed[0].value : '';
    const key = await db
      .selectFrom('idempotency_key')
      .select(['state', 'payment_id'])
      .where('request_id', '=', 'req-race')
      .executeTakeFirstOrThrow();
    expect(key).toEqual({ state: 'COMPLETED', payment_id: `pay_${winner}` });
    expect(await countInbox('g-')).toBe(1);
  });
});

describe('MYSQL_URL ?socket=', () => {
  it('parses the socket and prefers it to host and port', () => {
    const target = parseMysqlUrl('mysql://root@127.0.0.1:3306/settle?socket=/run/mysqld/x.sock');
    expect(target).toMatchObject({ database: 'settle', socketPath: '/run/mysqld/x.sock' });
    expect(serverAddress(target)).toEqual({
      socketPath: '/run/mysqld/x.sock',
      user: 'root',
      password: '',
    });
    expect(serverAddress(parseMysqlUrl('mysql://u:p@db:3307/settle'))).toEqual({
      host: 'db',
      port: 3307,
      user: 'u',
      password: 'p',
    });
  });

  const socket = '/run/mysqld/mysqld.sock';
  // The local MariaDB's socket; a server in a container (testcontainers) has none here.
  it.skipIf(!existsSync(socket))('reaches the local server through its socket', async () => {
    const viaSocket = new URL(url);
    viaSocket.hostname = 'unreachable.invalid';
    viaSocket.searchParams.set('socket', socket);
    const opened = openDatabase(viaSocket.toString(), { poolSize: 1 });
    try {
      const result = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM inbox`.execute(opened.db);
      expect(Number(result.rows[0]?.n)).toBeGreaterThan(0);
    } finally {
      await opened.close();
    }
  });
});
