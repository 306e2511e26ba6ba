/**
 * Records accepted PSP webhook events: in ONE transaction, the event id in the inbox (unique, so
 * a repeated event is a no-op) and its PspResult command in the outbox. An event for an order
 * Settle does not know is recorded too: it is the PSP's signed word that money moved (or did
 * not) for a nonce of ours, so it must not be lost. Its command reaches no order; the consumer
 * dead-letters it, where an operator finds it, and the PSP, answered 200, stops retrying.
 * `recordWebhookEvent` does one event; `WebhookInbox` is its group commit: events that arrive
 * together are checked with one query and written with one statement per table. A batch holding a
 * duplicate fails on the inbox's unique key and is then replayed event by event, so each
 * duplicate is told apart exactly as alone (duplicates are rare: PSP retries).
 */
import { pspResultMessage } from '../messaging/commands.js';
import type { Names } from '../messaging/subjects.js';
import type { Db } from '../storage/db.js';
import { GroupCommit } from '../storage/group-commit.js';
import { findPaymentOrder } from '../storage/repositories/payment-order.repository.js';
import {
  enqueueOutbox,
  inboxInsert,
  recordInbox,
} from '../storage/repositories/outbox.repository.js';
import { inTransaction } from '../storage/transaction.js';

export type WebhookEvent = Readonly<{
  eventId: string;
  orderId: string;
  outcome: 'SUCCEEDED' | 'DECLINED';
  pspReference: string | null;
  amountMinor: string;
  declineCode: string | null;
  /** The PSP's token and currency for the payment, compared with the order's by its actor. */
  token: string;
  currency: string;
  now: Date;
}>;

/**
 * `unknown-order`: recorded as `fresh` is, but no such order exists; its command will be
 * dead-lettered for review.
 */
export type Recorded = 'fresh' | 'duplicate' | 'unknown-order';

export const INBOX_SOURCE_PSP = 'psp';

/** Records one event in its own transaction. */
export async function recordWebhookEvent(
  db: Db,
  names: Names,
  event: WebhookEvent,
): Promise<Recorded> {
  const known = (await findPaymentOrder(db, event.orderId)) !== undefined;
  return inTransaction(db, async (trx) => {
    const fresh = await recordInbox(trx, {
      source: INBOX_SOURCE_PSP,
      eventId: event.eventId,
      orderId: event.orderId,
      now: event.now,
    });
    if (!fresh) return 'duplicate';
    await enqueueOutbox(trx, [commandOf(names, event)], event.now);
    return known ? 'fresh' : 'unknown-order';
  });
}

export class WebhookInbox {
  private readonly group: GroupCommit<WebhookEvent, Recorded>;

  constructor(
    db: Db,
    names: Names,
    options: Readonly<{
      batchMax: number;
      inFlightMax: number;
      queueMax: number;
      onBatch?: (batch: { size: number; ms: number; ok: boolean }) => void;
    }>,
  ) {
    this.group = new GroupCommit({
      name: 'webhook events',
      ...options,
      writeOne: (event) => recordWebhookEvent(db, names, event),
      writeBatch: (events) =>
        inTransaction(db, async (trx) => {
          const known = new Set(
            (
              await trx
                .selectFrom('payment_order')
                .select('id')
                .where('id', 'in', [...new Set(events.map((event) => event.orderId))])
                .execute()
            ).map((row) => row.id),
          );
          // A duplicate (repeated event id) fails the whole statement: the batch then goes
          // through event by event.
          await trx.executeQuery(
            inboxInsert(
              trx,
              events.map((event) => ({
                source: INBOX_SOURCE_PSP,
                eventId: event.eventId,
                orderId: event.orderId,
                now: event.now,
              })),
            ),
          );
          await enqueueOutbox(
            trx,
            events.map((event) => commandOf(names, event)),
            new Date(Math.max(...events.map((event) => event.now.getTime()))),
          );
          return events.map((event): Recorded =>
            known.has(event.orderId) ? 'fresh' : 'unknown-order',
          );
        }),
    });
  }

  readonly record = (event: WebhookEvent): Promise<Recorded> => this.group.submit(event);

  stop(timeoutMs: number): Promise<void> {
    return this.group.stop(timeoutMs);
  }
}

function commandOf(names: Names, event: WebhookEvent) {
  return pspResultMessage(names, {
    orderId: event.orderId,
    eventId: event.eventId,
    outcome: event.outcome,
    pspReference: event.pspReference,
    amountMinor: event.amountMinor,
    declineCode: event.declineCode,
    token: event.token,
    currency: event.currency,
  });
}
