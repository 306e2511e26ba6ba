/**
 * Ledger bookings for tests that write the ledger directly (postLedgerTransaction), not through a
 * payment: ids unique across files and runs, two balanced entries each.
 */
import type { NewLedgerTransaction } from '../../src/storage/repositories/ledger.repository.js';

let bookingSeq = 0;

/** A balanced PAYMENT booking of `amountMinor` (100) from the PSP to `seller`: two entries. */
export function paymentBooking(seller: string, amountMinor = 100n): NewLedgerTransaction {
  bookingSeq += 1;
  const n = `${Date.now()}${String(bookingSeq).padStart(6, '0')}`.padStart(26, '0');
  return {
    id: `ltx_${n}`,
    orderId: `ord_${n}`,
    kind: 'PAYMENT',
    currency: 'USD',
    entries: [
      {
        account: 'psp_receivable',
        kind: 'PAYMENT_RECEIVABLE',
        debitMinor: amountMinor,
        creditMinor: 0n,
      },
      {
        account: `seller_payable:${seller}`,
        kind: 'PAYMENT_PAYABLE',
        debitMinor: 0n,
        creditMinor: amountMinor,
      },
    ],
    now: new Date(),
  };
}
