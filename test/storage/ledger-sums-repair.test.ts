/**
 * Goal: repairLedgerSums mends running sums that differ from the entries they count (a pair's
 * row changed, one deleted, one for an account without entries, a currency's row changed): a dry
 * run reports exactly those and writes nothing; the repair sets them to what the entries up to the
 * checkpoint add up to, so that ledgerSumsDrift finds nothing, the served trial balance equals
 * the full scan, and a second repair finds nothing. The same when accounts are read a few at a
 * time, the damaged ones on the pages' edges; and while bookings are written and passes add them
 * to the sums. A pass that comes while the repair holds a page between its read and its write
 * waits for the repair (the checkpoint row lock), rather than have its entries overwritten; a
 * pass that holds the row when the repair comes is seen whole by it (its snapshot is fixed after
 * the lock), and bookings are never held up by it. Aborted, even after pages wrote, it writes
 * nothing. ledgerSumsDrift, reconciliation's check, lists exactly what a dry run reports, every
 * kind of difference at once and on several pages (rows of zeros for pairs without entries too),
 * counts every pair and every currency past the few of each its caller lists, waits for no
 * lock, and stopped says it was a comparison that stopped, not a repair to call again with a
 * longer deadline. Method: ledger-sums.repository.ts over a fresh MariaDB database, bookings
 * posted by the ledger repository in real transactions, the sums damaged by hand with SQL after a
 * pass; the pass that races the repair is let in through the repair's test hook, or is written by
 * hand to hold the row, and each wait for the row is seen in information_schema.INNODB_TRX;
 * bookings during a repair wait 1 s at most for a lock, so that one held up fails.
 */
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/storage/db.js';
import {
  advanceLedgerSums,
  CURRENCY_REPAIRS_LISTED_MAX,
  ledgerSumsCheckpoint,
  ledgerSumsDrift,
  repairLedgerSums,
  trialBalanceTotals,
  type LedgerSumsRepair,
} from '../../src/storage/repositories/ledger-sums.repository.js';
import {
  postLedgerTransaction,
  trialBalanceByCurrency,
} from '../../src/storage/repositories/ledger.repository.js';
import type { Trx } from '../../src/storage/transaction.js';
import { openTestDatabase } from '../support/harness.js';
import {
  book,
  catchUpLedgerSums,
  currencyBooking,
  maxLedgerEntryId,
  recountTrialBalance,
  servedTrialBalance,
  emptyLedgerAndSums,
  insertBogusAccountSums,
  insertBogusCurrencySums,
  LEDGER_SUMS_TEST_OPTIONS,
  NO_LEDGER_SUMS_DRIFT,
} from '../support/ledger.js';

/** A settle window short enough for a test; gaps (rolled-back bookings) hold a pass that long. */
const OPTIONS = LEDGER_SUMS_TEST_OPTIONS;

let db: Db;
let close: () => Promise<void>;

beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_ledger_sums_repair_t', { poolSize: 12 }));
});
afterAll(async () => {
  await close?.();
});
afterEach(async () => {
  await emptyLedgerAndSums(db);
});

/** `count` bookings to `seller<i % sellers>`, one transaction each, amounts 1..count. */
async function bookMany(count: number, seller: string, sellers: number, currency = 'USD') {
  for (let i = 0; i < count; i += 1) {
    await book(db, `${seller}${String(i % sellers).padStart(2, '0')}`, BigInt(i + 1), currency);
  }
}

/** Every row of the sums' three tables, as text: equal before and after means untouched. */
async function sumsTables(): Promise<string[]> {
  const accounts = await sql<{ account: string; currency: string; d: string; c: string }>`
    SELECT account, currency, debit_minor AS d, credit_minor AS c
    FROM ledger_account_sum ORDER BY account, currency`.execute(db);
  const currencies = await sql<{ currency: string; d: string; c: string }>`
    SELECT currency, debit_minor AS d, credit_minor AS c
    FROM ledger_currency_sum ORDER BY currency`.execute(db);
  const checkpoint = await sql<{ upto_id: string; advanced_at: Date }>`
    SELECT upto_id, advanced_at FROM ledger_sum_checkpoint`.execute(db);
  return [
    ...accounts.rows.map((r) => `account ${r.account}/${r.currency}/${r.d}/${r.c}`),
    ...currencies.rows.map((r) => `currency ${r.currency}/${r.d}/${r.c}`),
    ...checkpoint.rows.map((r) => `checkpoint ${r.upto_id}/${r.advanced_at.toISOString()}`),
  ];
}

/** The sums agree with the entries: no drift, and the served trial balance is the full scan's. */
async function expectSumsMended(): Promise<void> {
  expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
  expect(await trialBalanceTotals(db)).toEqual(await trialBalanceByCurrency(db));
  expect(await servedTrialBalance(db)).toEqual(await recountTrialBalance(db));
}

/** A repair that found nothing at checkpoint `uptoId` over `accounts` accounts. */
function nothingToRepair(uptoId: bigint, accountsChecked: number): LedgerSumsRepair {
  return {
    uptoId,
    dryRun: false,
    accountsChecked,
    pairsRepaired: 0,
    pairs: [],
    currenciesRepaired: 0,
    currencies: [],
  };
}

const amounts = (debitMinor: bigint, creditMinor: bigint) => ({ debitMinor, creditMinor });

describe('repairLedgerSums', () => {
  it('reports the hand edits in a dry run without writing, then mends them, and a second finds nothing', async () => {
    await bookMany(20, 's', 5);
    await bookMany(6, 'e', 2, 'EUR');
    await catchUpLedgerSums(db, OPTIONS);
    const { uptoId } = await ledgerSumsCheckpoint(db);
    // Entries after the checkpoint are not the sums' to count: a repair leaves them out.
    await bookMany(4, 's', 5);
    await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5
              WHERE account = 'psp_receivable' AND currency = 'USD'`.execute(db);
    await sql`DELETE FROM ledger_account_sum
              WHERE account = 'seller_payable:s03' AND currency = 'USD'`.execute(db);
    await sql`INSERT INTO ledger_account_sum VALUES ('seller_payable:ghost', 'USD', 0, 7)`.execute(
      db,
    );
    await sql`UPDATE ledger_currency_sum SET credit_minor = credit_minor - 3
              WHERE currency = 'EUR'`.execute(db);
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual({
      pairsDiffering: 3,
      accounts: [
        { account: 'psp_receivable', currency: 'USD' },
        { account: 'seller_payable:ghost', currency: 'USD' },
        { account: 'seller_payable:s03', currency: 'USD' },
      ],
      currenciesDiffering: 1,
      currencies: ['EUR'],
    });
    // USD: 1..20 to s00..s04 (s03 got 4 + 9 + 14 + 19); EUR: 1..6.
    const expected: LedgerSumsRepair = {
      uptoId,
      dryRun: true,
      // psp_receivable, e00, e01, ghost, s00..s04.
      accountsChecked: 9,
      pairsRepaired: 3,
      pairs: [
        {
          account: 'psp_receivable',
          currency: 'USD',
          before: amounts(215n, 0n),
          after: amounts(210n, 0n),
        },
        {
          account: 'seller_payable:ghost',
          currency: 'USD',
          before: amounts(0n, 7n),
          after: undefined,
        },
        {
          account: 'seller_payable:s03',
          currency: 'USD',
          before: undefined,
          after: amounts(0n, 46n),
        },
      ],
      currenciesRepaired: 1,
      currencies: [{ currency: 'EUR', before: amounts(21n, 18n), after: amounts(21n, 21n) }],
    };
    const untouched = await sumsTables();
    expect(await repairLedgerSums(db, { dryRun: true })).toEqual(expected);
    expect(await sumsTables()).toEqual(untouched);

    expect(await repairLedgerSums(db, { dryRun: false })).toEqual({ ...expected, dryRun: false });
    await expectSumsMended();
    expect((await ledgerSumsCheckpoint(db)).uptoId).toBe(uptoId);
    expect(await repairLedgerSums(db, { dryRun: false })).toEqual(nothingToRepair(uptoId, 8));
  });

  it('gives the same outcome a few accounts at a time, with damaged pairs on the pages’ edges', async () => {
    // 16 sellers, psp_receivable and fee_expense (sums only): 18 accounts, pages of 3.
    await bookMany(48, 's', 16);
    await catchUpLedgerSums(db, OPTIONS);
    const { uptoId } = await ledgerSumsCheckpoint(db);
    // In order: fee_expense, psp_receivable, s00 | s01 s02 s03 | s04 s05 s06 | s07 …
    await sql`INSERT INTO ledger_account_sum VALUES ('fee_expense', 'USD', 3, 0)`.execute(db);
    for (const seller of ['s00', 's01', 's06', 's07', 's15']) {
      await sql`UPDATE ledger_account_sum SET credit_minor = credit_minor + 1
                WHERE account = ${`seller_payable:${seller}`}`.execute(db);
    }
    await sql`DELETE FROM ledger_account_sum WHERE account = 'seller_payable:s12'`.execute(db);
    const drift = await ledgerSumsDrift(db, { listedMax: 100 });
    expect(drift.accounts).toHaveLength(7);
    const paged = await repairLedgerSums(db, { dryRun: true, accountsPerPage: 3 });
    const whole = await repairLedgerSums(db, { dryRun: true });
    expect(paged).toEqual(whole);
    expect(paged.accountsChecked).toBe(18);
    expect(paged.pairs.map((pair) => ({ account: pair.account, currency: pair.currency }))).toEqual(
      drift.accounts,
    );
    expect(paged.currencies).toEqual([]);

    expect(await repairLedgerSums(db, { dryRun: false, accountsPerPage: 3 })).toEqual({
      ...paged,
      dryRun: false,
    });
    await expectSumsMended();
    expect(await repairLedgerSums(db, { dryRun: false, accountsPerPage: 3 })).toEqual(
      nothingToRepair(uptoId, 17),
    );
  });

  it('leaves the sums equal to the entries when bookings and passes run during repairs', async () => {
    await bookMany(60, 's', 12);
    await catchUpLedgerSums(db, OPTIONS);
    await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5
              WHERE account = 'psp_receivable'`.execute(db);
    await sql`UPDATE ledger_currency_sum SET debit_minor = debit_minor + 5`.execute(db);
    let stop = false;
    const passes = (async () => {
      let count = 0;
      while (!stop && count < 10_000) {
        await advanceLedgerSums(db, OPTIONS);
        count += 1;
      }
      return count;
    })();
    const lanes = Array.from({ length: 4 }, async (_, lane) => {
      for (let i = 0; i < 40; i += 1) {
        await db
          .transaction()
          .execute(async (trx) => {
            const currency = lane % 2 === 0 ? 'EUR' : 'USD';
            await postLedgerTransaction(trx, currencyBooking(`lane${lane}`, 1n, currency));
            if (i % 7 === 0) throw new Error('rolled back');
          })
          .catch((error: unknown) => {
            if (!(error instanceof Error && error.message === 'rolled back')) throw error;
          });
      }
    });
    let booked = false;
    const bookings = Promise.all(lanes).finally(() => (booked = true));
    // Repairs one after another for as long as the bookings go on.
    const repairs: LedgerSumsRepair[] = [];
    while (!booked && repairs.length < 100) {
      repairs.push(await repairLedgerSums(db, { dryRun: false, accountsPerPage: 4 }));
    }
    await bookings;
    stop = true;
    expect(await passes).toBeGreaterThan(1);
    expect(repairs.length).toBeGreaterThan(1);
    expect(repairs[0]?.pairs.map((pair) => pair.account)).toEqual(['psp_receivable']);
    expect(repairs[0]?.currencies.map((repair) => repair.currency)).toEqual(['USD']);
    expect(repairs.slice(1).every((repair) => repair.pairsRepaired === 0)).toBe(true);
    expect(repairs.slice(1).every((repair) => repair.currencies.length === 0)).toBe(true);
    await expectSumsMended();
    await catchUpLedgerSums(db, OPTIONS);
    await expectSumsMended();
  });

  it('makes a pass that comes between its read and its write wait, so that none of its entries is lost', async () => {
    await bookMany(10, 's', 3);
    await catchUpLedgerSums(db, OPTIONS);
    await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5
              WHERE account = 'psp_receivable'`.execute(db);
    await sql`UPDATE ledger_currency_sum SET debit_minor = debit_minor + 5`.execute(db);
    // Settled entries after the checkpoint, to psp_receivable too: the pass adds them.
    await bookMany(3, 's', 3);
    let pass: ReturnType<typeof advanceLedgerSums> | undefined;
    let passWaited = false;
    const repair = await repairLedgerSums(db, {
      dryRun: false,
      beforePageWrite: async () => {
        // The pass runs on a connection of its own while the repair holds its first page, read
        // and not yet written; it is let finish or seen waiting for a lock before going on.
        pass ??= advanceLedgerSums(db, OPTIONS);
        let done = false;
        void pass.finally(() => (done = true));
        // Within innodb_lock_wait_timeout (5 s), past which the waiting pass would give up.
        const deadline = Date.now() + 4_000;
        while (!done && !passWaited && Date.now() < deadline) {
          // InnoDB refreshes INNODB_TRX only when it was not read for 100 ms: poll slower.
          await new Promise((resolve) => setTimeout(resolve, 250));
          passWaited = (await lockWaitsHere(PASS_LOCKING)) > 0;
        }
      },
    });
    expect(repair.pairs.map((pair) => pair.account)).toEqual(['psp_receivable']);
    const passed = await pass;
    expect(passed?.entries).toBe(6);
    // Had the pass committed in between, the repair's write would have dropped its entries.
    await expectSumsMended();
    expect(passWaited).toBe(true);
  });

  it('sees a pass that committed while it waited for the checkpoint row, and loses none of its entries', async () => {
    await bookMany(6, 's', 3);
    await catchUpLedgerSums(db, OPTIONS);
    const from = (await ledgerSumsCheckpoint(db)).uptoId;
    // Entries the pass adds: three committed before the repair starts, three while it waits.
    await bookMany(3, 's', 3);
    let repair: Promise<LedgerSumsRepair> | undefined;
    let to = from;
    await db.transaction().execute(async (pass) => {
      // A pass's statements by hand, so that it holds the checkpoint row while the repair comes.
      await sql`SELECT upto_id FROM ledger_sum_checkpoint WHERE id = 1 FOR UPDATE`.execute(pass);
      repair = repairLedgerSums(db, { dryRun: false });
      repair.catch(() => undefined);
      await untilLockWait(REPAIR_LOCKING);
      await bookMany(3, 's', 3);
      to = await maxLedgerEntryId(db);
      await addToSums(pass, from, to);
    });
    // Had the repair's snapshot been fixed before its lock, it would compare the sums without
    // this pass with the entries of the first three bookings only, and write the pairs those
    // touch back without the last three.
    expect(await repair).toEqual(nothingToRepair(to, 4));
    expect((await ledgerSumsCheckpoint(db)).uptoId).toBe(to);
    await expectSumsMended();
  });

  it('holds up no booking while it holds a page between its read and its write, pages before it written', async () => {
    await bookMany(12, 's', 6);
    await catchUpLedgerSums(db, OPTIONS);
    await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5
              WHERE account = 'psp_receivable'`.execute(db);
    await sql`DELETE FROM ledger_account_sum WHERE account = 'seller_payable:s05'`.execute(db);
    // Pages of two: psp_receivable s00 | s01 s02 | s03 s04 | s05.
    const bookings: string[] = [];
    let pages = 0;
    const repair = await repairLedgerSums(db, {
      dryRun: false,
      accountsPerPage: 2,
      beforePageWrite: async () => {
        pages += 1;
        if (pages !== 3) return;
        // psp_receivable, which every booking debits, has been written: a booking to an account
        // before this page, on it, after it, and to a new one.
        for (const seller of ['s01', 's03', 's05', 'n00']) {
          bookings.push(await bookImpatiently(seller));
        }
      },
    });
    expect(bookings).toEqual(['s01 committed', 's03 committed', 's05 committed', 'n00 committed']);
    expect(repair.pairs.map((pair) => pair.account)).toEqual([
      'psp_receivable',
      'seller_payable:s05',
    ]);
    await catchUpLedgerSums(db, OPTIONS);
    await expectSumsMended();
  });

  it('writes nothing when aborted after a page wrote, or after the last page', async () => {
    await bookMany(6, 's', 3);
    await catchUpLedgerSums(db, OPTIONS);
    await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5`.execute(db);
    await sql`UPDATE ledger_currency_sum SET debit_minor = debit_minor + 5`.execute(db);
    const untouched = await sumsTables();
    // Pages of one, each damaged: psp_receivable | s00 | s01 | s02.
    for (const abortAtPage of [1, 4]) {
      const aborting = new AbortController();
      let pages = 0;
      await expect(
        repairLedgerSums(db, {
          dryRun: false,
          accountsPerPage: 1,
          signal: aborting.signal,
          beforePageWrite: async () => {
            pages += 1;
            if (pages === abortAtPage) aborting.abort();
          },
        }),
      ).rejects.toMatchObject({
        code: 'ABORTED',
        message: expect.stringContaining('nothing was written') as unknown,
      });
      expect(pages).toBe(abortAtPage);
      expect(await sumsTables()).toEqual(untouched);
    }
    const repair = await repairLedgerSums(db, { dryRun: false, accountsPerPage: 1 });
    expect(repair.pairsRepaired).toBe(4);
    await expectSumsMended();
  });

  it('says so when the checkpoint row stays locked, and writes nothing once aborted', async () => {
    await bookMany(3, 's', 3);
    await catchUpLedgerSums(db, OPTIONS);
    await sql`UPDATE ledger_currency_sum SET debit_minor = debit_minor + 5`.execute(db);
    const untouched = await sumsTables();
    const aborted = new AbortController();
    aborted.abort();
    await expect(
      repairLedgerSums(db, { dryRun: false, signal: aborted.signal }),
    ).rejects.toMatchObject({
      code: 'ABORTED',
      message: expect.stringContaining('nothing was written') as unknown,
    });
    // Another repair (or a pass) holds the row: after innodb_lock_wait_timeout, UNAVAILABLE.
    await db.transaction().execute(async (holder) => {
      await sql`SELECT upto_id FROM ledger_sum_checkpoint WHERE id = 1 FOR UPDATE`.execute(holder);
      await db.connection().execute(async (waiter) => {
        await sql`SET SESSION innodb_lock_wait_timeout = 1`.execute(waiter);
        try {
          await expect(repairLedgerSums(waiter, { dryRun: false })).rejects.toMatchObject({
            code: 'UNAVAILABLE',
            retryable: true,
            message: expect.stringMatching(
              /^the running sums are being written by someone else \(another RepairLedgerSums/,
            ) as unknown,
          });
          // A dry run locks nothing: it answers meanwhile.
          expect((await repairLedgerSums(waiter, { dryRun: true })).currencies).toHaveLength(1);
        } finally {
          // The connection goes back to the pool: with the pool's setting.
          await sql`SET SESSION innodb_lock_wait_timeout = 5`.execute(waiter);
        }
      });
    });
    expect(await sumsTables()).toEqual(untouched);
  });
});

describe('ledgerSumsDrift', () => {
  it('lists exactly what a dry run of the repair reports, page by page, and nothing once repaired', async () => {
    await bookMany(48, 's', 16);
    await bookMany(6, 'e', 2, 'EUR');
    await catchUpLedgerSums(db, OPTIONS);
    // In pages of 3: psp_receivable e00 e01 | ghost s00 s01 | s02 s03 s04 | s05 s06 s07 | … |
    // s14 s15 zz. Every kind of difference at once, on the pages' edges, including rows of zeros
    // for pairs without entries, which a comparison of amounts alone cannot tell from no row.
    await sql`UPDATE ledger_account_sum SET debit_minor = debit_minor + 5
              WHERE account = 'psp_receivable' AND currency = 'USD'`.execute(db);
    await sql`INSERT INTO ledger_account_sum VALUES ('seller_payable:ghost', 'USD', 0, 7),
              ('seller_payable:s04', 'EUR', 0, 0), ('seller_payable:zz', 'USD', 0, 0)`.execute(db);
    await sql`UPDATE ledger_account_sum SET credit_minor = credit_minor + 1
              WHERE account = 'seller_payable:s01'`.execute(db);
    await sql`DELETE FROM ledger_account_sum WHERE account = 'seller_payable:s07'`.execute(db);
    await sql`UPDATE ledger_currency_sum SET credit_minor = credit_minor - 3
              WHERE currency = 'EUR'`.execute(db);
    await sql`INSERT INTO ledger_currency_sum VALUES ('GBP', 0, 0)`.execute(db);
    const differing = [
      { account: 'psp_receivable', currency: 'USD' },
      { account: 'seller_payable:ghost', currency: 'USD' },
      { account: 'seller_payable:s01', currency: 'USD' },
      { account: 'seller_payable:s04', currency: 'EUR' },
      { account: 'seller_payable:s07', currency: 'USD' },
      { account: 'seller_payable:zz', currency: 'USD' },
    ];
    const untouched = await sumsTables();
    for (const accountsPerPage of [3, undefined]) {
      const dryRun = await repairLedgerSums(db, { dryRun: true, accountsPerPage });
      const drift = await ledgerSumsDrift(db, { listedMax: 100, accountsPerPage });
      expect(drift).toEqual({
        pairsDiffering: differing.length,
        accounts: differing,
        currenciesDiffering: 2,
        currencies: ['EUR', 'GBP'],
      });
      expect(drift.accounts).toEqual(
        dryRun.pairs.map(({ account, currency }) => ({ account, currency })),
      );
      expect(drift.pairsDiffering).toBe(dryRun.pairsRepaired);
      expect(drift.currencies).toEqual(dryRun.currencies.map(({ currency }) => currency));
    }
    // A pass (or a repair) holding the checkpoint row holds up no check, nor the reverse.
    await db.transaction().execute(async (holder) => {
      await sql`SELECT upto_id FROM ledger_sum_checkpoint WHERE id = 1 FOR UPDATE`.execute(holder);
      await db.connection().execute(async (checker) => {
        await sql`SET SESSION innodb_lock_wait_timeout = 1`.execute(checker);
        try {
          expect((await ledgerSumsDrift(checker, { listedMax: 100 })).pairsDiffering).toBe(
            differing.length,
          );
        } finally {
          // The connection goes back to the pool: with the pool's setting.
          await sql`SET SESSION innodb_lock_wait_timeout = 5`.execute(checker);
        }
      });
    });
    expect(await sumsTables()).toEqual(untouched);

    const repair = await repairLedgerSums(db, { dryRun: false, accountsPerPage: 3 });
    expect(repair.pairs.map(({ account, currency }) => ({ account, currency }))).toEqual(differing);
    await expectSumsMended();
    expect(await ledgerSumsDrift(db, { listedMax: 100, accountsPerPage: 3 })).toEqual(
      NO_LEDGER_SUMS_DRIFT,
    );
    const again = await repairLedgerSums(db, { dryRun: true, accountsPerPage: 3 });
    expect([again.pairsRepaired, again.currencies]).toEqual([0, []]);
  });

  it("stops when aborted, in words of its own rather than a repair's advice", async () => {
    await bookMany(2, 's', 2);
    await catchUpLedgerSums(db, OPTIONS);
    const aborted = new AbortController();
    aborted.abort();
    const stopped = await ledgerSumsDrift(db, { listedMax: 100, signal: aborted.signal }).catch(
      (error: unknown) => error,
    );
    expect(stopped).toMatchObject({
      code: 'ABORTED',
      message:
        'the comparison of the running sums with the ledger entries was stopped before it ' +
        'ended (its caller stopped it); it found nothing and changed nothing',
    });
  });

  it('counts every pair and currency that differs, past the few its caller lists, as a repair mends them all', async () => {
    await bookMany(2, 's', 2);
    await catchUpLedgerSums(db, OPTIONS);
    // More than the limit, in a few pages: what is listed is cut at the limit as the pages are
    // compared, what is counted is not.
    const listedMax = 7;
    const ghosts = await insertBogusAccountSums(db, 250);
    const codes = await insertBogusCurrencySums(db, 30);
    const drift = await ledgerSumsDrift(db, { listedMax, accountsPerPage: 100 });
    expect(drift).toEqual({
      pairsDiffering: 250,
      accounts: ghosts.slice(0, listedMax).map((account) => ({ account, currency: 'USD' })),
      currenciesDiffering: 30,
      currencies: codes.slice(0, listedMax),
    });
    await expect(ledgerSumsDrift(db, { listedMax: 0 })).rejects.toThrow(
      'listedMax must be a whole number ≥ 1, got 0',
    );
    const repair = await repairLedgerSums(db, { dryRun: false });
    expect([repair.pairsRepaired, repair.currenciesRepaired]).toEqual([250, 30]);
    await expectSumsMended();
  });

  it('counts every currency that differs and lists the first 100, and mends them all', async () => {
    await bookMany(2, 's', 2);
    await catchUpLedgerSums(db, OPTIONS);
    // Currency codes Settle never books, in a damaged table: each one a repair (a deletion).
    const codes = Array.from(
      { length: CURRENCY_REPAIRS_LISTED_MAX + 5 },
      (_, i) => `X${i.toString(36).toUpperCase().padStart(2, '0')}`,
    );
    await sql`INSERT INTO ledger_currency_sum VALUES ${sql.join(
      codes.map((currency) => sql`(${currency}, 1, 0)`),
    )}`.execute(db);
    const listed = codes
      .slice(0, CURRENCY_REPAIRS_LISTED_MAX)
      .map((currency) => ({ currency, before: amounts(1n, 0n), after: undefined }));
    const dryRun = await repairLedgerSums(db, { dryRun: true });
    expect(dryRun).toMatchObject({ currenciesRepaired: codes.length, currencies: listed });
    const repair = await repairLedgerSums(db, { dryRun: false });
    expect(repair).toMatchObject({ currenciesRepaired: codes.length, currencies: listed });
    await expectSumsMended();
  });
});

/**
 * Adds the entries after `from` up to `to` to the sums, as a pass's transaction `pass` does, and
 * moves the checkpoint to `to`.
 */
async function addToSums(pass: Trx, from: bigint, to: bigint): Promise<void> {
  await sql`UPDATE ledger_sum_checkpoint SET upto_id = ${to}, advanced_at = UTC_TIMESTAMP(3)
            WHERE id = 1`.execute(pass);
  await sql`
    INSERT INTO ledger_account_sum (account, currency, debit_minor, credit_minor)
    SELECT * FROM (
      SELECT account, currency, SUM(debit_minor) AS d, SUM(credit_minor) AS c FROM ledger_entry
      WHERE id > ${from} AND id <= ${to} GROUP BY account, currency
    ) AS added
    ON DUPLICATE KEY UPDATE debit_minor = debit_minor + VALUES(debit_minor),
                            credit_minor = credit_minor + VALUES(credit_minor)`.execute(pass);
  await sql`
    INSERT INTO ledger_currency_sum (currency, debit_minor, credit_minor)
    SELECT * FROM (
      SELECT currency, SUM(debit_minor) AS d, SUM(credit_minor) AS c FROM ledger_entry
      WHERE id > ${from} AND id <= ${to} GROUP BY currency
    ) AS added
    ON DUPLICATE KEY UPDATE debit_minor = debit_minor + VALUES(debit_minor),
                            credit_minor = credit_minor + VALUES(credit_minor)`.execute(pass);
}

/**
 * Books to `seller` on a connection that waits 1 s at most for a lock: "committed", or why not.
 * A booking held up by the repair's locks fails with a lock wait timeout rather than wait.
 */
async function bookImpatiently(seller: string): Promise<string> {
  return db.connection().execute(async (connection) => {
    await sql`SET SESSION innodb_lock_wait_timeout = 1`.execute(connection);
    try {
      await connection
        .transaction()
        .execute((trx) => postLedgerTransaction(trx, currencyBooking(seller, 7n)));
      return `${seller} committed`;
    } catch (error) {
      return `${seller} failed: ${error instanceof Error ? error.message : String(error)}`;
    } finally {
      // The connection goes back to the pool: with the pool's setting.
      await sql`SET SESSION innodb_lock_wait_timeout = 5`.execute(connection);
    }
  });
}

/** Waits until a transaction of this test's database waits for a lock in `query`. */
async function untilLockWait(query: string): Promise<void> {
  // Within innodb_lock_wait_timeout (5 s), past which the waiting one would give up.
  const deadline = Date.now() + 3_000;
  for (;;) {
    // InnoDB refreshes INNODB_TRX only when it was not read for 100 ms: poll slower.
    await new Promise((resolve) => setTimeout(resolve, 150));
    if ((await lockWaitsHere(query)) > 0) return;
    if (Date.now() > deadline) throw new Error(`nothing waited for a lock in "${query}"`);
  }
}

/** The statement by which a pass waits for the lock on the checkpoint row. */
const PASS_LOCKING = 'UPDATE ledger_sum_checkpoint';
/** The statement by which a repair waits for it. */
const REPAIR_LOCKING = 'ledger_sum_checkpoint WHERE id = 1 FOR UPDATE';

/** Transactions of this test's database waiting for a lock in a statement containing `query`. */
async function lockWaitsHere(query: string): Promise<number> {
  const result = await sql<{ n: string }>`
    SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX AS trx
    JOIN information_schema.PROCESSLIST AS p ON p.ID = trx.trx_mysql_thread_id
    WHERE trx.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()
      AND INSTR(trx.trx_query, ${query}) > 0`.execute(db);
  return Number(result.rows[0]?.n ?? 0);
}
