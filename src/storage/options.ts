/**
 * Checks of the counts and intervals that storage code takes from its callers. A bad one is the
 * caller's bug, not an operating error, so it throws at once, before any statement is sent.
 */

/** Throws a RangeError naming the option unless `value` is a whole number ≥ 1. */
export function assertWholeAtLeastOne(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a whole number ≥ 1, got ${value}`);
  }
}
