/**
 * Goal: `npm start` fails fast and clearly when it cannot work: one line naming the unreachable
 * dependency, its address and how to start it (exit 3), or every configuration problem at once
 * (exit 2); a local run with the PSP mock opens the admin reads by default. Method: run
 * src/main.ts as a real child process with broken settings; the local defaults as a function.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, inject, it } from 'vitest';
import { loadConfig, localRunDefaults } from '../src/config.js';
import { dropDatabase, freePort, removeNamespace, testDatabaseUrl } from './support/harness.js';

/** Settle alone refuses the published default secret: these runs bring their own. */
const TEST_SECRET = 'whsec_main_test_0123456789';

function runMain(env: Record<string, string>) {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', '--settle-only'], {
    env: { ...process.env, LOG_LEVEL: 'silent', PSP_WEBHOOK_SECRET: TEST_SECRET, ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { status: result.status, stderr: result.stderr.trim() };
}

describe('main', () => {
  it('names MySQL, its address and the start command when MySQL is unreachable', () => {
    const { status, stderr } = runMain({
      MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_unreachable',
    });
    expect(status).toBe(3);
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(
      /MySQL is unreachable at 127\.0\.0\.1:1 .*start-stop-daemon .*mariadbd.* or set MYSQL_URL/,
    );
  });

  it('names NATS, its address and the start command when NATS is unreachable', async () => {
    // A database of its own: the server's shared one may carry other branches' migrations.
    const mysqlUrl = testDatabaseUrl('settle_t_main');
    const { status, stderr } = runMain({ NATS_URL: 'nats://127.0.0.1:1', MYSQL_URL: mysqlUrl });
    await dropDatabase(mysqlUrl);
    expect(status).toBe(3);
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(
      /NATS is unreachable at nats:\/\/127\.0\.0\.1:1 .*nats-server .* or set NATS_URL/,
    );
  });

  it('lists every configuration problem at once', () => {
    const { status, stderr } = runMain({
      SETTLE_GRPC_ADDR: 'nope',
      PSP_SUCCESS_RATE: '3',
      RETRY_BACKOFF_MS: '1,2,3,4,5,6',
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/SETTLE_GRPC_ADDR: must be host:port/);
    expect(stderr).toMatch(/PSP_SUCCESS_RATE: .*<=1/);
    expect(stderr).toMatch(/RETRY_BACKOFF_MS: .*<=5/);
  });

  it('refuses, run alone, a webhook secret or admin token published in this repository', () => {
    for (const secret of [undefined, 'whsec_settle_local_development']) {
      const env: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'silent' };
      delete env['PSP_WEBHOOK_SECRET'];
      if (secret !== undefined) env['PSP_WEBHOOK_SECRET'] = secret;
      const result = spawnSync(
        process.execPath,
        ['--import', 'tsx', 'src/main.ts', '--settle-only'],
        {
          env: { ...env, ADMIN_TOKEN: 'compose-admin-token-change-me' },
          encoding: 'utf8',
          timeout: 30_000,
        },
      );
      expect(result.status).toBe(2);
      expect(result.stderr).toMatch(/PSP_WEBHOOK_SECRET: is unset or a value published/);
      expect(result.stderr).toMatch(/ADMIN_TOKEN: is an example published/);
    }
    // A local run with the PSP mock in the process keeps its default: nothing outside signs.
    expect(loadConfig(localRunDefaults({})).PSP_WEBHOOK_SECRET).toBe(
      'whsec_settle_local_development',
    );
  });

  it('refuses ports out of range, URLs that do not parse and numbers that are not, naming each', () => {
    const { status, stderr } = runMain({
      SETTLE_GRPC_ADDR: '127.0.0.1:99999',
      MYSQL_URL: 'mysql://root@127.0.0.1:abc/x',
      NATS_URL: 'nats://127.0.0.1:notaport',
      SHUTDOWN_GRACE_MS: 'soon',
      JANITOR_BATCH_MAX: '1.5',
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/SETTLE_GRPC_ADDR: the port must be 0-65535/);
    expect(stderr).toMatch(/MYSQL_URL: must be mysql:\/\/.*with a port of 0-65535/);
    expect(stderr).toMatch(/NATS_URL: must be nats:\/\/host:port.*with a port of 0-65535/);
    expect(stderr).toMatch(/SHUTDOWN_GRACE_MS: must be a number/);
    expect(stderr).toMatch(/JANITOR_BATCH_MAX: must be a whole number/);
  });

  it('tells a login MySQL refuses from a server that is down, naming MYSQL_URL', () => {
    const url = new URL(testDatabaseUrl('settle_t_login'));
    url.username = 'settle_no_such_user';
    url.password = 'wrong';
    const { status, stderr } = runMain({ MYSQL_URL: url.toString() });
    expect(status).toBe(1);
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(
      /MySQL at .* refused the login \(.*\); check the user, password .*MYSQL_URL/,
    );
    expect(stderr).not.toMatch(/unreachable|start-stop-daemon/);
  });

  it('names SETTLE_HTTP_ADDR when its port is taken', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as net.AddressInfo).port;
    const mysqlUrl = testDatabaseUrl('settle_t_busy');
    const namespace = `tbusy${Date.now() % 100_000}`;
    try {
      const { status, stderr } = runMain({
        SETTLE_HTTP_ADDR: `127.0.0.1:${port}`,
        SETTLE_GRPC_ADDR: `127.0.0.1:${await freePort()}`,
        MYSQL_URL: mysqlUrl,
        NATS_URL: inject('natsUrl'),
        SETTLE_NAMESPACE: namespace,
      });
      expect(status).toBe(1);
      expect(stderr).toContain(`HTTP address 127.0.0.1:${port} is in use; set SETTLE_HTTP_ADDR`);
    } finally {
      taken.close();
      await dropDatabase(mysqlUrl);
      // The node made its streams before it found the port taken.
      await removeNamespace(
        loadConfig({ SETTLE_NAMESPACE: namespace, NATS_URL: inject('natsUrl') }),
      );
    }
  });

  it('names SETTLE_GRPC_ADDR when its port is taken, in one line (grpc-js adds none)', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as net.AddressInfo).port;
    const mysqlUrl = testDatabaseUrl('settle_t_busy');
    const namespace = `tbusyg${Date.now() % 100_000}`;
    try {
      const { status, stderr } = runMain({
        SETTLE_GRPC_ADDR: `127.0.0.1:${port}`,
        SETTLE_HTTP_ADDR: `127.0.0.1:${await freePort()}`,
        MYSQL_URL: mysqlUrl,
        NATS_URL: inject('natsUrl'),
        SETTLE_NAMESPACE: namespace,
        // grpc-js's own lines would show at this level.
        LOG_LEVEL: 'info',
      });
      expect(status).toBe(1);
      expect(stderr).toBe(
        `settle: failed to start: address 127.0.0.1:${port} is in use; set SETTLE_GRPC_ADDR`,
      );
    } finally {
      taken.close();
      await dropDatabase(mysqlUrl);
      await removeNamespace(
        loadConfig({ SETTLE_NAMESPACE: namespace, NATS_URL: inject('natsUrl') }),
      );
    }
  });

  it('says so when NATS runs without JetStream', async () => {
    if (!existsSync(NATS_SERVER)) return; // a container without the binary: nothing to start
    const port = await freePort();
    const nats = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
    const mysqlUrl = testDatabaseUrl('settle_t_nojs');
    try {
      await waitForPort(port);
      const { status, stderr } = runMain({
        NATS_URL: `nats://127.0.0.1:${port}`,
        MYSQL_URL: mysqlUrl,
      });
      expect(status).toBe(3);
      expect(stderr).toMatch(
        /NATS at 127\.0\.0\.1:\d+ runs without JetStream; start nats-server with -js/,
      );
    } finally {
      nats.kill();
      await dropDatabase(mysqlUrl);
    }
  });
});

const NATS_SERVER = '/usr/sbin/nats-server';

/** Resolves once something accepts connections on the port (bounded: 5 s). */
async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 100; i += 1) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${port}`);
}

describe('a local run (npm start: Settle with the PSP mock)', () => {
  it('opens the admin reads unless ADMIN_READONLY_OPEN is set; the token stays unset', () => {
    const local = loadConfig(localRunDefaults({}));
    expect(local.ADMIN_READONLY_OPEN).toBe(true);
    expect(local.ADMIN_TOKEN).toBeUndefined();
    expect(loadConfig(localRunDefaults({ ADMIN_READONLY_OPEN: 'false' })).ADMIN_READONLY_OPEN).toBe(
      false,
    );
    // Settle alone (--settle-only, Docker) reads the environment as it is: closed.
    expect(loadConfig({}).ADMIN_READONLY_OPEN).toBe(false);
  });
});
