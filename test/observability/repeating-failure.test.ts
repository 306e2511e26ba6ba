/**
 * Goal: a background loop that keeps failing logs its first failure at once and then at most one
 * line per interval, saying how many it left out; an outage (a connection lost, the database
 * unavailable) is logged without its stack, anything else whole.
 * Method: the function with a recording logger and a hand-moved clock; real mysql2-shaped and
 * Settle errors.
 */
import { describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.js';
import { loggedError, repeatingFailureLog } from '../../src/observability/repeating-failure.js';

function recorder() {
  const lines: Array<{ fields: Record<string, unknown>; message: string }> = [];
  return {
    lines,
    logger: {
      warn: (fields: Record<string, unknown>, message: string) => lines.push({ fields, message }),
    } as never,
  };
}

const refused = () =>
  Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:3306'), { code: 'ECONNREFUSED' });

describe('repeatingFailureLog', () => {
  it('logs the first failure, then one line per interval with the count left out', () => {
    const { lines, logger } = recorder();
    let now = 0;
    const fail = repeatingFailureLog(logger, 'relay pass failed', {
      everyMs: 10_000,
      now: () => now,
    });
    // An outage: a failure every 200 ms for 25 s.
    for (; now < 25_000; now += 200) fail(refused());
    expect(lines.map((line) => line.fields['leftOut'])).toEqual([undefined, 49, 49]);
    expect(lines.every((line) => line.message === 'relay pass failed')).toBe(true);
    // Quiet, then a failure again: logged at once.
    now += 60_000;
    fail(refused());
    expect(lines).toHaveLength(4);
  });
});

describe('loggedError', () => {
  it('keeps an outage to its type, code and message', () => {
    expect(loggedError(refused())).toEqual({
      type: 'Error',
      message: 'connect ECONNREFUSED 127.0.0.1:3306',
      code: 'ECONNREFUSED',
    });
    expect(loggedError(new UnavailableError('the database is unavailable'))).toEqual({
      type: 'UnavailableError',
      message: 'the database is unavailable',
      code: 'UNAVAILABLE',
    });
  });

  it('keeps anything else whole, stack included: it may be a bug', () => {
    const bug = new TypeError('cannot read properties of undefined');
    expect(loggedError(bug)).toBe(bug);
  });
});
