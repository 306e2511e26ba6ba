/**
 * The ceiling: the durable MySQL writes a successful payment needs, done by a minimal script with
 * nothing of Settle in between (no gRPC, no JetStream, no actors, no PSP), at the same
 * concurrency as the end-to-end run, so the two can be compared side by side. Per payment of k
 * orders, in the transactions and autocommits Settle uses for an order alone (its group commit
 * puts many orders' writes in one transaction, and sends each as one packet):
 *
 *   1. (validation, no write)
 *   2. tx: INSERT idempotency_key (COMPLETED, with the payment id), payment (EXECUTING), k
 *          payment_order rows (born EXECUTING), their k NOT_STARTED→EXECUTING transition rows, k
 *          outbox rows (held back from the relay: the node runs them itself)
 *   then for each order, concurrently:
 *   3. tx: UPDATE payment_order +token WHERE version = 0; INSERT transition; DELETE its outbox
 *          row (the command is done)
 *   4. (the webhook arrives and is applied at once by the order's actor: no write of its own)
 *   5. tx: UPDATE payment_order →SUCCEEDED WHERE version = 1; INSERT transition; INSERT inbox
 *          (webhook event id); UPDATE payment aggregate; INSERT ledger_transaction; INSERT 2
 *          ledger_entry; wallet upsert
 *
 * Reads (the actor's load, the ledger's pair assertion) are left out: this is the write floor.
 * Every version-checked UPDATE must hit exactly one row, or the run fails.
 *
 * Run alone: node --import tsx bench/ceiling.ts [--mysql-url U] [--concurrency 64]
 *   [--orders-per-payment 1] [--sellers 1000] [--hot-seller] [--duration 5] [--pool-size 16]
 * It prints one JSON line with the result. `npm run bench` runs it as a child process.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createPool, type Pool, type PoolConnection, type ResultSetHeader } from 'mysql2/promise';
import { newId } from '../src/domain/ids.js';
import {
  ensureDatabase,
  migrateToLatest,
  openDatabase,
  parseMysqlUrl,
  serverAddress,
} from '../src/storage/db.js';

export type CeilingOptions = Readonly<{
  mysqlUrl: string;
  concurrency: number;
  ordersPerPayment: number;
  sellers: number;
  hotSeller: boolean;
  durationMs: number;
  paymentsMax: number;
  poolSize: number;
}>;

export type CeilingResult = Readonly<{
  payments: number;
  orders: number;
  elapsedMs: number;
  ordersPerS: number;
  commitsPerOrder: number;
  statementsPerOrder: number;
  cpuMs: number;
}>;

const SUBJECT = 'settle.ceiling.cmd.0';

export async function runCeiling(options: CeilingOptions): Promise<CeilingResult> {
  await ensureDatabase(options.mysqlUrl);
  const migrated = openDatabase(options.mysqlUrl, { poolSize: 1 });
  try {
    await migrateToLatest(migrated.db);
  } finally {
    await migrated.close();
  }
  const target = parseMysqlUrl(options.mysqlUrl);
  const pool = createPool({
    ...serverAddress(target),
    database: target.database,
    connectionLimit: options.poolSize,
    queueLimit: options.poolSize * 1_024,
    connectTimeout: 5_000,
    timezone: 'Z',
    supportBigNumbers: true,
    bigNumberStrings: true,
  });
  const counters = { statements: 0, commits: 0 };
  const cpuBefore = process.cpuUsage();
  const started = Date.now();
  const deadline = started + options.durationMs;
  let payments = 0;
  let launched = 0;
  try {
    await Promise.all(
      Array.from({ length: options.concurrency }, async () => {
        while (Date.now() < deadline && launched < options.paymentsMax) {
          launched += 1;
          await onePayment(pool, options, counters);
          payments += 1;
        }
      }),
    );
  } finally {
    await pool.end();
  }
  const elapsedMs = Date.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  const orders = payments * options.ordersPerPayment;
  return {
    payments,
    orders,
    elapsedMs,
    ordersPerS: (orders * 1000) / elapsedMs,
    commitsPerOrder: counters.commits / Math.max(1, orders),
    statementsPerOrder: counters.statements / Math.max(1, orders),
    cpuMs: (cpu.user + cpu.system) / 1000,
  };
}

type Counters = { statements: number; commits: number };

function sellerOf(options: CeilingOptions): string {
  return options.hotSeller ? 'seller-hot' : `seller-${Math.floor(Math.random() * options.sellers)}`;
}

async function onePayment(pool: Pool, options: CeilingOptions, counters: Counters) {
  const now = new Date();
  const buyerId = `buyer-${Math.floor(Math.random() * 10_000)}`;
  const requestId = randomUUID();
  const paymentId = newId('payment', now.getTime());
  const orders = Array.from({ length: options.ordersPerPayment }, () => ({
    id: newId('order', now.getTime()),
    sellerId: sellerOf(options),
    amountMinor: 100 + Math.floor(Math.random() * 10_000),
  }));
  const total = orders.reduce((sum, order) => sum + order.amountMinor, 0);

  // 2. The idempotency key, the payment, its orders and their ExecuteOrder commands.
  const outboxIds = await transaction(pool, counters, async (connection) => {
    await exec(
      connection,
      counters,
      `INSERT INTO idempotency_key (buyer_id, request_id, request_hash, state, payment_id, lease_until, created_at)
       VALUES (?, ?, ?, 'COMPLETED', ?, ?, ?)`,
      [buyerId, requestId, randomBytes(32).toString('hex'), paymentId, now, now],
    );
    await exec(
      connection,
      counters,
      `INSERT INTO payment (id, buyer_id, request_id, currency, amount_minor, state, failure_reason,
         orders_total, orders_succeeded, orders_failed, version, created_at, updated_at)
       VALUES (?, ?, ?, 'USD', ?, 'EXECUTING', NULL, ?, 0, 0, 0, ?, ?)`,
      [paymentId, buyerId, requestId, total, orders.length, now, now],
    );
    await exec(
      connection,
      counters,
      `INSERT INTO payment_order (id, payment_id, seq, seller_id, amount_minor, currency, state,
         version, psp_token, checkout_url, psp_reference, failure_reason, attempts, review_reason,
         created_at, updated_at)
       VALUES ${orders.map(() => "(?, ?, ?, ?, ?, 'USD', 'EXECUTING', 0, NULL, NULL, NULL, NULL, 1, NULL, ?, ?)").join(', ')}`,
      orders.flatMap((order, seq) => [
        order.id,
        paymentId,
        seq,
        order.sellerId,
        order.amountMinor,
        now,
        now,
      ]),
    );
    await exec(
      connection,
      counters,
      `INSERT INTO payment_order_transition
         (order_id, payment_id, version, from_state, to_state, event_type, detail, created_at)
       VALUES ${orders.map(() => "(?, ?, 0, 'NOT_STARTED', 'EXECUTING', 'ExecuteOrder', '{\"type\":\"ExecuteOrder\"}', ?)").join(', ')}`,
      orders.flatMap((order) => [order.id, paymentId, now]),
    );
    const inserted = await exec(
      connection,
      counters,
      `INSERT INTO outbox (subject, msg_id, payload, created_at, available_at) VALUES ${orders.map(() => '(?, ?, ?, ?, ?)').join(', ')}`,
      orders.flatMap((order) => [
        SUBJECT,
        `exec:${order.id}`,
        JSON.stringify({ type: 'ExecuteOrder', orderId: order.id }),
        now,
        new Date(now.getTime() + 5_000),
      ]),
    );
    return Array.from({ length: orders.length }, (_, i) => inserted.insertId + i);
  });

  await Promise.all(
    orders.map((order, i) => oneOrder(pool, counters, paymentId, order, outboxIds[i] ?? 0)),
  );
}

async function oneOrder(
  pool: Pool,
  counters: Counters,
  paymentId: string,
  order: { id: string; sellerId: string; amountMinor: number },
  outboxId: number,
) {
  const transitionSql = `INSERT INTO payment_order_transition
      (order_id, payment_id, version, from_state, to_state, event_type, detail, created_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?)`;
  let now = new Date();
  // 3. PspRegistered (ExecuteOrder wrote nothing: the order was born EXECUTING).
  const token = `tok_${randomBytes(15).toString('hex')}`;
  await transaction(pool, counters, async (connection) => {
    await exec(
      connection,
      counters,
      `UPDATE payment_order SET psp_token = ?, checkout_url = ?, updated_at = ?, version = version + 1
       WHERE id = ? AND version = 0`,
      [token, `http://127.0.0.1:1/pay/${token}`, now, order.id],
      1,
    );
    await exec(connection, counters, transitionSql, [
      order.id,
      paymentId,
      1,
      'EXECUTING',
      'EXECUTING',
      'PspRegistered',
      JSON.stringify({ type: 'PspRegistered', token }),
      now,
    ]);
    await exec(connection, counters, `DELETE FROM outbox WHERE id = ?`, [outboxId], 1);
  });
  // 4. The webhook, applied at once by the order's actor (its inbox row joins step 5).
  now = new Date();
  const eventId = `evt_${randomBytes(15).toString('hex')}`;
  // 5. PspSucceeded: the order, the inbox row, the payment, the ledger and the wallet in one
  //    transaction.
  const ledgerId = newId('ledgerTransaction', now.getTime());
  await transaction(pool, counters, async (connection) => {
    await exec(
      connection,
      counters,
      `UPDATE payment_order SET state = 'SUCCEEDED', psp_reference = ?, updated_at = ?, version = version + 1
       WHERE id = ? AND version = 1`,
      [`psp_${eventId.slice(4)}`, now, order.id],
      1,
    );
    await exec(connection, counters, transitionSql, [
      order.id,
      paymentId,
      2,
      'EXECUTING',
      'SUCCEEDED',
      'PspSucceeded',
      JSON.stringify({ type: 'PspSucceeded', eventId }),
      now,
    ]);
    await exec(
      connection,
      counters,
      `INSERT INTO inbox (source, event_id, order_id, received_at) VALUES ('psp', ?, ?, ?)`,
      [eventId, order.id, now],
    );
    await exec(
      connection,
      counters,
      `UPDATE payment SET
         state = CASE WHEN orders_succeeded + orders_failed + 1 < orders_total THEN 'EXECUTING'
                      WHEN orders_failed = 0 THEN 'SUCCEEDED' ELSE 'PARTIALLY_SUCCEEDED' END,
         orders_succeeded = orders_succeeded + 1, version = version + 1, updated_at = ?
       WHERE id = ?`,
      [now, paymentId],
      1,
    );
    await exec(
      connection,
      counters,
      `INSERT INTO ledger_transaction (id, order_id, kind, currency, amount_minor, created_at)
       VALUES (?, ?, 'PAYMENT', 'USD', ?, ?)`,
      [ledgerId, order.id, order.amountMinor, now],
    );
    await exec(
      connection,
      counters,
      `INSERT INTO ledger_entry (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
       VALUES (?, 'psp_receivable', ?, 'PAYMENT_RECEIVABLE', 'USD', ?, 0, ?),
              (?, ?, ?, 'PAYMENT_PAYABLE', 'USD', 0, ?, ?)`,
      [
        ledgerId,
        order.id,
        order.amountMinor,
        now,
        ledgerId,
        `seller_payable:${order.sellerId}`,
        order.id,
        order.amountMinor,
        now,
      ],
    );
    await exec(
      connection,
      counters,
      `INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
       VALUES (?, 'USD', ?, 1, ?)
       ON DUPLICATE KEY UPDATE balance_minor = balance_minor + ?, version = version + 1, updated_at = ?`,
      [order.sellerId, order.amountMinor, now, order.amountMinor, now],
    );
  });
}

/** Runs one statement; `rowsExpected` makes a version check fail loudly when it misses. */
async function exec(
  target: Pool | PoolConnection,
  counters: Counters,
  statement: string,
  values: unknown[],
  rowsExpected?: number,
): Promise<ResultSetHeader> {
  counters.statements += 1;
  const [result] = await target.query<ResultSetHeader>(statement, values);
  if (rowsExpected !== undefined && result.affectedRows !== rowsExpected) {
    throw new Error(`expected ${rowsExpected} row(s), got ${result.affectedRows}: ${statement}`);
  }
  return result;
}

async function transaction<T>(
  pool: Pool,
  counters: Counters,
  work: (connection: PoolConnection) => Promise<T>,
): Promise<T> {
  const connection = await pool.getConnection();
  try {
    await connection.query('BEGIN');
    counters.statements += 1;
    const result = await work(connection);
    await connection.query('COMMIT');
    counters.statements += 1;
    counters.commits += 1;
    return result;
  } catch (error) {
    await connection.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    connection.release();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'mysql-url': { type: 'string', default: 'mysql://root@127.0.0.1:3306/settle_bench_ceiling' },
      concurrency: { type: 'string', default: '64' },
      'orders-per-payment': { type: 'string', default: '1' },
      sellers: { type: 'string', default: '1000' },
      'hot-seller': { type: 'boolean', default: false },
      duration: { type: 'string', default: '5' },
      payments: { type: 'string', default: '1000000' },
      'pool-size': { type: 'string', default: '16' },
    },
  });
  const result = await runCeiling({
    mysqlUrl: values['mysql-url'],
    concurrency: positive('concurrency', values.concurrency),
    ordersPerPayment: positive('orders-per-payment', values['orders-per-payment']),
    sellers: positive('sellers', values.sellers),
    hotSeller: values['hot-seller'],
    durationMs: positive('duration', values.duration) * 1000,
    paymentsMax: positive('payments', values.payments),
    poolSize: positive('pool-size', values['pool-size']),
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function positive(name: string, value: string): number {
  const number = Number(value);
  if (!Number.isFinite(number) || number <= 0)
    throw new Error(`--${name} must be a positive number`);
  return number;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main().catch((error: unknown) => {
    process.stderr.write(`ceiling: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  });
}
