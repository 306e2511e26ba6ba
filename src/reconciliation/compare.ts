/**
 * The reconciliation rules as one pure function: a settlement file's rows against the ledger's
 * PAYMENT transactions, for one UTC day. No I/O, no clock. The engine applies the same rules
 * set-based in SQL (reconciliation.repository.ts), because a day's file can hold millions of
 * rows; this function is the readable statement of the rules and the reference the tests hold
 * the SQL to.
 *
 * Each row gets exactly one class, decided in this order:
 *  1. a refund or fee row: MISSING_IN_LEDGER (Settle books neither from files);
 *  2. a payment row for an order already named by an earlier payment row of the same file:
 *     DUPLICATE;
 *  3. a payment row for an order already settled in another day's file: DUPLICATE;
 *  4. no PAYMENT ledger transaction for the order: MISSING_IN_LEDGER;
 *  5. gross or currency differ from the ledger, or the fee exceeds the gross: AMOUNT_MISMATCH
 *     (such a fee is not booked: left to a person, not taken as an expense of any size);
 *  6. the row was created on another day than the file's: TIMING (a late row, or one early);
 *  7. otherwise MATCHED.
 * Then every payment booked on the day that no payment row of the file names, and that no other
 * day's file settled, is MISSING_IN_SETTLEMENT.
 */
import { addUtcDays, startOfUtcDay, type UtcDay } from '../domain/utc-day.js';
import type { SettlementRow } from './settlement-file.js';

export const RECONCILIATION_CLASS = {
  matched: 'MATCHED',
  missingInLedger: 'MISSING_IN_LEDGER',
  missingInSettlement: 'MISSING_IN_SETTLEMENT',
  amountMismatch: 'AMOUNT_MISMATCH',
  duplicate: 'DUPLICATE',
  timing: 'TIMING',
} as const;
export type ReconciliationClass = (typeof RECONCILIATION_CLASS)[keyof typeof RECONCILIATION_CLASS];
/** The classes a row of the file can get (MISSING_IN_SETTLEMENT has no row). */
export type RowClass = Exclude<ReconciliationClass, 'MISSING_IN_SETTLEMENT'>;

/** A PAYMENT ledger transaction: what Settle booked for an order. */
export type LedgerPayment = Readonly<{
  orderId: string;
  amountMinor: bigint;
  currency: string;
  bookedAt: Date;
}>;

export type CompareInput = Readonly<{
  day: UtcDay;
  rows: readonly SettlementRow[];
  /** PAYMENT ledger transactions by order id. */
  ledger: ReadonlyMap<string, LedgerPayment>;
  /** Orders a payment row of another day's reconciled file already settled. */
  settledElsewhere: ReadonlySet<string>;
}>;

export type CompareResult = Readonly<{
  /** One class per row, in the order of `rows`. */
  rows: ReadonlyArray<Readonly<{ lineNumber: number; class: RowClass }>>;
  /** Orders booked on the day that the file does not settle, sorted. */
  missingInSettlement: readonly string[];
}>;

export function compare(input: CompareInput): CompareResult {
  const dayStart = startOfUtcDay(input.day).getTime();
  const dayEnd = startOfUtcDay(addUtcDays(input.day, 1)).getTime();
  const namedByPayment = new Set<string>();
  const rows = input.rows.map((row) => {
    const classOf = (): RowClass => {
      if (row.type !== 'payment') return RECONCILIATION_CLASS.missingInLedger;
      const seen = namedByPayment.has(row.merchantReference);
      namedByPayment.add(row.merchantReference);
      if (seen || input.settledElsewhere.has(row.merchantReference)) {
        return RECONCILIATION_CLASS.duplicate;
      }
      const booked = input.ledger.get(row.merchantReference);
      if (booked === undefined) return RECONCILIATION_CLASS.missingInLedger;
      if (
        booked.amountMinor !== row.grossMinor ||
        booked.currency !== row.currency ||
        row.feeMinor > row.grossMinor
      ) {
        return RECONCILIATION_CLASS.amountMismatch;
      }
      const created = row.createdUtc.getTime();
      if (created < dayStart || created >= dayEnd) return RECONCILIATION_CLASS.timing;
      return RECONCILIATION_CLASS.matched;
    };
    return { lineNumber: row.lineNumber, class: classOf() };
  });
  const missingInSettlement = [...input.ledger.values()]
    .filter((payment) => {
      const booked = payment.bookedAt.getTime();
      return (
        booked >= dayStart &&
        booked < dayEnd &&
        !namedByPayment.has(payment.orderId) &&
        !input.settledElsewhere.has(payment.orderId)
      );
    })
    .map((payment) => payment.orderId)
    .sort();
  return { rows, missingInSettlement };
}
