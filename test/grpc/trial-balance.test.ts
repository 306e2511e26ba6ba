/**
 * Goal: GetTrialBalance is bounded (AIP-158): it answers a page of (account, currency) rows at a
 * time, 100 by default and 500 at most, and paging with its next_page_token gives every row of
 * the ledger exactly once; every page carries the whole ledger's totals and `balanced`, also a
 * page without the account that unbalances it; a bad page_size or page_token, including one of
 * ListEntries, is INVALID_ARGUMENT with a message that says what to do, and ListEntries refuses
 * GetTrialBalance's tokens. Before, GetTrialBalance answered every account in one message and
 * ignored both fields. Method: the real LedgerService handlers on a server on 127.0.0.1:0, called
 * through the generated client, over a fresh MariaDB database whose ledger rows are written
 * directly (balanced pairs in two currencies, unless a test says otherwise); what a walk gives is
 * compared with one plain GROUP BY over the same table. A sum that does not fit the response's
 * int64 fields (an account's, or a currency's over every account) is FAILED_PRECONDITION naming
 * the account and currency; before, grpc-js failed to serialize it and answered INTERNAL. The
 * same holds once the running sums hold part of the ledger (ledger-sums.repository.ts): a walk
 * then gives what the entries sum to, with entries both in the sums and after their checkpoint.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { encodePageToken } from '../../src/domain/page-token.js';
import {
  LedgerServiceClient,
  LedgerServiceService,
  type AccountBalance,
  type GetTrialBalanceResponse,
} from '../../src/grpc/generated/settle/v1/wallet.js';
import { ledgerHandlers } from '../../src/grpc/handlers/ledger.handlers.js';
import { advanceLedgerSums } from '../../src/storage/repositories/ledger-sums.repository.js';
import type { Db } from '../../src/storage/db.js';
import { openTestDatabase } from '../support/harness.js';
import { callUnary, startServer, stopServer, type RunningServer } from './harness.js';

const REFUSED =
  'INVALID_ARGUMENT page_token: invalid or from a request with other filters; start again without page_token';

let db: Db;
let close: () => Promise<void>;
let running: RunningServer | undefined;
let client: LedgerServiceClient;

beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_trial_balance_t', { poolSize: 4 }));
  running = await startServer((server) =>
    server.addService(LedgerServiceService, ledgerHandlers(db, { log: () => {} })),
  );
  client = new LedgerServiceClient(running.address, grpc.credentials.createInsecure());
});
afterAll(async () => {
  client?.close();
  stopServer(running);
  await close?.();
});
afterEach(async () => {
  // TRUNCATE, not DELETE: ids start again at 1, so the next test's ledger has no hole of deleted
  // ids, at which ListEntries would hold its pages (it cannot tell a young hole from an INSERT
  // still under way). The marks of where ids were go with them.
  await sql`TRUNCATE TABLE ledger_entry`.execute(db);
  await sql`TRUNCATE TABLE ledger_entry_mark`.execute(db);
  // The running sums go too, and their checkpoint back to before the first id.
  await sql`TRUNCATE TABLE ledger_account_sum`.execute(db);
  await sql`TRUNCATE TABLE ledger_currency_sum`.execute(db);
  await sql`UPDATE ledger_sum_checkpoint SET upto_id = 0`.execute(db);
});

/** Adds every committed entry to the running sums, as a node's LedgerSummer does. */
async function sumUp(): Promise<void> {
  const pass = await advanceLedgerSums(db, {
    horizon: { reservationSettleMs: 300, markIntervalMs: 50, gapCheckIdsMax: 20_000 },
    entriesPerPassMax: 50_000,
  });
  expect(pass.lost).toBe(false);
}

let fixtureSeq = 0;

/**
 * Writes one balanced transaction per [account, currency, amount]: a debit of `account` and a
 * credit of the contra account (`zz:contra` unless given; it sorts last), or a lone debit with
 * `unbalanced`.
 */
async function post(
  rows: ReadonlyArray<readonly [string, string, bigint]>,
  options: { unbalanced?: boolean; contra?: string } = {},
): Promise<void> {
  const values = rows.flatMap(([account, currency, amount]) => {
    fixtureSeq += 1;
    const transactionId = `ltx_TB${String(fixtureSeq).padStart(24, '0')}`;
    const orderId = `ord_TB${String(fixtureSeq).padStart(24, '0')}`;
    const debit = sql`(${transactionId}, ${account}, ${orderId}, 'FIXTURE_DEBIT', ${currency}, ${amount}, 0, NOW(3))`;
    const credit = sql`(${transactionId}, ${options.contra ?? 'zz:contra'}, ${orderId}, 'FIXTURE_CREDIT', ${currency}, 0, ${amount}, NOW(3))`;
    return options.unbalanced === true ? [debit] : [debit, credit];
  });
  await sql`INSERT INTO ledger_entry
    (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
    VALUES ${sql.join(values)}`.execute(db);
}

/** `count` sellers' payable accounts, some in USD and some in EUR (and one in both). */
function sellers(count: number): Array<[string, string, bigint]> {
  return Array.from({ length: count }, (_, i): [string, string, bigint] => [
    `seller_payable:seller-${String(i).padStart(4, '0')}`,
    i % 4 === 3 ? 'EUR' : 'USD',
    BigInt(100 + i),
  ]).concat([['seller_payable:seller-0000', 'EUR', 7n]]);
}

const key = (a: AccountBalance) =>
  `${a.account}/${a.currencyCode}/${a.debitMinor}/${a.creditMinor}/${a.balanceMinor}`;

/** Every (account, currency) row and the per-currency totals, from plain GROUP BYs. */
async function wholeLedger(): Promise<{ rows: string[]; totals: AccountBalance[] }> {
  type Sums = { debits: string; credits: string };
  const rows = await sql<Sums & { account: string; currency: string }>`
    SELECT account, currency, SUM(debit_minor) AS debits, SUM(credit_minor) AS credits
    FROM ledger_entry GROUP BY account, currency ORDER BY account, currency`.execute(db);
  const totals = await sql<Sums & { currency: string }>`
    SELECT currency, SUM(debit_minor) AS debits, SUM(credit_minor) AS credits
    FROM ledger_entry GROUP BY currency ORDER BY currency`.execute(db);
  const balance = (account: string, currencyCode: string, sums: Sums): AccountBalance => ({
    account,
    currencyCode,
    debitMinor: BigInt(sums.debits),
    creditMinor: BigInt(sums.credits),
    balanceMinor: BigInt(sums.debits) - BigInt(sums.credits),
  });
  return {
    rows: rows.rows.map((r) => key(balance(r.account, r.currency, r))),
    totals: totals.rows.map((t) => balance('*', t.currency, t)),
  };
}

function trialBalance(pageSize: number, pageToken = '') {
  return callUnary(client.getTrialBalance.bind(client), { pageSize, pageToken });
}

async function page(pageSize: number, pageToken = ''): Promise<GetTrialBalanceResponse> {
  const outcome = await trialBalance(pageSize, pageToken);
  if (!outcome.ok) throw outcome.error;
  return outcome.response;
}

/** Pages through with `pageSize`, at most 50 pages. */
async function walk(pageSize: number): Promise<GetTrialBalanceResponse[]> {
  const pages: GetTrialBalanceResponse[] = [];
  let pageToken = '';
  do {
    const response = await page(pageSize, pageToken);
    pages.push(response);
    pageToken = response.nextPageToken;
  } while (pageToken !== '' && pages.length < 50);
  expect(pageToken, 'the walk ended').toBe('');
  return pages;
}

function statusOf(outcome: Awaited<ReturnType<typeof trialBalance>>): string {
  return outcome.ok ? 'OK' : `${grpc.status[outcome.error.code]} ${outcome.error.details}`;
}

describe('GetTrialBalance paging', () => {
  it('walks every (account, currency) exactly once across pages, in order', async () => {
    await post(sellers(13));
    const whole = await wholeLedger();
    // 13 sellers, one of them in two currencies, and the contra account in two: 16 rows.
    expect(whole.rows).toHaveLength(16);
    const pages = await walk(5);
    expect(pages.map((p) => p.accounts.length)).toEqual([5, 5, 5, 1]);
    expect(pages.flatMap((p) => p.accounts.map(key))).toEqual(whole.rows);
  });

  it("gives the whole ledger's totals and `balanced` on every page", async () => {
    await post(sellers(13));
    const whole = await wholeLedger();
    expect(whole.totals.map((t) => t.currencyCode)).toEqual(['EUR', 'USD']);
    for (const response of await walk(4)) {
      expect(response.totals).toEqual(whole.totals);
      expect(response.balanced).toBe(true);
    }
  });

  it('says NOT balanced on a page that does not show the account that unbalances the ledger', async () => {
    await post(sellers(6));
    // Written behind the repository's back, as a bug would: a debit with no credit, in an
    // account that sorts after every other, so it is on the last page only.
    await post([['zzz:orphan', 'USD', 5n]], { unbalanced: true });
    const first = await page(2);
    expect(first.accounts.map((a) => a.account)).not.toContain('zzz:orphan');
    expect(first.nextPageToken).not.toBe('');
    expect(first.balanced).toBe(false);
    expect(first.totals.find((t) => t.currencyCode === 'USD')?.balanceMinor).toBe(5n);
    expect(first.totals.find((t) => t.currencyCode === 'EUR')?.balanceMinor).toBe(0n);
  });

  it('answers 100 rows when page_size is 0 and at most 500 whatever it asks', async () => {
    await post(sellers(520));
    const whole = await wholeLedger();
    expect(whole.rows.length).toBeGreaterThan(500);
    const byDefault = await page(0);
    expect(byDefault.accounts.map(key)).toEqual(whole.rows.slice(0, 100));
    expect(byDefault.nextPageToken).not.toBe('');
    const capped = await page(100_000);
    expect(capped.accounts.map(key)).toEqual(whole.rows.slice(0, 500));
    const rest = await page(100_000, capped.nextPageToken);
    expect(rest.accounts.map(key)).toEqual(whole.rows.slice(500));
    expect(rest.nextPageToken).toBe('');
  });

  it('refuses a negative page_size and a token that is not its own, saying what to do', async () => {
    await post(sellers(3));
    expect(statusOf(await trialBalance(-1))).toBe(
      'INVALID_ARGUMENT page_size: must not be negative',
    );
    const { nextPageToken } = await page(1);
    expect(nextPageToken).toMatch(/^[\w-]+$/);
    const foreign = [
      'not-a-token',
      nextPageToken.slice(0, -2),
      // ListEntries' tokens: a ledger entry id, with and without a filter.
      encodePageToken('ListEntries', '12', {}),
      encodePageToken('ListEntries', '12', { account: 'psp_receivable' }),
      // Its own cursor, but under a filter GetTrialBalance does not have.
      encodePageToken('GetTrialBalance', 'psp_receivable USD', { account: 'psp_receivable' }),
    ];
    for (const token of foreign) {
      expect(statusOf(await trialBalance(1, token)), token).toBe(REFUSED);
    }
  });

  it("ListEntries refuses GetTrialBalance's token", async () => {
    await post(sellers(3));
    const { nextPageToken } = await page(1);
    expect(nextPageToken).toMatch(/^[\w-]+$/);
    const outcome = await callUnary(client.listEntries.bind(client), {
      pageSize: 1,
      pageToken: nextPageToken,
      account: '',
      orderId: '',
      fromHead: false,
    });
    expect(outcome.ok ? 'OK' : `${grpc.status[outcome.error.code]} ${outcome.error.details}`).toBe(
      REFUSED,
    );
  });
});

describe('GetTrialBalance from the running sums', () => {
  it('gives what the entries sum to, with some in the sums and some after their checkpoint', async () => {
    await post(sellers(13));
    await sumUp();
    const checkpoint = await sql<{ upto_id: string }>`
      SELECT upto_id FROM ledger_sum_checkpoint`.execute(db);
    expect(Number(checkpoint.rows[0]?.upto_id)).toBeGreaterThan(0);
    // More for accounts already summed, and a new account, after the checkpoint.
    await post(sellers(4).concat([['seller_payable:late', 'USD', 9n]]));
    const whole = await wholeLedger();
    const pages = await walk(5);
    expect(pages.flatMap((p) => p.accounts.map(key))).toEqual(whole.rows);
    for (const response of pages) expect(response.totals).toEqual(whole.totals);
  });

  it('says NOT balanced when the unbalanced entry is already in the sums', async () => {
    await post(sellers(3));
    await post([['zzz:orphan', 'USD', 5n]], { unbalanced: true });
    await sumUp();
    await post(sellers(2));
    const first = await page(2);
    expect(first.balanced).toBe(false);
    expect(first.totals.find((t) => t.currencyCode === 'USD')?.balanceMinor).toBe(5n);
  });

  it('refuses a sum past int64 made of the sums and the entries after them', async () => {
    const HUGE = 2n ** 62n + 1n;
    await post([['seller_payable:whale', 'EUR', HUGE]]);
    await sumUp();
    await post([['seller_payable:whale', 'EUR', HUGE]]);
    expect(statusOf(await trialBalance(0))).toBe(
      `FAILED_PRECONDITION the debits of account seller_payable:whale in EUR sum to ${2n * HUGE}, ` +
        "which does not fit int64 (the API answers sums as int64); read that account's entries " +
        'with ListEntries (account seller_payable:whale) instead',
    );
    await sumUp();
    expect(statusOf(await trialBalance(0))).toMatch(/^FAILED_PRECONDITION the debits of account/);
  });
});

describe('GetTrialBalance with sums that do not fit int64', () => {
  // 2^62 + 1: two balanced transactions of it sum to more than 2^63 - 1 in one account.
  const HUGE = 2n ** 62n + 1n;

  it('names the account and currency whose sum does not fit, and says to read its entries', async () => {
    await post(sellers(2));
    await post([
      ['seller_payable:whale', 'EUR', HUGE],
      ['seller_payable:whale', 'EUR', HUGE],
    ]);
    const sums = await sql<{ debits: string }>`
      SELECT SUM(debit_minor) AS debits FROM ledger_entry
      WHERE account = 'seller_payable:whale'`.execute(db);
    expect(BigInt(sums.rows[0]?.debits ?? '0')).toBe(2n * HUGE);
    expect(await unbalancedTransactions(), 'every fixture transaction balances').toEqual([]);
    expect(statusOf(await trialBalance(0))).toBe(
      `FAILED_PRECONDITION the debits of account seller_payable:whale in EUR sum to ${2n * HUGE}, ` +
        "which does not fit int64 (the API answers sums as int64); read that account's entries " +
        'with ListEntries (account seller_payable:whale) instead',
    );
    // The advice holds: ListEntries answers that account's entries.
    const entries = await callUnary(client.listEntries.bind(client), {
      pageSize: 10,
      pageToken: '',
      account: 'seller_payable:whale',
      orderId: '',
      fromHead: false,
    });
    expect(entries.ok && entries.response.entries.map((e) => e.debitMinor)).toEqual([HUGE, HUGE]);
  });

  it('names the currency whose total over every account does not fit, though no account overflows', async () => {
    await post([['seller_payable:whale-1', 'USD', HUGE]], { contra: 'zz:contra-1' });
    await post([['seller_payable:whale-2', 'USD', HUGE]], { contra: 'zz:contra-2' });
    expect(await unbalancedTransactions()).toEqual([]);
    // Each account fits and so does a page of them; the per-currency totals do not.
    expect(statusOf(await trialBalance(0))).toBe(
      `FAILED_PRECONDITION the debits of every account in USD sum to ${2n * HUGE}, which does ` +
        'not fit int64 (the API answers sums as int64); read the entries with ListEntries instead',
    );
  });
});

async function unbalancedTransactions(): Promise<string[]> {
  const result = await sql<{ transaction_id: string }>`
    SELECT transaction_id FROM ledger_entry GROUP BY transaction_id
    HAVING SUM(debit_minor) <> SUM(credit_minor) OR MIN(currency) <> MAX(currency)`.execute(db);
  return result.rows.map((row) => row.transaction_id);
}
