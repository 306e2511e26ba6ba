/**
 * "Why is this payment stuck?": a pure reading of one payment's facts (orders, their transitions,
 * webhooks, ledger entries, dead letters, the PSP breaker) into one finding per order, worst
 * first. No I/O and no clock: `now` is passed in, so every rule is tested with plain values.
 */
import { parseCommand } from '../messaging/commands.js';
import { assertNever } from '../domain/errors.js';
import type { PaymentOrder } from '../domain/payment-order.js';
import type { BreakerState } from '../psp/client.js';

export type Severity = 'ok' | 'info' | 'warn' | 'error';

export type Finding = Readonly<{ severity: Severity; orderId: string | undefined; text: string }>;

export type DiagnosisFacts = Readonly<{
  orders: readonly PaymentOrder[];
  /** Order ids with at least one ledger entry. */
  ordersWithLedger: ReadonlySet<string>;
  /** When the last webhook of each order was received. */
  lastWebhookAt: ReadonlyMap<string, Date>;
  /** When each order last changed state (its newest transition), if ever. */
  lastTransitionAt: ReadonlyMap<string, Date>;
  openDeadLetters: ReadonlyArray<
    Readonly<{
      id: string;
      orderId: string | undefined;
      reason: string;
      lastError: string;
      /** The command's JSON; its type says whether it was the order's execution. */
      payload?: string;
    }>
  >;
  breaker: BreakerState | undefined;
  now: Date;
}>;

/** An order that has not moved for this long while it should have is worth a warning. */
export const STALL_MS = 30_000;

const NOT_PICKED_UP =
  'its ExecuteOrder command has not reached an actor (if the node that created it died, any ' +
  'node relays it once LOCAL_EXECUTE_HOLD_MS has passed); check the outbox lag and the ' +
  'JetStream consumer';

const RANK: Readonly<Record<Severity, number>> = { error: 0, warn: 1, info: 2, ok: 3 };

export function diagnose(facts: DiagnosisFacts): Finding[] {
  const findings: Finding[] = [];
  for (const order of facts.orders) findings.push(...diagnoseOrder(order, facts));
  return findings.sort((a, b) => RANK[a.severity] - RANK[b.severity]);
}

function ago(facts: DiagnosisFacts, since: Date): string {
  const seconds = Math.max(0, Math.round((facts.now.getTime() - since.getTime()) / 1000));
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7_200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3_600)} h`;
}

function diagnoseOrder(order: PaymentOrder, facts: DiagnosisFacts): Finding[] {
  const found: Finding[] = [];
  const say = (severity: Severity, text: string) =>
    found.push({ severity, orderId: order.id, text });
  // Its execution (or a command that cannot be read) is dead-lettered: nothing retries it.
  let executionStopped = false;
  for (const letter of facts.openDeadLetters) {
    if (letter.orderId !== order.id) continue;
    const type = parseCommand(new TextEncoder().encode(letter.payload ?? ''))?.type;
    if (type === undefined || type === 'ExecuteOrder') executionStopped = true;
    say(
      'error',
      `a command for this order is in the dead-letter queue (${letter.reason}: ` +
        `${letter.lastError}); fix the cause, then replay dead letter ${letter.id}`,
    );
  }
  // A charge that came after the order ended: the buyer paid, and nothing was booked for it.
  const charged = order.reviewReason !== undefined;
  if (charged) {
    say(
      'error',
      `flagged for review (${order.reviewReason}): the buyer was charged (PSP reference ` +
        `${order.pspReference ?? '?'}) after the order ended, and nothing was booked for it; ` +
        'refund the charge at the PSP, or book it by hand',
    );
  }
  const changedAt = facts.lastTransitionAt.get(order.id) ?? order.updatedAt;
  const stalled = facts.now.getTime() - changedAt.getTime() > STALL_MS;
  const webhookAt = facts.lastWebhookAt.get(order.id);
  switch (order.state) {
    case 'SUCCEEDED':
      if (facts.ordersWithLedger.has(order.id)) {
        say(
          'ok',
          `succeeded (PSP reference ${order.pspReference ?? '?'}); ledger and wallet posted`,
        );
      } else {
        say('error', 'SUCCEEDED but no ledger entries: the money invariant is broken');
      }
      break;
    case 'FAILED':
      say(
        'info',
        `failed: ${order.failureReason ?? 'no reason recorded'}` +
          (charged ? ' (then charged: see above)' : ''),
      );
      break;
    case 'EXPIRED':
      if (charged) say('info', 'expired before the charge above arrived');
      else if (order.pspToken === undefined) {
        say('info', 'expired before the PSP registered it: there was nothing to cancel');
      } else say('info', 'expired: not paid in time; the PSP registration was cancelled');
      break;
    case 'NOT_STARTED':
      // Written by nodes before orders were born EXECUTING.
      say(
        stalled ? 'warn' : 'info',
        stalled
          ? `not started ${ago(facts, order.createdAt)} after creation: ${NOT_PICKED_UP}`
          : 'waiting for the runtime to pick up its ExecuteOrder command',
      );
      break;
    case 'EXECUTING':
      if (order.checkoutUrl === undefined && executionStopped) {
        // Its retries are spent: nothing is registering it, whatever the breaker says.
        say(
          'info',
          `not registered after ${order.attempts} attempt(s), and no retry is scheduled; the ` +
            'janitor asks the PSP once the order has been quiet for JANITOR_STUCK_MS, or replay ' +
            'the dead letter',
        );
      } else if (order.checkoutUrl === undefined) {
        const breaker =
          facts.breaker !== undefined && facts.breaker !== 'CLOSED'
            ? `; the PSP circuit breaker is ${facts.breaker}, so calls wait for it to close`
            : '';
        // Born EXECUTING: a first attempt that never got a token may be a command that never
        // reached an actor, not a PSP that is slow.
        const lost =
          stalled && order.attempts <= 1 && breaker === ''
            ? `; ${ago(facts, changedAt)} without a token: if no PSP call shows for it, ${NOT_PICKED_UP}`
            : '';
        say(
          stalled || breaker !== '' ? 'warn' : 'info',
          `registering with the PSP (${order.attempts} attempt(s) so far)${breaker}${lost}`,
        );
      } else if (webhookAt !== undefined && webhookAt.getTime() > changedAt.getTime()) {
        say(
          stalled ? 'warn' : 'info',
          `a PSP webhook arrived ${ago(facts, webhookAt)} ago but is not applied yet; ` +
            'check the outbox lag and the JetStream consumer',
        );
      } else {
        say(
          'info',
          `registered with the PSP ${ago(facts, changedAt)} ago; waiting for the buyer to pay ` +
            'on the hosted page (no webhook yet)',
        );
      }
      break;
    default:
      // A new order state must get its own reading here; the compiler points at this line.
      assertNever(order.state, 'order state');
  }
  return found;
}
