/**
 * An operations snapshot for the metrics' tests: every probe "not asked" (its gauges show no
 * sample), no actors, no breaker, except what `parts` sets. The metrics read only what a test
 * sets up, so one test's gauges never depend on another probe's stand-in.
 */
import type { OperationsSnapshot } from '../../src/observability/operations.js';

export function operationsSnapshot(
  parts: Readonly<Record<string, unknown>> = {},
): OperationsSnapshot {
  const notAsked = { ok: false, error: 'not asked' };
  return {
    takenAt: new Date(),
    breaker: undefined,
    consumer: notAsked,
    commandStream: notAsked,
    deadLetters: notAsked,
    outbox: notAsked,
    ledgerSums: notAsked,
    actors: { live: 0, mailboxDepth: 0, passivated: 0 },
    payments: notAsked,
    reconciliation: notAsked,
    ...parts,
  } as unknown as OperationsSnapshot;
}
