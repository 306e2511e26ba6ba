/**
 * Reading Prometheus text exposition (what `GET /metrics` serves): the bench compares Settle's own
 * histograms with what its load generator measured, and the tests read gauges and counters.
 */

/**
 * The value of one sample, found by its metric name and exact label set (every label, no more);
 * undefined when absent. Label values with escaped quotes are not supported: Settle's have none.
 */
export function metricSample(
  text: string,
  name: string,
  labels: Readonly<Record<string, string>> = {},
): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const found: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) {
      found[pair[1] ?? ''] = pair[2] ?? '';
    }
    if (
      Object.keys(found).length === Object.keys(labels).length &&
      Object.entries(labels).every(([key, value]) => found[key] === value)
    ) {
      return Number(match[3]);
    }
  }
  return undefined;
}
