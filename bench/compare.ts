/**
 * `npm run bench:compare -- a.json b.json [more.json …]`: the results `npm run bench -- --json`
 * wrote, side by side, one column per run, for A/B comparisons. With exactly two runs a last
 * column gives the change from the first to the second. A value a run does not have (an older
 * bench, a skipped phase) shows as –. Reads only the files it is given.
 */
import { readFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { markdownTable } from './table.js';

/** The fields of a bench JSON this reads; every one may be missing. */
type Phase = {
  ordersPerS?: number;
  orders?: number;
  createMs?: { p50?: number; p95?: number; p99?: number };
  terminalMs?: { p50?: number; p95?: number; p99?: number };
  within?: { within?: number[]; total?: number };
  usage?: {
    cpuMs?: Record<string, number>;
    machineBusyMs?: number;
    wallMs?: number;
    syscalls?: Record<string, { reads?: number; writes?: number }>;
    settleCompletions?: { within?: number[]; total?: number };
  };
};

export type BenchResult = {
  startedAt?: string;
  /** How the run reached MySQL (benches before it was recorded went over TCP). */
  options?: { mysqlWay?: string; mysqlBaseUrl?: string };
  calibration?: { hotUs?: number; afterIdleUs?: number };
  ceiling?: { spread?: { ordersPerS?: number }; hot?: { ordersPerS?: number } };
  spread?: Phase;
  half?: Phase;
  hot?: Phase;
  memory?: { rssAfterIdleBytes?: number };
  /** The performance goals' verdicts (benches before they were recorded have none). */
  goals?: ReadonlyArray<{ verdict?: string }>;
  ok?: boolean;
};

/** Which way is better for a row: the Δ column marks a change for the worse with "!". */
type Direction = 'higher' | 'lower' | 'none';

type Row = Readonly<{
  label: string;
  value: (run: BenchResult) => number | undefined;
  digits: number;
  better: Direction;
}>;

const PROCESSES = ['settle', 'psp-mock', 'mariadbd', 'nats-server', 'bench'] as const;
/** The bound of settle_payment_order_completion_seconds the latency goal is about (50 ms). */
const WITHIN_50_MS = 1;

function perOrder(phase: Phase | undefined, name: string): number | undefined {
  const ms = phase?.usage?.cpuMs?.[name];
  const orders = phase?.orders;
  return ms === undefined || orders === undefined || orders === 0 ? undefined : ms / orders;
}

function share(counts: { within?: number[]; total?: number } | undefined): number | undefined {
  const within = counts?.within?.[WITHIN_50_MS];
  const total = counts?.total;
  return within === undefined || total === undefined || total === 0
    ? undefined
    : (100 * within) / total;
}

function ratio(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b === 0 ? undefined : (100 * a) / b;
}

function phaseRows(key: 'spread' | 'half' | 'hot', name: string): Row[] {
  const phase = (run: BenchResult) => run[key];
  return [
    { label: `${name}: orders/s`, value: (r) => phase(r)?.ordersPerS, digits: 0, better: 'higher' },
    ...(['p50', 'p95', 'p99'] as const).map((q): Row => ({
      label: `${name}: create→terminal ${q} ms`,
      value: (r) => phase(r)?.terminalMs?.[q],
      digits: 0,
      better: 'lower',
    })),
    {
      label: `${name}: CreatePayment p99 ms`,
      value: (r) => phase(r)?.createMs?.p99,
      digits: 0,
      better: 'lower',
    },
    {
      label: `${name}: % within 50 ms (load generator)`,
      value: (r) => share(phase(r)?.within),
      digits: 1,
      better: 'higher',
    },
    {
      label: `${name}: % within 50 ms (Settle's histogram)`,
      value: (r) => share(phase(r)?.usage?.settleCompletions),
      digits: 1,
      better: 'higher',
    },
    ...PROCESSES.map((process): Row => ({
      label: `${name}: CPU ms per order, ${process}`,
      value: (r) => perOrder(phase(r), process),
      digits: 2,
      better: 'lower',
    })),
    ...(['reads', 'writes'] as const).map((kind): Row => ({
      label: `${name}: Settle's ${kind.slice(0, -1)} system calls per order`,
      value: (r) => {
        const count = phase(r)?.usage?.syscalls?.['settle']?.[kind];
        const orders = phase(r)?.orders;
        return count === undefined || !orders ? undefined : count / orders;
      },
      digits: 2,
      better: 'lower',
    })),
    {
      label: `${name}: cores busy`,
      value: (r) => {
        const usage = phase(r)?.usage;
        return usage?.machineBusyMs === undefined || !usage.wallMs
          ? undefined
          : usage.machineBusyMs / usage.wallMs;
      },
      digits: 2,
      better: 'none',
    },
  ];
}

const ROWS: readonly Row[] = [
  {
    label: 'work unit hot µs (machine speed)',
    value: (r) => r.calibration?.hotUs,
    digits: 0,
    better: 'none',
  },
  {
    label: 'work unit after 20 ms asleep µs',
    value: (r) => r.calibration?.afterIdleUs,
    digits: 0,
    better: 'none',
  },
  {
    label: 'ceiling spread orders/s',
    value: (r) => r.ceiling?.spread?.ordersPerS,
    digits: 0,
    better: 'none',
  },
  {
    label: 'ceiling hot seller orders/s',
    value: (r) => r.ceiling?.hot?.ordersPerS,
    digits: 0,
    better: 'none',
  },
  ...phaseRows('spread', 'spread'),
  {
    label: 'spread: % of the ceiling',
    value: (r) => ratio(r.spread?.ordersPerS, r.ceiling?.spread?.ordersPerS),
    digits: 0,
    better: 'higher',
  },
  ...phaseRows('half', 'open loop'),
  ...phaseRows('hot', 'hot seller'),
  {
    label: 'hot seller: % of spread',
    value: (r) => ratio(r.hot?.ordersPerS, r.spread?.ordersPerS),
    digits: 0,
    better: 'higher',
  },
  {
    label: 'RSS after passivation MB',
    value: (r) =>
      r.memory?.rssAfterIdleBytes === undefined ? undefined : r.memory.rssAfterIdleBytes / 2 ** 20,
    digits: 0,
    better: 'lower',
  },
  {
    label: 'performance goals met (of 5)',
    value: (r) => r.goals?.filter((goal) => goal.verdict === 'met').length,
    digits: 0,
    better: 'higher',
  },
  {
    label: 'invariants and phases ok (1 = yes)',
    value: (r) => (r.ok === undefined ? undefined : r.ok ? 1 : 0),
    digits: 0,
    better: 'higher',
  },
];

/**
 * The change from the first value to the second, as the table shows them (rounded to the row's
 * digits): two values printed alike show no change, whatever the digits the table drops.
 */
function change(
  shown: ReadonlyArray<number | undefined>,
  digits: number,
  better: Direction,
): string {
  const [first, second] = shown.map((value) =>
    value === undefined ? undefined : Number(value.toFixed(digits)),
  );
  if (first === undefined || second === undefined) return '–';
  if (first === 0) return second === 0 ? '0 %' : '–';
  const percent = (100 * (second - first)) / Math.abs(first);
  const worse = (better === 'higher' && percent < 0) || (better === 'lower' && percent > 0);
  return `${percent > 0 ? '+' : ''}${percent.toFixed(1)} %${worse ? ' !' : ''}`;
}

/** The comparison table, as Markdown; rows no run has are left out. */
export function compareRuns(runs: ReadonlyArray<{ name: string; result: BenchResult }>): string {
  const withDelta = runs.length === 2;
  const header = ['', ...runs.map((run) => run.name), ...(withDelta ? ['Δ'] : [])];
  const rows: string[][] = [];
  for (const row of ROWS) {
    const values = runs.map((run) => row.value(run.result));
    if (values.every((value) => value === undefined)) continue;
    rows.push([
      row.label,
      ...values.map((value) => (value === undefined ? '–' : value.toFixed(row.digits))),
      ...(withDelta ? [change(values, row.digits, row.better)] : []),
    ]);
  }
  return markdownTable(header, rows);
}

/** How a run reached MySQL; older benches did not record it (a socket only if the URL named one). */
function mysqlWay(result: BenchResult): string {
  const { mysqlWay: way, mysqlBaseUrl } = result.options ?? {};
  if (way !== undefined) return way;
  return mysqlBaseUrl?.includes('socket=') === true ? 'Unix socket (named by --mysql-url)' : 'TCP';
}

function main(): void {
  const files = process.argv.slice(2);
  if (files.length < 2 || files.includes('--help')) {
    process.stderr.write(
      'usage: npm run bench:compare -- a.json b.json [more.json …]\n' +
        '  results of `npm run bench -- --json <file>`, one column each; with two, a Δ column\n' +
        '  ("!" marks a change for the worse)\n',
    );
    process.exitCode = 2;
    return;
  }
  const runs = files.map((file) => ({
    name: basename(file, '.json'),
    result: JSON.parse(readFileSync(file, 'utf8')) as BenchResult,
  }));
  const started = runs
    .map((run) => `${run.name}: ${run.result.startedAt ?? '?'}, MySQL ${mysqlWay(run.result)}`)
    .join('\n  ');
  process.stdout.write(`runs started\n  ${started}\n\n${compareRuns(runs)}\n`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  main();
}
