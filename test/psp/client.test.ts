/**
 * Goal: Settle's PSP client maps the PSP's answers to domain errors and values, and its one
 * circuit breaker opens on transport failures only, fails fast while open, and closes again once
 * the PSP is healthy.
 * Method: a real PSP mock in-process (ephemeral ports, own MariaDB database) and clients with
 * small breaker settings; faults come from the mock's behaviour knobs (error_rate, hang_rate,
 * latency) or from a closed port. State changes are observed through onStateChange and waited
 * for with deadlines.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../../src/domain/errors.js';
import {
  BREAKER_STATE,
  createPspClient,
  isBreakerOpen,
  PSP_STATUS,
  type BreakerState,
  type PspClient,
  type PspClientOptions,
} from '../../src/psp/client.js';
import { startPspMock, type PspMock } from '../../src/psp/mock/index.js';
import {
  closedPort,
  dropDatabase,
  pspApi,
  testConfig,
  unary,
  uniqueDatabaseUrl,
  uniqueNonce,
  waitFor,
} from './psp-support.js';

const RESET_TIMEOUT_MS = 400;
let mysqlUrl: string;
let mock: PspMock;
const clients: PspClient[] = [];

beforeAll(async () => {
  mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
  mock = await startPspMock({ config: testConfig(), grpcPort: 0, httpPort: 0, mysqlUrl });
});

afterEach(() => {
  mock.setBehavior({ errorRate: 0, hangRate: 0, latencyMs: 0, autoPayCard: null });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await mock?.stop();
  if (mysqlUrl !== undefined) await dropDatabase(mysqlUrl);
});

function client(overrides: Partial<PspClientOptions> = {}): PspClient {
  const created = createPspClient({
    address: `127.0.0.1:${mock.grpcPort}`,
    callTimeoutMs: 2_000,
    breaker: { resetTimeoutMs: RESET_TIMEOUT_MS, errorThresholdPercentage: 50, volumeThreshold: 4 },
    inFlightMax: 64,
    ...overrides,
  });
  clients.push(created);
  return created;
}

function recordStates(psp: PspClient): BreakerState[] {
  const states: BreakerState[] = [];
  psp.onStateChange((state) => states.push(state));
  return states;
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected the call to fail');
}

function register(psp: PspClient, nonce: string, amountMinor = 1999n) {
  return psp.register({ nonce, amountMinor, currency: 'USD', notificationUrl: '' });
}

async function pay(token: string, cardNumber: string): Promise<void> {
  const api = pspApi(mock.grpcPort);
  try {
    await unary(api.payWithCard.bind(api), { token, cardNumber });
  } finally {
    api.close();
  }
}

describe('PspClient answers', () => {
  it('registers idempotently and reads the status', async () => {
    const psp = client();
    const nonce = uniqueNonce();
    const first = await register(psp, nonce);
    expect(await register(psp, nonce)).toEqual(first);
    expect(first.checkoutUrl).toBe(`${mock.publicUrl}/pay/${first.token}`);
    expect(await psp.getStatus(nonce)).toMatchObject({
      nonce,
      token: first.token,
      status: PSP_STATUS.registered,
      amountMinor: 1999n,
      currency: 'USD',
      pspReference: undefined,
      declineCode: undefined,
    });
  });

  it('maps NOT_FOUND to undefined in getStatus', async () => {
    expect(await client().getStatus(uniqueNonce('unknown'))).toBeUndefined();
  });

  it('maps ALREADY_EXISTS to AlreadyExistsError and INVALID_ARGUMENT to a non-retryable error', async () => {
    const psp = client();
    const nonce = uniqueNonce();
    await register(psp, nonce, 100n);
    const exists = await rejection(register(psp, nonce, 101n));
    expect(exists).toBeInstanceOf(AlreadyExistsError);
    expect((exists as AlreadyExistsError).retryable).toBe(false);

    const invalid = await rejection(register(psp, uniqueNonce(), 0n));
    expect(invalid).toBeInstanceOf(FailedPreconditionError);
    expect(invalid.message).toContain('amount_minor');
    expect((invalid as FailedPreconditionError).retryable).toBe(false);
  });

  it('cancels a registered payment and reports the decision of a decided one', async () => {
    const psp = client();
    const open = uniqueNonce();
    await register(psp, open);
    expect(await psp.cancel(open)).toBe(PSP_STATUS.cancelled);
    expect(await psp.cancel(open)).toBe(PSP_STATUS.cancelled);

    const paid = uniqueNonce();
    await pay((await register(psp, paid)).token, '4242424242424242');
    expect(await psp.cancel(paid)).toBe(PSP_STATUS.succeeded);
    const status = await psp.getStatus(paid);
    expect(status?.status).toBe(PSP_STATUS.succeeded);
    expect(status?.pspReference).toMatch(/^psp_/);

    const declined = uniqueNonce();
    await pay((await register(psp, declined)).token, '4000000000000002');
    expect(await psp.cancel(declined)).toBe(PSP_STATUS.declined);
    expect((await psp.getStatus(declined))?.declineCode).toBe('card_declined');

    expect(await rejection(psp.cancel(uniqueNonce()))).toBeInstanceOf(NotFoundError);
    expect(psp.breakerState()).toBe(BREAKER_STATE.closed);
  });

  it('turns a missed deadline (hanging PSP) into a retryable UnavailableError', async () => {
    const psp = client({ callTimeoutMs: 300 });
    mock.setBehavior({ hangRate: 1 });
    const nonce = uniqueNonce();
    const started = Date.now();
    const error = await rejection(register(psp, nonce));
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.message).toContain('DEADLINE_EXCEEDED');
    expect((error as UnavailableError).retryable).toBe(true);
    mock.setBehavior({ hangRate: 0 });
    // The hang lost the answer, not the registration: a retry gets the same payment.
    expect((await psp.getStatus(nonce))?.status).toBe(PSP_STATUS.registered);
  });

  it('rejects calls beyond inFlightMax at once with ResourceExhaustedError', async () => {
    const psp = client({ inFlightMax: 2 });
    mock.setBehavior({ latencyMs: 300 });
    const slow = [psp.getStatus(uniqueNonce()), psp.getStatus(uniqueNonce())];
    const error = await rejection(psp.getStatus(uniqueNonce()));
    expect(error).toBeInstanceOf(ResourceExhaustedError);
    expect((error as ResourceExhaustedError).retryable).toBe(true);
    expect(await Promise.all(slow)).toEqual([undefined, undefined]);
    expect(psp.breakerState()).toBe(BREAKER_STATE.closed);
  });
});

describe('the circuit breaker', () => {
  it('does not open on business errors', async () => {
    const psp = client();
    const states = recordStates(psp);
    const nonce = uniqueNonce();
    await register(psp, nonce, 100n);
    for (let i = 0; i < 10; i += 1) {
      await rejection(register(psp, nonce, 200n));
      expect(await psp.getStatus(uniqueNonce())).toBeUndefined();
      await rejection(register(psp, uniqueNonce(), 0n));
    }
    expect(psp.breakerState()).toBe(BREAKER_STATE.closed);
    expect(states).toEqual([]);
  });

  it('opens after injected faults, fails fast while open, and closes when the PSP is healthy', async () => {
    const psp = client();
    const states = recordStates(psp);
    const nonce = uniqueNonce();
    await register(psp, nonce);

    // One success so far; the volume threshold is 4 calls and the threshold 50 %: the third
    // failure (3 of 4 calls) opens the breaker, not the first two.
    mock.setBehavior({ errorRate: 1 });
    for (let i = 0; i < 3; i += 1) {
      expect(psp.breakerState()).toBe(BREAKER_STATE.closed);
      const error = await rejection(psp.getStatus(nonce));
      expect(error).toBeInstanceOf(UnavailableError);
      expect(error.message).toContain('injected fault');
      expect((error as UnavailableError).retryable).toBe(true);
      // A call that reached the PSP: its latency is a PSP call's.
      expect(isBreakerOpen(error)).toBe(false);
    }
    expect(psp.breakerState()).toBe(BREAKER_STATE.open);

    // Open: the call never reaches the PSP, even though it is healthy again.
    mock.setBehavior({ errorRate: 0, latencyMs: 1_000 });
    const started = Date.now();
    const fast = await rejection(psp.getStatus(nonce));
    expect(Date.now() - started).toBeLessThan(100);
    expect(fast).toBeInstanceOf(UnavailableError);
    expect(fast.message).toContain('circuit breaker open');
    expect((fast as UnavailableError).retryable).toBe(true);
    expect((fast as UnavailableError).retryDelayMs).toBe(RESET_TIMEOUT_MS);
    // Told apart from a PSP failure, so /metrics does not count it as a PSP call.
    expect(isBreakerOpen(fast)).toBe(true);

    mock.setBehavior({ latencyMs: 0 });
    await waitFor(() => psp.breakerState() === BREAKER_STATE.halfOpen, {
      timeoutMs: RESET_TIMEOUT_MS * 5,
      what: 'half-open',
    });
    expect((await psp.getStatus(nonce))?.status).toBe(PSP_STATUS.registered);
    expect(psp.breakerState()).toBe(BREAKER_STATE.closed);
    expect(states).toEqual([BREAKER_STATE.open, BREAKER_STATE.halfOpen, BREAKER_STATE.closed]);
  });

  it('opens again when the half-open probe fails', async () => {
    const psp = client();
    const states = recordStates(psp);
    mock.setBehavior({ errorRate: 1 });
    for (let i = 0; i < 4; i += 1) await rejection(psp.getStatus(uniqueNonce()));
    await waitFor(() => psp.breakerState() === BREAKER_STATE.halfOpen, {
      timeoutMs: RESET_TIMEOUT_MS * 5,
    });
    expect(await rejection(psp.getStatus(uniqueNonce()))).toBeInstanceOf(UnavailableError);
    expect(psp.breakerState()).toBe(BREAKER_STATE.open);
    expect(states).toEqual([BREAKER_STATE.open, BREAKER_STATE.halfOpen, BREAKER_STATE.open]);
  });

  it('opens when the PSP cannot be reached at all', async () => {
    const psp = client({ address: `127.0.0.1:${await closedPort()}` });
    for (let i = 0; i < 4; i += 1) {
      const error = await rejection(psp.getStatus(uniqueNonce()));
      expect(error).toBeInstanceOf(UnavailableError);
      expect(error.message).toMatch(/the PSP is unavailable \(UNAVAILABLE/);
    }
    expect(psp.breakerState()).toBe(BREAKER_STATE.open);
    const fast = await rejection(register(psp, uniqueNonce()));
    expect(fast.message).toContain('circuit breaker open');
  });

  it('fails with UnavailableError after close()', async () => {
    const psp = client();
    psp.close();
    const error = await rejection(psp.getStatus(uniqueNonce()));
    expect(error).toBeInstanceOf(UnavailableError);
  });
});
