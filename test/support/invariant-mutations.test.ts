/**
 * Goal: the three invariant checkers (the tests' expectMoneyInvariants, the chaos demo's
 * observe() + evaluate(), the bench's checkInvariants) catch every violation they claim to catch,
 * however subtle. Method: a real PSP mock and Settle node pay two orders and decline a third; the
 * node stops and the rows are saved. Each case then restores them, corrupts them with a few direct
 * SQL writes that break exactly one invariant (by one minor unit, or so that totals still agree),
 * and runs all three checkers on the real databases. A checker that claims the invariant must
 * report it; the clean state must pass all three. Where a case says which lines the chaos report
 * fails, it fails exactly those: one fault is never reported twice under two names.
 */
import { sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluate, observe, type DriverFacts } from '../../src/chaos/invariants.js';
import { newId } from '../../src/domain/ids.js';
import { openDatabase, type Db } from '../../src/storage/db.js';
import { PaymentState, type Payment } from '../../src/grpc/generated/settle/v1/payment.js';
import { checkInvariants } from '../../bench/invariants.js';
import {
  CARD,
  call,
  expectMoneyInvariants,
  payOnHostedPage,
  startStack,
  waitFor,
  type Stack,
} from './harness.js';

type AnyDb = Kysely<Record<string, never>>;
type Checker = 'harness' | 'chaos' | 'bench';
type Fixture = Readonly<{
  /** Payment of orders a (paid) and b (paid); payment of order c (declined). */
  paid: string;
  declined: string;
  a: Order;
  b: Order;
  c: Order;
}>;
type Order = Readonly<{ id: string; sellerId: string; amountMinor: bigint; transactionId: string }>;

const SETTLE_TABLES = ['payment', 'payment_order', 'ledger_transaction', 'ledger_entry', 'wallet'];
const PSP_TABLES = ['psp_payment', 'psp_charge'];
/** 2^53 + 1: the first integer a JavaScript number cannot hold. */
const BEYOND_DOUBLE = 9_007_199_254_740_993n;
const INT64_MAX = 9_223_372_036_854_775_807n;

let stack: Stack;
let psp: { db: AnyDb; close: () => Promise<void> };
let settle: { db: Db; close: () => Promise<void> };
let fixture: Fixture;
let requests: DriverFacts['requestsAcknowledged'];

async function pay(orders: Array<[string, bigint]>, card: string): Promise<Payment> {
  const requestId = crypto.randomUUID();
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId,
    buyerId: 'buyer-mutations',
    currencyCode: 'USD',
    orders: orders.map(([sellerId, amountMinor]) => ({ sellerId, amountMinor })),
  });
  const payment = created.payment as Payment;
  requests = [...requests, { buyerId: 'buyer-mutations', requestId, paymentId: payment.paymentId }];
  for (const order of payment.orders) await payOnHostedPage(order.checkoutUrl, card);
  return waitFor(
    async () => {
      const { payment: now } = await call(stack.payments.getPayment.bind(stack.payments), {
        paymentId: payment.paymentId,
      });
      return now !== undefined &&
        [PaymentState.PAYMENT_STATE_SUCCEEDED, PaymentState.PAYMENT_STATE_FAILED].includes(
          now.state,
        )
        ? now
        : undefined;
    },
    { what: `payment ${payment.paymentId} to finish` },
  );
}

async function orderOf(orderId: string): Promise<Order> {
  const row = await sql<{ seller_id: string; amount_minor: string; transaction_id: string | null }>`
    SELECT o.seller_id, o.amount_minor, t.id AS transaction_id
    FROM payment_order o LEFT JOIN ledger_transaction t ON t.order_id = o.id
    WHERE o.id = ${orderId}`.execute(settle.db);
  const found = row.rows[0];
  if (found === undefined) throw new Error(`order ${orderId} not found`);
  return {
    id: orderId,
    sellerId: found.seller_id,
    amountMinor: BigInt(found.amount_minor),
    transactionId: found.transaction_id ?? '',
  };
}

async function saveTables(db: AnyDb, tables: readonly string[]): Promise<void> {
  for (const table of tables) {
    await sql`CREATE TABLE ${sql.table(`saved_${table}`)} LIKE ${sql.table(table)}`.execute(db);
    await sql`INSERT INTO ${sql.table(`saved_${table}`)} SELECT * FROM ${sql.table(table)}`.execute(
      db,
    );
  }
}

async function restoreTables(db: AnyDb, tables: readonly string[]): Promise<void> {
  for (const table of tables) {
    await sql`DELETE FROM ${sql.table(table)}`.execute(db);
    await sql`INSERT INTO ${sql.table(table)} SELECT * FROM ${sql.table(`saved_${table}`)}`.execute(
      db,
    );
  }
}

/** The names of the failed checks of each checker, on the databases as they are now. */
async function runCheckers(): Promise<Record<Checker, string[]>> {
  const harness: string[] = [];
  try {
    await expectMoneyInvariants(settle.db);
  } catch (error) {
    harness.push(String(error).split('\n')[0] ?? 'failed');
  }
  // A fact the PSP mock cannot read back (a charge in a currency it does not know) makes
  // observe() throw, and the chaos run fails with it: that is reporting it too.
  const observed = await observe({ db: settle.db, psp: stack.pspApi }).catch(
    (error: unknown) => new Error(`observe failed: ${String(error)}`),
  );
  const driver: DriverFacts = {
    paymentsRequested: 2,
    paymentsAcknowledged: [fixture.paid, fixture.declined],
    requestsAcknowledged: requests,
    abandonedOrders: [],
    ordersMustBeFinal: true,
    forgedWebhooksSent: 0,
    forgedWebhooksAccepted: 0,
    lateDeclinedOrders: [],
    genuineWebhooksRefused: [],
    faultsInjected: {},
    faultKindsPlanned: [],
  };
  const chaos =
    observed instanceof Error
      ? [observed.message]
      : evaluate(observed, driver)
          .checks.filter((check) => !check.ok)
          .map((check) => check.name);
  const bench = (
    await checkInvariants({
      mysqlUrl: stack.config.MYSQL_URL,
      pspMysqlUrl: stack.config.PSP_MYSQL_URL,
      expect: 'terminal',
      paymentsCreated: 2,
    })
  )
    .filter((check) => !check.ok)
    .map((check) => `${check.name}: ${check.detail}`);
  return { harness, chaos, bench };
}

type Mutation = Readonly<{
  name: string;
  /** The checkers that claim the broken invariant, so must report it. */
  claimedBy: readonly Checker[];
  /**
   * When set, exactly the lines the chaos report fails: one fault is one line per case it breaks,
   * never the same case under two names.
   */
  chaosReports?: readonly string[];
  apply: (settle: AnyDb, psp: AnyDb, f: Fixture) => Promise<void>;
}>;

function entry(
  transactionId: string,
  order: Order,
  fields: Readonly<{
    account: string;
    kind: string;
    currency: string;
    debit: bigint;
    credit: bigint;
  }>,
) {
  return sql`INSERT INTO ledger_entry
    (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
    VALUES (${transactionId}, ${fields.account}, ${order.id}, ${fields.kind}, ${fields.currency},
            ${fields.debit}, ${fields.credit}, NOW(3))`;
}

const payable = (order: Order) => `seller_payable:${order.sellerId}`;

/**
 * A balanced transaction of `kind` for `order` crediting its seller `amountMinor` more, with the
 * wallet following, so that only a check of who may be credited, and by what, can see it.
 */
async function sellerBooking(
  s: AnyDb,
  order: Order,
  amountMinor: bigint,
  kind: 'ADJUSTMENT' | 'PAYMENT',
): Promise<void> {
  const id = newId('ledgerTransaction');
  await sql`INSERT INTO ledger_transaction (id, order_id, kind, currency, amount_minor, created_at)
    VALUES (${id}, ${order.id}, ${kind}, 'USD', ${amountMinor}, NOW(3))`.execute(s);
  const common = { currency: 'USD', debit: 0n, credit: 0n };
  await entry(id, order, {
    ...common,
    account: 'psp_receivable',
    kind: `${kind}_RECEIVABLE`,
    debit: amountMinor,
  }).execute(s);
  await entry(id, order, {
    ...common,
    account: payable(order),
    kind: `${kind}_PAYABLE`,
    credit: amountMinor,
  }).execute(s);
  await sql`INSERT INTO wallet (seller_id, currency, balance_minor, updated_at)
    VALUES (${order.sellerId}, 'USD', ${amountMinor}, NOW(3))
    ON DUPLICATE KEY UPDATE balance_minor = balance_minor + ${amountMinor}`.execute(s);
}

/** A balanced ADJUSTMENT (a kind Settle never writes) crediting the seller of `order`. */
const adjustment = (s: AnyDb, order: Order, amountMinor: bigint) =>
  sellerBooking(s, order, amountMinor, 'ADJUSTMENT');

/** The PSP's fee of `order` as reconciliation books it: fee_expense to psp_receivable. */
async function pspFee(s: AnyDb, order: Order, feeMinor: bigint): Promise<void> {
  const id = newId('ledgerTransaction');
  await sql`INSERT INTO ledger_transaction (id, order_id, kind, currency, amount_minor, created_at)
    VALUES (${id}, ${order.id}, 'PSP_FEE', 'USD', ${feeMinor}, NOW(3))`.execute(s);
  const common = { currency: 'USD', debit: 0n, credit: 0n };
  await entry(id, order, {
    ...common,
    account: 'fee_expense',
    kind: 'PSP_FEE_EXPENSE',
    debit: feeMinor,
  }).execute(s);
  await entry(id, order, {
    ...common,
    account: 'psp_receivable',
    kind: 'PSP_FEE_RECEIVABLE',
    credit: feeMinor,
  }).execute(s);
}

const mutations: readonly Mutation[] = [
  {
    name: 'a ledger transaction unbalanced by 1 (wallet follows the seller entry)',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE ledger_entry SET credit_minor = credit_minor + 1
        WHERE order_id = ${a.id} AND account = ${payable(a)}`.execute(s);
      await sql`UPDATE wallet SET balance_minor = balance_minor + 1
        WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: 'two transactions balanced overall but each unbalanced within a currency',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a, b }) => {
      // a: +7 EUR, -7 USD; b: +7 USD, -7 EUR. Each sums to zero, so does each currency overall.
      for (const [order, debitCurrency, creditCurrency] of [
        [a, 'EUR', 'USD'],
        [b, 'USD', 'EUR'],
      ] as const) {
        const common = { account: 'fee_expense', debit: 0n, credit: 0n };
        await entry(order.transactionId, order, {
          ...common,
          kind: 'MUTATION_DEBIT',
          currency: debitCurrency,
          debit: 7n,
        }).execute(s);
        await entry(order.transactionId, order, {
          ...common,
          kind: 'MUTATION_CREDIT',
          currency: creditCurrency,
          credit: 7n,
        }).execute(s);
      }
    },
  },
  {
    name: 'one entry in another currency than its transaction',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE ledger_entry SET currency = 'EUR'
        WHERE order_id = ${a.id} AND account = 'psp_receivable'`.execute(s);
    },
  },
  {
    name: 'a wallet off by 1 from its ledger account',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { b }) => {
      await sql`UPDATE wallet SET balance_minor = balance_minor - 1
        WHERE seller_id = ${b.sellerId}`.execute(s);
    },
  },
  {
    name: 'a wallet missing for an account with entries',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`DELETE FROM wallet WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: 'a wallet with money and no entries',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s) => {
      await sql`INSERT INTO wallet (seller_id, currency, balance_minor, updated_at)
        VALUES ('seller-ghost', 'USD', 1, NOW(3))`.execute(s);
    },
  },
  {
    name: 'a wallet in another currency than its account, same amount',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE wallet SET currency = 'EUR' WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: 'a SUCCEEDED order with no ledger transaction (wallet emptied to match)',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`DELETE FROM ledger_entry WHERE order_id = ${a.id}`.execute(s);
      await sql`DELETE FROM ledger_transaction WHERE order_id = ${a.id}`.execute(s);
      await sql`UPDATE wallet SET balance_minor = 0 WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: 'a SUCCEEDED order with a second ledger transaction of another kind',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await adjustment(s, a, a.amountMinor);
    },
  },
  {
    name: "a SUCCEEDED order's ledger transaction moved to a FAILED order (counts, sums equal)",
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a, c }) => {
      await sql`UPDATE ledger_entry SET order_id = ${c.id} WHERE order_id = ${a.id}`.execute(s);
      await sql`UPDATE ledger_transaction SET order_id = ${c.id} WHERE order_id = ${a.id}`.execute(
        s,
      );
    },
  },
  {
    name: 'a PSP charge of an order that did not succeed (money taken, not booked)',
    claimedBy: ['chaos', 'bench'],
    apply: async (_s, p, { c }) => {
      await sql`INSERT INTO psp_charge (psp_reference, nonce, amount_minor, currency, created_at)
        VALUES ('psp_mutation_unbooked', ${c.id}, ${c.amountMinor}, 'USD', NOW(3))`.execute(p);
    },
  },
  {
    name: "a SUCCEEDED order's PSP charge recorded on a FAILED order (counts, sums equal)",
    claimedBy: ['chaos', 'bench'],
    apply: async (_s, p, { a, c }) => {
      await sql`UPDATE psp_charge SET nonce = ${c.id} WHERE nonce = ${a.id}`.execute(p);
    },
  },
  {
    name: 'two PSP charges for one order',
    claimedBy: ['chaos', 'bench'],
    apply: async (_s, p, { a }) => {
      await sql`INSERT INTO psp_charge (psp_reference, nonce, amount_minor, currency, created_at)
        VALUES ('psp_mutation_twice', ${a.id}, ${a.amountMinor}, 'USD', NOW(3))`.execute(p);
    },
  },
  {
    name: 'a PSP charge in another currency than its order, same amount',
    claimedBy: ['chaos', 'bench'],
    apply: async (_s, p, { a }) => {
      await sql`UPDATE psp_charge SET currency = 'EUR' WHERE nonce = ${a.id}`.execute(p);
    },
  },
  {
    name: "a payment whose orders don't sum to its total (off by 1)",
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { paid }) => {
      await sql`UPDATE payment SET amount_minor = amount_minor + 1 WHERE id = ${paid}`.execute(s);
    },
  },
  {
    name: 'an order stuck EXECUTING',
    claimedBy: ['chaos', 'bench'],
    apply: async (s, _p, { c }) => {
      await sql`UPDATE payment_order SET state = 'EXECUTING' WHERE id = ${c.id}`.execute(s);
    },
  },
  {
    name: 'one order over-credited by 1 and another under-credited by 1 (totals equal)',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a, b }) => {
      for (const [order, delta] of [
        [a, 1n],
        [b, -1n],
      ] as const) {
        await sql`UPDATE ledger_entry SET credit_minor = credit_minor + ${delta}
          WHERE order_id = ${order.id} AND account = ${payable(order)}`.execute(s);
        await sql`UPDATE ledger_entry SET debit_minor = debit_minor + ${delta}
          WHERE order_id = ${order.id} AND account = 'psp_receivable'`.execute(s);
        await sql`UPDATE ledger_transaction SET amount_minor = amount_minor + ${delta}
          WHERE order_id = ${order.id}`.execute(s);
        await sql`UPDATE wallet SET balance_minor = balance_minor + ${delta}
          WHERE seller_id = ${order.sellerId}`.execute(s);
      }
    },
  },
  {
    name: "an order's credit paid to another seller (wallets moved to match)",
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a, b }) => {
      await sql`UPDATE ledger_entry SET account = ${payable(b)}
        WHERE order_id = ${a.id} AND account = ${payable(a)}`.execute(s);
      await sql`UPDATE wallet SET balance_minor = balance_minor - ${a.amountMinor}
        WHERE seller_id = ${a.sellerId}`.execute(s);
      await sql`UPDATE wallet SET balance_minor = balance_minor + ${a.amountMinor}
        WHERE seller_id = ${b.sellerId}`.execute(s);
    },
  },
  {
    name: 'a FAILED order that credits its seller through a transaction of another kind',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { c }) => {
      await adjustment(s, c, c.amountMinor);
    },
  },
  {
    name: 'a transaction of an unknown order crediting a seller (wallet follows)',
    claimedBy: ['harness', 'chaos', 'bench'],
    chaosReports: ['ledger transactions of unknown orders'],
    apply: async (s, _p, { a }) => {
      await adjustment(s, { ...a, id: newId('order') }, 5n);
    },
  },
  {
    name: 'a PSP fee of an unknown order (no seller entries)',
    claimedBy: ['harness', 'chaos', 'bench'],
    chaosReports: ['ledger transactions of unknown orders'],
    apply: async (s, _p, { a }) => {
      await pspFee(s, { ...a, id: newId('order') }, 5n);
    },
  },
  {
    name: 'entries of no transaction and no order crediting a seller (wallet follows)',
    claimedBy: ['harness', 'chaos', 'bench'],
    chaosReports: ['ledger entries of no known transaction'],
    apply: async (s, _p, { a }) => {
      await adjustment(s, { ...a, id: newId('order') }, 5n);
      await sql`DELETE FROM ledger_transaction WHERE kind = 'ADJUSTMENT'`.execute(s);
    },
  },
  {
    name: 'a FAILED order flagged CHARGED_AFTER_FAILURE and booked as a PAYMENT (wallet follows)',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { c }) => {
      await sql`UPDATE payment_order SET review_reason = 'CHARGED_AFTER_FAILURE'
        WHERE id = ${c.id}`.execute(s);
      await sellerBooking(s, c, c.amountMinor, 'PAYMENT');
    },
  },
  {
    name: 'a PAYMENT in another currency than its order (entries and wallet follow)',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE ledger_transaction SET currency = 'EUR' WHERE order_id = ${a.id}`.execute(s);
      await sql`UPDATE ledger_entry SET currency = 'EUR' WHERE order_id = ${a.id}`.execute(s);
      await sql`UPDATE wallet SET currency = 'EUR' WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: "an entry of a PAYMENT naming another order than its transaction's",
    claimedBy: ['harness', 'chaos', 'bench'],
    chaosReports: ['ledger entries of another order or currency than their transaction'],
    apply: async (s, _p, { a, c }) => {
      await sql`UPDATE ledger_entry SET order_id = ${c.id}
        WHERE order_id = ${a.id} AND account = 'psp_receivable'`.execute(s);
    },
  },
  {
    name: "a PAYMENT's entries in another currency than it, balanced (wallet follows)",
    claimedBy: ['harness', 'chaos', 'bench'],
    chaosReports: ['ledger entries of another order or currency than their transaction'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE ledger_entry SET currency = 'EUR' WHERE order_id = ${a.id}`.execute(s);
      await sql`UPDATE wallet SET currency = 'EUR' WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: 'a transaction unbalanced by 1 above 2^53',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE ledger_entry SET credit_minor = ${BEYOND_DOUBLE}
        WHERE order_id = ${a.id} AND account = ${payable(a)}`.execute(s);
      await sql`UPDATE ledger_entry SET debit_minor = ${BEYOND_DOUBLE - 1n}
        WHERE order_id = ${a.id} AND account = 'psp_receivable'`.execute(s);
      await sql`UPDATE wallet SET balance_minor = ${BEYOND_DOUBLE}
        WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
  {
    name: 'a wallet off by 1 from its account near the int64 maximum',
    claimedBy: ['harness', 'chaos', 'bench'],
    apply: async (s, _p, { a }) => {
      await sql`UPDATE ledger_entry SET credit_minor = ${INT64_MAX - 1n}
        WHERE order_id = ${a.id} AND account = ${payable(a)}`.execute(s);
      await sql`UPDATE ledger_entry SET debit_minor = ${INT64_MAX - 1n}
        WHERE order_id = ${a.id} AND account = 'psp_receivable'`.execute(s);
      await sql`UPDATE wallet SET balance_minor = ${INT64_MAX}
        WHERE seller_id = ${a.sellerId}`.execute(s);
    },
  },
];

/** Changes Settle makes itself after the flow: every checker must still pass. */
const validChanges: ReadonlyArray<
  Readonly<{ name: string; apply: (settle: AnyDb, f: Fixture) => Promise<void> }>
> = [
  {
    name: "reconciliation books the PSP's fee of each SUCCEEDED order",
    apply: async (s, { a, b }) => {
      await pspFee(s, a, 58n);
      await pspFee(s, b, 15n);
    },
  },
];

beforeAll(async () => {
  stack = await startStack();
  requests = [];
  const paid = await pay(
    [
      ['seller-mut-a', 1999n],
      ['seller-mut-b', 500n],
    ],
    CARD.success,
  );
  const declined = await pay([['seller-mut-c', 700n]], CARD.decline);
  expect(paid.state).toBe(PaymentState.PAYMENT_STATE_SUCCEEDED);
  expect(declined.state).toBe(PaymentState.PAYMENT_STATE_FAILED);
  // Nothing may change the rows from here on but the cases.
  await stack.settle.stop();
  settle = openDatabase(stack.config.MYSQL_URL, { poolSize: 2 });
  const [a, b] = paid.orders;
  const [c] = declined.orders;
  if (a === undefined || b === undefined || c === undefined) throw new Error('orders missing');
  fixture = {
    paid: paid.paymentId,
    declined: declined.paymentId,
    a: await orderOf(a.orderId),
    b: await orderOf(b.orderId),
    c: await orderOf(c.orderId),
  };
  psp = openDatabase<Record<string, never>>(stack.config.PSP_MYSQL_URL, { poolSize: 2 });
  await saveTables(settle.db as unknown as AnyDb, SETTLE_TABLES);
  await saveTables(psp.db, PSP_TABLES);
}, 120_000);

afterAll(async () => {
  await psp?.close();
  await settle?.close();
  await stack?.stop();
});

describe('invariant checkers under mutation', () => {
  it('pass all three on the untouched rows', async () => {
    expect(await runCheckers()).toEqual({ harness: [], chaos: [], bench: [] });
  });

  it.each(validChanges)('$name: passes all three', async (change) => {
    const settleDb = settle.db as unknown as AnyDb;
    await restoreTables(settleDb, SETTLE_TABLES);
    await restoreTables(psp.db, PSP_TABLES);
    await change.apply(settleDb, fixture);
    expect(await runCheckers()).toEqual({ harness: [], chaos: [], bench: [] });
  });

  it.each(mutations)('$name: reported by every checker that claims it', async (mutation) => {
    const settleDb = settle.db as unknown as AnyDb;
    await restoreTables(settleDb, SETTLE_TABLES);
    await restoreTables(psp.db, PSP_TABLES);
    await mutation.apply(settleDb, psp.db, fixture);
    const failed = await runCheckers();
    const missedBy = mutation.claimedBy.filter((checker) => failed[checker].length === 0);
    expect(missedBy, JSON.stringify(failed, null, 2)).toEqual([]);
    if (mutation.chaosReports !== undefined) expect(failed.chaos).toEqual(mutation.chaosReports);
  });
});
