/**
 * Shared test support: per-file databases and namespaces on the real MariaDB and NATS, a full
 * stack (PSP mock + Settle node) on free ports, typed gRPC clients, the hosted-page flow as a
 * browser does it, condition waits with deadlines, and the money invariants every scenario ends
 * with (ledger balanced, wallets equal to the ledger, the ledger booking exactly the orders that
 * succeeded).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { expect, inject } from 'vitest';
import { loadConfig, type Config } from '../../src/config.js';
import { startSettle, type SettleNode, type SettleOverrides } from '../../src/app.js';
import { startPspMock, type PspMock } from '../../src/psp/mock/index.js';
import {
  dropDatabase,
  ensureDatabase,
  migrateToLatest,
  openDatabase,
  withDatabaseName,
  type Db,
} from '../../src/storage/db.js';
import { freePort } from '../../src/chaos/free-port.js';
import {
  paymentInserts,
  type NewPayment,
} from '../../src/storage/repositories/payment.repository.js';
import {
  encodePspWebhookEvent,
  PSP_SIGNATURE_HEADER,
  PSP_WEBHOOK_EVENT_TYPE,
  signWebhook,
  type PspWebhookEvent,
} from '../../src/psp/webhook.js';

// One implementation for tests, the bench and the chaos demo.
export { dropDatabase, freePort };
import {
  ordersNotMatchingLedger,
  trialBalanceByCurrency,
  unbalancedLedgerTransactions,
  walletsNotMatchingLedger,
} from '../../src/storage/repositories/ledger.repository.js';
import { PaymentServiceClient } from '../../src/grpc/generated/settle/v1/payment.js';
import {
  LedgerServiceClient,
  WalletServiceClient,
} from '../../src/grpc/generated/settle/v1/wallet.js';
import { PspServiceClient } from '../../src/grpc/generated/settle/psp/v1/psp.js';
import { connect } from '@nats-io/transport-node';
import { deleteTopology } from '../../src/messaging/nats.js';

export function uniqueSuffix(): string {
  return randomBytes(4).toString('hex');
}

/** A database URL on the test server with a fresh database name (created on first use). */
export function testDatabaseUrl(prefix: string): string {
  return withDatabaseName(inject('mysqlUrl'), `${prefix}_${uniqueSuffix()}`);
}

/** The environment of a test node: the test defaults, then `env`. */
export function testEnv(env: Record<string, string> = {}): Record<string, string> {
  return {
    NATS_URL: inject('natsUrl'),
    LOG_LEVEL: 'silent',
    CREATE_WAIT_MS: '2000',
    PSP_SUCCESS_RATE: '1',
    // The daily timers stay off unless a test turns them on (they would write and read files).
    RECONCILIATION_AT: 'off',
    PSP_SETTLEMENT_AT: 'off',
    ...env,
  };
}

/**
 * Writes one payment of one order straight to the database at `at`, through the creation's own
 * statements: a fixture for tests that need rows in a given state (or age) without the flow.
 */
export async function insertPaymentOfOneOrder(
  db: Db,
  fixture: Readonly<{
    paymentId: string;
    orderId: string;
    paymentState: NewPayment['state'];
    orderState: string;
    at: Date;
    failureReason?: string;
    attempts?: number;
    sellerId?: string;
  }>,
): Promise<void> {
  const amountMinor = 500n;
  for (const statement of paymentInserts(db, [
    {
      payment: {
        id: fixture.paymentId,
        buyerId: 'buyer-fixture',
        requestId: `fixture-${fixture.paymentId.slice(4)}`, // fits CHAR(36)
        currency: 'USD',
        amountMinor,
        state: fixture.paymentState,
        failureReason: fixture.failureReason,
        orders: [
          {
            id: fixture.orderId,
            sellerId: fixture.sellerId ?? 'seller-fixture',
            amountMinor,
            state: fixture.orderState,
            failureReason: fixture.failureReason,
            attempts: fixture.attempts ?? 1,
          },
        ],
      },
      now: fixture.at,
    },
  ])) {
    await db.executeQuery(statement);
  }
}

export type TestDatabase = Readonly<{ db: Db; url: string; close: () => Promise<void> }>;

/**
 * A fresh database on the test server, migrated, with a pool of `poolSize`. `close()` closes
 * the pool and drops the database.
 */
export async function openTestDatabase(
  prefix: string,
  options: Readonly<{ poolSize: number; multipleStatements?: boolean; lockWaitTimeoutS?: number }>,
): Promise<TestDatabase> {
  const url = testDatabaseUrl(prefix);
  await ensureDatabase(url);
  const opened = openDatabase(url, options);
  const close = async () => {
    await opened.close();
    await dropDatabase(url);
  };
  try {
    await migrateToLatest(opened.db);
  } catch (error) {
    await close();
    throw error;
  }
  return { db: opened.db, url, close };
}

/** Runs a `SELECT COUNT(*) AS n …` (or any query whose first row has `n`) and answers n. */
export async function count(db: Db, query: ReturnType<typeof sql<{ n: string }>>): Promise<number> {
  const result = await query.execute(db);
  return Number(result.rows[0]?.n ?? 0);
}

export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig(testEnv(env));
}

export type Stack = Readonly<{
  /** The environment `config` was loaded from: a second node on the same stack starts from it. */
  env: Readonly<Record<string, string>>;
  config: Config;
  settle: SettleNode;
  psp: PspMock;
  payments: PaymentServiceClient;
  wallets: WalletServiceClient;
  ledger: LedgerServiceClient;
  pspApi: PspServiceClient;
  settleHttp: string;
  stop: () => Promise<void>;
}>;

/**
 * Starts the PSP mock and one Settle node, each with its own database, in a fresh namespace, on
 * free ports. `stop()` stops both, deletes the streams and drops the databases.
 */
export async function startStack(
  options: { env?: Record<string, string>; overrides?: SettleOverrides } = {},
): Promise<Stack> {
  const [grpcPort, httpPort, pspGrpcPort, pspHttpPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  const settleDb = testDatabaseUrl('settle_t');
  const pspDb = testDatabaseUrl('settle_psp_t');
  const env = testEnv({
    MYSQL_URL: settleDb,
    PSP_MYSQL_URL: pspDb,
    SETTLE_NAMESPACE: `t${uniqueSuffix()}`,
    SETTLE_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
    SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
    PSP_GRPC_ADDR: `127.0.0.1:${pspGrpcPort}`,
    PSP_HTTP_ADDR: `127.0.0.1:${pspHttpPort}`,
    ...options.env,
  });
  const config = loadConfig(env);
  const psp = await startPspMock({ config, webhook: { backoffMsInitial: 50, backoffMsMax: 500 } });
  const settle = await startSettle(config, { nodeName: 'test-node', ...options.overrides });
  const address = `127.0.0.1:${settle.grpcPort}`;
  const credentials = grpc.credentials.createInsecure();
  const payments = new PaymentServiceClient(address, credentials);
  const wallets = new WalletServiceClient(address, credentials);
  const ledger = new LedgerServiceClient(address, credentials);
  const pspApi = new PspServiceClient(`127.0.0.1:${psp.grpcPort}`, credentials);
  return {
    env,
    config,
    settle,
    psp,
    payments,
    wallets,
    ledger,
    pspApi,
    settleHttp: `http://127.0.0.1:${settle.httpPort}`,
    stop: async () => {
      for (const client of [payments, wallets, ledger, pspApi]) client.close();
      await settle.stop();
      await psp.stop();
      await removeNamespace(config);
      await dropDatabase(config.MYSQL_URL);
      await dropDatabase(config.PSP_MYSQL_URL);
    },
  };
}

export async function removeNamespace(config: Config): Promise<void> {
  const nc = await connect({ servers: config.NATS_URL });
  try {
    const { names } = await import('../../src/messaging/subjects.js');
    await deleteTopology(nc, names(config.SETTLE_NAMESPACE, config.CMD_PARTITIONS));
  } finally {
    await nc.close();
  }
}

/** Promisifies one unary call of a ts-proto grpc-js client. */
export function call<Req, Res>(
  method: (
    request: Req,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (error: grpc.ServiceError | null, response: Res) => void,
  ) => grpc.ClientUnaryCall,
  request: Req,
  timeoutMs = 10_000,
  metadata: grpc.Metadata = new grpc.Metadata(),
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, metadata, { deadline: Date.now() + timeoutMs }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** Runs a call that must fail; returns the ServiceError. */
export async function callError<Req, Res>(
  method: Parameters<typeof call<Req, Res>>[0],
  request: Req,
): Promise<grpc.ServiceError> {
  try {
    await call(method, request);
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
}

export async function waitFor<T>(
  probe: () => Promise<T | undefined | false>,
  options: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 25));
  }
  throw new Error(
    `timed out waiting for ${options.what ?? 'condition'}${last ? `: ${String(last)}` : ''}`,
  );
}

/** A node's `GET /metrics`, checked to be Prometheus text. */
export async function scrapeMetrics(settleHttp: string): Promise<string> {
  const response = await fetch(`${settleHttp}/metrics`, { signal: AbortSignal.timeout(10_000) });
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toContain('text/plain');
  return response.text();
}

export { metricSample } from '../../src/observability/prometheus-text.js';

/** Pays on the hosted page as a browser does: GET the page, find the form, POST the card. */
export async function payOnHostedPage(
  checkoutUrl: string,
  cardNumber: string,
): Promise<{ status: number; html: string }> {
  const page = await fetch(checkoutUrl, { signal: AbortSignal.timeout(5_000) });
  const html = await page.text();
  expect(page.status).toBe(200);
  const form =
    /<form[^>]*method="post"[^>]*action="([^"]+)"/i.exec(html) ??
    /<form[^>]*action="([^"]+)"[^>]*method="post"/i.exec(html);
  expect(form, 'hosted page has a POST form').not.toBeNull();
  expect(html).toMatch(/name="card_number"/);
  const action = new URL(form?.[1] ?? '', checkoutUrl).toString();
  const response = await fetch(action, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ card_number: cardNumber }).toString(),
    signal: AbortSignal.timeout(5_000),
  });
  return { status: response.status, html: await response.text() };
}

/**
 * A PSP webhook event for `orderId`, as the PSP sends it: succeeded, or declined when
 * `declineCode` is given. `token` is the order's PSP token: Settle refuses a result that names
 * another. Fields not given get fresh values, and USD.
 */
export function pspEvent(
  orderId: string,
  fields: Readonly<{
    amountMinor: bigint;
    token: string;
    declineCode?: string;
    pspReference?: string;
    eventId?: string;
    currency?: string;
  }>,
): PspWebhookEvent {
  const declined = fields.declineCode !== undefined;
  return {
    id: fields.eventId ?? `evt_${randomUUID()}`,
    type: declined
      ? PSP_WEBHOOK_EVENT_TYPE.paymentDeclined
      : PSP_WEBHOOK_EVENT_TYPE.paymentSucceeded,
    created: Math.floor(Date.now() / 1000),
    data: {
      nonce: orderId,
      token: fields.token,
      psp_reference: declined ? null : (fields.pspReference ?? `psp_${randomUUID()}`),
      amount_minor: fields.amountMinor,
      currency: fields.currency ?? 'USD',
      decline_code: fields.declineCode ?? null,
    },
  };
}

export type WebhookResponse = {
  status: number;
  body: {
    received?: boolean;
    duplicate?: boolean;
    ignored?: boolean;
    error?: { message: string };
  };
};

/**
 * Posts a webhook to a node as the PSP does, signed now with the node's secret. A string is sent
 * as it is (a test about the route's own parsing builds its raw body itself).
 */
export async function postWebhook(
  stack: Pick<Stack, 'settleHttp' | 'config'>,
  event: PspWebhookEvent | string,
): Promise<WebhookResponse> {
  const body = Buffer.from(typeof event === 'string' ? event : encodePspWebhookEvent(event));
  const response = await fetch(`${stack.settleHttp}/webhooks/psp`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      [PSP_SIGNATURE_HEADER]: signWebhook(
        stack.config.PSP_WEBHOOK_SECRET,
        body,
        Math.floor(Date.now() / 1000),
      ),
    },
    body,
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, body: (await response.json()) as WebhookResponse['body'] };
}

export const CARD = { success: '4242424242424242', decline: '4000000000000002' } as const;

/** Every ledger transaction balances and the trial balance is zero per currency. */
export async function expectLedgerBalanced(db: Db): Promise<void> {
  expect(await unbalancedLedgerTransactions(db), 'unbalanced ledger transactions').toEqual([]);
  for (const total of await trialBalanceByCurrency(db)) {
    expect(total.balanceMinor, `trial balance ${total.currency}`).toBe(0n);
  }
}

/** Every wallet equals its seller's payable account in the ledger, and vice versa. */
export async function expectWalletsMatchLedger(db: Db): Promise<void> {
  expect(await walletsNotMatchingLedger(db)).toEqual([]);
}

/**
 * The ledger books exactly the orders that succeeded, order by order: one PAYMENT transaction per
 * SUCCEEDED order for its amount and currency, crediting its own seller and no one else; no
 * PAYMENT and no seller credit for an order in any other state; no transaction or entry of an
 * order that does not exist; each payment's total is the sum of its orders. A PSP_FEE booking
 * (debit fee_expense, credit psp_receivable) of an existing order is valid.
 */
export async function expectOrdersMatchLedger(db: Db): Promise<void> {
  expect(await ordersNotMatchingLedger(db), 'orders not matching the ledger').toEqual({
    misbooked: [],
    miscredited: [],
    sellerEntriesNotOfAPayment: [],
    transactionsOfUnknownOrders: [],
    entriesOfUnknownTransactions: [],
    entriesNotOfTheirTransaction: [],
    paymentsOff: [],
  });
}

/** The ledger balances, the wallets equal it, and it books exactly the orders that succeeded. */
export async function expectMoneyInvariants(db: Db): Promise<void> {
  await expectLedgerBalanced(db);
  await expectWalletsMatchLedger(db);
  await expectOrdersMatchLedger(db);
}

/** Row counts of every Settle table, to prove a rejected request wrote nothing. */
export async function rowCounts(db: Db): Promise<Record<string, number>> {
  const tables = [
    'idempotency_key',
    'payment',
    'payment_order',
    'payment_order_transition',
    'ledger_transaction',
    'ledger_entry',
    'wallet',
    'outbox',
    'inbox',
    // Guards of one-packet transactions can never store a row; a row here would be a bug.
    'one_trip_guard',
  ];
  const counts: Record<string, number> = {};
  for (const table of tables) {
    const result = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM ${sql.table(table)}`.execute(
      db,
    );
    counts[table] = Number(result.rows[0]?.n ?? 0);
  }
  return counts;
}
