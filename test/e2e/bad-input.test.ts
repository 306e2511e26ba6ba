/**
 * Goal: bad input gets a clear gRPC status naming what to fix, never INTERNAL or a stack, and
 * leaves nothing behind. Method: each bad request against a real stack, asserting the code, the
 * message, and that the row counts of every table are unchanged. Ends with the database taken
 * away: UNAVAILABLE.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { CreatePaymentRequest, OrderRequest } from '../../src/grpc/generated/settle/v1/payment.js';
import { ReconciliationServiceClient } from '../../src/grpc/generated/settle/v1/reconciliation.js';
import { inject } from 'vitest';
import {
  call,
  callError,
  rowCounts,
  startStack,
  testDatabaseUrl,
  type Stack,
} from '../support/harness.js';
import { startTcpProxy } from '../../src/chaos/tcp-proxy.js';
import { AdminServiceClient } from '../../src/grpc/generated/settle/v1/admin.js';
import { ADMIN_TOKEN } from '../admin/admin-support.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { GRPC_MESSAGE_BYTES_MAX: String(64 * 1024), ADMIN_TOKEN } });
});
afterAll(async () => stack?.stop());

const valid = (): CreatePaymentRequest => ({
  requestId: randomUUID(),
  buyerId: 'buyer-1',
  currencyCode: 'USD',
  orders: [{ sellerId: 'seller-1', amountMinor: 100n }],
});

const cases: Array<
  [name: string, request: () => CreatePaymentRequest, code: grpc.status, message: RegExp]
> = [
  [
    'missing request_id',
    () => ({ ...valid(), requestId: '' }),
    grpc.status.INVALID_ARGUMENT,
    // Only what is wrong: an empty id is not also told it is not a UUID.
    /^request_id: request_id is required \(a UUID chosen by the caller, the idempotency key\)$/,
  ],
  [
    'request_id not a UUID',
    () => ({ ...valid(), requestId: 'abc' }),
    grpc.status.INVALID_ARGUMENT,
    /request_id: request_id must be a UUID/,
  ],
  [
    'empty buyer_id',
    () => ({ ...valid(), buyerId: '' }),
    grpc.status.INVALID_ARGUMENT,
    /^buyer_id: buyer_id is required$/,
  ],
  [
    'buyer_id with spaces',
    () => ({ ...valid(), buyerId: 'a b' }),
    grpc.status.INVALID_ARGUMENT,
    /buyer_id: buyer_id must be/,
  ],
  [
    'unknown currency',
    () => ({ ...valid(), currencyCode: 'EUR' }),
    grpc.status.INVALID_ARGUMENT,
    /currency_code: currency 'EUR' is not supported; only USD/,
  ],
  [
    // Quoted in full, a huge code made a message longer than a Node client takes in a trailer:
    // the call hung to its deadline, and the connection with it.
    'a 30 KB currency code',
    () => ({ ...valid(), currencyCode: 'X'.repeat(30_000) }),
    grpc.status.INVALID_ARGUMENT,
    /^currency_code: currency 'X{16}' is not supported; only USD/,
  ],
  [
    'missing currency',
    () => ({ ...valid(), currencyCode: '' }),
    grpc.status.INVALID_ARGUMENT,
    /currency_code: currency_code is required/,
  ],
  [
    'no orders',
    () => ({ ...valid(), orders: [] }),
    grpc.status.INVALID_ARGUMENT,
    /orders: at least one order is required/,
  ],
  [
    '51 orders',
    () => ({
      ...valid(),
      orders: Array.from({ length: 51 }, (_, i) => ({ sellerId: `s${i}`, amountMinor: 1n })),
    }),
    grpc.status.INVALID_ARGUMENT,
    /orders: at most 50 orders/,
  ],
  [
    'amount zero',
    () => ({ ...valid(), orders: [{ sellerId: 's', amountMinor: 0n }] }),
    grpc.status.INVALID_ARGUMENT,
    /orders\[0\]\.amount_minor: amount_minor must be greater than 0/,
  ],
  [
    'negative amount',
    () => ({ ...valid(), orders: [{ sellerId: 's', amountMinor: -5n }] }),
    grpc.status.INVALID_ARGUMENT,
    /orders\[0\]\.amount_minor: amount_minor must be greater than 0/,
  ],
  [
    'amount above 10^12',
    () => ({ ...valid(), orders: [{ sellerId: 's', amountMinor: 1_000_000_000_001n }] }),
    grpc.status.INVALID_ARGUMENT,
    /orders\[0\]\.amount_minor: amount_minor must be at most 1000000000000/,
  ],
  [
    'empty seller_id',
    () => ({ ...valid(), orders: [{ sellerId: '', amountMinor: 1n }] }),
    grpc.status.INVALID_ARGUMENT,
    /orders\[0\]\.seller_id: seller_id is required/,
  ],
  [
    'same seller twice',
    () => ({
      ...valid(),
      orders: [
        { sellerId: 's', amountMinor: 1n },
        { sellerId: 's', amountMinor: 2n },
      ],
    }),
    grpc.status.INVALID_ARGUMENT,
    /orders\[1\]\.seller_id: seller 's' appears twice/,
  ],
  [
    'oversized message',
    () => ({ ...valid(), buyerId: 'x'.repeat(100 * 1024) }),
    grpc.status.RESOURCE_EXHAUSTED,
    /larger than max/i,
  ],
];

describe('bad input', () => {
  it.each(cases)(
    'CreatePayment with %s → clear status, nothing written',
    async (_name, request, code, message) => {
      const before = await rowCounts(stack.settle.db);
      const error = await callError(stack.payments.createPayment.bind(stack.payments), request());
      expect(grpc.status[error.code]).toBe(grpc.status[code]);
      expect(error.details).toMatch(message);
      expect(error.details).not.toMatch(/\bat .*\.ts:\d+/);
      expect(await rowCounts(stack.settle.db)).toEqual(before);
    },
  );

  it.each([
    ['', grpc.status.INVALID_ARGUMENT, /payment_id: payment_id is required/],
    [
      'not-an-id',
      grpc.status.INVALID_ARGUMENT,
      /payment_id: 'not-an-id' is not a valid payment_id/,
    ],
    [
      'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
      grpc.status.NOT_FOUND,
      /payment 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G' not found/,
    ],
  ])('GetPayment(%j) → %s', async (paymentId, code, message) => {
    const error = await callError(stack.payments.getPayment.bind(stack.payments), { paymentId });
    expect(error.code).toBe(code);
    expect(error.details).toMatch(message);
  });

  it('answers a message that cuts a quoted emoji in half, instead of hanging the call', async () => {
    // The message quotes the first 40 code units of the date, which end inside the emoji's pair.
    const recon = new ReconciliationServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      const refused = await callError(recon.runReconciliation.bind(recon), {
        settlementDate: `${'x'.repeat(39)}🙂`,
        filePath: '',
      });
      expect(grpc.status[refused.code]).toBe('INVALID_ARGUMENT');
      expect(refused.details).toBe(
        `settlement_date: must be a day as YYYY-MM-DD, got '${'x'.repeat(39)}\ufffd'`,
      );
    } finally {
      recon.close();
    }
  });

  it('answers NOT_FOUND for a seller without a wallet and INVALID_ARGUMENT for no seller', async () => {
    const missing = await callError(stack.wallets.getWallet.bind(stack.wallets), {
      sellerId: 'nobody',
    });
    expect(missing.code).toBe(grpc.status.NOT_FOUND);
    expect(missing.details).toMatch(/wallet of seller 'nobody' not found/);
    const empty = await callError(stack.wallets.getWallet.bind(stack.wallets), { sellerId: '' });
    expect(empty.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(empty.details).toMatch(/seller_id/);
  });

  it('refuses a list filter no row can match: a buyer_id CreatePayment refuses, a malformed order_id', async () => {
    // These listed nothing with OK, as if the filter had been right and simply matched nothing.
    const buyer = await callError(stack.payments.listPayments.bind(stack.payments), {
      pageSize: 0,
      pageToken: '',
      state: 0,
      buyerId: "buyer' OR '1'='1",
    });
    expect(grpc.status[buyer.code]).toBe('INVALID_ARGUMENT');
    expect(buyer.details).toBe(
      'buyer_id: must be 1-64 characters of letters, digits and _.:@- (no spaces), or empty for ' +
        'every buyer',
    );
    const entries = await callError(stack.ledger.listEntries.bind(stack.ledger), {
      pageSize: 0,
      pageToken: '',
      account: '',
      orderId: 'x'.repeat(10_240),
      fromHead: false,
    });
    expect(grpc.status[entries.code]).toBe('INVALID_ARGUMENT');
    expect(entries.details).toBe(
      `order_id: '${'x'.repeat(80)}' is not a valid order_id ` +
        '(expected e.g. ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G)',
    );
    const admin = new AdminServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
      const deadLetters = await call(
        admin.listDeadLetters.bind(admin),
        { pageSize: 0, pageToken: '', state: 0, orderId: 'ord_%' },
        10_000,
        metadata,
      ).then(
        () => undefined,
        (error: grpc.ServiceError) => error,
      );
      expect(deadLetters && grpc.status[deadLetters.code]).toBe('INVALID_ARGUMENT');
      expect(deadLetters?.details).toMatch(/^order_id: 'ord_%' is not a valid order_id/);
    } finally {
      admin.close();
    }
  });

  it('refuses a ListEntries account the ledger cannot hold, and lists one it can', async () => {
    // These listed nothing with OK, as if the account had been right and simply had no entries.
    const listEntries = stack.ledger.listEntries.bind(stack.ledger);
    const request = (account: string) => ({
      pageSize: 0,
      pageToken: '',
      account,
      orderId: '',
      fromHead: false,
    });
    const shape =
      'psp_receivable, fee_expense or seller_payable:<seller_id> (a seller_id is 1-64 ' +
      'characters of letters, digits and _.:@-), or empty for every account';
    for (const account of [
      'a'.repeat(10_240),
      "psp_receivable' OR '1'='1",
      'seller_payable:',
      'seller_payable:a b',
      'Seller_Payable:seller-1',
      `seller_payable:${'s'.repeat(65)}`,
    ]) {
      const error = await callError(listEntries, request(account));
      expect(grpc.status[error.code]).toBe('INVALID_ARGUMENT');
      expect(error.details).toBe(
        `account: '${account.slice(0, 80)}' is not a ledger account (expected ${shape})`,
      );
    }
    for (const account of ['psp_receivable', 'fee_expense', 'seller_payable:seller-1']) {
      const page = await call(listEntries, request(account));
      expect(page.entries.every((entry) => entry.account === account)).toBe(true);
    }
  });

  it('rejects a bad page token and a negative page size', async () => {
    const token = await callError(stack.payments.listPayments.bind(stack.payments), {
      pageSize: 1,
      pageToken: 'garbage',
      state: 0,
      buyerId: '',
    });
    expect(token.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(token.details).toMatch(/page_token/);
    const size = await callError(stack.payments.listPayments.bind(stack.payments), {
      pageSize: -1,
      pageToken: '',
      state: 0,
      buyerId: '',
    });
    expect(size.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(size.details).toMatch(/page_size/);
  });

  it.each([
    '/settle.v1.PaymentService/CreatePayment',
    '/settle.v1.WalletService/GetWallet',
    '/settle.v1.LedgerService/GetTrialBalance',
    '/settle.v1.AdminService/ListDeadLetters',
    '/settle.v1.ReconciliationService/GetReport',
  ])('%s refuses bytes that are not its request message as INVALID_ARGUMENT', async (path) => {
    const before = await rowCounts(stack.settle.db);
    // Field 1, length-delimited, with a length that runs past the end of the message.
    const truncated = Buffer.from([0x0a, 0x05, 0x61]);
    const raw = new grpc.Client(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      const error = await new Promise<grpc.ServiceError>((resolve, reject) => {
        raw.makeUnaryRequest(
          path,
          (bytes: Buffer) => bytes,
          (bytes: Buffer) => bytes,
          truncated,
          new grpc.Metadata(),
          { deadline: new Date(Date.now() + 5_000) },
          (failure) => (failure ? resolve(failure) : reject(new Error(`${path} answered OK`))),
        );
      });
      expect(grpc.status[error.code]).toBe('INVALID_ARGUMENT');
      expect(error.details).toContain(`${path}'s request type`);
    } finally {
      raw.close();
    }
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });
});

describe('request bytes that end early', () => {
  // ts-proto's decoders stop at a tag of 0 or a lone end-group tag and drop what follows.
  const buyer = Buffer.concat([Buffer.from([0x22, 0x07]), Buffer.from('nobody1')]);
  it.each([
    ['a tag of 0 before the buyer filter', Buffer.concat([Buffer.from([0x00]), buyer])],
    ['a lone end-group tag before it', Buffer.concat([Buffer.from([0x0c]), buyer])],
    ['the filter, then a tag of 0', Buffer.concat([buyer, Buffer.from([0x00, 0x08, 0x01])])],
  ])(
    'ListPayments refuses %s as INVALID_ARGUMENT, not as a list of every buyer',
    async (_name, bytes) => {
      const raw = new grpc.Client(
        `127.0.0.1:${stack.settle.grpcPort}`,
        grpc.credentials.createInsecure(),
      );
      const path = '/settle.v1.PaymentService/ListPayments';
      try {
        const error = await new Promise<grpc.ServiceError>((resolve, reject) => {
          raw.makeUnaryRequest(
            path,
            (request: Buffer) => request,
            (response: Buffer) => response,
            bytes,
            new grpc.Metadata(),
            { deadline: new Date(Date.now() + 5_000) },
            (failure) => (failure ? resolve(failure) : reject(new Error(`${path} answered OK`))),
          );
        });
        expect(grpc.status[error.code]).toBe('INVALID_ARGUMENT');
        expect(error.details).toContain(`${path}'s request type`);
      } finally {
        raw.close();
      }
    },
  );
});

describe('a malformed order inside CreatePayment', () => {
  it('is refused as INVALID_ARGUMENT, not read as one order more, and writes nothing', async () => {
    const head = CreatePaymentRequest.encode(
      CreatePaymentRequest.fromPartial({
        requestId: randomUUID(),
        buyerId: 'buyer-nested',
        currencyCode: 'USD',
      }),
    ).finish();
    const order = OrderRequest.encode({ sellerId: 'seller-a', amountMinor: 100n }).finish();
    const smuggled = CreatePaymentRequest.encode(
      CreatePaymentRequest.fromPartial({ orders: [{ sellerId: 'seller-b', amountMinor: 999n }] }),
    ).finish();
    // One orders entry whose length covers its fields, a tag of 0, then what ts-proto's decoder
    // read as another top-level order.
    const entry = Buffer.concat([order, Buffer.from([0x00]), smuggled]);
    const bytes = Buffer.concat([head, Buffer.from([0x22, entry.length]), entry]);
    const before = await rowCounts(stack.settle.db);
    const raw = new grpc.Client(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    const path = '/settle.v1.PaymentService/CreatePayment';
    try {
      const error = await new Promise<grpc.ServiceError>((resolve, reject) => {
        raw.makeUnaryRequest(
          path,
          (request: Buffer) => request,
          (response: Buffer) => response,
          bytes,
          new grpc.Metadata(),
          { deadline: new Date(Date.now() + 5_000) },
          (failure) => (failure ? resolve(failure) : reject(new Error(`${path} answered OK`))),
        );
      });
      expect(grpc.status[error.code]).toBe('INVALID_ARGUMENT');
      expect(error.details).toContain(`${path}'s request type`);
    } finally {
      raw.close();
    }
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });
});

describe('MySQL unavailable', () => {
  it('answers UNAVAILABLE while the database is unreachable, and works again after', async () => {
    const mysql = new URL(inject('mysqlUrl'));
    const proxy = await startTcpProxy({ host: mysql.hostname, port: Number(mysql.port || 3306) });
    const database = testDatabaseUrl('settle_unavail_t');
    const proxied = new URL(database);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(proxy.port);
    const local = await startStack({ env: { MYSQL_URL: proxied.toString() } });
    try {
      proxy.down();
      const create = await callError(local.payments.createPayment.bind(local.payments), valid());
      expect(grpc.status[create.code]).toBe('UNAVAILABLE');
      expect(create.details).toMatch(/database is unavailable/);
      const get = await callError(local.payments.getPayment.bind(local.payments), {
        paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
      });
      expect(grpc.status[get.code]).toBe('UNAVAILABLE');
      proxy.up();
      const created = await call(local.payments.createPayment.bind(local.payments), valid());
      expect(created.payment?.paymentId).toMatch(/^pay_/);
    } finally {
      proxy.up();
      await local.stop();
      await proxy.close();
    }
  });
});
