/**
 * Goal: the REST twin (POST/GET /v1/payments) is the same API as gRPC PaymentService: the same
 * PaymentService behind it (a payment created over REST is the one gRPC returns and vice versa),
 * the same validation messages, `Idempotency-Key` as request_id with the same idempotency rules,
 * HTTP statuses derived from the gRPC code in one table, amounts as strings, and a rejected
 * request writes nothing. Method: a real stack (PSP mock + Settle on MariaDB and NATS); fetch for
 * REST, the generated gRPC client for the other side; row counts before and after rejections.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpStatusOf } from '../../src/grpc/http-status.js';
import {
  call,
  callError,
  expectMoneyInvariants,
  rowCounts,
  startStack,
  type Stack,
} from '../support/harness.js';
import type { HttpErrorBody } from '../../src/grpc/http-status.js';

let stack: Stack;

beforeAll(async () => {
  stack = await startStack({ env: { CREATE_WAIT_MS: '2000' } });
});
afterAll(async () => stack?.stop());

/** The body of an error answer, as the twin declares it. */
type RestError = HttpErrorBody;
type PaymentJson = {
  paymentId: string;
  requestId: string;
  amountMinor: string;
  state: string;
  orders: Array<{ orderId: string; amountMinor: string }>;
};
/** Any answer of the twin: a payment, a page of payments, or an error. */
type Body = RestError & {
  payment: PaymentJson;
  payments?: PaymentJson[];
  nextPageToken?: string;
};

async function post(body: unknown, key: string | undefined, contentType = 'application/json') {
  const response = await fetch(`${stack.settleHttp}/v1/payments`, {
    method: 'POST',
    headers: {
      'content-type': contentType,
      ...(key !== undefined ? { 'idempotency-key': key } : {}),
    },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return {
    status: response.status,
    headers: response.headers,
    body: (await response.json()) as Body,
  };
}

async function get(path: string) {
  const response = await fetch(`${stack.settleHttp}${path}`, {
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, body: (await response.json()) as Body };
}

const ORDERS = [
  { seller_id: 'seller-rest-a', amount_minor: '1999' },
  { seller_id: 'seller-rest-b', amount_minor: '500' },
];

describe('REST twin of PaymentService', () => {
  it('creates a payment with Idempotency-Key as request_id; gRPC GetPayment returns the same payment', async () => {
    const key = randomUUID();
    const created = await post(
      { buyer_id: 'buyer-rest', currency_code: 'USD', orders: ORDERS },
      key,
    );
    expect(created.status).toBe(200);
    const payment = created.body.payment;
    expect(payment.paymentId).toMatch(/^pay_[0-9A-Z]{26}$/);
    expect(payment.requestId).toBe(key);
    // int64 amounts are decimal strings, enums their names (proto3 JSON).
    expect(payment.amountMinor).toBe('2499');
    expect(payment.orders.map((o) => o.amountMinor)).toEqual(['1999', '500']);
    expect(payment.state).toMatch(/^PAYMENT_STATE_/);
    expect(created.headers.get('location')).toBe(`/v1/payments/${payment.paymentId}`);
    expect(created.headers.get('x-request-id')).toBeTruthy();

    const viaGrpc = await call(stack.payments.getPayment.bind(stack.payments), {
      paymentId: payment.paymentId,
    });
    expect(viaGrpc.payment?.requestId).toBe(key);
    expect(viaGrpc.payment?.amountMinor).toBe(2499n);

    const viaRest = await get(`/v1/payments/${payment.paymentId}`);
    expect(viaRest.status).toBe(200);
    expect(viaRest.body.payment.paymentId).toBe(payment.paymentId);
    expect(viaRest.body.payment.orders).toHaveLength(2);
  });

  it('returns the first payment for the same key and body, and 409 ALREADY_EXISTS for another body', async () => {
    const key = randomUUID();
    const body = { buyerId: 'buyer-rest-idem', currencyCode: 'USD', orders: [ORDERS[0]] };
    const first = await post(body, key);
    const again = await post(body, key);
    expect(again.status).toBe(200);
    expect(again.body.payment.paymentId).toBe(first.body.payment.paymentId);

    const before = await rowCounts(stack.settle.db);
    const other = await post(
      { ...body, orders: [{ seller_id: 'seller-rest-a', amount_minor: '2000' }] },
      key,
    );
    expect(other.status).toBe(409);
    expect(other.body.error).toMatchObject({
      code: 'ALREADY_EXISTS',
      reason: 'ALREADY_EXISTS',
      retryable: false,
    });
    expect(other.body.error.message).toContain(`request_id ${key} was already used`);
    expect(await rowCounts(stack.settle.db)).toEqual(before);

    // The same key used over gRPC is the same idempotency key.
    const grpcError = await callError(stack.payments.createPayment.bind(stack.payments), {
      requestId: key,
      buyerId: 'buyer-rest-idem',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-rest-a', amountMinor: 2000n }],
    });
    expect(grpcError.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(grpcError.details).toBe(other.body.error.message);
  });

  it('rejects bad input with 400 and the same message gRPC gives, writing nothing', async () => {
    const before = await rowCounts(stack.settle.db);
    const bad = {
      buyer_id: 'buyer-rest',
      currency_code: 'USD',
      orders: [
        { seller_id: 'seller-x', amount_minor: '100' },
        { seller_id: 'seller-y', amount_minor: '0' },
      ],
    };
    const key = randomUUID();
    const rest = await post(bad, key);
    expect(rest.status).toBe(400);
    expect(rest.body.error.code).toBe('INVALID_ARGUMENT');
    expect(rest.body.error.message).toBe(
      'orders[1].amount_minor: amount_minor must be greater than 0 (minor units, e.g. cents)',
    );
    const viaGrpc = await callError(stack.payments.createPayment.bind(stack.payments), {
      requestId: key,
      buyerId: 'buyer-rest',
      currencyCode: 'USD',
      orders: [
        { sellerId: 'seller-x', amountMinor: 100n },
        { sellerId: 'seller-y', amountMinor: 0n },
      ],
    });
    expect(viaGrpc.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(viaGrpc.details).toBe(rest.body.error.message);

    // The body's id is the exchange's x-request-id, named so it is not taken for the request_id
    // (the idempotency key) the caller sent.
    expect(rest.body.error.correlation_id).toBe(rest.headers.get('x-request-id'));
    expect(rest.body.error.correlation_id).not.toBe(key);
    expect(rest.body.error).not.toHaveProperty('request_id');

    const missingKey = await post(bad, undefined);
    expect(missingKey.status).toBe(400);
    expect(missingKey.body.error.reason).toBe('MISSING_IDEMPOTENCY_KEY');
    expect(missingKey.body.error.message).toMatch(/^Idempotency-Key: header is required/);

    const mismatch = await post({ ...bad, request_id: randomUUID() }, key);
    expect(mismatch.body.error.reason).toBe('IDEMPOTENCY_KEY_MISMATCH');

    const notJson = await post('{"buyer_id": ', randomUUID());
    expect(notJson.status).toBe(400);
    expect(notJson.body.error.reason).toBe('MALFORMED_JSON');

    const textBody = await post('buyer=1', randomUUID(), 'text/plain');
    expect(textBody.status).toBe(400);
    expect(textBody.body.error.reason).toBe('NOT_JSON');

    const floatAmount = await post(
      { buyer_id: 'b', currency_code: 'USD', orders: [{ seller_id: 's', amount_minor: 19.99 }] },
      randomUUID(),
    );
    expect(floatAmount.status).toBe(400);
    expect(floatAmount.body.error.message).toContain('orders[0].amount_minor');

    const tooBig = await post({ buyer_id: 'b', pad: 'x'.repeat(70 * 1024) }, randomUUID());
    expect(tooBig.status).toBe(413);
    expect(tooBig.body.error).toMatchObject({
      code: 'RESOURCE_EXHAUSTED',
      reason: 'BODY_TOO_LARGE',
    });

    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  const order = (fields: Record<string, unknown>) => ({
    buyer_id: 'buyer-rest',
    currency_code: 'USD',
    orders: [{ seller_id: 'seller-x', ...fields }],
  });
  it.each<[string, unknown, string]>([
    [
      'no amount_minor',
      order({}),
      'orders[0].amount_minor: amount_minor is required: a whole number of minor units greater ' +
        'than 0, e.g. "1999" for $19.99',
    ],
    [
      'a null amount_minor',
      order({ amount_minor: null }),
      'orders[0].amount_minor: amount_minor is required: a whole number of minor units greater ' +
        'than 0, e.g. "1999" for $19.99',
    ],
    [
      'a decimal-point amount string',
      order({ amount_minor: '19.99' }),
      'orders[0].amount_minor: amount_minor must be a whole number of minor units as a decimal ' +
        'string, e.g. "1999" for $19.99',
    ],
    // Whole minor units past int64: out of range, not "not a whole number", however long.
    [
      'an amount string past int64',
      order({ amount_minor: '9223372036854775808' }),
      'orders[0].amount_minor: amount_minor must be at most 1000000000000',
    ],
    [
      'an amount string of 20 digits',
      order({ amount_minor: '99999999999999999999' }),
      'orders[0].amount_minor: amount_minor must be at most 1000000000000',
    ],
    [
      'an amount string of 20 zeros',
      order({ amount_minor: '00000000000000000000' }),
      'orders[0].amount_minor: amount_minor must be greater than 0 (minor units, e.g. cents)',
    ],
    [
      'an amount string of 1 with 20 leading zeros',
      order({ amount_minor: '000000000000000000001' }),
      'orders[0].amount_minor: amount_minor has more than 19 digits: write it without leading zeros',
    ],
    [
      'a negative amount string of 20 digits',
      order({ amount_minor: '-99999999999999999999' }),
      'orders[0].amount_minor: amount_minor must be greater than 0 (minor units, e.g. cents)',
    ],
    [
      'a fractional amount number',
      order({ amount_minor: 19.99 }),
      'orders[0].amount_minor: amount_minor must be whole minor units, not a fraction, ' +
        'e.g. "1999" for $19.99',
    ],
    [
      'an amount above 2^53 as a number',
      order({ amount_minor: 2 ** 60 }),
      'orders[0].amount_minor: amount_minor is too large for a JSON number; send it as a ' +
        'decimal string',
    ],
    [
      'a boolean amount',
      order({ amount_minor: true }),
      'orders[0].amount_minor: amount_minor must be a decimal string of minor units, ' +
        'e.g. "1999" for $19.99',
    ],
    // Missing strings are '' as in proto3, so the shared validation names them as gRPC does.
    [
      'no seller_id',
      { buyer_id: 'b', currency_code: 'USD', orders: [{ amount_minor: '1' }] },
      'orders[0].seller_id: seller_id is required',
    ],
    [
      'a numeric seller_id',
      order({ seller_id: 7, amount_minor: '1' }),
      'orders[0].seller_id: seller_id must be a string',
    ],
    [
      'no buyer_id',
      { currency_code: 'USD', orders: [{ seller_id: 's', amount_minor: '1' }] },
      'buyer_id: buyer_id is required',
    ],
    [
      'a numeric buyer_id',
      { buyer_id: 5, currency_code: 'USD', orders: [{ seller_id: 's', amount_minor: '1' }] },
      'buyer_id: buyer_id must be a string',
    ],
    [
      'no currency_code',
      { buyer_id: 'b', orders: [{ seller_id: 's', amount_minor: '1' }] },
      'currency_code: currency_code is required',
    ],
    [
      'no orders',
      { buyer_id: 'b', currency_code: 'USD' },
      'orders: at least one order is required',
    ],
    [
      'orders as an object',
      { buyer_id: 'b', currency_code: 'USD', orders: { seller_id: 's', amount_minor: '1' } },
      'orders: orders must be a list of objects with seller_id and amount_minor',
    ],
    [
      'an order that is a string',
      { buyer_id: 'b', currency_code: 'USD', orders: ['s:1'] },
      'orders[0]: each order must be an object with seller_id and amount_minor',
    ],
    // JSON.parse makes "__proto__" an own key; copied by assignment into a plain object, it set
    // that object's prototype, and buyer_id was then read from it (a payment for buyer x).
    [
      'a __proto__ key',
      '{"__proto__":{"buyer_id":"x"},"currency_code":"USD",' +
        '"orders":[{"seller_id":"s","amount_minor":"1"}]}',
      '__proto__: is not a field of this request',
    ],
    [
      'a __proto__ key in an order',
      '{"buyer_id":"b","currency_code":"USD",' +
        '"orders":[{"__proto__":{"seller_id":"s"},"amount_minor":"1"}]}',
      'orders[0].__proto__: is not a field of this request',
    ],
    [
      'a constructor key',
      { constructor: 'x', buyer_id: 'b', currency_code: 'USD', orders: [] },
      'constructor: is not a field of this request',
    ],
    [
      'a field sent under both of its names',
      {
        buyer_id: 'buyer-a',
        buyerId: 'buyer-b',
        currency_code: 'USD',
        orders: [{ seller_id: 's', amount_minor: '1' }],
      },
      'buyer_id: sent twice, as buyer_id and buyerId; send it once',
    ],
    [
      'an order field sent under both of its names',
      {
        buyer_id: 'b',
        currency_code: 'USD',
        orders: [{ sellerId: 's1', seller_id: 's2', amount_minor: '1' }],
      },
      'orders[0].seller_id: sent twice, as sellerId and seller_id; send it once',
    ],
    [
      'an order amount sent twice under one name (JSON.parse would keep the last)',
      '{"buyer_id":"b","currency_code":"USD",' +
        '"orders":[{"seller_id":"s","amount_minor":"1","amount_minor":"100000"}]}',
      'orders[0].amount_minor: is sent twice in one object; send each field once',
    ],
    [
      'a key sent twice, once escaped',
      '{"buyer_id":"a","\\u0062uyer_id":"b","currency_code":"USD",' +
        '"orders":[{"seller_id":"s","amount_minor":"1"}]}',
      'buyer_id: is sent twice in one object; send each field once',
    ],
  ])('refuses a body with %s, saying what to send', async (_name, body, message) => {
    const before = await rowCounts(stack.settle.db);
    const rest = await post(body, randomUUID());
    expect(rest.status).toBe(400);
    expect(rest.body.error.code).toBe('INVALID_ARGUMENT');
    expect(rest.body.error.message).toBe(message);
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it('answers 404 NOT_FOUND and 400 for a malformed id, like GetPayment', async () => {
    const missing = await get('/v1/payments/pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G');
    expect(missing.status).toBe(404);
    expect(missing.body.error).toMatchObject({
      code: 'NOT_FOUND',
      message: "payment 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G' not found",
    });
    const malformed = await get('/v1/payments/nope');
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('INVALID_ARGUMENT');
  });

  it('lists with the same paging and filters as ListPayments', async () => {
    const buyer = `buyer-list-${randomUUID().slice(0, 8)}`;
    const ids: string[] = [];
    for (let i = 0; i < 3; i += 1) {
      const created = await post(
        {
          buyer_id: buyer,
          currency_code: 'USD',
          orders: [{ seller_id: 'seller-list', amount_minor: `${100 + i}` }],
        },
        randomUUID(),
      );
      ids.push(created.body.payment.paymentId);
    }
    const first = await get(`/v1/payments?buyer_id=${buyer}&page_size=2`);
    expect(first.status).toBe(200);
    expect((first.body.payments ?? []).map((p) => p.paymentId)).toEqual([ids[2], ids[1]]);
    expect(first.body.nextPageToken).toBeTruthy();
    const second = await get(
      `/v1/payments?buyer_id=${buyer}&page_size=2&page_token=${encodeURIComponent(first.body.nextPageToken ?? '')}`,
    );
    expect((second.body.payments ?? []).map((p) => p.paymentId)).toEqual([ids[0]]);
    expect(second.body.nextPageToken ?? '').toBe('');

    const viaGrpc = await call(stack.payments.listPayments.bind(stack.payments), {
      pageSize: 2,
      pageToken: '',
      state: 0,
      buyerId: buyer,
    });
    expect(viaGrpc.nextPageToken).toBe(first.body.nextPageToken);

    const byState = await get(`/v1/payments?buyer_id=${buyer}&state=FAILED`);
    expect(byState.body.payments ?? []).toEqual([]);
    const badState = await get('/v1/payments?state=LOST');
    expect(badState.status).toBe(400);
    expect(badState.body.error.message).toContain("unknown payment state 'LOST'");
    const badToken = await get(
      `/v1/payments?buyer_id=other&page_token=${encodeURIComponent(first.body.nextPageToken ?? '')}`,
    );
    expect(badToken.status).toBe(400);
    expect(badToken.body.error.message).toMatch(/^page_token: /);
  });

  it('answers a path with another method 405, with the same error body and x-request-id', async () => {
    const response = await fetch(`${stack.settleHttp}/v1/payments`, {
      method: 'DELETE',
      headers: { 'x-request-id': 'req-delete-1' },
      signal: AbortSignal.timeout(10_000),
    });
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('POST, GET, HEAD');
    expect(response.headers.get('x-request-id')).toBe('req-delete-1');
    expect(await response.json()).toEqual({
      error: {
        code: 'UNIMPLEMENTED',
        reason: 'METHOD_NOT_ALLOWED',
        message: '/v1/payments takes POST, GET, HEAD, not DELETE',
        retryable: false,
        correlation_id: 'req-delete-1',
      },
    });
  });

  it('maps every gRPC code to its HTTP status in one table', () => {
    expect(
      [
        grpc.status.INVALID_ARGUMENT,
        grpc.status.NOT_FOUND,
        grpc.status.ALREADY_EXISTS,
        grpc.status.ABORTED,
        grpc.status.FAILED_PRECONDITION,
        grpc.status.UNAUTHENTICATED,
        grpc.status.RESOURCE_EXHAUSTED,
        grpc.status.UNAVAILABLE,
        grpc.status.INTERNAL,
      ].map(httpStatusOf),
    ).toEqual([400, 404, 409, 409, 409, 401, 429, 503, 500]);
  });

  it('leaves the money invariants intact', async () => {
    await expectMoneyInvariants(stack.settle.db);
  });
});
