/**
 * Goal: API_TOKENS items may name a token and give it a scope. A token of scope read calls the
 * methods that read (gRPC and the REST twin's GETs) and is refused the ones that write with
 * PERMISSION_DENIED (403 on REST), reason SCOPE_TOO_NARROW, a message naming the token and both
 * scopes, before the request is looked at and with nothing written; a write token and a token
 * listed alone (the old form) call everything. Each call's log line names its caller, never its
 * token. Every method of every guarded service is classified, and a bad item stops the node with
 * a message that names the item by position and never quotes a token.
 * Method: the classification is checked against the generated service definitions; the items
 * through loadConfig; the rest against a real stack (PSP mock + Settle on MariaDB and NATS) with
 * three tokens (alone, read, write), through the generated clients, createSettleClient and fetch,
 * with row counts before and after each refusal and the node's log captured.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSettleClient } from '../../src/client/index.js';
import { loadConfig } from '../../src/config.js';
import {
  API_GUARDED_SERVICES,
  API_METHOD_SCOPES,
  apiMethodOfPath,
} from '../../src/grpc/api-scopes.js';
import { ReconciliationServiceClient } from '../../src/grpc/generated/settle/v1/reconciliation.js';
import type { HttpErrorBody } from '../../src/grpc/http-status.js';
import { createLogger } from '../../src/observability/logger.js';
import {
  call,
  metricSample,
  rowCounts,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { bearer, createPaymentRequest, refusal } from '../support/grpc-calls.js';

/** A token listed alone: named `unnamed`, scope write, as every token was before names. */
const TOKEN_ALONE = 'api-token-alone-0123456789ab';
/** `dashboard read <token>`: a support tool that only reads payments. */
const READ_TOKEN = 'api-token-read-0123456789abcd';
/** `checkout write <token>`: the shop's backend, which creates payments. */
const WRITE_TOKEN = 'api-token-write-0123456789abc';
const REFUSED_METRIC = 'settle_api_credentials_refused_total';
const API_REQUESTS_METRIC = 'settle_api_requests_total';

/** The methods that only read; every other guarded method writes (or books) something. */
const READ_METHODS = [
  '/settle.v1.PaymentService/GetPayment',
  '/settle.v1.PaymentService/ListPayments',
  '/settle.v1.PaymentService/WatchPayment',
  '/settle.v1.WalletService/GetWallet',
  '/settle.v1.LedgerService/ListEntries',
  '/settle.v1.LedgerService/GetTrialBalance',
  '/settle.v1.ReconciliationService/GetReport',
  '/settle.v1.ReconciliationService/ListReports',
  '/settle.v1.ReconciliationService/ListMismatches',
];

const createRequest = () => createPaymentRequest('seller-scopes');

const SCOPE_MESSAGE = (method: string) =>
  `${method} needs an API token of scope write, and the token named "dashboard" has scope read; ` +
  `call it with a token of scope write (in API_TOKENS: "<name> write <token>", or a token alone)`;

function configProblems(apiTokens: string): string {
  try {
    loadConfig({ API_TOKENS: apiTokens });
  } catch (error) {
    return (error as Error).message;
  }
  return '';
}

describe('the scope of each guarded method', () => {
  it('has every method of every guarded service, and nothing else', () => {
    const methods = Object.values(API_GUARDED_SERVICES).flatMap((service) =>
      Object.values(service).map((method) => method.path),
    );
    const listed = Object.entries(API_METHOD_SCOPES).flatMap(([service, scopes]) =>
      Object.keys(scopes).map(
        (key) =>
          (
            API_GUARDED_SERVICES[service as keyof typeof API_GUARDED_SERVICES] as Record<
              string,
              { path: string } | undefined
            >
          )[key]?.path ?? `${service}.${key} (no such method)`,
      ),
    );
    expect([...listed].sort()).toEqual([...methods].sort());
  });

  it('lets read tokens call the reads, and only them', () => {
    const methods = Object.values(API_GUARDED_SERVICES).flatMap((service) =>
      Object.values(service).map((method) => method.path),
    );
    const reads = methods.filter((path) => apiMethodOfPath(path).scope === 'read');
    expect(reads.sort()).toEqual([...READ_METHODS].sort());
    expect(apiMethodOfPath('/settle.v1.PaymentService/CreatePayment')).toEqual({
      name: 'PaymentService.CreatePayment',
      scope: 'write',
    });
    expect(apiMethodOfPath('/settle.v1.ReconciliationService/RunReconciliation').scope).toBe(
      'write',
    );
  });

  it('asks write of a path it does not know: a forgotten method fails closed', () => {
    expect(apiMethodOfPath('/settle.v1.PaymentService/RefundPayment')).toEqual({
      name: '/settle.v1.PaymentService/RefundPayment',
      scope: 'write',
    });
  });
});

describe('API_TOKENS items', () => {
  it('reads a token alone as unnamed with scope write, and "<name> <scope> <token>"', () => {
    expect(
      loadConfig({
        API_TOKENS: `${TOKEN_ALONE}, dashboard read ${READ_TOKEN},checkout  write\t${WRITE_TOKEN}`,
      }).API_TOKENS,
    ).toEqual([
      { name: 'unnamed', scope: 'write', token: TOKEN_ALONE },
      { name: 'dashboard', scope: 'read', token: READ_TOKEN },
      { name: 'checkout', scope: 'write', token: WRITE_TOKEN },
    ]);
    // `:` and `=` may be inside a token in use: a token alone keeps meaning what it meant, unless
    // it reads as "<name>:<scope>:<token>" (the next test).
    const colons = ['ops:0123456789abcdef=', 'ops:reader:0123456789abcdef', 'x::read:0123456789ab'];
    expect(loadConfig({ API_TOKENS: colons.join(',') }).API_TOKENS).toEqual(
      colons.map((token) => ({ name: 'unnamed', scope: 'write', token })),
    );
  });

  it('refuses "<name>:<scope>:<token>", which a token alone would give scope write, without quoting it', () => {
    const secret = 'secret-token-0123456789';
    const message = configProblems(
      [
        `dashboard:read:${secret}`,
        `checkout:write:${secret}x`,
        // Any case, any name or none, nothing after the scope, or the fields swapped: the same
        // mistake.
        ` Dashboard-Readonly-Bot:READ:${secret}y `,
        'dashboard-bot:write:',
        `${secret}z:read:dashboard`,
        `:read:${secret}w`,
      ].join(','),
    );
    const refused =
      ': reads as "<name>:<scope>:<token>", which would be one token of scope write that no ' +
      'caller sends: separate the fields by spaces, "<name> <scope> <token>"';
    expect(message).toBe(
      'invalid configuration:\n' +
        [0, 1, 2, 3, 4, 5].map((index) => `  - API_TOKENS.${index}${refused}`).join('\n'),
    );
    expect(message).not.toContain(secret);
    expect(message).not.toContain('dashboard-bot');
  });

  it('refuses a malformed item, a bad name or scope, by position, without quoting any field', () => {
    const secret = 'secret-token-0123456789';
    const message = configProblems(
      [
        `dashboard ${secret}`,
        `dashboard reads ${secret}`,
        `${secret}! read ${WRITE_TOKEN}`,
        `unnamed read ${secret}`,
        `dashboard read short`,
        `a b c d`,
        // The token first and the name last: refused for its name, which no token is short enough
        // to be, rather than for the short "token".
        `${secret} write dashboard`,
        // Swapped again, with a token of lowercase hex, the shape of `openssl rand -hex 8`: were
        // it taken for a name, every log line of the calls would carry it.
        `0123456789abcdef read dashboard-bot`,
      ].join(','),
    );
    expect(message).toBe(
      'invalid configuration:\n' +
        '  - API_TOKENS.0: has 2 fields separated by spaces, but a token cannot hold a space (it travels in a header): write a token alone (scope write), or "<name> <scope> <token>"\n' +
        '  - API_TOKENS.1: the scope (second field) must be read or write\n' +
        '  - API_TOKENS.2: the name (first field) must be 1-15 characters of a-z, 0-9, _ and -, starting with a letter or digit (shorter than any token, so a token in its place is refused)\n' +
        '  - API_TOKENS.3: the name "unnamed" stands for tokens listed alone; choose another\n' +
        '  - API_TOKENS.4: each token must have 16 characters or more\n' +
        '  - API_TOKENS.5: has 4 fields separated by spaces, but a token cannot hold a space (it travels in a header): write a token alone (scope write), or "<name> <scope> <token>"\n' +
        '  - API_TOKENS.6: the name (first field) must be 1-15 characters of a-z, 0-9, _ and -, starting with a letter or digit (shorter than any token, so a token in its place is refused)\n' +
        '  - API_TOKENS.7: the name (first field) must be 1-15 characters of a-z, 0-9, _ and -, starting with a letter or digit (shorter than any token, so a token in its place is refused)',
    );
    expect(message).not.toContain(secret);
    expect(message).not.toContain('reads');
  });

  it('refuses a name given twice and a token under two names, by position', () => {
    const message = configProblems(
      [
        `dashboard read ${READ_TOKEN}`,
        `dashboard write ${WRITE_TOKEN}`,
        `support read ${READ_TOKEN}`,
        TOKEN_ALONE,
        // The same token alone twice is harmless, as before.
        TOKEN_ALONE,
        `backend write ${TOKEN_ALONE}`,
      ].join(','),
    );
    expect(message).toBe(
      'invalid configuration:\n' +
        '  - API_TOKENS.1: has the name of API_TOKENS.0; give each caller its own name\n' +
        '  - API_TOKENS.2: has the token of API_TOKENS.0 under another name or scope; give each caller its own token\n' +
        '  - API_TOKENS.5: has the token of API_TOKENS.3 under another name or scope; give each caller its own token',
    );
    for (const token of [READ_TOKEN, WRITE_TOKEN, TOKEN_ALONE]) {
      expect(message).not.toContain(token);
    }
  });

  it('still takes at most 16 items', () => {
    const items = Array.from({ length: 17 }, (_, i) => `caller-${i} read token-${i}-0123456789ab`);
    expect(configProblems(items.join(','))).toBe(
      'invalid configuration:\n  - API_TOKENS: at most 16 tokens',
    );
  });
});

describe('with named, scoped API_TOKENS', () => {
  let stack: Stack;
  let reconciliation: ReconciliationServiceClient;
  const logLines: string[] = [];
  /** A payment made with the write token, for the reads. */
  let paymentId = '';

  /** The request log lines of calls whose request id is `requestId`. */
  const linesOf = (requestId: string) =>
    logLines
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((line) => line['requestId'] === requestId);

  beforeAll(async () => {
    stack = await startStack({
      env: {
        API_TOKENS: `${TOKEN_ALONE}, dashboard read ${READ_TOKEN}, checkout write ${WRITE_TOKEN}`,
      },
      overrides: {
        logger: createLogger(
          { level: 'info', name: 'settle' },
          { write: (line) => logLines.push(line) },
        ),
      },
    });
    reconciliation = new ReconciliationServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    const created = await call(
      stack.payments.createPayment.bind(stack.payments),
      createRequest(),
      10_000,
      bearer(WRITE_TOKEN),
    );
    paymentId = created.payment?.paymentId ?? '';
    expect(paymentId).toMatch(/^pay_/);
  });
  afterAll(async () => {
    reconciliation?.close();
    await stack?.stop();
  });

  it('lets a read token call every read method, gRPC and REST', async () => {
    const client = createSettleClient(`127.0.0.1:${stack.settle.grpcPort}`, {
      apiToken: READ_TOKEN,
    });
    try {
      expect((await client.payments.getPayment({ paymentId })).payment?.paymentId).toBe(paymentId);
      const listed = await client.payments.listPayments({});
      expect(listed.payments.map((payment) => payment.paymentId)).toContain(paymentId);
      for await (const { payment } of client.payments.watchPayment(paymentId, {
        timeoutMs: 5_000,
      })) {
        expect(payment?.paymentId).toBe(paymentId);
        break;
      }
      await client.ledger.listEntries({ pageSize: 1 });
      await client.ledger.getTrialBalance({});
      expect((await client.reconciliation.listReports({})).reports).toEqual([]);
      // Past the token and its scope: nothing of that name.
      const noWallet = await refusal(client.wallets.getWallet({ sellerId: 'seller-never-paid' }));
      expect(noWallet.code).toBe(grpc.status.NOT_FOUND);
      const noReport = await refusal(
        client.reconciliation.getReport({ reportId: 'rcn_01J0000000000000000000000' }),
      );
      expect(noReport.code).not.toBe(grpc.status.PERMISSION_DENIED);
      const noMismatches = await refusal(
        client.reconciliation.listMismatches({ reportId: 'rcn_01J0000000000000000000000' }),
      );
      expect(noMismatches.code).not.toBe(grpc.status.PERMISSION_DENIED);
    } finally {
      client.close();
    }
    for (const route of [`/v1/payments/${paymentId}`, '/v1/payments']) {
      const response = await fetch(`${stack.settleHttp}${route}`, {
        headers: { authorization: `Bearer ${READ_TOKEN}` },
        signal: AbortSignal.timeout(10_000),
      });
      expect(response.status, route).toBe(200);
    }
  });

  it('refuses a read token CreatePayment with PERMISSION_DENIED before reading the request, writing nothing', async () => {
    const before = await rowCounts(stack.settle.db);
    const refused = await refusal(
      call(
        stack.payments.createPayment.bind(stack.payments),
        createRequest(),
        10_000,
        bearer(READ_TOKEN),
      ),
    );
    expect(refused.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(refused.details).toBe(SCOPE_MESSAGE('PaymentService.CreatePayment'));
    expect(refused.details).not.toContain(READ_TOKEN);
    // A request that is bad too: the scope is refused first, as the token is.
    const bad = await refusal(
      call(
        stack.payments.createPayment.bind(stack.payments),
        { ...createRequest(), buyerId: '', orders: [] },
        10_000,
        bearer(READ_TOKEN),
      ),
    );
    expect([bad.code, bad.details]).toEqual([
      grpc.status.PERMISSION_DENIED,
      SCOPE_MESSAGE('PaymentService.CreatePayment'),
    ]);
    const run = await refusal(
      call(
        reconciliation.runReconciliation.bind(reconciliation),
        { settlementDate: '2020-01-01', filePath: '' },
        10_000,
        bearer(READ_TOKEN),
      ),
    );
    expect([run.code, run.details]).toEqual([
      grpc.status.PERMISSION_DENIED,
      SCOPE_MESSAGE('ReconciliationService.RunReconciliation'),
    ]);
    expect(await rowCounts(stack.settle.db)).toEqual(before);
    const reports = await call(
      reconciliation.listReports.bind(reconciliation),
      { settlementDate: '', pageSize: 0, pageToken: '' },
      10_000,
      bearer(WRITE_TOKEN),
    );
    expect(reports.reports).toEqual([]);
  });

  it('refuses a read token POST /v1/payments with 403, reason SCOPE_TOO_NARROW, writing nothing', async () => {
    const before = await rowCounts(stack.settle.db);
    const response = await fetch(`${stack.settleHttp}/v1/payments`, {
      method: 'POST',
      // Not even JSON: refused for the scope before the body is read.
      headers: {
        'content-type': 'text/plain',
        'idempotency-key': randomUUID(),
        authorization: `Bearer ${READ_TOKEN}`,
      },
      body: 'not json',
      signal: AbortSignal.timeout(10_000),
    });
    expect(response.status).toBe(403);
    const text = await response.text();
    expect((JSON.parse(text) as HttpErrorBody).error).toMatchObject({
      code: 'PERMISSION_DENIED',
      reason: 'SCOPE_TOO_NARROW',
      retryable: false,
      message: SCOPE_MESSAGE('POST /v1/payments'),
    });
    expect(text).not.toContain(READ_TOKEN);
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it('lets a write token and a token alone create and read, gRPC and REST', async () => {
    for (const token of [WRITE_TOKEN, TOKEN_ALONE]) {
      const created = await call(
        stack.payments.createPayment.bind(stack.payments),
        createRequest(),
        10_000,
        bearer(token),
      );
      const id = created.payment?.paymentId ?? '';
      const got = await call(
        stack.payments.getPayment.bind(stack.payments),
        { paymentId: id },
        10_000,
        bearer(token),
      );
      expect(got.payment?.paymentId).toBe(id);
      const posted = await fetch(`${stack.settleHttp}/v1/payments`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'idempotency-key': randomUUID(),
          authorization: `Bearer ${token}`,
        },
        body: JSON.stringify({
          buyerId: 'buyer-rest-scopes',
          currencyCode: 'USD',
          orders: [{ sellerId: 'seller-scopes', amountMinor: '500' }],
        }),
        signal: AbortSignal.timeout(10_000),
      });
      expect(posted.status).toBe(200);
      const listed = await fetch(`${stack.settleHttp}/v1/payments`, {
        headers: { authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(10_000),
      });
      expect(listed.status).toBe(200);
    }
  });

  it('counts a read token on a write method as SCOPE_TOO_NARROW, gRPC and REST alike', async () => {
    const scopeRefusals = async () =>
      metricSample(await scrapeMetrics(stack.settleHttp), REFUSED_METRIC, {
        reason: 'SCOPE_TOO_NARROW',
      }) ?? 0;
    const before = await scopeRefusals();
    await refusal(
      call(
        stack.payments.createPayment.bind(stack.payments),
        createRequest(),
        10_000,
        bearer(READ_TOKEN),
      ),
    );
    const response = await fetch(`${stack.settleHttp}/v1/payments`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${READ_TOKEN}` },
      body: '{}',
      signal: AbortSignal.timeout(10_000),
    });
    expect(response.status).toBe(403);
    // Reads are no refusal.
    await call(
      stack.payments.getPayment.bind(stack.payments),
      { paymentId },
      10_000,
      bearer(READ_TOKEN),
    );
    expect(await scopeRefusals()).toBe(before + 2);
  });

  it('counts calls by caller in settle_api_requests_total: each name, and ANONYMOUS for a wrong token', async () => {
    const count = async (caller: string, method: string, code: string) =>
      metricSample(await scrapeMetrics(stack.settleHttp), API_REQUESTS_METRIC, {
        caller,
        method,
        code,
      }) ?? 0;
    const series = [
      ['dashboard', 'PaymentService.GetPayment', 'OK'],
      ['dashboard', 'PaymentService.CreatePayment', 'PERMISSION_DENIED'],
      ['checkout', 'PaymentService.GetPayment', 'OK'],
      ['checkout', 'PaymentService.CreatePayment', 'OK'],
      ['ANONYMOUS', 'PaymentService.GetPayment', 'UNAUTHENTICATED'],
      ['dashboard', 'GET /v1/payments/:id', '200'],
      ['ANONYMOUS', 'GET /v1/payments/:id', '401'],
    ] as const;
    const before = await Promise.all(
      series.map(([caller, method, code]) => count(caller, method, code)),
    );
    const getPayment = (token: string) =>
      call(stack.payments.getPayment.bind(stack.payments), { paymentId }, 10_000, bearer(token));
    await getPayment(READ_TOKEN);
    await getPayment(READ_TOKEN);
    await refusal(
      call(
        stack.payments.createPayment.bind(stack.payments),
        createRequest(),
        10_000,
        bearer(READ_TOKEN),
      ),
    );
    await getPayment(WRITE_TOKEN);
    await call(
      stack.payments.createPayment.bind(stack.payments),
      createRequest(),
      10_000,
      bearer(WRITE_TOKEN),
    );
    const wrong = await refusal(getPayment('api-token-wrong-000000000000'));
    expect(wrong.code).toBe(grpc.status.UNAUTHENTICATED);
    for (const token of [READ_TOKEN, 'api-token-wrong-000000000000']) {
      await fetch(`${stack.settleHttp}/v1/payments/${paymentId}`, {
        headers: { authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(10_000),
      });
    }
    const after = await Promise.all(
      series.map(([caller, method, code]) => count(caller, method, code)),
    );
    expect(after.map((n, i) => n - before[i]!)).toEqual([2, 1, 1, 1, 1, 1, 1]);
    // No series is ever labelled with what a request sent.
    const text = await scrapeMetrics(stack.settleHttp);
    const callers = new Set(
      [...text.matchAll(/^settle_api_requests_total\{[^}]*caller="([^"]*)"/gm)].map((m) => m[1]),
    );
    expect(
      [...callers].every((c) => ['dashboard', 'checkout', 'unnamed', 'ANONYMOUS'].includes(c!)),
    ).toBe(true);
  });

  it("names each call's caller in its log line, refused calls too, and never logs a token", async () => {
    const requestId = (name: string) => `scopes-${name}-${randomUUID()}`;
    const ids = {
      read: requestId('read'),
      refused: requestId('refused'),
      write: requestId('write'),
      alone: requestId('alone'),
      rest: requestId('rest'),
      restRefused: requestId('rest-refused'),
    };
    const withId = (token: string, id: string) => {
      const metadata = bearer(token);
      metadata.set('x-request-id', id);
      return metadata;
    };
    await call(
      stack.payments.getPayment.bind(stack.payments),
      { paymentId },
      10_000,
      withId(READ_TOKEN, ids.read),
    );
    await refusal(
      call(
        stack.payments.createPayment.bind(stack.payments),
        createRequest(),
        10_000,
        withId(READ_TOKEN, ids.refused),
      ),
    );
    await call(
      stack.payments.createPayment.bind(stack.payments),
      createRequest(),
      10_000,
      withId(WRITE_TOKEN, ids.write),
    );
    await call(
      stack.ledger.getTrialBalance.bind(stack.ledger),
      { pageSize: 0, pageToken: '' },
      10_000,
      withId(TOKEN_ALONE, ids.alone),
    );
    for (const [method, id] of [
      ['GET', ids.rest],
      ['POST', ids.restRefused],
    ] as const) {
      await fetch(`${stack.settleHttp}/v1/payments`, {
        method,
        headers: {
          authorization: `Bearer ${READ_TOKEN}`,
          'x-request-id': id,
          'content-type': 'application/json',
        },
        ...(method === 'POST' ? { body: '{}' } : {}),
        signal: AbortSignal.timeout(10_000),
      });
    }
    // The request log line is written after the answer: wait for the last one.
    await waitFor(() => Promise.resolve(linesOf(ids.restRefused).length > 0), {
      timeoutMs: 5_000,
      what: 'the log line of the refused POST',
    });
    expect(linesOf(ids.read)).toEqual([
      expect.objectContaining({ grpcMethod: 'GetPayment', grpcCode: 'OK', caller: 'dashboard' }),
    ]);
    expect(linesOf(ids.refused)).toEqual([
      expect.objectContaining({
        grpcMethod: 'CreatePayment',
        grpcCode: 'PERMISSION_DENIED',
        caller: 'dashboard',
      }),
    ]);
    expect(linesOf(ids.write)).toEqual([
      expect.objectContaining({ grpcMethod: 'CreatePayment', grpcCode: 'OK', caller: 'checkout' }),
    ]);
    expect(linesOf(ids.alone)).toEqual([
      expect.objectContaining({ grpcMethod: 'GetTrialBalance', caller: 'unnamed' }),
    ]);
    expect(linesOf(ids.rest)).toEqual([
      expect.objectContaining({ httpMethod: 'GET', status: 200, caller: 'dashboard' }),
    ]);
    expect(linesOf(ids.restRefused)).toEqual([
      expect.objectContaining({ httpMethod: 'POST', status: 403, caller: 'dashboard' }),
    ]);
    // At start, the node says which callers it knows, by name and scope.
    const started = logLines.find((line) => line.includes('API_TOKENS: 3 tokens'));
    expect(JSON.parse(started ?? '{}')).toMatchObject({
      level: 'info',
      msg: 'API_TOKENS: 3 tokens: unnamed (write), dashboard (read), checkout (write)',
    });
    const log = logLines.join('');
    for (const token of [TOKEN_ALONE, READ_TOKEN, WRITE_TOKEN]) expect(log).not.toContain(token);
  });
});
