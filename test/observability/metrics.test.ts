/**
 * Goal: /metrics exposes what an operator alerts on, with the usual names: gRPC calls by method and
 * code with latency histograms, payments by state, PSP call latency and breaker state, retries and
 * dead letters, outbox lag, JetStream consumer pending and command stream size, actors and mailbox
 * depth, how long orders take to a final state, and group-commit batch sizes and durations; each
 * node has its own registry; every gRPC call writes one log line with method, code, ms and request
 * id, keyed by payment id. Method: a real stack with a capturing logger and short retry backoff;
 * the PSP mock fails registrations on purpose to produce retries and a dead letter; /metrics is
 * scraped over HTTP and parsed line by line.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { HOUSEKEEPING_TASK } from '../../src/jobs/housekeeping.js';
import { DEAD_LETTER_REASON } from '../../src/messaging/command-consumer.js';
import { names as namesOf } from '../../src/messaging/subjects.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import type { OperationsSnapshot } from '../../src/observability/operations.js';
import {
  call,
  callError,
  CARD,
  metricSample,
  payOnHostedPage,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { operationsSnapshot } from '../support/operations-snapshot.js';

let stack: Stack;
const lines: string[] = [];

beforeAll(async () => {
  stack = await startStack({
    env: { RETRY_BACKOFF_MS: '100,100', CREATE_WAIT_MS: '2000' },
    overrides: {
      logger: createLogger(
        { level: 'info', name: 'settle' },
        { write: (line) => lines.push(line) },
      ),
    },
  });
});
afterAll(async () => stack?.stop());

const scrape = () => scrapeMetrics(stack.settleHttp);

const PAYMENTS = 'settle.v1.PaymentService';

describe('metrics and request logs', () => {
  let paymentId = '';

  it('creates every dead-letter reason and housekeeping task at 0, so increase() sees the first', async () => {
    const text = await scrape();
    for (const reason of Object.values(DEAD_LETTER_REASON)) {
      expect(metricSample(text, 'settle_dead_letters_total', { reason }), reason).toBe(0);
    }
    for (const task of Object.values(HOUSEKEEPING_TASK)) {
      expect(metricSample(text, 'settle_housekeeping_failures_total', { task }), task).toBe(0);
      expect(metricSample(text, 'settle_rows_purged_total', { task }), task).toBe(0);
    }
  });

  it('exports no TLS handshake-failure, reload or file-check series on plaintext ports', async () => {
    // Series at 0 would read as "no failed handshakes" (or reloads) on a port that has none.
    const text = await scrape();
    const samples = text
      .split('\n')
      .filter((line) => /^settle_tls_(handshake_failures|reloads|file_checks)_total\b/.test(line));
    expect(samples).toEqual([]);
  });

  it('counts gRPC calls by method and code, with a latency histogram', async () => {
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-metrics',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-metrics', amountMinor: 1234n }],
    });
    paymentId = created.payment?.paymentId ?? '';
    const bad = await callError(stack.payments.createPayment.bind(stack.payments), {
      requestId: 'not-a-uuid',
      buyerId: 'buyer-metrics',
      currencyCode: 'USD',
      orders: [],
    });
    expect(bad.code).toBe(grpc.status.INVALID_ARGUMENT);
    const missing = await callError(stack.payments.getPayment.bind(stack.payments), {
      paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
    });
    expect(missing.code).toBe(grpc.status.NOT_FOUND);

    const text = await scrape();
    const labels = (method: string, code: string) => ({
      grpc_type: 'unary',
      grpc_service: PAYMENTS,
      grpc_method: method,
      grpc_code: code,
    });
    expect(metricSample(text, 'grpc_server_handled_total', labels('CreatePayment', 'OK'))).toBe(1);
    expect(
      metricSample(text, 'grpc_server_handled_total', labels('CreatePayment', 'INVALID_ARGUMENT')),
    ).toBe(1);
    expect(metricSample(text, 'grpc_server_handled_total', labels('GetPayment', 'NOT_FOUND'))).toBe(
      1,
    );
    const histogram = { grpc_type: 'unary', grpc_service: PAYMENTS, grpc_method: 'CreatePayment' };
    expect(metricSample(text, 'grpc_server_handling_seconds_count', histogram)).toBe(2);
    expect(
      metricSample(text, 'grpc_server_handling_seconds_bucket', { ...histogram, le: '+Inf' }),
    ).toBe(2);
    expect(metricSample(text, 'grpc_server_handling_seconds_sum', histogram)).toBeGreaterThan(0);
  });

  it('writes one log line per gRPC call with method, code, ms, request id and payment id', () => {
    const calls = lines
      .map((line) => JSON.parse(line))
      .filter((entry) => entry.grpcMethod !== undefined);
    const created = calls.filter((entry) => entry.grpcMethod === 'CreatePayment');
    expect(created).toHaveLength(2);
    const ok = created.find((entry) => entry.grpcCode === 'OK');
    expect(ok).toMatchObject({ grpcService: PAYMENTS, paymentId, level: 'info' });
    expect(typeof ok.ms).toBe('number');
    expect(ok.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(created.find((entry) => entry.grpcCode === 'INVALID_ARGUMENT')).toBeDefined();
    const notFound = calls.find((entry) => entry.grpcMethod === 'GetPayment');
    expect(notFound).toMatchObject({
      grpcCode: 'NOT_FOUND',
      paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
    });
    // The same payment id keys the transition lines, so one grep finds the whole story.
    expect(lines.some((line) => line.includes(paymentId) && line.includes('ExecuteOrder'))).toBe(
      true,
    );
  });

  it('exports payments by state, transitions, PSP latency, breaker, outbox, consumer, actors and reconciliation', async () => {
    const text = await waitFor(async () => {
      const scraped = await scrape();
      return metricSample(scraped, 'settle_payments', { state: 'EXECUTING' }) === 1
        ? scraped
        : undefined;
    });
    expect(
      metricSample(text, 'settle_payment_order_transitions_total', {
        from: 'NOT_STARTED',
        to: 'EXECUTING',
        event: 'ExecuteOrder',
      }),
    ).toBe(1);
    expect(
      metricSample(text, 'settle_psp_call_seconds_count', { op: 'register', outcome: 'ok' }),
    ).toBe(1);
    expect(metricSample(text, 'settle_psp_breaker_state', { state: 'CLOSED' })).toBe(1);
    expect(metricSample(text, 'settle_psp_breaker_state', { state: 'OPEN' })).toBe(0);
    expect(metricSample(text, 'settle_outbox_pending')).toBe(0);
    expect(metricSample(text, 'settle_outbox_oldest_age_seconds')).toBe(0);
    expect(metricSample(text, 'settle_jetstream_consumer_pending')).toBe(0);
    expect(metricSample(text, 'settle_jetstream_consumer_ack_pending')).toBe(0);
    expect(metricSample(text, 'settle_jetstream_consumer_redelivered')).toBe(0);
    expect(metricSample(text, 'settle_actors')).toBe(stack.settle.registry.size);
    expect(metricSample(text, 'settle_actor_mailbox_depth')).toBe(0);
    expect(metricSample(text, 'settle_probe_up', { probe: 'jetstream_consumer' })).toBe(1);
    expect(metricSample(text, 'settle_ledger_sums_unsummed_entries')).toBeGreaterThanOrEqual(0);
    expect(metricSample(text, 'settle_ledger_sums_lag_seconds')).toBeLessThan(60);
    expect(metricSample(text, 'settle_probe_up', { probe: 'ledger_sums' })).toBe(1);
    expect(metricSample(text, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    // Before the first reconciliation: nothing unsettled, and no sample of the last run's gauges.
    expect(metricSample(text, 'settle_reconciliation_unsettled_orders')).toBe(0);
    for (const name of [
      'settle_reconciliation_last_success_timestamp_seconds',
      'settle_reconciliation_last_settlement_day_timestamp_seconds',
      'settle_reconciliation_last_run_internal_check_failures',
      'settle_reconciliation_last_run_mismatches',
    ]) {
      expect(text.split('\n').filter((line) => line.startsWith(name))).toEqual([]);
    }
    expect(metricSample(text, 'settle_probe_up', { probe: 'reconciliation' })).toBe(1);
  });

  it('counts retries and dead letters when the PSP keeps failing', async () => {
    stack.psp.setBehavior({ failNextRegistrations: 3 });
    await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-metrics',
      currencyCode: 'USD',
      orders: [{ sellerId: 'seller-metrics-dlq', amountMinor: 99n }],
    });
    const text = await waitFor(
      async () => {
        const scraped = await scrape();
        return metricSample(scraped, 'settle_dead_letters_open') === 1 ? scraped : undefined;
      },
      { what: 'a dead letter in /metrics' },
    );
    expect(metricSample(text, 'settle_command_retries_total')).toBe(2);
    expect(metricSample(text, 'settle_dead_letters_total', { reason: 'RETRIES_EXHAUSTED' })).toBe(
      1,
    );
    expect(metricSample(text, 'settle_dead_letters_stored')).toBe(1);
    expect(
      metricSample(text, 'settle_psp_call_seconds_count', { op: 'register', outcome: 'error' }),
    ).toBe(3);
  });

  it('exports the command stream’s bytes and max_bytes, as JetStream reports them', async () => {
    const nc = await connect({ servers: inject('natsUrl') });
    try {
      const jsm = await jetstreamManager(nc);
      const stream = namesOf(stack.config.SETTLE_NAMESPACE, stack.config.CMD_PARTITIONS);
      // The dead-lettered command above went through the stream (its retries were naks), and no
      // command is in flight now: the size the node reports is the one JetStream has.
      const info = await jsm.streams.info(stream.commandStream);
      expect(info.state.bytes).toBeGreaterThan(0);
      const text = await waitFor(async () => {
        const scraped = await scrape();
        return metricSample(scraped, 'settle_command_stream_bytes') === info.state.bytes
          ? scraped
          : undefined;
      });
      expect(metricSample(text, 'settle_command_stream_max_bytes')).toBe(1024 * 1024 * 1024);
      expect(metricSample(text, 'settle_probe_up', { probe: 'command_stream' })).toBe(1);
    } finally {
      await nc.close();
    }
  });

  it('observes create→final time per final state, webhooks, and group-commit batches by kind', async () => {
    const before = await scrape();
    expect(
      metricSample(before, 'settle_payment_order_completion_seconds_count', { state: 'SUCCEEDED' }),
    ).toBeUndefined();
    const payment = await call(stack.payments.getPayment.bind(stack.payments), { paymentId });
    const order = payment.payment?.orders[0];
    const createdAt = order?.createTime?.getTime() ?? Number.NaN;
    expect(Number.isNaN(createdAt)).toBe(false);
    expect((await payOnHostedPage(order?.checkoutUrl ?? '', CARD.success)).status).toBe(200);
    const text = await waitFor(
      async () => {
        const scraped = await scrape();
        const done = metricSample(scraped, 'settle_payment_order_completion_seconds_count', {
          state: 'SUCCEEDED',
        });
        return done === 1 ? scraped : undefined;
      },
      { what: 'the paid order in settle_payment_order_completion_seconds' },
    );
    const seenAfterS = (Date.now() - createdAt) / 1000;
    const seconds = metricSample(text, 'settle_payment_order_completion_seconds_sum', {
      state: 'SUCCEEDED',
    });
    // The order was created before the earlier tests ran, and paid just now.
    expect(seconds).toBeGreaterThan(0.1);
    expect(seconds).toBeLessThanOrEqual(seenAfterS + 0.05);
    expect(
      metricSample(text, 'settle_payment_order_completion_seconds_bucket', {
        state: 'SUCCEEDED',
        le: '+Inf',
      }),
    ).toBe(1);

    // The PSP's webhook for it was answered once, after its commit (the fast way, at once or
    // after its wait on a loaded machine, or queued).
    const firstWays = ['applied', 'applied_late', 'queued'];
    const webhooks = (way: string) =>
      metricSample(text, 'settle_webhook_seconds_count', { way }) ?? 0;
    expect(firstWays.reduce((sum, way) => sum + webhooks(way), 0)).toBe(1);
    expect(webhooks('duplicate')).toBe(0);
    const webhookSeconds = firstWays.reduce(
      (sum, way) => sum + (metricSample(text, 'settle_webhook_seconds_sum', { way }) ?? 0),
      0,
    );
    expect(webhookSeconds).toBeGreaterThan(0);
    expect(webhookSeconds).toBeLessThan(seconds ?? 0);
    // And logged once, with the request id of the exchange, like every other request, and the
    // way the metric counted.
    const accepted = lines
      .map(
        (line) =>
          JSON.parse(line) as { msg?: string; orderId?: string; requestId?: unknown; way?: string },
      )
      .filter((line) => line.msg === 'webhook accepted' && line.orderId === order?.orderId);
    expect(accepted).toHaveLength(1);
    expect(accepted[0]?.requestId).toEqual(expect.any(String));
    const way = accepted[0]?.way ?? '';
    expect(firstWays).toContain(way);
    expect(webhooks(way)).toBe(1);

    // Two payments were created alone; the paid order's transitions went through the batcher.
    expect(metricSample(text, 'settle_group_commit_batch_units_count', { kind: 'creations' })).toBe(
      2,
    );
    expect(
      metricSample(text, 'settle_group_commit_batch_units_bucket', { kind: 'creations', le: '1' }),
    ).toBe(2);
    expect(metricSample(text, 'settle_group_commit_batch_units_sum', { kind: 'creations' })).toBe(
      2,
    );
    expect(
      metricSample(text, 'settle_group_commit_seconds_count', { kind: 'creations', outcome: 'ok' }),
    ).toBe(2);
    const transitionBatches = metricSample(text, 'settle_group_commit_seconds_count', {
      kind: 'transitions',
      outcome: 'ok',
    });
    // At least the token and the success of the paid order.
    expect(transitionBatches).toBeGreaterThanOrEqual(2);
    expect(
      metricSample(text, 'settle_group_commit_seconds_sum', { kind: 'transitions', outcome: 'ok' }),
    ).toBeGreaterThan(0);
  });

  it('keeps an unlabelled gauge at its last value while its probe fails, and says so', async () => {
    const metrics = createMetrics();
    const snapshotWith = (ok: boolean) =>
      ({
        takenAt: new Date(),
        breaker: undefined,
        consumer: ok
          ? { ok, value: { pending: 5, ackPending: 1, redelivered: 0 } }
          : { ok, error: 'NATS is down' },
        commandStream: ok
          ? {
              ok,
              value: {
                messages: 3,
                bytes: 1_234,
                bytesMax: 4_096,
                firstSeq: 1,
                lastSeq: 3,
                createdAtMs: 0,
              },
            }
          : { ok, error: 'NATS is down' },
        deadLetters: ok ? { ok, value: { open: 2, total: 3 } } : { ok, error: 'MySQL is down' },
        outbox: ok
          ? { ok, value: { pending: 7, oldestAgeMs: 1_500 } }
          : { ok, error: 'MySQL is down' },
        ledgerSums: ok
          ? { ok, value: { unsummed: 9, lagMs: 2_500 } }
          : { ok, error: 'MySQL is down' },
        actors: { live: 0, mailboxDepth: 0, passivated: 0 },
        payments: ok ? { ok, value: [{ state: 'EXECUTING', count: 4 }] } : { ok, error: 'down' },
        reconciliation: { ok: false, error: 'not asked' },
      }) as unknown as OperationsSnapshot;
    const read = async () => (await metrics.render()).body;
    metrics.setSnapshotSource(() => Promise.resolve(snapshotWith(true)));
    const before = await read();
    metrics.setSnapshotSource(() => Promise.resolve(snapshotWith(false)));
    const during = await read();
    for (const [name, value] of [
      ['settle_dead_letters_open', 2],
      ['settle_dead_letters_stored', 3],
      ['settle_outbox_pending', 7],
      ['settle_jetstream_consumer_pending', 5],
      ['settle_command_stream_bytes', 1_234],
      ['settle_ledger_sums_unsummed_entries', 9],
      ['settle_ledger_sums_lag_seconds', 2.5],
    ] as const) {
      expect(metricSample(before, name), name).toBe(value);
      expect(metricSample(during, name), name).toBe(value);
    }
    expect(metricSample(during, 'settle_probe_up', { probe: 'dead_letters' })).toBe(0);
    expect(metricSample(during, 'settle_probe_up', { probe: 'jetstream_consumer' })).toBe(0);
    expect(metricSample(during, 'settle_probe_up', { probe: 'command_stream' })).toBe(0);
    expect(metricSample(during, 'settle_probe_up', { probe: 'ledger_sums' })).toBe(0);
    // A labelled series whose probe failed has no sample rather than a stale one.
    expect(metricSample(before, 'settle_payments', { state: 'EXECUTING' })).toBe(4);
    expect(metricSample(during, 'settle_payments', { state: 'EXECUTING' })).toBeUndefined();
  });

  it('reports 0 for a payment state no payment is in, not a missing series', async () => {
    const metrics = createMetrics();
    const snapshotWith = (payments: ReadonlyArray<{ state: string; count: number }>) =>
      operationsSnapshot({ payments: { ok: true, value: payments } });
    const read = async () => (await metrics.render()).body;
    metrics.setSnapshotSource(() =>
      Promise.resolve(snapshotWith([{ state: 'EXECUTING', count: 4 }])),
    );
    expect(metricSample(await read(), 'settle_payments', { state: 'EXECUTING' })).toBe(4);
    // The last payment in flight finished: the series drops to 0, so a graph or an alert on it
    // reads "none", not "no data".
    metrics.setSnapshotSource(() =>
      Promise.resolve(snapshotWith([{ state: 'SUCCEEDED', count: 4 }])),
    );
    const after = await read();
    expect(metricSample(after, 'settle_payments', { state: 'EXECUTING' })).toBe(0);
    expect(metricSample(after, 'settle_payments', { state: 'NOT_STARTED' })).toBe(0);
    expect(metricSample(after, 'settle_payments', { state: 'SUCCEEDED' })).toBe(4);
  });

  it('counts a call the circuit breaker refused as breaker_open, not as a PSP error', async () => {
    const metrics = createMetrics();
    metrics.pspCall({ op: 'register', ok: false, ms: 0, notSent: true });
    metrics.pspCall({ op: 'register', ok: false, ms: 800 });
    const text = (await metrics.render()).body;
    const count = (outcome: string) =>
      metricSample(text, 'settle_psp_call_seconds_count', { op: 'register', outcome });
    expect(count('breaker_open')).toBe(1);
    expect(count('error')).toBe(1);
  });

  it('keeps each node’s metrics in its own registry', () => {
    const a = createMetrics();
    const b = createMetrics();
    a.retry();
    a.grpcCall({ service: PAYMENTS, method: 'GetPayment', type: 'unary', code: 'OK', ms: 3 });
    expect(a.registry.getSingleMetric('settle_command_retries_total')).not.toBe(
      b.registry.getSingleMetric('settle_command_retries_total'),
    );
    return Promise.all([a.render(), b.render()]).then(([textA, textB]) => {
      expect(metricSample(textA.body, 'settle_command_retries_total')).toBe(1);
      expect(metricSample(textB.body, 'settle_command_retries_total')).toBe(0);
      expect(
        metricSample(textB.body, 'grpc_server_handled_total', {
          grpc_type: 'unary',
          grpc_service: PAYMENTS,
          grpc_method: 'GetPayment',
          grpc_code: 'OK',
        }),
      ).toBeUndefined();
    });
  });
});
