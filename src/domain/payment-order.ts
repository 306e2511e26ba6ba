/**
 * A payment order: one seller's part of a payment, executed through the PSP on its own. The
 * states and the record are shared by the pure machine (actors/payment-order/machine.ts), the
 * repositories and the API mappers; the transitions live only in the machine.
 */
import type { CurrencyCode } from './money.js';

export const ORDER_STATE = {
  notStarted: 'NOT_STARTED',
  executing: 'EXECUTING',
  succeeded: 'SUCCEEDED',
  failed: 'FAILED',
  expired: 'EXPIRED',
} as const;
export type OrderState = (typeof ORDER_STATE)[keyof typeof ORDER_STATE];

export const TERMINAL_STATES: ReadonlySet<OrderState> = new Set([
  ORDER_STATE.succeeded,
  ORDER_STATE.failed,
  ORDER_STATE.expired,
]);

export function isOrderState(value: string): value is OrderState {
  return (Object.values(ORDER_STATE) as string[]).includes(value);
}

export const REVIEW_REASON = {
  chargedAfterExpiry: 'CHARGED_AFTER_EXPIRY',
  chargedAfterFailure: 'CHARGED_AFTER_FAILURE',
} as const;

export type PaymentOrder = Readonly<{
  id: string;
  paymentId: string;
  sellerId: string;
  amountMinor: bigint;
  currency: CurrencyCode;
  state: OrderState;
  /** Incremented by every persisted transition; the fence against stale writers. */
  version: bigint;
  pspToken: string | undefined;
  checkoutUrl: string | undefined;
  pspReference: string | undefined;
  failureReason: string | undefined;
  /** How many times registration with the PSP was attempted. */
  attempts: number;
  reviewReason: string | undefined;
  createdAt: Date;
  updatedAt: Date;
}>;

export function isTerminal(state: OrderState): boolean {
  return TERMINAL_STATES.has(state);
}
