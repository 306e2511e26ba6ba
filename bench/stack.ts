/**
 * The system under test as child processes: the PSP mock (`src/psp/mock/main.ts`) and one Settle
 * node (`src/main.ts --settle-only`), each a real `node --import tsx` process on free 127.0.0.1
 * ports, with fresh databases and a fresh NATS namespace. `stop()` ends both (SIGTERM, then
 * SIGKILL after a grace period), deletes the streams and drops the databases; it is idempotent
 * and every wait in it is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { deleteTopology } from '../src/messaging/nats.js';
import { names as topologyNames } from '../src/messaging/subjects.js';
import { dropDatabase, withDatabaseName } from '../src/storage/db.js';
import { freePort, reachable } from '../src/chaos/free-port.js';
import { sleep } from '../src/chaos/processes.js';

export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 15_000;
/** Output lines kept per child for the report when something fails. */
const OUTPUT_LINES_KEPT = 40;
/**
 * names() wants a partition count, but the stream names deleteTopology uses do not depend on it;
 * the node runs with the config default.
 */
const CMD_PARTITIONS = 16;

export type Child = Readonly<{
  name: string;
  process: ChildProcess;
  pid: number;
  /** The last lines the child wrote (stdout and stderr), for diagnostics. */
  output: () => string[];
  /** Lines written so far (warnings and errors, given LOG_LEVEL=warn). */
  lines: () => number;
  exited: () => boolean;
}>;

export type BenchStack = Readonly<{
  settle: Child;
  psp: Child;
  settleGrpc: string;
  settleHttp: string;
  pspGrpc: string;
  mysqlUrl: string;
  pspMysqlUrl: string;
  namespace: string;
  stop: () => Promise<void>;
}>;

export type StackOptions = Readonly<{
  mysqlBaseUrl: string;
  natsUrl: string;
  /** Extra environment of the Settle node (ACTOR_IDLE_MS, ...). */
  settleEnv?: Record<string, string>;
  /** Extra node flags of the PSP mock (e.g. --cpu-prof). */
  pspNodeArgs?: string[];
  log: (line: string) => void;
}>;

export async function startStack(options: StackOptions): Promise<BenchStack> {
  const suffix = randomBytes(4).toString('hex');
  const [grpcPort, httpPort, pspGrpcPort, pspHttpPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  const mysqlUrl = withDatabaseName(options.mysqlBaseUrl, `settle_bench_${suffix}`);
  const pspMysqlUrl = withDatabaseName(options.mysqlBaseUrl, `settle_psp_bench_${suffix}`);
  const namespace = `bench${suffix}`;
  const env: Record<string, string> = {
    PATH: process.env['PATH'] ?? '/usr/bin:/bin',
    HOME: process.env['HOME'] ?? '/tmp',
    MYSQL_URL: mysqlUrl,
    PSP_MYSQL_URL: pspMysqlUrl,
    NATS_URL: options.natsUrl,
    SETTLE_NAMESPACE: namespace,
    SETTLE_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
    SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
    PSP_GRPC_ADDR: `127.0.0.1:${pspGrpcPort}`,
    PSP_HTTP_ADDR: `127.0.0.1:${pspHttpPort}`,
    LOG_LEVEL: 'warn',
    CREATE_WAIT_MS: '0',
    PSP_SUCCESS_RATE: '1',
    // No settlement files or nightly reconciliation in the shared ./.settle folder during a bench.
    PSP_SETTLEMENT_AT: 'off',
    RECONCILIATION_AT: 'off',
  };
  const children: Child[] = [];
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      for (const child of [...children].reverse()) await stopChild(child);
      await removeNamespace(options.natsUrl, namespace).catch((error: unknown) =>
        options.log(`cleanup: could not delete streams of ${namespace}: ${String(error)}`),
      );
      for (const url of [mysqlUrl, pspMysqlUrl]) {
        await dropDatabase(url).catch((error: unknown) =>
          options.log(`cleanup: could not drop ${url}: ${String(error)}`),
        );
      }
    })());
  try {
    const psp = spawnChild(
      'psp-mock',
      [...(options.pspNodeArgs ?? []), '--import', 'tsx', 'src/psp/mock/main.ts'],
      env,
    );
    children.push(psp);
    await waitForPort(psp, pspGrpcPort);
    const settle = spawnChild('settle', ['--import', 'tsx', 'src/main.ts', '--settle-only'], {
      ...env,
      DEBUG_STATS: 'true',
      ...options.settleEnv,
    });
    children.push(settle);
    await waitForPort(settle, grpcPort);
    await waitForHealthz(settle, `http://127.0.0.1:${httpPort}/healthz`);
    return {
      settle,
      psp,
      settleGrpc: `127.0.0.1:${grpcPort}`,
      settleHttp: `http://127.0.0.1:${httpPort}`,
      pspGrpc: `127.0.0.1:${pspGrpcPort}`,
      mysqlUrl,
      pspMysqlUrl,
      namespace,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

function spawnChild(name: string, args: string[], env: Record<string, string>): Child {
  const child = spawn(process.execPath, args, {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`could not start ${name}`);
  const kept: string[] = [];
  let lines = 0;
  let exited = false;
  const collect = (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (line.trim() === '') continue;
      lines += 1;
      kept.push(line.length > 500 ? `${line.slice(0, 500)}…` : line);
      if (kept.length > OUTPUT_LINES_KEPT) kept.shift();
    }
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  child.once('exit', () => (exited = true));
  return {
    name,
    process: child,
    pid: child.pid,
    output: () => [...kept],
    lines: () => lines,
    exited: () => exited,
  };
}

async function waitForPort(child: Child, port: number): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exited()) {
      throw new Error(`${child.name} exited during start:\n${child.output().join('\n')}`);
    }
    if (await reachable('127.0.0.1', port, 500)) return;
    await sleep(100);
  }
  throw new Error(`${child.name} did not listen on ${port} within ${START_TIMEOUT_MS} ms`);
}

async function waitForHealthz(child: Child, url: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (child.exited()) {
      throw new Error(`${child.name} exited during start:\n${child.output().join('\n')}`);
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (response.ok) return;
    } catch {
      // Not yet.
    }
    await sleep(100);
  }
  throw new Error(`${child.name} was not healthy within ${START_TIMEOUT_MS} ms`);
}

async function stopChild(child: Child): Promise<void> {
  if (child.exited()) return;
  const exited = new Promise<void>((resolve) => child.process.once('exit', () => resolve()));
  child.process.kill('SIGTERM');
  const timer = new Promise<'timeout'>((resolve) =>
    setTimeout(() => resolve('timeout'), STOP_GRACE_MS).unref(),
  );
  if ((await Promise.race([exited, timer])) === 'timeout' && !child.exited()) {
    child.process.kill('SIGKILL');
    await Promise.race([exited, sleep(2_000)]);
  }
}

async function removeNamespace(natsUrl: string, namespace: string): Promise<void> {
  const nc = await connect({ servers: natsUrl, timeout: 5_000 });
  try {
    await deleteTopology(nc, topologyNames(namespace, CMD_PARTITIONS));
  } finally {
    await nc.close();
  }
}
