/**
 * The chaos run's final report as plain text: what happened to the payments, the invariant table
 * (each line PASS or FAIL, with a few offenders when it fails), the faults injected per kind, and
 * what the nodes' own logs said (breaker changes, retries, dead letters, rejected webhooks).
 */
import { FAULT_KINDS, FAULT_LABEL } from './faults.js';
import type { ChaosResult } from './run.js';

export function formatReport(result: ChaosResult): string {
  const { outcome, checks, ok } = result.evaluation;
  const lines: string[] = [];
  const o = result.options;
  lines.push('');
  lines.push(
    `Settle chaos report: seed ${o.seed}, ${o.payments} payments, ${o.durationMs / 1000} s of faults, ` +
      `${o.nodes} node(s)`,
  );
  lines.push(
    `settled ${result.settled ? 'in' : 'NOT within'} ${(result.settleTookMs / 1000).toFixed(1)} s ` +
      `after the faults; whole run ${(result.elapsedMs / 1000).toFixed(1)} s` +
      (result.aborted ? ' (ABORTED)' : ''),
  );
  lines.push('');
  const rows: Array<[string, string]> = [
    [
      'payments created (requested / acknowledged / in DB)',
      `${outcome.paymentsRequested} / ${outcome.paymentsAcknowledged} / ${outcome.paymentsInDb}`,
    ],
    ['payment orders', String(outcome.orders)],
    ['  SUCCEEDED', String(outcome.byState.SUCCEEDED ?? 0)],
    ['  FAILED', `${outcome.byState.FAILED ?? 0}${reasons(outcome.failureReasons)}`],
    [
      '  EXPIRED',
      `${outcome.byState.EXPIRED ?? 0}  (${result.driver.ordersAbandoned} never paid on purpose)`,
    ],
    ['  not terminal, held in the DLQ', String(outcome.inDlqNotTerminal)],
    ['  flagged for review', String(outcome.flaggedForReview)],
    [
      'dead letters (dead_letter table)',
      `${outcome.deadLetterEntries}${reasons(outcome.deadLetterReasons)}`,
    ],
    ['  by state at the end', list(outcome.deadLetterStates) || '-'],
    ['  replayed by the run (AdminService)', String(result.deadLettersReplayed)],
    ["PSP charges (PSP's own records)", String(outcome.charges)],
  ];
  const other = Object.entries(outcome.byState).filter(
    ([state]) => !['SUCCEEDED', 'FAILED', 'EXPIRED'].includes(state),
  );
  for (const [state, n] of other) rows.splice(5, 0, [`  ${state}`, String(n)]);
  lines.push(...table(['outcome', 'value'], rows));
  lines.push('');
  lines.push(
    ...table(
      ['', 'invariant', 'value', 'expected'],
      checks.map((check) => [check.ok ? 'PASS' : 'FAIL', check.name, check.value, check.expected]),
    ),
  );
  for (const check of checks.filter((c) => !c.ok && c.examples.length > 0)) {
    lines.push(`  ${check.name}, for example:`);
    for (const example of check.examples) lines.push(`    - ${example}`);
  }
  lines.push('');
  lines.push(
    ...table(
      ['fault', 'planned', 'injected', 'skipped'],
      FAULT_KINDS.map((kind) => [
        FAULT_LABEL[kind],
        String(result.faultsPlanned[kind] ?? 0),
        String(result.faultsInjected[kind] ?? 0),
        String(result.faultsSkipped[kind] ?? 0),
      ]),
    ),
  );
  lines.push('');
  const breaker = result.logs.breaker;
  lines.push(
    `seen by the driver: ${result.driver.createRetries} CreatePayment retries with the same request id` +
      `${result.driver.createRetries > 0 ? ` (${list(result.driver.createRetryCodes)})` : ''}, ` +
      `${result.driver.ordersPaid} orders paid, ${result.driver.ordersNeverPaid} could not be paid (no checkout URL in time, or PayWithCard failed); ` +
      `webhooks: ${result.webhooks.duplicatesSent} duplicates, ${result.webhooks.lateSent} late, ` +
      `${result.webhooks.forgedSent} forged (${result.webhooks.forgedAccepted} accepted)`,
  );
  lines.push(
    `seen in the nodes' logs: breaker OPEN ${breaker.OPEN ?? 0}, HALF_OPEN ${breaker.HALF_OPEN ?? 0}, ` +
      `CLOSED ${breaker.CLOSED ?? 0}; ${result.logs.retries} retries; ${result.logs.deadLettered} dead-lettered; ` +
      `${result.logs.webhooksRejected} webhooks rejected; ${result.logs.errors} error lines`,
  );
  lines.push(
    `gRPC health of running nodes, sampled every second: SERVING ${result.health.serving}, ` +
      `NOT_SERVING ${result.health.notServing}, no answer ${result.health.unreachable}`,
  );
  if (result.driver.createErrors.length > 0) {
    lines.push(`driver errors: ${result.driver.createErrors.slice(0, 5).join('; ')}`);
  }
  lines.push(`logs: ${o.logDir}`);
  lines.push('');
  lines.push(ok ? 'RESULT: every invariant holds' : 'RESULT: INVARIANTS VIOLATED');
  return lines.join('\n');
}

/** "A 3, B 1", largest first. */
function list(counts: Readonly<Record<string, number>>): string {
  return Object.entries(counts)
    .sort((a, b) => b[1] - a[1])
    .map(([key, n]) => `${key} ${n}`)
    .join(', ');
}

/** The counts in parentheses after a value, or nothing. */
function reasons(counts: Readonly<Record<string, number>>): string {
  const text = list(counts);
  return text === '' ? '' : `  (${text})`;
}

function table(header: readonly string[], rows: ReadonlyArray<readonly string[]>): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const format = (cells: readonly string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [format(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(format)];
}
