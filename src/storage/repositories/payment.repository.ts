/**
 * Payments (one per checkout) with their orders, and the idempotency keys that make
 * CreatePayment safe to repeat.
 */
import { sql, type CompiledQuery } from 'kysely';
import type { Db } from '../db.js';
import { isDuplicateKey } from '../errors.js';
import type { PaymentRow } from '../schema.js';
import type { Trx } from '../transaction.js';
import type { PaymentOrder } from '../../domain/payment-order.js';
import { findPaymentOrders, toPaymentOrder } from './payment-order.repository.js';

export const PAYMENT_STATE = {
  notStarted: 'NOT_STARTED',
  executing: 'EXECUTING',
  succeeded: 'SUCCEEDED',
  partiallySucceeded: 'PARTIALLY_SUCCEEDED',
  failed: 'FAILED',
} as const;
export type PaymentState = (typeof PAYMENT_STATE)[keyof typeof PAYMENT_STATE];

export const TERMINAL_PAYMENT_STATES: ReadonlySet<string> = new Set([
  PAYMENT_STATE.succeeded,
  PAYMENT_STATE.partiallySucceeded,
  PAYMENT_STATE.failed,
]);

export type Payment = Readonly<{
  id: string;
  buyerId: string;
  requestId: string;
  currency: string;
  amountMinor: bigint;
  state: PaymentState;
  failureReason: string | undefined;
  version: bigint;
  createdAt: Date;
  updatedAt: Date;
  orders: readonly PaymentOrder[];
}>;

function toPayment(row: PaymentRow, orders: readonly PaymentOrder[]): Payment {
  return {
    id: row.id,
    buyerId: row.buyer_id,
    requestId: row.request_id,
    currency: row.currency,
    amountMinor: BigInt(row.amount_minor),
    state: row.state as PaymentState,
    failureReason: row.failure_reason ?? undefined,
    version: BigInt(row.version),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    orders,
  };
}

/**
 * A payment with its orders, read by one statement (a join), so both come from the same snapshot:
 * a reader never sees a SUCCEEDED order under a payment that still says EXECUTING, and it costs
 * one round trip. Every payment has at least one order (validation requires it).
 */
export async function findPayment(db: Db | Trx, paymentId: string): Promise<Payment | undefined> {
  const rows = await db
    .selectFrom('payment_order as o')
    .innerJoin('payment as p', 'p.id', 'o.payment_id')
    .selectAll('o')
    .select([
      'p.buyer_id as p_buyer_id',
      'p.request_id as p_request_id',
      'p.currency as p_currency',
      'p.amount_minor as p_amount_minor',
      'p.state as p_state',
      'p.failure_reason as p_failure_reason',
      'p.orders_total as p_orders_total',
      'p.orders_succeeded as p_orders_succeeded',
      'p.orders_failed as p_orders_failed',
      'p.version as p_version',
      'p.created_at as p_created_at',
      'p.updated_at as p_updated_at',
    ])
    .where('o.payment_id', '=', paymentId)
    .orderBy('o.seq')
    .execute();
  const first = rows[0];
  if (first === undefined) return undefined;
  const payment: PaymentRow = {
    id: paymentId,
    buyer_id: first.p_buyer_id,
    request_id: first.p_request_id,
    currency: first.p_currency,
    amount_minor: first.p_amount_minor,
    state: first.p_state,
    failure_reason: first.p_failure_reason,
    orders_total: first.p_orders_total,
    orders_succeeded: first.p_orders_succeeded,
    orders_failed: first.p_orders_failed,
    version: first.p_version,
    created_at: first.p_created_at,
    updated_at: first.p_updated_at,
  };
  return toPayment(payment, rows.map(toPaymentOrder));
}

/** The payment's version and state only: cheap enough to poll. */
export async function findPaymentVersion(
  db: Db,
  paymentId: string,
): Promise<{ version: bigint; state: string } | undefined> {
  const row = await db
    .selectFrom('payment')
    .select(['version', 'state'])
    .where('id', '=', paymentId)
    .executeTakeFirst();
  return row === undefined ? undefined : { version: BigInt(row.version), state: row.state };
}

export async function listPayments(
  db: Db,
  filter: { state?: string; buyerId?: string; beforeId?: string; limit: number },
): Promise<Payment[]> {
  let query = db.selectFrom('payment').selectAll().orderBy('id', 'desc').limit(filter.limit);
  if (filter.state !== undefined) query = query.where('state', '=', filter.state);
  if (filter.buyerId !== undefined) query = query.where('buyer_id', '=', filter.buyerId);
  if (filter.beforeId !== undefined) query = query.where('id', '<', filter.beforeId);
  const rows = await query.execute();
  const orders = await findPaymentOrders(
    db,
    rows.map((row) => row.id),
  );
  return rows.map((row) =>
    toPayment(
      row,
      orders.filter((order) => order.paymentId === row.id),
    ),
  );
}

export type NewPayment = Readonly<{
  id: string;
  buyerId: string;
  requestId: string;
  currency: string;
  amountMinor: bigint;
  state: PaymentState;
  failureReason: string | undefined;
  orders: ReadonlyArray<{
    id: string;
    sellerId: string;
    amountMinor: bigint;
    state: string;
    failureReason: string | undefined;
    /** PSP registration attempts made or about to be made (1 for an order born EXECUTING). */
    attempts: number;
  }>;
}>;

/** Inserts new payments and their orders: two statements, built but not run. */
export function paymentInserts(
  db: Db | Trx,
  payments: ReadonlyArray<Readonly<{ payment: NewPayment; now: Date }>>,
): CompiledQuery[] {
  if (payments.length === 0) return [];
  return [
    db
      .insertInto('payment')
      .values(payments.map(({ payment, now }) => paymentRow(payment, now)))
      .compile(),
    db
      .insertInto('payment_order')
      .values(payments.flatMap(({ payment, now }) => orderRows(payment, now)))
      .compile(),
  ];
}

function paymentRow(payment: NewPayment, now: Date) {
  return {
    id: payment.id,
    buyer_id: payment.buyerId,
    request_id: payment.requestId,
    currency: payment.currency,
    amount_minor: payment.amountMinor,
    state: payment.state,
    failure_reason: payment.failureReason ?? null,
    orders_total: payment.orders.length,
    orders_succeeded: 0,
    orders_failed: payment.orders.filter((order) => order.state === 'FAILED').length,
    version: '0',
    created_at: now,
    updated_at: now,
  };
}

function orderRows(payment: NewPayment, now: Date) {
  return payment.orders.map((order, seq) => ({
    id: order.id,
    payment_id: payment.id,
    seq,
    seller_id: order.sellerId,
    amount_minor: order.amountMinor,
    currency: payment.currency,
    state: order.state,
    version: '0',
    psp_token: null,
    checkout_url: null,
    psp_reference: null,
    failure_reason: order.failureReason ?? null,
    attempts: order.attempts,
    review_reason: null,
    created_at: now,
    updated_at: now,
  }));
}

/** A payment as `paymentInserts` stored it, read back through the same mapping as findPayment. */
export function createdPayment(payment: NewPayment, now: Date): Payment {
  const row = { ...paymentRow(payment, now), amount_minor: payment.amountMinor.toString() };
  return toPayment(
    row,
    orderRows(payment, now).map((order) =>
      toPaymentOrder({
        ...order,
        amount_minor: order.amount_minor.toString(),
        janitor_lease_until: null,
        janitor_owner: null,
      }),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

export type IdempotencyClaim =
  | Readonly<{ kind: 'claimed' }>
  | Readonly<{ kind: 'completed'; paymentId: string; requestHash: string }>
  | Readonly<{ kind: 'in-flight'; requestHash: string }>;

/**
 * Claims (buyer, request id) for this request, committed on its own so that a concurrent
 * duplicate sees it at once. An IN_FLIGHT key whose lease ran out (its owner died) is taken over.
 */
export async function claimIdempotencyKey(
  db: Db,
  key: { buyerId: string; requestId: string; requestHash: string; now: Date; leaseMs: number },
): Promise<IdempotencyClaim> {
  try {
    await insertIdempotencyKeys(db, [key]);
    return { kind: 'claimed' };
  } catch (error) {
    if (!isDuplicateKey(error)) throw error;
  }
  const existing = await db
    .selectFrom('idempotency_key')
    .selectAll()
    .where('buyer_id', '=', key.buyerId)
    .where('request_id', '=', key.requestId)
    .executeTakeFirst();
  if (existing === undefined) {
    // Purged between our insert and our read: the caller may simply retry.
    return { kind: 'in-flight', requestHash: key.requestHash };
  }
  if (existing.state === 'COMPLETED' && existing.payment_id !== null) {
    return {
      kind: 'completed',
      paymentId: existing.payment_id,
      requestHash: existing.request_hash,
    };
  }
  if (
    existing.request_hash === key.requestHash &&
    existing.lease_until.getTime() < key.now.getTime()
  ) {
    const takeover = await db
      .updateTable('idempotency_key')
      .set({ lease_until: new Date(key.now.getTime() + key.leaseMs) })
      .where('buyer_id', '=', key.buyerId)
      .where('request_id', '=', key.requestId)
      .where('state', '=', 'IN_FLIGHT')
      .where('lease_until', '=', existing.lease_until)
      .executeTakeFirst();
    if (takeover.numUpdatedRows === 1n) return { kind: 'claimed' };
  }
  return { kind: 'in-flight', requestHash: existing.request_hash };
}

export type NewIdempotencyKey = Readonly<{
  buyerId: string;
  requestId: string;
  requestHash: string;
  now: Date;
  leaseMs: number;
}>;

/**
 * `claimIdempotencyKey` for many fresh requests with one autocommit INSERT: each key is still
 * committed before its payment's transaction, where a concurrent duplicate sees it at once.
 * Resolves when every key was new; any duplicate fails the whole statement (nothing inserted)
 * and the caller claims each key alone, which tells a repeat from a request in flight.
 */
export async function insertIdempotencyKeys(
  db: Db,
  keys: readonly NewIdempotencyKey[],
): Promise<void> {
  if (keys.length === 0) return;
  await db
    .insertInto('idempotency_key')
    .values(
      keys.map((key) => ({
        buyer_id: key.buyerId,
        request_id: key.requestId,
        request_hash: key.requestHash,
        state: 'IN_FLIGHT' as const,
        payment_id: null,
        lease_until: new Date(key.now.getTime() + key.leaseMs),
        created_at: key.now,
      })),
    )
    .execute();
}

/**
 * Marks keys COMPLETED inside the transaction that creates their payments: the statement, built
 * but not run. Its affected rows are the keys still IN_FLIGHT, fewer than `keys` when one was
 * taken over (after its lease ran out).
 */
export function idempotencyKeysCompletion(
  db: Db | Trx,
  keys: ReadonlyArray<Readonly<{ buyerId: string; requestId: string; paymentId: string }>>,
): CompiledQuery {
  const sameKey = (key: { buyerId: string; requestId: string }) =>
    sql`(buyer_id = ${key.buyerId} AND request_id = ${key.requestId})`;
  return sql`
    UPDATE idempotency_key SET
      state = 'COMPLETED',
      payment_id = CASE ${sql.join(
        keys.map((key) => sql`WHEN ${sameKey(key)} THEN ${key.paymentId}`),
        sql` `,
      )} END
    WHERE (${sql.join(keys.map(sameKey), sql` OR `)}) AND state = 'IN_FLIGHT'`.compile(db);
}

/** Gives a claimed key back after the creation failed, so the caller can retry at once. */
export async function releaseIdempotencyKey(
  db: Db,
  key: { buyerId: string; requestId: string },
): Promise<void> {
  await db
    .deleteFrom('idempotency_key')
    .where('buyer_id', '=', key.buyerId)
    .where('request_id', '=', key.requestId)
    .where('state', '=', 'IN_FLIGHT')
    .execute();
}

/** Deletes keys older than the cutoff, at most `limit` per call. Returns how many went. */
export async function purgeIdempotencyKeys(db: Db, cutoff: Date, limit: number): Promise<number> {
  const result = await sql`
    DELETE FROM idempotency_key WHERE created_at < ${cutoff} ORDER BY created_at LIMIT ${limit}`.execute(
    db,
  );
  return Number(result.numAffectedRows ?? 0n);
}
