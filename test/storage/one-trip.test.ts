/**
 * Goal: a one-packet transaction (`commitInOneTrip`: statements, guards and COMMIT in one packet)
 * commits in one round trip when its guards hold, and commits nothing when one trips, whether
 * the guard counts the rows of the statement before it or the ledger's stored sums, and runs no
 * statement after the tripped guard; a two-trip transaction (all statements in one packet, then
 * COMMIT or ROLLBACK) commits only what `decide` accepts, leaves nothing behind when it refuses or
 * when a statement fails midway, and hands `decide` every statement's result; MYSQL_URL's
 * `?socket=` reaches the server through its Unix socket; a pool refuses packets of several
 * statements unless it is opened for one-packet transactions. Method: real MariaDB, rows counted
 * after each case, the statements the server got counted through the pool's query hook.
 */
import { existsSync } from 'node:fs';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, parseMysqlUrl, serverAddress, type Db } from '../../src/storage/db.js';
import {
  affectedRows,
  assertGuardsTrip,
  commitInOneTrip,
  guard,
  resultRows,
  rowCountGuard,
  transactionInOneTrip,
} from '../../src/storage/one-trip.js';
import { ledgerPosting } from '../../src/storage/repositories/ledger.repository.js';
import { isDuplicateKey } from '../../src/storage/errors.js';
import { openTestDatabase } from '../support/harness.js';

let url: string;
let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, url, close } = await openTestDatabase('settle_onetrip_t', {
    poolSize: 2,
    multipleStatements: true,
  }));
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

/** A balanced two-entry ledger transaction of 5.00 for `orderId`, built but not run. */
function postingOf(orderId: string) {
  const built = ledgerPosting(db, [
    {
      id: `ltx_${orderId.slice(4)}`,
      orderId,
      kind: 'test',
      currency: 'USD',
      now: new Date(),
      entries: [
        { account: 'psp_receivable', kind: 'test_debit', debitMinor: 500n, creditMinor: 0n },
        { account: 'seller_payable:s', kind: 'test_credit', debitMinor: 0n, creditMinor: 500n },
      ],
    },
  ]);
  if (built === undefined) throw new Error('nothing to post');
  return built;
}

describe('commitInOneTrip', () => {
  const markInbox = (prefix: string) =>
    sql`UPDATE inbox SET source = 'marked' WHERE event_id LIKE ${`${prefix}%`}`.compile(db);

  it('commits statements, guards that hold and the COMMIT in one round trip', async () => {
    const packets: string[] = [];
    const counted = openDatabase(url, {
      poolSize: 1,
      multipleStatements: true,
      onQuery: (text) => packets.push(text),
    });
    try {
      const outcome = await commitInOneTrip(counted.db, [
        inboxRow('h-1'),
        inboxRow('h-2'),
        markInbox('h-'),
        rowCountGuard(2),
        sql`SELECT event_id FROM inbox WHERE event_id LIKE 'h-%' ORDER BY event_id`.compile(db),
      ]);
      expect(outcome.committed).toBe(true);
      if (!outcome.committed) return;
      // Results of the statements only, guards included (START and COMMIT are left out).
      expect(outcome.results.map(affectedRows).slice(0, 4)).toEqual([1, 1, 2, 0]);
      expect(resultRows<{ event_id: string }>(outcome.results[4])).toEqual([
        { event_id: 'h-1' },
        { event_id: 'h-2' },
      ]);
      expect(packets).toHaveLength(1);
      expect(packets[0]).toMatch(/^START TRANSACTION;[\s\S]*;\nCOMMIT$/);
    } finally {
      await counted.close();
    }
    expect(await countInbox('h-')).toBe(2);
  });

  it('commits nothing when a row-count guard trips, and runs nothing after it', async () => {
    const { outcome, ran } = await db.connection().execute(async (connection) => {
      await sql`SET @ran_after_guard = 0`.execute(connection);
      const tripped = await commitInOneTrip(connection, [
        inboxRow('i-1'),
        inboxRow('i-2'),
        // Changes two rows; the guard expects three (a batch with one stale write).
        markInbox('i-'),
        rowCountGuard(3),
        sql`SET @ran_after_guard = 1`.compile(connection),
        inboxRow('i-3'),
      ]);
      const variable = await sql<{ ran: number }>`SELECT @ran_after_guard AS ran`.execute(
        connection,
      );
      return { outcome: tripped, ran: Number(variable.rows[0]?.ran) };
    });
    expect(outcome).toEqual({ committed: false, tripped: 'rowCount' });
    expect(ran).toBe(0);
    expect(await countInbox('i-')).toBe(0);
    // The guard table never keeps a row, and the connection went back to the pool clean.
    const guards = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM one_trip_guard`.execute(db);
    expect(Number(guards.rows[0]?.n)).toBe(0);
    expect((await commitInOneTrip(db, [inboxRow('i-4')])).committed).toBe(true);
    expect(await countInbox('i-')).toBe(1);
  });

  it('trips on a ledger transaction that does not balance as stored, and commits a balanced one', async () => {
    const ok = postingOf('ord_onetripbalanced0000000001');
    const bad = postingOf('ord_onetripunbalanced00000001');
    const committed = await commitInOneTrip(db, [...ok.inserts, ...ok.balancedGuard()]);
    expect(committed.committed).toBe(true);
    // The entries as built balance; one more debit written beside them (as a bug would) does not.
    const extraDebit = db
      .insertInto('ledger_entry')
      .values({
        transaction_id: 'ltx_onetripunbalanced00000001',
        account: 'psp_receivable',
        order_id: 'ord_onetripunbalanced00000001',
        kind: 'test_extra',
        currency: 'USD',
        debit_minor: 1n,
        credit_minor: 0n,
        created_at: new Date(),
      })
      .compile();
    const tripped = await commitInOneTrip(db, [...bad.inserts, extraDebit, ...bad.balancedGuard()]);
    expect(tripped).toEqual({ committed: false, tripped: 'ledgerUnbalanced' });
    const stored = await sql<{ order_id: string }>`
      SELECT DISTINCT order_id FROM ledger_entry WHERE order_id LIKE 'ord_onetrip%'`.execute(db);
    expect(stored.rows.map((row) => row.order_id)).toEqual(['ord_onetripbalanced0000000001']);
  });

  it('checks the ledger without locking it: a concurrent posting does not wait for the commit', async () => {
    const posting = (n: number) => {
      const built = postingOf(`ord_onetripconcurrent${String(n).padStart(8, '0')}`);
      return [...built.inserts, ...built.balancedGuard()];
    };
    // The first transaction runs its posting and its guard, then stays open for 1.5 s.
    let secondMs = -1;
    const first = transactionInOneTrip(db, posting(1), async () => {
      const started = performance.now();
      // A later posting (its ids sort after the first's, as ULIDs do) on the other connection.
      await commitInOneTrip(db, posting(2));
      secondMs = performance.now() - started;
      await new Promise((resolve) => setTimeout(resolve, 1_500 - secondMs));
      return { commit: true };
    });
    await first;
    // It committed while the first was still open: the guard's read took no next-key lock.
    expect(secondMs).toBeGreaterThanOrEqual(0);
    expect(secondMs).toBeLessThan(1_000);
  });

  it('refuses to start on a server that does not enforce CHECK constraints', async () => {
    await expect(assertGuardsTrip(db)).resolves.toBeUndefined();
    // MariaDB can switch the checks off per session; MySQL cannot (then this part is moot).
    const switchable = await sql<{ n: string }>`
      SELECT COUNT(*) AS n FROM information_schema.SESSION_VARIABLES
      WHERE VARIABLE_NAME = 'CHECK_CONSTRAINT_CHECKS'`.execute(db);
    if (Number(switchable.rows[0]?.n) === 0) return;
    const error = await db.connection().execute(async (connection) => {
      await sql`SET SESSION check_constraint_checks = OFF`.execute(connection);
      try {
        return await assertGuardsTrip(connection).catch((caught: unknown) => caught);
      } finally {
        await sql`SET SESSION check_constraint_checks = ON`.execute(connection);
      }
    });
    expect(String(error)).toMatch(/does not enforce CHECK constraints/);
    // The row its guard could store was deleted again.
    const rows = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM one_trip_guard`.execute(db);
    expect(Number(rows.rows[0]?.n)).toBe(0);
  });

  it('throws what MySQL threw for a failing statement that is no guard, after rolling back', async () => {
    await commitInOneTrip(db, [inboxRow('j-0')]);
    const error = await commitInOneTrip(db, [
      inboxRow('j-1'),
      inboxRow('j-0'),
      guard('rowCount', { sql: '1 = 0', parameters: [] }),
    ]).catch((caught: unknown) => caught);
    expect(isDuplicateKey(error)).toBe(true);
    expect(await countInbox('j-')).toBe(1);
  });
});

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

describe('openDatabase and several statements per packet', () => {
  it('refuses a packet of two statements unless the pool is opened for one-packet transactions', async () => {
    const plain = openDatabase(url, { poolSize: 1 });
    try {
      const refused = await sql`SELECT 1; SELECT 2`
        .execute(plain.db)
        .catch((error: unknown) => error);
      // The server sees one malformed statement: ER_PARSE_ERROR, and nothing of it runs.
      expect((refused as { errno?: number }).errno).toBe(1064);
    } finally {
      await plain.close();
    }
    // The pool of this file is opened for them: both statements run, one result set each.
    const results = await sql`SELECT 1 AS a; SELECT 2 AS b`.execute(db);
    expect(results.rows).toEqual([[{ a: 1 }], [{ b: 2 }]]);
  });
});
