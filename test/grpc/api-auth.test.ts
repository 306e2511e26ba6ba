/**
 * Goal: with API_TOKENS set, PaymentService, WalletService, LedgerService, ReconciliationService
 * and the REST twin answer only callers that send `authorization: Bearer <one of the tokens>`
 * (any of them, so a token can be rotated), refuse the others with UNAUTHENTICATED (401 on REST)
 * and a message that says what to send, before the request is looked at and without writing
 * anything; health, reflection and AdminService (its own token) are not affected; no token is
 * ever logged; the TypeScript client and the settle CLI send the token they are given. Without
 * API_TOKENS everything stays open, and the node warns once at start.
 * Method: real stacks (PSP mock + Settle on MariaDB and NATS), one with API_TOKENS and one
 * without; calls through the generated clients, fetch, createSettleClient, a grpc.health.v1 and a
 * reflection client loaded from their protos, and the CLI as a child process. Status codes and
 * messages are asserted, row counts show nothing was written, and the node's log is captured.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSettleClient } from '../../src/client/index.js';
import { loadConfig } from '../../src/config.js';
import { AdminServiceClient } from '../../src/grpc/generated/settle/v1/admin.js';
import {
  ReconciliationServiceClient,
  type ListReportsResponse,
} from '../../src/grpc/generated/settle/v1/reconciliation.js';
import type { HttpErrorBody } from '../../src/grpc/http-status.js';
import { createLogger } from '../../src/observability/logger.js';
import {
  call,
  metricSample,
  rowCounts,
  scrapeMetrics,
  startStack,
  type Stack,
} from '../support/harness.js';
import { ADMIN_TOKEN } from '../admin/admin-support.js';
import { bearer, createPaymentRequest, refusal } from '../support/grpc-calls.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const TOKEN = 'api-token-current-0123456789';
/** The token being rotated out: still listed, so it still works. */
const TOKEN_PREVIOUS = 'api-token-previous-9876543210';
const WRONG = 'api-token-wrong-000000000000';
const REFUSED_METRIC = 'settle_api_credentials_refused_total';

const createRequest = () => createPaymentRequest('seller-auth');

const MISSING = (service: string) =>
  `${service} needs the metadata "authorization: Bearer <token>", the token one of this ` +
  `node's API_TOKENS (the settle CLI sends SETTLE_API_TOKEN, the TypeScript client its ` +
  `apiToken option)`;
const WRONG_MESSAGE = (service: string) =>
  `${service} refused the bearer token: it is none of this node's API_TOKENS; send the ` +
  `metadata "authorization: Bearer <token>" with a current token`;

type HealthClient = grpc.Client & {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { status: string }) => void,
  ): grpc.ClientUnaryCall;
};

function healthCheck(address: string, service: string): Promise<string> {
  const definition = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  const client = new loaded.grpc.health.v1.Health(
    address,
    grpc.credentials.createInsecure(),
  ) as unknown as HealthClient;
  return new Promise<string>((resolve, reject) => {
    client.Check({ service }, { deadline: Date.now() + 5_000 }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolve(response?.status ?? 'UNKNOWN');
    });
  });
}

/** The service names a list_services request over reflection v1 answers. */
function reflectedServices(address: string): Promise<string[]> {
  const definition = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', {
    keepCase: true,
    oneofs: true,
    arrays: true,
    includeDirs: [path.join(ROOT, 'src/grpc/reflection/proto')],
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } };
  };
  const client = new loaded.grpc.reflection.v1.ServerReflection(
    address,
    grpc.credentials.createInsecure(),
  );
  const open = (client as unknown as Record<string, (options: grpc.CallOptions) => unknown>)[
    'ServerReflectionInfo'
  ]!;
  type Response = { list_services_response?: { service: Array<{ name: string }> } };
  const stream = open.call(client, { deadline: Date.now() + 5_000 }) as grpc.ClientDuplexStream<
    object,
    Response
  >;
  return new Promise<string[]>((resolve, reject) => {
    stream.on('data', (response: Response) => {
      resolve((response.list_services_response?.service ?? []).map((s) => s.name));
      stream.end();
      client.close();
    });
    stream.on('error', (error: Error) => {
      client.close();
      reject(error);
    });
    stream.write({ host: '', list_services: '' });
  });
}

type Run = { code: number; stdout: string; stderr: string };

function settleCli(stack: Stack, args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [path.join(ROOT, 'bin/settle.js'), ...args],
      {
        cwd: ROOT,
        timeout: 30_000,
        env: {
          PATH: process.env.PATH ?? '',
          HOME: process.env.HOME ?? '/tmp',
          SETTLE_ADDR: `127.0.0.1:${stack.settle.grpcPort}`,
          ...env,
        },
      },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

async function restGet(stack: Stack, route: string, headers: Record<string, string> = {}) {
  const response = await fetch(`${stack.settleHttp}${route}`, {
    headers,
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

describe('with API_TOKENS', () => {
  let stack: Stack;
  let reconciliation: ReconciliationServiceClient;
  let admin: AdminServiceClient;
  const logLines: string[] = [];

  beforeAll(async () => {
    stack = await startStack({
      env: { API_TOKENS: `${TOKEN}, ${TOKEN_PREVIOUS}`, ADMIN_TOKEN },
      overrides: {
        logger: createLogger(
          { level: 'info', name: 'settle' },
          { write: (line) => logLines.push(line) },
        ),
      },
    });
    const address = `127.0.0.1:${stack.settle.grpcPort}`;
    reconciliation = new ReconciliationServiceClient(address, grpc.credentials.createInsecure());
    admin = new AdminServiceClient(address, grpc.credentials.createInsecure());
  });
  afterAll(async () => {
    reconciliation?.close();
    admin?.close();
    await stack?.stop();
  });

  it('refuses a call without the header with UNAUTHENTICATED, naming the header, writing nothing', async () => {
    const before = await rowCounts(stack.settle.db);
    const error = await refusal(
      call(stack.payments.createPayment.bind(stack.payments), createRequest()),
    );
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(error.details).toBe(MISSING('PaymentService'));
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it('refuses a wrong token, and a header that is not a bearer one, without quoting them', async () => {
    const before = await rowCounts(stack.settle.db);
    const wrong = await refusal(
      call(
        stack.payments.createPayment.bind(stack.payments),
        createRequest(),
        10_000,
        bearer(WRONG),
      ),
    );
    expect(wrong.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(wrong.details).toBe(WRONG_MESSAGE('PaymentService'));
    const basic = new grpc.Metadata();
    basic.set('authorization', `Basic ${TOKEN}`);
    const notBearer = await refusal(
      call(stack.payments.createPayment.bind(stack.payments), createRequest(), 10_000, basic),
    );
    expect(notBearer.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(notBearer.details).toBe(MISSING('PaymentService'));
    expect(await rowCounts(stack.settle.db)).toEqual(before);
  });

  it('refuses before looking at the request: a bad request without a token is UNAUTHENTICATED', async () => {
    const error = await refusal(
      call(stack.wallets.getWallet.bind(stack.wallets), { sellerId: '' }),
    );
    expect(error.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(error.details).toBe(MISSING('WalletService'));
  });

  it('answers the right token and the one being rotated out', async () => {
    const created = await call(
      stack.payments.createPayment.bind(stack.payments),
      createRequest(),
      10_000,
      bearer(TOKEN),
    );
    const paymentId = created.payment?.paymentId ?? '';
    expect(paymentId).toMatch(/^pay_/);
    const got = await call(
      stack.payments.getPayment.bind(stack.payments),
      { paymentId },
      10_000,
      bearer(TOKEN_PREVIOUS),
    );
    expect(got.payment?.paymentId).toBe(paymentId);
  });

  it('guards WalletService, LedgerService, ReconciliationService and WatchPayment too', async () => {
    const wallet = await refusal(
      call(stack.wallets.getWallet.bind(stack.wallets), { sellerId: 'seller-auth' }),
    );
    expect([wallet.code, wallet.details]).toEqual([
      grpc.status.UNAUTHENTICATED,
      MISSING('WalletService'),
    ]);
    const ledger = await refusal(
      call(stack.ledger.getTrialBalance.bind(stack.ledger), { pageSize: 0, pageToken: '' }),
    );
    expect([ledger.code, ledger.details]).toEqual([
      grpc.status.UNAUTHENTICATED,
      MISSING('LedgerService'),
    ]);
    const reports = await refusal(
      call(
        reconciliation.listReports.bind(reconciliation),
        { settlementDate: '', pageSize: 0, pageToken: '' },
        10_000,
        bearer(WRONG),
      ),
    );
    expect([reports.code, reports.details]).toEqual([
      grpc.status.UNAUTHENTICATED,
      WRONG_MESSAGE('ReconciliationService'),
    ]);
    const watch = stack.payments.watchPayment({ paymentId: 'pay_01J0000000000000000000000' });
    const watched = await refusal(
      new Promise((resolve, reject) => {
        watch.on('data', resolve);
        watch.on('error', reject);
      }),
    );
    expect([watched.code, watched.details]).toEqual([
      grpc.status.UNAUTHENTICATED,
      MISSING('PaymentService'),
    ]);

    // Past the token: no wallet yet for a seller never paid.
    const noWallet = await refusal(
      call(
        stack.wallets.getWallet.bind(stack.wallets),
        { sellerId: 'seller-auth' },
        10_000,
        bearer(TOKEN),
      ),
    );
    expect(noWallet.code).toBe(grpc.status.NOT_FOUND);
    await call(
      stack.ledger.getTrialBalance.bind(stack.ledger),
      { pageSize: 0, pageToken: '' },
      10_000,
      bearer(TOKEN_PREVIOUS),
    );
    const listed: ListReportsResponse = await call(
      reconciliation.listReports.bind(reconciliation),
      { settlementDate: '', pageSize: 0, pageToken: '' },
      10_000,
      bearer(TOKEN),
    );
    expect(listed.reports).toEqual([]);
  });

  it('leaves health and reflection open, and AdminService on its own token', async () => {
    const address = `127.0.0.1:${stack.settle.grpcPort}`;
    expect(await healthCheck(address, '')).toBe('SERVING');
    expect(await healthCheck(address, 'settle.v1.PaymentService')).toBe('SERVING');
    expect(await reflectedServices(address)).toContain('settle.v1.PaymentService');
    const listed = await call(
      admin.listDeadLetters.bind(admin),
      { state: 0, orderId: '', pageSize: 0, pageToken: '' },
      10_000,
      bearer(ADMIN_TOKEN),
    );
    expect(listed.deadLetters).toEqual([]);
    // An API token is no admin token.
    const refused = await refusal(
      call(
        admin.listDeadLetters.bind(admin),
        { state: 0, orderId: '', pageSize: 0, pageToken: '' },
        10_000,
        bearer(TOKEN),
      ),
    );
    expect(refused.code).toBe(grpc.status.UNAUTHENTICATED);
  });

  it('applies the same rule on the REST twin: 401 with the JSON error body, then 200', async () => {
    const before = await rowCounts(stack.settle.db);
    const missing = await fetch(`${stack.settleHttp}/v1/payments`, {
      method: 'POST',
      // Not even JSON: refused for the credential before the body is read.
      headers: { 'content-type': 'text/plain', 'idempotency-key': randomUUID() },
      body: 'not json',
      signal: AbortSignal.timeout(10_000),
    });
    expect(missing.status).toBe(401);
    expect(missing.headers.get('www-authenticate')).toBe('Bearer realm="settle"');
    const missingBody = (await missing.json()) as HttpErrorBody;
    expect(missingBody.error).toMatchObject({
      code: 'UNAUTHENTICATED',
      reason: 'MISSING_API_TOKEN',
      retryable: false,
      message:
        `/v1/payments needs the header "Authorization: Bearer <token>", the token one of this ` +
        `node's API_TOKENS (the settle CLI sends SETTLE_API_TOKEN, the TypeScript client its ` +
        `apiToken option)`,
    });
    const wrong = await restGet(stack, '/v1/payments', { authorization: `Bearer ${WRONG}` });
    expect(wrong.status).toBe(401);
    expect((JSON.parse(wrong.text) as HttpErrorBody).error).toMatchObject({
      code: 'UNAUTHENTICATED',
      reason: 'WRONG_API_TOKEN',
    });
    expect(wrong.text).not.toContain(WRONG);
    expect(await rowCounts(stack.settle.db)).toEqual(before);

    const created = await fetch(`${stack.settleHttp}/v1/payments`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'idempotency-key': randomUUID(),
        authorization: `Bearer ${TOKEN}`,
      },
      body: JSON.stringify({
        buyerId: 'buyer-rest-auth',
        currencyCode: 'USD',
        orders: [{ sellerId: 'seller-auth', amountMinor: '500' }],
      }),
      signal: AbortSignal.timeout(10_000),
    });
    expect(created.status).toBe(200);
    const { payment } = (await created.json()) as { payment: { paymentId: string } };
    const got = await restGet(stack, `/v1/payments/${payment.paymentId}`, {
      authorization: `bearer ${TOKEN_PREVIOUS}`,
    });
    expect(got.status).toBe(200);
  });

  it('sends the token from the TypeScript client, on every service but AdminService', async () => {
    const address = `127.0.0.1:${stack.settle.grpcPort}`;
    const without = createSettleClient(address);
    const withToken = createSettleClient(address, { apiToken: TOKEN_PREVIOUS });
    try {
      const refused = await refusal(without.wallets.getWallet({ sellerId: 'seller-auth' }));
      expect([refused.code, refused.details]).toEqual([
        grpc.status.UNAUTHENTICATED,
        MISSING('WalletService'),
      ]);
      const { payment } = await withToken.payments.createPayment(createRequest());
      expect(payment?.paymentId).toMatch(/^pay_/);
      await withToken.ledger.listEntries({ pageSize: 1 });
      await withToken.reconciliation.listReports({});
      for await (const { payment: watched } of withToken.payments.watchPayment(
        payment?.paymentId ?? '',
        { timeoutMs: 5_000 },
      )) {
        expect(watched?.paymentId).toBe(payment?.paymentId);
        break;
      }
      // AdminService gets its own metadata, not the API token.
      const admin = await withToken.admin.listDeadLetters(
        {},
        { metadata: { authorization: `Bearer ${ADMIN_TOKEN}` } },
      );
      expect(admin.deadLetters).toEqual([]);
      expect(() => createSettleClient(address, { apiToken: 'has a space in it 0123' })).toThrow(
        'createSettleClient: apiToken must be printable ASCII without spaces, as API_TOKENS are',
      );
    } finally {
      without.close();
      withToken.close();
    }
  });

  it('sends the token from the CLI (SETTLE_API_TOKEN or --api-token) and says what to set when it is missing', async () => {
    const { payment } = await createSettleClient(`127.0.0.1:${stack.settle.grpcPort}`, {
      apiToken: TOKEN,
    }).payments.createPayment(createRequest());
    const paymentId = payment?.paymentId ?? '';

    const missing = await settleCli(stack, ['payment', 'get', paymentId]);
    expect(missing.code).toBe(1);
    // The server's message names the variable to set.
    expect(missing.stderr).toBe(`settle: UNAUTHENTICATED: ${MISSING('PaymentService')}\n`);
    const viaEnv = await settleCli(stack, ['payment', 'get', paymentId, '--json'], {
      SETTLE_API_TOKEN: TOKEN,
    });
    expect(viaEnv.stderr).toBe('');
    expect(viaEnv.code).toBe(0);
    expect((JSON.parse(viaEnv.stdout) as { paymentId: string }).paymentId).toBe(paymentId);
    const viaOption = await settleCli(stack, ['--api-token', TOKEN_PREVIOUS, 'trial-balance']);
    expect(viaOption.stderr).toBe('');
    expect(viaOption.code).toBe(0);
    const wrong = await settleCli(stack, ['trial-balance'], { SETTLE_API_TOKEN: WRONG });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(WRONG_MESSAGE('LedgerService'));
    expect(wrong.stderr).not.toContain(WRONG);
  });

  it('counts each refusal by reason in settle_api_credentials_refused_total, gRPC and REST alike', async () => {
    const refused = async () => {
      const text = await scrapeMetrics(stack.settleHttp);
      return {
        missing: metricSample(text, REFUSED_METRIC, { reason: 'MISSING_API_TOKEN' }),
        wrong: metricSample(text, REFUSED_METRIC, { reason: 'WRONG_API_TOKEN' }),
      };
    };
    const before = await refused();
    expect(before.missing).toBeGreaterThanOrEqual(0);
    expect(before.wrong).toBeGreaterThanOrEqual(0);

    await refusal(
      call(stack.ledger.getTrialBalance.bind(stack.ledger), { pageSize: 0, pageToken: '' }),
    );
    await refusal(
      call(
        stack.wallets.getWallet.bind(stack.wallets),
        { sellerId: 'seller-auth' },
        10_000,
        bearer(WRONG),
      ),
    );
    expect((await restGet(stack, '/v1/payments')).status).toBe(401);
    expect(
      (await restGet(stack, '/v1/payments', { authorization: `Bearer ${WRONG}` })).status,
    ).toBe(401);
    expect(
      (await restGet(stack, '/v1/payments', { authorization: `Bearer ${WRONG}` })).status,
    ).toBe(401);
    // The right token is not a refusal.
    expect(
      (await restGet(stack, '/v1/payments', { authorization: `Bearer ${TOKEN}` })).status,
    ).toBe(200);

    expect(await refused()).toEqual({
      missing: (before.missing ?? 0) + 2,
      wrong: (before.wrong ?? 0) + 3,
    });
  });

  it('logs no token, and no warning that the API is open', () => {
    const log = logLines.join('');
    expect(log).toContain('settle node ready');
    for (const token of [TOKEN, TOKEN_PREVIOUS, WRONG]) expect(log).not.toContain(token);
    expect(log).not.toContain('API_TOKENS is not set');
  });
});

describe('without API_TOKENS', () => {
  let stack: Stack;
  const logLines: string[] = [];

  beforeAll(async () => {
    stack = await startStack({
      overrides: {
        logger: createLogger(
          { level: 'warn', name: 'settle' },
          { write: (line) => logLines.push(line) },
        ),
      },
    });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('answers callers without a token, as before, and warns once at start that the API is open', async () => {
    const created = await call(stack.payments.createPayment.bind(stack.payments), createRequest());
    expect(created.payment?.paymentId).toMatch(/^pay_/);
    // A token sent to an open node is not looked at.
    await call(
      stack.ledger.getTrialBalance.bind(stack.ledger),
      { pageSize: 0, pageToken: '' },
      10_000,
      bearer(WRONG),
    );
    expect((await restGet(stack, '/v1/payments')).status).toBe(200);
    // Nothing is refused, and both series are there from the start, at 0.
    const text = await scrapeMetrics(stack.settleHttp);
    expect(metricSample(text, REFUSED_METRIC, { reason: 'MISSING_API_TOKEN' })).toBe(0);
    expect(metricSample(text, REFUSED_METRIC, { reason: 'WRONG_API_TOKEN' })).toBe(0);
    // Nobody is asked who they are, so every call has the one fixed caller, token sent or not.
    const requests = (method: string, code: string) =>
      metricSample(text, 'settle_api_requests_total', { caller: 'NO_API_TOKENS', method, code });
    expect(requests('PaymentService.CreatePayment', 'OK')).toBe(1);
    expect(requests('LedgerService.GetTrialBalance', 'OK')).toBe(1);
    expect(requests('GET /v1/payments', '200')).toBe(1);
    expect(text).not.toMatch(/^settle_api_requests_total\{[^}]*caller="(?!NO_API_TOKENS")/m);
    const warnings = logLines.filter((line) => line.includes('API_TOKENS is not set'));
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(warnings[0]!)).toMatchObject({
      level: 'warn',
      msg: expect.stringContaining('answer anyone who reaches the ports') as unknown,
    });
  });
});

describe('API_TOKENS setting', () => {
  it('takes a comma-separated list, trimmed, and refuses short or header-unsafe tokens without quoting them', () => {
    // Tokens alone, as before names and scopes (test/grpc/api-scopes.test.ts): full access.
    expect(loadConfig({ API_TOKENS: ` ${TOKEN} ,${TOKEN_PREVIOUS},` }).API_TOKENS).toEqual([
      { name: 'unnamed', scope: 'write', token: TOKEN },
      { name: 'unnamed', scope: 'write', token: TOKEN_PREVIOUS },
    ]);
    expect(loadConfig({}).API_TOKENS).toEqual([]);
    expect(loadConfig({ API_TOKENS: '' }).API_TOKENS).toEqual([]);
    const unsafe = 'tökens-are-ascii-only-0123';
    // Spaces separate a token's name, scope and token now; a token cannot hold one either way.
    const spaced = 'has spaces in it far too';
    let message = '';
    try {
      loadConfig({ API_TOKENS: `short-token,${unsafe},${spaced}` });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toBe(
      'invalid configuration:\n' +
        '  - API_TOKENS.0: each token must have 16 characters or more\n' +
        '  - API_TOKENS.1: each token must be printable ASCII without spaces (it travels in a header)\n' +
        '  - API_TOKENS.2: has 6 fields separated by spaces, but a token cannot hold a space (it ' +
        'travels in a header): write a token alone (scope write), or "<name> <scope> <token>"',
    );
    for (const quoted of ['short-token', unsafe, 'far too']) expect(message).not.toContain(quoted);
  });
});
