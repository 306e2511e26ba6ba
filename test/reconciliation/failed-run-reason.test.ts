/**
 * Goal: a FAILED report's `error`, which GetReport sends to clients, is a sentence a person can act
 * on, never a driver's or a bug's raw message (that goes to the log only).
 * Method: failedRunReason on the kinds of error a run can end with.
 */
import { describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.js';
import { failedRunReason } from '../../src/reconciliation/reconciliation.service.js';

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
