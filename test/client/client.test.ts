/**
 * Goal: the typed client (src/client) sends what the caller wrote: a field left out is its proto3
 * default (not the text "undefined" nor an encoding failure), an int64 amount may be a number
 * when it is a safe integer, and anything it cannot encode is refused before it is sent, with a
 * message naming the field; so is metadata too large for gRPC servers to take. Method: createSettleClient against a real node (startStack: MariaDB,
 * NATS, the PSP mock), asserting the server's status code and message for each request.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CALL_METADATA_BYTES_MAX,
  createSettleClient,
  type SettleClient,
} from '../../src/client/index.js';
import { rowCounts, startStack, type Stack } from '../support/harness.js';

let stack: Stack;
let client: SettleClient;
beforeAll(async () => {
  stack = await startStack();
  client = createSettleClient(`127.0.0.1:${stack.settle.grpcPort}`, { defaultTimeoutMs: 10_000 });
});
afterAll(async () => {
  client?.close();
  await stack?.stop();
});

async function failure(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
}

describe('typed client', () => {
  it('sends an omitted seller_id as empty, so the server names the missing field', async () => {
    const error = await failure(client.wallets.getWallet({}));
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.details).toBe('seller_id: seller_id is required');
  });

  it('lists payments with only buyer_id given (page size, token and state default)', async () => {
    const buyerId = `buyer-${randomUUID().slice(0, 8)}`;
    const { payment } = await client.payments.createPayment({
      requestId: randomUUID(),
      buyerId,
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-1', amountMinor: 100n }],
    });
    const listed = await client.payments.listPayments({ buyerId });
    expect(listed.payments.map((p) => p.paymentId)).toEqual([payment?.paymentId]);
    expect(listed.nextPageToken).toBe('');
  });

  it('accepts a safe-integer number for an int64 amount and answers a bigint', async () => {
    const { payment } = await client.payments.createPayment({
      requestId: randomUUID(),
      buyerId: 'buyer-1',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-1', amountMinor: 1999 }],
    });
    expect(payment?.amountMinor).toBe(1999n);
    expect(payment?.orders[0]?.amountMinor).toBe(1999n);
  });

  it.each([
    [2 ** 53 + 2, /orders\[0\]\.amountMinor: 9007199254740994 is not a safe integer/],
    [19.99, /orders\[0\]\.amountMinor: 19\.99 is not a safe integer/],
    ['19.99', /^CreatePaymentRequest: Cannot convert 19\.99 to a BigInt/],
    // BigInt() reads these, as 2000 and 12: no caller means them as amounts.
    ['0x7D0', /^CreatePaymentRequest\.orders\[0\]\.amountMinor: '0x7D0' is not a decimal integer$/],
    [' 12', /^CreatePaymentRequest\.orders\[0\]\.amountMinor: ' 12' is not a decimal integer$/],
    [
      '9999999999999999999',
      /^CreatePaymentRequest\.orders\[0\]\.amountMinor: 9999999999999999999 does not fit an int64$/,
    ],
  ])('refuses amount %j before sending anything', async (amountMinor, message) => {
    const before = await rowCounts(stack.settle.db);
    const error = await failure(
      client.payments.createPayment({
        requestId: randomUUID(),
        buyerId: 'buyer-1',
        currencyCode: 'USD',
        orders: [{ sellerId: 'seller-1', amountMinor }],
      }),
    );
    expect(error).toBeInstanceOf(TypeError);
    expect(error.message).toMatch(message);
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });
  it('refuses a metadata value no header can carry, naming the key and never the value', async () => {
    // grpc-js refused it deep in the call, quoting the whole "Bearer <token>" in its error.
    for (const secret of ['s3cr3t-admin-token-0123456789\r', 's3cr3t-admin-tøken-0123456789']) {
      const error = await failure(
        client.admin.listDeadLetters({}, { metadata: { authorization: `Bearer ${secret}` } }),
      );
      expect(error).toBeInstanceOf(TypeError);
      expect(error.message).toBe(
        "ListDeadLettersRequest: the value of metadata 'authorization' must be printable ASCII",
      );
      expect(error.message).not.toContain('s3cr3t');
    }
  });

  it('refuses metadata over CALL_METADATA_BYTES_MAX with a TypeError, and sends what fits', async () => {
    // About 200 KB: sent, the server's HTTP/2 layer reset the stream before grpc-js saw the call,
    // and the caller got INTERNAL "Received RST_STREAM with code 9".
    const error = await failure(
      client.ledger.getTrialBalance({}, { metadata: { 'x-note': 'a'.repeat(200_000) } }),
    );
    expect(error).toBeInstanceOf(TypeError);
    expect(error.message).toBe(
      'GetTrialBalanceRequest: metadata of 200038 bytes is over the 8192 a call may carry ' +
        '(names and values, plus 32 per entry); gRPC servers refuse larger request headers, and ' +
        'this one would fail as INTERNAL without reaching the server',
    );
    // Just at the bound: sent, and answered.
    const fits = 'a'.repeat(CALL_METADATA_BYTES_MAX - 'x-note'.length - 32);
    const answered = await client.ledger.getTrialBalance({}, { metadata: { 'x-note': fits } });
    expect(answered.nextPageToken).toBeDefined();
    await expect(
      client.ledger.getTrialBalance({}, { metadata: { 'x-note': `${fits}a` } }),
    ).rejects.toThrow(TypeError);
  });

  it.each([
    ['NaN', Number.NaN],
    ['0', 0],
    ['-5', -5],
    ['1.5', 1.5],
    // No deadline at all, which the client promises every call has.
    ['Infinity', Number.POSITIVE_INFINITY],
    // Past grpc-js's largest timeout: it threw from inside the channel, and the process died.
    ['MAX_SAFE_INTEGER', Number.MAX_SAFE_INTEGER],
  ])('refuses timeoutMs %s with a TypeError, before calling', async (_name, timeoutMs) => {
    const error = await failure(client.ledger.getTrialBalance({}, { timeoutMs }));
    expect(error).toBeInstanceOf(TypeError);
    expect(error.message).toBe(
      `GetTrialBalanceRequest: timeoutMs ${timeoutMs} is not a whole number of milliseconds ` +
        'from 1 to 2147483647',
    );
    const watch = client.payments.watchPayment('pay_01M8DDZAQ3ZXZ1A9Q0AD35CVG0', { timeoutMs });
    await expect(watch.next()).rejects.toThrow(
      `WatchPayment: timeoutMs ${timeoutMs} is not a whole number of milliseconds`,
    );
    expect(() => createSettleClient('127.0.0.1:1', { defaultTimeoutMs: timeoutMs })).toThrow(
      `createSettleClient: defaultTimeoutMs ${timeoutMs} is not a whole number of milliseconds`,
    );
  });
});
