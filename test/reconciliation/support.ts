/**
 * Helpers for the reconciliation tests: a stack whose PSP mock and Settle node share a temporary
 * settlement folder, payments paid through the real flow, the reconciliation gRPC client, and
 * row counts of every table (Settle's and reconciliation's) to prove what a call wrote.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { expect } from 'vitest';
import { PaymentOrderState, PaymentState } from '../../src/grpc/generated/settle/v1/payment.js';
import {
  ReconciliationServiceClient,
  ReportState,
  type Report,
} from '../../src/grpc/generated/settle/v1/reconciliation.js';
import {
  SettlementDiscrepancy,
  PaymentStatus,
} from '../../src/grpc/generated/settle/psp/v1/psp.js';
import { utcDayOf } from '../../src/domain/utc-day.js';
import type { SettleOverrides } from '../../src/app.js';
import type { Db } from '../../src/storage/db.js';
import { CARD, call, rowCounts, startStack, waitFor, type Stack } from '../support/harness.js';

export type ReconStack = Stack &
  Readonly<{ dir: string; recon: ReconciliationServiceClient; close: () => Promise<void> }>;

/** A stack with its own settlement folder; `close()` stops it and removes the folder. */
export async function startReconStack(
  env: Record<string, string> = {},
  overrides: SettleOverrides = {},
): Promise<ReconStack> {
  const dir = await mkdtemp(path.join(tmpdir(), 'settle-recon-'));
  const stack = await startStack({ env: { SETTLEMENT_DIR: dir, ...env }, overrides });
  const recon = new ReconciliationServiceClient(
    `127.0.0.1:${stack.settle.grpcPort}`,
    grpc.credentials.createInsecure(),
  );
  return {
    ...stack,
    dir,
    recon,
    close: async () => {
      recon.close();
      await stack.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Waits past midnight UTC when it is less than `marginMs` away, so payments made next and the
 * file of "today" fall on the same UTC day.
 */
export async function awayFromMidnight(marginMs = 20_000): Promise<void> {
  const now = Date.now();
  const nextMidnight = Date.parse(`${utcDayOf(new Date(now + 86_400_000))}T00:00:00.000Z`);
  if (nextMidnight - now < marginMs) {
    await new Promise((resolve) => setTimeout(resolve, nextMidnight - now + 1_000));
  }
}

/** Creates a one-order payment for `sellerId`; returns the order as the API answered it. */
export async function createOrder(stack: Stack, sellerId: string, amountMinor: bigint) {
  const { payment } = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-recon',
    currencyCode: 'USD',
    orders: [{ sellerId, amountMinor }],
  });
  const order = payment?.orders[0];
  if (order === undefined || order.pspToken === '') throw new Error('order not registered in time');
  return order;
}

/** A payment paid at the PSP with the success card, through PayWithCard; waits for SUCCEEDED. */
export async function paidOrder(
  stack: Stack,
  sellerId: string,
  amountMinor: bigint,
): Promise<string> {
  const order = await createOrder(stack, sellerId, amountMinor);
  const paid = await call(stack.pspApi.payWithCard.bind(stack.pspApi), {
    token: order.pspToken,
    cardNumber: CARD.success,
  });
  expect(paid.status).toBe(PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
  await waitFor(
    async () => {
      const { payment } = await call(stack.payments.getPayment.bind(stack.payments), {
        paymentId: order.paymentId,
      });
      return (
        payment?.state === PaymentState.PAYMENT_STATE_SUCCEEDED &&
        payment.orders[0]?.state === PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED
      );
    },
    { what: `order ${order.orderId} to succeed` },
  );
  return order.orderId;
}

export async function generateFile(stack: Stack, day: string): Promise<string> {
  const file = await call(stack.pspApi.generateSettlementFile.bind(stack.pspApi), {
    settlementDate: day,
  });
  return file.path;
}

export async function inject(
  stack: Stack,
  discrepancy: SettlementDiscrepancy,
  nonce: string,
  amountMinor = 0n,
): Promise<string> {
  const response = await call(stack.pspApi.injectSettlementDiscrepancy.bind(stack.pspApi), {
    discrepancy,
    nonce,
    amountMinor,
    settlementDate: '',
  });
  return response.pspReference;
}

/** Runs a reconciliation through gRPC and polls GetReport until it ends. */
export async function reconcile(
  stack: ReconStack,
  source: { settlementDate?: string; filePath?: string },
): Promise<Report> {
  const { report } = await call(stack.recon.runReconciliation.bind(stack.recon), {
    settlementDate: source.settlementDate ?? '',
    filePath: source.filePath ?? '',
  });
  if (report === undefined) throw new Error('no report');
  return waitForReport(stack, report.reportId);
}

export async function waitForReport(stack: ReconStack, reportId: string): Promise<Report> {
  return waitFor(
    async () => {
      const { report } = await call(stack.recon.getReport.bind(stack.recon), { reportId });
      return report !== undefined && report.state !== ReportState.REPORT_STATE_RUNNING
        ? report
        : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: `report ${reportId}` },
  );
}

/** Row counts of Settle's tables and reconciliation's. */
export async function allRowCounts(db: Db): Promise<Record<string, number>> {
  const counts = await rowCounts(db);
  for (const table of [
    'recon_run',
    'recon_file_row',
    'recon_mismatch',
    'reconciliation_schedule',
  ]) {
    const result = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM ${sql.table(table)}`.execute(
      db,
    );
    counts[table] = Number(result.rows[0]?.n ?? 0);
  }
  return counts;
}

export { SettlementDiscrepancy };
