/**
 * Payment orders and their transitions. `persistTransition` is the single write path of an
 * order's state: one UPDATE guarded by `version`, the transition's history row, the payment's
 * aggregate state, and the ledger/wallet effects, all inside the caller's transaction.
 */
import { sql } from 'kysely';
import { isCurrencyCode } from '../../domain/money.js';
import {
  isOrderState,
  isTerminal,
  ORDER_STATE,
  type PaymentOrder,
} from '../../domain/payment-order.js';
import type { Db } from '../db.js';
import type { PaymentOrderRow } from '../schema.js';
import type { Trx } from '../transaction.js';

export function toPaymentOrder(row: PaymentOrderRow): PaymentOrder {
  if (!isOrderState(row.state)) throw new Error(`order ${row.id} has unknown state ${row.state}`);
  if (!isCurrencyCode(row.currency))
    throw new Error(`order ${row.id} has currency ${row.currency}`);
  return {
    id: row.id,
    paymentId: row.payment_id,
    sellerId: row.seller_id,
    amountMinor: BigInt(row.amount_minor),
    currency: row.currency,
    state: row.state,
    version: BigInt(row.version),
    pspToken: row.psp_token ?? undefined,
    checkoutUrl: row.checkout_url ?? undefined,
    pspReference: row.psp_reference ?? undefined,
    failureReason: row.failure_reason ?? undefined,
    attempts: row.attempts,
    reviewReason: row.review_reason ?? undefined,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export async function findPaymentOrder(
  db: Db | Trx,
  orderId: string,
): Promise<PaymentOrder | undefined> {
  const row = await db
    .selectFrom('payment_order')
    .selectAll()
    .where('id', '=', orderId)
    .executeTakeFirst();
  return row === undefined ? undefined : toPaymentOrder(row);
}

export async function findPaymentOrders(
  db: Db | Trx,
  paymentIds: readonly string[],
): Promise<PaymentOrder[]> {
  if (paymentIds.length === 0) return [];
  const rows = await db
    .selectFrom('payment_order')
    .selectAll()
    .where('payment_id', 'in', paymentIds)
    .orderBy('payment_id')
    .orderBy('seq')
    .execute();
  return rows.map(toPaymentOrder);
}

/** Serialises an event for the history table: bigints become strings. */
/** What caused a transition: any event with a type; the rest is kept as its detail. */
export type TransitionCause = Readonly<{ type: string }>;

function eventDetail(event: TransitionCause): string {
  return JSON.stringify(event, (_key, value: unknown) =>
    typeof value === 'bigint' ? value.toString() : value,
  );
}

export type PersistResult = 'persisted' | 'stale';

/**
 * Writes `next` over `previous` if nobody else moved the order since it was read (the version
 * check). Returns 'stale' and writes nothing when the version no longer matches.
 */
export async function persistTransition(
  trx: Trx,
  input: { previous: PaymentOrder; next: PaymentOrder; event: TransitionCause; now: Date },
): Promise<PersistResult> {
  const { previous, next, event, now } = input;
  const result = await trx
    .updateTable('payment_order')
    .set({
      state: next.state,
      psp_token: next.pspToken ?? null,
      checkout_url: next.checkoutUrl ?? null,
      psp_reference: next.pspReference ?? null,
      failure_reason: next.failureReason ?? null,
      attempts: next.attempts,
      review_reason: next.reviewReason ?? null,
      updated_at: now,
      version: sql<string>`version + 1`,
    })
    .where('id', '=', previous.id)
    .where('version', '=', previous.version.toString())
    .executeTakeFirst();
  if (result.numUpdatedRows !== 1n) return 'stale';

  await trx
    .insertInto('payment_order_transition')
    .values({
      order_id: previous.id,
      payment_id: previous.paymentId,
      version: (previous.version + 1n).toString(),
      from_state: previous.state,
      to_state: next.state,
      event_type: event.type,
      detail: eventDetail(event),
      created_at: now,
    })
    .execute();

  if (previous.state === ORDER_STATE.notStarted && next.state === ORDER_STATE.executing) {
    await trx
      .updateTable('payment')
      .set({ state: 'EXECUTING', updated_at: now, version: sql<string>`version + 1` })
      .where('id', '=', previous.paymentId)
      .where('state', '=', 'NOT_STARTED')
      .execute();
  } else if (!isTerminal(previous.state) && isTerminal(next.state)) {
    await settleIntoPayment(trx, previous.paymentId, next.state === ORDER_STATE.succeeded, now);
  }
  return 'persisted';
}

/**
 * Counts one more terminal order into its payment and derives the payment's state. The state is
 * assigned first, from the old counters plus this order, so the statement means the same under
 * MySQL's left-to-right assignment and under standard simultaneous assignment.
 */
async function settleIntoPayment(trx: Trx, paymentId: string, succeeded: boolean, now: Date) {
  const s = succeeded ? 1 : 0;
  const f = succeeded ? 0 : 1;
  await sql`
    UPDATE payment SET
      state = CASE
        WHEN orders_succeeded + orders_failed + 1 < orders_total THEN 'EXECUTING'
        WHEN orders_failed + ${f} = 0 THEN 'SUCCEEDED'
        WHEN orders_succeeded + ${s} = 0 THEN 'FAILED'
        ELSE 'PARTIALLY_SUCCEEDED' END,
      orders_succeeded = orders_succeeded + ${s},
      orders_failed = orders_failed + ${f},
      version = version + 1,
      updated_at = ${now}
    WHERE id = ${paymentId}`.execute(trx);
}

export type TransitionRecord = Readonly<{
  orderId: string;
  version: bigint;
  fromState: string;
  toState: string;
  eventType: string;
  detail: string;
  createdAt: Date;
}>;

export async function listTransitions(db: Db, paymentId: string): Promise<TransitionRecord[]> {
  const rows = await db
    .selectFrom('payment_order_transition')
    .selectAll()
    .where('payment_id', '=', paymentId)
    .orderBy('id')
    .limit(10_000)
    .execute();
  return rows.map((row) => ({
    orderId: row.order_id,
    version: BigInt(row.version),
    fromState: row.from_state,
    toState: row.to_state,
    eventType: row.event_type,
    detail: row.detail,
    createdAt: row.created_at,
  }));
}
