/**
 * Goal: a FAILED report's `error`, which GetReport sends to clients, is a sentence a person can act
 * on, never a driver's or a bug's raw message (that goes to the log only). The same for why the
 * running sums could not be compared: the kind of failure, short, never the message.
 * Method: failedRunReason and sumsUncheckedReason on the kinds of error a run can end with.
 */
import { describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.js';
import { SUMS_UNCHECKED_REASON_LENGTH_MAX } from '../../src/reconciliation/reconciliation.repository.js';
import {
  failedRunReason,
  sumsUncheckedReason,
} from '../../src/reconciliation/reconciliation.service.js';

const context = { fileName: 'settlement-2024-05-01.csv', aborted: false };

describe('failedRunReason', () => {
  it('keeps the message of an expected failure', () => {
    const error = new UnavailableError('the database is unavailable; retry later');
    expect(failedRunReason(error, context)).toBe('the database is unavailable; retry later');
  });

  it('replaces a raw database error with a fixed sentence', () => {
    const error = Object.assign(
      new Error("Duplicate entry 'ord_1-PSP_FEE' for key 'ledger_transaction_order_kind'"),
      { errno: 1062 },
    );
    expect(failedRunReason(error, context)).toBe(
      'an internal error stopped the run (its cause is in the log of the node that ran it, ' +
        'under the report id); run it again, and report it if it fails the same way',
    );
  });

  it('says the node stopped when the run was interrupted, whatever the error', () => {
    expect(failedRunReason(new Error('aborted'), { ...context, aborted: true })).toBe(
      'interrupted: the node stopped; run it again',
    );
  });
});

describe('sumsUncheckedReason', () => {
  it('names a statement past its deadline, wrapped or not', () => {
    const timeout = Object.assign(new Error('MySQL did not answer a statement within 600000 ms'), {
      code: 'PROTOCOL_SEQUENCE_TIMEOUT',
    });
    const wrapped = new UnavailableError('the database is unavailable; retry later', {
      cause: timeout,
    });
    for (const error of [timeout, wrapped]) {
      expect(sumsUncheckedReason(error)).toBe(
        'a statement ran past its deadline (MYSQL_BULK_STATEMENT_TIMEOUT_MS)',
      );
    }
  });

  it("gives a driver error's code and errno, or an error's class, never its message", () => {
    const secret = "SELECT … WHERE account = 'seller_payable:s-42' AND debit_minor = 1999";
    const driver = Object.assign(new Error(secret), { code: 'ER_LOCK_DEADLOCK', errno: 1213 });
    expect(sumsUncheckedReason(driver)).toBe(
      'the comparison failed: ER_LOCK_DEADLOCK (errno 1213)',
    );
    expect(sumsUncheckedReason(new TypeError(secret))).toBe('the comparison failed: TypeError');
    // A code that is not a plain word could be anything: left out.
    const odd = Object.assign(new Error(secret), { name: secret, code: `X ${secret}` });
    expect(sumsUncheckedReason(odd)).toBe('the comparison failed: unknown');
    expect(sumsUncheckedReason('a string thrown')).toBe('the comparison failed: unknown');
    for (const error of [driver, odd]) {
      expect(sumsUncheckedReason(error).length).toBeLessThanOrEqual(
        SUMS_UNCHECKED_REASON_LENGTH_MAX,
      );
    }
  });
});
