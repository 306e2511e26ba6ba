/**
 * Composition root: `npm start` runs the PSP mock and one Settle node on the defaults;
 * `--settle-only` runs just Settle (the PSP mock then runs elsewhere: `npm run start:psp`).
 * With the mock in the same process the run is local development by construction, so the admin
 * reads (panel pages, AdminService's ListDeadLetters and GetPaymentTimeline, which the demo
 * shows) default to open there: ADMIN_READONLY_OPEN=true unless set. Actions still need
 * ADMIN_TOKEN, and `--settle-only` keeps everything closed without it and refuses to start with
 * a webhook secret or admin token published in this repository. The ports' TLS files
 * (GRPC_TLS_*, HTTP_TLS_*) are read and checked with the configuration: one that cannot be read,
 * or a key that is not its certificate's, is a configuration error (exit 2) naming the setting.
 * Before starting anything it waits for MySQL and NATS, up to STARTUP_WAIT_MS (startup-wait.ts):
 * a node started before them comes up once they answer, and a node whose dependencies stay away
 * exits 3 with one line saying which, where, and how long it waited. SIGTERM/SIGINT during that
 * wait exit at once (0: nothing was started). Once the node is up, SIGTERM/SIGINT stop everything
 * in reverse order; a second signal, or the grace period running out, forces the exit. SIGHUP
 * makes a node that serves TLS read its certificate files again (src/tls-reload.ts).
 */
import {
  ConfigError,
  loadConfig,
  localRunDefaults,
  publishedSecretProblems,
  type Config,
} from './config.js';
import { startSettle } from './app.js';
import { readServerTls, type ServerTls } from './tls.js';
import { routeGrpcLogs } from './grpc/logging.js';
import { startPspMock } from './psp/mock/index.js';
import { UnavailableError } from './domain/errors.js';
import { createLogger, type Logger } from './observability/logger.js';
import {
  reachableMessage,
  startupDependencies,
  waitForDependenciesUnlessSignalled,
  waitMessage,
} from './startup-wait.js';

async function main(): Promise<void> {
  const settleOnly = process.argv.includes('--settle-only');
  const env = settleOnly ? process.env : localRunDefaults(process.env);
  let config: Config;
  let tls: ServerTls;
  try {
    config = loadConfig(env);
    const published = settleOnly ? publishedSecretProblems(config) : [];
    if (published.length > 0) throw new ConfigError(published);
    tls = readServerTls(config);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`settle: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  const logger = createLogger({ level: config.LOG_LEVEL, name: 'settle' });
  routeGrpcLogs((level, message) => logger[level]({ component: 'grpc-js' }, message));
  if (env !== process.env) {
    logger.info(
      'local run with the PSP mock: admin reads are open (ADMIN_READONLY_OPEN=true unless set); actions need ADMIN_TOKEN',
    );
  }
  // A node that serves TLS takes SIGHUP (read its TLS files again, below): one arriving while it
  // still waits for MySQL and NATS must not end it, as Node's default would.
  const ignoreEarlyHangup = () => logger.info('SIGHUP received while starting: ignored');
  if (tls.grpc !== undefined || tls.http !== undefined) process.on('SIGHUP', ignoreEarlyHangup);
  await waitForStartupDependencies(config, { settleOnly, logger });

  const stops: Array<() => Promise<void>> = [];
  let reloadTls: (() => unknown) | undefined;
  try {
    if (!settleOnly) {
      const psp = await startPspMock({
        config,
        log: (line) => logger.info({ component: 'psp-mock' }, line),
      });
      stops.push(psp.stop);
      logger.info(`PSP mock: gRPC 127.0.0.1:${psp.grpcPort}, hosted pages ${psp.publicUrl}`);
    }
    const node = await startSettle(config, { logger, tls });
    stops.push(node.stop);
    reloadTls = node.reloadTls;
    const grpcTls = tls.grpc === undefined ? '' : ' (TLS)';
    const httpScheme = tls.http === undefined ? 'http' : 'https';
    process.stdout.write(
      `Settle is up: gRPC ${config.SETTLE_GRPC_ADDR.host}:${node.grpcPort}${grpcTls}, ` +
        `HTTP ${httpScheme}://${config.SETTLE_HTTP_ADDR.host}:${node.httpPort} (namespace ${config.SETTLE_NAMESPACE})\n`,
    );
  } catch (error) {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    exitFailedStart(error);
  }

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) {
      process.stderr.write(`settle: second ${signal}, exiting now\n`);
      process.exit(130);
    }
    stopping = true;
    logger.info(`${signal} received: stopping`);
    const force = setTimeout(() => {
      process.stderr.write('settle: shutdown took too long, exiting\n');
      process.exit(1);
    }, config.SHUTDOWN_GRACE_MS + 5_000);
    force.unref();
    void (async () => {
      for (const stop of stops.reverse()) await stop().catch(() => undefined);
      process.exit(0);
    })();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // Only a node that serves TLS takes SIGHUP: a plaintext one keeps Node's default (exit).
  if (reloadTls !== undefined && (tls.grpc !== undefined || tls.http !== undefined)) {
    const reload = reloadTls;
    process.off('SIGHUP', ignoreEarlyHangup);
    process.on('SIGHUP', () => {
      logger.info('SIGHUP received: reading the TLS files again');
      reload();
    });
  }
}

/**
 * Waits for MySQL and NATS (startup-wait.ts) and returns once they answer. Exits 3 when the wait
 * ends without them, at once on an error waiting cannot cure, and with 0 on SIGTERM or SIGINT
 * during the wait: nothing has been started yet, so there is nothing to stop.
 */
async function waitForStartupDependencies(
  config: Config,
  context: Readonly<{ settleOnly: boolean; logger: Logger }>,
): Promise<void> {
  const { logger } = context;
  let signalled: NodeJS.Signals | undefined;
  try {
    signalled = await waitForDependenciesUnlessSignalled(
      startupDependencies(config, {
        pspMock: !context.settleOnly,
        nodeName: `settle-${process.pid}`,
      }),
      {
        waitMsMax: config.STARTUP_WAIT_MS,
        onSignal: (signal) =>
          logger.info(`${signal} received while waiting for MySQL and NATS: exiting`),
        onWait: (wait) => logger.warn(wait, waitMessage(wait)),
        onReachable: (reachable) => logger.info(reachable, reachableMessage(reachable)),
      },
    );
  } catch (error) {
    exitFailedStart(error);
  }
  if (signalled !== undefined) process.exit(0);
}

/** One line on why the node could not start, and the exit code that says which kind. */
function exitFailedStart(error: unknown): never {
  if (error instanceof ConfigError) {
    process.stderr.write(`settle: ${error.message}\n`);
    process.exit(2);
  }
  if (error instanceof UnavailableError) {
    process.stderr.write(`settle: ${error.message}\n`);
    process.exit(3);
  }
  process.stderr.write(
    `settle: failed to start: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(1);
}

void main();
