/**
 * The double-entry ledger and the sellers' wallets. Every ledger transaction balances: the
 * entries are checked before the insert and the stored sum is checked again inside the same
 * database transaction, so an unbalanced transaction can never commit.
 */
import { sql, type CompiledQuery } from 'kysely';
import { ERROR_CODE, SettleError, type SettleErrorOptions } from '../../domain/errors.js';
import { PARTY_ID_PATTERN } from '../../domain/ids.js';
import type { CurrencyCode } from '../../domain/money.js';
import { decodePageToken, encodePageToken } from '../../domain/page-token.js';
import type { Db } from '../db.js';
import { guard } from '../one-trip.js';
import type { Trx } from '../transaction.js';

export const ACCOUNT = {
  pspReceivable: 'psp_receivable',
  sellerPayable: (sellerId: string) => `seller_payable:${sellerId}`,
  feeExpense: 'fee_expense',
} as const;

export const SELLER_PAYABLE_PREFIX = 'seller_payable:';

/** The shape of every account the ledger can hold, for a message about one it cannot. */
export const LEDGER_ACCOUNT_SHAPE =
  'psp_receivable, fee_expense or seller_payable:<seller_id> (a seller_id is 1-64 characters ' +
  'of letters, digits and _.:@-)';

/**
 * Whether the ledger can hold an entry of `account`: one of the fixed accounts, or a seller's
 * payable account with a seller id CreatePayment accepts. A filter on any other name can match
 * no row.
 */
export function isLedgerAccount(account: string): boolean {
  if (account === ACCOUNT.pspReceivable || account === ACCOUNT.feeExpense) return true;
  return (
    account.startsWith(SELLER_PAYABLE_PREFIX) &&
    PARTY_ID_PATTERN.test(account.slice(SELLER_PAYABLE_PREFIX.length))
  );
}

export type NewLedgerEntry = Readonly<{
  account: string;
  kind: string;
  debitMinor: bigint;
  creditMinor: bigint;
}>;

export class UnbalancedLedgerTransactionError extends Error {
  override readonly name = 'UnbalancedLedgerTransactionError';
}

/** Posts one ledger transaction (see postLedgerTransactions for the checks). */
export async function postLedgerTransaction(trx: Trx, input: NewLedgerTransaction): Promise<void> {
  await postLedgerTransactions(trx, [input]);
}

/** Adds to a seller's wallet, creating it on first credit. */
export async function creditWallet(trx: Trx, credit: WalletCredit): Promise<void> {
  await creditWallets(trx, [credit]);
}

export type NewLedgerTransaction = Readonly<{
  id: string;
  orderId: string;
  kind: string;
  currency: CurrencyCode;
  entries: readonly NewLedgerEntry[];
  now: Date;
}>;

/**
 * Posts ledger transactions (one, or many at once for group commit): each is checked to balance
 * before the insert, all are inserted with two statements, and the stored sums are checked again
 * per transaction inside the same database transaction, so an unbalanced one never commits.
 */
export async function postLedgerTransactions(
  trx: Trx,
  inputs: readonly NewLedgerTransaction[],
): Promise<void> {
  const posting = ledgerPosting(trx, inputs);
  if (posting === undefined) return;
  for (const statement of posting.inserts) await trx.executeQuery(statement);
  const stored = await trx.executeQuery(posting.storedSums());
  posting.checkStored(stored.rows);
}

export type StoredSum = Readonly<{ transaction_id: string; debits: string; credits: string }>;

/**
 * The statements that post ledger transactions, built but not run (a caller may send them in one
 * round trip): each transaction is checked to balance first (this throws), `inserts` write them,
 * `storedSums()` reads back what was stored, and `checkStored` throws unless those rows balance
 * too; `balancedGuard()` is the same check as a guard, for a transaction sent in one packet with
 * its COMMIT (storage/one-trip.ts). A caller uses one of the two, so each is built only when
 * asked for. Undefined when there is nothing to post.
 */
export function ledgerPosting(
  db: Db | Trx,
  inputs: readonly NewLedgerTransaction[],
):
  | {
      inserts: CompiledQuery[];
      storedSums: () => CompiledQuery<StoredSum>;
      checkStored: (rows: readonly StoredSum[]) => void;
      balancedGuard: () => CompiledQuery[];
    }
  | undefined {
  if (inputs.length === 0) return undefined;
  const amounts = inputs.map((input) => {
    const debits = input.entries.reduce((total, e) => total + e.debitMinor, 0n);
    const credits = input.entries.reduce((total, e) => total + e.creditMinor, 0n);
    if (input.entries.length < 2 || debits !== credits || debits <= 0n) {
      throw new UnbalancedLedgerTransactionError(
        `ledger transaction ${input.kind} for ${input.orderId} does not balance: ` +
          `debits ${debits}, credits ${credits}, ${input.entries.length} entries`,
      );
    }
    return debits;
  });
  const inserts = [
    db
      .insertInto('ledger_transaction')
      .values(
        inputs.map((input, i) => ({
          id: input.id,
          order_id: input.orderId,
          kind: input.kind,
          currency: input.currency,
          amount_minor: amounts[i] ?? 0n,
          created_at: input.now,
        })),
      )
      .compile(),
    db
      .insertInto('ledger_entry')
      .values(
        inputs.flatMap((input) =>
          input.entries.map((entry) => ({
            transaction_id: input.id,
            account: entry.account,
            order_id: input.orderId,
            kind: entry.kind,
            currency: input.currency,
            debit_minor: entry.debitMinor,
            credit_minor: entry.creditMinor,
            created_at: input.now,
          })),
        ),
      )
      .compile(),
  ];
  // The pair assertion, per transaction: what was stored balances too.
  const storedSums = () =>
    db
      .selectFrom('ledger_entry')
      .select([
        'transaction_id',
        sql<string>`SUM(debit_minor)`.as('debits'),
        sql<string>`SUM(credit_minor)`.as('credits'),
      ])
      .where(
        'transaction_id',
        'in',
        inputs.map((input) => input.id),
      )
      .groupBy('transaction_id')
      .compile();
  const checkStored = (stored: readonly StoredSum[]) => {
    const unbalanced = stored.filter((row) => BigInt(row.debits) !== BigInt(row.credits));
    if (stored.length !== inputs.length || unbalanced.length > 0) {
      throw new UnbalancedLedgerTransactionError(
        `stored ledger transactions do not balance: ${stored.length} of ${inputs.length} found, ` +
          `unbalanced: ${unbalanced.map((row) => row.transaction_id).join(', ')}`,
      );
    }
  };
  // Fails unless every one of them is stored and balances: count the balanced ones. The count is
  // read by a plain SELECT ... INTO, a consistent (non-locking) read. In the guard's own
  // INSERT ... SELECT, or in SET @v = (SELECT ...), InnoDB would take shared next-key locks on
  // ledger_entry, whose ids only grow, and every concurrent posting would wait for this
  // transaction's commit (test/storage/one-trip.test.ts checks that it does not).
  const balancedGuard = () => [
    sql`SELECT COUNT(*) FROM (
          SELECT transaction_id FROM ledger_entry
          WHERE transaction_id IN (${sql.join(inputs.map((input) => input.id))})
          GROUP BY transaction_id
          HAVING SUM(debit_minor) = SUM(credit_minor)
        ) AS balanced INTO @settle_ledger_balanced`.compile(db),
    guard('ledgerUnbalanced', {
      sql: '@settle_ledger_balanced <> ?',
      parameters: [inputs.length],
    }),
  ];
  return { inserts, storedSums, checkStored, balancedGuard };
}

/**
 * A credit in another currency than its seller's wallet, or than another credit of the same seller
 * in its batch. A wallet holds one currency, so such a credit is refused, never added. Not
 * retryable: the wallet's currency never changes, so the same credit would fail again (its command
 * is dead-lettered at once, with this message as the reason, for an operator).
 */
export class WalletCurrencyMismatchError extends SettleError {
  override readonly name = 'WalletCurrencyMismatchError';
  readonly code = ERROR_CODE.failedPrecondition;
  constructor(
    readonly sellerId: string,
    message: string,
    options: SettleErrorOptions = {},
  ) {
    super(message, { ...options, retryable: false });
  }
}

/** Mismatching credits named at most by one WalletCurrencyMismatchError. */
const CURRENCY_MISMATCHES_NAMED_MAX = 5;

/**
 * The WalletCurrencyMismatchError that `error`, thrown by the statement of `walletCredits` for
 * `credits`, stands for; undefined when it cannot be shown to be one (rethrow `error` then). The
 * statement's currency guard overflows BIGINT UNSIGNED (errno 1690), and MySQL says only "BIGINT
 * UNSIGNED value is out of range"; nothing else in the statement is unsigned (a balance that
 * outgrows BIGINT says "BIGINT value"), and the wallets are read back (by `db`, the failed
 * statement's transaction, which a statement error leaves open) to name each credited wallet
 * whose currency is not its credit's. A wallet's currency never changes once written, so what is
 * read is what the statement saw. Called by whoever ran the statement; a batch names every
 * mismatch, up to CURRENCY_MISMATCHES_NAMED_MAX, and a unit replayed alone (group commit) its own.
 */
export async function walletCurrencyMismatch(
  db: Db | Trx,
  credits: readonly WalletCredit[],
  error: unknown,
): Promise<WalletCurrencyMismatchError | undefined> {
  if ((error as { errno?: unknown } | null)?.errno !== ERRNO_OUT_OF_RANGE) return undefined;
  if (!(error instanceof Error && error.message.includes('BIGINT UNSIGNED'))) return undefined;
  if (credits.length === 0) return undefined;
  const sellerIds = [...new Set(credits.map((credit) => credit.sellerId))];
  const wallets = await db
    .selectFrom('wallet')
    .select(['seller_id', 'currency'])
    .where('seller_id', 'in', sellerIds)
    .execute();
  const currencyOf = new Map(wallets.map((wallet) => [wallet.seller_id, wallet.currency]));
  const mismatched = credits.filter((credit) => {
    const currency = currencyOf.get(credit.sellerId);
    return currency !== undefined && currency !== credit.currency;
  });
  const first = mismatched[0];
  if (first === undefined) return undefined;
  const named = mismatched
    .slice(0, CURRENCY_MISMATCHES_NAMED_MAX)
    .map(
      (credit) =>
        `the wallet of seller ${credit.sellerId} holds ${currencyOf.get(credit.sellerId) ?? ''}, ` +
        `and a credit of ${credit.amountMinor} minor units is in ${credit.currency}`,
    );
  const more = mismatched.length - named.length;
  return new WalletCurrencyMismatchError(
    first.sellerId,
    `${named.join('; ')}${more > 0 ? `; and ${more} more` : ''}: a wallet holds one currency, ` +
      'so the credit was refused and nothing of its transition was written',
    { cause: error },
  );
}

/** MySQL's ER_DATA_OUT_OF_RANGE, the same on MariaDB. */
const ERRNO_OUT_OF_RANGE = 1690;

export type WalletCredit = Readonly<{
  sellerId: string;
  currency: CurrencyCode;
  amountMinor: bigint;
  now: Date;
}>;

/**
 * `creditWallet` for many credits in one statement. Credits to the same seller are added up
 * first, so a hot seller's wallet row is written (and locked) once per batch instead of once per
 * order; `version` still grows by one per credit. Rows are written in seller order, so two
 * batches lock wallets in the same order. `updated_at` only moves forward: a batch made earlier
 * can commit later (it waited for the row lock of a hot seller's wallet held by a later one).
 * (VALUES() in ON DUPLICATE KEY UPDATE is deprecated in MySQL 8.0.20+ but still supported in
 * 8.4; MariaDB has no row-alias syntax to replace it.) A credit in another currency than its
 * wallet's fails the statement, and so its transaction: ~0 plus the credit overflows BIGINT
 * UNSIGNED, an error (1690) whatever the sql_mode, where SIGNAL would need a stored program;
 * `walletCurrencyMismatch` turns that error into a WalletCurrencyMismatchError naming the wallet.
 * Credits of one seller in two currencies in one batch throw WalletCurrencyMismatchError.
 */
export async function creditWallets(trx: Trx, credits: readonly WalletCredit[]): Promise<void> {
  const statement = walletCredits(trx, credits);
  if (statement === undefined) return;
  try {
    await trx.executeQuery(statement);
  } catch (error) {
    throw (await walletCurrencyMismatch(trx, credits, error)) ?? error;
  }
}

/** The statement of `creditWallets`, built but not run; undefined when there is nothing to credit. */
export function walletCredits(
  db: Db | Trx,
  credits: readonly WalletCredit[],
): CompiledQuery | undefined {
  if (credits.length === 0) return undefined;
  const bySeller = new Map<string, { credit: WalletCredit; total: bigint; count: number }>();
  for (const credit of credits) {
    const sum = bySeller.get(credit.sellerId);
    if (sum === undefined) {
      bySeller.set(credit.sellerId, { credit, total: credit.amountMinor, count: 1 });
    } else {
      // Typed as strings: CurrencyCode has one member today, which would make this `never`.
      const [first, other]: readonly string[] = [sum.credit.currency, credit.currency];
      if (other !== first) {
        throw new WalletCurrencyMismatchError(
          credit.sellerId,
          `seller ${credit.sellerId} is credited in ${first} and ${other} in one batch; ` +
            'a wallet holds one currency',
        );
      }
      sum.total += credit.amountMinor;
      sum.count += 1;
      if (credit.now > sum.credit.now) sum.credit = credit;
    }
  }
  const rows = [...bySeller.entries()].sort(([a], [b]) => (a < b ? -1 : 1));
  return sql`
    INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
    VALUES ${sql.join(
      rows.map(
        ([sellerId, sum]) =>
          sql`(${sellerId}, ${sum.credit.currency}, ${sum.total.toString()}, ${sum.count}, ${sum.credit.now})`,
      ),
    )}
    ON DUPLICATE KEY UPDATE
      balance_minor = IF(currency = VALUES(currency),
        balance_minor + VALUES(balance_minor), ~0 + VALUES(balance_minor)),
      version = version + VALUES(version),
      updated_at = GREATEST(updated_at, VALUES(updated_at))`.compile(db);
}

export type Wallet = Readonly<{
  sellerId: string;
  currency: string;
  balanceMinor: bigint;
  updatedAt: Date;
}>;

export async function findWallet(db: Db, sellerId: string): Promise<Wallet | undefined> {
  const row = await db
    .selectFrom('wallet')
    .selectAll()
    .where('seller_id', '=', sellerId)
    .executeTakeFirst();
  return row === undefined
    ? undefined
    : {
        sellerId: row.seller_id,
        currency: row.currency,
        balanceMinor: BigInt(row.balance_minor),
        updatedAt: row.updated_at,
      };
}

export type LedgerEntry = Readonly<{
  id: bigint;
  transactionId: string;
  account: string;
  orderId: string;
  kind: string;
  currency: string;
  debitMinor: bigint;
  creditMinor: bigint;
  createdAt: Date;
}>;

export async function listLedgerEntries(
  db: Db,
  filter: {
    account?: string;
    orderId?: string;
    orderIds?: readonly string[];
    afterId?: bigint;
    limit: number;
    /** Newest first instead of oldest first. */
    newestFirst?: boolean;
  },
): Promise<LedgerEntry[]> {
  let query = db
    .selectFrom('ledger_entry')
    .selectAll()
    .orderBy('id', filter.newestFirst === true ? 'desc' : 'asc')
    .limit(filter.limit);
  if (filter.account !== undefined) query = query.where('account', '=', filter.account);
  if (filter.orderId !== undefined) query = query.where('order_id', '=', filter.orderId);
  if (filter.orderIds !== undefined) {
    if (filter.orderIds.length === 0) return [];
    query = query.where('order_id', 'in', filter.orderIds);
  }
  if (filter.afterId !== undefined) query = query.where('id', '>', filter.afterId.toString());
  const rows = await query.execute();
  return rows.map((row) => ({
    id: BigInt(row.id),
    transactionId: row.transaction_id,
    account: row.account,
    orderId: row.order_id,
    kind: row.kind,
    currency: row.currency,
    debitMinor: BigInt(row.debit_minor),
    creditMinor: BigInt(row.credit_minor),
    createdAt: row.created_at,
  }));
}

export type AccountBalance = Readonly<{
  account: string;
  currency: string;
  debitMinor: bigint;
  creditMinor: bigint;
  balanceMinor: bigint;
}>;

/** Where a trial balance row sits in the ledger's (account, currency) order. */
export type AccountKey = Readonly<{ account: string; currency: string }>;

// A page token's cursor (domain/page-token.ts) holds an AccountKey as the account, a space and the
// currency. A currency is three capital letters (ISO 4217), so splitting at the last space is
// exact whatever the account holds, and the cursors of other lists (bare ids) never match.
const ACCOUNT_KEY_CURSOR_PATTERN = /^[^]{0,100} [A-Z]{3}$/u;
// The trial balance has no filters.
const TRIAL_BALANCE_FILTER = {};

/**
 * The page token that continues a trial balance after `next`: '' when there is no next page.
 * GetTrialBalance and the admin panel's ledger page write and read the same tokens.
 */
export function trialBalancePageToken(next: AccountKey | undefined): string {
  return next === undefined
    ? ''
    : encodePageToken('GetTrialBalance', `${next.account} ${next.currency}`, TRIAL_BALANCE_FILTER);
}

/**
 * Where the page of `pageToken` starts after; undefined for '' (the first page). Throws
 * INVALID_ARGUMENT naming page_token for a token trialBalancePageToken did not write.
 */
export function trialBalancePageAfter(pageToken: string): AccountKey | undefined {
  const cursor = decodePageToken(
    'GetTrialBalance',
    pageToken,
    TRIAL_BALANCE_FILTER,
    ACCOUNT_KEY_CURSOR_PATTERN,
  );
  return cursor === undefined
    ? undefined
    : { account: cursor.slice(0, -4), currency: cursor.slice(-3) };
}

/** Unbalanced transactions listed at most by `unbalancedLedgerTransactions`. */
const UNBALANCED_LISTED_MAX = 1_000;

/**
 * Ledger transactions whose stored entries do not balance (debits differ from credits) or mix
 * currencies; empty when every one balances. A transaction is in one currency, so entries in two
 * are unbalanced in each even when the amounts cancel out (7 EUR debited against 7 USD credited);
 * another transaction can then hide the difference from the trial balance. postLedgerTransactions
 * never commits one, so any id here is a bug. At most UNBALANCED_LISTED_MAX ids.
 */
export async function unbalancedLedgerTransactions(db: Db): Promise<string[]> {
  const result = await sql<{ transaction_id: string }>`
    SELECT transaction_id FROM ledger_entry GROUP BY transaction_id
    HAVING SUM(debit_minor) <> SUM(credit_minor) OR MIN(currency) <> MAX(currency)
    ORDER BY transaction_id LIMIT ${UNBALANCED_LISTED_MAX}`.execute(db);
  return result.rows.map((row) => row.transaction_id);
}

export type CurrencyBalance = Readonly<{
  currency: string;
  debitMinor: bigint;
  creditMinor: bigint;
  balanceMinor: bigint;
}>;

/**
 * Debits minus credits over every account, per currency (one query). A balanced ledger has
 * `balanceMinor` 0 in each currency; amounts in different currencies are never added together.
 * Sums every entry, a scan of the whole ledger: for the checks (invariants, reconciliation's
 * internal check), which must not trust the running sums; GetTrialBalance and the admin panel
 * read ledger-sums.repository.ts's trialBalanceTotals.
 */
export async function trialBalanceByCurrency(db: Db): Promise<CurrencyBalance[]> {
  const rows = await db
    .selectFrom('ledger_entry')
    .select([
      'currency',
      sql<string>`SUM(debit_minor)`.as('debits'),
      sql<string>`SUM(credit_minor)`.as('credits'),
    ])
    .groupBy('currency')
    .orderBy('currency')
    .execute();
  return rows.map((row) => currencyBalance(row.currency, row));
}

/** A currency's balance from the `debits` and `credits` sums MySQL answers (DECIMAL, as text). */
export function currencyBalance(
  currency: string,
  sums: Readonly<{ debits: string; credits: string }>,
): CurrencyBalance {
  const debitMinor = BigInt(sums.debits);
  const creditMinor = BigInt(sums.credits);
  return { currency, debitMinor, creditMinor, balanceMinor: debitMinor - creditMinor };
}

/**
 * Sellers whose wallet differs from their payable account (credits minus debits), in amount or in
 * currency (`ledgerCurrencies` is the account's currency, or its lowest and highest when entries
 * mix them). Empty when the wallets agree with the ledger. The wallets join the accounts' sums by
 * the account's name, not by a seller id cut out of it: MariaDB indexes a derived table on a
 * column (its `key0`), never on an expression, and would otherwise compare every wallet with every
 * account (36.6 s against 1.0 s with 18,000 sellers and 533,000 entries).
 */
export async function walletsNotMatchingLedger(db: Db): Promise<
  Array<{
    sellerId: string;
    walletMinor: bigint;
    ledgerMinor: bigint;
    walletCurrency: string;
    ledgerCurrencies: string;
  }>
> {
  // Each branch names the column it joins on; a seller_id column in the first branch's derived
  // table too makes MariaDB 10.11 take 3 s instead of 0.4 s on the figures above.
  const accounts = (key: 'account' | 'seller_id') => sql`
    SELECT ${key === 'account' ? sql`account` : sql`SUBSTRING(account, ${SELLER_PAYABLE_PREFIX.length + 1}) AS seller_id`},
           SUM(credit_minor) - SUM(debit_minor) AS net,
           MIN(currency) AS currency_min, MAX(currency) AS currency_max
    FROM ledger_entry WHERE account LIKE ${SELLER_PAYABLE_PREFIX + '%'}
    GROUP BY account`;
  const currencies = sql`CASE WHEN l.currency_min = l.currency_max THEN l.currency_min
    ELSE CONCAT(l.currency_min, '..', l.currency_max) END`;
  const result = await sql<{
    seller_id: string;
    wallet_minor: string;
    ledger_minor: string;
    wallet_currency: string;
    ledger_currencies: string | null;
  }>`
    SELECT w.seller_id, w.balance_minor AS wallet_minor, COALESCE(l.net, 0) AS ledger_minor,
           w.currency AS wallet_currency, ${currencies} AS ledger_currencies
    FROM wallet w
    LEFT JOIN (${accounts('account')}) l ON l.account = CONCAT(${SELLER_PAYABLE_PREFIX}, w.seller_id)
    WHERE w.balance_minor <> COALESCE(l.net, 0)
       OR w.currency <> COALESCE(l.currency_min, w.currency)
       OR w.currency <> COALESCE(l.currency_max, w.currency)
    UNION ALL
    SELECT l.seller_id, 0, l.net, '', ${currencies}
    FROM (${accounts('seller_id')}) l
    LEFT JOIN wallet w ON w.seller_id = l.seller_id
    WHERE w.seller_id IS NULL AND l.net <> 0`.execute(db);
  return result.rows.map((row) => ({
    sellerId: row.seller_id,
    walletMinor: BigInt(row.wallet_minor),
    ledgerMinor: BigInt(row.ledger_minor),
    walletCurrency: row.wallet_currency,
    ledgerCurrencies: row.ledger_currencies ?? '',
  }));
}

/** Offenders listed at most per check by `ordersNotMatchingLedger`. */
const ORDER_MISMATCHES_LISTED_MAX = 100;

/**
 * What ties the payments and their orders to the ledger, each a list of offenders described in
 * words (at most ORDER_MISMATCHES_LISTED_MAX each); every list is empty when the books agree.
 */
export type OrdersNotMatchingLedger = Readonly<{
  /**
   * Orders whose PAYMENT transaction is missing (SUCCEEDED), present (any other state, those
   * flagged CHARGED_AFTER_* included: they are not booked) or of another amount or currency.
   */
  misbooked: string[];
  /**
   * Orders whose entries, of any kind, do not credit their own seller's payable account by their
   * amount when SUCCEEDED and by nothing otherwise, or touch another seller's account.
   */
  miscredited: string[];
  /**
   * Seller payable entries of a transaction that is not a PAYMENT: only a PAYMENT credits a
   * seller (a PSP_FEE moves money between fee_expense and psp_receivable).
   */
  sellerEntriesNotOfAPayment: string[];
  /** Transactions, of any kind, naming an order that does not exist. */
  transactionsOfUnknownOrders: string[];
  /** Entries naming a transaction that does not exist. */
  entriesOfUnknownTransactions: string[];
  /**
   * Entries of another order or currency than their transaction. An entry of an order that does
   * not exist needs no list of its own: it is here, or its transaction is unknown, or its
   * transaction names that order too (transactionsOfUnknownOrders). So a fault is listed once.
   */
  entriesNotOfTheirTransaction: string[];
  /** Payments whose orders do not number, sum to or share their total and currency. */
  paymentsOff: string[];
}>;

/**
 * Checks, order by order, that the ledger books exactly the orders that succeeded: one PAYMENT
 * transaction for its amount and currency crediting its own seller per SUCCEEDED order, nothing
 * for the others, nothing for orders that do not exist; and that each payment's total is the sum
 * of its orders. Totals are not enough: one order over-credited and another under-credited by as
 * much leave every sum equal. Five queries; the tests, the bench and the crash tests end with it.
 */
export async function ordersNotMatchingLedger(db: Db): Promise<OrdersNotMatchingLedger> {
  const limit = ORDER_MISMATCHES_LISTED_MAX;
  const misbooked = await sql<{
    id: string;
    state: string;
    amount_minor: string;
    currency: string;
    booked_minor: string | null;
    booked_currency: string | null;
  }>`
    SELECT o.id, o.state, o.amount_minor, o.currency,
           t.amount_minor AS booked_minor, t.currency AS booked_currency
    FROM payment_order o
    LEFT JOIN ledger_transaction t ON t.order_id = o.id AND t.kind = 'PAYMENT'
    WHERE (o.state = 'SUCCEEDED') <> (t.id IS NOT NULL)
       OR t.amount_minor <> o.amount_minor OR t.currency <> o.currency
    ORDER BY o.id LIMIT ${limit}`.execute(db);
  const ownAccount = sql`CONCAT(${SELLER_PAYABLE_PREFIX}, o.seller_id)`;
  const miscredited = await sql<{
    id: string;
    state: string;
    seller_id: string;
    amount_minor: string;
    own_minor: string;
    others_minor: string;
  }>`
    SELECT o.id, o.state, o.seller_id, o.amount_minor,
           COALESCE(SUM(CASE WHEN e.account = ${ownAccount}
                             THEN e.credit_minor - e.debit_minor END), 0) AS own_minor,
           COALESCE(SUM(CASE WHEN e.account <> ${ownAccount}
                             THEN e.credit_minor + e.debit_minor END), 0) AS others_minor
    FROM payment_order o
    LEFT JOIN ledger_entry e ON e.order_id = o.id AND e.account LIKE ${SELLER_PAYABLE_PREFIX + '%'}
    GROUP BY o.id, o.state, o.seller_id, o.amount_minor
    HAVING own_minor <> CASE WHEN o.state = 'SUCCEEDED' THEN o.amount_minor ELSE 0 END
        OR others_minor <> 0
    ORDER BY o.id LIMIT ${limit}`.execute(db);
  const notOfAPayment = await sql<{
    transaction_id: string;
    order_id: string;
    account: string;
    kind: string | null;
  }>`
    SELECT e.transaction_id, e.order_id, e.account, t.kind
    FROM ledger_entry e LEFT JOIN ledger_transaction t ON t.id = e.transaction_id
    WHERE e.account LIKE ${SELLER_PAYABLE_PREFIX + '%'} AND (t.kind IS NULL OR t.kind <> 'PAYMENT')
    ORDER BY e.id LIMIT ${limit}`.execute(db);
  const orphans = await sql<{ astray: 'transaction' | 'entry_unknown' | 'entry'; what: string }>`
    (SELECT 'transaction' AS astray,
            CONCAT('transaction ', t.id, ' (', t.kind, ') of unknown order ', t.order_id) AS what
     FROM ledger_transaction t LEFT JOIN payment_order o ON o.id = t.order_id
     WHERE o.id IS NULL ORDER BY t.id LIMIT ${limit})
    UNION ALL
    (SELECT CASE WHEN t.id IS NULL THEN 'entry_unknown' ELSE 'entry' END AS astray,
            CONCAT('entry ', e.id, ' (', e.kind, ' ', e.currency, ') of order ', e.order_id,
                   ', transaction ', e.transaction_id,
                   CASE WHEN t.id IS NULL THEN ' (unknown)'
                        ELSE CONCAT(' (of ', t.order_id, ' in ', t.currency, ')') END) AS what
     FROM ledger_entry e
     LEFT JOIN ledger_transaction t ON t.id = e.transaction_id
     WHERE t.id IS NULL OR t.order_id <> e.order_id OR t.currency <> e.currency
     ORDER BY e.id LIMIT ${limit})`.execute(db);
  const orphansOf = (astray: (typeof orphans.rows)[number]['astray']) =>
    orphans.rows.filter((r) => r.astray === astray).map((r) => r.what);
  const paymentsOff = await sql<{
    id: string;
    amount_minor: string;
    currency: string;
    orders_total: number;
    n: string | null;
    minor: string | null;
    currency_min: string | null;
    currency_max: string | null;
  }>`
    SELECT p.id, p.amount_minor, p.currency, p.orders_total, o.n, o.minor, o.currency_min,
           o.currency_max
    FROM payment p
    LEFT JOIN (SELECT payment_id, COUNT(*) AS n, SUM(amount_minor) AS minor,
                      MIN(currency) AS currency_min, MAX(currency) AS currency_max
               FROM payment_order GROUP BY payment_id) o ON o.payment_id = p.id
    WHERE o.payment_id IS NULL OR o.n <> p.orders_total OR o.minor <> p.amount_minor
       OR o.currency_min <> p.currency OR o.currency_max <> p.currency
    ORDER BY p.id LIMIT ${limit}`.execute(db);
  return {
    misbooked: misbooked.rows.map(
      (r) =>
        `${r.id} ${r.state} ${r.amount_minor} ${r.currency}: ` +
        (r.booked_minor === null
          ? 'no PAYMENT transaction'
          : `PAYMENT of ${r.booked_minor} ${r.booked_currency ?? ''}`),
    ),
    miscredited: miscredited.rows.map(
      (r) =>
        `${r.id} ${r.state} ${r.amount_minor}: ${SELLER_PAYABLE_PREFIX}${r.seller_id} credited ` +
        `${r.own_minor}, other sellers' accounts moved ${r.others_minor}`,
    ),
    sellerEntriesNotOfAPayment: notOfAPayment.rows.map(
      (r) =>
        `${r.account} by transaction ${r.transaction_id} (${r.kind ?? 'unknown'}) of ${r.order_id}`,
    ),
    transactionsOfUnknownOrders: orphansOf('transaction'),
    entriesOfUnknownTransactions: orphansOf('entry_unknown'),
    entriesNotOfTheirTransaction: orphansOf('entry'),
    paymentsOff: paymentsOff.rows.map(
      (r) =>
        `${r.id} ${r.amount_minor} ${r.currency} of ${r.orders_total} orders: ` +
        (r.n === null
          ? 'no orders'
          : `${r.n} orders summing to ${r.minor ?? ''} ${r.currency_min ?? ''}` +
            (r.currency_min === r.currency_max ? '' : `..${r.currency_max ?? ''}`)),
    ),
  };
}
