/**
 * The checks every benchmark run ends with, read straight from the databases: the ledger
 * balances, every wallet equals its seller's payable account, every order the load created is
 * terminal (or, for the idle-memory run, deliberately still EXECUTING), and nobody was charged
 * twice: at most one PSP charge and one ledger transaction per order, and money charged at the
 * PSP = money booked in the ledger = money in the wallets, in total and order by order.
 */
import { sql } from 'kysely';
import { openDatabase } from '../src/storage/db.js';
import {
  ordersNotMatchingLedger,
  trialBalanceByCurrency,
  unbalancedLedgerTransactions,
  walletsNotMatchingLedger,
} from '../src/storage/repositories/ledger.repository.js';

export type Check = Readonly<{ name: string; ok: boolean; detail: string }>;

export async function checkInvariants(options: {
  mysqlUrl: string;
  pspMysqlUrl: string;
  /** 'terminal': every order must be terminal; 'idle': every order EXECUTING and unpaid. */
  expect: 'terminal' | 'idle';
  /** Payments the load saw created; the database must hold exactly these many. */
  paymentsCreated: number;
}): Promise<Check[]> {
  const settle = openDatabase(options.mysqlUrl, { poolSize: 2 });
  const psp = openDatabase<Record<string, never>>(options.pspMysqlUrl, { poolSize: 2 });
  const checks: Check[] = [];
  const add = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
  try {
    const one = async (query: ReturnType<typeof sql<Record<string, string | null>>>) =>
      (await query.execute(settle.db)).rows[0] ?? {};
    const onePsp = async (query: ReturnType<typeof sql<Record<string, string | null>>>) =>
      (await query.execute(psp.db)).rows[0] ?? {};

    const unbalanced = await unbalancedLedgerTransactions(settle.db);
    // Per currency: a surplus in one currency must not hide a deficit in another.
    const trial = await trialBalanceByCurrency(settle.db);
    add(
      'ledger balanced',
      unbalanced.length === 0 && trial.every((total) => total.balanceMinor === 0n),
      `${unbalanced.length} unbalanced transactions, trial balance ` +
        (trial.map((total) => `${total.currency} ${total.balanceMinor}`).join(', ') || '0'),
    );

    const mismatched = await walletsNotMatchingLedger(settle.db);
    add('wallets == ledger', mismatched.length === 0, `${mismatched.length} wallets differ`);

    // Per order, not in total: one order over-credited and another under-credited by as much
    // leave every sum equal.
    const booking = await ordersNotMatchingLedger(settle.db);
    const offenders = Object.entries(booking).filter(([, found]) => found.length > 0);
    add(
      'each order booked and credited for its amount',
      offenders.length === 0,
      offenders
        .map(([check, found]) => `${found.length} ${check} (${found.slice(0, 3).join('; ')})`)
        .join('; ') || 'every order, transaction and payment agrees',
    );

    const counts = await one(sql`
      SELECT COUNT(*) AS payments,
        (SELECT COUNT(*) FROM payment_order) AS orders,
        (SELECT COUNT(*) FROM payment_order WHERE state NOT IN ('SUCCEEDED','FAILED','EXPIRED')) AS open,
        (SELECT COUNT(*) FROM payment_order WHERE state = 'SUCCEEDED') AS succeeded,
        (SELECT COUNT(*) FROM payment_order WHERE state = 'EXECUTING' AND psp_token IS NOT NULL) AS registered,
        (SELECT COALESCE(SUM(amount_minor), 0) FROM payment_order WHERE state = 'SUCCEEDED') AS succeeded_minor,
        (SELECT COUNT(*) FROM payment WHERE state NOT IN ('SUCCEEDED','FAILED','PARTIALLY_SUCCEEDED')) AS open_payments
      FROM payment`);
    const orders = Number(counts['orders']);
    const open = Number(counts['open']);
    add(
      'payments created == payments stored',
      Number(counts['payments']) === options.paymentsCreated,
      `${options.paymentsCreated} created by the load, ${counts['payments']} stored`,
    );
    if (options.expect === 'terminal') {
      add(
        'every order terminal',
        open === 0 && Number(counts['open_payments']) === 0,
        `${orders} orders, ${open} not terminal, ${counts['open_payments']} payments not terminal`,
      );
    } else {
      add(
        'every idle order EXECUTING, registered, unpaid',
        Number(counts['registered']) === orders,
        `${orders} orders, ${counts['registered']} EXECUTING with a PSP token`,
      );
    }

    // PAYMENT only: a PSP_FEE that reconciliation books on top of an order's PAYMENT is neither
    // a second booking of the order nor money credited to a seller.
    const ledger = await one(sql`
      SELECT COUNT(*) AS transactions, COUNT(DISTINCT order_id) AS orders,
        COALESCE(SUM(amount_minor), 0) AS minor
      FROM ledger_transaction WHERE kind = 'PAYMENT'`);
    const wallets = await one(sql`SELECT COALESCE(SUM(balance_minor), 0) AS minor FROM wallet`);
    // The two databases cannot be joined, so each side sums a checksum of (order, amount,
    // currency) per charge or SUCCEEDED order: equal sums mean the same charges, not only the
    // same total (a charge recorded on the wrong order, or in the wrong currency, differs).
    const charges = await onePsp(sql`
      SELECT COUNT(*) AS charges, COUNT(DISTINCT nonce) AS nonces,
        COALESCE(SUM(amount_minor), 0) AS minor,
        COALESCE(SUM(CRC32(CONCAT(nonce, ' ', amount_minor, ' ', currency))), 0) AS checksum
      FROM psp_charge`);
    const succeeded = await one(sql`
      SELECT COALESCE(SUM(CRC32(CONCAT(id, ' ', amount_minor, ' ', currency))), 0) AS checksum
      FROM payment_order WHERE state = 'SUCCEEDED'`);
    add(
      'each SUCCEEDED order charged once, for its amount and currency',
      BigInt(charges['checksum'] ?? '0') === BigInt(succeeded['checksum'] ?? '0'),
      `checksum of PSP charges ${charges['checksum']}, of SUCCEEDED orders ${succeeded['checksum']}`,
    );
    const chargedOnce =
      charges['charges'] === charges['nonces'] &&
      ledger['transactions'] === ledger['orders'] &&
      Number(ledger['orders']) === Number(counts['succeeded']) &&
      Number(charges['nonces']) === Number(counts['succeeded']);
    add(
      'no order charged twice',
      chargedOnce,
      `${charges['charges']} PSP charges for ${charges['nonces']} orders; ` +
        `${ledger['transactions']} ledger transactions for ${ledger['orders']} orders; ` +
        `${counts['succeeded']} orders SUCCEEDED`,
    );
    const sameMoney =
      BigInt(charges['minor'] ?? '0') === BigInt(ledger['minor'] ?? '0') &&
      BigInt(ledger['minor'] ?? '0') === BigInt(wallets['minor'] ?? '0') &&
      BigInt(wallets['minor'] ?? '0') === BigInt(counts['succeeded_minor'] ?? '0');
    add(
      'charged == booked == credited',
      sameMoney,
      `PSP ${charges['minor']}, ledger ${ledger['minor']}, wallets ${wallets['minor']}, ` +
        `succeeded orders ${counts['succeeded_minor']} (minor units)`,
    );
  } finally {
    await settle.close();
    await psp.close();
  }
  return checks;
}
