/**
 * Ledger bookings for tests that write the ledger directly (postLedgerTransaction), not through a
 * payment: ids unique across files and runs, two balanced entries each. Also what the running
 * sums tests compare: the trial balance as served (the sums) and as summing every entry gives it.
 */
import { sql } from 'kysely';
import type { Db } from '../../src/storage/db.js';
import {
  advanceLedgerSums,
  trialBalancePage,
  trialBalanceTotals,
  type LedgerSumsDrift,
  type LedgerSumsOptions,
} from '../../src/storage/repositories/ledger-sums.repository.js';
import {
  postLedgerTransaction,
  trialBalanceByCurrency,
  type AccountKey,
  type NewLedgerTransaction,
} from '../../src/storage/repositories/ledger.repository.js';
import { inTransaction } from '../../src/storage/transaction.js';

let bookingSeq = 0;

/** A balanced PAYMENT booking of `amountMinor` (100) from the PSP to `seller`: two entries. */
export function paymentBooking(seller: string, amountMinor = 100n): NewLedgerTransaction {
  bookingSeq += 1;
  const n = `${Date.now()}${String(bookingSeq).padStart(6, '0')}`.padStart(26, '0');
  return {
    id: `ltx_${n}`,
    orderId: `ord_${n}`,
    kind: 'PAYMENT',
    currency: 'USD',
    entries: [
      {
        account: 'psp_receivable',
        kind: 'PAYMENT_RECEIVABLE',
        debitMinor: amountMinor,
        creditMinor: 0n,
      },
      {
        account: `seller_payable:${seller}`,
        kind: 'PAYMENT_PAYABLE',
        debitMinor: 0n,
        creditMinor: amountMinor,
      },
    ],
    now: new Date(),
  };
}

export type HeldBooking = Readonly<{ finish: (outcome: 'commit' | 'rollback') => Promise<void> }>;

class RolledBack extends Error {}

/**
 * Posts `posting` in a transaction that stays open (its entries inserted, uncommitted) until
 * `finish` commits or rolls it back. The booking is in `open` until then, so that a test's
 * cleanup can end those a failure left open.
 */
export async function holdOpenBooking(
  db: Db,
  posting: NewLedgerTransaction,
  open: Set<HeldBooking>,
): Promise<HeldBooking> {
  let release: (commit: boolean) => void = () => {};
  const released = new Promise<boolean>((resolve) => (release = resolve));
  let posted: () => void = () => {};
  const isPosted = new Promise<void>((resolve) => (posted = resolve));
  const done = db
    .transaction()
    .execute(async (trx) => {
      await postLedgerTransaction(trx, posting);
      posted();
      if (!(await released)) throw new RolledBack();
    })
    .catch((error: unknown) => {
      if (!(error instanceof RolledBack)) throw error;
    });
  await Promise.race([
    isPosted,
    done.then(() => {
      throw new Error('the held booking finished before it was released');
    }),
  ]);
  const hold: HeldBooking = {
    finish: async (outcome) => {
      open.delete(hold);
      release(outcome === 'commit');
      await done;
    },
  };
  open.add(hold);
  return hold;
}

/** paymentBooking in `currency`. */
export function currencyBooking(
  seller: string,
  amountMinor: bigint,
  currency = 'USD',
): NewLedgerTransaction {
  // Money is USD only (domain/money.ts), but the ledger's tables and sums take any code, and the
  // trial balance keeps currencies apart: the sums are checked with several.
  return { ...paymentBooking(seller, amountMinor), currency: currency as 'USD' };
}

/** Posts a currencyBooking in a transaction of its own. */
export async function book(
  db: Db,
  seller: string,
  amountMinor: bigint,
  currency = 'USD',
): Promise<void> {
  await inTransaction(db, (trx) =>
    postLedgerTransaction(trx, currencyBooking(seller, amountMinor, currency)),
  );
}

/** The highest entry id, 0 when the ledger is empty. */
export async function maxLedgerEntryId(db: Db): Promise<bigint> {
  const result = await sql<{ id: string | null }>`SELECT MAX(id) AS id FROM ledger_entry`.execute(
    db,
  );
  return BigInt(result.rows[0]?.id ?? 0);
}

/** Passes until the sums' checkpoint reaches the last entry (a gap waits out the settle window). */
export async function catchUpLedgerSums(db: Db, options: LedgerSumsOptions): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last = -1n;
  for (;;) {
    const pass = await advanceLedgerSums(db, options);
    const max = await maxLedgerEntryId(db);
    if (pass.to >= max) return;
    if (Date.now() > deadline) throw new Error(`checkpoint stuck at ${pass.to} below ${max}`);
    if (pass.to === last) await new Promise((resolve) => setTimeout(resolve, 50));
    last = pass.to;
  }
}

export type TrialBalanceText = { rows: string[]; totals: string[] };

/** What summing every entry gives: the rows of every account, and the totals. */
export async function recountTrialBalance(db: Db): Promise<TrialBalanceText> {
  const rows = await sql<{ account: string; currency: string; d: string; c: string }>`
    SELECT account, currency, SUM(debit_minor) AS d, SUM(credit_minor) AS c
    FROM ledger_entry GROUP BY account, currency ORDER BY account, currency`.execute(db);
  return {
    rows: rows.rows.map((r) => `${r.account}/${r.currency}/${r.d}/${r.c}`),
    totals: (await trialBalanceByCurrency(db)).map(
      (t) => `${t.currency}/${t.debitMinor}/${t.creditMinor}`,
    ),
  };
}

/** What the trial balance answers from the running sums: every page walked, and the totals. */
export async function servedTrialBalance(db: Db, limit = 7): Promise<TrialBalanceText> {
  const rows: string[] = [];
  let after: AccountKey | undefined;
  for (let pages = 0; pages < 1_000; pages += 1) {
    const page = await trialBalancePage(db, { after, limit });
    rows.push(
      ...page.accounts.map((a) => `${a.account}/${a.currency}/${a.debitMinor}/${a.creditMinor}`),
    );
    if (page.next === undefined) break;
    after = page.next;
  }
  return {
    rows,
    totals: (await trialBalanceTotals(db)).map(
      (t) => `${t.currency}/${t.debitMinor}/${t.creditMinor}`,
    ),
  };
}

/** What ledgerSumsDrift finds when the running sums equal the entries they count. */
export const NO_LEDGER_SUMS_DRIFT: LedgerSumsDrift = {
  pairsDiffering: 0,
  accounts: [],
  currenciesDiffering: 0,
  currencies: [],
};

/** Running-sums options for tests: a settle window short enough that a gap holds a pass briefly. */
export const LEDGER_SUMS_TEST_OPTIONS: LedgerSumsOptions = {
  horizon: { reservationSettleMs: 300, markIntervalMs: 50, gapCheckIdsMax: 20_000 },
  entriesPerPassMax: 50_000,
};

/** Empties the ledger and its running sums, and puts the checkpoint back at 0, between tests. */
export async function emptyLedgerAndSums(db: Db): Promise<void> {
  for (const table of [
    'ledger_entry',
    'ledger_transaction',
    'ledger_entry_mark',
    'ledger_account_sum',
    'ledger_currency_sum',
  ]) {
    await sql`TRUNCATE TABLE ${sql.table(table)}`.execute(db);
  }
  await sql`UPDATE ledger_sum_checkpoint SET upto_id = 0, advanced_at = '1970-01-01 00:00:01'`.execute(
    db,
  );
}

/**
 * Writes `count` currency sums rows of codes Settle never books (X00, X01, …), as a damaged table
 * could hold: each one a currency sum that differs from its (no) entries, which a repair deletes.
 * Answers the codes, in order.
 */
export async function insertBogusCurrencySums(db: Db, count: number): Promise<string[]> {
  const codes = Array.from(
    { length: count },
    (_, i) => `X${i.toString(36).toUpperCase().padStart(2, '0')}`,
  );
  await sql`INSERT INTO ledger_currency_sum VALUES ${sql.join(
    codes.map((currency) => sql`(${currency}, 1, 0)`),
  )}`.execute(db);
  return codes;
}

/**
 * Writes `count` account sums rows, in `currency`, of accounts without entries (ghost:0000,
 * ghost:0001, …), as a damaged table could hold: each one a pair whose sums differ from its (no)
 * entries, which a repair deletes. Answers the accounts, in order.
 */
export async function insertBogusAccountSums(
  db: Db,
  count: number,
  currency = 'USD',
): Promise<string[]> {
  const accounts = Array.from({ length: count }, (_, i) => `ghost:${String(i).padStart(4, '0')}`);
  await sql`INSERT INTO ledger_account_sum VALUES ${sql.join(
    accounts.map((account) => sql`(${account}, ${currency}, 1, 0)`),
  )}`.execute(db);
  return accounts;
}
