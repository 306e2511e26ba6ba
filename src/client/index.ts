/**
 * The TypeScript client of Settle: the generated ts-proto stubs and a small promise-based wrapper.
 *
 *   import { createSettleClient } from 'settle/client';
 *   const settle = createSettleClient('127.0.0.1:50051');
 *   const { payment } = await settle.payments.createPayment({ requestId, buyerId, currencyCode: 'USD', orders });
 *
 * Amounts are bigint minor units (int64). Errors are grpc-js ServiceErrors with `code` and `details`.
 */
import * as grpc from '@grpc/grpc-js';
import {
  PaymentServiceClient,
  type CreatePaymentRequest,
  type CreatePaymentResponse,
  type GetPaymentRequest,
  type GetPaymentResponse,
  type ListPaymentsRequest,
  type ListPaymentsResponse,
  type WatchPaymentResponse,
} from '../grpc/generated/settle/v1/payment.js';
import {
  LedgerServiceClient,
  WalletServiceClient,
  type GetTrialBalanceRequest,
  type GetTrialBalanceResponse,
  type GetWalletRequest,
  type GetWalletResponse,
  type ListEntriesRequest,
  type ListEntriesResponse,
} from '../grpc/generated/settle/v1/wallet.js';
import {
  AdminServiceClient as AdminClient,
  type DiscardDeadLetterRequest,
  type DiscardDeadLetterResponse,
  type GetPaymentTimelineRequest,
  type GetPaymentTimelineResponse,
  type ListDeadLettersRequest,
  type ListDeadLettersResponse,
  type ReplayDeadLetterRequest,
  type ReplayDeadLetterResponse,
} from '../grpc/generated/settle/v1/admin.js';
import {
  ReconciliationServiceClient,
  type GetReportRequest,
  type GetReportResponse,
  type ListMismatchesRequest,
  type ListMismatchesResponse,
  type ListReportsRequest,
  type ListReportsResponse,
  type RunReconciliationRequest,
  type RunReconciliationResponse,
} from '../grpc/generated/settle/v1/reconciliation.js';

export {
  PaymentState,
  PaymentOrderState,
  type Payment,
  type PaymentOrder,
  type OrderRequest,
  type CreatePaymentRequest,
  type CreatePaymentResponse,
  type ListPaymentsRequest,
  type ListPaymentsResponse,
  type WatchPaymentResponse,
  PaymentServiceClient,
} from '../grpc/generated/settle/v1/payment.js';
export {
  type Wallet,
  type LedgerEntry,
  type AccountBalance,
  type GetTrialBalanceResponse,
  WalletServiceClient,
  LedgerServiceClient,
} from '../grpc/generated/settle/v1/wallet.js';

export {
  AdminServiceClient,
  DeadLetterState,
  type DeadLetter,
  type TimelineEntry,
} from '../grpc/generated/settle/v1/admin.js';

export {
  ReconciliationServiceClient,
  MismatchClass,
  ReportState,
  type Mismatch,
  type Report,
} from '../grpc/generated/settle/v1/reconciliation.js';

export type CallOptions = Readonly<{ timeoutMs?: number; metadata?: Record<string, string> }>;

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

function unary<Req, Res>(method: UnaryMethod<Req, Res>, defaultTimeoutMs: number) {
  return (request: Req, options: CallOptions = {}): Promise<Res> =>
    new Promise((resolve, reject) => {
      const metadata = new grpc.Metadata();
      for (const [key, value] of Object.entries(options.metadata ?? {})) metadata.set(key, value);
      method(
        request,
        metadata,
        { deadline: Date.now() + (options.timeoutMs ?? defaultTimeoutMs) },
        (error, response) => (error ? reject(error) : resolve(response)),
      );
    });
}

export type SettleClient = ReturnType<typeof createSettleClient>;

/** Connects to a Settle node (plaintext, e.g. "127.0.0.1:50051"). Every call has a deadline. */
export function createSettleClient(
  address: string,
  options: { defaultTimeoutMs?: number; credentials?: grpc.ChannelCredentials } = {},
) {
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const timeoutMs = options.defaultTimeoutMs ?? 10_000;
  const payments = new PaymentServiceClient(address, credentials);
  const wallets = new WalletServiceClient(address, credentials);
  const ledger = new LedgerServiceClient(address, credentials);
  const admin = new AdminClient(address, credentials);
  const reconciliation = new ReconciliationServiceClient(address, credentials);
  return {
    payments: {
      createPayment: unary<CreatePaymentRequest, CreatePaymentResponse>(
        payments.createPayment.bind(payments),
        timeoutMs,
      ),
      getPayment: unary<GetPaymentRequest, GetPaymentResponse>(
        payments.getPayment.bind(payments),
        timeoutMs,
      ),
      listPayments: unary<ListPaymentsRequest, ListPaymentsResponse>(
        payments.listPayments.bind(payments),
        timeoutMs,
      ),
      /** Yields the payment now and after each change until it is terminal. */
      async *watchPayment(
        paymentId: string,
        options: { timeoutMs?: number } = {},
      ): AsyncGenerator<WatchPaymentResponse> {
        const stream = payments.watchPayment({ paymentId }, new grpc.Metadata(), {
          deadline: Date.now() + (options.timeoutMs ?? 60 * 60_000),
        });
        try {
          for await (const message of stream as AsyncIterable<WatchPaymentResponse>) yield message;
        } finally {
          stream.cancel();
        }
      },
    },
    wallets: {
      getWallet: unary<GetWalletRequest, GetWalletResponse>(
        wallets.getWallet.bind(wallets),
        timeoutMs,
      ),
    },
    ledger: {
      listEntries: unary<ListEntriesRequest, ListEntriesResponse>(
        ledger.listEntries.bind(ledger),
        timeoutMs,
      ),
      getTrialBalance: unary<GetTrialBalanceRequest, GetTrialBalanceResponse>(
        ledger.getTrialBalance.bind(ledger),
        timeoutMs,
      ),
    },
    /**
     * AdminService; pass `metadata: { authorization: 'Bearer <ADMIN_TOKEN>' }` (a server without
     * ADMIN_TOKEN refuses).
     */
    admin: {
      listDeadLetters: unary<ListDeadLettersRequest, ListDeadLettersResponse>(
        admin.listDeadLetters.bind(admin),
        timeoutMs,
      ),
      replayDeadLetter: unary<ReplayDeadLetterRequest, ReplayDeadLetterResponse>(
        admin.replayDeadLetter.bind(admin),
        timeoutMs,
      ),
      discardDeadLetter: unary<DiscardDeadLetterRequest, DiscardDeadLetterResponse>(
        admin.discardDeadLetter.bind(admin),
        timeoutMs,
      ),
      getPaymentTimeline: unary<GetPaymentTimelineRequest, GetPaymentTimelineResponse>(
        admin.getPaymentTimeline.bind(admin),
        timeoutMs,
      ),
    },
    /** ReconciliationService; a RUNNING report is polled with getReport. */
    reconciliation: {
      runReconciliation: unary<RunReconciliationRequest, RunReconciliationResponse>(
        reconciliation.runReconciliation.bind(reconciliation),
        timeoutMs,
      ),
      getReport: unary<GetReportRequest, GetReportResponse>(
        reconciliation.getReport.bind(reconciliation),
        timeoutMs,
      ),
      listReports: unary<ListReportsRequest, ListReportsResponse>(
        reconciliation.listReports.bind(reconciliation),
        timeoutMs,
      ),
      listMismatches: unary<ListMismatchesRequest, ListMismatchesResponse>(
        reconciliation.listMismatches.bind(reconciliation),
        timeoutMs,
      ),
    },
    close(): void {
      reconciliation.close();
      admin.close();
      payments.close();
      wallets.close();
      ledger.close();
    },
  };
}
