/**
 * Goal: a PSP value fits its column by the column's count (characters, as utf8mb4 counts them),
 * so a value of multi-unit characters within the limit is kept and one past it is refused.
 */
import { describe, expect, it } from 'vitest';
import { fitsColumn, PSP_VALUE_LENGTH_MAX } from '../../src/psp/value-limits.js';

describe('fitsColumn', () => {
  it('takes a value up to the limit and refuses one character more', () => {
    expect(fitsColumn('pspReference', 'r'.repeat(PSP_VALUE_LENGTH_MAX.pspReference))).toBe(true);
    expect(fitsColumn('pspReference', 'r'.repeat(65))).toBe(false);
    expect(fitsColumn('token', 't'.repeat(128))).toBe(true);
    expect(fitsColumn('token', 't'.repeat(129))).toBe(false);
    expect(fitsColumn('checkoutUrl', 'u'.repeat(513))).toBe(false);
    expect(fitsColumn('declineCode', 'd'.repeat(65))).toBe(false);
  });

  it('counts characters, not UTF-16 units', () => {
    // 64 characters of two UTF-16 units each: 128 units, 64 characters of a VARCHAR(64).
    expect(fitsColumn('pspReference', '😀'.repeat(64))).toBe(true);
    expect(fitsColumn('pspReference', '😀'.repeat(65))).toBe(false);
  });
});
