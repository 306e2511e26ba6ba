/**
 * Payments (one per checkout) with their orders, and the idempotency keys that make
 * CreatePayment safe to repeat.
 */
import { sql, type CompiledQuery } from 'kysely';
import type { Db } from '../db.js';
import type { PaymentRow } from '../schema.js';
import { deleteInBatches, type PurgeBounds } from '../sql.js';
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

/**
 * The idempotency keys of new payments, inserted COMPLETED with their payment ids in the
 * transaction that creates those payments: the statement, built but not run. The key's primary
 * key (buyer, request id) decides between concurrent duplicates: a second insert of the same key
 * waits on the first one's row lock, and fails as a duplicate once that commits (or goes through
 * if it rolled back). Put first in its transaction, so a duplicate stops it before anything else
 * is written.
 */
export function idempotencyKeyInserts(
  db: Db | Trx,
  keys: ReadonlyArray<
    Readonly<{
      buyerId: string;
      requestId: string;
      requestHash: string;
      paymentId: string;
      now: Date;
    }>
  >,
): CompiledQuery {
  return db
    .insertInto('idempotency_key')
    .values(
      keys.map((key) => ({
        buyer_id: key.buyerId,
        request_id: key.requestId,
        request_hash: key.requestHash,
        state: 'COMPLETED' as const,
        payment_id: key.paymentId,
        // Only an IN_FLIGHT key (written by an earlier version) has a lease; this one is done.
        lease_until: key.now,
        created_at: key.now,
      })),
    )
    .compile();
}

export type StoredIdempotencyKey = Readonly<{
  state: 'IN_FLIGHT' | 'COMPLETED';
  requestHash: string;
  paymentId: string | undefined;
  leaseUntil: Date;
}>;

export async function findIdempotencyKey(
  db: Db,
  key: Readonly<{ buyerId: string; requestId: string }>,
): Promise<StoredIdempotencyKey | undefined> {
  const row = await db
    .selectFrom('idempotency_key')
    .select(['state', 'request_hash', 'payment_id', 'lease_until'])
    .where('buyer_id', '=', key.buyerId)
    .where('request_id', '=', key.requestId)
    .executeTakeFirst();
  return row === undefined
    ? undefined
    : {
        state: row.state,
        requestHash: row.request_hash,
        paymentId: row.payment_id ?? undefined,
        leaseUntil: row.lease_until,
      };
}

/**
 * Deletes an IN_FLIGHT key whose lease ran out. Earlier versions claimed a key first and
 * completed it with the payment; one whose node died in between left it IN_FLIGHT. True when
 * this call deleted it (the request may then be created again).
 */
export async function deleteAbandonedKey(
  db: Db,
  key: Readonly<{ buyerId: string; requestId: string }>,
  now: Date,
): Promise<boolean> {
  const result = await db
    .deleteFrom('idempotency_key')
    .where('buyer_id', '=', key.buyerId)
    .where('request_id', '=', key.requestId)
    .where('state', '=', 'IN_FLIGHT')
    .where('lease_until', '<', now)
    .executeTakeFirst();
  return result.numDeletedRows === 1n;
}

/** The purge's bounds per housekeeping pass (a minute apart): 5,000 keys a DELETE, 40 DELETEs. */
export const IDEMPOTENCY_PURGE = { rowsPerStatement: 5_000, statementsMax: 40 } as const;

/**
 * Deletes keys older than the cutoff, oldest first, `rowsPerStatement` per DELETE until one
 * deletes fewer or `statementsMax` have run (200,000 a pass by default: a node creating a few
 * thousand payments a second is kept up with). A key whose payment is still open is kept
 * whatever its age: without it a retry of the request would create and charge a second payment
 * while the first can still be paid. Returns how many went.
 */
export async function purgeIdempotencyKeys(
  db: Db,
  cutoff: Date,
  bounds: PurgeBounds = IDEMPOTENCY_PURGE,
): Promise<number> {
  const { deleted } = await deleteInBatches(bounds, async (limit) => {
    const result = await sql`
      DELETE FROM idempotency_key
      WHERE created_at < ${cutoff}
        AND NOT EXISTS (
          SELECT 1 FROM payment p
          WHERE p.id = idempotency_key.payment_id
            AND p.state NOT IN (${sql.join([...TERMINAL_PAYMENT_STATES])}))
      ORDER BY created_at
      LIMIT ${limit}`.execute(db);
    return Number(result.numAffectedRows ?? 0n);
  });
  return deleted;
}
