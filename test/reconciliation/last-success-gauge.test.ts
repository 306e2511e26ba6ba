/**
 * Goal: settle_reconciliation_last_success_timestamp_seconds says when the latest settlement day
 * was first reconciled, so SettleReconciliationLate (time() minus it over 26 h) fires while the
 * nights after that day keep failing, even if someone loads another file for that day meanwhile:
 * that later run reconciles no newer day. The last run's other gauges still read its newest run.
 * Method: recon_run rows written directly into a migrated test database on the real MariaDB, a
 * real NATS connection, operationsSnapshot behind a node's metrics, its exposition parsed.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { newId } from '../../src/domain/ids.js';
import { names as namesOf } from '../../src/messaging/subjects.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { operationsSnapshot, PaymentCounts } from '../../src/observability/operations.js';
import {
  metricSample,
  openTestDatabase,
  uniqueSuffix,
  type TestDatabase,
} from '../support/harness.js';

let database: TestDatabase;
let nc: NatsConnection;

beforeAll(async () => {
  database = await openTestDatabase('settle_t_last_success', { poolSize: 2 });
  nc = await connect({ servers: inject('natsUrl') });
});
afterAll(async () => {
  await nc?.close();
  await database?.close();
});

async function run(
  day: string,
  state: 'SUCCEEDED' | 'FAILED',
  completedAt: Date,
  timing: number,
): Promise<void> {
  const id = newId('reconciliationRun');
  await sql`
    INSERT INTO recon_run (id, settlement_date, file_name, file_sha256, state, timing_count,
      lease_until, created_at, updated_at, completed_at)
    VALUES (${id}, ${day}, ${`settlement-${day}.csv`}, ${id.padEnd(64, '0')}, ${state},
      ${timing}, ${completedAt}, ${completedAt}, ${completedAt},
      ${state === 'SUCCEEDED' ? completedAt : null})`.execute(database.db);
}

describe('settle_reconciliation_last_success_timestamp_seconds', () => {
  it('keeps the latest day’s first success when another file for that day succeeds later', async () => {
    const firstAt = new Date(Date.UTC(2026, 10, 20, 2, 0, 0));
    const againAt = new Date(Date.UTC(2026, 10, 22, 9, 30, 0));
    // The 19th reconciled on the night after it; the nights of the 20th and 21st failed; on the
    // 22nd an operator loads a corrected file for the 19th, which succeeds.
    await run('2026-11-19', 'SUCCEEDED', firstAt, 2);
    await run('2026-11-20', 'FAILED', new Date(Date.UTC(2026, 10, 21, 2, 0, 0)), 0);
    await run('2026-11-21', 'FAILED', new Date(Date.UTC(2026, 10, 22, 2, 0, 0)), 0);
    await run('2026-11-19', 'SUCCEEDED', againAt, 1);

    const metrics = createMetrics();
    metrics.setSnapshotSource(async () =>
      operationsSnapshot({
        db: database.db,
        jsm: await jetstreamManager(nc),
        // No such stream: the JetStream probes fail, the reconciliation one is what is read.
        names: namesOf(`lastsuccess${uniqueSuffix()}`, 1),
        consumerProgress: () => ({
          deliveredStreamSeq: undefined,
          seenAtMs: undefined,
          held: 0,
          heldRedelivered: 0,
          pullOpen: false,
        }),
        registry: { size: 0, passivated: 0, mailboxDepth: () => 0 },
        psp: {},
        deadLetters: { counts: () => Promise.resolve({ open: 0, total: 0 }) },
        probeTimeoutMs: 2_000,
        paymentCounts: new PaymentCounts(database.db, 60_000),
      }),
    );
    const text = (await metrics.render()).body;
    const day = { settlement_day: '2026-11-19' };
    expect(metricSample(text, 'settle_probe_up', { probe: 'reconciliation' })).toBe(1);
    // The day's first success: SettleReconciliationLate counts from it, not from the re-run.
    expect(metricSample(text, 'settle_reconciliation_last_success_timestamp_seconds', day)).toBe(
      firstAt.getTime() / 1000,
    );
    // What the day's newest run found is still what the mismatch gauges say.
    expect(
      metricSample(text, 'settle_reconciliation_last_run_mismatches', { ...day, class: 'TIMING' }),
    ).toBe(1);
  });
});
