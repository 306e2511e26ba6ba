/**
 * Goal: metricSample reads one sample of Prometheus text by name and exact label set, as the bench
 * and the tests use it on /metrics. Method: a fixed exposition text, as prom-client writes it.
 */
import { describe, expect, it } from 'vitest';
import { metricSample } from '../../src/observability/prometheus-text.js';

const TEXT = [
  '# HELP settle_x_seconds A histogram.',
  '# TYPE settle_x_seconds histogram',
  'settle_x_seconds_bucket{le="0.05",state="SUCCEEDED"} 3',
  'settle_x_seconds_bucket{le="+Inf",state="SUCCEEDED"} 5',
  'settle_x_seconds_sum{state="SUCCEEDED"} 0.25',
  'settle_x_seconds_count{state="SUCCEEDED"} 5',
  'settle_outbox_pending 0',
  'settle_payments{state="EXECUTING"} 12',
  '',
].join('\n');

describe('metricSample', () => {
  it('finds a sample by name and its exact labels, in any order', () => {
    expect(metricSample(TEXT, 'settle_x_seconds_bucket', { state: 'SUCCEEDED', le: '0.05' })).toBe(
      3,
    );
    expect(metricSample(TEXT, 'settle_x_seconds_bucket', { le: '+Inf', state: 'SUCCEEDED' })).toBe(
      5,
    );
    expect(metricSample(TEXT, 'settle_x_seconds_sum', { state: 'SUCCEEDED' })).toBe(0.25);
    expect(metricSample(TEXT, 'settle_outbox_pending')).toBe(0);
  });

  it('answers undefined for another name, a missing label, an extra one or another value', () => {
    expect(metricSample(TEXT, 'settle_x_seconds')).toBeUndefined();
    expect(metricSample(TEXT, 'settle_x_seconds_count')).toBeUndefined();
    expect(metricSample(TEXT, 'settle_payments', { state: 'FAILED' })).toBeUndefined();
    expect(metricSample(TEXT, 'settle_outbox_pending', { state: 'EXECUTING' })).toBeUndefined();
    expect(metricSample('', 'settle_outbox_pending')).toBeUndefined();
  });
});
