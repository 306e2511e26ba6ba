/**
 * Goal: the id patterns every entry point checks accept exactly the ids newId makes (prefix, then
 * 26 Crockford base32 characters, which leave out I, L, O and U), and withDeadline bounds a wait
 * without cancelling the work; a loop's pause ends when woken, and a wake between two pauses is
 * kept; ids made in one millisecond never repeat. Method: the pure functions, with real timers
 * of a few ms.
 */
import { describe, expect, it } from 'vitest';
import { WakeUp, withDeadline } from '../../src/domain/deadline.js';
import { newId, ORDER_ID_PATTERN, PAYMENT_ID_PATTERN } from '../../src/domain/ids.js';

describe('id patterns', () => {
  it('accept what newId makes and nothing looser', () => {
    for (let i = 0; i < 100; i += 1) {
      expect(newId('payment')).toMatch(PAYMENT_ID_PATTERN);
      expect(newId('order')).toMatch(ORDER_ID_PATTERN);
    }
    expect(PAYMENT_ID_PATTERN.test(newId('order'))).toBe(false);
    expect(PAYMENT_ID_PATTERN.test(`pay_${'O'.repeat(26)}`)).toBe(false);
    expect(ORDER_ID_PATTERN.test(`ord_${'0'.repeat(25)}`)).toBe(false);
    expect(ORDER_ID_PATTERN.test(`ord_${'0'.repeat(26)}x`)).toBe(false);
  });
});

describe('newId', () => {
  it('never repeats, across refills of its random pool (256 ids each)', () => {
    const now = Date.now();
    const ids = Array.from({ length: 2_000 }, () => newId('order', now));
    expect(new Set(ids).size).toBe(ids.length);
    // Same millisecond: only the random part differs, and it is spread over the alphabet.
    const randomParts = new Set(ids.map((id) => id.slice(-16)));
    expect(randomParts.size).toBe(ids.length);
    const characters = new Set(ids.flatMap((id) => [...id.slice(-16)]));
    expect(characters.size).toBe(32);
  });
});

describe('withDeadline', () => {
  it('passes a timely outcome through and rejects a late one', async () => {
    await expect(withDeadline(Promise.resolve(7), 50)).resolves.toBe(7);
    await expect(withDeadline(Promise.reject(new Error('boom')), 50)).rejects.toThrow('boom');
    const late = new Promise((resolve) => setTimeout(resolve, 200, 'late'));
    await expect(withDeadline(late, 5)).rejects.toThrow('no answer within 5 ms');
  });
});

describe('WakeUp', () => {
  const timed = async (pause: Promise<void>) => {
    const started = performance.now();
    await pause;
    return performance.now() - started;
  };

  it('sleeps the whole pause unless woken, and a wake ends it at once', async () => {
    const wakeUp = new WakeUp();
    expect(await timed(wakeUp.sleep(30))).toBeGreaterThanOrEqual(25);
    const pause = wakeUp.sleep(5_000);
    setTimeout(() => wakeUp.wake(), 10);
    expect(await timed(pause)).toBeLessThan(1_000);
  });

  it('keeps a wake that came between two pauses, once; forget() drops it', async () => {
    const wakeUp = new WakeUp();
    wakeUp.wake();
    wakeUp.wake();
    expect(await timed(wakeUp.sleep(5_000))).toBeLessThan(1_000);
    // Kept once only: the next pause is whole.
    expect(await timed(wakeUp.sleep(30))).toBeGreaterThanOrEqual(25);
    wakeUp.wake();
    wakeUp.forget();
    expect(await timed(wakeUp.sleep(30))).toBeGreaterThanOrEqual(25);
  });
});
