/**
 * Goal: the chaos demo's promise holds in CI: under every kind of fault (kill -9 of a node, NATS
 * cut, MySQL connection kills, PSP errors/timeouts/slowness, duplicate, late and forged webhooks)
 * nobody is charged twice, no money is lost or invented and no order is lost.
 * Method: the short version of `npm run chaos`: runChaos() with a fixed seed, 40 payments (a few
 * never paid, so they must expire) and 20 s of faults (each kind once) against two real Settle
 * node processes and the PSP mock on the real MariaDB and NATS; every line of the invariant table
 * must PASS.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect, inject, it } from 'vitest';
import { FAULT_KINDS } from '../../src/chaos/faults.js';
import { formatReport } from '../../src/chaos/report.js';
import { runChaos } from '../../src/chaos/run.js';

it('keeps every invariant while every kind of fault is injected', async () => {
  const progress: string[] = [];
  const result = await runChaos({
    seed: 20_251_125,
    payments: 40,
    durationMs: 20_000,
    nodes: 2,
    settleMs: 45_000,
    perKind: 1,
    orderExpiryMs: 20_000,
    mysqlUrl: inject('mysqlUrl'),
    natsUrl: inject('natsUrl'),
    baseEnv: process.env,
    logDir: mkdtempSync(path.join(os.tmpdir(), 'settle-chaos-test-')),
    out: (line) => progress.push(line),
  });
  const report = formatReport(result);
  expect(
    result.evaluation.checks.filter((check) => !check.ok),
    report,
  ).toEqual([]);
  expect(result.settled, report).toBe(true);
  for (const kind of FAULT_KINDS) expect(result.faultsInjected[kind], kind).toBeGreaterThan(0);
  // Not vacuous: payments went through, both ways, and the forged webhooks were really sent.
  const { outcome } = result.evaluation;
  expect(outcome.paymentsInDb).toBe(40);
  expect(outcome.byState.SUCCEEDED ?? 0).toBeGreaterThan(20);
  expect(outcome.byState.FAILED ?? 0).toBeGreaterThan(0);
  // The orders nobody paid expired: the janitor's expiry ran under the faults too.
  expect(result.driver.ordersAbandoned).toBeGreaterThan(0);
  expect(outcome.byState.EXPIRED ?? 0).toBeGreaterThan(0);
  expect(result.webhooks.forgedSent).toBeGreaterThan(0);
  expect(progress.some((line) => line.includes('fault kill-node: kill -9'))).toBe(true);
}, 150_000);
