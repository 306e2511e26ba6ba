/**
 * Goal: reconciliation stays right across days, whatever the order things happen in:
 * - a payment booked after its PSP row's day was reconciled (the row then MISSING_IN_LEDGER) is
 *   settled by the run of the day it was booked: TIMING with its fee booked when the amounts
 *   agree, AMOUNT_MISMATCH when they do not; the earlier mismatch is resolved by that run, and
 *   the order is never silently left unmatched and without its fee;
 * - two days' files that carry the same PSP row, reconciled at the same moment, find one
 *   DUPLICATE between them (runs classify one at a time), and book one fee.
 * Method: startReconStack (PSP mock + Settle node, real MariaDB and NATS) with a temporary
 * settlement folder; settlement files written by the test, payments made and paid through the
 * real flow, reconciliations run and read over gRPC; the money invariants after each test.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { addUtcDays, utcDayOf } from '../../src/domain/utc-day.js';
import {
  MismatchClass,
  ReportState,
  type Mismatch,
} from '../../src/grpc/generated/settle/v1/reconciliation.js';
import { call, CARD, expectMoneyInvariants, waitFor } from '../support/harness.js';
import {
  awayFromMidnight,
  createOrder,
  generateFile,
  paidOrder,
  reconcile,
  startReconStack,
  type ReconStack,
} from './support.js';

const HEADER = 'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';

let stack: ReconStack;
let today: string;
beforeAll(async () => {
  await awayFromMidnight(120_000);
  stack = await startReconStack({ RECONCILIATION_WAIT_MS: '10000', RECONCILIATION_AT: 'off' });
  today = utcDayOf(new Date());
});
afterAll(async () => stack?.close());
afterEach(async () => expectMoneyInvariants(stack.settle.db));

async function mismatchesOf(reportId: string): Promise<Mismatch[]> {
  const response = await call(stack.recon.listMismatches.bind(stack.recon), {
    reportId,
    mismatchClass: MismatchClass.MISMATCH_CLASS_UNSPECIFIED,
    pageSize: 500,
    pageToken: '',
  });
  return response.mismatches;
}

async function feesOf(orderId: string): Promise<string[]> {
  const { rows } = await sql<{ amount_minor: string }>`
    SELECT amount_minor FROM ledger_transaction WHERE order_id = ${orderId} AND kind = 'PSP_FEE'`.execute(
    stack.settle.db,
  );
  return rows.map((row) => row.amount_minor);
}

describe('a payment booked after its day was reconciled', () => {
  it('is settled by the run of the day it was booked, and resolves the earlier MISSING_IN_LEDGER', async () => {
    const yesterday = addUtcDays(today, -1);
    // Charged by the PSP just before midnight; Settle has not applied the webhook yet.
    const same = await createOrder(stack, 'seller-late-same', 4000n);
    const other = await createOrder(stack, 'seller-late-other', 3000n);
    await writeFile(
      path.join(stack.dir, `settlement-${yesterday}.csv`),
      [
        HEADER,
        `psp_late_same,${same.orderId},payment,USD,40.00,1.46,38.54,batch-y,${yesterday}T23:59:59.900Z`,
        `psp_late_other,${other.orderId},payment,USD,31.00,0.90,30.10,batch-y,${yesterday}T23:59:59.950Z`,
        '',
      ].join('\n'),
    );
    const earlier = await reconcile(stack, { settlementDate: yesterday });
    expect(earlier.counts?.missingInLedger).toBe(2n);

    // The webhooks arrive: both are booked today.
    for (const order of [same, other]) {
      await call(stack.pspApi.payWithCard.bind(stack.pspApi), {
        token: order.pspToken,
        cardNumber: CARD.success,
      });
    }
    await waitFor(
      async () => {
        const { rows } = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_transaction
          WHERE kind = 'PAYMENT' AND order_id IN (${same.orderId}, ${other.orderId})`.execute(
          stack.settle.db,
        );
        return Number(rows[0]?.n) === 2;
      },
      { what: 'both payments booked' },
    );

    // Today's file does not name them: the PSP settled them yesterday.
    const name = `settlement-${today}-late.csv`;
    await writeFile(path.join(stack.dir, name), `${HEADER}\n`);
    const later = await reconcile(stack, { filePath: name });
    expect(later.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    expect(later.counts).toEqual({
      matched: 0n,
      missingInLedger: 0n,
      missingInSettlement: 0n,
      amountMismatch: 1n,
      duplicate: 0n,
      timing: 1n,
    });
    const found = Object.fromEntries(
      (await mismatchesOf(later.reportId)).map((m) => [m.orderId, m]),
    );
    expect(found[same.orderId]).toMatchObject({
      mismatchClass: MismatchClass.MISMATCH_CLASS_TIMING,
      fileAmountMinor: 4000n,
      ledgerAmountMinor: 4000n,
    });
    expect(found[same.orderId]?.detail).toMatch(
      new RegExp(
        `^booked ${today}T[0-9:.]+Z, after the file of ${yesterday} \\(${earlier.reportId} line 2\\) ` +
          'was reconciled: settled late in the ledger, fee booked now; resolves its MISSING_IN_LEDGER$',
      ),
    );
    expect(found[other.orderId]).toMatchObject({
      mismatchClass: MismatchClass.MISMATCH_CLASS_AMOUNT_MISMATCH,
      fileAmountMinor: 3100n,
      ledgerAmountMinor: 3000n,
    });
    // The fee of the row that agrees, once; none for the one that does not.
    expect(await feesOf(same.orderId)).toEqual(['146']);
    expect(await feesOf(other.orderId)).toEqual([]);
    const resolved = (await mismatchesOf(earlier.reportId)).map((m) => [
      m.orderId,
      m.resolvedByReportId,
    ]);
    expect(Object.fromEntries(resolved)).toEqual({
      [same.orderId]: later.reportId,
      [other.orderId]: later.reportId,
    });

    // The same file again: the same report, and still one fee.
    const again = await reconcile(stack, { filePath: name });
    expect(again.reportId).toBe(later.reportId);
    expect(await feesOf(same.orderId)).toEqual(['146']);
  });
});

describe('a payment named by two runs of one day and booked after both', () => {
  it('is settled once by a later run: one TIMING, one fee, both MISSING_IN_LEDGER resolved', async () => {
    // Two days back: the first test of this file owns yesterday's file name.
    const day = addUtcDays(today, -2);
    const order = await createOrder(stack, 'seller-late-twice', 4000n);
    const row = `psp_late_twice,${order.orderId},payment,USD,40.00,1.46,38.54,batch-t,${day}T23:59:59.900Z`;
    // An on-demand run of the day, then the run of its complete file: both name the order.
    await writeFile(path.join(stack.dir, `settlement-${day}-partial.csv`), `${HEADER}\n${row}\n`);
    const partial = await reconcile(stack, { filePath: `settlement-${day}-partial.csv` });
    const complete = `psp_twice_other,ord_twice_unknown,payment,USD,1.00,0.33,0.67,batch-t,${day}T23:59:59.950Z`;
    await writeFile(
      path.join(stack.dir, `settlement-${day}-complete.csv`),
      `${HEADER}\n${row}\n${complete}\n`,
    );
    const full = await reconcile(stack, { filePath: `settlement-${day}-complete.csv` });
    expect([partial.counts?.missingInLedger, full.counts?.missingInLedger]).toEqual([1n, 2n]);

    // The webhook arrives today.
    await call(stack.pspApi.payWithCard.bind(stack.pspApi), {
      token: order.pspToken,
      cardNumber: CARD.success,
    });
    await waitFor(
      async () => {
        const { rows } = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_transaction
          WHERE kind = 'PAYMENT' AND order_id = ${order.orderId}`.execute(stack.settle.db);
        return Number(rows[0]?.n) === 1;
      },
      { what: 'the payment booked' },
    );

    // Today's file does not name it (its bytes differ from the first test's empty file).
    const name = `settlement-${today}-twice.csv`;
    const unknown = `psp_twice_today,ord_twice_today,payment,USD,2.00,0.36,1.64,batch-u,${today}T00:00:00.000Z`;
    await writeFile(path.join(stack.dir, name), `${HEADER}\n${unknown}\n`);
    const later = await reconcile(stack, { filePath: name });
    expect({ state: later.state, error: later.error }).toEqual({
      state: ReportState.REPORT_STATE_SUCCEEDED,
      error: '',
    });
    expect(later.counts).toMatchObject({ timing: 1n, amountMismatch: 0n, missingInLedger: 1n });
    const timings = (await mismatchesOf(later.reportId)).filter((m) => m.orderId === order.orderId);
    expect(timings.map((m) => m.mismatchClass)).toEqual([MismatchClass.MISMATCH_CLASS_TIMING]);
    expect(timings[0]?.detail).toContain(`(${partial.reportId} line 2)`);
    expect(await feesOf(order.orderId)).toEqual(['146']);
    for (const earlier of [partial, full]) {
      const named = (await mismatchesOf(earlier.reportId)).filter(
        (m) => m.orderId === order.orderId,
      );
      expect(named.map((m) => m.resolvedByReportId)).toEqual([later.reportId]);
    }

    // Again: the same report, still one fee.
    const again = await reconcile(stack, { filePath: name });
    expect(again.reportId).toBe(later.reportId);
    expect(await feesOf(order.orderId)).toEqual(['146']);
  });
});

/** Pays `order` at the PSP now and waits for its PAYMENT ledger transaction. */
async function bookNow(order: { orderId: string; pspToken: string }): Promise<void> {
  await call(stack.pspApi.payWithCard.bind(stack.pspApi), {
    token: order.pspToken,
    cardNumber: CARD.success,
  });
  await waitFor(
    async () => {
      const { rows } = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_transaction
        WHERE kind = 'PAYMENT' AND order_id = ${order.orderId}`.execute(stack.settle.db);
      return Number(rows[0]?.n) === 1;
    },
    { what: `order ${order.orderId} booked` },
  );
}

/** The order's MISSING_IN_* mismatches that no run resolved (other classes are never resolved). */
async function openMissingOf(orderId: string): Promise<string[]> {
  const { rows } = await sql<{ class: string }>`
    SELECT class FROM recon_mismatch WHERE order_id = ${orderId} AND resolved_by_run_id IS NULL
      AND class IN ('MISSING_IN_LEDGER', 'MISSING_IN_SETTLEMENT')`.execute(stack.settle.db);
  return rows.map((row) => row.class);
}

/**
 * A $40.00 order named (with `fee` and `net`) by an on-demand run of today while unbooked, then booked, then
 * a later run of today whose file does not name it: that run's mismatches of the order.
 */
async function settledByALaterRunOfToday(name: string, fee: string, net: string) {
  const order = await createOrder(stack, `seller-${name}`, 4000n);
  const row = `psp_${name},${order.orderId},payment,USD,40.00,${fee},${net},b-sd,${new Date().toISOString()}`;
  await writeFile(path.join(stack.dir, `settlement-${today}-${name}.csv`), `${HEADER}\n${row}\n`);
  const first = await reconcile(stack, { filePath: `settlement-${today}-${name}.csv` });
  expect(first.counts?.missingInLedger).toBe(1n);

  await bookNow(order);
  const other = `psp_${name}_other,ord_${name}_unknown,payment,USD,1.00,0.33,0.67,b-sd,${today}T00:00:00.000Z`;
  await writeFile(
    path.join(stack.dir, `settlement-${today}-${name}-later.csv`),
    `${HEADER}\n${other}\n`,
  );
  const later = await reconcile(stack, { filePath: `settlement-${today}-${name}-later.csv` });
  expect(later.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
  const named = (await mismatchesOf(later.reportId)).filter((m) => m.orderId === order.orderId);
  return { orderId: order.orderId, named };
}

describe('a payment booked on its file day after that day was reconciled', () => {
  it('is matched by a later run of the same day, which resolves the earlier MISSING_IN_LEDGER', async () => {
    const order = await createOrder(stack, 'seller-same-day-full', 4000n);
    const row = `psp_same_day_full,${order.orderId},payment,USD,40.00,1.46,38.54,b-sd,${new Date().toISOString()}`;
    await writeFile(
      path.join(stack.dir, `settlement-${today}-on-demand.csv`),
      `${HEADER}\n${row}\n`,
    );
    const first = await reconcile(stack, { filePath: `settlement-${today}-on-demand.csv` });
    expect(first.counts?.missingInLedger).toBe(1n);

    await bookNow(order);
    // The day's complete file names it too.
    const other = `psp_same_day_other,ord_same_day_unknown,payment,USD,1.00,0.33,0.67,b-sd,${today}T00:00:00.000Z`;
    await writeFile(
      path.join(stack.dir, `settlement-${today}-complete.csv`),
      `${HEADER}\n${row}\n${other}\n`,
    );
    const second = await reconcile(stack, { filePath: `settlement-${today}-complete.csv` });
    expect(second.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    expect(second.counts).toMatchObject({ matched: 1n, timing: 0n, missingInLedger: 1n });
    expect(await feesOf(order.orderId)).toEqual(['146']);
    const earlier = (await mismatchesOf(first.reportId)).filter((m) => m.orderId === order.orderId);
    expect(earlier.map((m) => m.resolvedByReportId)).toEqual([second.reportId]);
    expect(await openMissingOf(order.orderId)).toEqual([]);
  });

  it('is settled by a later run of the same day that does not name it, and not missing from it', async () => {
    const { orderId, named } = await settledByALaterRunOfToday('same_day_unnamed', '1.46', '38.54');
    expect(named.map((m) => m.mismatchClass)).toEqual([MismatchClass.MISMATCH_CLASS_TIMING]);
    expect(await feesOf(orderId)).toEqual(['146']);
    expect(await openMissingOf(orderId)).toEqual([]);
  });

  it('is an AMOUNT_MISMATCH, its fee not booked, when its earlier row’s fee exceeds its gross', async () => {
    const { orderId, named } = await settledByALaterRunOfToday(
      'same_day_fee_over',
      '50.00',
      '-10.00',
    );
    expect(named.map((m) => m.mismatchClass)).toEqual([
      MismatchClass.MISMATCH_CLASS_AMOUNT_MISMATCH,
    ]);
    expect(named[0]?.detail).toContain(
      'file fee 5000 exceeds its gross 4000 USD minor units; the fee is not booked',
    );
    expect(await feesOf(orderId)).toEqual([]);
    expect(await openMissingOf(orderId)).toEqual([]);
  });

  it('is settled by the run of the next day when no later file names it', async () => {
    const order = await createOrder(stack, 'seller-same-day-next', 4000n);
    await writeFile(
      path.join(stack.dir, `settlement-${today}.csv`),
      `${HEADER}\npsp_same_day_next,${order.orderId},payment,USD,40.00,1.46,38.54,b-sd,${new Date().toISOString()}\n`,
    );
    const first = await reconcile(stack, { settlementDate: today });
    expect(first.counts?.missingInLedger).toBe(1n);

    await bookNow(order);
    // The same file again: the stored report, nothing written.
    const again = await reconcile(stack, { settlementDate: today });
    expect(again.reportId).toBe(first.reportId);
    expect(await feesOf(order.orderId)).toEqual([]);

    const tomorrow = addUtcDays(today, 1);
    await writeFile(path.join(stack.dir, `settlement-${tomorrow}.csv`), `${HEADER}\n`);
    const next = await reconcile(stack, { settlementDate: tomorrow });
    expect(next.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    const settled = (await mismatchesOf(next.reportId)).filter((m) => m.orderId === order.orderId);
    expect(settled.map((m) => m.mismatchClass)).toEqual([MismatchClass.MISMATCH_CLASS_TIMING]);
    expect(settled[0]?.detail).toMatch(
      new RegExp(
        `^booked ${today}T[0-9:.]+Z, after the file of ${today} \\(${first.reportId} line 2\\) ` +
          'was reconciled: settled late in the ledger, fee booked now; resolves its MISSING_IN_LEDGER$',
      ),
    );
    expect(await feesOf(order.orderId)).toEqual(['146']);
    expect(await openMissingOf(order.orderId)).toEqual([]);
  });
});

describe('two days reconciled at the same moment', () => {
  it('find the row they share once as DUPLICATE, and book its fee once', async () => {
    const orderId = await paidOrder(stack, 'seller-shared', 1234n);
    const line = (await readFile(await generateFile(stack, today), 'utf8'))
      .split('\n')
      .find((text) => text.includes(orderId));
    if (line === undefined) throw new Error(`today's file has no row for ${orderId}`);
    await writeFile(path.join(stack.dir, 'shared-1.csv'), `${HEADER}\n${line}\n`);
    await writeFile(path.join(stack.dir, 'shared-2.csv'), `${HEADER}\n${line}\n`);
    const reports = await Promise.all([
      reconcile(stack, { filePath: 'shared-1.csv', settlementDate: addUtcDays(today, -5) }),
      reconcile(stack, { filePath: 'shared-2.csv', settlementDate: addUtcDays(today, -4) }),
    ]);
    const classes = reports.map((report) => ({
      timing: report.counts?.timing,
      duplicate: report.counts?.duplicate,
    }));
    expect(classes).toContainEqual({ timing: 1n, duplicate: 0n });
    expect(classes).toContainEqual({ timing: 0n, duplicate: 1n });
    expect(await feesOf(orderId)).toHaveLength(1);
  });
});

describe('a payment named again by a later day’s file after it was booked', () => {
  it('is DUPLICATE in that file, and settled from its first row: TIMING, one fee, nothing open', async () => {
    const day = addUtcDays(today, -6);
    const order = await createOrder(stack, 'seller-named-again', 4000n);
    const row = `psp_named_again,${order.orderId},payment,USD,40.00,1.46,38.54,b-na,${day}T12:00:00.000Z`;
    await writeFile(path.join(stack.dir, 'named-first.csv'), `${HEADER}\n${row}\n`);
    const first = await reconcile(stack, { filePath: 'named-first.csv', settlementDate: day });
    expect(first.counts?.missingInLedger).toBe(1n);

    await bookNow(order);
    // The PSP lists the same charge again in today's file.
    await writeFile(path.join(stack.dir, 'named-again.csv'), `${HEADER}\n${row}\n`);
    const again = await reconcile(stack, { filePath: 'named-again.csv', settlementDate: today });
    expect(again.state).toBe(ReportState.REPORT_STATE_SUCCEEDED);
    const named = (await mismatchesOf(again.reportId)).filter((m) => m.orderId === order.orderId);
    expect(named.map((m) => m.mismatchClass).sort()).toEqual(
      [MismatchClass.MISMATCH_CLASS_DUPLICATE, MismatchClass.MISMATCH_CLASS_TIMING].sort(),
    );
    expect(await feesOf(order.orderId)).toEqual(['146']);
    expect(await openMissingOf(order.orderId)).toEqual([]);
  });
});
