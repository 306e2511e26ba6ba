/**
 * `npm run bench:janitor -- --orders 100000`: how long a janitor pass takes when many orders are
 * stuck (a PSP outage, or checkouts left unpaid until they expire). It fills a database of its
 * own with that many EXECUTING orders quiet long enough for a status check, leases the oldest
 * `--leased` of them to "another pass", and then times, alternately:
 *
 * - the janitor's old candidate read: both unfinished states in one `state IN (…)` read ordered
 *   by created_at, which sorts every due order before its LIMIT;
 * - a whole real pass (`Janitor.runOnce`: one read per state in its index's order, the claim,
 *   the outbox rows), each claiming the next batch, so later passes skip more leased orders.
 *
 * Options: --orders N (default 100000), --leased N (default 5000), --passes N (default 5),
 * --batch N (the janitor's batchMax, default 200). Creates and drops its own database on
 * MYSQL_URL's server. Not part of the test suite: test/jobs covers what a pass claims.
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { loadConfig } from '../src/config.js';
import { Janitor } from '../src/jobs/janitor.js';
import { names } from '../src/messaging/subjects.js';
import {
  dropDatabase,
  ensureDatabase,
  migrateToLatest,
  openDatabase,
  withDatabaseName,
} from '../src/storage/db.js';

function intOption(name: string, fallback: number, max: number): number {
  const index = process.argv.indexOf(`--${name}`);
  if (index === -1) return fallback;
  const value = Number(process.argv[index + 1]);
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new Error(`--${name} must be an integer from 1 to ${max}`);
  }
  return value;
}

const orders = intOption('orders', 100_000, 5_000_000);
const leased = Math.min(intOption('leased', 5_000, 5_000_000), orders);
const passes = intOption('passes', 5, 100);
const batchMax = intOption('batch', 200, 10_000);
const INSERT_ROWS = 5_000;
const HOUR_MS = 3_600_000;

const line = (text: string) => process.stdout.write(`${text}\n`);
const url = withDatabaseName(
  loadConfig(process.env).MYSQL_URL,
  `settle_bench_janitor_${randomBytes(4).toString('hex')}`,
);
await ensureDatabase(url);
const { db, close } = openDatabase(url, { poolSize: 2 });
try {
  await migrateToLatest(db);
  const now = new Date();
  const first = now.getTime() - 2 * HOUR_MS;
  line(`filling: ${orders} EXECUTING orders, quiet for 1-2 h, ${leased} of them leased elsewhere`);
  for (let start = 0; start < orders; start += INSERT_ROWS) {
    const count = Math.min(INSERT_ROWS, orders - start);
    const rows = Array.from({ length: count }, (_, i) => {
      const n = start + i;
      const at = new Date(first + Math.floor((n * HOUR_MS) / orders));
      const id = String(n).padStart(26, '0');
      return {
        id: `ord_${id}`,
        payment_id: `pay_${id}`,
        seq: 0,
        seller_id: 'seller-janitor-bench',
        amount_minor: '100',
        currency: 'USD',
        state: 'EXECUTING',
        version: '1',
        attempts: 1,
        created_at: at,
        updated_at: at,
      };
    });
    await db.insertInto('payment_order').values(rows).execute();
  }
  await sql`UPDATE payment_order
    SET janitor_lease_until = ${new Date(now.getTime() + HOUR_MS)}, janitor_owner = 'another-pass'
    ORDER BY updated_at LIMIT ${leased}`.execute(db);
  await sql`ANALYZE TABLE payment_order`.execute(db);

  const stuckBefore = new Date(now.getTime() - 30 * 60_000);
  const janitor = new Janitor(
    db,
    names(`jbench${randomBytes(3).toString('hex')}`, 1),
    {
      orderExpiryMs: 24 * HOUR_MS, // nothing expires: the status checks alone are timed
      stuckMs: now.getTime() - stuckBefore.getTime(),
      intervalMs: 60_000,
      batchMax,
      leaseMs: HOUR_MS,
    },
    { now: () => now, wakeRelay: () => {} },
  );
  const oldRead = () =>
    sql`
    SELECT id FROM payment_order
    WHERE state IN ('NOT_STARTED', 'EXECUTING') AND updated_at < ${stuckBefore}
      AND (janitor_lease_until IS NULL OR janitor_lease_until < ${now})
    ORDER BY created_at LIMIT ${batchMax}`.execute(db);

  line(`| pass | old candidate read ms | whole pass now ms | orders claimed |`);
  line(`|-----:|----------------------:|------------------:|---------------:|`);
  for (let pass = 1; pass <= passes; pass += 1) {
    let started = performance.now();
    await oldRead();
    const oldMs = performance.now() - started;
    started = performance.now();
    const result = await janitor.runOnce();
    const passMs = performance.now() - started;
    line(`| ${pass} | ${oldMs.toFixed(1)} | ${passMs.toFixed(1)} | ${result.checked.length} |`);
  }
} finally {
  await close();
  await dropDatabase(url);
}
