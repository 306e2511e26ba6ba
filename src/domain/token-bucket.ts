/**
 * A token bucket: `burst` tokens at most, refilled at `perS` tokens a second, one token per
 * request. Pure: the caller passes the time (milliseconds on a monotonic clock, such as
 * `performance.now()`), so tests drive it with a clock of their own.
 *
 * The bucket starts full. Time that goes backwards (a clock a test rewinds) adds nothing and
 * takes nothing; a long gap refills to `burst` and no further, so a caller quiet for an hour gets
 * `burst` requests at once, not an hour's worth. A refusal takes nothing, so the count never goes
 * below 0 and a caller that keeps retrying while refused is let through as soon as a token is
 * there.
 */

/** What one `take` decided: allowed, or refused with how long until a token is there. */
export type TokenBucketTake =
  Readonly<{ allowed: true }> | Readonly<{ allowed: false; waitMs: number }>;

const ALLOWED: TokenBucketTake = Object.freeze({ allowed: true });

export class TokenBucket {
  readonly perS: number;
  readonly burst: number;
  #tokens: number;
  #atMs: number;

  constructor(options: Readonly<{ perS: number; burst: number; nowMs: number }>) {
    const { perS, burst, nowMs } = options;
    if (!Number.isSafeInteger(perS) || perS <= 0) {
      throw new RangeError(`perS must be a positive whole number, got ${perS}`);
    }
    // Any burst of 1 or more is a bucket: below perS it smooths traffic (at most `burst` at once).
    if (!Number.isSafeInteger(burst) || burst < 1) {
      throw new RangeError(`burst must be a positive whole number, got ${burst}`);
    }
    this.perS = perS;
    this.burst = burst;
    this.#tokens = burst;
    this.#atMs = nowMs;
  }

  /** Tokens in the bucket at `nowMs` (a fraction while one refills), for tests and logs. */
  tokensAt(nowMs: number): number {
    this.#refill(nowMs);
    return this.#tokens;
  }

  /**
   * Takes one token at `nowMs` when there is one; else takes nothing and says how long until
   * there is, in whole milliseconds, at least 1.
   */
  take(nowMs: number): TokenBucketTake {
    this.#refill(nowMs);
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return ALLOWED;
    }
    return {
      allowed: false,
      waitMs: Math.max(1, Math.ceil(((1 - this.#tokens) * 1000) / this.perS)),
    };
  }

  #refill(nowMs: number): void {
    const elapsedMs = nowMs - this.#atMs;
    // A clock that went back (or NaN) adds nothing; the bucket keeps its place in time.
    if (!(elapsedMs > 0)) return;
    this.#atMs = nowMs;
    this.#tokens = Math.min(this.burst, this.#tokens + (elapsedMs * this.perS) / 1000);
  }
}
