/**
 * Goal: the ledger cannot hold an unbalanced transaction, and an order's entries cannot be
 * written twice; and the checks every test, the bench and the chaos report run find unbalanced
 * rows written behind the repository's back, per currency. Method: call the repository inside
 * real MariaDB transactions with bad and good input; check what was committed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sql } from 'kysely';
import type { Db } from '../../src/storage/db.js';
import { inTransaction } from '../../src/storage/transaction.js';
import {
  postLedgerTransaction,
  trialBalanceByCurrency,
  UnbalancedLedgerTransactionError,
  unbalancedLedgerTransactions,
  walletsNotMatchingLedger,
} from '../../src/storage/repositories/ledger.repository.js';
import { isCheckViolation, isDuplicateKey } from '../../src/storage/errors.js';
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
    await sql`INSERT INTO wallet (seller_id, currency, balance_minor, version, updated_at)
      VALUES ('wm', 'USD', 700, 1, ${now}), ('wd', 'USD', 501, 1, ${now}),
             ('wz', 'USD', 0, 1, ${now})`.execute(db);
    const differing = await walletsNotMatchingLedger(db);
    expect(
      differing
        .filter((row) => row.sellerId.startsWith('w'))
        .sort((a, b) => a.sellerId.localeCompare(b.sellerId)),
    ).toEqual([
      { sellerId: 'wd', walletMinor: 501n, ledgerMinor: 500n },
      { sellerId: 'wn', walletMinor: 0n, ledgerMinor: 40n },
    ]);
  });
});
