/**
 * Money is an integer amount of minor units (cents for USD) and a currency code. All arithmetic on
 * money lives here and refuses to mix currencies. Floats never touch money.
 */
export const CURRENCIES = ['USD'] as const;
export type CurrencyCode = (typeof CURRENCIES)[number];

export type Money = Readonly<{ amountMinor: bigint; currency: CurrencyCode }>;

/** The largest amount of one payment order, in minor units (10^12 cents = 10 billion dollars). */
export const ORDER_AMOUNT_MINOR_MAX = 1_000_000_000_000n;

export function isCurrencyCode(value: string): value is CurrencyCode {
  return (CURRENCIES as readonly string[]).includes(value);
}

export function money(amountMinor: bigint, currency: CurrencyCode): Money {
  return Object.freeze({ amountMinor, currency });
}

export function add(a: Money, b: Money): Money {
  assertSameCurrency(a, b);
  return money(a.amountMinor + b.amountMinor, a.currency);
}

export function sum(amounts: readonly Money[], currency: CurrencyCode): Money {
  return amounts.reduce((total, amount) => add(total, amount), money(0n, currency));
}

function assertSameCurrency(a: Money, b: Money): void {
  if (a.currency !== b.currency) {
    throw new Error(`currency mismatch: ${String(a.currency)} vs ${String(b.currency)}`);
  }
}

/** Parses a decimal string of minor units ("1999") into a bigint; undefined if it is not one. */
export function parseMinor(value: string): bigint | undefined {
  return /^-?\d{1,19}$/.test(value) ? BigInt(value) : undefined;
}

/** Formats minor units as a decimal major-unit string: 1999n → "19.99" (two decimals, USD). */
export function formatMajor(amountMinor: bigint): string {
  const negative = amountMinor < 0n;
  const abs = negative ? -amountMinor : amountMinor;
  const whole = abs / 100n;
  const cents = (abs % 100n).toString().padStart(2, '0');
  return `${negative ? '-' : ''}${whole}.${cents}`;
}
