/**
 * How the payment-order actor reaches the outside: the PSP port (implemented by src/psp/client.ts)
 * and the effects persisted inside a transition's transaction (ledger entries, wallet credit).
 */
import { newId } from '../../domain/ids.js';
import type { CurrencyCode } from '../../domain/money.js';
import {
  ACCOUNT,
  type NewLedgerTransaction,
  type WalletCredit,
} from '../../storage/repositories/ledger.repository.js';
import type { Effect, OrderEvent } from './machine.js';

/** What the actor needs from a PSP. Errors carry `retryable`. */
export interface PspPort {
  register(input: {
    nonce: string;
    amountMinor: bigint;
    currency: CurrencyCode;
    notificationUrl: string;
  }): Promise<{ token: string; checkoutUrl: string }>;
  /** 'CANCELLED', or the decision the PSP had already made. Throws NotFoundError if unknown. */
  cancel(nonce: string): Promise<'CANCELLED' | 'SUCCEEDED' | 'DECLINED'>;
  /** The PSP's record of the payment; undefined when it has none. */
  getStatus(nonce: string): Promise<PspStatusView | undefined>;
}

export type PspStatusView = Readonly<{
  status: 'REGISTERED' | 'SUCCEEDED' | 'DECLINED' | 'CANCELLED';
  amountMinor: bigint;
  /** The PSP's token and currency of the payment: compared with the order's, as a webhook's. */
  token?: string | undefined;
  currency?: string | undefined;
  pspReference?: string | undefined;
  declineCode?: string | undefined;
}>;

/**
 * The event that stands for what the PSP reports about a payment. Event ids are derived from the
 * PSP's own reference, so learning the same outcome from a webhook and from a status query
 * still credits once (the version check and the ledger's unique keys make sure).
 */
export function eventFromPspStatus(orderId: string, view: PspStatusView | undefined): OrderEvent {
  if (view === undefined) return { type: 'PspNotFound' };
  switch (view.status) {
    case 'SUCCEEDED':
      return {
        type: 'PspSucceeded',
        eventId: `status:${view.pspReference ?? orderId}`,
        pspReference: view.pspReference ?? '',
        amountMinor: view.amountMinor,
        ...paymentOf(view),
      };
    case 'DECLINED':
      return {
        type: 'PspDeclined',
        eventId: `status:${orderId}`,
        declineCode: view.declineCode ?? 'declined',
        ...paymentOf(view),
      };
    case 'CANCELLED':
      return { type: 'PspCancelled' };
    case 'REGISTERED':
      return { type: 'PspStillPending' };
  }
}

/** The token and currency a status answer gives, as the event's optional fields. */
function paymentOf(view: PspStatusView): { token?: string; currency?: string } {
  return {
    ...(view.token === undefined || view.token === '' ? {} : { token: view.token }),
    ...(view.currency === undefined || view.currency === '' ? {} : { currency: view.currency }),
  };
}

export const LEDGER_KIND = {
  payment: 'PAYMENT',
  paymentReceivable: 'PAYMENT_RECEIVABLE',
  paymentPayable: 'PAYMENT_PAYABLE',
} as const;

/** The ledger transactions and wallet credits of the CreditSeller effects of many transitions. */
export function sellerCredits(
  items: ReadonlyArray<Readonly<{ effects: readonly Effect[]; now: Date }>>,
): { ledger: NewLedgerTransaction[]; credits: WalletCredit[] } {
  const ledger: NewLedgerTransaction[] = [];
  const credits: WalletCredit[] = [];
  for (const { effects, now } of items) {
    for (const effect of effects) {
      if (effect.type !== 'CreditSeller') continue;
      ledger.push(sellerCreditTransaction(effect, now));
      credits.push({
        sellerId: effect.sellerId,
        currency: effect.currency,
        amountMinor: effect.amountMinor,
        now,
      });
    }
  }
  return { ledger, credits };
}

function sellerCreditTransaction(
  effect: Extract<Effect, { type: 'CreditSeller' }>,
  now: Date,
): NewLedgerTransaction {
  return {
    id: newId('ledgerTransaction', now.getTime()),
    orderId: effect.orderId,
    kind: LEDGER_KIND.payment,
    currency: effect.currency,
    now,
    entries: [
      {
        account: ACCOUNT.pspReceivable,
        kind: LEDGER_KIND.paymentReceivable,
        debitMinor: effect.amountMinor,
        creditMinor: 0n,
      },
      {
        account: ACCOUNT.sellerPayable(effect.sellerId),
        kind: LEDGER_KIND.paymentPayable,
        debitMinor: 0n,
        creditMinor: effect.amountMinor,
      },
    ],
  };
}

export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function isNotFound(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === 'NOT_FOUND';
}

export function isRetryable(error: unknown): boolean {
  const retryable = (error as { retryable?: unknown } | null)?.retryable;
  return typeof retryable === 'boolean' ? retryable : true;
}
