/**
 * Money is an integer amount of minor units (cents for USD, `bigint`) carried beside a currency
 * code; floats never touch it. Sums happen in SQL (BIGINT) or on bigint values of one currency.
 */
export const CURRENCIES = ['USD'] as const;
export type CurrencyCode = (typeof CURRENCIES)[number];

/**
 * The range of a signed 64-bit integer: all an amount or a sum can be at the edges, where proto
 * `int64` fields and MySQL `BIGINT` columns carry it (a SUM in MySQL is wider: DECIMAL).
 */
export const INT64_MAX = 2n ** 63n - 1n;
export const INT64_MIN = -(2n ** 63n);

/** The largest amount of one payment order, in minor units (10^12 cents = 10 billion dollars). */
export const ORDER_AMOUNT_MINOR_MAX = 1_000_000_000_000n;

export function isCurrencyCode(value: string): value is CurrencyCode {
  return (CURRENCIES as readonly string[]).includes(value);
}

/** Formats minor units as a decimal major-unit string: 1999n → "19.99" (two decimals, USD). */
export function formatMajor(amountMinor: bigint): string {
  const negative = amountMinor < 0n;
  const abs = negative ? -amountMinor : amountMinor;
  const whole = abs / 100n;
  const cents = (abs % 100n).toString().padStart(2, '0');
  return `${negative ? '-' : ''}${whole}.${cents}`;
}
