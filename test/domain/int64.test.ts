/**
 * Goal: the one check every entry point uses for a decimal int64 (ids, page-token cursors,
 * amounts) takes what the former `^-?\d{1,19}$` took that fits a BIGINT, and refuses the 19-digit
 * values past it. Method: the pure function at the bounds.
 */
import { describe, expect, it } from 'vitest';
import { isInt64Decimal, parseInt64Decimal } from '../../src/domain/int64.js';
import { INT64_MAX, INT64_MIN } from '../../src/domain/money.js';

describe('parseInt64Decimal', () => {
  it('takes INT64_MAX and refuses INT64_MAX + 1 and the largest 19 digits', () => {
    expect(parseInt64Decimal('9223372036854775807')).toBe(INT64_MAX);
    expect(parseInt64Decimal('9223372036854775808')).toBeUndefined();
    expect(parseInt64Decimal('9999999999999999999')).toBeUndefined();
    expect(parseInt64Decimal('9223372036854775808', { signed: true })).toBeUndefined();
    expect(parseInt64Decimal('9999999999999999999', { signed: true })).toBeUndefined();
  });

  it('takes INT64_MIN when signed and refuses one below it; unsigned takes no sign', () => {
    expect(parseInt64Decimal('-9223372036854775808', { signed: true })).toBe(INT64_MIN);
    expect(parseInt64Decimal('-9223372036854775809', { signed: true })).toBeUndefined();
    expect(parseInt64Decimal('-9999999999999999999', { signed: true })).toBeUndefined();
    expect(parseInt64Decimal('-1', { signed: true })).toBe(-1n);
    expect(parseInt64Decimal('-1')).toBeUndefined();
    expect(parseInt64Decimal('-0')).toBeUndefined();
  });

  it('takes leading zeros within 19 digits, as the former pattern did, and nothing longer', () => {
    expect(parseInt64Decimal('0004')).toBe(4n);
    expect(parseInt64Decimal('0'.repeat(19))).toBe(0n);
    expect(parseInt64Decimal(`000${'9'.repeat(16)}`)).toBe(BigInt('9'.repeat(16)));
    expect(parseInt64Decimal('0'.repeat(20))).toBeUndefined();
    expect(parseInt64Decimal('-0000000000000000001', { signed: true })).toBe(-1n);
  });

  it('refuses what is not decimal digits', () => {
    for (const text of ['', ' 1', '1 ', '+1', '0x10', '1e3', '1.0', '1_000', '١٢', '1 OR 1']) {
      expect(isInt64Decimal(text), text).toBe(false);
      expect(isInt64Decimal(text, { signed: true }), text).toBe(false);
    }
    expect(isInt64Decimal('12')).toBe(true);
  });
});
