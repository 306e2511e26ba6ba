/**
 * Goal: the ledger cannot hold an unbalanced transaction, and an order's entries cannot be
 * written twice; the checks every test, the bench and the chaos report run find unbalanced rows
 * written behind the repository's back, per currency; and the trial balance, read a page at a
 * time, gives every (account, currency) exactly once. Method: call the repository inside real
 * MariaDB transactions with bad and good input; check what was committed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import type { Db } from '../../src/storage/db.js';
import { inTransaction } from '../../src/storage/transaction.js';
import {
  creditWallets,
  findWallet,
  WalletCurrencyMismatchError,
  postLedgerTransaction,
  trialBalanceByCurrency,
  trialBalancePageAfter,
  trialBalancePageToken,
  type AccountKey,
  UnbalancedLedgerTransactionError,
  unbalancedLedgerTransactions,
  walletsNotMatchingLedger,
} from '../../src/storage/repositories/ledger.repository.js';
import { trialBalancePage } from '../../src/storage/repositories/ledger-sums.repository.js';
import { isCheckViolation, isDuplicateKey } from '../../src/storage/errors.js';
import { encodePageToken } from '../../src/domain/page-token.js';
import type { CurrencyCode } from '../../src/domain/money.js';
import { expectLedgerBalanced, openTestDatabase } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_ledger_t', { poolSize: 2 }));
});
afterAll(async () => {
  await close?.();
});

const now = new Date();
const entries = (debit: bigint, credit: bigint) => [
  { account: 'psp_receivable', kind: 'PAYMENT_RECEIVABLE', debitMinor: debit, creditMinor: 0n },
  { account: 'seller_payable:s1', kind: 'PAYMENT_PAYABLE', debitMinor: 0n, creditMinor: credit },
];
const entryCount = async () =>
  Number((await sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_entry`.execute(db)).rows[0]?.n);

describe('postLedgerTransaction', () => {
  it('refuses an unbalanced transaction and commits nothing', async () => {
    await expect(
      inTransaction(db, (trx) =>
        postLedgerTransaction(trx, {
          id: 'ltx_UNBALANCED0000000000000000',
          orderId: 'ord_A',
          kind: 'PAYMENT',
          currency: 'USD',
          entries: entries(100n, 99n),
          now,
        }),
      ),
    ).rejects.toBeInstanceOf(UnbalancedLedgerTransactionError);
    expect(await entryCount()).toBe(0);
  });

  it('refuses a single-sided entry at the database level (CHECK constraint)', async () => {
    const error =
      await sql`INSERT INTO ledger_entry (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
      VALUES ('ltx_X', 'a', 'ord_X', 'K', 'USD', 5, 5, ${now})`
        .execute(db)
        .catch((e: unknown) => e);
    expect(isCheckViolation(error)).toBe(true);
  });

  it('commits a balanced transaction and refuses the same order and kind twice', async () => {
    await inTransaction(db, (trx) =>
      postLedgerTransaction(trx, {
        id: 'ltx_BALANCED000000000000000000',
        orderId: 'ord_B',
        kind: 'PAYMENT',
        currency: 'USD',
        entries: entries(250n, 250n),
        now,
      }),
    );
    expect(await entryCount()).toBe(2);
    const duplicate = await inTransaction(db, (trx) =>
      postLedgerTransaction(trx, {
        id: 'ltx_BALANCED000000000000000001',
        orderId: 'ord_B',
        kind: 'PAYMENT',
        currency: 'USD',
        entries: entries(250n, 250n),
        now,
      }),
    ).catch((e: unknown) => e);
    expect(isDuplicateKey(duplicate)).toBe(true);
    expect(await entryCount()).toBe(2);
    await expectLedgerBalanced(db);
  });
});

describe('unbalancedLedgerTransactions and trialBalanceByCurrency', () => {
  it('name an unbalanced transaction and the currency it unbalances, not the others', async () => {
    await inTransaction(db, (trx) =>
      postLedgerTransaction(trx, {
        id: 'ltx_USDBALANCED00000000000000',
        orderId: 'ord_C',
        kind: 'PAYMENT',
        currency: 'USD',
        entries: entries(300n, 300n),
        now,
      }),
    );
    expect(await unbalancedLedgerTransactions(db)).toEqual([]);
    // Written behind the repository's back, as a bug would: 100 debited, 90 credited.
    await sql`INSERT INTO ledger_entry (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
      VALUES ('ltx_EURUNBALANCED000000000000', 'psp_receivable', 'ord_D', 'PAYMENT_RECEIVABLE', 'EUR', 100, 0, ${now}),
             ('ltx_EURUNBALANCED000000000000', 'seller_payable:s1', 'ord_D', 'PAYMENT_PAYABLE', 'EUR', 0, 90, ${now})`.execute(
      db,
    );
    try {
      expect(await unbalancedLedgerTransactions(db)).toEqual(['ltx_EURUNBALANCED000000000000']);
      const byCurrency = await trialBalanceByCurrency(db);
      expect(byCurrency.map((t) => [t.currency, t.balanceMinor])).toEqual([
        ['EUR', 10n],
        ['USD', 0n],
      ]);
    } finally {
      await sql`DELETE FROM ledger_entry WHERE transaction_id = 'ltx_EURUNBALANCED000000000000'`.execute(
        db,
      );
    }
  });

  it('name a transaction whose amounts cancel out across two currencies', async () => {
    // 7 EUR debited against 7 USD credited, and the reverse in another transaction: each sums to
    // zero, and so does each currency over the whole ledger.
    await sql`INSERT INTO ledger_entry (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
      VALUES ('ltx_MIXEDA0000000000000000000', 'psp_receivable', 'ord_MA', 'PAYMENT_RECEIVABLE', 'EUR', 7, 0, ${now}),
             ('ltx_MIXEDA0000000000000000000', 'seller_payable:s1', 'ord_MA', 'PAYMENT_PAYABLE', 'USD', 0, 7, ${now}),
             ('ltx_MIXEDB0000000000000000000', 'psp_receivable', 'ord_MB', 'PAYMENT_RECEIVABLE', 'USD', 7, 0, ${now}),
             ('ltx_MIXEDB0000000000000000000', 'seller_payable:s1', 'ord_MB', 'PAYMENT_PAYABLE', 'EUR', 0, 7, ${now})`.execute(
      db,
    );
    try {
      expect(await unbalancedLedgerTransactions(db)).toEqual([
        'ltx_MIXEDA0000000000000000000',
        'ltx_MIXEDB0000000000000000000',
      ]);
      expect((await trialBalanceByCurrency(db)).every((t) => t.balanceMinor === 0n)).toBe(true);
    } finally {
      await sql`DELETE FROM ledger_entry WHERE transaction_id LIKE 'ltx_MIXED%'`.execute(db);
    }
  });
});

describe('the trial balance while bookings commit', () => {
  it('never shows half a transaction: its totals stay zero before, during and after', async () => {
    const totalsNow = async () =>
      (await trialBalanceByCurrency(db)).map((t) => [t.currency, t.balanceMinor]);
    const before = await totalsNow();
    let seenDuring: unknown;
    await inTransaction(db, async (trx) => {
      await postLedgerTransaction(trx, {
        id: 'ltx_READWHILEBOOKING0000000000',
        orderId: 'ord_READWHILEBOOKING',
        kind: 'PAYMENT',
        currency: 'USD',
        entries: entries(9_007_199_254_740_993n, 9_007_199_254_740_993n),
        now,
      });
      // Another connection reads while this booking is written but not committed.
      seenDuring = await totalsNow();
    });
    expect(seenDuring).toEqual(before);
    expect(await totalsNow()).toEqual(before);
    const page = await trialBalancePage(db, { limit: 1_000 });
    expect(page.accounts.reduce((sum, a) => sum + a.balanceMinor, 0n)).toBe(0n);
    expect(
      page.accounts.find((a) => a.account === 'seller_payable:s1')?.creditMinor,
    ).toBeGreaterThanOrEqual(9_007_199_254_740_993n);
  });
});

describe('walletsNotMatchingLedger', () => {
  it('names a wallet that differs from its payable account, and an account with no wallet', async () => {
    // Payable accounts: m (matches its wallet), d (its wallet says 1 more), n (no wallet).
    const post = (orderId: string, seller: string, amount: bigint) =>
      inTransaction(db, (trx) =>
        postLedgerTransaction(trx, {
          id: `ltx_WALLETS${orderId.slice(4).padEnd(17, '0')}`,
          orderId,
          kind: 'PAYMENT',
          currency: 'USD',
          entries: [
            {
              account: 'psp_receivable',
              kind: 'PAYMENT_RECEIVABLE',
              debitMinor: amount,
              creditMinor: 0n,
            },
            {
              account: `seller_payable:${seller}`,
              kind: 'PAYMENT_PAYABLE',
              debitMinor: 0n,
              creditMinor: amount,
            },
          ],
          now,
        }),
      );
    await post('ord_WM1', 'wm', 700n);
    await post('ord_WD1', 'wd', 500n);
    await post('ord_WN1', 'wn', 40n);
    await post('ord_WE1', 'we', 300n);
    // we: the right amount in the wrong currency.
    await sql`INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
      VALUES ('wm', 'USD', 700, 1, ${now}), ('wd', 'USD', 501, 1, ${now}),
             ('wz', 'USD', 0, 1, ${now}), ('we', 'EUR', 300, 1, ${now})`.execute(db);
    const differing = await walletsNotMatchingLedger(db);
    expect(
      differing
        .filter((row) => row.sellerId.startsWith('w'))
        .sort((a, b) => a.sellerId.localeCompare(b.sellerId)),
    ).toEqual([
      {
        sellerId: 'wd',
        walletMinor: 501n,
        ledgerMinor: 500n,
        walletCurrency: 'USD',
        ledgerCurrencies: 'USD',
      },
      {
        sellerId: 'we',
        walletMinor: 300n,
        ledgerMinor: 300n,
        walletCurrency: 'EUR',
        ledgerCurrencies: 'USD',
      },
      {
        sellerId: 'wn',
        walletMinor: 0n,
        ledgerMinor: 40n,
        walletCurrency: '',
        ledgerCurrencies: 'USD',
      },
    ]);
  });
});

describe('trialBalancePage', () => {
  // Accounts with one to three currencies, so that pages end inside an account, at its last
  // currency, and at the last row; each row is posted against a contra account that sorts last.
  const FIXTURE: ReadonlyArray<readonly [string, string, bigint]> = [
    ['tb:a', 'USD', 11n],
    ['tb:b', 'EUR', 12n],
    ['tb:b', 'USD', 13n],
    ['tb:c', 'USD', 14n],
    ['tb:d', 'EUR', 15n],
    ['tb:d', 'GBP', 16n],
    ['tb:d', 'USD', 17n],
    ['tb:e', 'USD', 18n],
    ['tb:with space', 'USD', 19n],
  ];

  /** Every (account, currency) with its sums, from one plain GROUP BY: what the pages must add up to. */
  async function wholeTrialBalance(): Promise<string[]> {
    const result = await sql<{
      account: string;
      currency: string;
      debits: string;
      credits: string;
    }>`
      SELECT account, currency, SUM(debit_minor) AS debits, SUM(credit_minor) AS credits
      FROM ledger_entry GROUP BY account, currency ORDER BY account, currency`.execute(db);
    return result.rows.map((r) => `${r.account}/${r.currency}/${r.debits}/${r.credits}`);
  }

  async function walk(limit: number): Promise<{ rows: string[]; pages: number }> {
    const rows: string[] = [];
    let after: AccountKey | undefined;
    for (let pages = 1; pages <= 100; pages += 1) {
      const page = await trialBalancePage(db, { after, limit });
      expect(page.accounts.length).toBeLessThanOrEqual(limit);
      rows.push(
        ...page.accounts.map((a) => `${a.account}/${a.currency}/${a.debitMinor}/${a.creditMinor}`),
      );
      for (const a of page.accounts) expect(a.balanceMinor).toBe(a.debitMinor - a.creditMinor);
      if (page.next === undefined) return { rows, pages };
      after = page.next;
    }
    throw new Error('more than 100 pages');
  }

  it('walks every (account, currency) exactly once, in order, whatever the page size', async () => {
    for (const [index, [account, currency, amount]] of FIXTURE.entries()) {
      const transactionId = `ltx_TRIALPAGE${String(index).padStart(17, '0')}`;
      const orderId = `ord_TRIALPAGE${index}`;
      await sql`INSERT INTO ledger_entry (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
        VALUES (${transactionId}, ${account}, ${orderId}, 'FIXTURE_DEBIT', ${currency}, ${amount}, 0, ${now}),
               (${transactionId}, 'tb:~contra', ${orderId}, 'FIXTURE_CREDIT', ${currency}, 0, ${amount}, ${now})`.execute(
        db,
      );
    }
    try {
      const whole = await wholeTrialBalance();
      expect(whole.length).toBeGreaterThan(FIXTURE.length);
      for (const limit of [1, 2, 3, 4, whole.length - 1, whole.length, whole.length + 1]) {
        const walked = await walk(limit);
        expect(walked.rows, `limit ${limit}`).toEqual(whole);
        expect(walked.pages, `limit ${limit}`).toBe(Math.max(1, Math.ceil(whole.length / limit)));
      }
    } finally {
      await sql`DELETE FROM ledger_entry WHERE transaction_id LIKE 'ltx_TRIALPAGE%'`.execute(db);
    }
  });

  it('refuses a limit outside 1-1000 (a caller that forgot to bound it)', async () => {
    for (const limit of [0, 1_001, 1.5]) {
      await expect(trialBalancePage(db, { limit })).rejects.toThrow(RangeError);
    }
  });

  it('writes a key as a page token and reads it back, and refuses every other token', () => {
    expect(trialBalancePageToken(undefined)).toBe('');
    expect(trialBalancePageAfter('')).toBeUndefined();
    for (const key of [
      { account: 'psp_receivable', currency: 'USD' },
      { account: 'seller_payable:a b:c', currency: 'EUR' },
      { account: '', currency: 'USD' },
    ]) {
      expect(trialBalancePageAfter(trialBalancePageToken(key))).toEqual(key);
    }
    for (const token of [
      'garbage',
      // ListEntries' and the other lists' tokens: bare ids, with and without filters.
      encodePageToken('ListEntries', '123', {}),
      encodePageToken('ListPayments', 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G', { buyerId: 'b' }),
      // The right cursor under a filter the trial balance does not have, or a bad currency.
      encodePageToken('GetTrialBalance', 'psp_receivable USD', { account: 'psp_receivable' }),
      encodePageToken('GetTrialBalance', 'psp_receivable usd', {}),
    ]) {
      expect(() => trialBalancePageAfter(token), token).toThrow(
        'page_token: invalid or from a request with other filters; start again without page_token',
      );
    }
  });
});

describe('creditWallets', () => {
  const credit = (sellerId: string, amountMinor: bigint, at: Date) => ({
    sellerId,
    currency: 'USD' as const,
    amountMinor,
    now: at,
  });
  const walletRow = async (sellerId: string) =>
    (
      await sql<{ balance_minor: string; version: string }>`
        SELECT balance_minor, version FROM wallet WHERE seller_id = ${sellerId}`.execute(db)
    ).rows[0];

  it('adds up a batch per seller: version counts the credits, and the sums stay exact past 2^53', async () => {
    const at = new Date('2026-01-02T03:04:05.006Z');
    // 2^53 + 1 is not a JS number: a Number() anywhere on the way would round it.
    const big = 9_007_199_254_740_993n;
    await inTransaction(db, (trx) =>
      creditWallets(trx, [
        credit('cw-b', 5n, at),
        credit('cw-a', big, at),
        credit('cw-b', 7n, at),
        credit('cw-a', 1n, at),
        credit('cw-b', 11n, at),
      ]),
    );
    await inTransaction(db, (trx) => creditWallets(trx, [credit('cw-a', 2n, at)]));
    expect(await walletRow('cw-a')).toEqual({ balance_minor: (big + 3n).toString(), version: '3' });
    expect(await walletRow('cw-b')).toEqual({ balance_minor: '23', version: '3' });
    expect((await findWallet(db, 'cw-a'))?.balanceMinor).toBe(big + 3n);
  });

  it('refuses a credit in another currency than its wallet, naming both, and changes nothing', async () => {
    const at = new Date('2026-01-02T03:04:05.000Z');
    await sql`INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
      VALUES ('cw-eur', 'EUR', 100, 1, ${at})`.execute(db);
    const refused = await inTransaction(db, (trx) =>
      creditWallets(trx, [credit('cw-fresh', 1n, at), credit('cw-eur', 50n, at)]),
    ).catch((error: unknown) => error);
    // The SQL guard refused it (MySQL's "BIGINT UNSIGNED value is out of range", kept as the
    // cause); the error says what it means.
    expect(refused).toBeInstanceOf(WalletCurrencyMismatchError);
    expect(refused).toMatchObject({
      code: 'FAILED_PRECONDITION',
      retryable: false,
      sellerId: 'cw-eur',
      message:
        'the wallet of seller cw-eur holds EUR, and a credit of 50 minor units is in USD: a ' +
        'wallet holds one currency, so the credit was refused and nothing of its transition was ' +
        'written',
      cause: expect.objectContaining({ errno: 1690 }),
    });
    expect(await walletRow('cw-eur')).toEqual({ balance_minor: '100', version: '1' });
    // The whole statement failed: the other seller's new wallet was not written either.
    expect(await walletRow('cw-fresh')).toBeUndefined();
  });

  it('refuses credits of one seller in two currencies in one batch', async () => {
    const at = new Date('2026-01-02T03:04:05.000Z');
    await expect(
      inTransaction(db, (trx) =>
        creditWallets(trx, [
          credit('cw-mixed', 1n, at),
          { ...credit('cw-mixed', 2n, at), currency: 'EUR' as CurrencyCode },
        ]),
      ),
    ).rejects.toThrow(WalletCurrencyMismatchError);
    expect(await walletRow('cw-mixed')).toBeUndefined();
  });

  it('keeps the latest update time when a batch made earlier commits after a later one', async () => {
    // Two batches of a hot seller in flight: the one made at `earlier` waits for the wallet's
    // row lock held by the one made at `later`, and commits second.
    const earlier = new Date('2026-01-02T03:04:05.000Z');
    const later = new Date('2026-01-02T03:04:06.000Z');
    await inTransaction(db, (trx) => creditWallets(trx, [credit('cw-hot', 10n, later)]));
    await inTransaction(db, (trx) => creditWallets(trx, [credit('cw-hot', 20n, earlier)]));
    const wallet = await findWallet(db, 'cw-hot');
    expect(wallet?.balanceMinor).toBe(30n);
    expect(wallet?.updatedAt).toEqual(later);
  });
});
