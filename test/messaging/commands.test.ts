/**
 * Goal: a PspResult command carries the PSP's token and currency into the order's event, and one
 * written before they were carried (still in the outbox or the stream across an upgrade) parses
 * and applies as before; a command naming an order id longer than an order id is malformed. Method: the payloads as JSON, through parseCommand and commandToEvent,
 * then the pure machine.
 */
import { describe, expect, it } from 'vitest';
import { transition, type PaymentOrder } from '../../src/actors/payment-order/machine.js';
import { commandToEvent } from '../../src/app.js';
import { parseCommand, pspResultMessage } from '../../src/messaging/commands.js';
import { names } from '../../src/messaging/subjects.js';

const orderId = 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G';
const order: PaymentOrder = {
  id: orderId,
  paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
  sellerId: 'seller-1',
  amountMinor: 500n,
  currency: 'USD',
  state: 'EXECUTING',
  version: 2n,
  pspToken: 'tok_A',
  checkoutUrl: 'http://psp/pay/tok_A',
  pspReference: undefined,
  failureReason: undefined,
  attempts: 1,
  reviewReason: undefined,
  createdAt: new Date('2026-01-01T00:00:00.000Z'),
  updatedAt: new Date('2026-01-01T00:00:00.000Z'),
};
const now = new Date('2026-01-01T00:01:00.000Z');

/** The event a payload becomes, as the consumer and the webhook's fast way make it. */
function eventOf(payload: string) {
  const command = parseCommand(new TextEncoder().encode(payload));
  if (command === undefined) throw new Error(`not a command: ${payload}`);
  return commandToEvent(command);
}

describe('PspResult commands', () => {
  it("carry the PSP's token and currency into the event, where the machine compares them", () => {
    const message = pspResultMessage(names('t', 4), {
      orderId,
      eventId: 'evt_1',
      outcome: 'SUCCEEDED',
      pspReference: 'psp_1',
      amountMinor: '500',
      declineCode: null,
      token: 'tok_B',
      currency: 'USD',
    });
    const event = eventOf(message.payload);
    expect(event).toMatchObject({ type: 'PspSucceeded', token: 'tok_B', currency: 'USD' });
    const result = transition(order, event, now);
    expect(result.ok).toBe(false);
  });

  it('written before token and currency were carried, still parse and apply', () => {
    for (const [outcome, state] of [
      ['SUCCEEDED', 'SUCCEEDED'],
      ['DECLINED', 'FAILED'],
    ] as const) {
      const event = eventOf(
        JSON.stringify({
          type: 'PspResult',
          orderId,
          eventId: 'evt_old',
          outcome,
          pspReference: outcome === 'SUCCEEDED' ? 'psp_old' : null,
          amountMinor: '500',
          declineCode: outcome === 'DECLINED' ? 'card_declined' : null,
        }),
      );
      expect(event).not.toHaveProperty('token');
      expect(event).not.toHaveProperty('currency');
      const result = transition(order, event, now);
      expect(result.ok && result.order.state).toBe(state);
    }
  });
});

describe('the order a command names', () => {
  const encode = (command: object) => new TextEncoder().encode(JSON.stringify(command));

  it('is no longer than an order id, the size of the columns that hold one', () => {
    for (const type of ['ExecuteOrder', 'ExpireOrder', 'CheckOrderStatus']) {
      expect(parseCommand(encode({ type, orderId }))).toEqual({ type, orderId });
      expect(parseCommand(encode({ type, orderId: `${orderId}X` }))).toBeUndefined();
    }
    const charge = {
      type: 'PspResult',
      eventId: 'evt_1',
      outcome: 'SUCCEEDED',
      pspReference: 'psp_1',
      amountMinor: '500',
      declineCode: null,
    };
    expect(parseCommand(encode({ ...charge, orderId }))).toBeDefined();
    expect(parseCommand(encode({ ...charge, orderId: `ord_${'7'.repeat(200)}` }))).toBeUndefined();
  });
});

describe('the amount of a PspResult', () => {
  const encode = (command: object) => new TextEncoder().encode(JSON.stringify(command));
  const charge = (amountMinor: string) =>
    encode({
      type: 'PspResult',
      orderId,
      eventId: 'evt_1',
      outcome: 'SUCCEEDED',
      pspReference: 'psp_1',
      amountMinor,
      declineCode: null,
    });

  it('fits an int64, the BIGINT it is booked in; past it the command is malformed', () => {
    expect(parseCommand(charge('9223372036854775807'))).toMatchObject({
      amountMinor: '9223372036854775807',
    });
    expect(parseCommand(charge('0500'))).toMatchObject({ amountMinor: '0500' });
    // Malformed: the consumer dead-letters it at once (MALFORMED_COMMAND), as any other.
    for (const amountMinor of ['9223372036854775808', '9999999999999999999', '-1', '1e3']) {
      expect(parseCommand(charge(amountMinor)), amountMinor).toBeUndefined();
    }
  });
});
