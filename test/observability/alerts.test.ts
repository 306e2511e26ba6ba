/**
 * Goal: the Prometheus alerting rules shipped in deploy/prometheus/settle-alerts.yml only name
 * metrics a Settle node exports, with labels those metrics have and label values they take, so no
 * alert is silently dead from a typo (prom-client's process metrics included); every rule has a
 * severity and a summary. The gRPC alerts count exactly the codes the request log writes at warn,
 * load shedding (RESOURCE_EXHAUSTED) in an alert of its own.
 * The rules behave as their unit tests (settle-alerts.test.yml) say: each alert fires on the series
 * it is about, after its `for`, with its annotations, and not before.
 * Method: the YAML parsed; every metric and label matcher of every expression looked up in a
 * node's own registry (createMetrics, the one /metrics serves). Prometheus's own promtool checks
 * the rules and runs their unit tests: CI unpacks it from Debian's package
 * (scripts/fetch-promtool.sh) and names it in PROMTOOL; without PROMTOOL, a promtool on PATH or
 * in .cache/promtool is used, and with none that test is skipped.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import * as grpc from '@grpc/grpc-js';
import { createMetrics } from '../../src/observability/metrics.js';
import { SERVER_SIDE_CODES } from '../../src/observability/request-log.js';
import { RECONCILIATION_CLASS } from '../../src/reconciliation/compare.js';
import { INTERNAL_CHECK_FAILURE } from '../../src/reconciliation/reconciliation.repository.js';
import { BREAKER_STATE } from '../../src/psp/client.js';
import { LOCKOUT_SCOPE } from '../../src/admin/auth.js';
import { HOUSEKEEPING_TASK } from '../../src/jobs/housekeeping.js';
import { API_TRANSPORT } from '../../src/grpc/api-rate-limit.js';
import { DEAD_LETTER_REASON } from '../../src/messaging/command-consumer.js';

type Rule = {
  alert?: string;
  expr?: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
};

const file = new URL('../../deploy/prometheus/settle-alerts.yml', import.meta.url);
const unitTests = new URL('../../deploy/prometheus/settle-alerts.test.yml', import.meta.url);

/** promtool: PROMTOOL (which must then work), else .cache/promtool, else PATH; or undefined. */
function findPromtool(): string | undefined {
  const named = process.env['PROMTOOL'];
  if (named !== undefined && named !== '') return named;
  const cached = fileURLToPath(new URL('../../.cache/promtool/promtool', import.meta.url));
  if (existsSync(cached)) return cached;
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    try {
      accessSync(`${dir}/promtool`, constants.X_OK);
      return `${dir}/promtool`;
    } catch {
      // Not here.
    }
  }
  return undefined;
}
const promtool = findPromtool();
const rules: Rule[] = (
  parse(readFileSync(file, 'utf8')) as { groups: Array<{ name: string; rules: Rule[] }> }
).groups.flatMap((group) => group.rules);

/**
 * Every `metric{matchers}` or bare metric of an expression, with its matchers: Settle's own, the
 * gRPC ones, and prom-client's process metrics (`process_open_fds`, registered on Linux only).
 */
function selectors(expr: string): Array<{ metric: string; matchers: Array<[string, string]> }> {
  const found = [];
  for (const match of expr.matchAll(
    /\b((?:settle|grpc_server|process)_[a-z0-9_]+)(\{([^}]*)\})?/g,
  )) {
    const matchers = [...(match[3] ?? '').matchAll(/([a-z_]+)\s*=~?\s*"([^"]*)"/g)].map(
      (m): [string, string] => [m[1] ?? '', m[2] ?? ''],
    );
    found.push({ metric: match[1] ?? '', matchers });
  }
  return found;
}

/** The values a label of Settle's metrics can take, where they are a closed set. */
const LABEL_VALUES: Record<string, readonly string[]> = {
  'settle_psp_breaker_state/state': Object.values(BREAKER_STATE),
  'settle_reconciliation_last_run_mismatches/class': Object.values(RECONCILIATION_CLASS),
  'settle_reconciliation_last_run_internal_check_failed/check':
    Object.values(INTERNAL_CHECK_FAILURE),
  'settle_admin_lockouts_total/scope': Object.values(LOCKOUT_SCOPE),
  'settle_dead_letters_total/reason': Object.values(DEAD_LETTER_REASON),
  'settle_housekeeping_failures_total/task': Object.values(HOUSEKEEPING_TASK),
  'settle_api_throttled_total/transport': Object.values(API_TRANSPORT),
  'grpc_server_handled_total/grpc_code': [
    'OK',
    'CANCELLED',
    'UNKNOWN',
    'INVALID_ARGUMENT',
    'DEADLINE_EXCEEDED',
    'NOT_FOUND',
    'ALREADY_EXISTS',
    'PERMISSION_DENIED',
    'RESOURCE_EXHAUSTED',
    'FAILED_PRECONDITION',
    'ABORTED',
    'OUT_OF_RANGE',
    'UNIMPLEMENTED',
    'INTERNAL',
    'UNAVAILABLE',
    'DATA_LOSS',
    'UNAUTHENTICATED',
  ],
};

describe('deploy/prometheus/settle-alerts.yml', () => {
  it('has rules, each named, with an expression, a severity and a summary', () => {
    expect(rules.length).toBeGreaterThanOrEqual(12);
    for (const rule of rules) {
      expect(rule.alert, JSON.stringify(rule)).toMatch(/^Settle[A-Za-z]+$/);
      expect(rule.expr, rule.alert).toBeTruthy();
      expect(['critical', 'warning'], rule.alert).toContain(rule.labels?.['severity']);
      expect(rule.annotations?.['summary'], rule.alert).toBeTruthy();
      expect(rule.annotations?.['description'], rule.alert).toBeTruthy();
    }
    expect(new Set(rules.map((rule) => rule.alert)).size).toBe(rules.length);
  });

  it('names only metrics, labels and label values a node exports', () => {
    const registry = createMetrics().registry;
    let checked = 0;
    for (const rule of rules) {
      for (const { metric, matchers } of selectors(rule.expr ?? '')) {
        const family = metric.replace(/_(bucket|sum|count)$/, '');
        const exported = registry.getSingleMetric(metric) ?? registry.getSingleMetric(family);
        expect(exported, `${rule.alert}: ${metric}`).toBeDefined();
        const labelNames = [
          ...((exported as unknown as { labelNames: string[] }).labelNames ?? []),
          ...(metric.endsWith('_bucket') ? ['le'] : []),
        ];
        for (const [label, value] of matchers) {
          expect(labelNames, `${rule.alert}: ${metric}{${label}}`).toContain(label);
          const known = LABEL_VALUES[`${family}/${label}`];
          if (known === undefined) continue;
          for (const alternative of value.split('|')) {
            expect(known, `${rule.alert}: ${metric}{${label}="${alternative}"}`).toContain(
              alternative,
            );
          }
        }
        checked += 1;
      }
    }
    expect(checked).toBeGreaterThanOrEqual(rules.length);
  });

  it('counts as gRPC failures or load shedding exactly the codes the request log warns about', () => {
    const alerted = new Set<string>();
    for (const rule of rules) {
      for (const { metric, matchers } of selectors(rule.expr ?? '')) {
        if (metric !== 'grpc_server_handled_total') continue;
        for (const [label, value] of matchers) {
          if (label === 'grpc_code') for (const code of value.split('|')) alerted.add(code);
        }
      }
    }
    const warned = [...SERVER_SIDE_CODES].map((code) => grpc.status[code]);
    expect([...alerted].sort()).toEqual(warned.sort());
    // Load shedding is watched apart from the failures: it is no bug.
    const codesOf = (alert: string) =>
      selectors(rules.find((rule) => rule.alert === alert)?.expr ?? '').flatMap(({ matchers }) =>
        matchers.flatMap(([label, value]) => (label === 'grpc_code' ? value.split('|') : [])),
      );
    expect(codesOf('SettleGrpcLoadShedding')).toEqual(['RESOURCE_EXHAUSTED']);
    expect(codesOf('SettleGrpcErrors')).not.toContain('RESOURCE_EXHAUSTED');
  });

  it.skipIf(promtool === undefined)(
    'passes promtool check rules and its unit tests (settle-alerts.test.yml)',
    () => {
      const run = (...args: string[]) =>
        execFileSync(promtool ?? 'promtool', args, { encoding: 'utf8', timeout: 60_000 });
      expect(run('check', 'rules', fileURLToPath(file))).toMatch(/SUCCESS: \d+ rules found/);
      expect(run('test', 'rules', fileURLToPath(unitTests))).toContain('SUCCESS');
    },
    // promtool evaluates every rule each minute over the two days some tests span: 5-9 s idle,
    // up to 16 s seen while the rest of the suite runs.
    120_000,
  );
});
