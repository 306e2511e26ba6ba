/**
 * `npm run bench:trial-balance -- --entries 1000000`: what a trial balance page and its totals
 * cost on a large ledger, summed from every entry (as GetTrialBalance did before the running sums)
 * and read from the running sums (storage/repositories/ledger-sums.repository.ts), and how long the
 * sums take to catch up with a ledger they have never seen (a node upgraded onto it). It creates
 * its own database on MYSQL_URL's server, fills ledger_entry with balanced PAYMENT bookings (two
 * entries each: psp_receivable and one of --sellers sellers, so psp_receivable holds half the
 * ledger), times each read --repeat times (median and slowest), and drops the database. Not part
 * of the test suite (too slow); test/storage/ledger-sums.test.ts checks the same reads' results
 * and rows read.
 *
 * Options: --entries N (default 1000000), --sellers N (default 18000), --repeat N (default 5),
 * --keep (keep the database).
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { loadConfig } from '../src/config.js';
import {
  dropDatabase,
  ensureDatabase,
  migrateToLatest,
  openDatabase,
  withDatabaseName,
  type Db,
} from '../src/storage/db.js';
import { LEDGER_HORIZON_DEFAULTS } from '../src/storage/repositories/ledger-horizon.repository.js';
import {
  advanceLedgerSums,
  LEDGER_SUMS_DEFAULTS,
  trialBalancePage,
  trialBalanceTotals,
} from '../src/storage/repositories/ledger-sums.repository.js';
import { trialBalanceByCurrency } from '../src/storage/repositories/ledger.repository.js';

function option(name: string, fallback: number): number {
  const index = process.argv.indexOf(`--${name}`);
  const value = index === -1 ? fallback : Number(process.argv[index + 1]);
  if (!Number.isSafeInteger(value) || value < 1 || value > 50_000_000) {
    process.stderr.write(`--${name} must be an integer between 1 and 50000000\n`);
    process.exit(2);
  }
  return value;
}

const line = (text: string) => process.stdout.write(`${text}\n`);
/** Entries per INSERT while filling the ledger. */
const FILL_ROWS_PER_INSERT = 5_000;
/** Accounts per page, GetTrialBalance's default. */
const PAGE_SIZE = 100;

/**
 * A page as it was read before the running sums: the page's accounts picked from the (account, id)
 * index, then every entry of each summed (kept here as the baseline).
 */
async function pageSummingEntries(db: Db, afterAccount: string | undefined): Promise<number> {
  const result = await sql<{ account: string }>`
    SELECT e.account, e.currency, SUM(e.debit_minor) AS debits, SUM(e.credit_minor) AS credits
    FROM (
      SELECT DISTINCT account FROM ledger_entry
      ${afterAccount !== undefined ? sql`WHERE account > ${afterAccount}` : sql``}
      ORDER BY account LIMIT ${PAGE_SIZE + 2}) AS page_account
    JOIN ledger_entry e ON e.account = page_account.account
    GROUP BY e.account, e.currency
    ORDER BY e.account, e.currency
    LIMIT ${PAGE_SIZE + 1}`.execute(db);
  return result.rows.length;
}

async function timed(repeat: number, run: () => Promise<unknown>): Promise<string> {
  const ms: number[] = [];
  for (let i = 0; i < repeat; i += 1) {
    const started = performance.now();
    await run();
    ms.push(performance.now() - started);
  }
  ms.sort((a, b) => a - b);
  const median = ms[Math.floor(ms.length / 2)] ?? 0;
  const slowest = ms[ms.length - 1] ?? 0;
  return `${median.toFixed(1)} ms (slowest ${slowest.toFixed(1)})`;
}

async function fill(db: Db, entries: number, sellers: number): Promise<void> {
  const bookings = Math.ceil(entries / 2);
  const perInsert = FILL_ROWS_PER_INSERT / 2;
  const tag = randomBytes(4).toString('hex').toUpperCase();
  for (let from = 0; from < bookings; from += perInsert) {
    const rows = [];
    for (let n = from; n < Math.min(bookings, from + perInsert); n += 1) {
      const id = `${tag}${String(n).padStart(18, '0')}`;
      const amount = 100 + (n % 9_900);
      const seller = `seller_payable:seller-${String(n % sellers).padStart(6, '0')}`;
      rows.push(
        sql`(${`ltx_${id}`}, 'psp_receivable', ${`ord_${id}`}, 'PAYMENT_RECEIVABLE', 'USD', ${amount}, 0, NOW(3))`,
        sql`(${`ltx_${id}`}, ${seller}, ${`ord_${id}`}, 'PAYMENT_PAYABLE', 'USD', 0, ${amount}, NOW(3))`,
      );
    }
    await sql`INSERT INTO ledger_entry
      (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
      VALUES ${sql.join(rows)}`.execute(db);
    if ((from / perInsert) % 40 === 0) line(`  filled ${from * 2} of ${bookings * 2} entries`);
  }
}

async function main(): Promise<void> {
  const entries = option('entries', 1_000_000);
  const sellers = option('sellers', 18_000);
  const repeat = option('repeat', 5);
  const keep = process.argv.includes('--keep');
  const config = loadConfig(process.env);
  const url = withDatabaseName(
    config.MYSQL_URL,
    `settle_tb_bench_${randomBytes(4).toString('hex')}`,
  );
  await ensureDatabase(url);
  const { db, close } = openDatabase(url, { poolSize: 4 });
  try {
    await migrateToLatest(db);
    line(`trial balance bench: ${entries} entries, ${sellers} sellers, each read ${repeat} times`);
    const filling = performance.now();
    await fill(db, entries, sellers);
    line(`  filled in ${((performance.now() - filling) / 1000).toFixed(1)} s`);
    const middle = `seller_payable:seller-${String(Math.floor(sellers / 2)).padStart(6, '0')}`;

    const row = async (label: string, run: () => Promise<unknown>) =>
      line(`  ${label.padEnd(32)} ${await timed(repeat, run)}`);
    const sellersPage = `a page of ${PAGE_SIZE} sellers:`;

    line('summing every entry (before the running sums):');
    await row('totals:', () => trialBalanceByCurrency(db));
    await row('first page (psp_receivable):', () => pageSummingEntries(db, undefined));
    await row(sellersPage, () => pageSummingEntries(db, middle));

    const options = { ...LEDGER_SUMS_DEFAULTS, horizon: LEDGER_HORIZON_DEFAULTS };
    const catching = performance.now();
    const cpuBefore = process.cpuUsage();
    let passes = 0;
    for (; passes < 10_000; passes += 1) {
      const pass = await advanceLedgerSums(db, options);
      if (pass.entries === 0) break;
    }
    const catchUpS = (performance.now() - catching) / 1000;
    const cpu = process.cpuUsage(cpuBefore);
    const cpuUsPerEntry = (cpu.user + cpu.system) / entries;
    line(
      `running sums: caught up with ${entries} entries in ${catchUpS.toFixed(1)} s, ` +
        `${passes} passes of ${options.entriesPerPassMax} entries at most ` +
        `(${Math.round(entries / catchUpS)} entries/s; this process's CPU ` +
        `${cpuUsPerEntry.toFixed(1)} µs per entry)`,
    );
    const after = { account: middle, currency: 'USD' };
    await row('totals:', () => trialBalanceTotals(db));
    await row('first page (psp_receivable):', () => trialBalancePage(db, { limit: PAGE_SIZE }));
    await row(sellersPage, () => trialBalancePage(db, { after, limit: PAGE_SIZE }));
    await fill(db, 10_000, sellers);
    line('  with 10,000 entries after the checkpoint:');
    await row('totals:', () => trialBalanceTotals(db));
    await row('first page (psp_receivable):', () => trialBalancePage(db, { limit: PAGE_SIZE }));
    const pass = await timed(1, () => advanceLedgerSums(db, options));
    line(`  ${'one pass adding them:'.padEnd(32)} ${pass}`);
    const totals = await trialBalanceTotals(db);
    const recount = await trialBalanceByCurrency(db);
    const same = JSON.stringify(totals, big) === JSON.stringify(recount, big);
    line(`totals from the sums ${same ? '==' : '!='} totals summed from every entry`);
    if (!same) process.exitCode = 1;
  } finally {
    await close();
    if (!keep) await dropDatabase(url);
    else line(`kept ${url}`);
  }
}

function big(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

await main();
