/**
 * Goal: Settle's webhook endpoint accepts only correctly signed, fresh PSP events, records each
 * event once, and writes nothing for anything else. A signed event for an order Settle does not
 * know is kept too (inbox, then a dead letter for an operator), never answered 404 and lost.
 * Method: raw HTTP requests against a real Settle node (real MariaDB, NATS), signatures made with
 * the shared secret (or forged), row counts compared before and after.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HttpErrorBody } from '../../src/grpc/http-status.js';
import { signWebhook } from '../../src/psp/webhook.js';
import {
  call,
  metricSample,
  postWebhook,
  rowCounts,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
let orderId: string;
let orderToken: string;
beforeAll(async () => {
  stack = await startStack();
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-wh',
    currencyCode: 'USD',
    orders: [{ sellerId: 'seller-wh', amountMinor: 1234n }],
  });
  orderId = created.payment?.orders[0]?.orderId ?? '';
  await waitFor(async () => (await rowCounts(stack.settle.db)).outbox === 0);
  orderToken = await waitFor(async () => {
    const row = await stack.settle.db
      .selectFrom('payment_order')
      .select('psp_token')
      .where('id', '=', orderId)
      .executeTakeFirst();
    return row?.psp_token ?? undefined;
  });
});
afterAll(async () => stack?.stop());

const nowS = () => Math.floor(Date.now() / 1000);

function event(overrides: Record<string, unknown> = {}, data: Record<string, unknown> = {}) {
  return JSON.stringify({
    id: `evt_${randomUUID()}`,
    type: 'payment.declined',
    created: nowS(),
    data: {
      nonce: orderId,
      token: orderToken,
      psp_reference: null,
      amount_minor: '1234',
      currency: 'USD',
      decline_code: 'card_declined',
      ...data,
    },
    ...overrides,
  });
}

async function post(body: string | Buffer, signature: string | undefined) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (signature !== undefined) headers['psp-signature'] = signature;
  const response = await fetch(`${stack.settleHttp}/webhooks/psp`, {
    method: 'POST',
    headers,
    body,
  });
  return {
    status: response.status,
    requestId: response.headers.get('x-request-id'),
    body: (await response.json()) as Partial<HttpErrorBody> & { duplicate?: boolean },
  };
}

const secret = () => stack.config.PSP_WEBHOOK_SECRET;

/** The signature of `body`'s bytes (a string as UTF-8, as fetch sends it). */
const sign = (body: string | Buffer, key = secret(), atS = nowS()) =>
  signWebhook(key, Buffer.from(body), atS);

/** `bytes` with the first U+FFFD (EF BF BD) replaced by a lone 0xFF: the same text once decoded. */
function withLoneFf(bytes: Buffer): Buffer {
  const at = bytes.indexOf(Buffer.from([0xef, 0xbf, 0xbd]));
  return Buffer.concat([bytes.subarray(0, at), Buffer.from([0xff]), bytes.subarray(at + 3)]);
}

describe('POST /webhooks/psp rejects', () => {
  const rejected: Array<
    [string, () => { body: string | Buffer; signature: string | undefined }, number, RegExp]
  > = [
    [
      'an unsigned webhook',
      () => ({ body: event(), signature: undefined }),
      400,
      /missing signature header/,
    ],
    [
      'a forged signature',
      () => {
        const body = event();
        return { body, signature: sign(body, 'whsec_not_the_real_secret') };
      },
      400,
      /signature mismatch/,
    ],
    [
      'a body changed after signing',
      () => {
        const body = event();
        return {
          body: body.replace('1234', '9999'),
          signature: sign(body),
        };
      },
      400,
      /signature mismatch/,
    ],
    [
      'a stale timestamp (replay)',
      () => {
        const body = event();
        return { body, signature: sign(body, secret(), nowS() - 301) };
      },
      400,
      /timestamp outside tolerance/,
    ],
    [
      'a malformed header',
      () => ({ body: event(), signature: 'v1=abc' }),
      400,
      /malformed signature header/,
    ],
    [
      'bytes other than those signed that decode to the same text (a lone 0xFF for U+FFFD)',
      () => {
        const signed = Buffer.from(event({ id: `evt_\uFFFD${randomUUID()}`.slice(0, 40) }));
        return { body: withLoneFf(signed), signature: sign(signed) };
      },
      400,
      /signature mismatch/,
    ],
    [
      'a signed body that is not UTF-8',
      () => {
        const bytes = withLoneFf(
          Buffer.from(event({ id: `evt_\uFFFD${randomUUID()}`.slice(0, 40) })),
        );
        return { body: bytes, signature: sign(bytes) };
      },
      400,
      /not UTF-8/,
    ],
    [
      'a signed non-JSON body',
      () => ({ body: 'not json', signature: sign('not json') }),
      400,
      /not JSON/,
    ],
    [
      // JSON.parse keeps the last "type"; another reader could take the first.
      'a signed event with a key sent twice',
      () => {
        const body = event().replace(/^\{/, '{"type":"payment.succeeded",');
        return { body, signature: sign(body) };
      },
      400,
      /^type: appears twice in one object; the event is ambiguous and was not applied$/,
    ],
    [
      'a signed body that is not an event',
      () => {
        const body = JSON.stringify({ hello: 'world' });
        return { body, signature: sign(body) };
      },
      400,
      /not a PSP event/,
    ],
    [
      // Not shaped like an id Settle issues: meant for another system (a misrouted notification
      // URL), which the PSP should see refused.
      'an event whose nonce is not a Settle order id',
      () => {
        const body = event({}, { nonce: 'order-12345' });
        return { body, signature: sign(body) };
      },
      404,
      /payment order 'order-12345' not found/,
    ],
  ];

  it.each(rejected)('%s, writing nothing', async (_name, make, status, message) => {
    const before = await rowCounts(stack.settle.db);
    const { body, signature } = make();
    const response = await post(body, signature);
    expect(response.status).toBe(status);
    expect(response.body.error?.message).toMatch(message);
    // The REST twin's error body, with the exchange's x-request-id.
    expect(response.body.error).toEqual({
      code: expect.stringMatching(/^[A-Z_]+$/) as string,
      reason: expect.stringMatching(/^[A-Z][A-Z0-9_]*$/) as string,
      message: expect.any(String) as string,
      retryable: false,
      correlation_id: response.requestId,
    });
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it.each<[string, string, string]>([
    ['an unsigned webhook', 'UNAUTHENTICATED', 'SIGNATURE_REJECTED'],
    ['a signed non-JSON body', 'INVALID_ARGUMENT', 'MALFORMED_JSON'],
    ['a signed event with a key sent twice', 'INVALID_ARGUMENT', 'MALFORMED_JSON'],
    ['a signed body that is not an event', 'INVALID_ARGUMENT', 'NOT_A_PSP_EVENT'],
    ['a signed body that is not UTF-8', 'INVALID_ARGUMENT', 'NOT_UTF8'],
    ['an event whose nonce is not a Settle order id', 'NOT_FOUND', 'NOT_FOUND'],
  ])('%s with code %s and reason %s', async (name, code, reason) => {
    const { body, signature } = (rejected.find(([n]) => n === name) ?? [])[1]?.() ?? {
      body: '',
      signature: undefined,
    };
    const response = await post(body, signature);
    expect(response.body.error).toMatchObject({ code, reason });
  });

  // A wrong PSP_WEBHOOK_SECRET rejects every webhook: the counter is what an alert can see.
  it.each<[string, string]>([
    ['an unsigned webhook', 'SIGNATURE_REJECTED'],
    ['a forged signature', 'SIGNATURE_REJECTED'],
    ['a signed non-JSON body', 'MALFORMED_JSON'],
    ['a signed event with a key sent twice', 'MALFORMED_JSON'],
    ['a signed body that is not an event', 'NOT_A_PSP_EVENT'],
    ['a signed body that is not UTF-8', 'NOT_UTF8'],
    ['an event whose nonce is not a Settle order id', 'UNKNOWN_ORDER_ID'],
  ])('%s counts once in settle_webhooks_rejected_total{rejection=%s}', async (name, rejection) => {
    const rejections = async () =>
      metricSample(await scrapeMetrics(stack.settleHttp), 'settle_webhooks_rejected_total', {
        rejection,
      });
    const before = await rejections();
    expect(before).toBeTypeOf('number');
    const { body, signature } = (rejected.find(([n]) => n === name) ?? [])[1]?.() ?? {
      body: '',
      signature: undefined,
    };
    await post(body, signature);
    expect(await rejections()).toBe((before ?? 0) + 1);
  });

  it('an oversized body with 413, RESOURCE_EXHAUSTED and BODY_TOO_LARGE', async () => {
    const body = event({ padding: 'x'.repeat(70 * 1024) });
    const response = await post(body, sign(body));
    expect(response.status).toBe(413);
    expect(response.body.error).toEqual({
      code: 'RESOURCE_EXHAUSTED',
      reason: 'BODY_TOO_LARGE',
      message: `body larger than ${64 * 1024} bytes`,
      retryable: false,
      correlation_id: response.requestId,
    });
  });
});

describe('POST /webhooks/psp accepts', () => {
  it('a signed event once, and its duplicates as duplicates', async () => {
    const body = event();
    const first = await postWebhook(stack, body);
    expect(first).toEqual({ status: 200, body: { received: true, duplicate: false } });
    const again = await postWebhook(stack, body);
    expect(again).toEqual({ status: 200, body: { received: true, duplicate: true } });
    const payment = await waitFor(async () => {
      const counts = await rowCounts(stack.settle.db);
      return counts.inbox === 1 ? counts : undefined;
    });
    expect(payment.inbox).toBe(1);
  });

  it('a signed event of a type Settle does not handle: 200 and ignored, writing nothing', async () => {
    // A PSP adds event types (refunds, disputes); any answer but a 2xx would have it retry each
    // one for days, and a real PSP disables an endpoint that keeps failing.
    const before = await rowCounts(stack.settle.db);
    const body = event({ type: 'payment.refunded' });
    expect(await postWebhook(stack, body)).toEqual({
      status: 200,
      body: { received: true, duplicate: false, ignored: true },
    });
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it('an event for an order Settle does not know: kept, answered 200, dead-lettered for review', async () => {
    const unknownId = `ord_${'7'.repeat(26)}`;
    const body = event(
      { type: 'payment.succeeded' },
      {
        nonce: unknownId,
        psp_reference: 'psp_unknown_order',
        decline_code: null,
      },
    );
    const eventId = (JSON.parse(body) as { id: string }).id;
    expect(await postWebhook(stack, body)).toEqual({
      status: 200,
      body: { received: true, duplicate: false },
    });
    // The PSP's retry of it is a duplicate: recorded once.
    expect(await postWebhook(stack, body)).toEqual({
      status: 200,
      body: { received: true, duplicate: true },
    });
    const inbox = await stack.settle.db
      .selectFrom('inbox')
      .select('order_id')
      .where('event_id', '=', eventId)
      .execute();
    expect(inbox).toEqual([{ order_id: unknownId }]);
    const dead = await waitFor(async () =>
      stack.settle.db
        .selectFrom('dead_letter')
        .select(['reason', 'last_error', 'payload', 'state'])
        .where('order_id', '=', unknownId)
        .executeTakeFirst(),
    );
    expect(dead.reason).toBe('NON_RETRYABLE');
    expect(dead.state).toBe('OPEN');
    expect(dead.last_error).toMatch(
      new RegExp(`the PSP reports a charge for payment order ${unknownId}, which does not exist`),
    );
    expect(JSON.parse(dead.payload)).toMatchObject({
      type: 'PspResult',
      eventId,
      outcome: 'SUCCEEDED',
      pspReference: 'psp_unknown_order',
      amountMinor: '1234',
    });
  });
});

describe('POST /webhooks/psp bounds the PSP token as payment_order.psp_token does (128)', () => {
  /** A new order, registered at the PSP, whose stored token is then made `length` long. */
  async function orderWithTokenOf(
    length: number,
    filler = 't',
  ): Promise<{ id: string; token: string }> {
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-wh-long-token',
      currencyCode: 'USD',
      orders: [{ sellerId: `seller-${randomUUID()}`, amountMinor: 1234n }],
    });
    const id = created.payment?.orders[0]?.orderId ?? '';
    await waitFor(async () => {
      const row = await stack.settle.db
        .selectFrom('payment_order')
        .select('psp_token')
        .where('id', '=', id)
        .executeTakeFirst();
      return row?.psp_token ?? undefined;
    });
    // A PSP whose tokens are longer than the mock's (the column and the client take 128).
    const token = `tok_${filler.repeat(length - 4)}`;
    await stack.settle.db
      .updateTable('payment_order')
      .set({ psp_token: token })
      .where('id', '=', id)
      .execute();
    return { id, token };
  }

  it.each([
    ['100 characters', 't'],
    // 196 UTF-16 units: the column counts characters, and so must the webhook.
    ['100 characters, 96 of them outside the BMP', '\u{1F600}'],
  ])('accepts and applies a decline for an order whose token has %s', async (_name, filler) => {
    const order = await orderWithTokenOf(100, filler);
    const body = event({}, { nonce: order.id, token: order.token });
    expect(await postWebhook(stack, body)).toMatchObject({ status: 200 });
    const state = await waitFor(async () => {
      const row = await stack.settle.db
        .selectFrom('payment_order')
        .select('state')
        .where('id', '=', order.id)
        .executeTakeFirst();
      return row?.state === 'FAILED' ? row.state : undefined;
    });
    expect(state).toBe('FAILED');
  });

  it('refuses a token of 129 characters with 400 naming the field and the limit, writing nothing', async () => {
    const before = await rowCounts(stack.settle.db);
    const body = event({}, { token: `tok_${'t'.repeat(125)}` });
    const response = await post(body, sign(body));
    expect(response.status).toBe(400);
    expect(response.body.error).toMatchObject({
      code: 'INVALID_ARGUMENT',
      reason: 'NOT_A_PSP_EVENT',
    });
    expect(response.body.error?.message).toMatch(/data\.token: .*128/);
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });
});

describe('POST /webhooks/psp during a secret rotation (PSP_WEBHOOK_SECRET_PREVIOUS)', () => {
  const previous = 'whsec_rotating_out_0123456789';
  let rotating: Stack;
  beforeAll(async () => {
    rotating = await startStack({
      env: {
        PSP_WEBHOOK_SECRET: 'whsec_rotating_in_9876543210',
        PSP_WEBHOOK_SECRET_PREVIOUS: previous,
      },
    });
  });
  afterAll(async () => rotating?.stop());

  it('applies an event signed with the previous secret and refuses one signed with neither', async () => {
    const created = await call(rotating.payments.createPayment.bind(rotating.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-rotation',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-rotation', amountMinor: 500n }],
    });
    const id = created.payment?.orders[0]?.orderId ?? '';
    const token = await waitFor(async () => {
      const row = await rotating.settle.db
        .selectFrom('payment_order')
        .select('psp_token')
        .where('id', '=', id)
        .executeTakeFirst();
      return row?.psp_token ?? undefined;
    });
    const declined = JSON.stringify({
      id: `evt_${randomUUID()}`,
      type: 'payment.declined',
      created: nowS(),
      data: {
        nonce: id,
        token,
        psp_reference: null,
        amount_minor: '500',
        currency: 'USD',
        decline_code: 'card_declined',
      },
    });
    const send = async (key: string) => {
      const response = await fetch(`${rotating.settleHttp}/webhooks/psp`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'psp-signature': signWebhook(key, Buffer.from(declined), nowS()),
        },
        body: declined,
        signal: AbortSignal.timeout(10_000),
      });
      return response.status;
    };
    const before = await rowCounts(rotating.settle.db);
    expect(await send('whsec_neither_of_the_two_000')).toBe(400);
    expect(await rowCounts(rotating.settle.db)).toEqual(before);

    expect(await send(previous)).toBe(200);
    await waitFor(
      async () =>
        (
          await rotating.settle.db
            .selectFrom('payment_order')
            .select('state')
            .where('id', '=', id)
            .executeTakeFirst()
        )?.state === 'FAILED',
      { what: 'the order failed by the event signed with the previous secret' },
    );
  });
});
