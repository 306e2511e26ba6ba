/**
 * Goal: an answer of the PSP with a value longer than Settle's column (a token, a PSP reference)
 * is refused once at the client, as a PSP protocol error: the command is dead-lettered at once as
 * NON_RETRYABLE with the field, its length and the limit, the PSP is asked once (not once per
 * retry, each write failing with "Data too long"), and the order is left for an operator; the
 * janitor's later checks of that order, refused the same way, add no second open dead letter.
 * Method: a real Settle node whose PSP client talks to a small gRPC server in this test that
 * forwards to the real PSP mock and lengthens chosen values of its answers; it counts the calls.
 * Webhooks go nowhere (the server points them at a closed port), so a charge is only learnt by a
 * status check. Outcomes are read from MySQL.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import {
  PaymentStatus,
  PspServiceClient,
  PspServiceService,
  type CancelPaymentRequest,
  type CancelPaymentResponse,
  type GetPaymentStatusRequest,
  type GetPaymentStatusResponse,
  type PspServiceServer,
  type RegisterPaymentRequest,
  type RegisterPaymentResponse,
} from '../../src/grpc/generated/settle/psp/v1/psp.js';
import { createLogger } from '../../src/observability/logger.js';
import { createPspClient, type PspClient } from '../../src/psp/client.js';
import {
  call,
  CARD,
  expectMoneyInvariants,
  freePort,
  metricSample,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

/** The amount of an order whose registration the server answers with a token too long. */
const LONG_TOKEN_AMOUNT_MINOR = 1313n;
/** Where the server sends webhooks: a closed port. */
const NOWHERE = 'http://127.0.0.1:9/webhooks/psp';
const UPSTREAM_DEADLINE_MS = 5_000;

let stack: Stack;
let server: grpc.Server;
let upstream: PspServiceClient | undefined;
let psp: PspClient;
/** The address of the lengthening PSP server. */
let lengtheningAddress: string;
/** Orders whose status the server answers with a PSP reference too long. */
const longReference = new Set<string>();
/** Orders whose status the server answers with a decline code longer than a failure reason. */
const longDeclineCode = new Set<string>();
/** Calls the server received, by `${rpc}:${nonce}`. */
const asked = new Map<string, number>();

function countCall(rpc: string, nonce: string): void {
  const key = `${rpc}:${nonce}`;
  asked.set(key, (asked.get(key) ?? 0) + 1);
}

/** Forwards one call to the PSP mock and hands its answer, changed by `change`, to `callback`. */
function forward<Req, Res>(
  invoke: (
    client: PspServiceClient,
    request: Req,
    callback: (error: grpc.ServiceError | null, response: Res) => void,
  ) => unknown,
  request: Req,
  change: (response: Res) => Res,
  callback: grpc.sendUnaryData<Res>,
): void {
  if (upstream === undefined) {
    callback({ code: grpc.status.UNAVAILABLE, details: 'the PSP mock is not up yet' });
    return;
  }
  invoke(upstream, request, (error, response) =>
    error === null ? callback(null, change(response)) : callback(error),
  );
}

async function startLengtheningPsp(): Promise<string> {
  server = new grpc.Server();
  const deadline = () => ({ deadline: Date.now() + UPSTREAM_DEADLINE_MS });
  const handlers: Pick<PspServiceServer, 'registerPayment' | 'getPaymentStatus' | 'cancelPayment'> =
    {
      registerPayment: (callRef, callback) => {
        const request = { ...callRef.request, notificationUrl: NOWHERE };
        countCall('register', request.nonce);
        forward<RegisterPaymentRequest, RegisterPaymentResponse>(
          (client, req, done) => client.registerPayment(req, new grpc.Metadata(), deadline(), done),
          request,
          (response) =>
            request.amountMinor === LONG_TOKEN_AMOUNT_MINOR
              ? { ...response, token: `tok_${'x'.repeat(125)}` }
              : response,
          callback,
        );
      },
      getPaymentStatus: (callRef, callback) => {
        const { nonce } = callRef.request;
        countCall('status', nonce);
        forward<GetPaymentStatusRequest, GetPaymentStatusResponse>(
          (client, req, done) =>
            client.getPaymentStatus(req, new grpc.Metadata(), deadline(), done),
          callRef.request,
          (response) =>
            longReference.has(nonce)
              ? { ...response, pspReference: 'r'.repeat(65) }
              : longDeclineCode.has(nonce)
                ? { ...response, declineCode: 'd'.repeat(70) }
                : response,
          callback,
        );
      },
      cancelPayment: (callRef, callback) => {
        countCall('cancel', callRef.request.nonce);
        forward<CancelPaymentRequest, CancelPaymentResponse>(
          (client, req, done) => client.cancelPayment(req, new grpc.Metadata(), deadline(), done),
          callRef.request,
          (response) => response,
          callback,
        );
      },
    };
  // The other methods (the buyer's and the test driver's) are UNIMPLEMENTED here.
  server.addService(PspServiceService, handlers);
  const port = await freePort();
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error) =>
      error === null ? resolve() : reject(error),
    ),
  );
  return `127.0.0.1:${port}`;
}

/** The node's log, one JSON line each. */
const logLines: string[] = [];

beforeAll(async () => {
  const address = await startLengtheningPsp();
  lengtheningAddress = address;
  psp = createPspClient({
    address,
    callTimeoutMs: 3_000,
    breaker: { resetTimeoutMs: 1_000, errorThresholdPercentage: 50, volumeThreshold: 5 },
    inFlightMax: 64,
  });
  stack = await startStack({
    env: {
      RETRY_BACKOFF_MS: '100,200,400,800,1600',
      CREATE_WAIT_MS: '0',
      // Every command goes through JetStream and its consumer (no first run on the creating node).
      LOCAL_EXECUTE_HOLD_MS: '0',
      // The janitor runs only when a test calls runOnce(), and then checks every unfinished order.
      JANITOR_INTERVAL_MS: '3600000',
      JANITOR_STUCK_MS: '1',
      // A claim outlasts the interval (loadConfig checks); no test runs the janitor twice anyway.
      JANITOR_LEASE_MS: '7200000',
    },
    overrides: {
      psp,
      logger: createLogger(
        { level: 'info', name: 'settle' },
        { write: (line) => logLines.push(line) },
      ),
    },
  });
  upstream = new PspServiceClient(
    `127.0.0.1:${stack.psp.grpcPort}`,
    grpc.credentials.createInsecure(),
  );
});
afterAll(async () => {
  upstream?.close();
  await stack?.stop();
  server?.forceShutdown();
});
afterEach(async () => {
  await expectMoneyInvariants(stack.settle.db);
});

async function createOrder(amountMinor: bigint, on: Stack = stack): Promise<string> {
  const created = await call(on.payments.createPayment.bind(on.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-long-values',
    currencyCode: 'USD',
    orders: [{ sellerId: `seller-${randomUUID()}`, amountMinor }],
  });
  return created.payment?.orders[0]?.orderId ?? '';
}

type OrderRow = { state: string; psp_token: string | null; psp_reference: string | null };

async function orderRow(orderId: string, on: Stack = stack): Promise<OrderRow | undefined> {
  const result = await sql<OrderRow>`SELECT state, psp_token, psp_reference
    FROM payment_order WHERE id = ${orderId}`.execute(on.settle.db);
  return result.rows[0];
}

type DeadLetterRow = {
  reason: string;
  attempts: number;
  last_error: string;
  payload: string;
  stream_sequence: string;
};

async function deadLettersOf(orderId: string, on: Stack = stack): Promise<DeadLetterRow[]> {
  const result = await sql<DeadLetterRow>`SELECT reason, attempts, last_error, payload,
      stream_sequence
    FROM dead_letter WHERE order_id = ${orderId} ORDER BY id`.execute(on.settle.db);
  return result.rows;
}

async function ledgerTransactionsOf(orderId: string): Promise<number> {
  const result = await sql<{ n: string }>`SELECT COUNT(*) AS n
    FROM ledger_transaction WHERE order_id = ${orderId}`.execute(stack.settle.db);
  return Number(result.rows[0]?.n ?? 0);
}

/** Waits for the order's first dead letter, then a while longer for any retry to show. */
async function settledDeadLetters(orderId: string, on: Stack = stack): Promise<DeadLetterRow[]> {
  await waitFor(async () => ((await deadLettersOf(orderId, on)).length > 0 ? true : undefined), {
    timeoutMs: 15_000,
    what: 'the dead letter',
  });
  await sleep(1_000);
  return deadLettersOf(orderId, on);
}

describe('PSP answers longer than Settle stores', () => {
  it('refuses a registration answered with a 129-character token once, leaving the order EXECUTING', async () => {
    const orderId = await createOrder(LONG_TOKEN_AMOUNT_MINOR);

    const dead = await settledDeadLetters(orderId);
    expect(dead).toHaveLength(1);
    expect(dead[0]?.reason).toBe('NON_RETRYABLE');
    expect(dead[0]?.attempts).toBe(1);
    expect(dead[0]?.last_error).toMatch(
      /RegisterPayment with a token of 129 characters, longer than the 128 Settle stores/,
    );
    expect(asked.get(`register:${orderId}`)).toBe(1);
    // The PSP holds the registration: the order is not failed, but left for an operator (and its
    // expiry, which cancels it at the PSP).
    const order = await orderRow(orderId);
    expect(order?.state).toBe('EXECUTING');
    expect(order?.psp_token).toBeNull();
    expect(psp.breakerState()).toBe('CLOSED');
  });

  it('expires a registration Settle could not store by cancelling it at the PSP', async () => {
    const orderId = await createOrder(LONG_TOKEN_AMOUNT_MINOR);
    await settledDeadLetters(orderId);
    // Past its deadline (and its lease, if a check claimed it meanwhile): the janitor expires it.
    await sql`UPDATE payment_order
      SET created_at = created_at - INTERVAL 1 DAY, janitor_lease_until = NULL
      WHERE id = ${orderId}`.execute(stack.settle.db);

    const pass = await stack.settle.janitor.runOnce();
    expect(pass.expired).toContain(orderId);

    await waitFor(async () => ((await orderRow(orderId))?.state === 'EXPIRED' ? true : undefined), {
      what: 'the order to expire',
    });
    expect(asked.get(`cancel:${orderId}`)).toBe(1);
    const atPsp = await call(stack.pspApi.getPaymentStatus.bind(stack.pspApi), {
      nonce: orderId,
    });
    expect(atPsp.status).toBe(PaymentStatus.PAYMENT_STATUS_CANCELLED);
  });

  it('refuses a status answer with a 65-character PSP reference for a paid order once, leaving it EXECUTING', async () => {
    const orderId = await createOrder(2_000n);
    const token = await waitFor(async () => (await orderRow(orderId))?.psp_token ?? undefined, {
      what: 'the registration',
    });
    // The buyer pays at the PSP; its webhook goes nowhere, so only a status check learns of it.
    await call(stack.pspApi.payWithCard.bind(stack.pspApi), { token, cardNumber: CARD.success });
    longReference.add(orderId);

    const pass = await stack.settle.janitor.runOnce();
    expect(pass.checked).toContain(orderId);

    const dead = await settledDeadLetters(orderId);
    expect(dead).toHaveLength(1);
    expect(dead[0]?.reason).toBe('NON_RETRYABLE');
    expect(dead[0]?.attempts).toBe(1);
    expect(dead[0]?.last_error).toMatch(
      /GetPaymentStatus with a pspReference of 65 characters, longer than the 64 Settle stores/,
    );
    expect(asked.get(`status:${orderId}`)).toBe(1);
    // Money moved at the PSP but nothing is booked: the order waits for an operator, never
    // failed nor expired, and the ledger and wallets are untouched (afterEach checks them).
    const order = await orderRow(orderId);
    expect(order?.state).toBe('EXECUTING');
    expect(order?.psp_reference).toBeNull();
    expect(await ledgerTransactionsOf(orderId)).toBe(0);
  });

  it('keeps one open dead letter for a paid order with a PSP reference too long, however often the janitor checks it', async () => {
    const orderId = await createOrder(2_500n);
    const token = await waitFor(async () => (await orderRow(orderId))?.psp_token ?? undefined, {
      what: 'the registration',
    });
    await call(stack.pspApi.payWithCard.bind(stack.pspApi), { token, cardNumber: CARD.success });
    longReference.add(orderId);
    const repeats = async () =>
      metricSample(await scrapeMetrics(stack.settleHttp), 'settle_dead_letter_repeats_total', {
        reason: 'NON_RETRYABLE',
      });
    const repeatsBefore = await repeats();
    expect(repeatsBefore).toBeGreaterThanOrEqual(0);

    const checksMax = 3;
    for (let check = 1; check <= checksMax; check += 1) {
      // The order is still EXECUTING and quiet: each pass (once its lease is over) checks it again.
      await sql`UPDATE payment_order SET janitor_lease_until = NULL
        WHERE id = ${orderId}`.execute(stack.settle.db);
      const pass = await stack.settle.janitor.runOnce();
      expect(pass.checked).toContain(orderId);
      await waitFor(
        async () => ((asked.get(`status:${orderId}`) ?? 0) >= check ? true : undefined),
        { timeoutMs: 15_000, what: `status check ${check}` },
      );
    }

    const dead = await settledDeadLetters(orderId);
    // One entry for the operator, not one per check: every check asked the same question and
    // got the same refusal.
    expect(asked.get(`status:${orderId}`)).toBe(checksMax);
    expect(dead).toHaveLength(1);
    expect(dead[0]?.reason).toBe('NON_RETRYABLE');
    expect(dead[0]?.last_error).toMatch(/pspReference of 65 characters/);
    expect((await orderRow(orderId))?.state).toBe('EXECUTING');
    expect(await ledgerTransactionsOf(orderId)).toBe(0);
    // Not recorded again, but not silent either: the later checks are counted and logged, so an
    // operator sees that the command keeps failing.
    await waitFor(
      async () => ((await repeats()) === (repeatsBefore ?? 0) + checksMax - 1 ? true : undefined),
      { timeoutMs: 15_000, what: 'the repeats counted' },
    );
    const repeatLines = logLines
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((line) => line.orderId === orderId && line.reason === 'NON_RETRYABLE')
      .filter((line) => String(line.msg).includes('refused again'));
    expect(repeatLines).toHaveLength(checksMax - 1);
    expect(repeatLines[0]).toMatchObject({ level: 'info' });
  });

  it('takes a status answer with a 70-character decline code, cut to fit the failure reason', async () => {
    const orderId = await createOrder(3_000n);
    const token = await waitFor(async () => (await orderRow(orderId))?.psp_token ?? undefined, {
      what: 'the registration',
    });
    await call(stack.pspApi.payWithCard.bind(stack.pspApi), { token, cardNumber: CARD.decline });
    longDeclineCode.add(orderId);

    const pass = await stack.settle.janitor.runOnce();
    expect(pass.checked).toContain(orderId);

    await waitFor(async () => ((await orderRow(orderId))?.state === 'FAILED' ? true : undefined), {
      what: 'the order to fail',
    });
    const failed = await sql<{ failure_reason: string }>`SELECT failure_reason
      FROM payment_order WHERE id = ${orderId}`.execute(stack.settle.db);
    expect(failed.rows[0]?.failure_reason).toBe('d'.repeat(64));
    expect(await deadLettersOf(orderId)).toEqual([]);
    expect(asked.get(`status:${orderId}`)).toBe(1);
  });
});

describe('a registration answered with a token too long, run on the node that created the order', () => {
  let local: Stack | undefined;
  beforeAll(async () => {
    local = await startStack({
      env: {
        RETRY_BACKOFF_MS: '100,200,400,800,1600',
        CREATE_WAIT_MS: '0',
        // New orders run here first; their rows are held long past this test.
        LOCAL_EXECUTE_HOLD_MS: '30000',
        JANITOR_INTERVAL_MS: '3600000',
        // A claim outlasts the interval (loadConfig checks).
        JANITOR_LEASE_MS: '7200000',
      },
      overrides: {
        psp: createPspClient({
          address: lengtheningAddress,
          callTimeoutMs: 3_000,
          breaker: { resetTimeoutMs: 1_000, errorThresholdPercentage: 50, volumeThreshold: 5 },
          inFlightMax: 64,
        }),
      },
    });
  });
  afterAll(async () => {
    await local?.stop();
  });

  it('is dead-lettered here as the consumer would, the PSP asked once, its held row gone', async () => {
    const on = local as Stack;
    const deadLettersCounted = async () =>
      metricSample(await scrapeMetrics(on.settleHttp), 'settle_dead_letters_total', {
        reason: 'NON_RETRYABLE',
      }) ?? 0;
    const countedBefore = await deadLettersCounted();
    const orderId = await createOrder(LONG_TOKEN_AMOUNT_MINOR, on);

    const dead = await settledDeadLetters(orderId, on);
    // Not handed to JetStream for a second registration and the same refusal.
    expect(asked.get(`register:${orderId}`)).toBe(1);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ reason: 'NON_RETRYABLE', attempts: 1, stream_sequence: '0' });
    expect(dead[0]?.last_error).toMatch(
      /RegisterPayment with a token of 129 characters, longer than the 128 Settle stores/,
    );
    // The payload the consumer would have had: replayable as any ExecuteOrder.
    expect(JSON.parse(dead[0]?.payload ?? '')).toEqual({ type: 'ExecuteOrder', orderId });
    const held = await on.settle.db
      .selectFrom('outbox')
      .select('msg_id')
      .where('msg_id', '=', `exec:${orderId}`)
      .execute();
    expect(held).toEqual([]);
    expect(await deadLettersCounted()).toBe(countedBefore + 1);
    const order = await orderRow(orderId, on);
    expect(order?.state).toBe('EXECUTING');
    expect(order?.psp_token).toBeNull();
    await expectMoneyInvariants(on.settle.db);
  });
});
