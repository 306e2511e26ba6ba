/**
 * The promise, checked after a chaos run or a crash test: nobody is charged twice, no money is
 * lost or invented, no order is lost. `observe()` reads the facts (Settle's tables directly, the
 * dead letters, and the PSP mock's OWN charge and payment records, never Settle's view of them);
 * `evaluate()` is a pure function from those facts to the outcome counts and a list of checks, so
 * it can be tested on made-up facts.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { TERMINAL_STATES } from '../domain/payment-order.js';
import { PaymentStatus, type PspServiceClient } from '../grpc/generated/settle/psp/v1/psp.js';
import type { Db } from '../storage/db.js';
import {
  trialBalanceByCurrency,
  unbalancedLedgerTransactions,
  ACCOUNT,
  SELLER_PAYABLE_PREFIX,
  ordersNotMatchingLedger,
  walletsNotMatchingLedger,
} from '../storage/repositories/ledger.repository.js';
import { callUnary, isRetryableStatus } from './rpc.js';

/** Rows read per table at most; a chaos run is far smaller. */
const ROWS_MAX = 200_000;
/** Dead letters read at most. */
const DEAD_LETTERS_MAX = 50_000;
/** Offenders quoted per failed check. */
const EXAMPLES_MAX = 5;
/** GetPaymentStatus calls in flight at once, and tries of one, while observing. */
const PSP_READS_IN_FLIGHT_MAX = 16;
const PSP_READ_TRIES_MAX = 5;

/** The order states as read from the database are plain strings. */
const TERMINAL: ReadonlySet<string> = TERMINAL_STATES;

export type ObservedOrder = Readonly<{
  id: string;
  paymentId: string;
  sellerId: string;
  state: string;
  amountMinor: bigint;
  currency: string;
  pspReference: string | null;
  failureReason: string | null;
  reviewReason: string | null;
}>;

export type ObservedPayment = Readonly<{
  id: string;
  /** The idempotency key of CreatePayment: one payment per (buyer, request id) at most. */
  buyerId: string;
  requestId: string;
  state: string;
  /** The payment's total: the sum of its orders' amounts. */
  amountMinor: bigint;
  ordersTotal: number;
  ordersSucceeded: number;
  ordersFailed: number;
}>;

export type ObservedCharge = Readonly<{
  nonce: string;
  pspReference: string;
  amountMinor: bigint;
  currency: string;
}>;

/** The PSP mock's payment states (its own records). */
export type PspPaymentState = 'REGISTERED' | 'SUCCEEDED' | 'DECLINED' | 'CANCELLED';

/** Net credit of one account by an order's ledger transactions, of any kind. */
export type ObservedCredit = Readonly<{ account: string; creditMinor: bigint }>;

/**
 * A dead letter. OPEN and DISCARDED ones account for an unfinished order (an operator has it or
 * closed it); a REPLAYED one does not, since its command went back to the order.
 */
export type DeadLetterRow = Readonly<{ orderId: string | null; reason: string; state: string }>;

export type Observed = Readonly<{
  orders: readonly ObservedOrder[];
  payments: readonly ObservedPayment[];
  /**
   * PAYMENT ledger transactions per order: how many, their total and their currency (the highest
   * when there are several; the unique (order, kind) key allows one).
   */
  ledgerByOrder: ReadonlyMap<string, { count: number; amountMinor: bigint; currency: string }>;
  /**
   * Per order, the seller_payable accounts its ledger transactions of any kind credit (net): only a
   * PAYMENT may credit a seller, so a second transaction of another kind is money invented.
   */
  sellerCreditsByOrder: ReadonlyMap<string, readonly ObservedCredit[]>;
  unbalancedTransactions: readonly string[];
  /** Currencies whose trial balance is not zero, with the balance. */
  trialBalanceNonZero: readonly string[];
  walletMismatches: readonly string[];
  /**
   * Ledger rows astray, each fault under one case (`ordersNotMatchingLedger`): money moved under a
   * name that hides it from the per-order checks, which read only the orders that exist.
   */
  ledgerAstray: Readonly<{
    /** Transactions, of any kind, naming an order that does not exist. */
    transactionsOfUnknownOrders: readonly string[];
    /** Entries naming a transaction that does not exist. */
    entriesOfUnknownTransactions: readonly string[];
    /** Entries of another order or currency than their transaction. */
    entriesNotOfTheirTransaction: readonly string[];
  }>;
  outboxLeft: number;
  /** From the PSP mock's own records (ListCharges). */
  charges: readonly ObservedCharge[];
  /** The PSP mock's payment per order id (its nonce), from GetPaymentStatus; absent: none. */
  pspPayments: ReadonlyMap<string, PspPaymentState>;
  deadLetters: readonly DeadLetterRow[];
}>;

/** What the driver of the run knows (the checks that need the outside view). */
export type DriverFacts = Readonly<{
  paymentsRequested: number;
  /** Payment ids the API returned. */
  paymentsAcknowledged: readonly string[];
  /** The requests behind them, where the driver knows them: each must have exactly one payment. */
  requestsAcknowledged: ReadonlyArray<
    Readonly<{ buyerId: string; requestId: string; paymentId: string }>
  >;
  /** Orders the workload never meant to pay: the only ones that may end EXPIRED. */
  abandonedOrders: readonly string[];
  /**
   * The run replayed its open dead letters and waited for the orders again (or it has no dead
   * letters to wait for): a dead letter no longer excuses an order that is not final.
   */
  ordersMustBeFinal: boolean;
  forgedWebhooksSent: number;
  /** Forged webhooks answered with anything but 400. */
  forgedWebhooksAccepted: number;
  /** Orders sent a signed `payment.declined` after they SUCCEEDED: they must stay SUCCEEDED. */
  lateDeclinedOrders: readonly string[];
  /** Signed (genuine) webhooks answered with anything but 200 or 503. */
  genuineWebhooksRefused: readonly string[];
  /** Injected faults per kind, and the kinds that were planned. */
  faultsInjected: Readonly<Record<string, number>>;
  faultKindsPlanned: readonly string[];
}>;

export type Check = Readonly<{
  name: string;
  value: string;
  expected: string;
  ok: boolean;
  /** A few offenders when the check fails. */
  examples: readonly string[];
}>;

export type Outcome = Readonly<{
  paymentsRequested: number;
  paymentsAcknowledged: number;
  paymentsInDb: number;
  orders: number;
  byState: Readonly<Record<string, number>>;
  /** Why FAILED orders failed (decline codes and the like). */
  failureReasons: Readonly<Record<string, number>>;
  inDlqNotTerminal: number;
  flaggedForReview: number;
  deadLetterEntries: number;
  deadLetterReasons: Readonly<Record<string, number>>;
  deadLetterStates: Readonly<Record<string, number>>;
  charges: number;
}>;

export type Evaluation = Readonly<{ outcome: Outcome; checks: readonly Check[]; ok: boolean }>;

/** Reads every fact the checks need. */
export async function observe(sources: { db: Db; psp: PspServiceClient }): Promise<Observed> {
  const { db } = sources;
  const orders = await db
    .selectFrom('payment_order')
    .select([
      'id',
      'payment_id',
      'seller_id',
      'state',
      'amount_minor',
      'currency',
      'psp_reference',
      'failure_reason',
      'review_reason',
    ])
    .limit(ROWS_MAX)
    .execute();
  const payments = await db
    .selectFrom('payment')
    .select([
      'id',
      'buyer_id',
      'request_id',
      'state',
      'amount_minor',
      'orders_total',
      'orders_succeeded',
      'orders_failed',
    ])
    .limit(ROWS_MAX)
    .execute();
  const ledger = await sql<{ order_id: string; n: string; amount: string; currency: string }>`
    SELECT order_id, COUNT(*) AS n, SUM(amount_minor) AS amount, MAX(currency) AS currency
    FROM ledger_transaction WHERE kind = 'PAYMENT' GROUP BY order_id`.execute(db);
  const credits = await sql<{ order_id: string; account: string; credit: string }>`
    SELECT order_id, account, SUM(credit_minor) - SUM(debit_minor) AS credit
    FROM ledger_entry WHERE account LIKE ${`${SELLER_PAYABLE_PREFIX}%`}
    GROUP BY order_id, account`.execute(db);
  const sellerCreditsByOrder = new Map<string, ObservedCredit[]>();
  for (const row of credits.rows) {
    const list = sellerCreditsByOrder.get(row.order_id) ?? [];
    list.push({ account: row.account, creditMinor: BigInt(row.credit) });
    sellerCreditsByOrder.set(row.order_id, list);
  }
  const outbox = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`.execute(db);
  const response = await callUnary(
    sources.psp.listCharges.bind(sources.psp),
    { nonce: '' },
    30_000,
  );
  const deadLetters = await readDeadLetters(db);
  const pspPayments = await readPspPayments(
    sources.psp,
    orders.map((order) => order.id),
  );
  return {
    orders: orders.map((row) => ({
      id: row.id,
      paymentId: row.payment_id,
      sellerId: row.seller_id,
      state: row.state,
      amountMinor: BigInt(row.amount_minor),
      currency: row.currency,
      pspReference: row.psp_reference,
      failureReason: row.failure_reason,
      reviewReason: row.review_reason,
    })),
    payments: payments.map((row) => ({
      id: row.id,
      buyerId: row.buyer_id,
      requestId: row.request_id,
      state: row.state,
      amountMinor: BigInt(row.amount_minor),
      ordersTotal: row.orders_total,
      ordersSucceeded: row.orders_succeeded,
      ordersFailed: row.orders_failed,
    })),
    ledgerByOrder: new Map(
      ledger.rows.map((row) => [
        row.order_id,
        { count: Number(row.n), amountMinor: BigInt(row.amount), currency: row.currency },
      ]),
    ),
    sellerCreditsByOrder,
    unbalancedTransactions: await unbalancedLedgerTransactions(db),
    trialBalanceNonZero: (await trialBalanceByCurrency(db))
      .filter((total) => total.balanceMinor !== 0n)
      .map((total) => `${total.currency} ${total.balanceMinor}`),
    ledgerAstray: await ledgerAstray(db),
    walletMismatches: (await walletsNotMatchingLedger(db)).map(
      (w) =>
        `${w.sellerId}: wallet ${w.walletMinor} ${w.walletCurrency || '-'}, ` +
        `ledger ${w.ledgerMinor} ${w.ledgerCurrencies || '-'}`,
    ),
    outboxLeft: Number(outbox.rows[0]?.n ?? 0),
    charges: response.charges.map((charge) => ({
      nonce: charge.nonce,
      pspReference: charge.pspReference,
      amountMinor: charge.amountMinor,
      currency: charge.currencyCode,
    })),
    pspPayments,
    deadLetters,
  };
}

/** The rows of no order `observe` reads, by case. */
async function ledgerAstray(db: Db): Promise<Observed['ledgerAstray']> {
  const booking = await ordersNotMatchingLedger(db);
  return {
    transactionsOfUnknownOrders: booking.transactionsOfUnknownOrders,
    entriesOfUnknownTransactions: booking.entriesOfUnknownTransactions,
    entriesNotOfTheirTransaction: booking.entriesNotOfTheirTransaction,
  };
}

const PSP_STATE_OF: Readonly<Partial<Record<PaymentStatus, PspPaymentState>>> = {
  [PaymentStatus.PAYMENT_STATUS_REGISTERED]: 'REGISTERED',
  [PaymentStatus.PAYMENT_STATUS_SUCCEEDED]: 'SUCCEEDED',
  [PaymentStatus.PAYMENT_STATUS_DECLINED]: 'DECLINED',
  [PaymentStatus.PAYMENT_STATUS_CANCELLED]: 'CANCELLED',
};

/**
 * The PSP mock's payment of each order, asked one order at a time (GetPaymentStatus; NOT_FOUND:
 * the order never reached the PSP), a bounded number at once, retrying a retryable answer.
 */
async function readPspPayments(
  psp: PspServiceClient,
  orderIds: readonly string[],
): Promise<Map<string, PspPaymentState>> {
  const found = new Map<string, PspPaymentState>();
  const read = async (nonce: string): Promise<void> => {
    for (let tries = 1; ; tries += 1) {
      try {
        const answer = await callUnary(psp.getPaymentStatus.bind(psp), { nonce }, 10_000);
        const state = PSP_STATE_OF[answer.status];
        if (state === undefined) throw new Error(`PSP payment ${nonce}: status ${answer.status}`);
        found.set(nonce, state);
        return;
      } catch (error) {
        if ((error as { code?: unknown }).code === grpc.status.NOT_FOUND) return;
        if (!isRetryableStatus(error) || tries >= PSP_READ_TRIES_MAX) throw error;
        await new Promise((resolve) => setTimeout(resolve, 200 * tries));
      }
    }
  };
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(PSP_READS_IN_FLIGHT_MAX, orderIds.length) }, async () => {
      while (next < orderIds.length) {
        const nonce = orderIds[next] ?? '';
        next += 1;
        await read(nonce);
      }
    }),
  );
  return found;
}

/** The dead letters, from the `dead_letter` table (src/storage/migrations/0002-failure-handling.ts). */
export async function readDeadLetters(db: Db): Promise<DeadLetterRow[]> {
  const rows = await db
    .selectFrom('dead_letter')
    .select(['order_id', 'reason', 'state'])
    .orderBy('id')
    .limit(DEAD_LETTERS_MAX)
    .execute();
  return rows.map((row) => ({ orderId: row.order_id, reason: row.reason, state: row.state }));
}

/** Orders with a dead letter an operator holds (OPEN) or closed (DISCARDED). */
export function ordersInDlq(deadLetters: readonly DeadLetterRow[]): Set<string | null> {
  return new Set(
    deadLetters.filter((entry) => entry.state !== 'REPLAYED').map((entry) => entry.orderId),
  );
}

/** Orders that are not terminal and not held in the DLQ: nothing will ever finish them. */
export function lostOrders<Order extends Readonly<{ id: string; state: string }>>(observed: {
  orders: readonly Order[];
  deadLetters: readonly DeadLetterRow[];
}): Order[] {
  const dead = ordersInDlq(observed.deadLetters);
  return observed.orders.filter((order) => !TERMINAL.has(order.state) && !dead.has(order.id));
}

function requestKey(request: Readonly<{ buyerId: string; requestId: string }>): string {
  return `${request.buyerId}/${request.requestId}`;
}

export function evaluate(observed: Observed, driver: DriverFacts): Evaluation {
  const checks: Check[] = [];
  const add = (
    name: string,
    value: number | string,
    expected: string,
    ok: boolean,
    examples: readonly string[] = [],
  ) =>
    checks.push({
      name,
      value: String(value),
      expected,
      ok,
      examples: ok ? [] : examples.slice(0, EXAMPLES_MAX),
    });

  const orderById = new Map(observed.orders.map((order) => [order.id, order]));
  const chargesByNonce = new Map<string, ObservedCharge[]>();
  for (const charge of observed.charges) {
    chargesByNonce.set(charge.nonce, [...(chargesByNonce.get(charge.nonce) ?? []), charge]);
  }
  const dead = ordersInDlq(observed.deadLetters);

  // Nobody is charged twice.
  const twice = [...chargesByNonce].filter(([, charges]) => charges.length > 1);
  const maxPerOrder = Math.max(0, ...[...chargesByNonce.values()].map((c) => c.length));
  add(
    "PSP charges per order, max (PSP's own records)",
    maxPerOrder,
    '<= 1',
    twice.length === 0,
    twice.map(([nonce, charges]) => `${nonce}: ${charges.length} charges`),
  );

  // Every charge is booked or flagged: money taken is never silently dropped.
  const unbooked = observed.charges.filter((charge) => {
    const order = orderById.get(charge.nonce);
    if (order === undefined) return true;
    if (order.reviewReason !== null) return false;
    return order.state !== 'SUCCEEDED' || order.pspReference !== charge.pspReference;
  });
  add(
    'PSP charges not booked to a SUCCEEDED order nor flagged for review',
    unbooked.length,
    '0',
    unbooked.length === 0,
    unbooked.map((c) => {
      const order = orderById.get(c.nonce);
      return `${c.nonce} (${c.pspReference}): order ${order ? `${order.state}, ref ${order.pspReference ?? '-'}` : 'unknown'}`;
    }),
  );

  // No money is invented: a SUCCEEDED order was really charged, for its amount and currency.
  const uncharged = observed.orders.filter((order) => {
    if (order.state !== 'SUCCEEDED') return false;
    const charges = chargesByNonce.get(order.id) ?? [];
    return !charges.some(
      (c) =>
        c.pspReference === order.pspReference &&
        c.amountMinor === order.amountMinor &&
        c.currency === order.currency,
    );
  });
  add(
    'SUCCEEDED orders without a matching PSP charge',
    uncharged.length,
    '0',
    uncharged.length === 0,
    uncharged.map((o) => `${o.id} (ref ${o.pspReference ?? '-'})`),
  );

  // Settle's final state agrees with the PSP's own payment. A charge Settle flagged for review
  // (it came after the order failed or expired) is an operator's case, not a disagreement.
  const disagreeing = observed.orders.filter((order) => {
    const psp = observed.pspPayments.get(order.id);
    if (psp === 'SUCCEEDED' && order.reviewReason !== null) return false;
    switch (order.state) {
      case 'SUCCEEDED':
        return psp !== 'SUCCEEDED';
      case 'FAILED':
        return psp !== undefined && psp !== 'DECLINED';
      case 'EXPIRED':
        return psp !== undefined && psp !== 'CANCELLED';
      default:
        // Not final: the finality checks speak for it.
        return false;
    }
  });
  add(
    "final orders whose state disagrees with the PSP's payment",
    disagreeing.length,
    '0',
    disagreeing.length === 0,
    disagreeing.map((o) => `${o.id} ${o.state}: PSP ${observed.pspPayments.get(o.id) ?? 'none'}`),
  );

  // Exactly one ledger transaction per SUCCEEDED order, for its amount and currency; none for the
  // others.
  const badLedger = observed.orders.filter((order) => {
    const booked = observed.ledgerByOrder.get(order.id);
    if (order.state === 'SUCCEEDED') {
      return (
        booked === undefined ||
        booked.count !== 1 ||
        booked.amountMinor !== order.amountMinor ||
        booked.currency !== order.currency
      );
    }
    return booked !== undefined;
  });
  add(
    'orders whose ledger transactions are not exactly one per SUCCEEDED order',
    badLedger.length,
    '0',
    badLedger.length === 0,
    badLedger.map(
      (o) => `${o.id} ${o.state}: ${observed.ledgerByOrder.get(o.id)?.count ?? 0} transaction(s)`,
    ),
  );
  // The money of a SUCCEEDED order goes to its own seller, all of it and nowhere else.
  const misdirected = observed.orders.filter((order) => {
    if (order.state !== 'SUCCEEDED') return false;
    const credits = observed.sellerCreditsByOrder.get(order.id) ?? [];
    const [credit, ...others] = credits.filter((c) => c.creditMinor !== 0n);
    return (
      credit === undefined ||
      others.length > 0 ||
      credit.account !== ACCOUNT.sellerPayable(order.sellerId) ||
      credit.creditMinor !== order.amountMinor
    );
  });
  add(
    "SUCCEEDED orders not credited to their seller's payable account for their amount",
    misdirected.length,
    '0',
    misdirected.length === 0,
    misdirected.map((o) => {
      const credits = observed.sellerCreditsByOrder.get(o.id) ?? [];
      const got = credits.map((c) => `${c.account} ${c.creditMinor}`).join(', ') || 'nothing';
      return `${o.id} (${o.amountMinor} for ${ACCOUNT.sellerPayable(o.sellerId)}): ${got}`;
    }),
  );
  // Nor does a seller get money for an order that did not succeed, or that does not exist.
  const creditedUnpaid = observed.orders.filter(
    (order) =>
      order.state !== 'SUCCEEDED' &&
      (observed.sellerCreditsByOrder.get(order.id) ?? []).some((c) => c.creditMinor !== 0n),
  );
  add(
    'orders credited to a seller though not SUCCEEDED',
    creditedUnpaid.length,
    '0',
    creditedUnpaid.length === 0,
    creditedUnpaid.map((o) => {
      const credits = observed.sellerCreditsByOrder.get(o.id) ?? [];
      return `${o.id} ${o.state}: ${credits.map((c) => `${c.account} ${c.creditMinor}`).join(', ')}`;
    }),
  );
  // Rows of no order the checks above read. An entry of an unknown order is one of these three:
  // its transaction's order is unknown too, or it is not its transaction's, or that is unknown.
  const astray = observed.ledgerAstray;
  for (const [name, rows] of [
    ['ledger transactions of unknown orders', astray.transactionsOfUnknownOrders],
    ['ledger entries of no known transaction', astray.entriesOfUnknownTransactions],
    [
      'ledger entries of another order or currency than their transaction',
      astray.entriesNotOfTheirTransaction,
    ],
  ] as const) {
    add(name, rows.length, '0', rows.length === 0, rows);
  }

  add(
    'ledger transactions unbalanced',
    observed.unbalancedTransactions.length,
    '0',
    observed.unbalancedTransactions.length === 0,
    observed.unbalancedTransactions,
  );
  add(
    'trial balance (debits - credits) per currency',
    observed.trialBalanceNonZero.length === 0 ? '0' : observed.trialBalanceNonZero.join(', '),
    '0',
    observed.trialBalanceNonZero.length === 0,
    observed.trialBalanceNonZero,
  );
  add(
    'wallets != ledger sums',
    observed.walletMismatches.length,
    '0',
    observed.walletMismatches.length === 0,
    observed.walletMismatches,
  );

  // No order is lost.
  const lost = lostOrders(observed);
  add(
    'orders lost (not terminal and not held in the DLQ)',
    lost.length,
    '0',
    lost.length === 0,
    lost.map((o) => `${o.id} ${o.state}`),
  );
  if (driver.ordersMustBeFinal) {
    const unfinished = observed.orders.filter((order) => !TERMINAL.has(order.state));
    add(
      'orders not final after the dead letters were replayed',
      unfinished.length,
      '0',
      unfinished.length === 0,
      unfinished.map((o) => `${o.id} ${o.state}${dead.has(o.id) ? ' (dead letter)' : ''}`),
    );
  }

  // Only the orders nobody meant to pay may expire.
  const abandoned = new Set(driver.abandonedOrders);
  const expired = observed.orders.filter((order) => order.state === 'EXPIRED');
  const expiredMeantToPay = expired.filter((order) => !abandoned.has(order.id));
  add(
    'EXPIRED orders / orders never meant to be paid',
    `${expired.length} / ${abandoned.size}`,
    'only those',
    expiredMeantToPay.length === 0,
    expiredMeantToPay.map((o) => `${o.id}: meant to be paid`),
  );

  // No acknowledged payment is lost, and retries with the same request id made no duplicates.
  const inDb = new Set(observed.payments.map((p) => p.id));
  const missing = driver.paymentsAcknowledged.filter((id) => !inDb.has(id));
  add(
    'acknowledged payments missing from the database',
    missing.length,
    '0',
    missing.length === 0,
    missing,
  );
  add(
    'payments in the database / requested',
    `${observed.payments.length} / ${driver.paymentsRequested}`,
    '<= requested',
    observed.payments.length <= driver.paymentsRequested,
  );
  // Settle's own double-charge risk: two payments (each with its orders, each charged) for one
  // CreatePayment request retried with the same request id.
  const paymentsByRequest = new Map<string, string[]>();
  for (const payment of observed.payments) {
    const key = requestKey(payment);
    paymentsByRequest.set(key, [...(paymentsByRequest.get(key) ?? []), payment.id]);
  }
  const duplicated = [...paymentsByRequest].filter(([, ids]) => ids.length > 1);
  add(
    'payments per (buyer, request id), max',
    Math.max(0, ...[...paymentsByRequest.values()].map((ids) => ids.length)),
    '<= 1',
    duplicated.length === 0,
    duplicated.map(([key, ids]) => `${key}: ${ids.join(', ')}`),
  );
  const notOnce = driver.requestsAcknowledged.filter((request) => {
    const ids = paymentsByRequest.get(requestKey(request)) ?? [];
    return ids.length !== 1 || ids[0] !== request.paymentId;
  });
  add(
    'acknowledged requests without exactly their one payment',
    `${notOnce.length} of ${driver.requestsAcknowledged.length}`,
    '0',
    notOnce.length === 0,
    notOnce.map((r) => {
      const ids = paymentsByRequest.get(requestKey(r)) ?? [];
      return `${requestKey(r)} answered ${r.paymentId}: ${ids.join(', ') || 'no payment'}`;
    }),
  );

  // A payment's total, counters and state agree with its orders.
  const ordersByPayment = new Map<string, ObservedOrder[]>();
  for (const order of observed.orders) {
    ordersByPayment.set(order.paymentId, [...(ordersByPayment.get(order.paymentId) ?? []), order]);
  }
  const inconsistent = observed.payments.filter((payment) => {
    const orders = ordersByPayment.get(payment.id) ?? [];
    const succeeded = orders.filter((o) => o.state === 'SUCCEEDED').length;
    const failed = orders.filter((o) => o.state === 'FAILED' || o.state === 'EXPIRED').length;
    if (orders.length !== payment.ordersTotal) return true;
    const ordersMinor = orders.reduce((total, order) => total + order.amountMinor, 0n);
    if (ordersMinor !== payment.amountMinor) return true;
    if (payment.ordersSucceeded !== succeeded || payment.ordersFailed !== failed) return true;
    if (succeeded + failed < orders.length) return false;
    const expected =
      failed === 0 ? 'SUCCEEDED' : succeeded === 0 ? 'FAILED' : 'PARTIALLY_SUCCEEDED';
    return payment.state !== expected;
  });
  add(
    'payments whose state or counters disagree with their orders',
    inconsistent.length,
    '0',
    inconsistent.length === 0,
    inconsistent.map(
      (p) =>
        `${p.id} ${p.state} ${p.amountMinor} (${p.ordersSucceeded} ok / ${p.ordersFailed} ` +
        `failed of ${p.ordersTotal}; orders sum to ` +
        `${(ordersByPayment.get(p.id) ?? []).reduce((total, o) => total + o.amountMinor, 0n)})`,
    ),
  );

  add(
    'forged webhooks accepted',
    `${driver.forgedWebhooksAccepted} of ${driver.forgedWebhooksSent}`,
    '0',
    driver.forgedWebhooksAccepted === 0,
  );
  const flipped = driver.lateDeclinedOrders.filter((id) => {
    const order = orderById.get(id);
    return order === undefined || order.state !== 'SUCCEEDED' || order.reviewReason !== null;
  });
  add(
    'orders changed by a late payment.declined',
    `${flipped.length} of ${driver.lateDeclinedOrders.length}`,
    '0',
    flipped.length === 0,
    flipped.map((id) => `${id}: ${orderById.get(id)?.state ?? 'missing'}`),
  );
  add(
    'signed webhooks refused (not 200 or 503)',
    driver.genuineWebhooksRefused.length,
    '0',
    driver.genuineWebhooksRefused.length === 0,
    driver.genuineWebhooksRefused,
  );
  add('outbox rows not relayed', observed.outboxLeft, '0', observed.outboxLeft === 0);

  const missingKinds = driver.faultKindsPlanned.filter(
    (kind) => (driver.faultsInjected[kind] ?? 0) === 0,
  );
  add(
    'fault kinds injected',
    `${driver.faultKindsPlanned.length - missingKinds.length} / ${driver.faultKindsPlanned.length}`,
    'all',
    missingKinds.length === 0,
    missingKinds.map((kind) => `${kind}: never injected`),
  );

  const byState: Record<string, number> = {};
  const failureReasons: Record<string, number> = {};
  for (const order of observed.orders) {
    byState[order.state] = (byState[order.state] ?? 0) + 1;
    if (order.state === 'FAILED') {
      const reason = order.failureReason ?? 'unknown';
      failureReasons[reason] = (failureReasons[reason] ?? 0) + 1;
    }
  }
  const deadLetterReasons: Record<string, number> = {};
  const deadLetterStates: Record<string, number> = {};
  for (const entry of observed.deadLetters) {
    deadLetterReasons[entry.reason] = (deadLetterReasons[entry.reason] ?? 0) + 1;
    deadLetterStates[entry.state] = (deadLetterStates[entry.state] ?? 0) + 1;
  }
  const outcome: Outcome = {
    paymentsRequested: driver.paymentsRequested,
    paymentsAcknowledged: driver.paymentsAcknowledged.length,
    paymentsInDb: observed.payments.length,
    orders: observed.orders.length,
    byState,
    failureReasons,
    inDlqNotTerminal: observed.orders.filter((o) => !TERMINAL.has(o.state) && dead.has(o.id))
      .length,
    flaggedForReview: observed.orders.filter((o) => o.reviewReason !== null).length,
    deadLetterEntries: observed.deadLetters.length,
    deadLetterReasons,
    deadLetterStates,
    charges: observed.charges.length,
  };
  return { outcome, checks, ok: checks.every((check) => check.ok) };
}
