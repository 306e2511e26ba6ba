/**
 * Goal: reconciliation end to end. Payments made through the real flow are settled by the PSP
 * mock's real settlement files; every discrepancy the mock can inject is classified as its class
 * with its evidence; fees are booked so psp_receivable nets to the payout; a late row resolves the
 * earlier MISSING_IN_SETTLEMENT; the same file twice gives the same report and writes nothing;
 * malformed files and paths outside the folder are refused with nothing written; reports and
 * mismatches page; /metrics says what the latest day's run found, a failing internal check
 * included: running sums of the trial balance changed by hand fail it (with the pairs and
 * currencies named), where the ledger and the wallets still hold; sums that could not be compared
 * fail as unchecked (with why, in the report, the admin panel, the CLI and /metrics), never as
 * passed; a report stored before the sums were checked reads as not checked, not as failed.
 * Method: startStack (PSP mock + Settle node, real MariaDB and NATS) with a temporary
 * settlement folder, payments paid with PayWithCard, files written by GenerateSettlementFile,
 * reconciliations run and read through the generated gRPC client, /metrics scraped over HTTP.
 * Every table's row count is compared where a call must write nothing. Each test ends with the
 * money invariants.
 */
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  MismatchClass,
  ReportState,
  type Mismatch,
  type Report,
} from '../../src/grpc/generated/settle/v1/reconciliation.js';
import { addUtcDays, utcDayOf } from '../../src/domain/utc-day.js';
import { runCli } from '../../src/cli/settle.js';
import { createLogger } from '../../src/observability/logger.js';
import { settlementFeeMinor } from '../../src/psp/mock/index.js';
import {
  INTERNAL_CHECK_FAILURE,
  type InternalCheckFailure,
} from '../../src/reconciliation/reconciliation.repository.js';
import { ADMIN_TOKEN, adminFetch } from '../admin/admin-support.js';
import {
  call,
  callError,
  expectMoneyInvariants,
  metricSample,
  scrapeMetrics,
  waitFor,
} from '../support/harness.js';
import {
  allRowCounts,
  awayFromMidnight,
  createOrder,
  generateFile,
  inject,
  paidOrder,
  reconcile,
  SettlementDiscrepancy,
  startReconStack,
  waitForReport,
  type ReconStack,
} from './support.js';

const FEES = { percentBp: 290, fixedMinor: 30 };
let stack: ReconStack;
/** What the node logged at warn and above. */
const logLines: string[] = [];
let today: string;

beforeAll(async () => {
  await awayFromMidnight();
  // The admin panel too, for its operations page's reconciliation card.
  stack = await startReconStack(
    { RECONCILIATION_WAIT_MS: '10000', ADMIN_TOKEN },
    {
      logger: createLogger(
        { level: 'warn', name: 'settle' },
        { write: (line) => logLines.push(line) },
      ),
    },
  );
  today = utcDayOf(new Date());
});
afterAll(async () => stack?.close());
afterEach(async () => expectMoneyInvariants(stack.settle.db));

async function mismatches(
  reportId: string,
  mismatchClass = MismatchClass.MISMATCH_CLASS_UNSPECIFIED,
) {
  const all: Mismatch[] = [];
  let pageToken = '';
  for (let page = 0; page < 100; page += 1) {
    const response = await call(stack.recon.listMismatches.bind(stack.recon), {
      reportId,
      mismatchClass,
      pageSize: 2,
      pageToken,
    });
    all.push(...response.mismatches);
    pageToken = response.nextPageToken;
    if (pageToken === '') return all;
  }
  throw new Error('too many pages');
}

async function receivable(orderId: string): Promise<{ debit: bigint; credit: bigint }> {
  const { entries } = await call(stack.ledger.listEntries.bind(stack.ledger), {
    orderId,
    account: 'psp_receivable',
    pageSize: 0,
    pageToken: '',
    fromHead: false,
  });
  return entries.reduce(
    (total, entry) => ({
      debit: total.debit + entry.debitMinor,
      credit: total.credit + entry.creditMinor,
    }),
    { debit: 0n, credit: 0n },
  );
}

/**
 * /metrics once it reports `day` as the latest day reconciled. A node reuses its snapshot for a
 * second, so the scrape right after a run may still show the one before.
 */
async function metricsAfterRunOf(day: string): Promise<string> {
  const dayStart = Date.parse(`${day}T00:00:00Z`) / 1000;
  return waitFor(
    async () => {
      const text = await scrapeMetrics(stack.settleHttp);
      const latest = metricSample(
        text,
        'settle_reconciliation_last_settlement_day_timestamp_seconds',
        { settlement_day: day },
      );
      return latest === dayStart ? text : undefined;
    },
    { what: `${day} as the latest day in /metrics` },
  );
}

function counts(report: Report) {
  return report.counts;
}

describe('a clean day', () => {
  let orders: Array<{ id: string; amount: bigint }>;
  let first: Report;

  it('matches every payment of the PSP file and books its fee against psp_receivable', async () => {
    orders = [];
    for (const amount of [1999n, 500n, 123456n]) {
      orders.push({ id: await paidOrder(stack, `seller-clean-${amount}`, amount), amount });
    }
    const filePath = await generateFile(stack, today);
    expect(path.dirname(filePath)).toBe(
      await import('node:fs/promises').then((fs) => fs.realpath(stack.dir)),
    );
    const text = await readFile(filePath, 'utf8');
    expect(text.split('\n')[0]).toBe(
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc',
    );
    // 1999 at 2.9 % = 57.971 -> 58 (half up) + 30 = 88; 500 -> 14.5 -> 15 + 30 = 45.
    expect(text).toContain(`,${orders[0]?.id},payment,USD,19.99,0.88,19.11,`);
    expect(text).toContain(`,${orders[1]?.id},payment,USD,5.00,0.45,4.55,`);

    first = await reconcile(stack, { settlementDate: today });
    expect(first.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    expect(first.settlementDate).toBe(today);
    expect(first.fileName).toBe(`settlement-${today}.csv`);
    expect(first.rowsTotal).toBe(3n);
    expect(first.rowsLoaded).toBe(3n);
    expect(counts(first)).toEqual({
      matched: 3n,
      missingInLedger: 0n,
      missingInSettlement: 0n,
      amountMismatch: 0n,
      duplicate: 0n,
      timing: 0n,
    });
    const fees = orders.map((order) => settlementFeeMinor(order.amount, FEES));
    const gross = orders.reduce((sum, order) => sum + order.amount, 0n);
    const fee = fees.reduce((sum, value) => sum + value, 0n);
    expect(first.grossMinor).toBe(gross);
    expect(first.settledFeeMinor).toBe(fee);
    expect(first.settledNetMinor).toBe(gross - fee);
    expect(first.internalCheck).toMatchObject({
      ledgerBalanced: true,
      walletsMatchLedger: true,
      walletsNotMatching: 0n,
      walletsChecked: 3n,
      ledgerSumsMatch: true,
      ledgerSumsNotMatching: 0n,
      ledgerSumDifferences: [],
      currencySumDifferences: [],
    });
    expect(first.internalCheck?.totals).toEqual([
      expect.objectContaining({ currencyCode: 'USD', balanceMinor: 0n }),
    ]);
    // psp_receivable of each order nets to what the PSP pays out for it.
    for (const [index, order] of orders.entries()) {
      const account = await receivable(order.id);
      expect(account.debit - account.credit).toBe(order.amount - (fees[index] ?? 0n));
    }
    expect(await mismatches(first.reportId)).toEqual([]);
  });

  it('returns the same report for the same file and writes nothing', async () => {
    const before = await allRowCounts(stack.settle.db);
    const again = await reconcile(stack, { settlementDate: today });
    expect(again).toEqual(first);
    // The PSP writes the same bytes again: still the same run.
    await generateFile(stack, today);
    const third = await reconcile(stack, { filePath: `settlement-${today}.csv` });
    expect(third).toEqual(first);
    expect(await allRowCounts(stack.settle.db)).toEqual(before);
  });
});

describe('discrepancies', () => {
  const ids: Record<string, string> = {};
  const amounts: Record<string, bigint> = {};
  let todayReport: Report;
  let tomorrowReport: Report;

  it('classifies each injected discrepancy with its evidence', async () => {
    for (const [name, amount] of [
      ['unsettled', 2500n],
      ['amount', 3000n],
      ['duplicate', 4000n],
      ['late', 5000n],
      ['normal', 6000n],
    ] as const) {
      ids[name] = await paidOrder(stack, `seller-${name}`, amount);
      amounts[name] = amount;
    }
    // A charge Settle never heard of for an order it has (never paid through Settle's flow), and
    // one for an order id Settle does not know at all.
    const unpaid = await createOrder(stack, 'seller-unpaid', 7000n);
    ids.unpaid = unpaid.orderId;
    await inject(
      stack,
      SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_UNRECORDED_CHARGE,
      unpaid.orderId,
      7000n,
    );
    ids.stranger = 'ord_UNKNOWN00000000000000000000';
    await inject(
      stack,
      SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_UNRECORDED_CHARGE,
      ids.stranger,
      777n,
    );
    await inject(stack, SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_UNSETTLED, ids.unsettled!);
    await inject(stack, SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_AMOUNT, ids.amount!, 3100n);
    await inject(stack, SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_DUPLICATE, ids.duplicate!);
    await inject(stack, SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_LATE, ids.late!);

    await generateFile(stack, today);
    todayReport = await reconcile(stack, { settlementDate: today });
    expect(todayReport.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    expect(counts(todayReport)).toEqual({
      // The 3 clean orders, duplicate's first row, normal.
      matched: 5n,
      missingInLedger: 2n,
      missingInSettlement: 2n,
      amountMismatch: 1n,
      duplicate: 1n,
      timing: 0n,
    });
    const found = await mismatches(todayReport.reportId);
    const byOrder = (orderId: string) => found.filter((m) => m.orderId === orderId);

    const [amount] = byOrder(ids.amount!);
    expect(amount).toMatchObject({
      mismatchClass: MismatchClass.MISMATCH_CLASS_AMOUNT_MISMATCH,
      fileAmountMinor: 3100n,
      ledgerAmountMinor: 3000n,
      orderState: 'SUCCEEDED',
    });
    expect(JSON.parse(amount!.fileRowJson)).toMatchObject({
      merchant_reference: ids.amount,
      gross_minor: '3100',
      type: 'payment',
    });
    const ledgerEntries = JSON.parse(amount!.ledgerEntriesJson) as Array<Record<string, string>>;
    expect(
      ledgerEntries.map((e) => [e.account, e.kind, e.debit_minor, e.credit_minor]).sort(),
    ).toEqual(
      [
        ['psp_receivable', 'PAYMENT_RECEIVABLE', '3000', '0'],
        ['seller_payable:seller-amount', 'PAYMENT_PAYABLE', '0', '3000'],
      ].sort(),
    );

    const duplicate = byOrder(ids.duplicate!);
    expect(duplicate).toHaveLength(1);
    expect(duplicate[0]?.mismatchClass).toBe(MismatchClass.MISMATCH_CLASS_DUPLICATE);
    expect(duplicate[0]?.detail).toMatch(/^already settled: line \d+$/);

    for (const name of ['unsettled', 'late']) {
      const [missing] = byOrder(ids[name]!);
      expect(missing).toMatchObject({
        mismatchClass: MismatchClass.MISMATCH_CLASS_MISSING_IN_SETTLEMENT,
        ledgerAmountMinor: amounts[name],
        orderState: 'SUCCEEDED',
        fileRowJson: '',
      });
      expect(missing?.lineNumber).toBeUndefined();
      expect(JSON.parse(missing!.ledgerEntriesJson)).toHaveLength(2);
    }

    const [unpaidCharge] = byOrder(ids.unpaid);
    expect(unpaidCharge).toMatchObject({
      mismatchClass: MismatchClass.MISMATCH_CLASS_MISSING_IN_LEDGER,
      orderState: 'EXECUTING',
      fileAmountMinor: 7000n,
      detail: 'payment order is EXECUTING with no PAYMENT ledger transaction',
      ledgerEntriesJson: '[]',
    });
    expect(unpaidCharge?.ledgerAmountMinor).toBeUndefined();
    const [stranger] = byOrder(ids.stranger);
    expect(stranger).toMatchObject({
      mismatchClass: MismatchClass.MISMATCH_CLASS_MISSING_IN_LEDGER,
      orderState: '',
      detail: 'no payment order with this id',
    });
    expect(byOrder(ids.normal!)).toEqual([]);

    // Filtering by class.
    const onlyMissing = await mismatches(
      todayReport.reportId,
      MismatchClass.MISMATCH_CLASS_MISSING_IN_LEDGER,
    );
    expect(onlyMissing.map((m) => m.orderId).sort()).toEqual([ids.unpaid, ids.stranger].sort());

    // Fees are booked for settled rows only, once per order.
    expect(await receivable(ids.duplicate!)).toEqual({
      debit: 4000n,
      credit: settlementFeeMinor(4000n, FEES),
    });
    expect(await receivable(ids.normal!)).toEqual({
      debit: 6000n,
      credit: settlementFeeMinor(6000n, FEES),
    });
    for (const name of ['unsettled', 'amount', 'late']) {
      expect(await receivable(ids[name]!)).toEqual({ debit: amounts[name], credit: 0n });
    }
  });

  it('classifies the late row in the next day’s file as TIMING and resolves the earlier mismatch', async () => {
    const tomorrow = addUtcDays(today, 1);
    await generateFile(stack, tomorrow);
    tomorrowReport = await reconcile(stack, { settlementDate: tomorrow });
    expect(counts(tomorrowReport)).toEqual({
      matched: 0n,
      missingInLedger: 0n,
      missingInSettlement: 0n,
      amountMismatch: 0n,
      duplicate: 0n,
      timing: 1n,
    });
    const [timing] = await mismatches(tomorrowReport.reportId);
    expect(timing).toMatchObject({
      orderId: ids.late,
      mismatchClass: MismatchClass.MISMATCH_CLASS_TIMING,
      lineNumber: 2n,
      fileAmountMinor: 5000n,
      ledgerAmountMinor: 5000n,
    });
    expect(timing?.detail).toBe(`created ${today}, settled in the file of ${tomorrow}`);
    expect(await receivable(ids.late!)).toEqual({
      debit: 5000n,
      credit: settlementFeeMinor(5000n, FEES),
    });
    const earlier = await mismatches(
      todayReport.reportId,
      MismatchClass.MISMATCH_CLASS_MISSING_IN_SETTLEMENT,
    );
    const resolved = Object.fromEntries(earlier.map((m) => [m.orderId, m.resolvedByReportId]));
    expect(resolved).toEqual({ [ids.late!]: tomorrowReport.reportId, [ids.unsettled!]: '' });
  });

  it('exports what the latest day’s reconciliation found for alerts', async () => {
    const day = addUtcDays(today, 1);
    const text = await metricsAfterRunOf(day);
    const completedAt = metricSample(text, 'settle_reconciliation_last_success_timestamp_seconds', {
      settlement_day: day,
    });
    // Tomorrow's file was reconciled a moment ago (the run's own clock, not the day's).
    expect(completedAt).toBeGreaterThan(Date.now() / 1000 - 120);
    expect(completedAt).toBeLessThanOrEqual(Date.now() / 1000);
    // Tomorrow's file: the late row, and nothing else wrong.
    const byClass = Object.fromEntries(
      ['MISSING_IN_LEDGER', 'MISSING_IN_SETTLEMENT', 'AMOUNT_MISMATCH', 'DUPLICATE', 'TIMING'].map(
        (mismatchClass) => [
          mismatchClass,
          metricSample(text, 'settle_reconciliation_last_run_mismatches', {
            settlement_day: day,
            class: mismatchClass,
          }),
        ],
      ),
    );
    expect(byClass).toEqual({
      MISSING_IN_LEDGER: 0,
      MISSING_IN_SETTLEMENT: 0,
      AMOUNT_MISMATCH: 0,
      DUPLICATE: 0,
      TIMING: 1,
    });
    expect(
      metricSample(text, 'settle_reconciliation_last_run_internal_check_failures', {
        settlement_day: day,
      }),
    ).toBe(0);
    // Today's 'unsettled' order; the late one was settled by tomorrow's file.
    expect(metricSample(text, 'settle_reconciliation_unsettled_orders')).toBe(1);
    expect(metricSample(text, 'settle_probe_up', { probe: 'reconciliation' })).toBe(1);
  });

  it('classifies a row already settled by another day’s file as DUPLICATE', async () => {
    const settled = (await readFile(path.join(stack.dir, `settlement-${today}.csv`), 'utf8'))
      .split('\n')
      .find((line) => line.includes(ids.normal!));
    const later = addUtcDays(today, -2);
    await writeFile(
      path.join(stack.dir, 'resent.csv'),
      `psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc\n${settled}\n`,
    );
    const report = await reconcile(stack, { filePath: 'resent.csv', settlementDate: later });
    expect(report.settlementDate).toBe(later);
    expect(counts(report)?.duplicate).toBe(1n);
    const [duplicate] = await mismatches(report.reportId);
    expect(duplicate?.detail).toMatch(
      new RegExp(`^already settled: ${todayReport.reportId} line \\d+$`),
    );
    // No second fee.
    expect((await receivable(ids.normal!)).credit).toBe(settlementFeeMinor(6000n, FEES));
  });

  it('lists reports newest first, by page and by day', async () => {
    const seen: Report[] = [];
    let pageToken = '';
    do {
      const page = await call(stack.recon.listReports.bind(stack.recon), {
        pageSize: 2,
        pageToken,
        settlementDate: '',
      });
      seen.push(...page.reports);
      pageToken = page.nextPageToken;
    } while (pageToken !== '');
    const ids = seen.map((report) => report.reportId);
    expect(ids).toEqual([...ids].sort().reverse());
    expect(ids).toContain(todayReport.reportId);
    expect(ids).toContain(tomorrowReport.reportId);
    const ofTomorrow = await call(stack.recon.listReports.bind(stack.recon), {
      pageSize: 0,
      pageToken: '',
      settlementDate: addUtcDays(today, 1),
    });
    expect(ofTomorrow.reports.map((report) => report.reportId)).toEqual([tomorrowReport.reportId]);
  });
});

describe('a fee larger than its payment', () => {
  it('is an AMOUNT_MISMATCH saying so, and its fee is not booked', async () => {
    const orderId = await paidOrder(stack, 'seller-fee-over-gross', 1000n);
    const day = addUtcDays(today, -3);
    // A bad or crafted row: booked, its fee would be an expense 10^11 times the payment.
    await writeFile(
      path.join(stack.dir, 'fee-over-gross.csv'),
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc\n' +
        `psp_fee_over_gross,${orderId},payment,USD,10.00,1000000000000.00,-999999999990.00,b1,` +
        `${day}T12:00:00.000Z\n`,
    );
    const report = await reconcile(stack, { filePath: 'fee-over-gross.csv', settlementDate: day });
    expect(report.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    expect(counts(report)?.amountMismatch).toBe(1n);
    expect(counts(report)?.matched).toBe(0n);
    const [mismatch] = await mismatches(report.reportId);
    expect(mismatch?.detail).toBe(
      'file fee 100000000000000 exceeds its gross 1000 USD minor units; the fee is not booked',
    );
    // psp_receivable holds the payment alone: no fee was taken from it.
    expect(await receivable(orderId)).toEqual({ debit: 1000n, credit: 0n });
  });
});

describe('refused requests write nothing', () => {
  const header =
    'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';
  const row = 'psp_x1,ord_x1,payment,USD,10.00,0.59,9.41,batch-x,2024-05-01T10:00:00.000Z';

  it.each([
    [
      'a bad header',
      `psp_reference,merchant_reference,type\n${row}\n`,
      1,
      'the header must be exactly',
    ],
    [
      'a bad amount',
      `${header}\n${row}\n${row.replace('10.00', '10.001')}\n`,
      3,
      "gross '10.001' has more than 2 decimal places",
    ],
    [
      'a wrong currency',
      `${header}\n${row.replace('USD', 'GBP')}\n`,
      2,
      "currency 'GBP' must be USD",
    ],
    [
      'a truncated line',
      `${header}\n${row}\n${row}\npsp_x2,ord_x2,pay`,
      4,
      'the last line has no line end: the file is truncated',
    ],
    [
      'a short line',
      `${header}\n${row}\npsp_x2,ord_x2,payment\n${row}\n`,
      3,
      'expected 9 columns, found 3',
    ],
  ])('refuses a file with %s, naming the line', async (_name, content, line, text) => {
    await writeFile(path.join(stack.dir, 'settlement-2024-05-01-bad.csv'), content);
    const before = await allRowCounts(stack.settle.db);
    const error = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '',
      filePath: 'settlement-2024-05-01-bad.csv',
    });
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.details).toContain(`settlement-2024-05-01-bad.csv line ${line}: `);
    expect(error.details).toContain(text);
    expect(await allRowCounts(stack.settle.db)).toEqual(before);
  });

  it('refuses a day that has not begun with FAILED_PRECONDITION, given or named by the file', async () => {
    const ahead = addUtcDays(today, 2);
    await writeFile(path.join(stack.dir, `settlement-${ahead}.csv`), `${header}\n`);
    const before = await allRowCounts(stack.settle.db);
    for (const source of [
      { settlementDate: ahead, filePath: '' },
      { settlementDate: '', filePath: `settlement-${ahead}.csv` },
    ]) {
      const error = await callError(stack.recon.runReconciliation.bind(stack.recon), source);
      expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(error.details).toBe(
        `settlement day ${ahead} has not begun (this node's UTC day is ${today}): no settlement ` +
          `file can exist for it yet; the latest day that can be reconciled is ${addUtcDays(today, 1)}`,
      );
    }
    // Without a file for it, too: the day is the problem, not the file.
    const far = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '2062-11-26',
      filePath: '',
    });
    expect(far.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(far.details).toMatch(/^settlement day 2062-11-26 has not begun/);
    expect(await allRowCounts(stack.settle.db)).toEqual(before);
  });

  it('refuses a day older than the retention window with FAILED_PRECONDITION', async () => {
    // The default window is 400 days: 2024-05-01 has been out of it since mid-2025.
    await writeFile(path.join(stack.dir, 'settlement-2024-05-01.csv'), `${header}\n${row}\n`);
    const before = await allRowCounts(stack.settle.db);
    const error = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '2024-05-01',
      filePath: '',
    });
    expect(error.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(error.details).toMatch(
      /^settlement day 2024-05-01 is older than the retention window \(RECONCILIATION_KEEP_DAYS=400, so days from \d{4}-\d{2}-\d{2}\): .* raise RECONCILIATION_KEEP_DAYS to reconcile it$/,
    );
    expect(await allRowCounts(stack.settle.db)).toEqual(before);
  });

  it('refuses paths outside the settlement folder and names missing files', async () => {
    await symlink('/etc/hostname', path.join(stack.dir, 'escape.csv')).catch(() => undefined);
    const before = await allRowCounts(stack.settle.db);
    for (const filePath of ['../outside.csv', '/etc/passwd', `${stack.dir}/../x.csv`]) {
      const error = await callError(stack.recon.runReconciliation.bind(stack.recon), {
        settlementDate: '2024-05-01',
        filePath,
      });
      expect(error.code, filePath).toBe(grpc.status.INVALID_ARGUMENT);
      expect(error.details).toBe(
        'file_path: must name a file inside the settlement folder (SETTLEMENT_DIR)',
      );
    }
    const link = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '2024-05-01',
      filePath: 'escape.csv',
    });
    expect(link.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(link.details).toBe(
      'file_path: leads outside the settlement folder (SETTLEMENT_DIR) through a link',
    );
    const nul = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '',
      filePath: 'a\0b',
    });
    expect(nul.details).toBe('file_path: must not contain a NUL character');
    // Given only a day, a problem with its file is told against settlement_date, naming the file.
    const day = '2026-01-07';
    await mkdir(path.join(stack.dir, `settlement-${day}.csv`), { recursive: true });
    const folder = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: day,
      filePath: '',
    });
    expect(folder.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(folder.details).toBe(`settlement_date: settlement-${day}.csv is not a file`);
    const missing = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '2001-01-01',
      filePath: '',
    });
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    expect(missing.details).toBe("settlement file 'settlement-2001-01-01.csv' not found");
    const badDay = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '2024-02-30',
      filePath: '',
    });
    expect(badDay.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(badDay.details).toBe("settlement_date: must be a day as YYYY-MM-DD, got '2024-02-30'");
    const nothing = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '',
      filePath: '',
    });
    expect(nothing.details).toBe('settlement_date: give settlement_date (YYYY-MM-DD) or file_path');
    // A file named for one day, given with another: it would settle the wrong day's orders.
    await writeFile(path.join(stack.dir, 'settlement-2026-01-08-copy.csv'), `${header}\n${row}\n`);
    const otherDay = await callError(stack.recon.runReconciliation.bind(stack.recon), {
      settlementDate: '2026-01-06',
      filePath: 'settlement-2026-01-08-copy.csv',
    });
    expect(otherDay.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(otherDay.details).toBe(
      'settlement_date: is 2026-01-06, but settlement-2026-01-08-copy.csv is the file of 2026-01-08; give settlement_date 2026-01-08 or leave it out',
    );
    const unknown = await callError(stack.recon.getReport.bind(stack.recon), {
      reportId: 'rcn_01J00000000000000000000000',
    });
    expect(unknown.code).toBe(grpc.status.NOT_FOUND);
    expect(await allRowCounts(stack.settle.db)).toEqual(before);
  });
});

describe('long runs', () => {
  it('fails a run whose file changed while it was read, saying so, and leaves no staging rows', async () => {
    const day = addUtcDays(today, -8);
    const name = `settlement-${day}-changing.csv`;
    const file = path.join(stack.dir, name);
    const lines = [
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc',
    ];
    for (let i = 0; i < 200_000; i += 1) {
      lines.push(
        `psp_c${i},ord_changing_${i},payment,USD,10.00,0.59,9.41,batch-c,${day}T10:00:00.000Z`,
      );
    }
    await writeFile(file, `${lines.join('\n')}\n`);
    const started = await stack.settle.reconciliation.run({ filePath: name }, { waitMs: 0 });
    expect(started.state).toBe('RUNNING');
    // Rewritten in place while the run streams it: cut in the middle of a line.
    await writeFile(file, `${lines.slice(0, 150_000).join('\n')}\npsp_cut,ord_cut,pay`);
    const done = await waitForReport(stack, started.id);
    expect(done.state).toBe(ReportState.REPORT_STATE_FAILED);
    expect(done.error).toMatch(new RegExp(`^${name} changed while it was read.*; run it again$`));
    const { rows } = await sql<{ n: string }>`
      SELECT (SELECT COUNT(*) FROM recon_file_row WHERE run_id = ${started.id})
           + (SELECT COUNT(*) FROM recon_mismatch WHERE run_id = ${started.id}) AS n`.execute(
      stack.settle.db,
    );
    expect(Number(rows[0]?.n)).toBe(0);
  });

  it('answers RUNNING at once when asked not to wait, and the report can be polled', async () => {
    const day = addUtcDays(today, -5);
    await generateFile(stack, day);
    const started = await stack.settle.reconciliation.run({ settlementDate: day }, { waitMs: 0 });
    expect(started.state).toBe('RUNNING');
    expect(started.rowsTotal).toBe(0n);
    const done = await waitForReport(stack, started.id);
    expect(done.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
  });
});

describe('an internal check that fails', () => {
  it('is reported by the run and exported for alerts', async () => {
    const wallet = sql`UPDATE wallet SET balance_minor = balance_minor + ${1} WHERE seller_id = ${'seller-normal'}`;
    const restore = sql`UPDATE wallet SET balance_minor = balance_minor - ${1} WHERE seller_id = ${'seller-normal'}`;
    expect(Number((await wallet.execute(stack.settle.db)).numAffectedRows)).toBe(1);
    try {
      // Tomorrow, the latest day that can be reconciled, so its run is the one /metrics shows;
      // a file of its own (an empty one), so the run is new.
      const day = addUtcDays(today, 1);
      const name = `settlement-${day}-check.csv`;
      await writeFile(
        path.join(stack.dir, name),
        'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc\n',
      );
      const report = await reconcile(stack, { filePath: name });
      expect(report.internalCheck).toMatchObject({
        ledgerBalanced: true,
        walletsMatchLedger: false,
        walletsNotMatching: 1n,
      });
      // Tomorrow was already the latest day: wait for this run's figures, not the last run's.
      const failures = await waitFor(
        async () => {
          const text = await metricsAfterRunOf(day);
          const value = metricSample(
            text,
            'settle_reconciliation_last_run_internal_check_failures',
            { settlement_day: day },
          );
          return value === 1 ? value : undefined;
        },
        { what: 'the failed internal check in /metrics' },
      );
      expect(failures).toBe(1);
      // Money off the books pages; the running sums were checked and match.
      await waitForInternalCheckFailures(day, 1, {
        LEDGER_NOT_BALANCED: 0,
        WALLETS_DIFFER: 1,
        SUMS_DIFFER: 0,
        SUMS_UNCHECKED: 0,
      });
    } finally {
      await restore.execute(stack.settle.db);
    }
  });

  it('reports running sums changed by hand, counts them for alerts, and reads an older report as not checked', async () => {
    // The sums must count an order's entries before they can be changed: a node's pass, every
    // 5 s once they are settled, adds them.
    const seller = 'seller-sums';
    await paidOrder(stack, seller, 700n);
    const account = `seller_payable:${seller}`;
    await waitFor(
      async () => {
        const { rows } = await sql<{ n: string }>`
          SELECT COUNT(*) AS n FROM ledger_account_sum WHERE account = ${account}`.execute(
          stack.settle.db,
        );
        return Number(rows[0]?.n) === 1;
      },
      { timeoutMs: 60_000, what: `${account} in the running sums` },
    );
    const day = addUtcDays(today, 1);
    const header =
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';
    // Files of their own (bytes no other run of the day has), so each run is new, and tomorrow's,
    // the latest day, so /metrics shows it. The wallet test's run left a failure in /metrics:
    // this clean one must bring it back to 0.
    await writeFile(path.join(stack.dir, `settlement-${day}-sums-clean.csv`), `${header}\r\n`);
    const clean = await reconcile(stack, { filePath: `settlement-${day}-sums-clean.csv` });
    expect(clean.internalCheck).toMatchObject({
      ledgerBalanced: true,
      walletsMatchLedger: true,
      ledgerSumsMatch: true,
      ledgerSumsNotMatching: 0n,
      ledgerSumDifferences: [],
      currencySumDifferences: [],
    });
    await waitForInternalCheckFailures(day, 0, {
      LEDGER_NOT_BALANCED: 0,
      WALLETS_DIFFER: 0,
      SUMS_DIFFER: 0,
      SUMS_UNCHECKED: 0,
    });

    // Additions and subtractions commute with a node's pass (it adds to the same rows), so the
    // sums are changed and put back while passes run.
    const accountSum = (delta: number) => sql`
      UPDATE ledger_account_sum SET debit_minor = debit_minor + ${delta}
      WHERE account = ${account} AND currency = 'USD'`;
    const currencySum = (delta: number) => sql`
      UPDATE ledger_currency_sum SET credit_minor = credit_minor + ${delta}
      WHERE currency = 'USD'`;
    expect(Number((await accountSum(1).execute(stack.settle.db)).numAffectedRows)).toBe(1);
    expect(Number((await currencySum(1).execute(stack.settle.db)).numAffectedRows)).toBe(1);
    let drifted: Report;
    try {
      const name = `settlement-${day}-sums-drift.csv`;
      // One row of an order Settle does not know (MISSING_IN_LEDGER): bytes unlike the others'.
      await writeFile(
        path.join(stack.dir, name),
        `${header}\npsp_sums,ord_sums_unknown,payment,USD,1.00,0.33,0.67,batch-s,${day}T10:00:00.000Z\n`,
      );
      drifted = await reconcile(stack, { filePath: name });
    } finally {
      await accountSum(-1).execute(stack.settle.db);
      await currencySum(-1).execute(stack.settle.db);
    }
    // The ledger and the wallets are untouched: only the sums' check fails.
    expect(drifted.internalCheck).toMatchObject({
      ledgerBalanced: true,
      walletsMatchLedger: true,
      ledgerSumsMatch: false,
      ledgerSumsNotMatching: 1n,
      ledgerSumDifferences: [{ account, currencyCode: 'USD' }],
      currencySumsNotMatching: 1n,
      currencySumDifferences: ['USD'],
    });
    await waitForInternalCheckFailures(day, 1, {
      LEDGER_NOT_BALANCED: 0,
      WALLETS_DIFFER: 0,
      SUMS_DIFFER: 1,
      SUMS_UNCHECKED: 0,
    });
    // It names the command that mends them, as the alert SettleLedgerSumsDiffer does.
    expect(await internalChecksCard()).toBe(
      'running sums differ from the ledger entries in 1 currency and 1 (account, currency) ' +
        `pair: USD, ${account}/USD; mend them with settle ledger-sums repair --reason … ` +
        '( --dry-run first)',
    );
    expect(await cliCheckColumn(drifted.reportId)).toBe('SUMS DIFFER');

    // A report completed before the sums were checked has none of their fields in its row.
    await sql`
      UPDATE recon_run
      SET internal_check = JSON_REMOVE(internal_check, '$.ledgerSumsMatch',
        '$.ledgerSumsNotMatching', '$.ledgerSumDifferences', '$.currencySumsNotMatching',
        '$.currencySumDifferences')
      WHERE id = ${drifted.reportId}`.execute(stack.settle.db);
    const older = await call(stack.recon.getReport.bind(stack.recon), {
      reportId: drifted.reportId,
    });
    expect(older.report?.internalCheck).toEqual({
      ...drifted.internalCheck,
      ledgerSumsMatch: undefined,
      ledgerSumsNotMatching: 0n,
      ledgerSumDifferences: [],
      currencySumsNotMatching: 0n,
      currencySumDifferences: [],
    });
    // Not checked is not failed, and has no sample of its own.
    await waitForInternalCheckFailures(day, 0, { LEDGER_NOT_BALANCED: 0, WALLETS_DIFFER: 0 });
    expect(await internalChecksCard()).toBe('ledger balanced, wallets equal to it');
    expect(await cliCheckColumn(drifted.reportId)).toBe('ok');
  }, 90_000);

  it('completes a run with the sums unchecked when comparing them fails, fails that check, and says why', async () => {
    // The comparison reads the whole ledger, a page of accounts per statement: on a very large
    // one, the page holding psp_receivable (half the entries) can pass its deadline. A sums table
    // out of the way makes it fail the same way for the run (an error from MySQL).
    // Tomorrow's, the latest day (so /metrics shows it).
    const day = addUtcDays(today, 1);
    const header =
      'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';
    const name = `settlement-${day}-sums-unchecked.csv`;
    // One row of an order Settle does not know (MISSING_IN_LEDGER), for bytes of its own.
    await writeFile(
      path.join(stack.dir, name),
      `${header}\npsp_unchecked,ord_unchecked_unknown,payment,USD,1.00,0.33,0.67,batch-u,${day}T10:00:00.000Z\n`,
    );
    const logged = logLines.length;
    await sql`RENAME TABLE ledger_currency_sum TO ledger_currency_sum_away`.execute(
      stack.settle.db,
    );
    let report: Report;
    try {
      report = await reconcile(stack, { filePath: name });
    } finally {
      await sql`RENAME TABLE ledger_currency_sum_away TO ledger_currency_sum`.execute(
        stack.settle.db,
      );
    }
    expect(report.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    const reason = 'the comparison failed: ER_NO_SUCH_TABLE (errno 1146)';
    expect(report.internalCheck).toMatchObject({
      ledgerBalanced: true,
      walletsMatchLedger: true,
      ledgerSumsMatch: undefined,
      ledgerSumsUnchecked: reason,
      ledgerSumDifferences: [],
    });
    // Not compared is not passed: a failure of its own (its own warning), and SUMS_DIFFER, which
    // was not found either way, has no sample.
    await waitForInternalCheckFailures(day, 1, {
      LEDGER_NOT_BALANCED: 0,
      WALLETS_DIFFER: 0,
      SUMS_UNCHECKED: 1,
    });
    const advice = 'run the reconciliation again, or settle ledger-sums repair';
    expect(await internalChecksCard()).toBe(
      `the running sums could not be compared with the ledger entries: ${reason}; ${advice} ` +
        '--reason … --dry-run',
    );
    expect(await cliCheckColumn(report.reportId)).toBe('SUMS UNCHECKED');
    expect(await cliShown(['reconcile', 'report', report.reportId])).toContain(
      `report ${report.reportId}: the running sums could not be compared with the ledger ` +
        `entries: ${reason}; ${advice} --reason "<why>" --dry-run\n`,
    );
    expect(logLines.slice(logged).join('\n')).toContain(
      'reconciliation could not compare the running sums with the ledger entries',
    );
  }, 90_000);
});

/**
 * Waits for /metrics to show `expected` internal check failures for `day`, and each check's own
 * gauge as `checks` says (a check not named has no sample: it was not run).
 */
async function waitForInternalCheckFailures(
  day: string,
  expected: number,
  checks: Partial<Record<InternalCheckFailure, 0 | 1>>,
): Promise<void> {
  let seen: unknown;
  await waitFor(
    async () => {
      const text = await metricsAfterRunOf(day);
      const value = metricSample(text, 'settle_reconciliation_last_run_internal_check_failures', {
        settlement_day: day,
      });
      const failed: Partial<Record<InternalCheckFailure, number>> = {};
      for (const check of Object.values(INTERNAL_CHECK_FAILURE)) {
        const sample = metricSample(text, 'settle_reconciliation_last_run_internal_check_failed', {
          settlement_day: day,
          check,
        });
        if (sample !== undefined) failed[check] = sample;
      }
      seen = { failures: value, failed };
      return value === expected && isDeepStrictEqual(failed, checks);
    },
    { what: `${expected} internal check failures of ${day} in /metrics, each as expected` },
  ).catch((error: unknown) => {
    throw new Error(`${String(error)}; last seen ${JSON.stringify(seen)}`);
  });
}

/** What the operations page's reconciliation card says of the latest run's internal checks. */
async function internalChecksCard(): Promise<string> {
  const { html } = await adminFetch(stack, '/admin/operations');
  const text = html
    .slice(html.indexOf('<h2>Reconciliation</h2>'))
    .replace(/<[^>]+>/g, ' ')
    .replace(/\s+/g, ' ');
  return /Internal checks (.*?) Orders not settled yet/.exec(text)?.[1] ?? text;
}

/** What the CLI prints for `args`, which must succeed. */
async function cliShown(args: string[]): Promise<string> {
  let shown = '';
  const exitCode = await runCli(
    args,
    { SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}` },
    { out: (text) => (shown += text), err: (text) => (shown += text) },
  );
  expect(exitCode, shown).toBe(0);
  return shown;
}

/** The CHECK column of `settle reconcile report`: the last one of the report's row. */
async function cliCheckColumn(reportId: string): Promise<string> {
  const shown = await cliShown(['reconcile', 'report', reportId]);
  const row = shown.split('\n').find((line) => line.startsWith(reportId)) ?? shown;
  return (
    row
      .split(/\s{2,}/)
      .at(-1)
      ?.trim() ?? ''
  );
}
