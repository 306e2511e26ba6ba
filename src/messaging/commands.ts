/**
 * The commands that travel from the outbox through JetStream to payment-order actors. Payloads
 * are JSON with amounts as decimal strings; every command names its order, which picks the
 * subject partition and the actor.
 */
import { z } from 'zod';
import { ORDER_ID_LENGTH, ORDER_ID_PATTERN } from '../domain/ids.js';
import { isInt64Decimal } from '../domain/int64.js';
import type { OutboxMessage } from '../storage/repositories/outbox.repository.js';
import type { Names } from './subjects.js';

/** Decimal minor units that fit the BIGINT columns they go to; past them, a command is malformed. */
const amountString = z.string().refine((text) => isInt64Decimal(text));
/**
 * No longer than an order id (ORDER_ID_LENGTH), which is what the columns holding one take: a
 * command naming a longer one could never be dead-lettered ("Data too long" for
 * `dead_letter.order_id`) and would come back until its deliveries ran out. It is malformed, and
 * dead-lettered as such at once. A shorter id that names no order is the actor's to refuse, with
 * its own reason.
 */
const orderIdString = z.string().min(1).max(ORDER_ID_LENGTH);

export const commandSchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('ExecuteOrder'),
    orderId: orderIdString,
    /** Attempts made before it reached JetStream (by the node that created the order). */
    priorAttempts: z.number().int().min(0).max(100).optional(),
  }),
  z.object({
    type: z.literal('PspResult'),
    orderId: orderIdString,
    eventId: z.string().min(1),
    outcome: z.enum(['SUCCEEDED', 'DECLINED']),
    pspReference: z.string().nullable(),
    amountMinor: amountString,
    declineCode: z.string().nullable(),
    // The PSP's token and currency for the payment. Optional: a command written before they
    // were carried may still wait in the outbox or the stream, and must still apply.
    token: z.string().min(1).optional(),
    currency: z.string().optional(),
  }),
  z.object({ type: z.literal('ExpireOrder'), orderId: orderIdString }),
  z.object({ type: z.literal('CheckOrderStatus'), orderId: orderIdString }),
]);
export type Command = z.infer<typeof commandSchema>;

/**
 * A new order's ExecuteOrder. `heldUntil`: the relay leaves it alone until then, while the node
 * that created the order runs it itself (actors/payment-order/local-execute.ts).
 */
export function executeOrderMessage(
  names: Names,
  orderId: string,
  heldUntil?: Date,
): OutboxMessage {
  return {
    subject: names.commandSubject(orderId),
    msgId: executeOrderMsgId(orderId),
    payload: executeOrderPayload(orderId, 0),
    ...(heldUntil !== undefined && { availableAt: heldUntil }),
  };
}

export function executeOrderMsgId(orderId: string): string {
  return `exec:${orderId}`;
}

export function executeOrderPayload(orderId: string, priorAttempts: number): string {
  return JSON.stringify({
    type: 'ExecuteOrder',
    orderId,
    ...(priorAttempts > 0 && { priorAttempts }),
  } satisfies Command);
}

export function pspResultMessage(
  names: Names,
  result: Omit<Extract<Command, { type: 'PspResult' }>, 'type'>,
): OutboxMessage {
  return {
    subject: names.commandSubject(result.orderId),
    msgId: `psp:${result.eventId}`,
    payload: JSON.stringify({ type: 'PspResult', ...result } satisfies Command),
  };
}

/**
 * A janitor command (expiry or status check). The message id carries the claim's time, so a new
 * claim is a new message while a relay retry of the same claim is deduplicated.
 */
export function janitorMessage(
  names: Names,
  type: 'ExpireOrder' | 'CheckOrderStatus',
  orderId: string,
  claimedAtMs: number,
): OutboxMessage {
  return {
    subject: names.commandSubject(orderId),
    msgId: `${type === 'ExpireOrder' ? 'expire' : 'check'}:${orderId}:${claimedAtMs}`,
    payload: JSON.stringify({ type, orderId } satisfies Command),
  };
}

/**
 * The order a payload that is not a command names, when it names one in the shape of our ids:
 * its dead letter then shows on that payment's page instead of nowhere. Undefined otherwise.
 */
export function orderIdOfMalformed(data: Uint8Array): string | undefined {
  try {
    const parsed: unknown = JSON.parse(new TextDecoder().decode(data));
    if (typeof parsed !== 'object' || parsed === null || !('orderId' in parsed)) return undefined;
    const { orderId } = parsed;
    return typeof orderId === 'string' && ORDER_ID_PATTERN.test(orderId) ? orderId : undefined;
  } catch {
    return undefined;
  }
}

export function parseCommand(data: Uint8Array): Command | undefined {
  try {
    const parsed = commandSchema.safeParse(JSON.parse(new TextDecoder().decode(data)));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}
