/**
 * Decimal int64s as callers write them: numeric ids (dead letters, ledger entries, audit rows,
 * mismatches), the cursors of page tokens and amounts. 19 digits hold values past INT64_MAX
 * (9999999999999999999), which no BIGINT column or proto int64 can carry: a lookup bound to one
 * would find nothing, or fail in the database, instead of telling the caller. Every entry point
 * that turns text into a BIGINT checks it here, so out of range is refused as malformed is. Pure.
 */
import { INT64_MAX, INT64_MIN } from './money.js';

/** At most 19 digits (leading zeros allowed, as `0004`), and a '-' first only when signed. */
const UNSIGNED = /^\d{1,19}$/;
const SIGNED = /^-?\d{1,19}$/;

export type Int64DecimalOptions = Readonly<{
  /** Takes a leading '-' (amounts); ids and cursors are never negative. Default false. */
  signed?: boolean;
}>;

/**
 * The value of `text`, or undefined unless it is decimal digits (a '-' first when `signed`) whose
 * value fits a signed 64-bit integer. '0x10', '1e3', ' 1' and '+1' are not decimal here.
 */
export function parseInt64Decimal(
  text: string,
  options: Int64DecimalOptions = {},
): bigint | undefined {
  if (!(options.signed === true ? SIGNED : UNSIGNED).test(text)) return undefined;
  const value = BigInt(text);
  return value <= INT64_MAX && value >= INT64_MIN ? value : undefined;
}

/** Whether parseInt64Decimal takes `text`. */
export function isInt64Decimal(text: string, options: Int64DecimalOptions = {}): boolean {
  return parseInt64Decimal(text, options) !== undefined;
}
