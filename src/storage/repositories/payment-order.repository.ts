/**
 * Payment orders and their transitions. `persistTransition` is the single write path of an
 * order's state: one UPDATE guarded by `version`, the transition's history row, the payment's
 * aggregate state, and the ledger/wallet effects, all inside the caller's transaction.
 */
import { sql, type CompiledQuery, type Insertable } from 'kysely';
import { isCurrencyCode } from '../../domain/money.js';
import {
  isOrderState,
  isTerminal,
  ORDER_STATE,
  type PaymentOrder,
} from '../../domain/payment-order.js';
import type { Db } from '../db.js';
import type { PaymentOrderRow, PaymentOrderTransitionTable } from '../schema.js';
import { caseOfId } from '../sql.js';
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

/** Many orders by id with one query; absent ids are absent from the map. */
export async function findPaymentOrdersById(
  db: Db | Trx,
  orderIds: readonly string[],
): Promise<Map<string, PaymentOrder>> {
  if (orderIds.length === 0) return new Map();
  const rows = await db
    .selectFrom('payment_order')
    .selectAll()
    .where('id', 'in', [...new Set(orderIds)])
    .execute();
  return new Map(rows.map((row) => [row.id, toPaymentOrder(row)]));
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

/** What caused a transition: any event with a type; the rest is kept as its detail. */
export type TransitionCause = Readonly<{ type: string }>;

/** Serialises an event for the history table: bigints become strings. */
function eventDetail(event: TransitionCause): string {
  return JSON.stringify(event, (_key, value: unknown) =>
    typeof value === 'bigint' ? value.toString() : value,
  );
}

/**
 * The history row of one transition: the order became `version` by moving from `fromState` to
 * `toState` on `eventType`; `detail` is JSON text. The creation's rows (version 0) and the
 * actor's both come from here.
 */
export function historyRow(
  order: Readonly<{ id: string; paymentId: string }>,
  change: Readonly<{
    version: bigint;
    fromState: string;
    toState: string;
    eventType: string;
    detail: string;
    at: Date;
  }>,
): Insertable<PaymentOrderTransitionTable> {
  return {
    order_id: order.id,
    payment_id: order.paymentId,
    version: change.version.toString(),
    from_state: change.fromState,
    to_state: change.toState,
    event_type: change.eventType,
    detail: change.detail,
    created_at: change.at,
  };
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
  const statements = transitionStatements(trx, [input]);
  const updated = await trx.executeQuery(statements.update);
  if (updated.numAffectedRows !== 1n) return 'stale';
  for (const statement of statements.rest) await trx.executeQuery(statement);
  return 'persisted';
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

export type TransitionInput = Readonly<{
  previous: PaymentOrder;
  next: PaymentOrder;
  event: TransitionCause;
  now: Date;
}>;

/**
 * Writes many orders' transitions in the caller's transaction with a handful of statements (group
 * commit), each still fenced by its version: the orders' rows are locked first (in id order, so
 * two batches cannot deadlock on them) and a write whose `previous.version` is no longer the
 * stored one is 'stale' and writes nothing, exactly as `persistTransition` would answer it. The
 * others are updated together; the UPDATE repeats the version check, and must hit exactly the
 * accepted rows. Results are in the order of `inputs`.
 */
export async function persistTransitions(
  trx: Trx,
  inputs: readonly TransitionInput[],
): Promise<PersistResult[]> {
  if (inputs.length === 0) return [];
  if (inputs.length === 1) return [await persistTransition(trx, inputs[0] as TransitionInput)];

  const ids = [...new Set(inputs.map((input) => input.previous.id))].sort();
  const locked = await trx
    .selectFrom('payment_order')
    .select(['id', 'version'])
    .where('id', 'in', ids)
    .orderBy('id')
    .forUpdate()
    .execute();
  const stored = new Map(locked.map((row) => [row.id, BigInt(row.version)]));
  const results: PersistResult[] = [];
  const accepted: TransitionInput[] = [];
  for (const input of inputs) {
    const version = stored.get(input.previous.id);
    if (version === undefined || version !== input.previous.version) {
      results.push('stale');
      continue;
    }
    // A second write of the same order in this batch must see the first one's version.
    stored.set(input.previous.id, version + 1n);
    accepted.push(input);
    results.push('persisted');
  }
  if (accepted.length === 0) return results;

  const statements = transitionStatements(trx, accepted);
  const updated = await trx.executeQuery(statements.update);
  if (updated.numAffectedRows !== BigInt(accepted.length)) {
    // The rows are locked and their versions were checked above: this cannot happen unless the
    // batch holds the same order twice, which the version bookkeeping above already excludes.
    throw new Error(
      `batched transition updated ${updated.numAffectedRows} rows instead of ${accepted.length}`,
    );
  }
  for (const statement of statements.rest) await trx.executeQuery(statement);
  return results;
}

/**
 * The statements that write transitions of distinct orders, built but not run (a caller may send
 * them in one round trip): `update` moves every order whose stored version is still its
 * `previous.version` (it must hit all of them, or some were stale), `rest` writes the history
 * rows and the payments' aggregate states.
 */
export function transitionStatements(
  db: Db | Trx,
  accepted: readonly TransitionInput[],
): { update: CompiledQuery; rest: CompiledQuery[] } {
  const byId = (pick: (input: TransitionInput) => unknown) =>
    caseOfId(accepted, (input) => input.previous.id, pick);
  const update = sql`
    UPDATE payment_order SET
      state = ${byId((input) => input.next.state)},
      psp_token = ${byId((input) => input.next.pspToken ?? null)},
      checkout_url = ${byId((input) => input.next.checkoutUrl ?? null)},
      psp_reference = ${byId((input) => input.next.pspReference ?? null)},
      failure_reason = ${byId((input) => input.next.failureReason ?? null)},
      attempts = ${byId((input) => input.next.attempts)},
      review_reason = ${byId((input) => input.next.reviewReason ?? null)},
      updated_at = ${byId((input) => input.now)},
      version = version + 1
    WHERE id IN (${sql.join(accepted.map((input) => input.previous.id))})
      AND version = ${byId((input) => input.previous.version.toString())}`.compile(db);

  const rest: CompiledQuery[] = [
    db
      .insertInto('payment_order_transition')
      .values(
        accepted.map((input) =>
          historyRow(input.previous, {
            version: input.previous.version + 1n,
            fromState: input.previous.state,
            toState: input.next.state,
            eventType: input.event.type,
            detail: eventDetail(input.event),
            at: input.now,
          }),
        ),
      )
      .compile(),
  ];

  const latest = new Date(Math.max(...accepted.map((input) => input.now.getTime())));
  const started = [
    ...new Set(
      accepted
        .filter(
          (input) =>
            input.previous.state === ORDER_STATE.notStarted &&
            input.next.state === ORDER_STATE.executing,
        )
        .map((input) => input.previous.paymentId),
    ),
  ].sort();
  if (started.length > 0) {
    rest.push(
      db
        .updateTable('payment')
        .set({ state: 'EXECUTING', updated_at: latest, version: sql<string>`version + 1` })
        .where('id', 'in', started)
        .where('state', '=', 'NOT_STARTED')
        .compile(),
    );
  }

  const settled = new Map<string, { succeeded: number; failed: number }>();
  for (const input of accepted) {
    if (isTerminal(input.previous.state) || !isTerminal(input.next.state)) continue;
    const counts = settled.get(input.previous.paymentId) ?? { succeeded: 0, failed: 0 };
    if (input.next.state === ORDER_STATE.succeeded) counts.succeeded += 1;
    else counts.failed += 1;
    settled.set(input.previous.paymentId, counts);
  }
  if (settled.size > 0) rest.push(settleIntoPayments(db, settled, latest));
  return { update, rest };
}

/**
 * `settleIntoPayment` for many payments in one statement: each payment counts its newly terminal
 * orders (s succeeded, f failed) and derives its state from the old counters plus these, the
 * state being assigned first for the same reason as there.
 */
function settleIntoPayments(
  db: Db | Trx,
  settled: ReadonlyMap<string, { succeeded: number; failed: number }>,
  now: Date,
): CompiledQuery {
  const entries = [...settled.entries()].sort(([a], [b]) => (a < b ? -1 : 1));
  const byId = (pick: (counts: { succeeded: number; failed: number }) => number) =>
    caseOfId(
      entries,
      ([id]) => id,
      ([, counts]) => pick(counts),
    );
  const s = byId((counts) => counts.succeeded);
  const f = byId((counts) => counts.failed);
  return sql`
    UPDATE payment SET
      state = CASE
        WHEN orders_succeeded + orders_failed + ${s} + ${f} < orders_total THEN 'EXECUTING'
        WHEN orders_failed + ${f} = 0 THEN 'SUCCEEDED'
        WHEN orders_succeeded + ${s} = 0 THEN 'FAILED'
        ELSE 'PARTIALLY_SUCCEEDED' END,
      orders_succeeded = orders_succeeded + ${s},
      orders_failed = orders_failed + ${f},
      version = version + 1,
      updated_at = ${now}
    WHERE id IN (${sql.join(entries.map(([id]) => id))})`.compile(db);
}
