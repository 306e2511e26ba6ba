/**
 * The system under test as child processes: the PSP mock (`src/psp/mock/main.ts`) and one Settle
 * node (`src/main.ts --settle-only`), each a real `node --import tsx` process on free 127.0.0.1
 * ports, with fresh databases and a fresh NATS namespace. `stop()` ends both (SIGTERM, then
 * SIGKILL after a grace period), deletes the streams and drops the databases; it is idempotent
 * and every wait in it is bounded.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { deleteTopology } from '../src/messaging/nats.js';
import { names as topologyNames } from '../src/messaging/subjects.js';
import { dropDatabase, withDatabaseName } from '../src/storage/db.js';
import { freePort } from '../src/chaos/free-port.js';
import { ManagedProcess, sleep, type ProcessSpec } from '../src/chaos/processes.js';

export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 15_000;
/**
 * names() wants a partition count, but the stream names deleteTopology uses do not depend on it;
 * the node runs with the config default.
 */
const CMD_PARTITIONS = 16;

/** One child of the stack: its process, and its pid, known once it started. */
export type Child = Readonly<{
  name: string;
  process: ManagedProcess;
  pid: number;
  /** The last lines the child wrote (stdout and stderr), for diagnostics. */
  output: () => string[];
  /** Lines written so far (warnings and errors, given LOG_LEVEL=warn, and the ready line). */
  lines: () => number;
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
    // Settle alone refuses the published default; the mock signs with the same one.
    PSP_WEBHOOK_SECRET: `whsec_bench_${randomBytes(12).toString('hex')}`,
    CREATE_WAIT_MS: '0',
    PSP_SUCCESS_RATE: '1',
    // No settlement files or nightly reconciliation in the shared ./.settle folder during a bench.
    PSP_SETTLEMENT_AT: 'off',
    RECONCILIATION_AT: 'off',
  };
  const processes: ManagedProcess[] = [];
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      for (const child of [...processes].reverse()) await child.stop(STOP_GRACE_MS);
      for (const child of processes) await child.dispose();
      await removeNamespace(options.natsUrl, namespace).catch((error: unknown) =>
        options.log(`cleanup: could not delete streams of ${namespace}: ${String(error)}`),
      );
      for (const url of [mysqlUrl, pspMysqlUrl]) {
        await dropDatabase(url).catch((error: unknown) =>
          options.log(`cleanup: could not drop ${url}: ${String(error)}`),
        );
      }
    })());
  const startChild = async (spec: Omit<ProcessSpec, 'cwd'>): Promise<Child> => {
    const child = new ManagedProcess({ ...spec, cwd: REPO_ROOT });
    processes.push(child);
    await child.start(START_TIMEOUT_MS);
    const pid = child.pid;
    if (pid === undefined) throw new Error(`${spec.name} has no pid`);
    return {
      name: spec.name,
      process: child,
      pid,
      output: () => child.tail().split('\n'),
      lines: () => child.lines,
    };
  };
  try {
    const psp = await startChild({
      name: 'psp-mock',
      script: 'src/psp/mock/main.ts',
      nodeArgs: options.pspNodeArgs ?? [],
      env,
      readyPattern: /psp mock: gRPC /,
    });
    const settle = await startChild({
      name: 'settle',
      script: 'src/main.ts',
      args: ['--settle-only'],
      env: { ...env, DEBUG_STATS: 'true', ...options.settleEnv },
      readyPattern: /^Settle is up: /,
    });
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

async function waitForHealthz(child: Child, url: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!child.process.running) {
      throw new Error(`${child.name} exited during start:\n${child.process.tail()}`);
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

async function removeNamespace(natsUrl: string, namespace: string): Promise<void> {
  const nc = await connect({ servers: natsUrl, timeout: 5_000 });
  try {
    await deleteTopology(nc, topologyNames(namespace, CMD_PARTITIONS));
  } finally {
    await nc.close();
  }
}
