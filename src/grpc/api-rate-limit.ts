/**
 * The per-caller request rate limit of the non-admin API (API_RATE_LIMIT_PER_S and
 * API_RATE_LIMIT_BURST): one token bucket per caller, in this node's memory, shared by the gRPC
 * services API_TOKENS guards and the REST twin. A caller is what settle_api_requests_total calls
 * it (ApiTokens.callerLabel): a token's name, so every token of one name shares a bucket, or
 * NO_API_TOKENS on a node without API_TOKENS, where every call shares one. The buckets are made
 * once, at start, for exactly those names: nothing a request sends picks or adds one.
 *
 * A call is charged after its token is checked (one refused for its token, UNAUTHENTICATED or
 * PERMISSION_DENIED, is charged to nobody) and before its handler runs (a REST body is not
 * even read): a refused call makes no database statement and writes nothing. WatchPayment is
 * charged once, at its start. Health, reflection, AdminService, the admin panel, the PSP webhook
 * and /metrics never are. Each node counts on its own: N nodes behind a balancer let a caller
 * make N times the rate.
 */
import { ResourceExhaustedError } from '../domain/errors.js';
import { TokenBucket } from '../domain/token-bucket.js';
import { API_CALLER_LABEL, type ApiTokens } from './api-auth.js';

/** The way a call came in: the transport label of settle_api_throttled_total. */
export const API_TRANSPORT = { grpc: 'grpc', rest: 'rest' } as const;
export type ApiTransport = (typeof API_TRANSPORT)[keyof typeof API_TRANSPORT];

/** The REST error `reason` of a call refused by the rate limit. */
export const API_RATE_LIMITED_REASON = 'RATE_LIMITED';

/**
 * A call over its caller's rate limit: RESOURCE_EXHAUSTED (429 with Retry-After on the REST twin),
 * retryable after `retryDelayMs`. `caller` is the token's name for the call's log line
 * (undefined on a node without API_TOKENS, whose log lines name no caller).
 */
export class ApiRateLimitError extends ResourceExhaustedError {
  readonly reason = API_RATE_LIMITED_REASON;
  constructor(
    message: string,
    readonly caller: string | undefined,
    retryDelayMs: number,
  ) {
    super(message, { retryDelayMs });
  }
}

export type ApiRateLimitOptions = Readonly<{
  /** Requests a second per caller (> 0). */
  perS: number;
  /** Requests a caller may make at once after a quiet spell (>= 1; below perS it smooths). */
  burst: number;
  /** A monotonic clock in milliseconds; performance.now() by default. */
  nowMs?: () => number;
  /**
   * Told of every refusal, by caller label and transport (the node counts them in
   * settle_api_throttled_total).
   */
  onThrottled?: (throttled: { caller: string; transport: ApiTransport }) => void;
}>;

/** The rate limit of every caller of one node. Build it only when the limit is on. */
export class ApiRateLimit {
  readonly perS: number;
  readonly burst: number;
  readonly #apiTokens: ApiTokens;
  readonly #buckets: ReadonlyMap<string, TokenBucket>;
  readonly #nowMs: () => number;
  readonly #onThrottled: NonNullable<ApiRateLimitOptions['onThrottled']>;

  constructor(apiTokens: ApiTokens, options: ApiRateLimitOptions) {
    this.perS = options.perS;
    this.burst = options.burst;
    this.#apiTokens = apiTokens;
    this.#nowMs = options.nowMs ?? (() => performance.now());
    this.#onThrottled = options.onThrottled ?? (() => {});
    const nowMs = this.#nowMs();
    const callers = apiTokens.enabled
      ? new Set(apiTokens.callers.map(({ name }) => name))
      : new Set([API_CALLER_LABEL.open]);
    this.#buckets = new Map(
      [...callers].map((caller) => [
        caller,
        new TokenBucket({ perS: this.perS, burst: this.burst, nowMs }),
      ]),
    );
  }

  /** The callers that have a bucket: the configured names, or NO_API_TOKENS alone. */
  get callers(): readonly string[] {
    return [...this.#buckets.keys()];
  }

  /**
   * Charges one call of `name` (the token's name `ApiTokens.require` returned; undefined on a node
   * without API_TOKENS) that came in over `transport`, or throws ApiRateLimitError when its bucket
   * is empty. One bucket per caller, whatever the transport.
   */
  charge(name: string | undefined, transport: ApiTransport): void {
    const caller = this.#apiTokens.callerLabel(name);
    const bucket = this.#buckets.get(caller);
    // Only a call refused for its token is ANONYMOUS, and it is never charged.
    if (bucket === undefined) throw new Error(`no rate-limit bucket for caller '${caller}'`);
    const taken = bucket.take(this.#nowMs());
    if (taken.allowed) return;
    this.#onThrottled({ caller, transport });
    const shared =
      caller === API_CALLER_LABEL.open
        ? ' (this node has no API_TOKENS, so every caller shares this one limit)'
        : '';
    throw new ApiRateLimitError(
      `caller '${caller}' is over its rate limit of ${this.perS} requests/s on this node ` +
        `(bursts of ${this.burst})${shared}; retry after ${taken.waitMs} ms`,
      name,
      taken.waitMs,
    );
  }
}
