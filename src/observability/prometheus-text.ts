/**
 * Reading Prometheus text exposition (what `GET /metrics` serves): the bench compares Settle's own
 * histograms with what its load generator measured, and the tests read gauges and counters.
 */

/** One sample line: its metric name, labels and value. */
export type MetricSampleLine = Readonly<{
  name: string;
  labels: Readonly<Record<string, string>>;
  value: number;
}>;

/**
 * Every sample of metric `name` (comments and other metrics skipped). Label values with escaped
 * quotes are not supported: Settle's have none.
 */
export function* metricSamples(text: string, name: string): Generator<MetricSampleLine> {
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) {
      labels[pair[1] ?? ''] = pair[2] ?? '';
    }
    yield { name, labels, value: Number(match[3]) };
  }
}

/**
 * The value of one sample, found by its metric name and exact label set (every label, no more);
 * undefined when absent.
 */
export function metricSample(
  text: string,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number | undefined {
  for (const sample of metricSamples(text, name)) {
    if (
      Object.keys(sample.labels).length === Object.keys(labels).length &&
      Object.entries(labels).every(([key, value]) => sample.labels[key] === value)
    ) {
      return sample.value;
    }
  }
  return undefined;
}
