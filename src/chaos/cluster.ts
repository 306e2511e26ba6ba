/**
 * A throw-away Settle deployment for the chaos demo and the crash-recovery tests: one PSP mock and
 * N Settle nodes as real child processes, sharing one fresh Settle database and one fresh NATS
 * namespace on the machine's real MariaDB and NATS. Each node reaches MySQL and NATS through its
 * own TCP proxy, so faults are injected per node without touching the shared servers. The PSP
 * sends webhooks through a failover proxy in front of every node's HTTP port, as a load balancer
 * would, so a dead node does not hold back the webhooks of its orders.
 *
 * `destroy()` kills every child and removes the databases and the streams it created.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { connect } from '@nats-io/transport-node';
import { createSettleClient, type SettleClient } from '../client/index.js';
import { PspServiceClient } from '../grpc/generated/settle/psp/v1/psp.js';
import { deleteTopology } from '../messaging/nats.js';
import { names as topologyNames, type Names } from '../messaging/subjects.js';
import {
  dropDatabase,
  openDatabase,
  parseMysqlUrl,
  withDatabaseName,
  type Db,
} from '../storage/db.js';
import { freePort } from './free-port.js';
import { ManagedProcess, sleep, type Exit } from './processes.js';
import { startTcpProxy, type TcpProxy } from './tcp-proxy.js';

/** The repository root: children run `node --import tsx src/...` from here. */
const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Command partitions of the cluster's namespace (the config default). */
const CMD_PARTITIONS = 16;
const START_TIMEOUT_MS = 30_000;
/** Starts tried on fresh ports when a picked port was taken meanwhile. */
const PORT_ATTEMPTS_MAX = 3;

export type ClusterOptions = Readonly<{
  nodes: number;
  /** A URL of the MySQL server to use; its database name is replaced by fresh ones. */
  mysqlUrl: string;
  natsUrl: string;
  /** The environment children inherit (PATH and the like); cluster settings override it. */
  baseEnv: Readonly<Record<string, string | undefined>>;
  /** Extra settings of every Settle node, e.g. CONSUMER_ACK_WAIT_MS. */
  nodeEnv?: Readonly<Record<string, string>>;
  /** Extra settings of the PSP mock, e.g. PSP_SUCCESS_RATE. */
  pspEnv?: Readonly<Record<string, string>>;
  /** Where each child's output is written (one file per child). */
  logDir: string;
  /** Nodes started by start(); the others stay down until startNode(). Default: all. */
  initialNodes?: number;
  /** A short tag in database and namespace names; random when absent. */
  runId?: string;
  onLine?: (processName: string, line: string) => void;
}>;

export type NodeState = 'up' | 'starting' | 'down';

export type NodeHandle = {
  readonly index: number;
  readonly name: string;
  readonly process: ManagedProcess;
  /** Kept across restarts; they change only when a start finds a port taken. */
  grpcAddress: string;
  httpUrl: string;
  readonly natsProxy: TcpProxy;
  readonly mysqlProxy: TcpProxy;
  /** Undefined until the node's ports are assigned (before its first start). */
  client: SettleClient | undefined;
  state: NodeState;
};

export class ChaosCluster {
  readonly nodes: NodeHandle[] = [];
  #db: { db: Db; close: () => Promise<void> } | undefined;
  #pspClient: PspServiceClient | undefined;
  #destroyed = false;
  #pspGrpcPort = 0;

  private constructor(
    readonly options: ClusterOptions,
    readonly runId: string,
    readonly settleMysqlUrl: string,
    readonly pspMysqlUrl: string,
    readonly namespace: string,
    readonly names: Names,
    readonly webhookSecret: string,
    /** AdminService calls need `authorization: Bearer <adminToken>`. */
    readonly adminToken: string,
    readonly psp: ManagedProcess,
    readonly webhookProxy: TcpProxy,
    private readonly proxies: TcpProxy[],
  ) {}

  /** Starts the PSP mock and every node; on failure, everything started is destroyed. */
  static async start(options: ClusterOptions): Promise<ChaosCluster> {
    if (!Number.isInteger(options.nodes) || options.nodes < 1 || options.nodes > 8) {
      throw new Error(`nodes must be an integer in [1, 8], got ${options.nodes}`);
    }
    const runId = options.runId ?? randomBytes(4).toString('hex');
    const settleMysqlUrl = withDatabaseName(options.mysqlUrl, `settle_chaos_${runId}`);
    const pspMysqlUrl = withDatabaseName(options.mysqlUrl, `settle_chaos_psp_${runId}`);
    const namespace = `chaos_${runId}`;
    const names = topologyNames(namespace, CMD_PARTITIONS);
    const webhookSecret = `whsec_chaos_${randomBytes(12).toString('hex')}`;
    const adminToken = `chaos_admin_${randomBytes(12).toString('hex')}`;
    const mysql = parseMysqlUrl(options.mysqlUrl);
    const nats = new URL(options.natsUrl);
    const natsTarget = { host: nats.hostname, port: Number(nats.port || 4222) };

    // Proxies first: they take ephemeral ports, and the ports picked below must not be theirs.
    const proxies: TcpProxy[] = [];
    const webhookProxy = await startTcpProxy(
      { host: '127.0.0.1', port: 1 },
      {
        connectTimeoutMs: 1_000,
      },
    );
    proxies.push(webhookProxy);
    const common = {
      ...stringEnv(options.baseEnv),
      PSP_WEBHOOK_SECRET: webhookSecret,
      ADMIN_TOKEN: adminToken,
      SETTLE_NAMESPACE: namespace,
      SETTLE_PUBLIC_URL: `http://127.0.0.1:${webhookProxy.port}`,
      LOG_LEVEL: 'warn',
      // The daily settlement files and nightly reconciliation would write into (and read from)
      // the shared ./.settle/settlements folder; a chaos run has no business there.
      PSP_SETTLEMENT_AT: 'off',
      RECONCILIATION_AT: 'off',
    };
    const psp = new ManagedProcess({
      name: 'psp',
      script: 'src/psp/mock/main.ts',
      cwd: REPO_ROOT,
      env: { ...common, PSP_MYSQL_URL: pspMysqlUrl, ...options.pspEnv },
      readyPattern: /psp mock: gRPC /,
      logFile: path.join(options.logDir, 'psp.log'),
      onLine: (line) => options.onLine?.('psp', line),
    });
    const cluster = new ChaosCluster(
      options,
      runId,
      settleMysqlUrl,
      pspMysqlUrl,
      namespace,
      names,
      webhookSecret,
      adminToken,
      psp,
      webhookProxy,
      proxies,
    );
    try {
      for (let index = 0; index < options.nodes; index += 1) {
        const mysqlProxy = await startTcpProxy({ host: mysql.host, port: mysql.port });
        const natsProxy = await startTcpProxy(natsTarget);
        proxies.push(mysqlProxy, natsProxy);
        const name = `node-${index + 1}`;
        cluster.nodes.push({
          index,
          name,
          process: new ManagedProcess({
            name,
            script: 'src/main.ts',
            args: ['--settle-only'],
            cwd: REPO_ROOT,
            env: {
              ...common,
              MYSQL_URL: withHostPort(settleMysqlUrl, '127.0.0.1', mysqlProxy.port),
              NATS_URL: `nats://127.0.0.1:${natsProxy.port}`,
              ...options.nodeEnv,
            },
            readyPattern: /^Settle is up: /,
            logFile: path.join(options.logDir, `${name}.log`),
            onLine: (line) => options.onLine?.(name, line),
          }),
          grpcAddress: '',
          httpUrl: '',
          natsProxy,
          mysqlProxy,
          client: undefined,
          state: 'down',
        });
      }
      for (const node of cluster.nodes) await cluster.#assignPorts(node);
      await cluster.#startPsp();
      // The first node creates the database, migrates it and creates the streams; the others
      // then start together.
      await cluster.startNode(0);
      const others = cluster.nodes.slice(1, options.initialNodes ?? options.nodes);
      await Promise.all(others.map((node) => cluster.startNode(node.index)));
      return cluster;
    } catch (error) {
      await cluster.destroy();
      throw error;
    }
  }

  /** host:port of the PSP mock's gRPC API. */
  get pspGrpcAddress(): string {
    return `127.0.0.1:${this.#pspGrpcPort}`;
  }

  /**
   * Starts the PSP mock on free ports. A port picked free can be taken by another process before
   * the child binds it, so a start that fails for that reason is tried again on other ports.
   */
  async #startPsp(): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      const [grpcPort, httpPort] = [await freePort(), await freePort()];
      this.#pspGrpcPort = grpcPort;
      this.psp.env.PSP_GRPC_ADDR = `127.0.0.1:${grpcPort}`;
      this.psp.env.PSP_HTTP_ADDR = `127.0.0.1:${httpPort}`;
      for (const node of this.nodes) node.process.env.PSP_GRPC_ADDR = this.pspGrpcAddress;
      try {
        await this.psp.start(START_TIMEOUT_MS);
        return;
      } catch (error) {
        if (attempt >= PORT_ATTEMPTS_MAX || !isAddressInUse(error)) throw error;
      }
    }
  }

  /** Gives a node new gRPC and HTTP ports (before its first start, or after a port clash). */
  async #assignPorts(node: NodeHandle): Promise<void> {
    const [grpcPort, httpPort] = [await freePort(), await freePort()];
    node.process.env.SETTLE_GRPC_ADDR = `127.0.0.1:${grpcPort}`;
    node.process.env.SETTLE_HTTP_ADDR = `127.0.0.1:${httpPort}`;
    node.grpcAddress = `127.0.0.1:${grpcPort}`;
    node.httpUrl = `http://127.0.0.1:${httpPort}`;
    node.client?.close();
    node.client = createSettleClient(node.grpcAddress, { defaultTimeoutMs: 5_000 });
    this.webhookProxy.retarget(
      this.nodes
        .filter((n) => n.httpUrl !== '')
        .map((n) => ({ host: '127.0.0.1', port: Number(new URL(n.httpUrl).port) })),
    );
  }

  /** Settle's database, read directly (not through a node's proxy). */
  get db(): Db {
    this.#db ??= openDatabase(this.settleMysqlUrl, { poolSize: 4 });
    return this.#db.db;
  }

  /** The PSP mock's gRPC API (its own records: ListCharges, and the test drivers). */
  get pspApi(): PspServiceClient {
    this.#pspClient ??= new PspServiceClient(
      this.pspGrpcAddress,
      grpc.credentials.createInsecure(),
    );
    return this.#pspClient;
  }

  node(index: number): NodeHandle {
    const node = this.nodes[index];
    if (node === undefined) throw new Error(`no node ${index}`);
    return node;
  }

  upNodes(): NodeHandle[] {
    return this.nodes.filter((node) => node.state === 'up');
  }

  /**
   * Starts a node, trying again (at most `attemptsMax` times, a second apart) when it exits during
   * its start, for example because its MySQL or NATS proxy is down at that moment.
   */
  async startNode(
    index: number,
    options: { attemptsMax?: number; env?: Record<string, string> } = {},
  ): Promise<void> {
    const node = this.node(index);
    if (node.state !== 'down') throw new Error(`${node.name} is ${node.state}`);
    node.state = 'starting';
    const attemptsMax = options.attemptsMax ?? 1;
    let last: unknown;
    let portClashes = 0;
    for (let attempt = 1; attempt <= attemptsMax && !this.#destroyed; attempt += 1) {
      try {
        if (options.env !== undefined) Object.assign(node.process.env, options.env);
        await node.process.start(START_TIMEOUT_MS);
        node.state = 'up';
        return;
      } catch (error) {
        last = error;
        if (isAddressInUse(error) && portClashes < PORT_ATTEMPTS_MAX) {
          // Another process took one of the node's ports between the pick and the bind: move
          // the node to other ports; a clash does not count as an attempt.
          portClashes += 1;
          await this.#assignPorts(node);
          attempt -= 1;
          continue;
        }
        if (attempt < attemptsMax) await sleep(1_000);
      }
    }
    node.state = 'down';
    throw last instanceof Error ? last : new Error(`${node.name} did not start`);
  }

  /** kill -9. */
  async killNode(index: number): Promise<Exit | undefined> {
    const node = this.node(index);
    node.state = 'down';
    return node.process.kill();
  }

  /** Sends a signal (SIGTERM for a graceful stop); the caller waits for the exit. */
  signalNode(index: number, signal: NodeJS.Signals): boolean {
    return this.node(index).process.signal(signal);
  }

  /** Marks a node down after it exited by itself (graceful stop). */
  markDown(index: number): void {
    this.node(index).state = 'down';
  }

  /** Every proxy up again (after a run's faults, before it settles). */
  healNetwork(): void {
    for (const proxy of this.proxies) proxy.up();
  }

  /** Kills every child, closes the proxies, deletes the streams and drops the databases. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    await Promise.all(this.nodes.map((node) => node.process.dispose()));
    await this.psp.dispose();
    for (const node of this.nodes) node.client?.close();
    this.#pspClient?.close();
    await this.#db?.close().catch(() => undefined);
    await Promise.all(this.proxies.map((proxy) => proxy.close()));
    const problems: string[] = [];
    try {
      const nc = await connect({ servers: this.options.natsUrl, timeout: 5_000 });
      try {
        await deleteTopology(nc, this.names);
      } finally {
        await nc.close();
      }
    } catch (error) {
      problems.push(`streams of ${this.namespace}: ${String(error)}`);
    }
    for (const url of [this.settleMysqlUrl, this.pspMysqlUrl]) {
      try {
        await dropDatabase(url);
      } catch (error) {
        problems.push(`database ${parseMysqlUrl(url).database}: ${String(error)}`);
      }
    }
    if (problems.length > 0) throw new Error(`cleanup incomplete: ${problems.join('; ')}`);
  }
}

function isAddressInUse(error: unknown): boolean {
  return /EADDRINUSE|is in use|already in use|No address added/i.test(String(error));
}

function withHostPort(url: string, host: string, port: number): string {
  const parsed = new URL(url);
  parsed.hostname = host;
  parsed.port = String(port);
  return parsed.toString();
}

function stringEnv(env: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) if (value !== undefined) out[key] = value;
  return out;
}
