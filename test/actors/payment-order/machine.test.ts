/**
 * Goal: the pure payment-order machine does the right thing for EVERY state × event pair,
 * including the pairs it must refuse or ignore. Method: a table of expectations, checked without
 * running any effect (no I/O, fixed clock).
 */
import { describe, expect, it } from 'vitest';
import { eventFromPspStatus } from '../../../src/actors/payment-order/effects.js';
import {
  FAILURE_REASON_LENGTH_MAX,
  ORDER_STATE,
  REVIEW_REASON,
  transition,
  type OrderEvent,
  type OrderState,
  type PaymentOrder,
} from '../../../src/actors/payment-order/machine.js';

const now = new Date('2026-01-02T03:04:05.000Z');
const created = new Date('2026-01-01T00:00:00.000Z');

function order(state: OrderState, extra: Partial<PaymentOrder> = {}): PaymentOrder {
  return {
    id: 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
    paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
    sellerId: 'seller-1',
    amountMinor: 1999n,
    currency: 'USD',
    state,
    version: 3n,
    pspToken: undefined,
    checkoutUrl: undefined,
    pspReference: undefined,
    failureReason: undefined,
    attempts: 0,
    reviewReason: undefined,
    createdAt: created,
    updatedAt: created,
    ...extra,
  };
}

const registered = { pspToken: 'tok_A', checkoutUrl: 'http://psp/pay/tok_A' };

const events = {
  execute: { type: 'ExecuteOrder' },
  registered: { type: 'PspRegistered', token: 'tok_A', checkoutUrl: 'http://psp/pay/tok_A' },
  registeredOther: { type: 'PspRegistered', token: 'tok_B', checkoutUrl: 'http://psp/pay/tok_B' },
  regFailedRetryable: { type: 'PspRegistrationFailed', retryable: true, reason: 'PSP unavailable' },
  regFailedFinal: {
    type: 'PspRegistrationFailed',
    retryable: false,
    // What the PSP client says: a message, longer than the failure reason's 64 characters.
    reason: 'the PSP rejected the request: notification_url: must be an absolute http(s) URL',
  },
  succeeded: { type: 'PspSucceeded', eventId: 'evt_1', pspReference: 'psp_1', amountMinor: 1999n },
  succeededWrongAmount: {
    type: 'PspSucceeded',
    eventId: 'evt_1',
    pspReference: 'psp_1',
    amountMinor: 1n,
  },
  // As a webhook reports it: the token and currency the PSP holds for the payment.
  succeededAsSent: {
    type: 'PspSucceeded',
    eventId: 'evt_1',
    pspReference: 'psp_1',
    amountMinor: 1999n,
    token: 'tok_A',
    currency: 'USD',
  },
  succeededOtherToken: {
    type: 'PspSucceeded',
    eventId: 'evt_1',
    pspReference: 'psp_1',
    amountMinor: 1999n,
    token: 'tok_B',
    currency: 'USD',
  },
  succeededOtherCurrency: {
    type: 'PspSucceeded',
    eventId: 'evt_1',
    pspReference: 'psp_1',
    amountMinor: 1999n,
    token: 'tok_A',
    currency: 'EUR',
  },
  // The same payment charged a second time: another PSP reference, all else alike.
  succeededSecondCharge: {
    type: 'PspSucceeded',
    eventId: 'evt_3',
    pspReference: 'psp_2',
    amountMinor: 1999n,
    token: 'tok_A',
    currency: 'USD',
  },
  // A status answer that names no reference: no evidence of a second charge.
  succeededNoReference: {
    type: 'PspSucceeded',
    eventId: 'status:ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
    pspReference: '',
    amountMinor: 1999n,
  },
  declined: { type: 'PspDeclined', eventId: 'evt_2', declineCode: 'card_declined' },
  declinedOtherToken: {
    type: 'PspDeclined',
    eventId: 'evt_2',
    declineCode: 'card_declined',
    token: 'tok_B',
    currency: 'USD',
  },
  declinedOtherCurrency: {
    type: 'PspDeclined',
    eventId: 'evt_2',
    declineCode: 'card_declined',
    token: 'tok_A',
    currency: 'EUR',
  },
  expiryDue: { type: 'ExpiryDue' },
  cancelled: { type: 'PspCancelled' },
  // A cancel's NOT_FOUND for an order that had no token when it was asked.
  cancelledUnregistered: { type: 'PspCancelled', unregistered: true },
  statusCheck: { type: 'StatusCheckDue' },
  notFound: { type: 'PspNotFound' },
  stillPending: { type: 'PspStillPending' },
} satisfies Record<string, OrderEvent>;

type Expectation =
  | { result: 'moved'; state: OrderState; effects: string[]; check?: (next: PaymentOrder) => void }
  | { result: 'unchanged'; effects: string[] }
  | { result: 'illegal'; message?: RegExp };

type Row = [name: string, from: PaymentOrder, event: OrderEvent, expected: Expectation];

const table: Row[] = [
  // NOT_STARTED
  [
    'NOT_STARTED + ExecuteOrder starts executing and registers',
    order('NOT_STARTED'),
    events.execute,
    {
      result: 'moved',
      state: 'EXECUTING',
      effects: ['RegisterWithPsp'],
      check: (n) => expect(n.attempts).toBe(1),
    },
  ],
  [
    'NOT_STARTED + PspRegistered is illegal',
    order('NOT_STARTED'),
    events.registered,
    { result: 'illegal' },
  ],
  [
    'NOT_STARTED + PspRegistrationFailed is illegal',
    order('NOT_STARTED'),
    events.regFailedRetryable,
    { result: 'illegal' },
  ],
  [
    'NOT_STARTED + PspSucceeded is illegal',
    order('NOT_STARTED'),
    events.succeeded,
    { result: 'illegal' },
  ],
  [
    'NOT_STARTED + PspDeclined is illegal',
    order('NOT_STARTED'),
    events.declined,
    { result: 'illegal' },
  ],
  [
    'NOT_STARTED + ExpiryDue expires without a PSP call',
    order('NOT_STARTED'),
    events.expiryDue,
    {
      result: 'moved',
      state: 'EXPIRED',
      effects: [],
      check: (n) => expect(n.failureReason).toBe('EXPIRED'),
    },
  ],
  [
    'NOT_STARTED + PspCancelled is illegal',
    order('NOT_STARTED'),
    events.cancelled,
    { result: 'illegal' },
  ],
  [
    'NOT_STARTED + StatusCheckDue (lost command) starts executing',
    order('NOT_STARTED'),
    events.statusCheck,
    { result: 'moved', state: 'EXECUTING', effects: ['RegisterWithPsp'] },
  ],
  [
    'NOT_STARTED + PspNotFound is a no-op',
    order('NOT_STARTED'),
    events.notFound,
    { result: 'unchanged', effects: [] },
  ],
  [
    'NOT_STARTED + PspStillPending is a no-op',
    order('NOT_STARTED'),
    events.stillPending,
    { result: 'unchanged', effects: [] },
  ],
  // EXECUTING, not yet registered
  [
    'EXECUTING(unregistered) + ExecuteOrder registers again',
    order('EXECUTING'),
    events.execute,
    { result: 'unchanged', effects: ['RegisterWithPsp'] },
  ],
  [
    'EXECUTING(unregistered) + PspRegistered records token and URL',
    order('EXECUTING'),
    events.registered,
    {
      result: 'moved',
      state: 'EXECUTING',
      effects: [],
      check: (n) => {
        expect(n.pspToken).toBe('tok_A');
        expect(n.checkoutUrl).toBe('http://psp/pay/tok_A');
      },
    },
  ],
  [
    'EXECUTING(unregistered) + retryable registration failure is recorded and retried',
    order('EXECUTING', { attempts: 1 }),
    events.regFailedRetryable,
    {
      result: 'moved',
      state: 'EXECUTING',
      effects: ['RetryLater'],
      check: (n) => expect(n.attempts).toBe(2),
    },
  ],
  [
    'EXECUTING(unregistered) + StatusCheckDue registers again',
    order('EXECUTING'),
    events.statusCheck,
    { result: 'unchanged', effects: ['RegisterWithPsp'] },
  ],
  [
    'EXECUTING(unregistered) + PspNotFound registers again',
    order('EXECUTING'),
    events.notFound,
    { result: 'unchanged', effects: ['RegisterWithPsp'] },
  ],
  [
    'EXECUTING(unregistered) + final registration failure fails the order',
    order('EXECUTING'),
    events.regFailedFinal,
    {
      result: 'moved',
      state: 'FAILED',
      effects: [],
      // A code that fits the column; the message stays in the history row (the event).
      check: (n) => expect(n.failureReason).toBe('PSP_REGISTRATION_REFUSED'),
    },
  ],
  // EXECUTING, registered
  [
    'EXECUTING + ExecuteOrder (redelivered) is a no-op',
    order('EXECUTING', registered),
    events.execute,
    { result: 'unchanged', effects: [] },
  ],
  [
    'EXECUTING + same PspRegistered (duplicate) is a no-op',
    order('EXECUTING', registered),
    events.registered,
    { result: 'unchanged', effects: [] },
  ],
  [
    'EXECUTING + a second, different token is illegal',
    order('EXECUTING', registered),
    events.registeredOther,
    { result: 'illegal' },
  ],
  [
    'EXECUTING + late registration failure is a no-op',
    order('EXECUTING', registered),
    events.regFailedRetryable,
    { result: 'unchanged', effects: [] },
  ],
  [
    'EXECUTING + PspSucceeded succeeds and credits the seller',
    order('EXECUTING', registered),
    events.succeeded,
    {
      result: 'moved',
      state: 'SUCCEEDED',
      effects: ['CreditSeller'],
      check: (n) => expect(n.pspReference).toBe('psp_1'),
    },
  ],
  [
    'EXECUTING + PspSucceeded with another amount is illegal',
    order('EXECUTING', registered),
    events.succeededWrongAmount,
    { result: 'illegal' },
  ],
  [
    'EXECUTING + PspSucceeded with the order token and currency succeeds',
    order('EXECUTING', registered),
    events.succeededAsSent,
    { result: 'moved', state: 'SUCCEEDED', effects: ['CreditSeller'] },
  ],
  [
    "EXECUTING + PspSucceeded with another order's token is illegal",
    order('EXECUTING', registered),
    events.succeededOtherToken,
    {
      result: 'illegal',
      message: /^the PSP's result names another payment token than the order's$/,
    },
  ],
  [
    'EXECUTING + PspSucceeded in another currency is illegal',
    order('EXECUTING', registered),
    events.succeededOtherCurrency,
    { result: 'illegal', message: /charged in EUR but the order is in USD/ },
  ],
  [
    // Registered at the PSP, but the token never reached the row (a crash between the two):
    // there is nothing to compare, and the nonce already names this order.
    'EXECUTING(unregistered) + PspSucceeded with a token succeeds',
    order('EXECUTING'),
    events.succeededOtherToken,
    { result: 'moved', state: 'SUCCEEDED', effects: ['CreditSeller'] },
  ],
  [
    "EXECUTING + PspDeclined with another order's token is illegal",
    order('EXECUTING', registered),
    events.declinedOtherToken,
    {
      result: 'illegal',
      message: /^the PSP's result names another payment token than the order's$/,
    },
  ],
  [
    'EXECUTING + PspDeclined in another currency is illegal',
    order('EXECUTING', registered),
    events.declinedOtherCurrency,
    { result: 'illegal', message: /in EUR but the order is in USD/ },
  ],
  [
    'EXECUTING + PspDeclined fails with the decline code',
    order('EXECUTING', registered),
    events.declined,
    {
      result: 'moved',
      state: 'FAILED',
      effects: [],
      check: (n) => expect(n.failureReason).toBe('card_declined'),
    },
  ],
  [
    'EXECUTING + ExpiryDue cancels at the PSP first, without changing state',
    order('EXECUTING', registered),
    events.expiryDue,
    { result: 'unchanged', effects: ['CancelAtPsp'] },
  ],
  [
    'EXECUTING + PspCancelled expires',
    order('EXECUTING', registered),
    events.cancelled,
    {
      result: 'moved',
      state: 'EXPIRED',
      effects: [],
      check: (n) => expect(n.failureReason).toBe('EXPIRED'),
    },
  ],
  [
    'EXECUTING + PspCancelled (no payment when asked) expires an order still without a token',
    order('EXECUTING'),
    events.cancelledUnregistered,
    {
      result: 'moved',
      state: 'EXPIRED',
      effects: [],
      check: (n) => expect(n.failureReason).toBe('EXPIRED'),
    },
  ],
  [
    // Registered since the PSP was asked: its checkout URL may be with the buyer.
    'EXECUTING + PspCancelled (no payment when asked) cancels a registration that landed since',
    order('EXECUTING', registered),
    events.cancelledUnregistered,
    { result: 'unchanged', effects: ['CancelAtPsp'] },
  ],
  [
    'EXECUTING + StatusCheckDue asks the PSP',
    order('EXECUTING', registered),
    events.statusCheck,
    { result: 'unchanged', effects: ['QueryPsp'] },
  ],
  [
    'EXECUTING + PspNotFound for a registered order fails it explicitly',
    order('EXECUTING', registered),
    events.notFound,
    {
      result: 'moved',
      state: 'FAILED',
      effects: [],
      check: (n) => expect(n.failureReason).toBe('PSP_PAYMENT_NOT_FOUND'),
    },
  ],
  [
    'EXECUTING + PspStillPending is a no-op',
    order('EXECUTING', registered),
    events.stillPending,
    { result: 'unchanged', effects: [] },
  ],
  // SUCCEEDED
  ...(
    [
      'execute',
      'registered',
      'regFailedRetryable',
      'succeeded',
      'declined',
      'expiryDue',
      'cancelled',
      'statusCheck',
      'notFound',
      'stillPending',
    ] as const
  ).map((name): Row => [
    `SUCCEEDED + ${events[name].type} is a no-op`,
    order('SUCCEEDED', { ...registered, pspReference: 'psp_1' }),
    events[name],
    { result: 'unchanged', effects: [] },
  ]),
  [
    'SUCCEEDED + the same payment again, as the PSP reports it, is a no-op',
    order('SUCCEEDED', { ...registered, pspReference: 'psp_1' }),
    events.succeededAsSent,
    { result: 'unchanged', effects: [] },
  ],
  [
    // A second charge naming another payment: money to review, never silently dropped.
    "SUCCEEDED + PspSucceeded with another payment's token is illegal",
    order('SUCCEEDED', { ...registered, pspReference: 'psp_1' }),
    events.succeededOtherToken,
    {
      result: 'illegal',
      message: /^the PSP's result names another payment token than the order's$/,
    },
  ],
  [
    // Money taken twice: dead-lettered for an operator, neither booked again nor dropped.
    'SUCCEEDED + a second charge under another PSP reference is illegal',
    order('SUCCEEDED', { ...registered, pspReference: 'psp_1' }),
    events.succeededSecondCharge,
    {
      result: 'illegal',
      message: /^the PSP reports a second charge psp_2 for an order already charged as psp_1$/,
    },
  ],
  [
    'SUCCEEDED + PspSucceeded that names no PSP reference is a no-op',
    order('SUCCEEDED', { ...registered, pspReference: 'psp_1' }),
    events.succeededNoReference,
    { result: 'unchanged', effects: [] },
  ],
  [
    'SUCCEEDED + PspSucceeded with another amount is illegal',
    order('SUCCEEDED', { ...registered, pspReference: 'psp_1' }),
    events.succeededWrongAmount,
    { result: 'illegal', message: /charged 1 but the order is for 1999/ },
  ],
  // FAILED
  ...(
    [
      'execute',
      'registered',
      'regFailedRetryable',
      'declined',
      'expiryDue',
      'cancelled',
      'statusCheck',
      'notFound',
      'stillPending',
    ] as const
  ).map((name): Row => [
    `FAILED + ${events[name].type} is a no-op`,
    order('FAILED', { failureReason: 'card_declined' }),
    events[name],
    { result: 'unchanged', effects: [] },
  ]),
  [
    'FAILED + PspSucceeded flags the order for review, never drops the charge',
    order('FAILED'),
    events.succeeded,
    {
      result: 'moved',
      state: 'FAILED',
      effects: [],
      check: (n) => expect(n.reviewReason).toBe(REVIEW_REASON.chargedAfterFailure),
    },
  ],
  [
    'FAILED(PSP not found) + PspRegistered cancels the payment the late registration made',
    order('FAILED', { failureReason: 'PSP_PAYMENT_NOT_FOUND' }),
    events.registered,
    { result: 'unchanged', effects: ['CancelAtPsp'] },
  ],
  [
    'FAILED(registration refused) + PspRegistered cancels it too',
    order('FAILED', { failureReason: 'PSP_REGISTRATION_REFUSED' }),
    events.registered,
    { result: 'unchanged', effects: ['CancelAtPsp'] },
  ],
  // EXPIRED
  [
    'EXPIRED + PspRegistered cancels the payment a late registration made at the PSP',
    order('EXPIRED'),
    events.registered,
    { result: 'unchanged', effects: ['CancelAtPsp'] },
  ],
  ...(
    [
      'execute',
      'regFailedRetryable',
      'declined',
      'expiryDue',
      'cancelled',
      'statusCheck',
      'notFound',
      'stillPending',
    ] as const
  ).map((name): Row => [
    `EXPIRED + ${events[name].type} is a no-op`,
    order('EXPIRED'),
    events[name],
    { result: 'unchanged', effects: [] },
  ]),
  [
    'EXPIRED + PspSucceeded flags the order for refund/review',
    order('EXPIRED'),
    events.succeeded,
    {
      result: 'moved',
      state: 'EXPIRED',
      effects: [],
      check: (n) => expect(n.reviewReason).toBe(REVIEW_REASON.chargedAfterExpiry),
    },
  ],
  [
    // Not a late charge of this order's payment: a flag would overwrite its PSP reference.
    'EXPIRED + PspSucceeded in another currency is illegal, not a flag',
    order('EXPIRED', registered),
    events.succeededOtherCurrency,
    { result: 'illegal', message: /charged in EUR but the order is in USD/ },
  ],
  [
    'FAILED + PspSucceeded with another amount is illegal, not a flag',
    order('FAILED', registered),
    events.succeededWrongAmount,
    { result: 'illegal', message: /charged 1 but the order is for 1999/ },
  ],
  [
    'EXPIRED, flagged for a late charge, + a second charge under another reference is illegal',
    order('EXPIRED', {
      ...registered,
      reviewReason: REVIEW_REASON.chargedAfterExpiry,
      pspReference: 'psp_1',
    }),
    events.succeededSecondCharge,
    { result: 'illegal', message: /second charge psp_2 .* already charged as psp_1/ },
  ],
  [
    'EXPIRED + a second PspSucceeded after review is a no-op',
    order('EXPIRED', { reviewReason: REVIEW_REASON.chargedAfterExpiry }),
    events.succeeded,
    { result: 'unchanged', effects: [] },
  ],
];

describe('payment-order transition()', () => {
  it.each(table)('%s', (_name, from, event, expected) => {
    const result = transition(from, event, now);
    if (expected.result === 'illegal') {
      expect(result.ok).toBe(false);
      if (!result.ok) {
        expect(result.error.kind).toBe('IllegalTransition');
        expect(result.error.state).toBe(from.state);
        expect(result.error.event).toBe(event.type);
        if (expected.message !== undefined) expect(result.error.message).toMatch(expected.message);
      }
      return;
    }
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.effects.map((effect) => effect.type)).toEqual(expected.effects);
    if (expected.result === 'unchanged') {
      expect(result.changed).toBe(false);
      expect(result.order).toBe(from);
      return;
    }
    expect(result.changed).toBe(true);
    expect(result.order.state).toBe(expected.state);
    expect(result.order.updatedAt).toEqual(now);
    // The machine never touches the version: persistence bumps it under the version check.
    expect(result.order.version).toBe(from.version);
    expected.check?.(result.order);
  });

  it('covers every state and every event type', () => {
    const states = new Set(table.map(([, from]) => from.state));
    const eventTypes = new Set(table.map(([, , event]) => event.type));
    expect([...states].sort()).toEqual(Object.values(ORDER_STATE).sort());
    expect([...eventTypes].sort()).toEqual(
      [
        'ExecuteOrder',
        'ExpiryDue',
        'PspCancelled',
        'PspDeclined',
        'PspNotFound',
        'PspRegistered',
        'PspRegistrationFailed',
        'PspStillPending',
        'PspSucceeded',
        'StatusCheckDue',
      ].sort(),
    );
    for (const state of Object.values(ORDER_STATE)) {
      for (const type of eventTypes) {
        expect(
          table.some(([, from, event]) => from.state === state && event.type === type),
          `${state} × ${type}`,
        ).toBe(true);
      }
    }
  });

  it('cuts a decline code longer than the failure reason allows, never inside a character', () => {
    const failed = (declineCode: string) => {
      const result = transition(
        order('EXECUTING', registered),
        { type: 'PspDeclined', eventId: 'evt_long', declineCode },
        now,
      );
      return result.ok ? result.order.failureReason : undefined;
    };
    expect(failed('x'.repeat(FAILURE_REASON_LENGTH_MAX))).toBe('x'.repeat(64));
    expect(failed('x'.repeat(200))).toBe('x'.repeat(64));
    // 63 letters and two characters outside the BMP (two UTF-16 units each): 64 characters kept.
    expect(failed(`${'x'.repeat(63)}💳💳`)).toBe(`${'x'.repeat(63)}💳`);
  });

  it('credits exactly the order amount to the order seller', () => {
    const result = transition(order('EXECUTING', registered), events.succeeded, now);
    expect(result.ok && result.effects[0]).toEqual({
      type: 'CreditSeller',
      orderId: 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
      sellerId: 'seller-1',
      amountMinor: 1999n,
      currency: 'USD',
    });
  });
});

describe('a status answer from the PSP', () => {
  // The janitor's status check and the expiry's cancel learn the decision by nonce: the answer's
  // token and currency must reach the machine, or another currency refused as a webhook would
  // be booked through this path.
  const status = (currency: string, token = 'tok_A') =>
    eventFromPspStatus('ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G', {
      status: 'SUCCEEDED',
      amountMinor: 1999n,
      token,
      currency,
      pspReference: 'psp_1',
    });

  it('carries the token and currency, so another currency or token is illegal', () => {
    expect(status('USD')).toMatchObject({ type: 'PspSucceeded', token: 'tok_A', currency: 'USD' });
    const otherCurrency = transition(order('EXECUTING', registered), status('EUR'), now);
    expect(otherCurrency.ok).toBe(false);
    expect(!otherCurrency.ok && otherCurrency.error.message).toMatch(
      /in EUR but the order is in USD/,
    );
    const otherToken = transition(order('EXECUTING', registered), status('USD', 'tok_B'), now);
    expect(otherToken.ok).toBe(false);
    const same = transition(order('EXECUTING', registered), status('USD'), now);
    expect(same.ok && same.order.state).toBe('SUCCEEDED');
  });
});
