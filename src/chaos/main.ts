/**
 * `npm run chaos`: the chaos demo. Starts its own PSP mock and Settle nodes against the real
 * MariaDB and NATS of this machine (fresh databases and namespace, removed afterwards), drives
 * seeded payments through them while injecting faults, then prints the invariant table.
 *
 *   npm run chaos -- --quick               # about a minute
 *   npm run chaos -- --seed 7 --payments 500 --duration 180 --nodes 3
 *
 * Exit codes: 0 every invariant holds; 1 an invariant failed; 2 bad arguments; 3 MySQL or NATS
 * unreachable, or the cluster did not start; 130 interrupted (Ctrl-C; cleanup still runs).
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig } from '../config.js';
import { parseMysqlUrl } from '../storage/db.js';
import { reachable } from './free-port.js';
import { formatReport } from './report.js';
import { runChaos } from './run.js';

const USAGE = `usage: npm run chaos -- [--quick] [--seed N] [--payments N] [--duration SECONDS]
                        [--nodes N] [--settle SECONDS]
  --quick      a short run: 60 payments, 25 s of faults (defaults: 300 payments, 90 s)
  --seed       the same seed gives the same payments and the same fault schedule (default: random)
  --payments   payments to create (1-5000)
  --duration   seconds of faults (5-3600); payments are spread over the first 80 %
  --nodes      Settle nodes (1-8, default 2)
  --settle     the longest wait, after the faults, for every order to end (default 120, quick 60)
MySQL and NATS come from MYSQL_URL and NATS_URL (defaults 127.0.0.1:3306 and :4222).`;

type Args = {
  seed: number;
  payments: number;
  durationS: number;
  nodes: number;
  settleS: number;
};

function parseArgs(argv: readonly string[]): Args {
  const quick = argv.includes('--quick');
  const args: Args = {
    seed: 1 + Math.floor(Math.random() * 2_147_483_646),
    payments: quick ? 60 : 300,
    durationS: quick ? 25 : 90,
    nodes: 2,
    settleS: quick ? 60 : 120,
  };
  const bounds: Record<string, [keyof Args, number, number]> = {
    '--seed': ['seed', 0, 4_294_967_295],
    '--payments': ['payments', 1, 5_000],
    '--duration': ['durationS', 5, 3_600],
    '--nodes': ['nodes', 1, 8],
    '--settle': ['settleS', 5, 3_600],
  };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i] ?? '';
    if (flag === '--quick') continue;
    if (flag === '--help' || flag === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    const bound = bounds[flag];
    const value = Number(argv[i + 1]);
    if (bound === undefined) usage(`unknown argument '${flag}'`);
    const [key, min, max] = bound;
    if (!Number.isInteger(value) || value < min || value > max) {
      usage(`${flag} needs an integer in [${min}, ${max}]`);
    }
    args[key] = value;
    i += 1;
  }
  return args;
}

function usage(problem: string): never {
  process.stderr.write(`chaos: ${problem}\n${USAGE}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  let mysqlUrl: string;
  let natsUrl: string;
  try {
    const config = loadConfig(process.env);
    mysqlUrl = config.MYSQL_URL;
    natsUrl = config.NATS_URL;
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`chaos: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const mysql = parseMysqlUrl(mysqlUrl);
  const nats = new URL(natsUrl);
  if (!(await reachable(mysql.host, mysql.port, 2_000))) {
    process.stderr.write(
      `chaos: MySQL is unreachable at ${mysql.host}:${mysql.port}; start it or set MYSQL_URL\n`,
    );
    process.exit(3);
  }
  if (!(await reachable(nats.hostname, Number(nats.port || 4222), 2_000))) {
    process.stderr.write(`chaos: NATS is unreachable at ${nats.host}; start it or set NATS_URL\n`);
    process.exit(3);
  }

  const logDir = mkdtempSync(path.join(os.tmpdir(), `settle-chaos-${args.seed}-`));
  const controller = new AbortController();
  let interrupts = 0;
  const interrupt = () => {
    interrupts += 1;
    if (interrupts > 1) {
      process.stderr.write('chaos: second interrupt, exiting without cleanup\n');
      process.exit(130);
    }
    process.stderr.write('chaos: interrupted, stopping the children and cleaning up…\n');
    controller.abort();
  };
  process.on('SIGINT', interrupt);
  process.on('SIGTERM', interrupt);

  let result;
  try {
    result = await runChaos({
      seed: args.seed,
      payments: args.payments,
      durationMs: args.durationS * 1_000,
      nodes: args.nodes,
      settleMs: args.settleS * 1_000,
      mysqlUrl,
      natsUrl,
      baseEnv: process.env,
      logDir,
      out: (line) => process.stdout.write(`${line}\n`),
      signal: controller.signal,
    });
  } catch (error) {
    process.stderr.write(
      `chaos: the run failed: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    process.exit(controller.signal.aborted ? 130 : 3);
  }
  process.stdout.write(`${formatReport(result)}\n`);
  if (result.aborted) process.exit(130);
  if (!result.evaluation.ok) {
    process.stdout.write(`repeat this schedule with: npm run chaos -- --seed ${args.seed}\n`);
  }
  process.exit(result.evaluation.ok ? 0 : 1);
}

void main();
