/**
 * Goal: the trial balance (GetTrialBalance, the admin panel's ledger page) no longer reads the
 * whole ledger. Its totals and pages read running sums plus the entries after their checkpoint,
 * and give what summing every entry gives, at any moment: with entries before and after the
 * checkpoint, in several currencies; while a booking is held open below later ones (the checkpoint
 * stops before it, and it is counted once it commits); with passes of several nodes racing (each
 * entry added once); under concurrent bookings, some rolled back, with passes running all
 * along; and for readers reading while passes commit (each read balances and never goes down:
 * the checkpoint and the sums are read in one snapshot). A page holding an account of 6,000 entries reads a few hundred rows, where summing its
 * entries read them all. A hand edit below the checkpoint is found by ledgerSumsDrift. Before,
 * every page summed every entry of the ledger for its totals, and every entry of its accounts.
 * Method: ledger-sums.repository.ts over a fresh MariaDB database, bookings posted by the ledger
 * repository in real transactions (one held open on its own connection); "what summing every
 * entry gives" is one plain GROUP BY over ledger_entry; rows read are the session's InnoDB handler
 * counters around one statement on a pinned connection.
 */
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../src/storage/db.js';
import {
  advanceLedgerSums,
  ledgerSumsCheckpoint,
  ledgerSumsDrift,
  ledgerSumsLag,
  LedgerSummer,
  trialBalancePage,
  trialBalanceTotals,
} from '../../src/storage/repositories/ledger-sums.repository.js';
import {
  postLedgerTransaction,
  trialBalanceByCurrency,
  type NewLedgerTransaction,
} from '../../src/storage/repositories/ledger.repository.js';
import { inTransaction } from '../../src/storage/transaction.js';
import { openTestDatabase } from '../support/harness.js';
import {
  book as bookIn,
  catchUpLedgerSums,
  currencyBooking,
  holdOpenBooking,
  maxLedgerEntryId,
  recountTrialBalance,
  servedTrialBalance,
  type HeldBooking,
  type TrialBalanceText,
  emptyLedgerAndSums,
  LEDGER_SUMS_TEST_OPTIONS,
  NO_LEDGER_SUMS_DRIFT,
} from '../support/ledger.js';

/** A settle window short enough for a test; gaps (rolled-back bookings) hold a pass that long. */
const OPTIONS = LEDGER_SUMS_TEST_OPTIONS;

let db: Db;
let close: () => Promise<void>;

beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_ledger_sums_t', { poolSize: 12 }));
});
afterAll(async () => {
  await close?.();
});
afterEach(async () => {
  await Promise.all([...holds].map((hold) => hold.finish('rollback')));
  await emptyLedgerAndSums(db);
});

function booking(seller: string, amountMinor: bigint, currency = 'USD'): NewLedgerTransaction {
  return currencyBooking(seller, amountMinor, currency);
}

async function book(seller: string, amountMinor: bigint, currency = 'USD'): Promise<void> {
  await bookIn(db, seller, amountMinor, currency);
}

/** `count` bookings, one transaction each, over 50 sellers at most, amounts 1..count. */
async function bookMany(count: number, currency = 'USD', prefix = 's'): Promise<void> {
  for (let i = 0; i < count; i += 1) await book(`${prefix}${i % 50}`, BigInt(i + 1), currency);
}

/** What summing every entry gives: the rows of every account, and the totals. */
function recount(): Promise<TrialBalanceText> {
  return recountTrialBalance(db);
}

/** What the trial balance answers: every page walked, and the totals. */
function served(limit = 7): Promise<TrialBalanceText> {
  return servedTrialBalance(db, limit);
}

/** Passes until the checkpoint stops moving (a gap waits out the settle window). */
function catchUp(): Promise<void> {
  return catchUpLedgerSums(db, OPTIONS);
}

function maxId(): Promise<bigint> {
  return maxLedgerEntryId(db);
}

/** Bookings held open and not yet finished. */
const holds = new Set<HeldBooking>();

/** A booking to `seller` left open until `finish` (holdOpenBooking). */
function holdOpen(seller: string, amountMinor: bigint): Promise<HeldBooking> {
  return holdOpenBooking(db, booking(seller, amountMinor), holds);
}

describe('the running sums', () => {
  it('give what summing every entry gives, with entries before and after the checkpoint', async () => {
    await bookMany(40, 'USD');
    await bookMany(10, 'EUR', 'e');
    await catchUp();
    const checkpoint = await ledgerSumsCheckpoint(db);
    expect(checkpoint.uptoId).toBe(await maxId());
    // Entries after the checkpoint, some of accounts already in the sums, one new one.
    await bookMany(15, 'USD');
    await book('newcomer', 999n, 'GBP');
    expect((await ledgerSumsCheckpoint(db)).uptoId).toBe(checkpoint.uptoId);
    const whole = await recount();
    expect(whole.totals).toHaveLength(3);
    for (const limit of [1, 2, 7, 1_000]) expect(await served(limit)).toEqual(whole);
    // The sums alone, once the rest is in them, give the same.
    await catchUp();
    expect(await served()).toEqual(whole);
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
  });

  it('stop before a booking held open, and count it once it commits', async () => {
    await bookMany(5);
    const belowHeld = await maxId();
    const held = await holdOpen('held', 7_000n);
    await bookMany(5);
    const pass = await advanceLedgerSums(db, OPTIONS);
    // The held booking's entries come right after belowHeld: the checkpoint stops there.
    expect(pass.to).toBe(belowHeld);
    expect(await maxId()).toBeGreaterThan(belowHeld + 2n);
    expect(await served()).toEqual(await recount());
    await held.finish('commit');
    expect((await recount()).totals).toEqual(['USD/7030/7030']);
    expect(await served()).toEqual(await recount());
    await catchUp();
    expect(await served()).toEqual(await recount());
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
  });

  it('add each entry once when several nodes pass at the same time', async () => {
    await bookMany(600);
    const passes = await Promise.all(
      Array.from({ length: 6 }, () => advanceLedgerSums(db, OPTIONS)),
    );
    const moved = passes.filter((pass) => pass.to > pass.from);
    expect(moved.length).toBeGreaterThanOrEqual(1);
    expect(passes.some((pass) => pass.lost)).toBe(true);
    await catchUp();
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
    expect(await served()).toEqual(await recount());
  });

  it('stay equal to the entries under concurrent bookings, some rolled back, with passes all along', async () => {
    let stop = false;
    const passes = (async () => {
      let count = 0;
      while (!stop && count < 10_000) {
        await advanceLedgerSums(db, OPTIONS);
        count += 1;
      }
      return count;
    })();
    const lanes = Array.from({ length: 8 }, async (_, lane) => {
      for (let i = 0; i < 40; i += 1) {
        const rollBack = (lane + i) % 5 === 0;
        await db
          .transaction()
          .execute(async (trx) => {
            await postLedgerTransaction(
              trx,
              booking(`lane${lane}`, BigInt(lane * 1_000 + i + 1), lane % 3 === 0 ? 'EUR' : 'USD'),
            );
            if (rollBack) throw new Error('rolled back');
          })
          .catch((error: unknown) => {
            if (!(error instanceof Error && error.message === 'rolled back')) throw error;
          });
      }
    });
    await Promise.all(lanes);
    stop = true;
    expect(await passes).toBeGreaterThan(1);
    expect(await served()).toEqual(await recount());
    await catchUp();
    expect(await served()).toEqual(await recount());
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
  });

  it('never count an entry twice or not at all for a reader, while passes move the checkpoint', async () => {
    // 3,000 bookings to start with (one statement), then bookings go on in lanes, a fifth of
    // them rolled back, while two passers move the checkpoint a few entries at a time and
    // readers read a page and the totals together. Every booking balances and none is ever
    // taken back, so each read must balance and never go down.
    const rows = Array.from({ length: 3_000 }, (_, k) => {
      const id = `ltx_RACE${String(k).padStart(22, '0')}`;
      const order = `ord_RACE${String(k).padStart(22, '0')}`;
      return [
        sql`(${id}, 'psp_receivable', ${order}, 'PAYMENT_RECEIVABLE', 'USD', 10, 0, NOW(3))`,
        sql`(${id}, ${`seller_payable:s${k % 5}`}, ${order}, 'PAYMENT_PAYABLE', 'USD', 0, 10, NOW(3))`,
      ];
    }).flat();
    await sql`INSERT INTO ledger_entry
      (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
      VALUES ${sql.join(rows)}`.execute(db);
    let stop = false;
    const passer = async (entriesPerPassMax: number) => {
      let passes = 0;
      while (!stop && passes < 100_000) {
        await advanceLedgerSums(db, { ...OPTIONS, entriesPerPassMax });
        passes += 1;
      }
      return passes;
    };
    const passers = [passer(3), passer(7)];
    const lanes = Array.from({ length: 4 }, async (_, lane) => {
      for (let i = 0; i < 50 && !stop; i += 1) {
        await db
          .transaction()
          .execute(async (trx) => {
            await postLedgerTransaction(trx, booking(`lane${lane}`, 1n));
            if (i % 5 === 0) throw new Error('rolled back');
          })
          .catch((error: unknown) => {
            if (!(error instanceof Error && error.message === 'rolled back')) throw error;
          });
      }
    });
    const wrong: string[] = [];
    let reads = 0;
    const deadline = Date.now() + 4_000;
    const readers = Array.from({ length: 4 }, async () => {
      let lastTotal = 0n;
      let lastReceivable = 0n;
      while (Date.now() < deadline) {
        const [page, totals] = await Promise.all([
          trialBalancePage(db, { limit: 10 }),
          trialBalanceTotals(db),
        ]);
        reads += 1;
        const total = totals[0];
        const receivable = page.accounts.find((a) => a.account === 'psp_receivable');
        if (total === undefined || total.debitMinor !== total.creditMinor) {
          wrong.push(`unbalanced totals ${total?.debitMinor}/${total?.creditMinor}`);
        } else if (total.debitMinor < lastTotal) {
          wrong.push(`totals went down ${lastTotal} -> ${total.debitMinor}`);
        } else lastTotal = total.debitMinor;
        if (receivable === undefined || receivable.debitMinor < lastReceivable) {
          wrong.push(`psp_receivable went down ${lastReceivable} -> ${receivable?.debitMinor}`);
        } else lastReceivable = receivable.debitMinor;
      }
    });
    await Promise.all(readers);
    stop = true;
    await Promise.all(lanes);
    const passes = await Promise.all(passers);
    expect(wrong.slice(0, 5)).toEqual([]);
    expect(reads).toBeGreaterThan(20);
    expect(Math.min(...passes)).toBeGreaterThan(10);
    await catchUp();
    expect(await served()).toEqual(await recount());
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual(NO_LEDGER_SUMS_DRIFT);
  });

  it('read a few hundred rows for a page and the totals, not every entry of the account', async () => {
    // 6,000 entries on psp_receivable (and as many on 50 sellers' accounts), 100 bookings a commit.
    for (let batch = 0; batch < 60; batch += 1) {
      await inTransaction(db, async (trx) => {
        for (let i = 0; i < 100; i += 1)
          await postLedgerTransaction(trx, booking(`s${i % 50}`, 10n));
      });
    }
    await catchUp();
    await bookMany(20);
    const page = await rowsRead((pinned) => trialBalancePage(pinned, { limit: 10 }));
    expect(page.result.accounts[0]?.account).toBe('psp_receivable');
    expect(page.result.accounts[0]?.debitMinor).toBe(60_000n + 210n);
    const totals = await rowsRead((pinned) => trialBalanceTotals(pinned));
    expect(totals.result).toEqual(await trialBalanceByCurrency(db));
    // Summing the entries reads every row the sums stand for.
    expect(page.rows).toBeLessThan(500);
    expect(totals.rows).toBeLessThan(500);
    const scan = await rowsRead((pinned) => trialBalanceByCurrency(pinned));
    expect(scan.rows).toBeGreaterThan(12_000);
  });

  it('are told apart from the entries when one below the checkpoint is changed by hand', async () => {
    await bookMany(10);
    await book('e1', 5n, 'EUR');
    await catchUp();
    await sql`UPDATE ledger_entry SET credit_minor = credit_minor + 1
              WHERE account = 'seller_payable:e1'`.execute(db);
    expect(await ledgerSumsDrift(db, { listedMax: 100 })).toEqual({
      pairsDiffering: 1,
      accounts: [{ account: 'seller_payable:e1', currency: 'EUR' }],
      currenciesDiffering: 1,
      currencies: ['EUR'],
    });
  });
});

describe('ledgerSumsLag', () => {
  it('says how many entries, and how old the oldest, the sums trail by while a booking stays open', async () => {
    await bookMany(3);
    await catchUp();
    expect(await ledgerSumsLag(db)).toEqual({ unsummed: 0, lagMs: 0 });
    const held = await holdOpen('held', 1n);
    await bookMany(2);
    await advanceLedgerSums(db, OPTIONS);
    // The checkpoint stays below the open booking: the two committed after it wait too.
    const inAMinute = new Date(Date.now() + 60_000);
    const lag = await ledgerSumsLag(db, inAMinute);
    expect(lag.unsummed).toBe(4);
    expect(lag.lagMs).toBeGreaterThanOrEqual(59_000);
    expect(await ledgerSumsLag(db, new Date(), 3)).toMatchObject({ unsummed: 3 });
    await held.finish('commit');
    await catchUp();
    expect(await ledgerSumsLag(db)).toEqual({ unsummed: 0, lagMs: 0 });
  });

  it('does not count a backlog the passes are working through as lag', async () => {
    // Entries a day old, as a node upgraded onto an existing ledger finds them: the checkpoint
    // moves through them, so the sums are not behind, however old the entries.
    await bookMany(6);
    await sql`UPDATE ledger_entry SET created_at = NOW(3) - INTERVAL 1 DAY`.execute(db);
    const pass = await advanceLedgerSums(db, { ...OPTIONS, entriesPerPassMax: 4 });
    expect(pass.entries).toBe(4);
    const lag = await ledgerSumsLag(db);
    expect(lag.unsummed).toBe(8);
    expect(lag.lagMs).toBeLessThan(10_000);
  });
});

describe('LedgerSummer', () => {
  it('skips its pass while another moved the checkpoint within half an interval', async () => {
    await bookMany(3);
    const summer = new LedgerSummer(db, { ...OPTIONS, intervalMs: 60_000 }, (error) => {
      throw error;
    });
    const first = await summer.pass();
    expect(first?.to).toBe(await maxId());
    await bookMany(3);
    expect(await summer.pass()).toBeUndefined();
    expect((await ledgerSumsCheckpoint(db)).uptoId).toBe(first?.to);
  });

  it('moves the checkpoint on its own once started', async () => {
    await bookMany(3);
    const summer = new LedgerSummer(db, { ...OPTIONS, intervalMs: 20 }, (error) => {
      throw error;
    });
    summer.start();
    try {
      const target = await maxId();
      const deadline = Date.now() + 5_000;
      while ((await ledgerSumsCheckpoint(db)).uptoId < target && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect((await ledgerSumsCheckpoint(db)).uptoId).toBe(target);
    } finally {
      await summer.stop();
    }
  });
});

/** Rows InnoDB read for `run`'s statements, run on a connection of their own. */
async function rowsRead<T>(run: (pinned: Db) => Promise<T>): Promise<{ result: T; rows: number }> {
  return db.connection().execute(async (pinned) => {
    const read = async () => {
      const status = await sql<{ Variable_name: string; Value: string }>`
        SHOW SESSION STATUS LIKE 'Handler_read%'`.execute(pinned);
      return status.rows.reduce((sum, row) => sum + Number(row.Value), 0);
    };
    const before = await read();
    const result = await run(pinned);
    return { result, rows: (await read()) - before };
  });
}
