/**
 * Goal: the bench's "where a CreatePayment's time goes" table reads the histograms a node really
 * exports (names, labels and bucket bounds), counts each measure within the bounds from the
 * difference of two scrapes, and leaves out series of other methods, kinds and operations.
 * Method: Settle's own metrics registry (createMetrics), fed observations through the same
 * calls the node makes, scraped as Prometheus text before and after.
 */
import { describe, expect, it } from 'vitest';
import {
  CREATE_PATH_BOUNDS_MS,
  createPathBetween,
  createPathFrom,
  createPathRows,
  withinOf,
} from '../../bench/create-path.js';
import { createMetrics } from '../../src/observability/metrics.js';

describe('createPath', () => {
  it('counts CreatePayment handling, creation commits and PSP registrations within each bound', async () => {
    const metrics = createMetrics();
    const call = (method: string, ms: number) =>
      metrics.grpcCall({
        service: 'settle.v1.PaymentService',
        method,
        type: 'unary',
        code: 'OK',
        ms,
      });
    // Before the phase: observations the difference must leave out.
    call('CreatePayment', 300);
    metrics.groupCommitBatch({ kind: 'creations', size: 3, ms: 2, ok: true });
    const before = createPathFrom(await metrics.registry.metrics());

    for (const ms of [3, 8, 20, 40, 90, 200, 400]) call('CreatePayment', ms);
    call('GetPayment', 1); // another method
    metrics.grpcCall({
      service: 'settle.v1.PaymentService',
      method: 'CreatePayment',
      type: 'unary',
      code: 'INVALID_ARGUMENT', // a refused call still took its time: counted
      ms: 4,
    });
    metrics.groupCommitBatch({ kind: 'creations', size: 4, ms: 30, ok: true });
    metrics.groupCommitBatch({ kind: 'creations', size: 4, ms: 1, ok: false }); // failed: left out
    metrics.groupCommitBatch({ kind: 'transitions', size: 9, ms: 1, ok: true }); // another kind
    metrics.pspCall({ op: 'register', ok: true, ms: 12 });
    metrics.pspCall({ op: 'register', ok: false, ms: 600 }); // an error counts too
    metrics.pspCall({ op: 'status', ok: true, ms: 1 }); // another operation
    metrics.pspCall({ op: 'register', ok: false, ms: 0, notSent: true }); // the breaker: left out
    const path = createPathBetween(before, createPathFrom(await metrics.registry.metrics()));

    expect(CREATE_PATH_BOUNDS_MS).toEqual([5, 10, 25, 50, 100, 250]);
    // 3, 4 | 8 | 20 | 40 | 90 | 200 | 400
    expect(path.handled).toEqual({ within: [2, 3, 4, 5, 6, 7], total: 8 });
    expect(path.creationCommits).toEqual({ within: [0, 0, 0, 1, 1, 1], total: 1 });
    expect(path.pspRegister).toEqual({ within: [0, 0, 1, 1, 1, 1], total: 2 });
  });

  it('prints a phase as four rows of shares, and dashes for what it could not read', () => {
    const client = withinOf([1, 6, 6, 30]);
    const rows = createPathRows('half load', client, undefined);
    expect(rows[0]).toEqual([
      'half load',
      'CreatePayment, load generator (call → answer)',
      '25.0 %',
      '75.0 %',
      '75.0 %',
      '100.0 %',
      '100.0 %',
      '100.0 %',
      '4',
    ]);
    expect(rows.slice(1).map((row) => row.slice(2))).toEqual([
      ['–', '–', '–', '–', '–', '–', '–'],
      ['–', '–', '–', '–', '–', '–', '–'],
      ['–', '–', '–', '–', '–', '–', '–'],
    ]);
  });
});
