/**
 * The log of a background loop that keeps failing for the same outside reason (the relay's pass
 * every 200 ms while MySQL is down): the first failure is logged at once, then at most one line
 * per `everyMs` saying how many were left out, so an outage costs a few lines, not thousands.
 * A failure that is an outage (the database or a connection gone) is logged without its stack:
 * the message says all there is; anything else keeps the stack, since it may be a bug.
 */
import type { Logger } from 'pino';
import { ERROR_CODE, SettleError } from '../domain/errors.js';
import { isConnectionError } from '../storage/errors.js';

export type RepeatingFailureOptions = Readonly<{
  everyMs?: number;
  now?: () => number;
}>;

/** What to log of `error`: an outage as type, code and message; anything else whole. */
export function loggedError(error: unknown): unknown {
  const outage =
    isConnectionError(error) ||
    (error instanceof SettleError && error.code === ERROR_CODE.unavailable);
  if (!outage || !(error instanceof Error)) return error;
  const code = (error as { code?: unknown }).code;
  return { type: error.name, message: error.message, ...(code !== undefined && { code }) };
}

export function repeatingFailureLog(
  logger: Pick<Logger, 'warn'>,
  message: string,
  options: RepeatingFailureOptions = {},
): (error: unknown) => void {
  const everyMs = options.everyMs ?? 10_000;
  const now = options.now ?? Date.now;
  let loggedAtMs = Number.NEGATIVE_INFINITY;
  let leftOut = 0;
  return (error) => {
    const at = now();
    if (at - loggedAtMs < everyMs) {
      leftOut += 1;
      return;
    }
    loggedAtMs = at;
    logger.warn({ err: loggedError(error), ...(leftOut > 0 && { leftOut }) }, message);
    leftOut = 0;
  };
}
