/**
 * Ledger bookings for tests that write the ledger directly (postLedgerTransaction), not through a
 * payment: ids unique across files and runs, two balanced entries each.
 */
import type { Db } from '../../src/storage/db.js';
import {
  postLedgerTransaction,
  type NewLedgerTransaction,
} from '../../src/storage/repositories/ledger.repository.js';

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

export type HeldBooking = Readonly<{ finish: (outcome: 'commit' | 'rollback') => Promise<void> }>;

class RolledBack extends Error {}

/**
 * Posts `posting` in a transaction that stays open (its entries inserted, uncommitted) until
 * `finish` commits or rolls it back. The booking is in `open` until then, so that a test's
 * cleanup can end those a failure left open.
 */
export async function holdOpenBooking(
  db: Db,
  posting: NewLedgerTransaction,
  open: Set<HeldBooking>,
): Promise<HeldBooking> {
  let release: (commit: boolean) => void = () => {};
  const released = new Promise<boolean>((resolve) => (release = resolve));
  let posted: () => void = () => {};
  const isPosted = new Promise<void>((resolve) => (posted = resolve));
  const done = db
    .transaction()
    .execute(async (trx) => {
      await postLedgerTransaction(trx, posting);
      posted();
      if (!(await released)) throw new RolledBack();
    })
    .catch((error: unknown) => {
      if (!(error instanceof RolledBack)) throw error;
    });
  await Promise.race([
    isPosted,
    done.then(() => {
      throw new Error('the held booking finished before it was released');
    }),
  ]);
  const hold: HeldBooking = {
    finish: async (outcome) => {
      open.delete(hold);
      release(outcome === 'commit');
      await done;
    },
  };
  open.add(hold);
  return hold;
}
