/**
 * The payment-order state machine: a pure function from (order, event, now) to the next order and
 * the effects to run. No clock, no ids, no I/O: the actor (actor.ts) loads, persists and runs the
 * effects. Delivery is at-least-once, so every event that repeats is a no-op; an event that makes
 * no sense in the current state is a value (IllegalTransition), never a throw.
 *
 *   NOT_STARTED --ExecuteOrder--> EXECUTING --PspSucceeded--> SUCCEEDED  (credit seller + ledger)
 *        |                            |      --PspDeclined---> FAILED
 *        |                            |      --PspRegistrationFailed(non-retryable)--> FAILED
 *        |                            |      --PspNotFound (registered, PSP has no record)--> FAILED
 *        |                            +-- ExpiryDue → cancel at the PSP first; its answer decides:
 *        |                                  PspCancelled → EXPIRED, PspSucceeded → SUCCEEDED, …
 *        +--ExpiryDue--> EXPIRED (never reached the PSP)
 *
 * Unknown outcomes are resolved by asking the PSP (StatusCheckDue → QueryPsp), never by guessing:
 * an order is only failed or expired on the PSP's word that no money moved.
 */
import { assertNever } from '../../domain/errors.js';
import type { CurrencyCode } from '../../domain/money.js';
import {
  ORDER_STATE,
  REVIEW_REASON,
  type OrderState,
  type PaymentOrder,
} from '../../domain/payment-order.js';

export {
  ORDER_STATE,
  TERMINAL_STATES,
  REVIEW_REASON,
  isOrderState,
  isTerminal,
  type OrderState,
  type PaymentOrder,
} from '../../domain/payment-order.js';

export const PSP_NOT_FOUND = 'PSP_PAYMENT_NOT_FOUND';
export const EXPIRED_REASON = 'EXPIRED';
/** The PSP refused a registration for good (a bad request, our credentials); the history row
 * keeps its message. */
export const PSP_REGISTRATION_REFUSED = 'PSP_REGISTRATION_REFUSED';
/** An order's failure reason is a code that fits `payment_order.failure_reason` (VARCHAR(64)). */
export const FAILURE_REASON_LENGTH_MAX = 64;

/**
 * A code from outside (a decline code a PSP chose) made to fit the failure reason. A longer one
 * would fail the write of the final state itself, leaving the order where it was; the whole code
 * stays in the transition's history row. Cut by code points, so a character is never split.
 */
export function failureReasonOf(code: string): string {
  const points = Array.from(code);
  return points.length <= FAILURE_REASON_LENGTH_MAX
    ? code
    : points.slice(0, FAILURE_REASON_LENGTH_MAX).join('');
}

export type OrderEvent =
  | Readonly<{ type: 'ExecuteOrder' }>
  | Readonly<{ type: 'PspRegistered'; token: string; checkoutUrl: string }>
  /** `reason`: what the PSP client said, kept in the history row (not a code). */
  | Readonly<{ type: 'PspRegistrationFailed'; retryable: boolean; reason: string }>
  /**
   * The PSP's decision. `token` and `currency` are what the PSP holds for the payment, as a
   * webhook or a status answer reports them; a command queued by an older version carries
   * neither. Each one given is compared with the order, as the amount is.
   */
  | Readonly<{
      type: 'PspSucceeded';
      eventId: string;
      pspReference: string;
      amountMinor: bigint;
      token?: string;
      currency?: string;
    }>
  | Readonly<{
      type: 'PspDeclined';
      eventId: string;
      declineCode: string;
      token?: string;
      currency?: string;
    }>
  /** The order is past its payment deadline (from the expiry job). */
  | Readonly<{ type: 'ExpiryDue' }>
  /**
   * The PSP confirmed the registration is cancelled (or never existed): no money moved.
   * `unregistered`: the PSP had no payment under the nonce when asked, and the order held no
   * token then; true of that moment only, since a registration may land right after it.
   */
  | Readonly<{ type: 'PspCancelled'; unregistered?: true }>
  /** The order has been quiet too long (from the janitor): ask the PSP what happened. */
  | Readonly<{ type: 'StatusCheckDue' }>
  /** The PSP has no record of the nonce. */
  | Readonly<{ type: 'PspNotFound' }>
  /** The PSP knows the payment and the buyer has not paid yet. */
  | Readonly<{ type: 'PspStillPending' }>;
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
  /**
   * Run after commit: cancel the PSP registration; the answer comes back as an event.
   * `registered`: whether the order held its PSP token when the cancel was decided.
   */
  | Readonly<{ type: 'CancelAtPsp'; orderId: string; registered: boolean }>
  /** Run after commit: ask the PSP for the payment's status; the answer comes back as an event. */
  | Readonly<{ type: 'QueryPsp'; orderId: string }>
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
    case 'ExpiryDue':
      return moved(
        { ...order, state: ORDER_STATE.expired, failureReason: EXPIRED_REASON },
        now,
        [],
      );
    case 'StatusCheckDue':
      // Stuck before it ever reached the PSP (its command was lost): start it again.
      return moved({ ...order, state: ORDER_STATE.executing, attempts: order.attempts + 1 }, now, [
        registerWithPsp(order),
      ]);
    case 'PspNotFound':
    case 'PspStillPending':
      return unchanged(order, []);
    case 'PspRegistered':
    case 'PspRegistrationFailed':
    case 'PspSucceeded':
    case 'PspDeclined':
    case 'PspCancelled':
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
      // Recorded (attempts + 1 = the next attempt's number) so the timeline shows every retry.
      return event.retryable
        ? moved({ ...order, attempts: order.attempts + 1 }, now, [
            { type: 'RetryLater', reason: event.reason },
          ])
        : moved(
            { ...order, state: ORDER_STATE.failed, failureReason: PSP_REGISTRATION_REFUSED },
            now,
            [],
          );
    case 'PspSucceeded': {
      const mismatch = otherCharge(order, event);
      if (mismatch !== undefined) return illegal(order, event, mismatch);
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
    }
    case 'PspDeclined': {
      const mismatch = otherPayment(order, event, 'declined a payment');
      if (mismatch !== undefined) return illegal(order, event, mismatch);
      return moved(
        { ...order, state: ORDER_STATE.failed, failureReason: failureReasonOf(event.declineCode) },
        now,
        [],
      );
    }
    case 'ExpiryDue':
      // Cancel first: only the PSP can say whether the buyer paid in the meantime.
      return unchanged(order, [cancelAtPsp(order)]);
    case 'PspCancelled':
      // "No such payment" was true when the PSP was asked, for an order without a token. One
      // that holds a token by now was registered since (another node's registration landed
      // between that answer and this write) and its checkout URL may be with the buyer: expired
      // on the old answer, it would leave a payable registration behind. Cancel that one too;
      // the order now holds the token, so a second NOT_FOUND is the PSP's last word.
      if (event.unregistered === true && order.pspToken !== undefined) {
        return unchanged(order, [cancelAtPsp(order)]);
      }
      return moved(
        { ...order, state: ORDER_STATE.expired, failureReason: EXPIRED_REASON },
        now,
        [],
      );
    case 'StatusCheckDue':
      return order.pspToken === undefined
        ? unchanged(order, [registerWithPsp(order)])
        : unchanged(order, [{ type: 'QueryPsp', orderId: order.id }]);
    case 'PspNotFound':
      // Registered, yet the PSP has no record: no money can have moved, so the order fails.
      return order.pspToken === undefined
        ? unchanged(order, [registerWithPsp(order)])
        : moved({ ...order, state: ORDER_STATE.failed, failureReason: PSP_NOT_FOUND }, now, []);
    case 'PspStillPending':
      return unchanged(order, []);
    default:
      return assertNever(event, 'event');
  }
}

/**
 * Why a PSP decision cannot be about this order's payment, if it cannot: it names another
 * payment's token (another order's, sent under this order's nonce) or another currency. A token
 * is compared only once the order has stored its own: an order whose registration reached the
 * PSP but not its row (a crash between the two) has nothing to compare, and the nonce names it.
 * The message never quotes a token: it is logged and shown, and a token opens its payment's
 * checkout page (the logger redacts `token` keys for that reason). The event keeps both.
 */
function otherPayment(
  order: PaymentOrder,
  event: Readonly<{ token?: string; currency?: string }>,
  verb: string,
): string | undefined {
  if (event.token !== undefined && order.pspToken !== undefined && event.token !== order.pspToken) {
    return `the PSP's result names another payment token than the order's`;
  }
  if (event.currency !== undefined && event.currency !== order.currency) {
    return `the PSP ${verb} in ${event.currency} but the order is in ${order.currency}`;
  }
  return undefined;
}

/**
 * Why a charge is not this order's payment (token, currency or amount), or is a second charge for
 * it (another PSP reference than the one the order already holds); undefined if it is neither. A
 * second charge is money the buyer paid twice: booking it would credit the seller twice, and
 * taking it for a repeat would drop it, so it goes to an operator. An empty reference (a status
 * answer that named none) is no evidence either way.
 */
function otherCharge(
  order: PaymentOrder,
  event: Extract<OrderEvent, { type: 'PspSucceeded' }>,
): string | undefined {
  return (
    otherPayment(order, event, 'charged') ??
    (event.amountMinor !== order.amountMinor
      ? `the PSP charged ${event.amountMinor} but the order is for ${order.amountMinor}`
      : undefined) ??
    (order.pspReference !== undefined &&
    order.pspReference !== '' &&
    event.pspReference !== '' &&
    event.pspReference !== order.pspReference
      ? `the PSP reports a second charge ${event.pspReference} for an order already charged as ` +
        `${order.pspReference}`
      : undefined)
  );
}

/** Expired, or failed without a decision by the PSP (not found, registration refused). */
function endedWithoutDecision(order: PaymentOrder): boolean {
  return (
    order.state === ORDER_STATE.expired ||
    (order.state === ORDER_STATE.failed &&
      (order.failureReason === PSP_NOT_FOUND || order.failureReason === PSP_REGISTRATION_REFUSED))
  );
}

/**
 * A terminal order never changes state again. Late duplicates are no-ops; a charge that arrives
 * after the order failed or expired is money taken that we did not book, so the order is flagged
 * for review (refund or manual booking) instead of being dropped. A charge that is not this
 * order's payment (another token, currency or amount), or a second one (another PSP reference
 * than the order's), is illegal in every state: dead-lettered for review, never a no-op nor a
 * flag that would overwrite the order's PSP reference.
 */
function fromFinal(order: PaymentOrder, event: OrderEvent, now: Date): Transition {
  switch (event.type) {
    case 'PspSucceeded': {
      const mismatch = otherCharge(order, event);
      if (mismatch !== undefined) return illegal(order, event, mismatch);
      if (order.state === ORDER_STATE.succeeded || order.reviewReason !== undefined) {
        return unchanged(order, []);
      }
      const reviewReason =
        order.state === ORDER_STATE.expired
          ? REVIEW_REASON.chargedAfterExpiry
          : REVIEW_REASON.chargedAfterFailure;
      return moved({ ...order, reviewReason, pspReference: event.pspReference }, now, []);
    }
    case 'PspRegistered':
      // A registration that landed after the order ended without a PSP decision (expired on a
      // cancel's NOT_FOUND while another node's registration was on its way, or failed as never
      // registered): the PSP now holds a payable payment nobody links to. Cancel it; should the
      // buyer have paid it meanwhile, the cancel's answer is that charge, flagged for review.
      return endedWithoutDecision(order)
        ? unchanged(order, [cancelAtPsp(order)])
        : unchanged(order, []);
    case 'ExecuteOrder':
    case 'PspRegistrationFailed':
    case 'PspDeclined':
    case 'ExpiryDue':
    case 'PspCancelled':
    case 'StatusCheckDue':
    case 'PspNotFound':
    case 'PspStillPending':
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

function cancelAtPsp(order: PaymentOrder): Effect {
  return { type: 'CancelAtPsp', orderId: order.id, registered: order.pspToken !== undefined };
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
