/**
 * Goal: every line of the chaos report's invariant table catches the violation it names (double
 * charge, two payments for one request, unbooked charge, invented money, a final state the PSP
 * contradicts, wrong ledger, money credited to the wrong seller, ledger of an unknown order,
 * unbalanced ledger, wallet drift, lost order, order unfinished after the replay, order expired
 * though meant to be paid, lost or extra payment, forged webhook believed, genuine webhook
 * refused, late webhook obeyed, outbox left, fault never injected), so an all-PASS table means
 * something; and an order flagged for review is exempt where the checks say so. Method: evaluate()
 * is pure; start from facts that satisfy every check, break one fact at a time and assert that
 * exactly the matching checks fail.
 */
import { describe, expect, it } from 'vitest';
import {
  evaluate,
  type DriverFacts,
  type Observed,
  type PspPaymentState,
} from '../../src/chaos/invariants.js';

function facts(): { observed: Observed; driver: DriverFacts } {
  const orders = [
    {
      id: 'ord_ok',
      paymentId: 'pay_1',
      sellerId: 'seller-1',
      state: 'SUCCEEDED',
      amountMinor: 500n,
      currency: 'USD',
      pspReference: 'psp_a',
      failureReason: null,
      reviewReason: null,
    },
    {
      id: 'ord_declined',
      paymentId: 'pay_1',
      sellerId: 'seller-2',
      state: 'FAILED',
      amountMinor: 700n,
      currency: 'USD',
      pspReference: null,
      failureReason: 'card_declined',
      reviewReason: null,
    },
    {
      id: 'ord_dlq',
      paymentId: 'pay_2',
      sellerId: 'seller-1',
      state: 'EXECUTING',
      amountMinor: 900n,
      currency: 'USD',
      pspReference: null,
      failureReason: null,
      reviewReason: null,
    },
  ];
  return {
    observed: {
      orders,
      payments: [
        {
          id: 'pay_1',
          buyerId: 'buyer-1',
          requestId: 'req-1',
          state: 'PARTIALLY_SUCCEEDED',
          amountMinor: 1200n,
          ordersTotal: 2,
          ordersSucceeded: 1,
          ordersFailed: 1,
        },
        {
          id: 'pay_2',
          // The same request id from another buyer is another request.
          buyerId: 'buyer-2',
          requestId: 'req-1',
          state: 'EXECUTING',
          amountMinor: 900n,
          ordersTotal: 1,
          ordersSucceeded: 0,
          ordersFailed: 0,
        },
      ],
      ledgerByOrder: new Map([['ord_ok', { count: 1, amountMinor: 500n, currency: 'USD' }]]),
      sellerCreditsByOrder: new Map([
        ['ord_ok', [{ account: 'seller_payable:seller-1', creditMinor: 500n }]],
      ]),
      unbalancedTransactions: [],
      trialBalanceNonZero: [],
      walletMismatches: [],
      ledgerAstray: {
        transactionsOfUnknownOrders: [],
        entriesOfUnknownTransactions: [],
        entriesNotOfTheirTransaction: [],
      },
      outboxLeft: 0,
      charges: [{ nonce: 'ord_ok', pspReference: 'psp_a', amountMinor: 500n, currency: 'USD' }],
      pspPayments: new Map<string, PspPaymentState>([
        ['ord_ok', 'SUCCEEDED'],
        ['ord_declined', 'DECLINED'],
        ['ord_dlq', 'REGISTERED'],
      ]),
      deadLetters: [{ orderId: 'ord_dlq', reason: 'RETRIES_EXHAUSTED', state: 'OPEN' }],
    },
    driver: {
      paymentsRequested: 2,
      paymentsAcknowledged: ['pay_1', 'pay_2'],
      requestsAcknowledged: [
        { buyerId: 'buyer-1', requestId: 'req-1', paymentId: 'pay_1' },
        { buyerId: 'buyer-2', requestId: 'req-1', paymentId: 'pay_2' },
      ],
      abandonedOrders: [],
      // The DLQ order is held, as before the run's replay step.
      ordersMustBeFinal: false,
      forgedWebhooksSent: 4,
      forgedWebhooksAccepted: 0,
      lateDeclinedOrders: ['ord_ok'],
      genuineWebhooksRefused: [],
      faultsInjected: { 'kill-node': 2 },
      faultKindsPlanned: ['kill-node'],
    },
  };
}

function failedChecks(observed: Observed, driver: DriverFacts): string[] {
  return evaluate(observed, driver)
    .checks.filter((check) => !check.ok)
    .map((check) => check.name);
}

describe('chaos invariants', () => {
  it('passes every check on consistent facts and counts the outcome', () => {
    const { observed, driver } = facts();
    const evaluation = evaluate(observed, driver);
    expect(evaluation.checks.filter((c) => !c.ok)).toEqual([]);
    expect(evaluation.ok).toBe(true);
    expect(evaluation.outcome).toMatchObject({
      orders: 3,
      byState: { SUCCEEDED: 1, FAILED: 1, EXECUTING: 1 },
      failureReasons: { card_declined: 1 },
      inDlqNotTerminal: 1,
      deadLetterReasons: { RETRIES_EXHAUSTED: 1 },
      charges: 1,
    });
  });

  it('accepts a charge on a FAILED or EXPIRED order flagged for review', () => {
    const { observed, driver } = facts();
    const flagged = {
      ...observed,
      orders: [
        ...observed.orders.map((o) =>
          o.id === 'ord_declined' ? { ...o, reviewReason: 'CHARGED_AFTER_FAILURE' } : o,
        ),
        {
          id: 'ord_expired',
          paymentId: 'pay_3',
          sellerId: 'seller-3',
          state: 'EXPIRED',
          amountMinor: 300n,
          currency: 'USD',
          pspReference: null,
          failureReason: 'expired',
          reviewReason: 'CHARGED_AFTER_EXPIRY',
        },
      ],
      payments: [
        ...observed.payments,
        {
          id: 'pay_3',
          buyerId: 'buyer-1',
          requestId: 'req-3',
          state: 'FAILED',
          amountMinor: 300n,
          ordersTotal: 1,
          ordersSucceeded: 0,
          ordersFailed: 1,
        },
      ],
      // The PSP says paid: the flag is the operator's case, not a disagreement.
      pspPayments: new Map<string, PspPaymentState>([
        ...observed.pspPayments,
        ['ord_declined', 'SUCCEEDED'],
        ['ord_expired', 'SUCCEEDED'],
      ]),
      charges: [
        ...observed.charges,
        { nonce: 'ord_declined', pspReference: 'psp_b', amountMinor: 700n, currency: 'USD' },
        { nonce: 'ord_expired', pspReference: 'psp_c', amountMinor: 300n, currency: 'USD' },
      ],
    };
    const evaluation = evaluate(flagged, {
      ...driver,
      paymentsRequested: 3,
      paymentsAcknowledged: [...driver.paymentsAcknowledged, 'pay_3'],
      abandonedOrders: ['ord_expired'],
    });
    expect(evaluation.checks.filter((c) => !c.ok)).toEqual([]);
    expect(evaluation.outcome.flaggedForReview).toBe(2);
  });

  type Facts = ReturnType<typeof facts>;
  /** The facts with some observations changed. */
  const withObserved = (
    f: Facts,
    change: (observed: Facts['observed']) => Partial<Facts['observed']>,
  ): Facts => ({ ...f, observed: { ...f.observed, ...change(f.observed) } });

  /** `f` with the PSP's payment of `orderId` in `state`. */
  const withPspPayment = (f: Facts, orderId: string, state: PspPaymentState): Facts =>
    withObserved(f, (o) => ({
      pspPayments: new Map<string, PspPaymentState>([...o.pspPayments, [orderId, state]]),
    }));

  /** ord_declined EXPIRED instead (its payment's counters stay right), with its PSP payment. */
  const declinedExpired = (f: Facts, psp: PspPaymentState, abandoned: boolean): Facts => ({
    observed: {
      ...f.observed,
      orders: f.observed.orders.map((o) =>
        o.id === 'ord_declined' ? { ...o, state: 'EXPIRED', failureReason: 'EXPIRED' } : o,
      ),
      pspPayments: new Map<string, PspPaymentState>([
        ...f.observed.pspPayments,
        ['ord_declined', psp],
      ]),
    },
    driver: { ...f.driver, abandonedOrders: abandoned ? ['ord_declined'] : [] },
  });

  it('accepts an EXPIRED order the workload never paid, cancelled at the PSP or never there', () => {
    for (const f of [
      declinedExpired(facts(), 'CANCELLED', true),
      withObserved(declinedExpired(facts(), 'CANCELLED', true), (o) => ({
        pspPayments: new Map<string, PspPaymentState>(
          [...o.pspPayments].filter(([id]) => id !== 'ord_declined'),
        ),
      })),
    ]) {
      expect(failedChecks(f.observed, f.driver)).toEqual([]);
    }
  });

  const cases: Array<[string, string | string[], (f: Facts) => Facts]> = [
    [
      'a second payment for one request (a retried CreatePayment made a duplicate)',
      [
        'payments per (buyer, request id), max',
        'acknowledged requests without exactly their one payment',
      ],
      (f) => ({
        observed: {
          ...f.observed,
          payments: [
            ...f.observed.payments,
            {
              id: 'pay_dup',
              buyerId: 'buyer-1',
              requestId: 'req-1',
              state: 'SUCCEEDED',
              amountMinor: 0n,
              ordersTotal: 0,
              ordersSucceeded: 0,
              ordersFailed: 0,
            },
          ],
        },
        driver: { ...f.driver, paymentsRequested: 3 },
      }),
    ],
    [
      'a second payment for one request the driver does not know of',
      'payments per (buyer, request id), max',
      (f) => ({
        observed: {
          ...f.observed,
          payments: [
            ...f.observed.payments,
            {
              id: 'pay_dup',
              buyerId: 'buyer-1',
              requestId: 'req-1',
              state: 'SUCCEEDED',
              amountMinor: 0n,
              ordersTotal: 0,
              ordersSucceeded: 0,
              ordersFailed: 0,
            },
          ],
        },
        driver: { ...f.driver, paymentsRequested: 3, requestsAcknowledged: [] },
      }),
    ],
    [
      'an acknowledged request without a payment in the database',
      'acknowledged requests without exactly their one payment',
      (f) => ({
        ...f,
        driver: {
          ...f.driver,
          requestsAcknowledged: [
            ...f.driver.requestsAcknowledged,
            { buyerId: 'buyer-1', requestId: 'req-lost', paymentId: 'pay_1' },
          ],
        },
      }),
    ],
    [
      'an order still held in the DLQ after the dead letters were replayed',
      'orders not final after the dead letters were replayed',
      (f) => ({ ...f, driver: { ...f.driver, ordersMustBeFinal: true } }),
    ],
    [
      'a SUCCEEDED order whose PSP payment is only registered',
      "final orders whose state disagrees with the PSP's payment",
      (f) => withPspPayment(f, 'ord_ok', 'REGISTERED'),
    ],
    [
      'a FAILED order the PSP says succeeded (not flagged)',
      "final orders whose state disagrees with the PSP's payment",
      (f) => withPspPayment(f, 'ord_declined', 'SUCCEEDED'),
    ],
    [
      'a FAILED order still registered at the PSP',
      "final orders whose state disagrees with the PSP's payment",
      (f) => withPspPayment(f, 'ord_declined', 'REGISTERED'),
    ],
    [
      'an EXPIRED order still registered at the PSP',
      "final orders whose state disagrees with the PSP's payment",
      (f) => declinedExpired(f, 'REGISTERED', true),
    ],
    [
      'an EXPIRED order the PSP says was declined',
      "final orders whose state disagrees with the PSP's payment",
      (f) => declinedExpired(f, 'DECLINED', true),
    ],
    [
      'an EXPIRED order the workload meant to pay',
      'EXPIRED orders / orders never meant to be paid',
      (f) => declinedExpired(f, 'CANCELLED', false),
    ],
    [
      "a SUCCEEDED order credited to another seller's account",
      "SUCCEEDED orders not credited to their seller's payable account for their amount",
      (f) =>
        withObserved(f, () => ({
          sellerCreditsByOrder: new Map([
            ['ord_ok', [{ account: 'seller_payable:seller-2', creditMinor: 500n }]],
          ]),
        })),
    ],
    [
      "a SUCCEEDED order credited for another amount (the transaction's header right)",
      "SUCCEEDED orders not credited to their seller's payable account for their amount",
      (f) =>
        withObserved(f, () => ({
          sellerCreditsByOrder: new Map([
            ['ord_ok', [{ account: 'seller_payable:seller-1', creditMinor: 499n }]],
          ]),
        })),
    ],
    [
      'a SUCCEEDED order credited partly to another seller',
      "SUCCEEDED orders not credited to their seller's payable account for their amount",
      (f) =>
        withObserved(f, () => ({
          sellerCreditsByOrder: new Map([
            [
              'ord_ok',
              [
                { account: 'seller_payable:seller-1', creditMinor: 500n },
                { account: 'seller_payable:seller-2', creditMinor: 100n },
              ],
            ],
          ]),
        })),
    ],
    [
      'a SUCCEEDED order credited to no seller',
      "SUCCEEDED orders not credited to their seller's payable account for their amount",
      (f) => withObserved(f, () => ({ sellerCreditsByOrder: new Map() })),
    ],
    [
      'a FAILED order credited to its seller by a transaction of another kind',
      'orders credited to a seller though not SUCCEEDED',
      (f) =>
        withObserved(f, (o) => ({
          sellerCreditsByOrder: new Map([
            ...o.sellerCreditsByOrder,
            ['ord_declined', [{ account: 'seller_payable:seller-2', creditMinor: 700n }]],
          ]),
        })),
    ],
    [
      'a seller credited by a transaction of an unknown order',
      'ledger transactions of unknown orders',
      (f) =>
        withObserved(f, (o) => ({
          sellerCreditsByOrder: new Map([
            ...o.sellerCreditsByOrder,
            ['ord_ghost', [{ account: 'seller_payable:seller-1', creditMinor: 5n }]],
          ]),
          ledgerAstray: {
            ...o.ledgerAstray,
            transactionsOfUnknownOrders: [
              'transaction ltx_9 (ADJUSTMENT) of unknown order ord_ghost',
            ],
          },
        })),
    ],
    [
      'a seller credited by entries of no transaction and no order',
      'ledger entries of no known transaction',
      (f) =>
        withObserved(f, (o) => ({
          sellerCreditsByOrder: new Map([
            ...o.sellerCreditsByOrder,
            ['ord_ghost', [{ account: 'seller_payable:seller-1', creditMinor: 5n }]],
          ]),
          ledgerAstray: {
            ...o.ledgerAstray,
            entriesOfUnknownTransactions: [
              'entry 9 (ADJUSTMENT_PAYABLE USD) of order ord_ghost, transaction ltx_9 (unknown)',
            ],
          },
        })),
    ],
    [
      'a second PSP charge of one order',
      "PSP charges per order, max (PSP's own records)",
      (f) =>
        withObserved(f, (o) => ({
          charges: [
            ...o.charges,
            { nonce: 'ord_ok', pspReference: 'psp_a', amountMinor: 500n, currency: 'USD' },
          ],
        })),
    ],
    [
      'a charge for an order that failed and is not flagged',
      'PSP charges not booked to a SUCCEEDED order nor flagged for review',
      (f) =>
        withObserved(f, (o) => ({
          charges: [
            ...o.charges,
            { nonce: 'ord_declined', pspReference: 'psp_b', amountMinor: 700n, currency: 'USD' },
          ],
        })),
    ],
    [
      'a SUCCEEDED order the PSP never charged (a forged success believed)',
      'SUCCEEDED orders without a matching PSP charge',
      (f) => withObserved(f, () => ({ charges: [] })),
    ],
    [
      'a SUCCEEDED order whose charge is for another amount',
      'SUCCEEDED orders without a matching PSP charge',
      (f) =>
        withObserved(f, () => ({
          charges: [{ nonce: 'ord_ok', pspReference: 'psp_a', amountMinor: 499n, currency: 'USD' }],
        })),
    ],
    [
      'a SUCCEEDED order whose charge is in another currency, for the same amount',
      'SUCCEEDED orders without a matching PSP charge',
      (f) =>
        withObserved(f, () => ({
          charges: [{ nonce: 'ord_ok', pspReference: 'psp_a', amountMinor: 500n, currency: 'EUR' }],
        })),
    ],
    [
      'a SUCCEEDED order whose charge has another PSP reference',
      [
        'PSP charges not booked to a SUCCEEDED order nor flagged for review',
        'SUCCEEDED orders without a matching PSP charge',
      ],
      (f) =>
        withObserved(f, () => ({
          charges: [{ nonce: 'ord_ok', pspReference: 'psp_z', amountMinor: 500n, currency: 'USD' }],
        })),
    ],
    [
      'a SUCCEEDED order booked twice',
      'orders whose ledger transactions are not exactly one per SUCCEEDED order',
      (f) =>
        withObserved(f, () => ({
          ledgerByOrder: new Map([['ord_ok', { count: 2, amountMinor: 1000n, currency: 'USD' }]]),
        })),
    ],
    [
      'a SUCCEEDED order booked once for another amount',
      'orders whose ledger transactions are not exactly one per SUCCEEDED order',
      (f) =>
        withObserved(f, () => ({
          ledgerByOrder: new Map([['ord_ok', { count: 1, amountMinor: 499n, currency: 'USD' }]]),
        })),
    ],
    [
      'a SUCCEEDED order booked once for its amount in another currency',
      'orders whose ledger transactions are not exactly one per SUCCEEDED order',
      (f) =>
        withObserved(f, () => ({
          ledgerByOrder: new Map([['ord_ok', { count: 1, amountMinor: 500n, currency: 'EUR' }]]),
        })),
    ],
    [
      'a ledger transaction of a FAILED order',
      'orders whose ledger transactions are not exactly one per SUCCEEDED order',
      (f) =>
        withObserved(f, (o) => ({
          ledgerByOrder: new Map([
            ...o.ledgerByOrder,
            ['ord_declined', { count: 1, amountMinor: 700n, currency: 'USD' }],
          ]),
        })),
    ],
    [
      'a ledger transaction of an order that does not exist',
      'ledger transactions of unknown orders',
      (f) =>
        withObserved(f, (o) => ({
          ledgerByOrder: new Map([
            ...o.ledgerByOrder,
            ['ord_ghost', { count: 1, amountMinor: 100n, currency: 'USD' }],
          ]),
          ledgerAstray: {
            ...o.ledgerAstray,
            transactionsOfUnknownOrders: ['transaction ltx_9 (PAYMENT) of unknown order ord_ghost'],
          },
        })),
    ],
    [
      'an unbalanced ledger transaction',
      'ledger transactions unbalanced',
      (f) => withObserved(f, () => ({ unbalancedTransactions: ['ltx_1'] })),
    ],
    [
      'a non-zero trial balance',
      'trial balance (debits - credits) per currency',
      (f) => withObserved(f, () => ({ trialBalanceNonZero: ['USD 5'] })),
    ],
    [
      'a wallet that differs from the ledger',
      'wallets != ledger sums',
      (f) => withObserved(f, () => ({ walletMismatches: ['seller-1: 1 vs 2'] })),
    ],
    [
      'an entry under another order than its transaction',
      'ledger entries of another order or currency than their transaction',
      (f) =>
        withObserved(f, (o) => ({
          ledgerAstray: {
            ...o.ledgerAstray,
            entriesNotOfTheirTransaction: [
              'entry 7 (PAYMENT_RECEIVABLE USD) of order ord_declined, transaction ltx_1 (of ord_ok in USD)',
            ],
          },
        })),
    ],
    [
      'an order stuck without a dead letter',
      'orders lost (not terminal and not held in the DLQ)',
      (f) => withObserved(f, () => ({ deadLetters: [] })),
    ],
    [
      'an order stuck after its dead letter was replayed',
      'orders lost (not terminal and not held in the DLQ)',
      (f) =>
        withObserved(f, () => ({
          deadLetters: [{ orderId: 'ord_dlq', reason: 'RETRIES_EXHAUSTED', state: 'REPLAYED' }],
        })),
    ],
    [
      'an acknowledged payment missing from the database',
      'acknowledged payments missing from the database',
      (f) => ({
        ...f,
        driver: {
          ...f.driver,
          paymentsAcknowledged: [...f.driver.paymentsAcknowledged, 'pay_9'],
        },
      }),
    ],
    [
      'more payments in the database than were requested (a retry made a duplicate)',
      'payments in the database / requested',
      (f) => ({ ...f, driver: { ...f.driver, paymentsRequested: 1 } }),
    ],
    [
      'payment counters that disagree with the orders',
      'payments whose state or counters disagree with their orders',
      (f) =>
        withObserved(f, (o) => ({
          payments: o.payments.map((p) => (p.id === 'pay_1' ? { ...p, state: 'SUCCEEDED' } : p)),
        })),
    ],
    [
      'a payment whose orders do not sum to its total (off by 1)',
      'payments whose state or counters disagree with their orders',
      (f) =>
        withObserved(f, (o) => ({
          payments: o.payments.map((p) =>
            p.id === 'pay_1' ? { ...p, amountMinor: p.amountMinor + 1n } : p,
          ),
        })),
    ],
    [
      'a forged webhook accepted',
      'forged webhooks accepted',
      (f) => ({ ...f, driver: { ...f.driver, forgedWebhooksAccepted: 1 } }),
    ],
    [
      'a late decline that flipped a SUCCEEDED order',
      'orders changed by a late payment.declined',
      (f) => ({ ...f, driver: { ...f.driver, lateDeclinedOrders: ['ord_declined'] } }),
    ],
    [
      'a late decline that flagged a SUCCEEDED order for review',
      'orders changed by a late payment.declined',
      (f) =>
        withObserved(f, (o) => ({
          orders: o.orders.map((o) =>
            o.id === 'ord_ok' ? { ...o, reviewReason: 'CHARGED_AFTER_FAILURE' } : o,
          ),
        })),
    ],
    [
      'a signed webhook refused',
      'signed webhooks refused (not 200 or 503)',
      (f) => ({
        ...f,
        driver: { ...f.driver, genuineWebhooksRefused: ['payment.succeeded ord_ok: HTTP 500'] },
      }),
    ],
    [
      'outbox rows left behind',
      'outbox rows not relayed',
      (f) => withObserved(f, () => ({ outboxLeft: 3 })),
    ],
    [
      'a planned fault kind never injected',
      'fault kinds injected',
      (f) => ({ ...f, driver: { ...f.driver, faultKindsPlanned: ['kill-node', 'nats-cut'] } }),
    ],
  ];

  it.each(cases)('fails on %s', (_what, check, breakIt) => {
    const broken = breakIt(facts());
    expect(failedChecks(broken.observed, broken.driver)).toEqual([check].flat());
  });
});
