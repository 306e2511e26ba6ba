/**
 * Goal: every RPC of every service (Settle's five and the PSP mock's) and the REST twin answer
 * malformed input with a clear status (never INTERNAL, UNKNOWN or a hang), a message without a
 * stack trace or SQL, write nothing when they refuse, and leave the node healthy and the money
 * invariants intact. Method: a seeded PRNG (FUZZ_SEED, printed in every failure) draws many
 * requests per method from hostile values (empty and 10 KB strings, control characters, SQL
 * metacharacters, astral and lone-surrogate unicode, int64 extremes, unknown enum numbers, page
 * sizes and forged page tokens, thousands of repeated entries, out-of-range dates, hostile
 * x-request-id metadata); each is sent through the method's own serializer to a real stack, with
 * the row counts of every table of both databases taken before and after. Raw bytes that are not
 * the request message (truncated, bad tags and wire types, invalid UTF-8, random) go to every
 * method too; so do a request id reused at once with different bodies, and settlement files with
 * hostile cells for RunReconciliation. A table of specs, one per method, is checked against the
 * service definitions, so a new RPC without a spec fails here. Reproduce a failure with the
 * FUZZ_SEED it prints; FUZZ_DRAWS sets the requests drawn per method (80).
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodePageToken, type PagedList } from '../../src/domain/page-token.js';
import { newId, ORDER_ID_PATTERN, PARTY_ID_PATTERN } from '../../src/domain/ids.js';
import { addUtcDays, utcDayOf } from '../../src/domain/utc-day.js';
import { SETTLEMENT_HEADER } from '../../src/reconciliation/settlement-file.js';
import { openDatabase, type Db } from '../../src/storage/db.js';
import { isLedgerAccount } from '../../src/storage/repositories/ledger.repository.js';
import {
  AdminServiceService,
  DiscardDeadLetterRequest,
  GetPaymentTimelineRequest,
  ListDeadLettersRequest,
  RepairLedgerSumsRequest,
  ReplayDeadLetterRequest,
} from '../../src/grpc/generated/settle/v1/admin.js';
import {
  CreatePaymentRequest,
  GetPaymentRequest,
  ListPaymentsRequest,
  PaymentServiceService,
  WatchPaymentRequest,
} from '../../src/grpc/generated/settle/v1/payment.js';
import {
  GetReportRequest,
  ListMismatchesRequest,
  ListReportsRequest,
  ReconciliationServiceService,
  RunReconciliationRequest,
} from '../../src/grpc/generated/settle/v1/reconciliation.js';
import {
  GetTrialBalanceRequest,
  GetWalletRequest,
  LedgerServiceService,
  ListEntriesRequest,
  WalletServiceService,
} from '../../src/grpc/generated/settle/v1/wallet.js';
import {
  CancelPaymentRequest,
  GenerateSettlementFileRequest,
  GetPaymentStatusRequest,
  InjectSettlementDiscrepancyRequest,
  ListChargesRequest,
  PayWithCardRequest,
  PspServiceService,
  RegisterPaymentRequest,
  ResendWebhookRequest,
  SetBehaviorRequest,
} from '../../src/grpc/generated/settle/psp/v1/psp.js';
import { ADMIN_TOKEN } from '../admin/admin-support.js';
import {
  call,
  expectMoneyInvariants,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 0x5e771e);
/** Requests drawn per method (besides its fixed cases); the whole file stays under a minute. */
const DRAWS_PER_METHOD = Number(process.env['FUZZ_DRAWS'] ?? 80);
const CALL_DEADLINE_MS = 10_000;

/** mulberry32: a small, fast PRNG; the same seed gives the same requests on every machine. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rng = Readonly<{
  next: () => number;
  int: (below: number) => number;
  pick: <T>(values: readonly T[]) => T;
  chance: (p: number) => boolean;
}>;

function rngOf(seed: number): Rng {
  const next = prng(seed);
  const int = (below: number) => Math.floor(next() * below);
  return {
    next,
    int,
    pick: <T>(values: readonly T[]): T => values[int(values.length)] as T,
    chance: (p) => next() < p,
  };
}

const INT64_MAX = 9_223_372_036_854_775_807n;
const INT64_MIN = -9_223_372_036_854_775_808n;
const INT32_MAX = 2_147_483_647;
const INT32_MIN = -2_147_483_648;

/** Strings no input check should let through to SQL, a file path, a log line or a header. */
const HOSTILE_STRINGS: readonly string[] = [
  '',
  ' ',
  '\t\n',
  'x'.repeat(10 * 1024),
  'é'.repeat(5 * 1024),
  '\u0000',
  'a\u0000b',
  '\u0001\u0002\u0003\u001b[31m',
  '\r\nx-injected: 1',
  "'",
  "' OR '1'='1",
  "'; DROP TABLE payment; --",
  '" OR ""="',
  '%',
  '%_\\',
  '\\',
  '`',
  '/* */',
  '💸🏦',
  '\ud800',
  '\udfff\ud800',
  '\u202eevil',
  '\ufeff',
  'Ω≈ç√',
  '../../../../etc/passwd',
  '/etc/passwd',
  'C:\\Windows\\win.ini',
  '%2e%2e%2f',
  'NaN',
  '-1',
  '9223372036854775808',
  'null',
  'undefined',
  '{}',
  '[]',
  '<script>alert(1)</script>',
  'pay_00000000000000000000000000',
  'pay_ZZZZZZZZZZZZZZZZZZZZZZZZZZ',
  'ord_00000000000000000000000000',
  'rcn_00000000000000000000000000',
  'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G ',
  'PAY_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
  // An emoji where messages cut the input they quote (16, 40 and 80 code units).
  `${'x'.repeat(15)}🙂`,
  `${'x'.repeat(39)}🙂`,
  `${'x'.repeat(79)}🙂`,
];

const HOSTILE_DATES: readonly string[] = [
  '0000-01-01',
  '0001-01-01',
  '1000-01-01',
  '1969-12-31',
  '1970-01-01',
  '2026-02-30',
  '2026-13-01',
  '2026-00-10',
  '2026-1-1',
  '9999-12-31',
  '+275760-09-13',
  '-000001-01-01',
  '2026-11-27T00:00:00Z',
  'yesterday',
];

const HOSTILE_INT64: readonly bigint[] = [INT64_MAX, INT64_MIN, -1n, 0n, 1n, 1_000_000_000_001n];
const HOSTILE_INT32: readonly number[] = [0, -1, 1, INT32_MAX, INT32_MIN, 100_000];
const HOSTILE_ENUMS: readonly number[] = [0, 1, 5, 6, 99, -1, INT32_MAX, INT32_MIN];

/** A string of `length` code units drawn from hostile alphabets. */
function randomString(rng: Rng, length: number): string {
  const alphabets = [
    'abcXYZ019_.:@-\'"%\\;`',
    '\u0000\u0001\u0007\u001f\u007f\u0085\u00a0',
    'é中文🙂\u202e\ufeff',
    '\ud800\udc00\udbff',
  ];
  let out = '';
  for (let i = 0; i < length; i += 1) {
    const alphabet = rng.pick(alphabets);
    out += alphabet[rng.int(alphabet.length)];
  }
  return out;
}

function hostileString(rng: Rng): string {
  return rng.chance(0.75)
    ? rng.pick(HOSTILE_STRINGS)
    : randomString(rng, rng.pick([1, 2, 30, 65, 300]));
}

/** A page token: garbage, or one of ours forged for another list, filter or cursor. */
function hostilePageToken(rng: Rng): string {
  const lists: PagedList[] = [
    'ListPayments',
    'ListEntries',
    'GetTrialBalance',
    'ListDeadLetters',
    'ListReports',
    'ListMismatches',
  ];
  const cursors = [
    '9999999999999999999',
    '18446744073709551616',
    '-1',
    '0',
    '1e3',
    "1' OR '1'='1",
    'pay_ZZZZZZZZZZZZZZZZZZZZZZZZZZ',
    '\u0000',
    'x'.repeat(10 * 1024),
    'seller_payable:x\u0000USD',
    'psp_receivable|USD',
  ];
  switch (rng.int(5)) {
    case 0:
      return hostileString(rng);
    case 1:
      return rng.pick(['garbage', 'e30', 'bnVsbA', 'W10', '!!!', '====', 'AAAA'.repeat(2_000)]);
    case 2:
      return Buffer.from(
        JSON.stringify({ cursor: rng.pick(cursors), filter: rng.pick(['', '[]', '{}', 'x']) }),
      ).toString('base64url');
    default:
      // Right list and no filter: only the cursor is hostile.
      return encodePageToken(rng.pick(lists), rng.pick(cursors), {});
  }
}

/** Either a hostile value or, now and then, a plausible one, so checks past the first run too. */
function either<T>(rng: Rng, hostile: () => T, plausible: T): T {
  return rng.chance(0.7) ? hostile() : plausible;
}

type Outcome = Readonly<{ code: grpc.status; details: string; messages: number }>;

/** A method under fuzz: how to draw its requests, and what it may write when it answers OK. */
type Spec = Readonly<{
  service: grpc.ServiceDefinition;
  /** The method's key in the service definition (ts-proto's lowerCamelCase name). */
  method: string;
  /** The message's codec: requests are completed with fromPartial, then encoded. */
  codec: { fromPartial: (partial: never) => unknown };
  draw: (rng: Rng) => unknown;
  /** Fixed requests sent besides the drawn ones. */
  fixed?: () => unknown[];
  /** May write when it answers OK (a valid request turned up); reads never may. */
  writes?: boolean;
  /**
   * What an accepted write writes has committed when it answers, and starts nothing in the
   * background: no wait for the databases to go quiet after it (400 ms or more each).
   */
  writesDoneOnAnswer?: boolean;
  /** Tables a refused call may still write by design (the admin audit trail records attempts). */
  mayWriteWhenRefused?: readonly string[];
  /** True for a request that must be refused (whatever the code), never answered OK. */
  refuses?: (request: never) => boolean;
  /** Called after each request (restores state a valid draw may have changed). */
  after?: () => void;
  admin?: boolean;
  psp?: boolean;
}>;

/**
 * Codes a refusal may carry; OK is also accepted for a request that turned out valid. UNAVAILABLE
 * is left out on purpose: the stack is healthy, so it would be bad input taken for an outage.
 */
const ALLOWED = new Set<grpc.status>([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.UNAUTHENTICATED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/**
 * Whatever reads as an implementation leaking out rather than a message for a person. A MySQL
 * error code starts a word: seller_payable, which a message may name, is not ER_PAYABLE.
 */
const LEAK =
  /\bER_[A-Z_]{3,}|SQL syntax|sqlState|sqlMessage|errno|\bat [\w.<>$]+ \(|node:internal|\.[jt]s:\d+|node_modules|kysely|mysql2|TypeError|RangeError|ReferenceError|Cannot read prop|undefined is not|Incorrect string value|Illegal mix of collations|Data too long/i;

let stack: Stack;
let pspDb: { db: Db; close: () => Promise<void> };
let settlementDir: string;
let address: string;
let raw: grpc.Client;
let pspRaw: grpc.Client;
let existingPaymentId: string;
let existingOrderId: string;
let existingRequestId: string;

beforeAll(async () => {
  settlementDir = mkdtempSync(path.join(tmpdir(), 'settle-fuzz-'));
  stack = await startStack({
    env: { ADMIN_TOKEN, SETTLEMENT_DIR: settlementDir, ADMIN_READONLY_OPEN: 'false' },
  });
  pspDb = openDatabase(stack.config.PSP_MYSQL_URL, { poolSize: 2 });
  address = `127.0.0.1:${stack.settle.grpcPort}`;
  raw = new grpc.Client(address, grpc.credentials.createInsecure());
  pspRaw = new grpc.Client(`127.0.0.1:${stack.psp.grpcPort}`, grpc.credentials.createInsecure());
  // One real payment, so reused request ids, found-and-refused paths and filters have a row.
  existingRequestId = randomUUID();
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: existingRequestId,
    buyerId: 'buyer-fuzz',
    currencyCode: 'USD',
    orders: [{ sellerId: 'seller-fuzz', amountMinor: 1234n }],
  });
  existingPaymentId = created.payment?.paymentId ?? '';
  existingOrderId = created.payment?.orders[0]?.orderId ?? '';
  await waitFor(
    async () => {
      const got = await call(stack.payments.getPayment.bind(stack.payments), {
        paymentId: existingPaymentId,
      });
      return got.payment?.orders.every((order) => order.checkoutUrl !== '');
    },
    { what: 'the fixture order registered with the PSP' },
  );
  await quiet();
}, 120_000);

afterAll(async () => {
  raw?.close();
  pspRaw?.close();
  await pspDb?.close();
  await stack?.stop();
  if (settlementDir) rmSync(settlementDir, { recursive: true, force: true });
});

/**
 * Row counts of every table of a database, in one statement. Not ledger_entry_mark: each node
 * writes a mark there every second, whatever it is asked (ListEntries' horizon). Nor the ledger's
 * running sums: a node adds the entries of earlier cases' payments to them every few seconds.
 */
async function tableCounts(db: Db): Promise<Record<string, number>> {
  const tables = await sql<{ name: string }>`
    SELECT table_name AS name FROM information_schema.tables
    WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'
      AND table_name NOT LIKE 'kysely%' AND table_name <> 'schema_migration_step'
      AND table_name NOT IN ('ledger_entry_mark', 'ledger_account_sum', 'ledger_currency_sum')
    ORDER BY table_name`.execute(db);
  const names = tables.rows.map((row) => row.name);
  const counts = await sql<Record<string, string>>`SELECT ${sql.join(
    names.map((name) => sql`(SELECT COUNT(*) FROM ${sql.table(name)}) AS ${sql.ref(name)}`),
  )}`.execute(db);
  const row = counts.rows[0] ?? {};
  return Object.fromEntries(names.map((name) => [name, Number(row[name] ?? 0)]));
}

async function allCounts(): Promise<Record<string, number>> {
  const [settle, psp] = await Promise.all([tableCounts(stack.settle.db), tableCounts(pspDb.db)]);
  return {
    ...Object.fromEntries(Object.entries(settle).map(([name, n]) => [`settle.${name}`, n])),
    ...Object.fromEntries(Object.entries(psp).map(([name, n]) => [`psp.${name}`, n])),
  };
}

/** Waits until no table changes for a while: background work of an accepted call is done. */
async function quiet(): Promise<void> {
  let last = JSON.stringify(await allCounts());
  let stableSince = Date.now();
  const deadline = Date.now() + 15_000;
  while (Date.now() - stableSince < 400) {
    if (Date.now() > deadline) throw new Error('the databases never went quiet');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = JSON.stringify(await allCounts());
    if (now !== last) {
      last = now;
      stableSince = Date.now();
    }
  }
}

function adminMetadata(token: string | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** Sends `bytes` to `path` (unary or server-streaming) and answers the status it ends with. */
function send(
  client: grpc.Client,
  definition: grpc.MethodDefinition<unknown, unknown>,
  bytes: Buffer,
  metadata: grpc.Metadata,
): Promise<Outcome> {
  const identity = (value: Buffer) => value;
  const options = { deadline: new Date(Date.now() + CALL_DEADLINE_MS) };
  if (definition.responseStream) {
    return new Promise((resolve) => {
      let messages = 0;
      const stream = client.makeServerStreamRequest(
        definition.path,
        identity,
        identity,
        bytes,
        metadata,
        options,
      );
      stream.on('data', () => {
        messages += 1;
        // A watch of a payment that is not terminal would stay open: one message is enough.
        stream.cancel();
      });
      stream.on('error', (error: grpc.ServiceError) =>
        resolve({
          code: error.code === grpc.status.CANCELLED && messages > 0 ? grpc.status.OK : error.code,
          details: error.details,
          messages,
        }),
      );
      stream.on('status', (status: grpc.StatusObject) => {
        if (status.code === grpc.status.OK)
          resolve({ code: status.code, details: status.details, messages });
      });
    });
  }
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      definition.path,
      identity,
      identity,
      bytes,
      metadata,
      options,
      (error) =>
        resolve(
          error
            ? { code: error.code, details: error.details, messages: 0 }
            : { code: grpc.status.OK, details: '', messages: 1 },
        ),
    );
  });
}

function describeRequest(request: unknown): string {
  const text = String(
    JSON.stringify(request, (_key, value: unknown) =>
      typeof value === 'bigint'
        ? `${value}n`
        : typeof value === 'string' && value.length > 80
          ? `${value.slice(0, 40)}…(${value.length} chars)`
          : Array.isArray(value) && value.length > 10
            ? [...value.slice(0, 3), `…(${value.length} entries)`]
            : value,
    ),
  );
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}

function changedTables(
  before: Record<string, number>,
  after: Record<string, number>,
  allowed: readonly string[],
): string[] {
  return Object.keys({ ...before, ...after })
    .filter((name) => !allowed.includes(name))
    .filter((name) => before[name] !== after[name])
    .map((name) => `${name}: ${before[name]} → ${after[name]}`);
}

/**
 * Sends one request or raw bytes and checks everything the project promises of an answer to bad
 * input. `label` names the case in the failure message, with the seed.
 */
async function expectCleanAnswer(
  spec: Spec,
  label: string,
  bytes: Buffer,
  metadata: grpc.Metadata,
): Promise<Outcome> {
  const definition = spec.service[spec.method] as grpc.MethodDefinition<unknown, unknown>;
  const client = spec.psp ? pspRaw : raw;
  const before = await allCounts();
  const started = Date.now();
  const outcome = await send(client, definition, bytes, metadata);
  const where = `${definition.path} ${label} (FUZZ_SEED=${SEED})`;
  expect(
    ALLOWED.has(outcome.code),
    `${where} answered ${grpc.status[outcome.code]}: ${outcome.details}`,
  ).toBe(true);
  expect(Date.now() - started, `${where} took too long`).toBeLessThan(CALL_DEADLINE_MS);
  if (outcome.code !== grpc.status.OK) {
    expect(outcome.details.length, `${where}: an empty message`).toBeGreaterThan(0);
    expect(outcome.details.length, `${where}: a message too long to read`).toBeLessThanOrEqual(
      1_100,
    );
    expect(outcome.details, `${where}: the message leaks an implementation`).not.toMatch(LEAK);
  }
  if (outcome.code === grpc.status.OK && spec.writes) {
    // An accepted write may start background work: let it finish before the next comparison.
    spec.after?.();
    if (spec.writesDoneOnAnswer !== true) await quiet();
    return outcome;
  }
  spec.after?.();
  const after = await allCounts();
  const allowed = outcome.code === grpc.status.OK ? [] : (spec.mayWriteWhenRefused ?? []);
  expect(changedTables(before, after, allowed), `${where} wrote rows`).toEqual([]);
  return outcome;
}

/** Request ids a caller may send in `x-request-id`; the node must replace the bad ones. */
const HOSTILE_REQUEST_IDS: readonly string[] = [
  '',
  'x'.repeat(8_000),
  "' OR '1'='1",
  '../../etc/passwd',
  '%00',
  '{"json":true}',
];

async function fuzzRequest(
  spec: Spec,
  request: unknown,
  label: string,
  rng?: Rng,
): Promise<Outcome> {
  const definition = spec.service[spec.method] as grpc.MethodDefinition<unknown, unknown>;
  const complete = spec.codec.fromPartial(request as never);
  const bytes = definition.requestSerialize(complete);
  const metadata = spec.admin ? adminMetadata(ADMIN_TOKEN) : new grpc.Metadata();
  const requestId = rng?.chance(0.15) ? rng.pick(HOSTILE_REQUEST_IDS) : undefined;
  if (requestId !== undefined) metadata.set('x-request-id', requestId);
  const outcome = await expectCleanAnswer(
    spec,
    `${label} ${describeRequest(request)}${requestId !== undefined ? ` x-request-id ${describeRequest(requestId)}` : ''}`,
    bytes,
    metadata,
  );
  if (spec.refuses?.(request as never)) {
    expect(
      grpc.status[outcome.code],
      `${definition.path} ${label} ${describeRequest(request)} must be refused (FUZZ_SEED=${SEED})`,
    ).not.toBe('OK');
  }
  return outcome;
}

/** Whether `value` is set and not of `pattern`'s shape: a filter or id no row can have. */
const malformed = (value: string | undefined, pattern: RegExp) =>
  value !== undefined && value !== '' && !pattern.test(value);

const string = (rng: Rng, plausible: string) => either(rng, () => hostileString(rng), plausible);
const int64 = (rng: Rng, plausible: bigint) =>
  either(rng, () => rng.pick(HOSTILE_INT64), plausible);
const int32 = (rng: Rng) => rng.pick(HOSTILE_INT32);
const enumNumber = (rng: Rng) => rng.pick(HOSTILE_ENUMS);
const pageToken = (rng: Rng) => (rng.chance(0.8) ? hostilePageToken(rng) : '');
const date = (rng: Rng) =>
  rng.chance(0.6) ? rng.pick(HOSTILE_DATES) : rng.chance(0.5) ? hostileString(rng) : '';

/** Sets the PSP mock's behaviour back to the test defaults (a valid SetBehavior may change it). */
function resetPspBehavior(): void {
  stack.psp.setBehavior({
    successRate: 1,
    latencyMs: 0,
    errorRate: 0,
    failNextRegistrations: 0,
    hangRate: 0,
    autoPayCard: null,
  });
}

function specs(): Spec[] {
  return [
    {
      service: PaymentServiceService,
      method: 'createPayment',
      codec: CreatePaymentRequest,
      writes: true,
      draw: (rng) => ({
        requestId: rng.chance(0.2) ? existingRequestId : string(rng, randomUUID()),
        buyerId: string(rng, 'buyer-fuzz'),
        currencyCode: either(
          rng,
          () => rng.pick(['', 'usd', 'EUR', 'US', 'USDX', '840', 'ÜSD']),
          'USD',
        ),
        orders: rng.chance(0.1)
          ? Array.from({ length: rng.pick([51, 2_000, 5_000]) }, (_, i) => ({
              sellerId: `s${i}`,
              amountMinor: 1n,
            }))
          : Array.from({ length: rng.int(3) }, () => ({
              sellerId: string(rng, 'seller-fuzz'),
              amountMinor: int64(rng, 100n),
            })),
      }),
      fixed: () => [
        // The fixture's key with another body: refused, nothing written.
        {
          requestId: existingRequestId,
          buyerId: 'buyer-fuzz',
          currencyCode: 'USD',
          orders: [{ sellerId: 'seller-fuzz', amountMinor: 1235n }],
        },
        {
          requestId: existingRequestId.toUpperCase(),
          buyerId: 'buyer-fuzz',
          currencyCode: 'USD',
          orders: [{ sellerId: 'seller-other', amountMinor: 1234n }],
        },
        {
          requestId: randomUUID(),
          buyerId: 'buyer-fuzz',
          currencyCode: 'USD',
          orders: [{ sellerId: 'seller-fuzz', amountMinor: INT64_MAX }],
        },
        {
          requestId: randomUUID(),
          buyerId: 'buyer-fuzz',
          currencyCode: 'USD',
          // Each within bounds; the sum is far beyond what one payment may hold.
          orders: Array.from({ length: 50 }, (_, i) => ({
            sellerId: `s${i}`,
            amountMinor: 1_000_000_000_000n,
          })),
        },
        {},
      ],
    },
    {
      service: PaymentServiceService,
      method: 'getPayment',
      codec: GetPaymentRequest,
      refuses: () => true,
      draw: (rng) => ({ paymentId: hostileString(rng) }),
      fixed: () => [
        { paymentId: existingPaymentId.toLowerCase() },
        { paymentId: existingOrderId },
        { paymentId: `${'x'.repeat(79)}🙂` },
      ],
    },
    {
      service: PaymentServiceService,
      method: 'listPayments',
      codec: ListPaymentsRequest,
      refuses: (request: { buyerId?: string; pageSize?: number; state?: number }) =>
        malformed(request.buyerId, PARTY_ID_PATTERN) ||
        (request.pageSize ?? 0) < 0 ||
        ![0, 1, 2, 3, 4, 5].includes(request.state ?? 0),
      draw: (rng) => ({
        pageSize: int32(rng),
        pageToken: pageToken(rng),
        state: enumNumber(rng),
        buyerId: string(rng, 'buyer-fuzz'),
      }),
    },
    {
      service: PaymentServiceService,
      method: 'watchPayment',
      codec: WatchPaymentRequest,
      draw: (rng) => ({ paymentId: hostileString(rng) }),
      fixed: () => [{ paymentId: newId('payment') }, {}],
    },
    {
      service: WalletServiceService,
      method: 'getWallet',
      codec: GetWalletRequest,
      refuses: () => true,
      draw: (rng) => ({ sellerId: hostileString(rng) }),
    },
    {
      service: LedgerServiceService,
      method: 'listEntries',
      codec: ListEntriesRequest,
      refuses: (request: { account?: string; orderId?: string; pageSize?: number }) =>
        malformed(request.orderId, ORDER_ID_PATTERN) ||
        (request.account !== undefined &&
          request.account !== '' &&
          !isLedgerAccount(request.account)) ||
        (request.pageSize ?? 0) < 0,
      draw: (rng) => ({
        pageSize: int32(rng),
        pageToken: pageToken(rng),
        account: string(rng, 'psp_receivable'),
        orderId: string(rng, existingOrderId),
      }),
    },
    {
      service: LedgerServiceService,
      method: 'getTrialBalance',
      codec: GetTrialBalanceRequest,
      draw: (rng) => ({ pageSize: int32(rng), pageToken: pageToken(rng) }),
    },
    {
      service: ReconciliationServiceService,
      method: 'runReconciliation',
      codec: RunReconciliationRequest,
      writes: true,
      draw: (rng) => ({
        settlementDate: date(rng),
        filePath: rng.chance(0.5)
          ? rng.pick([
              '',
              '../settlement-2026-01-01.csv',
              '/etc/passwd',
              'settlement-2026-01-01.csv\u0000.txt',
              'settlement-2026-02-30.csv',
              'settlement-9999-12-31.csv',
              '.',
              '..',
              '/',
              'sub/../../x.csv',
            ])
          : hostileString(rng),
      }),
      fixed: () => [{}, { settlementDate: `${'x'.repeat(39)}🙂` }],
    },
    {
      service: ReconciliationServiceService,
      method: 'getReport',
      codec: GetReportRequest,
      draw: (rng) => ({ reportId: hostileString(rng) }),
      fixed: () => [{ reportId: newId('reconciliationRun') }],
    },
    {
      service: ReconciliationServiceService,
      method: 'listReports',
      codec: ListReportsRequest,
      draw: (rng) => ({
        pageSize: int32(rng),
        pageToken: pageToken(rng),
        settlementDate: date(rng),
      }),
    },
    {
      service: ReconciliationServiceService,
      method: 'listMismatches',
      codec: ListMismatchesRequest,
      draw: (rng) => ({
        reportId: string(rng, newId('reconciliationRun')),
        mismatchClass: enumNumber(rng),
        pageSize: int32(rng),
        pageToken: pageToken(rng),
      }),
    },
    {
      service: AdminServiceService,
      method: 'listDeadLetters',
      codec: ListDeadLettersRequest,
      admin: true,
      refuses: (request: { orderId?: string; pageSize?: number; state?: number }) =>
        malformed(request.orderId, ORDER_ID_PATTERN) ||
        (request.pageSize ?? 0) < 0 ||
        ![0, 1, 2, 3, 4].includes(request.state ?? 0),
      draw: (rng) => ({
        pageSize: int32(rng),
        pageToken: pageToken(rng),
        state: enumNumber(rng),
        orderId: string(rng, existingOrderId),
      }),
    },
    {
      service: AdminServiceService,
      method: 'replayDeadLetter',
      codec: ReplayDeadLetterRequest,
      admin: true,
      mayWriteWhenRefused: ['settle.admin_audit'],
      draw: (rng) => ({
        id: either(rng, () => hostileString(rng), rng.pick(['1', '0', '-1', '99999999'])),
        reason: string(rng, 'fuzzing the admin API'),
      }),
    },
    {
      service: AdminServiceService,
      method: 'discardDeadLetter',
      codec: DiscardDeadLetterRequest,
      admin: true,
      mayWriteWhenRefused: ['settle.admin_audit'],
      draw: (rng) => ({
        id: either(rng, () => hostileString(rng), rng.pick(['1', '0', '-1', '99999999'])),
        reason: string(rng, 'fuzzing the admin API'),
      }),
    },
    {
      service: AdminServiceService,
      method: 'getPaymentTimeline',
      codec: GetPaymentTimelineRequest,
      admin: true,
      draw: (rng) => ({ paymentId: hostileString(rng) }),
    },
    {
      service: AdminServiceService,
      method: 'repairLedgerSums',
      codec: RepairLedgerSumsRequest,
      admin: true,
      // A request with a valid reason repairs: the sums are right, so it writes its audit row,
      // in the repair's own transaction (committed when it answers).
      writes: true,
      writesDoneOnAnswer: true,
      mayWriteWhenRefused: ['settle.admin_audit'],
      draw: (rng) => ({ reason: string(rng, 'fuzzing the admin API'), dryRun: rng.chance(0.5) }),
    },
    {
      service: PspServiceService,
      method: 'registerPayment',
      codec: RegisterPaymentRequest,
      psp: true,
      writes: true,
      draw: (rng) => ({
        nonce: string(rng, newId('order')),
        amountMinor: int64(rng, 100n),
        currencyCode: either(rng, () => rng.pick(['', 'usd', 'EUR', 'XXX', '💵']), 'USD'),
        notificationUrl: either(
          rng,
          () =>
            rng.pick([
              'javascript:alert(1)',
              'file:///etc/passwd',
              'http://',
              'http://[::1',
              `http://x/${'a'.repeat(3_000)}`,
              'ftp://example.com',
              ...HOSTILE_STRINGS.slice(1, 12),
            ]),
          '',
        ),
      }),
      // The fixture's nonce with another amount or currency.
      fixed: () => [
        { nonce: existingOrderId, amountMinor: 1235n, currencyCode: 'USD' },
        { nonce: existingOrderId, amountMinor: 1234n, currencyCode: 'EUR' },
      ],
    },
    {
      service: PspServiceService,
      method: 'getPaymentStatus',
      codec: GetPaymentStatusRequest,
      psp: true,
      draw: (rng) => ({ nonce: hostileString(rng) }),
    },
    {
      service: PspServiceService,
      method: 'cancelPayment',
      codec: CancelPaymentRequest,
      psp: true,
      draw: (rng) => ({ nonce: hostileString(rng) }),
    },
    {
      service: PspServiceService,
      method: 'payWithCard',
      codec: PayWithCardRequest,
      psp: true,
      draw: (rng) => ({
        token: hostileString(rng),
        cardNumber: string(rng, '4242424242424242'),
      }),
    },
    {
      service: PspServiceService,
      method: 'setBehavior',
      codec: SetBehaviorRequest,
      psp: true,
      after: resetPspBehavior,
      draw: (rng) => {
        const rate = () =>
          rng.pick([NaN, Infinity, -Infinity, -0.0001, 1.0001, -1, 2, Number.MAX_VALUE, 0.5]);
        const request: Record<string, unknown> = {};
        if (rng.chance(0.5)) request['successRate'] = rate();
        if (rng.chance(0.5)) request['errorRate'] = rate();
        if (rng.chance(0.5)) request['hangRate'] = rate();
        if (rng.chance(0.5)) request['latencyMs'] = int32(rng);
        if (rng.chance(0.5)) request['failNextRegistrations'] = int32(rng);
        if (rng.chance(0.5)) request['autoPayCard'] = hostileString(rng);
        return request;
      },
    },
    {
      service: PspServiceService,
      method: 'resendWebhook',
      codec: ResendWebhookRequest,
      psp: true,
      draw: (rng) => ({ nonce: hostileString(rng) }),
      // Registered but never paid: there is no webhook to send again.
      fixed: () => [{ nonce: existingOrderId }],
    },
    {
      service: PspServiceService,
      method: 'listCharges',
      codec: ListChargesRequest,
      psp: true,
      draw: (rng) => ({ nonce: hostileString(rng) }),
    },
    {
      service: PspServiceService,
      method: 'generateSettlementFile',
      codec: GenerateSettlementFileRequest,
      psp: true,
      writes: true,
      draw: (rng) => ({ settlementDate: date(rng) }),
    },
    {
      service: PspServiceService,
      method: 'injectSettlementDiscrepancy',
      codec: InjectSettlementDiscrepancyRequest,
      psp: true,
      writes: true,
      draw: (rng) => ({
        discrepancy: enumNumber(rng),
        nonce: string(rng, existingOrderId),
        amountMinor: int64(rng, 100n),
        settlementDate: date(rng),
      }),
    },
  ];
}

/** Bytes that are not a message of any request type, or carry a string that is not UTF-8. */
const UNDECODABLE: ReadonlyArray<[name: string, bytes: Buffer, refused: boolean]> = [
  ['a length past the end', Buffer.from([0x0a, 0x05, 0x61]), true],
  ['a varint that never ends', Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), true],
  ['wire type 6', Buffer.from([0x0e, 0x01]), true],
  ['wire type 7', Buffer.from([0x0f, 0x01]), true],
  ['an unmatched end group', Buffer.from([0x0c]), true],
  ['field number 0', Buffer.from([0x00, 0x01]), true],
  // Bytes that decode (UTF-8 replaced) may make a valid request: any clean answer will do.
  ['invalid UTF-8 in field 1', Buffer.from([0x0a, 0x04, 0xff, 0xfe, 0xc0, 0x80]), false],
  ['invalid UTF-8 in field 2', Buffer.from([0x12, 0x03, 0xed, 0xa0, 0x80]), false],
  [
    'a 10 KB field 4 of 0xff',
    Buffer.concat([Buffer.from([0x22, 0x80, 0x50]), Buffer.alloc(10_240, 0xff)]),
    false,
  ],
];

function randomBytes(rng: Rng): Buffer {
  return Buffer.from(Array.from({ length: 1 + rng.int(64) }, () => rng.int(256)));
}

describe(`bad-input fuzz (FUZZ_SEED=${SEED})`, () => {
  it('has a spec for every method of every service', () => {
    const covered = new Set(specs().map((spec) => `${spec.service[spec.method]?.path}`));
    const methods = [
      PaymentServiceService,
      WalletServiceService,
      LedgerServiceService,
      ReconciliationServiceService,
      AdminServiceService,
      PspServiceService,
    ].flatMap((service) => Object.values(service).map((method) => method.path));
    expect(methods.filter((method) => !covered.has(method))).toEqual([]);
  });

  for (const [index, spec] of specs().entries()) {
    const definition = spec.service[spec.method];
    it(`${definition?.path}: drawn and fixed bad requests get a clean refusal`, async () => {
      const rng = rngOf(SEED + index * 7_919);
      for (const [i, request] of (spec.fixed?.() ?? []).entries()) {
        await fuzzRequest(spec, request, `fixed #${i}`);
      }
      for (let i = 0; i < DRAWS_PER_METHOD; i += 1) {
        await fuzzRequest(spec, spec.draw(rng), `draw #${i}`, rng);
      }
      for (const [name, bytes, refused] of UNDECODABLE) {
        const outcome = await expectCleanAnswer(
          spec,
          `raw bytes: ${name}`,
          bytes,
          spec.admin ? adminMetadata(ADMIN_TOKEN) : new grpc.Metadata(),
        );
        if (refused) {
          expect(grpc.status[outcome.code], `${definition?.path} raw ${name}`).toBe(
            'INVALID_ARGUMENT',
          );
        }
      }
      for (let i = 0; i < 5; i += 1) {
        const bytes = randomBytes(rng);
        await expectCleanAnswer(
          spec,
          `raw bytes ${bytes.toString('hex')}`,
          bytes,
          spec.admin ? adminMetadata(ADMIN_TOKEN) : new grpc.Metadata(),
        );
      }
      const health = await fetch(`${stack.settleHttp}/healthz`, {
        signal: AbortSignal.timeout(5_000),
      });
      expect(health.status, `node unhealthy after ${definition?.path}`).toBe(200);
    });
  }

  it('AdminService refuses a missing or wrong token with UNAUTHENTICATED and writes nothing', async () => {
    const admin = specs().filter((spec) => spec.admin);
    // Fewer wrong tokens than the node's bound (10 a minute), which would lock the right one out.
    const tokens: Array<string | undefined> = [undefined, '', 'x', `${ADMIN_TOKEN}\u0000`];
    for (const [i, token] of tokens.entries()) {
      const spec = admin[i % admin.length] as Spec;
      const definition = spec.service[spec.method] as grpc.MethodDefinition<unknown, unknown>;
      const bytes = definition.requestSerialize(spec.codec.fromPartial({} as never));
      let metadata: grpc.Metadata;
      try {
        metadata = adminMetadata(token);
      } catch {
        continue; // grpc-js itself refuses a header value with NUL.
      }
      const outcome = await expectCleanAnswer(
        { ...spec, mayWriteWhenRefused: ['settle.admin_audit'] },
        `token ${JSON.stringify(token)}`,
        bytes,
        metadata,
      );
      expect(grpc.status[outcome.code], `token ${JSON.stringify(token)}`).toBe('UNAUTHENTICATED');
    }
  });

  it('the REST twin and the router answer hostile requests with a 4xx JSON error and write nothing', async () => {
    const rng = rngOf(SEED ^ 0xbeef);
    const base = stack.settleHttp;
    type Probe = { method: string; path: string; headers?: Record<string, string>; body?: string };
    const bodies = [
      '',
      '{',
      'null',
      '[]',
      '"x"',
      '1e309',
      '{"orders":{}}',
      '{"orders":[1,2,3]}',
      '{"__proto__":{"buyer_id":"x"}}',
      '{"buyer_id":"b","buyerId":"b"}',
      '{"orders":[{"seller_id":"s","amount_minor":1.5}]}',
      '{"orders":[{"seller_id":"s","amount_minor":"9223372036854775808"}]}',
      '{"orders":[{"seller_id":"s","amount_minor":"-9223372036854775808"}]}',
      '{"orders":[{"seller_id":"s","amount_minor":1e400}]}',
      `{"buyer_id":"b","currency_code":"USD","orders":[${Array.from({ length: 3_000 }, (_, i) => `{"seller_id":"s${i}","amount_minor":"1"}`).join(',')}]}`,
      '['.repeat(30_000) + ']'.repeat(30_000),
      `{"a":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`,
      JSON.stringify({ buyer_id: 'x'.repeat(10_240), currency_code: 'USD', orders: [] }),
      JSON.stringify({
        buyer_id: 'buyer-fuzz',
        currency_code: 'USD',
        orders: [{ seller_id: 'seller-fuzz', amount_minor: '1235' }],
      }),
    ];
    const probes: Probe[] = [];
    for (const body of bodies) {
      probes.push({
        method: 'POST',
        path: '/v1/payments',
        headers: {
          'content-type': 'application/json',
          'idempotency-key': rng.chance(0.5) ? existingRequestId : randomUUID(),
        },
        body,
      });
    }
    for (let i = 0; i < 40; i += 1) {
      // fetch refuses header values outside printable Latin-1; the server gets the rest.
      const key = Array.from(hostileString(rng), (char) =>
        char >= ' ' && char <= '~' ? char : '?',
      )
        .join('')
        .slice(0, 8_000);
      probes.push({
        method: 'POST',
        path: '/v1/payments',
        headers: {
          'content-type': rng.pick(['application/json', 'text/plain', 'application/jsonx', '']),
          ...(rng.chance(0.8) ? { 'idempotency-key': key } : {}),
        },
        body: JSON.stringify({
          buyer_id: hostileString(rng),
          currency_code: rng.pick(['USD', 'EUR', '', hostileString(rng)]),
          orders: [
            { seller_id: hostileString(rng), amount_minor: rng.pick(['1', '-1', 'x', 0, 1.5]) },
          ],
        }),
      });
      const segment = encodeURIComponent(hostileString(rng).replace(/[\ud800-\udfff]/g, '?')).slice(
        0,
        12_000,
      );
      probes.push({ method: 'GET', path: `/v1/payments/${segment}` });
      probes.push({
        method: 'GET',
        path: `/v1/payments/${rng.pick(['%', '%ZZ', '%00', '%ff', '%c0%80', '..', '%2e%2e'])}`,
      });
      const query = new URLSearchParams({
        page_size: rng.pick(['-1', '0', '1000000', '99999999999', '1.5', 'x', '', ' 1']),
        page_token: pageToken(rng),
        state: rng.pick([
          '',
          'x',
          'PAYMENT_STATE_UNSPECIFIED',
          'UNRECOGNIZED',
          '99',
          hostileString(rng),
        ]),
        buyer_id: hostileString(rng),
      });
      probes.push({ method: 'GET', path: `/v1/payments?${query.toString()}` });
    }
    probes.push(
      // Past Node's 16 KiB limit on the request line and headers.
      { method: 'GET', path: `/v1/payments?buyer_id=${'x'.repeat(20_000)}` },
      { method: 'DELETE', path: '/v1/payments' },
      { method: 'PUT', path: `/v1/payments/${existingPaymentId}` },
      { method: 'GET', path: '/nowhere' },
      {
        method: 'POST',
        path: '/webhooks/psp',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      },
      {
        method: 'POST',
        path: '/webhooks/psp',
        headers: { 'psp-signature': 't=1,v1=00' },
        body: 'x',
      },
    );
    for (const probe of probes) {
      const before = await allCounts();
      const where = `${probe.method} ${probe.path.slice(0, 120)} ${describeRequest(probe.headers)} ${describeRequest(probe.body ?? '')} (FUZZ_SEED=${SEED})`;
      const response = await fetch(`${base}${probe.path}`, {
        method: probe.method,
        headers: probe.headers ?? {},
        ...(probe.body !== undefined ? { body: probe.body } : {}),
        signal: AbortSignal.timeout(CALL_DEADLINE_MS),
      });
      const text = await response.text();
      expect(response.status, `${where}: ${text.slice(0, 300)}`).toBeLessThan(500);
      if (response.status >= 400) {
        let body: { error?: { message?: string; code?: string } } = {};
        try {
          body = JSON.parse(text) as typeof body;
        } catch {
          expect.fail(
            `${where}: answered ${response.status} with a body that is not JSON: ${text}`,
          );
        }
        expect(body.error?.message, `${where}: no error message`).toBeTruthy();
        expect(body.error?.message, `${where}: leaks`).not.toMatch(LEAK);
        expect(body.error?.code, where).not.toMatch(/INTERNAL|UNKNOWN/);
        expect(changedTables(before, await allCounts(), []), `${where} wrote rows`).toEqual([]);
      } else {
        await quiet();
      }
    }
    const health = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(5_000) });
    expect(health.status).toBe(200);
  });

  it('CreatePayment with one new request_id and different bodies at once: one payment, the rest ALREADY_EXISTS', async () => {
    const requestId = randomUUID();
    const before = await allCounts();
    const outcomes = await Promise.all(
      Array.from({ length: 6 }, (_, i) => {
        const definition = PaymentServiceService.createPayment;
        const bytes = definition.requestSerialize(
          CreatePaymentRequest.fromPartial({
            requestId,
            buyerId: 'buyer-fuzz-race',
            currencyCode: 'USD',
            orders: [{ sellerId: 'seller-fuzz-race', amountMinor: BigInt(100 + i) }],
          }),
        );
        return send(
          raw,
          definition as grpc.MethodDefinition<unknown, unknown>,
          bytes,
          new grpc.Metadata(),
        );
      }),
    );
    const codes = outcomes.map((outcome) => grpc.status[outcome.code]).sort();
    expect(codes, `FUZZ_SEED=${SEED}`).toEqual([
      'ALREADY_EXISTS',
      'ALREADY_EXISTS',
      'ALREADY_EXISTS',
      'ALREADY_EXISTS',
      'ALREADY_EXISTS',
      'OK',
    ]);
    await quiet();
    const after = await allCounts();
    expect(after['settle.payment']).toBe((before['settle.payment'] ?? 0) + 1);
    expect(after['settle.payment_order']).toBe((before['settle.payment_order'] ?? 0) + 1);
  });

  it('RunReconciliation refuses hostile settlement files with INVALID_ARGUMENT and writes nothing', async () => {
    const rng = rngOf(SEED ^ 0xf11e);
    const day = addUtcDays(utcDayOf(new Date()), -1);
    const row = (fields: string[]) => fields.join(',');
    const valid = [
      'psp_fuzz_1',
      newId('order'),
      'payment',
      'USD',
      '12.34',
      '0.50',
      '11.84',
      'batch_1',
      `${day}T10:00:00.000Z`,
    ];
    const hostileCells = [
      '',
      '-0.00',
      '1e5',
      '12.345',
      '99999999999999999999.99',
      '92233720368547758.07',
      '0x10',
      ' 12.34',
      '+12.34',
      'NaN',
      '"a,b"',
      'a\rb',
      'a\u0000b',
      'é',
      'x'.repeat(2_000),
      '\t',
      'refund',
      'fee',
      'usd',
      `${day}T24:00:00.000Z`,
      '0000-01-01T00:00:00.000Z',
      '9999-12-31T23:59:59.999Z',
    ];
    const folder = path.join(settlementDir, 'fuzz');
    mkdirSync(folder, { recursive: true });
    const spec = specs().find((candidate) => candidate.method === 'runReconciliation') as Spec;
    for (let i = 0; i < DRAWS_PER_METHOD; i += 1) {
      const rows = Array.from({ length: 1 + rng.int(3) }, () => {
        const fields = [...valid];
        fields[rng.int(fields.length)] = rng.pick(hostileCells);
        if (rng.chance(0.2)) fields.push('extra');
        return row(fields);
      });
      const header = rng.chance(0.15)
        ? rng.pick([
            '\ufeff' + SETTLEMENT_HEADER,
            SETTLEMENT_HEADER.toUpperCase(),
            '',
            SETTLEMENT_HEADER + ',',
          ])
        : SETTLEMENT_HEADER;
      const end = rng.pick(['\n', '\r\n', '\r']);
      const text = [header, ...rows].join(end) + (rng.chance(0.9) ? end : '');
      const name = `f${i}/settlement-${day}.csv`;
      mkdirSync(path.join(folder, `f${i}`), { recursive: true });
      writeFileSync(path.join(folder, name), text);
      const outcome = await fuzzRequest(
        spec,
        { settlementDate: day, filePath: `fuzz/${name}` },
        `file #${i}: ${describeRequest(text)}`,
      );
      expect(['OK', 'INVALID_ARGUMENT'], `file #${i} (FUZZ_SEED=${SEED})`).toContain(
        grpc.status[outcome.code],
      );
    }
  });

  it('leaves the money invariants intact', async () => {
    await expectMoneyInvariants(stack.settle.db);
  });
});
