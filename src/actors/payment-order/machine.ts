/**
 * The payment-order state machine: a pure function from (order, event, now) to the next order and
 * the effects to run. No clock, no ids, no I/O: the actor (actor.ts) loads, persists and runs the
 * effects. Delivery is at-least-once, so every event that repeats is a no-op; an event that makes
 * no sense in the current state is a value (IllegalTransition), never a throw.
 *
 *   NOT_STARTED --ExecuteOrder--> EXECUTING --PspSucceeded--> SUCCEEDED  (credit seller + ledger)
 *                                     |      --PspDeclined---> FAILED
 *                                     |      --PspRegistrationFailed(non-retryable)--> FAILED
 *                                     +------ Expire --------> EXPIRED   (cancel at the PSP)
 */
import { assertNever } from '../../domain/errors.js';
import type { CurrencyCode } from '../../domain/money.js';

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

export type OrderEvent =
  | Readonly<{ type: 'ExecuteOrder' }>
  | Readonly<{ type: 'PspRegistered'; token: string; checkoutUrl: string }>
  | Readonly<{ type: 'PspRegistrationFailed'; retryable: boolean; reason: string }>
  | Readonly<{ type: 'PspSucceeded'; eventId: string; pspReference: string; amountMinor: bigint }>
  | Readonly<{ type: 'PspDeclined'; eventId: string; declineCode: string }>
  | Readonly<{ type: 'Expire' }>;
export type OrderEventType = OrderEvent['type'];

export type Effect =
  /** Run after commit: register the order with the PSP (idempotent there by nonce = order id). */
  | Readonly<{
      type: 'RegisterWithPsp';
      orderId: string;
      amountMinor: bigint;
      currency: CurrencyCode;
    }>
  /** Persisted in the same transaction: ledger entries and the seller's wallet credit. */
  | Readonly<{
      type: 'CreditSeller';
      orderId: string;
      sellerId: string;
      amountMinor: bigint;
      currency: CurrencyCode;
    }>
  /** Run after commit: cancel the PSP registration of an expired order. */
  | Readonly<{ type: 'CancelAtPsp'; orderId: string }>
  /** Ask the transport to deliver the command again later (a retryable failure). */
  | Readonly<{ type: 'RetryLater'; reason: string }>;

export type IllegalTransition = Readonly<{
  kind: 'IllegalTransition';
  state: OrderState;
  event: OrderEventType;
  message: string;
}>;

export type Transition =
  | Readonly<{ ok: true; order: PaymentOrder; changed: boolean; effects: readonly Effect[] }>
  | Readonly<{ ok: false; error: IllegalTransition }>;

export function transition(order: PaymentOrder, event: OrderEvent, now: Date): Transition {
  switch (order.state) {
    case ORDER_STATE.notStarted:
      return fromNotStarted(order, event, now);
    case ORDER_STATE.executing:
      return fromExecuting(order, event, now);
    case ORDER_STATE.succeeded:
    case ORDER_STATE.failed:
    case ORDER_STATE.expired:
      return fromFinal(order, event, now);
    default:
      return assertNever(order.state, 'order state');
  }
}

function fromNotStarted(order: PaymentOrder, event: OrderEvent, now: Date): Transition {
  switch (event.type) {
    case 'ExecuteOrder':
      return moved({ ...order, state: ORDER_STATE.executing, attempts: order.attempts + 1 }, now, [
        registerWithPsp(order),
      ]);
    case 'Expire':
      return moved({ ...order, state: ORDER_STATE.expired, failureReason: 'EXPIRED' }, now, []);
    case 'PspRegistered':
    case 'PspRegistrationFailed':
    case 'PspSucceeded':
    case 'PspDeclined':
      return illegal(order, event, 'the order has not been sent to the PSP yet');
    default:
      return assertNever(event, 'event');
  }
}

function fromExecuting(order: PaymentOrder, event: OrderEvent, now: Date): Transition {
  switch (event.type) {
    case 'ExecuteOrder':
      // Redelivered or retried: register again only if the first registration never completed.
      return order.pspToken === undefined
        ? unchanged(order, [registerWithPsp(order)])
        : unchanged(order, []);
    case 'PspRegistered':
      if (order.pspToken === undefined) {
        return moved({ ...order, pspToken: event.token, checkoutUrl: event.checkoutUrl }, now, []);
      }
      return order.pspToken === event.token
        ? unchanged(order, [])
        : illegal(order, event, `the PSP returned a second token for the same order`);
    case 'PspRegistrationFailed':
      if (order.pspToken !== undefined) return unchanged(order, []);
      return event.retryable
        ? unchanged(order, [{ type: 'RetryLater', reason: event.reason }])
        : moved({ ...order, state: ORDER_STATE.failed, failureReason: event.reason }, now, []);
    case 'PspSucceeded':
      if (event.amountMinor !== order.amountMinor) {
        return illegal(
          order,
          event,
          `the PSP charged ${event.amountMinor} but the order is for ${order.amountMinor}`,
        );
      }
      return moved(
        { ...order, state: ORDER_STATE.succeeded, pspReference: event.pspReference },
        now,
        [
          {
            type: 'CreditSeller',
            orderId: order.id,
            sellerId: order.sellerId,
            amountMinor: order.amountMinor,
            currency: order.currency,
          },
        ],
      );
    case 'PspDeclined':
      return moved(
        { ...order, state: ORDER_STATE.failed, failureReason: event.declineCode },
        now,
        [],
      );
    case 'Expire':
      return moved({ ...order, state: ORDER_STATE.expired, failureReason: 'EXPIRED' }, now, [
        { type: 'CancelAtPsp', orderId: order.id },
      ]);
    default:
      return assertNever(event, 'event');
  }
}

/**
 * A terminal order never changes state again. Late duplicates are no-ops; a charge that arrives
 * after the order failed or expired is money taken that we did not book, so the order is flagged
 * for review (refund or manual booking) instead of being dropped.
 */
function fromFinal(order: PaymentOrder, event: OrderEvent, now: Date): Transition {
  switch (event.type) {
    case 'PspSucceeded': {
      if (order.state === ORDER_STATE.succeeded || order.reviewReason !== undefined) {
        return unchanged(order, []);
      }
      const reviewReason =
        order.state === ORDER_STATE.expired
          ? REVIEW_REASON.chargedAfterExpiry
          : REVIEW_REASON.chargedAfterFailure;
      return moved({ ...order, reviewReason, pspReference: event.pspReference }, now, []);
    }
    case 'ExecuteOrder':
    case 'PspRegistered':
    case 'PspRegistrationFailed':
    case 'PspDeclined':
    case 'Expire':
      return unchanged(order, []);
    default:
      return assertNever(event, 'event');
  }
}

function registerWithPsp(order: PaymentOrder): Effect {
  return {
    type: 'RegisterWithPsp',
    orderId: order.id,
    amountMinor: order.amountMinor,
    currency: order.currency,
  };
}

function moved(next: PaymentOrder, now: Date, effects: readonly Effect[]): Transition {
  return { ok: true, order: { ...next, updatedAt: now }, changed: true, effects };
}

function unchanged(order: PaymentOrder, effects: readonly Effect[]): Transition {
  return { ok: true, order, changed: false, effects };
}

function illegal(order: PaymentOrder, event: OrderEvent, message: string): Transition {
  return {
    ok: false,
    error: { kind: 'IllegalTransition', state: order.state, event: event.type, message },
  };
}

export function isTerminal(state: OrderState): boolean {
  return TERMINAL_STATES.has(state);
}
