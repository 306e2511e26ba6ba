/**
 * `npm run recon:large -- --rows 1000000`: generates a settlement file of that many rows with as
 * many ledger payments (see recon-large/fixture.ts), reconciles it in a child process of its own
 * (so its peak RSS is the reconciliation's, not the generator's), and prints the elapsed time per
 * phase and the peak RSS. It creates and drops its own databases on MYSQL_URL's server. Not part
 * of the test suite (too slow); test/reconciliation/large-file.test.ts runs 10,000 rows.
 *
 * Options: --rows N (default 1000000), --batch N (staging rows per INSERT, default 5000),
 * --keep (keep the databases and the file for inspection).
 */
import { spawn } from 'node:child_process';
import { loadConfig } from '../src/config.js';
import {
  generateLargeFixture,
  reconcileLarge,
  type LargeReconcileResult,
} from './recon-large/fixture.js';

function option(name: string): string | undefined {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? undefined : process.argv[index + 1];
}

const line = (text: string) => process.stdout.write(`${text}\n`);
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const json = (value: unknown) =>
  JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));

/** The child: reconcile the fixture named on the command line, print one JSON line. */
async function child(): Promise<void> {
  const result = await reconcileLarge({
    settleUrl: option('settle-url') ?? '',
    dir: option('dir') ?? '',
    day: option('day') ?? '',
    batchRows: Number(option('batch') ?? 5_000),
  });
  line(json({ ...result, processPeakRssBytes: process.resourceUsage().maxRSS * 1024 }));
}

async function main(): Promise<void> {
  const rows = Number(option('rows') ?? 1_000_000);
  const batch = option('batch') ?? '5000';
  if (!Number.isSafeInteger(rows) || rows < 1 || rows > 50_000_000) {
    process.stderr.write('--rows must be an integer between 1 and 50000000\n');
    process.exit(2);
  }
  const config = loadConfig(process.env);
  const fixture = await generateLargeFixture({
    rows,
    mysqlUrl: config.MYSQL_URL,
    log: (text) => line(`  ${text}`),
  });
  try {
    const output = await new Promise<string>((resolve, reject) => {
      const reconciler = spawn(
        process.execPath,
        [
          '--expose-gc',
          '--import',
          'tsx',
          'bench/recon-large.ts',
          '--reconcile-only',
          '--settle-url',
          fixture.settleUrl,
          '--dir',
          fixture.dir,
          '--day',
          fixture.day,
          '--batch',
          batch,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let stdout = '';
      reconciler.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      reconciler.on('error', reject);
      reconciler.on('exit', (code) =>
        code === 0 ? resolve(stdout) : reject(new Error(`reconciler exited ${code}`)),
      );
    });
    const result = JSON.parse(output.trim().split('\n').pop() ?? '{}') as LargeReconcileResult & {
      processPeakRssBytes: number;
      report: { counts: Record<string, string> };
    };
    const { report } = result;
    line(`rows in file:       ${fixture.rows} (${(fixture.fileBytes / 1e6).toFixed(1)} MB)`);
    line(`generate fixtures:  ${seconds(fixture.generateMs)}`);
    line(`write file (PSP):   ${seconds(fixture.writeFileMs)}`);
    line(
      `reconcile:          ${seconds(result.reconcileMs)} ` +
        `(${Math.round(fixture.rows / (result.reconcileMs / 1000))} rows/s)`,
    );
    line(
      `  phases:           ${Object.entries(result.phases)
        .map(([phase, ms]) => `${phase} ${seconds(ms)}`)
        .join(', ')}`,
    );
    line(
      `reconciler RSS:     ${mib(result.rssBeforeBytes)} at start, ` +
        `${mib(result.rssPeakBytes)} sampled peak, ${mib(result.processPeakRssBytes)} process peak`,
    );
    line(`report ${report.id}: ${report.state} ${json(report.counts)}`);
    line(
      `internal check:     ledger balanced ${report.internalCheck?.ledgerBalanced}, ` +
        `wallets match ${report.internalCheck?.walletsMatchLedger}`,
    );
    const countsOk = Object.entries(fixture.expected).every(
      ([name, value]) => report.counts[name] === value.toString(),
    );
    if (
      report.state !== 'SUCCEEDED' ||
      !countsOk ||
      report.internalCheck?.ledgerBalanced !== true
    ) {
      process.stderr.write(
        `unexpected report; expected ${json(fixture.expected)} ${report.error ?? ''}\n`,
      );
      process.exitCode = 1;
    }
  } finally {
    if (process.argv.includes('--keep')) {
      line(`kept ${fixture.settleUrl} and ${fixture.dir}`);
    } else {
      await fixture.remove();
    }
  }
}

await (process.argv.includes('--reconcile-only') ? child() : main());
