/**
 * The PSP mock as a standalone process (`npm run start:psp`): load the config, wait for its MySQL
 * server as a Settle node does (up to STARTUP_WAIT_MS, startup-wait.ts: a mock started with the
 * database, as docker compose may, comes up once it answers), start the mock, stop it on SIGTERM
 * or SIGINT. Exit codes: 2 for a bad config (a setting, or a settlement folder it cannot write),
 * 3 for MySQL still unreachable when the wait ends, 1 for another failed start (MySQL refusing
 * the login, port in use), 0 after a clean stop or a signal during the wait.
 */
import { ConfigError, loadConfig, type Config } from '../../config.js';
import { FailedPreconditionError, UnavailableError } from '../../domain/errors.js';
import { routeGrpcLogs } from '../../grpc/logging.js';
import {
  pspMockDependencies,
  reachableMessage,
  waitForDependenciesUnlessSignalled,
  waitMessage,
} from '../../startup-wait.js';
import { startPspMock, type PspMock } from './index.js';

function log(line: string): void {
  process.stdout.write(`${new Date().toISOString()} ${line}\n`);
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`psp mock: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }

  routeGrpcLogs((level, message) =>
    (level === 'error' ? process.stderr : process.stdout).write(
      `${new Date().toISOString()} grpc-js ${level}: ${message}\n`,
    ),
  );
  let signalled: NodeJS.Signals | undefined;
  try {
    signalled = await waitForDependenciesUnlessSignalled(pspMockDependencies(config), {
      waitMsMax: config.STARTUP_WAIT_MS,
      onSignal: (signal) => log(`psp mock: ${signal} received while waiting for MySQL: exiting`),
      onWait: (wait) => log(`psp mock: ${waitMessage(wait)}`),
      onReachable: (reachable) => log(`psp mock: ${reachableMessage(reachable)}`),
    });
  } catch (error) {
    exitFailedStart(error);
  }
  // Nothing has been started yet: nothing to stop.
  if (signalled !== undefined) process.exit(0);

  let mock: PspMock;
  try {
    mock = await startPspMock({ config, log });
  } catch (error) {
    exitFailedStart(error);
  }

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log(`psp mock: ${signal} received, stopping`);
    // A stop that hangs must not keep the process alive past the grace period.
    const timer = setTimeout(() => {
      process.stderr.write(`psp mock: stop took longer than ${config.SHUTDOWN_GRACE_MS} ms\n`);
      process.exit(1);
    }, config.SHUTDOWN_GRACE_MS);
    timer.unref();
    void mock.stop().then(
      () => {
        log('psp mock: stopped');
        process.exit(0);
      },
      (error: unknown) => {
        process.stderr.write(`psp mock: stop failed: ${String(error)}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

/** One line on why the mock could not start, and the exit code that says which kind. */
function exitFailedStart(error: unknown): never {
  process.stderr.write(`psp mock: ${startFailure(error)}\n`);
  process.exit(error instanceof ConfigError ? 2 : error instanceof UnavailableError ? 3 : 1);
}

function startFailure(error: unknown): string {
  if (error instanceof ConfigError) return error.message;
  // ensureDatabase names Settle's variable; the mock's database comes from PSP_MYSQL_URL.
  if (error instanceof UnavailableError || error instanceof FailedPreconditionError)
    return error.message.replace(/\bMYSQL_URL\b/, 'PSP_MYSQL_URL');
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'EADDRINUSE') {
    const address = (error as { address?: string; port?: number }).address ?? '';
    const port = (error as { port?: number }).port ?? '';
    return `cannot listen on ${address}:${port}: the address is in use (set PSP_GRPC_ADDR / PSP_HTTP_ADDR)`;
  }
  return `failed to start: ${error instanceof Error ? error.message : String(error)}`;
}

void main().catch((error: unknown) => {
  process.stderr.write(
    `psp mock: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
