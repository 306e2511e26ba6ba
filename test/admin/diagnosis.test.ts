/**
 * Goal: the payment page answers "why is it stuck?" correctly for each kind of stuck order: a dead
 * letter, an open breaker, a registration that is slow, a webhook received but not applied, a
 * buyer who has not paid, a flagged order, and a SUCCEEDED order without ledger entries (a broken
 * invariant). Method: the pure diagnose() with hand-built facts and a fixed clock; worst first.
 */
import { describe, expect, it } from 'vitest';
import { diagnose, STALL_MS, type DiagnosisFacts } from '../../src/admin/diagnosis.js';
import type { PaymentOrder } from '../../src/domain/payment-order.js';

const NOW = new Date('2025-01-31T12:00:00Z');
const ago = (ms: number) => new Date(NOW.getTime() - ms);

function order(id: string, patch: Partial<PaymentOrder>): PaymentOrder {
  return {
    id,
    paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
    sellerId: `seller-${id}`,
    amountMinor: 100n,
    currency: 'USD',
    state: 'EXECUTING',
    version: 1n,
    pspToken: undefined,
    checkoutUrl: undefined,
    pspReference: undefined,
    failureReason: undefined,
    attempts: 1,
    reviewReason: undefined,
    createdAt: ago(60_000),
    updatedAt: ago(60_000),
    ...patch,
  };
}

function facts(orders: PaymentOrder[], patch: Partial<DiagnosisFacts> = {}): DiagnosisFacts {
  return {
    orders,
    ordersWithLedger: new Set(),
    lastWebhookAt: new Map(),
    lastTransitionAt: new Map(),
    openDeadLetters: [],
    breaker: 'CLOSED',
    now: NOW,
    ...patch,
  };
}

describe('diagnose', () => {
  it('puts a dead-lettered order first, naming the dead letter to replay', () => {
    const findings = diagnose(
      facts([order('a', { checkoutUrl: 'http://psp/pay/1' }), order('b', {})], {
        openDeadLetters: [
          { id: '9', orderId: 'b', reason: 'RETRIES_EXHAUSTED', lastError: 'PSP down' },
        ],
      }),
    );
    expect(findings[0]).toMatchObject({ severity: 'error', orderId: 'b' });
    expect(findings[0]?.text).toContain('replay dead letter 9');
    expect(findings[0]?.text).toContain('RETRIES_EXHAUSTED: PSP down');
  });

  it('does not say a dead-lettered order is still registering, whatever the breaker', () => {
    const findings = diagnose(
      facts([order('b', { attempts: 7 })], {
        breaker: 'HALF_OPEN',
        openDeadLetters: [
          { id: '9', orderId: 'b', reason: 'RETRIES_EXHAUSTED', lastError: 'PSP down' },
        ],
      }),
    );
    expect(findings.map((finding) => finding.severity)).toEqual(['error', 'info']);
    expect(findings[1]?.text).toBe(
      'not registered after 7 attempt(s), and no retry is scheduled; the janitor asks the PSP ' +
        'once the order has been quiet for JANITOR_STUCK_MS, or replay the dead letter',
    );
    expect(findings.some((finding) => finding.text.includes('registering'))).toBe(false);
  });

  it('still reads an order as registering when its dead letter is not its execution', () => {
    const findings = diagnose(
      facts([order('b', { attempts: 2 })], {
        breaker: 'OPEN',
        openDeadLetters: [
          {
            id: '9',
            orderId: 'b',
            reason: 'RETRIES_EXHAUSTED',
            lastError: 'PSP down',
            payload: JSON.stringify({ type: 'CheckOrderStatus', orderId: 'b' }),
          },
        ],
      }),
    );
    expect(findings[1]?.text).toContain('registering with the PSP (2 attempt(s) so far)');
    expect(findings[1]?.text).toContain('circuit breaker is OPEN');
  });

  it('blames an open breaker for an order still registering', () => {
    const [finding] = diagnose(facts([order('a', { attempts: 3 })], { breaker: 'OPEN' }));
    expect(finding).toMatchObject({ severity: 'warn' });
    expect(finding?.text).toContain('3 attempt(s)');
    expect(finding?.text).toContain('circuit breaker is OPEN');
  });

  it('tells a webhook not yet applied from a buyer who has not paid', () => {
    const registered = order('a', { checkoutUrl: 'http://psp/pay/1' });
    const waiting = diagnose(
      facts([registered], { lastTransitionAt: new Map([['a', ago(120_000)]]) }),
    );
    expect(waiting[0]?.text).toContain('waiting for the buyer to pay');
    expect(waiting[0]?.severity).toBe('info');
    const unapplied = diagnose(
      facts([registered], {
        lastTransitionAt: new Map([['a', ago(120_000)]]),
        lastWebhookAt: new Map([['a', ago(STALL_MS + 5_000)]]),
      }),
    );
    expect(unapplied[0]?.severity).toBe('warn');
    expect(unapplied[0]?.text).toContain('webhook arrived');
  });

  it('flags a SUCCEEDED order without ledger entries as a broken invariant', () => {
    const succeeded = order('a', { state: 'SUCCEEDED', pspReference: 'ch_1' });
    expect(diagnose(facts([succeeded]))[0]).toMatchObject({ severity: 'error' });
    expect(diagnose(facts([succeeded], { ordersWithLedger: new Set(['a']) }))[0]).toMatchObject({
      severity: 'ok',
    });
  });

  it('warns about an order not picked up only after it stalls, and shows review flags', () => {
    const fresh = order('a', {
      state: 'NOT_STARTED',
      createdAt: ago(1_000),
      updatedAt: ago(1_000),
    });
    expect(diagnose(facts([fresh]))[0]?.severity).toBe('info');
    const stalled = order('a', {
      state: 'NOT_STARTED',
      createdAt: ago(STALL_MS * 3),
      updatedAt: ago(STALL_MS * 3),
    });
    expect(diagnose(facts([stalled]))[0]?.text).toContain('outbox lag');
    // Born EXECUTING: a first attempt stalled without a token points at the command too.
    const bornStalled = order('a', {
      state: 'EXECUTING',
      attempts: 1,
      createdAt: ago(STALL_MS * 3),
      updatedAt: ago(STALL_MS * 3),
    });
    expect(diagnose(facts([bornStalled]))[0]).toMatchObject({ severity: 'warn' });
    expect(diagnose(facts([bornStalled]))[0]?.text).toContain('outbox lag');
    const bornFresh = order('a', { state: 'EXECUTING', attempts: 1, updatedAt: ago(1_000) });
    expect(diagnose(facts([bornFresh]))[0]?.text).not.toContain('outbox lag');
    const flagged = order('a', { state: 'EXPIRED', reviewReason: 'CHARGED_AFTER_EXPIRY' });
    const findings = diagnose(facts([flagged]));
    expect(findings[0]).toMatchObject({ severity: 'error' });
    expect(findings[0]?.text).toContain('CHARGED_AFTER_EXPIRY');
  });

  it('says a charge after the order ended is money taken and not booked, in words that agree', () => {
    const expired = order('a', {
      state: 'EXPIRED',
      pspToken: 'tok_1',
      pspReference: 'ch_late',
      reviewReason: 'CHARGED_AFTER_EXPIRY',
    });
    expect(diagnose(facts([expired])).map(({ severity, text }) => ({ severity, text }))).toEqual([
      {
        severity: 'error',
        text:
          'flagged for review (CHARGED_AFTER_EXPIRY): the buyer was charged (PSP reference ' +
          'ch_late) after the order ended, and nothing was booked for it; refund the charge at ' +
          'the PSP, or book it by hand',
      },
      // Not "not paid in time; the registration was cancelled": it was paid.
      { severity: 'info', text: 'expired before the charge above arrived' },
    ]);
    const failed = order('b', {
      state: 'FAILED',
      failureReason: 'PSP_REGISTRATION_REFUSED',
      pspReference: 'ch_late',
      reviewReason: 'CHARGED_AFTER_FAILURE',
    });
    expect(diagnose(facts([failed])).map(({ severity }) => severity)).toEqual(['error', 'info']);
    expect(diagnose(facts([failed]))[1]?.text).toBe(
      'failed: PSP_REGISTRATION_REFUSED (then charged: see above)',
    );
  });

  it('does not say an order that expired before its registration had one cancelled', () => {
    const unregistered = order('a', { state: 'EXPIRED', pspToken: undefined });
    expect(diagnose(facts([unregistered]))[0]?.text).toBe(
      'expired before the PSP registered it: there was nothing to cancel',
    );
    const registered = order('a', { state: 'EXPIRED', pspToken: 'tok_1' });
    expect(diagnose(facts([registered]))[0]?.text).toBe(
      'expired: not paid in time; the PSP registration was cancelled',
    );
  });
});
