/**
 * Read-only queries of the admin panel: payment search by any id, party, state and time range
 * (keyset paging on the primary key, newest first) and the webhooks an order received. Every query
 * has a LIMIT.
 */
import { idAt } from '../../domain/ids.js';
import type { Db } from '../db.js';

export type PaymentSearch = Readonly<{
  paymentId?: string | undefined;
  orderId?: string | undefined;
  buyerId?: string | undefined;
  sellerId?: string | undefined;
  state?: string | undefined;
  /** Created at or after. */
  createdFrom?: Date | undefined;
  /** Created at or before. */
  createdTo?: Date | undefined;
  /** Keyset cursor: only payments with a smaller id (older). */
  beforeId?: string | undefined;
  limit: number;
}>;

export type PaymentSummary = Readonly<{
  id: string;
  buyerId: string;
  state: string;
  currency: string;
  amountMinor: bigint;
  ordersTotal: number;
  ordersSucceeded: number;
  ordersFailed: number;
  failureReason: string | undefined;
  createdAt: Date;
  updatedAt: Date;
}>;

/**
 * Payments matching every given filter, newest first. The time range becomes an id range (ids
 * start with their creation time), so it uses the primary key instead of a created_at scan.
 */
export async function searchPayments(db: Db, search: PaymentSearch): Promise<PaymentSummary[]> {
  let query = db.selectFrom('payment').selectAll().orderBy('id', 'desc').limit(search.limit);
  if (search.paymentId !== undefined) query = query.where('id', '=', search.paymentId);
  if (search.orderId !== undefined) {
    const orderId = search.orderId;
    query = query.where('id', 'in', (eb) =>
      eb.selectFrom('payment_order').select('payment_id').where('id', '=', orderId),
    );
  }
  if (search.sellerId !== undefined) {
    const sellerId = search.sellerId;
    query = query.where('id', 'in', (eb) =>
      eb.selectFrom('payment_order').select('payment_id').where('seller_id', '=', sellerId),
    );
  }
  if (search.buyerId !== undefined) query = query.where('buyer_id', '=', search.buyerId);
  if (search.state !== undefined) query = query.where('state', '=', search.state);
  if (search.createdFrom !== undefined) {
    query = query.where('id', '>=', idAt('payment', search.createdFrom.getTime()));
  }
  if (search.createdTo !== undefined) {
    query = query.where('id', '<', idAt('payment', search.createdTo.getTime() + 1));
  }
  if (search.beforeId !== undefined) query = query.where('id', '<', search.beforeId);
  const rows = await query.execute();
  return rows.map((row) => ({
    id: row.id,
    buyerId: row.buyer_id,
    state: row.state,
    currency: row.currency,
    amountMinor: BigInt(row.amount_minor),
    ordersTotal: row.orders_total,
    ordersSucceeded: row.orders_succeeded,
    ordersFailed: row.orders_failed,
    failureReason: row.failure_reason ?? undefined,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  }));
}

export type ReceivedWebhook = Readonly<{
  source: string;
  eventId: string;
  orderId: string;
  receivedAt: Date;
}>;

/** Webhooks recorded in the inbox for these orders (inbox_order index), oldest first. */
export async function webhooksOfOrders(
  db: Db,
  orderIds: readonly string[],
): Promise<ReceivedWebhook[]> {
  if (orderIds.length === 0) return [];
  const rows = await db
    .selectFrom('inbox')
    .selectAll()
    .where('order_id', 'in', orderIds)
    .orderBy('received_at')
    .limit(1_000)
    .execute();
  return rows.map((row) => ({
    source: row.source,
    eventId: row.event_id,
    orderId: row.order_id,
    receivedAt: row.received_at,
  }));
}
