/**
 * settle.v1.ReconciliationService: thin adapters from proto requests to ReconciliationService,
 * and the mapping of runs and mismatches to proto messages.
 */
import { InvalidArgumentError } from '../../domain/errors.js';
import {
  RECONCILIATION_CLASS,
  RUN_STATE,
  type Mismatch,
  type ReconciliationClass,
  type ReconciliationService,
  type Run,
} from '../../reconciliation/index.js';
import {
  MismatchClass,
  ReportState,
  type Mismatch as MismatchMessage,
  type ReconciliationServiceServer,
  type Report,
} from '../generated/settle/v1/reconciliation.js';
import { unary, type AdapterOptions } from '../adapters.js';

const CLASS_TO_PROTO: Readonly<Record<ReconciliationClass, MismatchClass>> = {
  MATCHED: MismatchClass.MISMATCH_CLASS_UNSPECIFIED,
  MISSING_IN_LEDGER: MismatchClass.MISMATCH_CLASS_MISSING_IN_LEDGER,
  MISSING_IN_SETTLEMENT: MismatchClass.MISMATCH_CLASS_MISSING_IN_SETTLEMENT,
  AMOUNT_MISMATCH: MismatchClass.MISMATCH_CLASS_AMOUNT_MISMATCH,
  DUPLICATE: MismatchClass.MISMATCH_CLASS_DUPLICATE,
  TIMING: MismatchClass.MISMATCH_CLASS_TIMING,
};

const STATE_TO_PROTO = {
  [RUN_STATE.running]: ReportState.REPORT_STATE_RUNNING,
  [RUN_STATE.succeeded]: ReportState.REPORT_STATE_SUCCEEDED,
  [RUN_STATE.failed]: ReportState.REPORT_STATE_FAILED,
} as const;

export function reconciliationHandlers(
  reconciliation: ReconciliationService,
  options: AdapterOptions,
): ReconciliationServiceServer {
  return {
    runReconciliation: unary(async (request) => {
      const run = await reconciliation.run({
        settlementDate: request.settlementDate,
        filePath: request.filePath,
      });
      return { report: reportToProto(run) };
    }, options),
    getReport: unary(
      async (request) => ({
        report: reportToProto(await reconciliation.getReport(request.reportId)),
      }),
      options,
    ),
    listReports: unary(async (request) => {
      const page = await reconciliation.listReports(request);
      return { reports: page.items.map(reportToProto), nextPageToken: page.nextPageToken };
    }, options),
    listMismatches: unary(async (request) => {
      const page = await reconciliation.listMismatches({
        reportId: request.reportId,
        class: classFromProto(request.mismatchClass),
        pageSize: request.pageSize,
        pageToken: request.pageToken,
      });
      return { mismatches: page.items.map(mismatchToProto), nextPageToken: page.nextPageToken };
    }, options),
  };
}

export function reportToProto(run: Run): Report {
  const check = run.internalCheck;
  const done = run.state === RUN_STATE.succeeded;
  return {
    reportId: run.id,
    state: STATE_TO_PROTO[run.state],
    settlementDate: run.day,
    fileName: run.fileName,
    fileSha256: run.fileSha256,
    rowsTotal: run.rowsTotal,
    rowsLoaded: run.rowsLoaded,
    counts: done
      ? {
          matched: run.counts.MATCHED,
          missingInLedger: run.counts.MISSING_IN_LEDGER,
          missingInSettlement: run.counts.MISSING_IN_SETTLEMENT,
          amountMismatch: run.counts.AMOUNT_MISMATCH,
          duplicate: run.counts.DUPLICATE,
          timing: run.counts.TIMING,
        }
      : undefined,
    currencyCode: run.currency,
    grossMinor: run.grossMinor,
    feeMinor: run.feeMinor,
    netMinor: run.netMinor,
    settledGrossMinor: run.settledGrossMinor,
    settledFeeMinor: run.settledFeeMinor,
    settledNetMinor: run.settledNetMinor,
    internalCheck:
      check === undefined
        ? undefined
        : {
            ledgerBalanced: check.ledgerBalanced,
            totals: check.totals.map((total) => ({
              currencyCode: total.currency,
              debitMinor: total.debitMinor,
              creditMinor: total.creditMinor,
              balanceMinor: total.balanceMinor,
            })),
            walletsChecked: check.walletsChecked,
            walletsMatchLedger: check.walletsMatchLedger,
            walletsNotMatching: check.walletsNotMatching,
            walletDifferences: check.walletDifferences.map((difference) => ({
              sellerId: difference.sellerId,
              walletMinor: difference.walletMinor,
              ledgerMinor: difference.ledgerMinor,
            })),
            ledgerSumsMatch: check.ledgerSumsMatch,
            ledgerSumsNotMatching: check.ledgerSumsNotMatching,
            ledgerSumDifferences: check.ledgerSumDifferences.map((difference) => ({
              account: difference.account,
              currencyCode: difference.currency,
            })),
            currencySumsNotMatching: check.currencySumsNotMatching,
            currencySumDifferences: [...check.currencySumDifferences],
            ledgerSumsUnchecked: check.ledgerSumsUnchecked ?? '',
          },
    error: run.error ?? '',
    createTime: run.createdAt,
    completeTime: run.completedAt,
  };
}

export function mismatchToProto(mismatch: Mismatch): MismatchMessage {
  return {
    mismatchId: mismatch.id.toString(),
    reportId: mismatch.runId,
    mismatchClass: CLASS_TO_PROTO[mismatch.class],
    lineNumber: mismatch.lineNumber === undefined ? undefined : BigInt(mismatch.lineNumber),
    orderId: mismatch.orderId,
    pspReference: mismatch.pspReference ?? '',
    fileAmountMinor: mismatch.fileAmountMinor,
    ledgerAmountMinor: mismatch.ledgerAmountMinor,
    orderState: mismatch.orderState ?? '',
    detail: mismatch.detail,
    fileRowJson: mismatch.fileRowJson ?? '',
    ledgerEntriesJson: mismatch.ledgerEntriesJson,
    resolvedByReportId: mismatch.resolvedByRunId ?? '',
    createTime: mismatch.createdAt,
  };
}

/** The class a ListMismatches filter names; undefined for UNSPECIFIED (every class). */
function classFromProto(value: MismatchClass): ReconciliationClass | undefined {
  if (value === MismatchClass.MISMATCH_CLASS_UNSPECIFIED) return undefined;
  const entry = Object.entries(CLASS_TO_PROTO).find(
    ([name, proto]) => proto === value && name !== RECONCILIATION_CLASS.matched,
  );
  if (entry === undefined) {
    throw new InvalidArgumentError('mismatch_class', `unknown mismatch class ${value}`);
  }
  return entry[0] as ReconciliationClass;
}
