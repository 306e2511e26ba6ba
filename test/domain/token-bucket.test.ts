/**
 * Goal: the token bucket behind API_RATE_LIMIT_PER_S lets `burst` requests through at once,
 * refills at `perS` a second, says how long until the next token, never goes below 0 however
 * often a refused caller retries, caps a long quiet spell at `burst`, and ignores a clock that
 * goes back or is NaN; any burst of 1 or more, below the rate too. Method: a clock the test moves
 * by hand.
 */
import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../src/domain/token-bucket.js';

describe('TokenBucket', () => {
  it('starts full: burst requests at once, then refuses with the wait for one token', () => {
    const bucket = new TokenBucket({ perS: 2, burst: 2, nowMs: 1_000 });
    expect(bucket.take(1_000)).toEqual({ allowed: true });
    expect(bucket.take(1_000)).toEqual({ allowed: true });
    expect(bucket.take(1_000)).toEqual({ allowed: false, waitMs: 500 });
  });

  it('refills at perS a second and says how much of the wait is left', () => {
    const bucket = new TokenBucket({ perS: 20, burst: 20, nowMs: 0 });
    for (let i = 0; i < 20; i += 1) expect(bucket.take(0).allowed).toBe(true);
    expect(bucket.take(0)).toEqual({ allowed: false, waitMs: 50 });
    expect(bucket.take(30)).toEqual({ allowed: false, waitMs: 20 });
    expect(bucket.take(50)).toEqual({ allowed: true });
    expect(bucket.take(50)).toEqual({ allowed: false, waitMs: 50 });
    // 100 ms: two more.
    expect(bucket.take(150).allowed).toBe(true);
    expect(bucket.take(150).allowed).toBe(true);
    expect(bucket.take(150).allowed).toBe(false);
  });

  it('never goes below 0: refused retries take nothing', () => {
    const bucket = new TokenBucket({ perS: 10, burst: 10, nowMs: 0 });
    for (let i = 0; i < 10; i += 1) bucket.take(0);
    for (let i = 0; i < 1_000; i += 1) expect(bucket.take(0).allowed).toBe(false);
    expect(bucket.tokensAt(0)).toBe(0);
    // One token's time later, one call passes, however many were refused before.
    expect(bucket.take(100)).toEqual({ allowed: true });
  });

  it('caps a long quiet spell at burst', () => {
    const bucket = new TokenBucket({ perS: 5, burst: 15, nowMs: 0 });
    for (let i = 0; i < 15; i += 1) bucket.take(0);
    expect(bucket.tokensAt(3_600_000)).toBe(15);
    let allowed = 0;
    while (bucket.take(3_600_000).allowed) allowed += 1;
    expect(allowed).toBe(15);
  });

  it('keeps whole seconds exact over many refills (no drift)', () => {
    const bucket = new TokenBucket({ perS: 3, burst: 3, nowMs: 0 });
    let allowed = 0;
    // Asked every millisecond for 10 s: the 3 at start and 3 a second after.
    for (let ms = 0; ms <= 10_000; ms += 1) if (bucket.take(ms).allowed) allowed += 1;
    expect(allowed).toBe(3 + 30);
  });

  it('takes a burst below the rate: at most burst at once, refilled at the rate', () => {
    // 10 a second in bursts of 2: traffic smoothed, not refused for its settings.
    const bucket = new TokenBucket({ perS: 10, burst: 2, nowMs: 0 });
    expect(bucket.take(0)).toEqual({ allowed: true });
    expect(bucket.take(0)).toEqual({ allowed: true });
    expect(bucket.take(0)).toEqual({ allowed: false, waitMs: 100 });
    expect(bucket.take(100)).toEqual({ allowed: true });
    // A quiet second refills 2, not 10.
    expect(bucket.tokensAt(1_100)).toBe(2);
  });

  it('ignores a NaN time: it adds nothing, and the bucket counts on from where it was', () => {
    const bucket = new TokenBucket({ perS: 10, burst: 10, nowMs: 0 });
    for (let i = 0; i < 10; i += 1) bucket.take(0);
    expect(bucket.take(Number.NaN)).toEqual({ allowed: false, waitMs: 100 });
    expect(bucket.tokensAt(Number.NaN)).toBe(0);
    expect(bucket.take(100)).toEqual({ allowed: true });
  });

  it('ignores a clock that goes back, and counts on from where it was', () => {
    const bucket = new TokenBucket({ perS: 10, burst: 10, nowMs: 5_000 });
    for (let i = 0; i < 10; i += 1) bucket.take(5_000);
    expect(bucket.take(1_000).allowed).toBe(false);
    expect(bucket.tokensAt(1_000)).toBe(0);
    expect(bucket.take(5_100)).toEqual({ allowed: true });
  });

  it('refuses a rate or burst that is no positive whole number', () => {
    expect(() => new TokenBucket({ perS: 0, burst: 1, nowMs: 0 })).toThrow(RangeError);
    expect(() => new TokenBucket({ perS: 1.5, burst: 2, nowMs: 0 })).toThrow(RangeError);
    expect(() => new TokenBucket({ perS: 10, burst: 0, nowMs: 0 })).toThrow(
      'burst must be a positive whole number, got 0',
    );
    expect(() => new TokenBucket({ perS: 10, burst: 2.5, nowMs: 0 })).toThrow(RangeError);
    expect(new TokenBucket({ perS: 10, burst: 1, nowMs: 0 }).burst).toBe(1);
  });
});
