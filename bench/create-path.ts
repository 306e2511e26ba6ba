/**
 * Where a CreatePayment's time goes, by share of calls within a bound, from the histograms a
 * node exports for operators (read from /metrics before and after a phase) beside the load
 * generator's own timing of the call. The first stage of an order (created → PspRegistered) is
 * this call's commit followed by the PSP's RegisterPayment; the split shows whether a tail is in
 * Settle's handling of the call (its creation commit or the rest of the handler), in the PSP call,
 * or outside Settle's handler altogether (the client, the transport, and the wait for Settle's
 * event loop to pick the call up, which no server-side timer sees). Pure; no I/O.
 */

import { metricSamples } from '../src/observability/prometheus-text.js';

/** Upper bounds (ms) read from each histogram: bucket bounds all three of them have. */
export const CREATE_PATH_BOUNDS_MS = [5, 10, 25, 50, 100, 250] as const;

/** Observations within each of CREATE_PATH_BOUNDS_MS (same order), and in all. */
export type Within = Readonly<{ within: readonly number[]; total: number }>;

/** The histograms read, each as counts within the bounds. */
export type CreatePath = Readonly<{
  /** grpc_server_handling_seconds of PaymentService/CreatePayment: arrival → status sent. */
  handled: Within;
  /** settle_group_commit_seconds{kind="creations",outcome="ok"}: a batch of creations' commit. */
  creationCommits: Within;
  /** settle_psp_call_seconds{op="register"}: the PSP's RegisterPayment, answered or failed. */
  pspRegister: Within;
}>;

type Series = Readonly<{ name: string; labels: Readonly<Record<string, string>> }>;

/** Each measure: the series whose buckets it sums. */
const HISTOGRAMS: Readonly<Record<keyof CreatePath, readonly Series[]>> = {
  handled: [
    {
      name: 'grpc_server_handling_seconds',
      labels: { grpc_service: 'settle.v1.PaymentService', grpc_method: 'CreatePayment' },
    },
  ],
  creationCommits: [
    { name: 'settle_group_commit_seconds', labels: { kind: 'creations', outcome: 'ok' } },
  ],
  // Calls the breaker refused (outcome breaker_open) never reached the PSP: left out.
  pspRegister: [
    { name: 'settle_psp_call_seconds', labels: { op: 'register', outcome: 'ok' } },
    { name: 'settle_psp_call_seconds', labels: { op: 'register', outcome: 'error' } },
  ],
};

/**
 * The cumulative bucket counts of histogram `name` at each bound (and `+Inf`), summed over
 * every series whose labels include `labels` (other labels may take any value).
 */
export function histogramWithin(
  text: string,
  name: string,
  labels: Readonly<Record<string, string>>,
  boundsMs: readonly number[],
): Within {
  const les = boundsMs.map((ms) => String(ms / 1000));
  const within = boundsMs.map(() => 0);
  let total = 0;
  for (const sample of metricSamples(text, `${name}_bucket`)) {
    if (!Object.entries(labels).every(([key, value]) => sample.labels[key] === value)) continue;
    if (!Number.isFinite(sample.value)) continue;
    if (sample.labels['le'] === '+Inf') total += sample.value;
    const i = les.indexOf(sample.labels['le'] ?? '');
    if (i >= 0) within[i] = (within[i] ?? 0) + sample.value;
  }
  return { within, total };
}

export function createPathFrom(text: string): CreatePath {
  const read = (key: keyof CreatePath) =>
    HISTOGRAMS[key]
      .map((series) => histogramWithin(text, series.name, series.labels, CREATE_PATH_BOUNDS_MS))
      .reduce(plus);
  return {
    handled: read('handled'),
    creationCommits: read('creationCommits'),
    pspRegister: read('pspRegister'),
  };
}

function plus(a: Within, b: Within): Within {
  return { within: a.within.map((n, i) => n + (b.within[i] ?? 0)), total: a.total + b.total };
}

function minus(after: Within, before: Within): Within {
  return {
    within: after.within.map((n, i) => n - (before.within[i] ?? 0)),
    total: after.total - before.total,
  };
}

/** What happened between two readings of the same node. */
export function createPathBetween(before: CreatePath, after: CreatePath): CreatePath {
  return {
    handled: minus(after.handled, before.handled),
    creationCommits: minus(after.creationCommits, before.creationCommits),
    pspRegister: minus(after.pspRegister, before.pspRegister),
  };
}

/** The load generator's CreatePayment calls (ms each) as counts within the bounds. */
export function withinOf(samplesMs: readonly number[]): Within {
  return {
    within: CREATE_PATH_BOUNDS_MS.map((ms) => samplesMs.filter((t) => t <= ms).length),
    total: samplesMs.length,
  };
}

/** "97.3 %": one decimal, since a p99 is what the goals ask about; "–" when nothing was seen. */
export function share(within: Within, i: number): string {
  return within.total === 0
    ? '–'
    : `${((100 * (within.within[i] ?? 0)) / within.total).toFixed(1)} %`;
}

/** Table rows (a phase's four measures), to go under CREATE_PATH_BOUNDS_MS columns. */
export function createPathRows(
  phase: string,
  client: Within,
  path: CreatePath | undefined,
): string[][] {
  const row = (what: string, within: Within | undefined) => [
    phase,
    what,
    ...CREATE_PATH_BOUNDS_MS.map((_, i) => (within === undefined ? '–' : share(within, i))),
    within === undefined ? '–' : String(within.total),
  ];
  return [
    row('CreatePayment, load generator (call → answer)', client),
    row('CreatePayment, Settle (arrival → status sent)', path?.handled),
    row('creations commit (a batch)', path?.creationCommits),
    row('PSP RegisterPayment call', path?.pspRegister),
  ];
}
