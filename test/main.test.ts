/**
 * Goal: `npm start` fails clearly when it cannot work: one line naming the unreachable
 * dependency, its address, how to start it and how long the node waited for it (exit 3), or every
 * configuration problem at once (exit 2). A node started before MySQL and NATS waits for them
 * (STARTUP_WAIT_MS), logging each wait with the error code, and comes up once they answer; a
 * signal ends the wait at once. A local run with the PSP mock opens the admin reads by default.
 * Method: run src/main.ts as a real child process with broken settings, or with MySQL and NATS
 * behind TCP proxies started later on ports nothing listened on; the local defaults as a function.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, inject, it } from 'vitest';
import {
  ConfigError,
  loadConfig,
  localRunDefaults,
  publishedSecretProblems,
} from '../src/config.js';
import { startTcpProxy, type TcpProxy } from '../src/chaos/tcp-proxy.js';
import { dropDatabase, freePort, removeNamespace, testDatabaseUrl } from './support/harness.js';
import { MAIN_TEST_SECRET, startMain } from './support/main-process.js';

function runMain(env: Record<string, string>) {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', '--settle-only'], {
    env: { ...process.env, LOG_LEVEL: 'silent', PSP_WEBHOOK_SECRET: MAIN_TEST_SECRET, ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { status: result.status, stderr: result.stderr.trim(), stdout: result.stdout.trim() };
}

/** What loadConfig refuses `env` for; [] when it accepts it. */
function problemsOf(env: Record<string, string>): readonly string[] {
  try {
    loadConfig(env);
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
}

/** The node's log lines that report a wait for a dependency (pino JSON on stdout). */
function waitLines(stdout: string): Array<Record<string, unknown>> {
  return stdout
    .split('\n')
    .filter((line) => line.includes('"msg":"waiting for '))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('main', () => {
  it('names MySQL, its address and the start command when MySQL is unreachable; STARTUP_WAIT_MS=0 does not wait', () => {
    const { status, stderr, stdout } = runMain({
      MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_unreachable',
      STARTUP_WAIT_MS: '0',
      LOG_LEVEL: 'warn',
    });
    expect(status).toBe(3);
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(
      /MySQL is unreachable at 127\.0\.0\.1:1 .*start-stop-daemon .*mariadbd.* or set MYSQL_URL; did not wait for it \(STARTUP_WAIT_MS=0\)$/,
    );
    expect(waitLines(stdout)).toEqual([]);
  });

  it('names NATS, its address and the start command when NATS is unreachable; STARTUP_WAIT_MS=0 does not wait', async () => {
    // A database of its own: the server's shared one may carry other branches' migrations.
    const mysqlUrl = testDatabaseUrl('settle_t_main');
    const { status, stderr, stdout } = runMain({
      NATS_URL: 'nats://127.0.0.1:1',
      MYSQL_URL: mysqlUrl,
      STARTUP_WAIT_MS: '0',
      LOG_LEVEL: 'warn',
    });
    await dropDatabase(mysqlUrl);
    expect(status).toBe(3);
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(
      /NATS is unreachable at nats:\/\/127\.0\.0\.1:1 .*nats-server .* or set NATS_URL; did not wait for it \(STARTUP_WAIT_MS=0\)$/,
    );
    expect(waitLines(stdout)).toEqual([]);
  });

  it('waits for MySQL until STARTUP_WAIT_MS has passed, logging each wait with its code, then exits 3 in one line', async () => {
    const port = await freePort(); // nothing listens there: every connection is refused
    const { status, stderr, stdout } = runMain({
      MYSQL_URL: `mysql://root@127.0.0.1:${port}/settle_unreachable`,
      STARTUP_WAIT_MS: '1500',
      LOG_LEVEL: 'warn',
    });
    expect(status).toBe(3);
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(
      new RegExp(
        `^settle: MySQL is unreachable at 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED.*\\); start it .* ` +
          'or set MYSQL_URL; waited 1\\.\\d s for it \\(STARTUP_WAIT_MS=1500\\)$',
      ),
    );
    const waits = waitLines(stdout);
    expect(waits.length).toBeGreaterThanOrEqual(2);
    for (const [index, wait] of waits.entries()) {
      expect(wait).toMatchObject({
        level: 'warn',
        dependency: 'MySQL',
        address: `127.0.0.1:${port}`,
        code: 'ECONNREFUSED',
        attempt: index + 1,
      });
      expect(wait['msg']).toMatch(
        new RegExp(
          `^waiting for MySQL at 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\): try ${index + 1} failed`,
        ),
      );
    }
    // The error code, not a stack.
    expect(stdout).not.toMatch(/\bat .*\.(ts|js):\d+/);
    expect(stdout).not.toContain('"err"');
  });

  it('comes up and serves once MySQL, then NATS, appear within STARTUP_WAIT_MS', async () => {
    // Ports nothing listens on yet; the proxies to the real servers open on them later.
    const [mysqlPort, natsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
    const mysqlUrl = testDatabaseUrl('settle_t_wait');
    const real = { mysql: new URL(mysqlUrl), nats: new URL(inject('natsUrl')) };
    const namespace = `twait${Date.now() % 100_000}`;
    const proxies: TcpProxy[] = [];
    const node = startMain({
      MYSQL_URL: withHostPort(mysqlUrl, '127.0.0.1', mysqlPort),
      NATS_URL: `nats://127.0.0.1:${natsPort}`,
      SETTLE_GRPC_ADDR: `127.0.0.1:${await freePort()}`,
      SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
      SETTLE_NAMESPACE: namespace,
      STARTUP_WAIT_MS: '60000',
      LOG_LEVEL: 'warn',
    });
    try {
      await node.waitForLine(
        new RegExp(`waiting for MySQL at 127\\.0\\.0\\.1:${mysqlPort} \\(ECONNREFUSED\\)`),
      );
      // While it waits nothing listens: a probe of /healthz finds no node, not a healthy one.
      await expect(fetch(`http://127.0.0.1:${httpPort}/healthz`)).rejects.toThrow();
      proxies.push(
        await startTcpProxy(
          { host: real.mysql.hostname, port: Number(real.mysql.port || 3306) },
          { port: mysqlPort },
        ),
      );
      await node.waitForLine(
        new RegExp(`waiting for NATS at nats://127\\.0\\.0\\.1:${natsPort} \\(ECONNREFUSED\\)`),
      );
      proxies.push(
        await startTcpProxy(
          { host: real.nats.hostname, port: Number(real.nats.port || 4222) },
          { port: natsPort },
        ),
      );
      await node.waitForLine(/^Settle is up: /);
      const health = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
      expect(health.status).toBe(200);
      expect(await health.json()).toMatchObject({ status: 'ok', mysql: 'up', nats: 'up' });
      node.child.kill('SIGTERM');
      expect(await node.exited).toEqual({ code: 0, signal: null });
    } finally {
      node.child.kill('SIGKILL');
      for (const proxy of proxies) await proxy.close();
      await dropDatabase(mysqlUrl);
      await removeNamespace(
        loadConfig({ SETTLE_NAMESPACE: namespace, NATS_URL: inject('natsUrl') }),
      );
    }
  });

  it('exits at once, with 0, on SIGTERM while it waits', async () => {
    const port = await freePort();
    const node = startMain({
      MYSQL_URL: `mysql://root@127.0.0.1:${port}/settle_unreachable`,
      STARTUP_WAIT_MS: '60000',
      LOG_LEVEL: 'info',
    });
    try {
      await node.waitForLine(/waiting for MySQL at .*\(ECONNREFUSED\)/);
      const signalled = Date.now();
      node.child.kill('SIGTERM');
      expect(await node.exited).toEqual({ code: 0, signal: null });
      expect(Date.now() - signalled).toBeLessThan(2_000);
      expect(node.output()).toContain('SIGTERM received while waiting for MySQL and NATS: exiting');
    } finally {
      node.child.kill('SIGKILL');
    }
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

  it('refuses a published secret as the one being rotated out too', () => {
    const own = 'whsec_0123456789abcdef0123456789';
    expect(publishedSecretProblems(loadConfig({ PSP_WEBHOOK_SECRET: own }))).toEqual([]);
    expect(
      publishedSecretProblems(
        loadConfig({
          PSP_WEBHOOK_SECRET: own,
          PSP_WEBHOOK_SECRET_PREVIOUS: 'whsec_old_one_of_our_own',
        }),
      ),
    ).toEqual([]);
    expect(
      publishedSecretProblems(
        loadConfig({
          PSP_WEBHOOK_SECRET: own,
          PSP_WEBHOOK_SECRET_PREVIOUS: 'whsec_settle_local_development',
        }),
      ),
    ).toEqual([expect.stringMatching(/^PSP_WEBHOOK_SECRET_PREVIOUS: is a value published/)]);
    expect(() => loadConfig({ PSP_WEBHOOK_SECRET_PREVIOUS: 'short' })).toThrow(
      /PSP_WEBHOOK_SECRET_PREVIOUS/,
    );
  });

  it('refuses a request_id window shorter than an hour, or than an unpaid order lives', () => {
    // Past the window a retried request creates a new payment: while the first can still be paid,
    // that is a second charge.
    expect(() => loadConfig({ IDEMPOTENCY_TTL_MS: '1' })).toThrow(
      /IDEMPOTENCY_TTL_MS: .*>=3600000/,
    );
    expect(() =>
      loadConfig({ IDEMPOTENCY_TTL_MS: '86400000', ORDER_EXPIRY_MS: String(7 * 86_400_000) }),
    ).toThrow(/IDEMPOTENCY_TTL_MS: 86400000 is shorter than ORDER_EXPIRY_MS \(604800000\)/);
    expect(
      loadConfig({ IDEMPOTENCY_TTL_MS: '3600000', ORDER_EXPIRY_MS: '3600000' }).IDEMPOTENCY_TTL_MS,
    ).toBe(3_600_000);
  });

  it('refuses a breaker reset not above the PSP call deadline, naming both and their values', () => {
    // An open breaker that half-opens before the calls made while it was closed have timed out is
    // closed or reopened by their late answers, not by its probe.
    expect(problemsOf({ PSP_CALL_TIMEOUT_MS: '3000', PSP_BREAKER_RESET_MS: '3000' })).toEqual([
      expect.stringMatching(
        /^PSP_BREAKER_RESET_MS: 3000 is not above PSP_CALL_TIMEOUT_MS \(3000\): .*raise PSP_BREAKER_RESET_MS above PSP_CALL_TIMEOUT_MS$/,
      ),
    ]);
    expect(problemsOf({ PSP_CALL_TIMEOUT_MS: '20000' })).toEqual([
      expect.stringMatching(
        /^PSP_BREAKER_RESET_MS: 5000 is not above PSP_CALL_TIMEOUT_MS \(20000\)/,
      ),
    ]);
    expect(problemsOf({ PSP_CALL_TIMEOUT_MS: '3000', PSP_BREAKER_RESET_MS: '3001' })).toEqual([]);
  });

  it('refuses a breaker volume threshold more calls than a hung PSP can get in one window', () => {
    // 2 calls in flight, each waiting 5 s: at most 2 × ceil(10 s / 5 s) = 4 calls a window.
    const hung = {
      PSP_IN_FLIGHT_MAX: '2',
      PSP_CALL_TIMEOUT_MS: '5000',
      PSP_BREAKER_RESET_MS: '6000',
    };
    expect(problemsOf({ ...hung, PSP_BREAKER_VOLUME_THRESHOLD: '5' })).toEqual([
      expect.stringMatching(
        /^PSP_BREAKER_VOLUME_THRESHOLD: 5 is more than the 4 calls .* PSP_IN_FLIGHT_MAX \(2\) .* PSP_CALL_TIMEOUT_MS \(5000\): the breaker would never open on a hung PSP; lower it to at most 4/,
      ),
    ]);
    expect(problemsOf({ ...hung, PSP_BREAKER_VOLUME_THRESHOLD: '4' })).toEqual([]);
    // A deadline longer than the window: one call per slot and window.
    expect(
      problemsOf({
        PSP_IN_FLIGHT_MAX: '4',
        PSP_CALL_TIMEOUT_MS: '20000',
        PSP_BREAKER_RESET_MS: '21000',
        PSP_BREAKER_VOLUME_THRESHOLD: '5',
      }),
    ).toEqual([expect.stringMatching(/^PSP_BREAKER_VOLUME_THRESHOLD: 5 is more than the 4 calls/)]);
  });

  it('refuses a breaker error percent no failure share can exceed', () => {
    // opossum opens when the failure share is above the threshold: never, at 100.
    expect(problemsOf({ PSP_BREAKER_ERROR_PERCENT: '100' })).toEqual([
      expect.stringMatching(/^PSP_BREAKER_ERROR_PERCENT: must be at most 99: /),
    ]);
    expect(loadConfig({ PSP_BREAKER_ERROR_PERCENT: '99' }).PSP_BREAKER_ERROR_PERCENT).toBe(99);
  });

  it('refuses statement deadlines not above the lock wait, naming both and their values', () => {
    // A lock wait cut by the client's deadline closes the connection with the outcome unknown,
    // where MySQL would have answered a definite lock wait timeout.
    expect(
      problemsOf({
        MYSQL_LOCK_WAIT_TIMEOUT_S: '30',
        MYSQL_STATEMENT_TIMEOUT_MS: '30000',
        MYSQL_BULK_STATEMENT_TIMEOUT_MS: '20000',
      }),
    ).toEqual([
      expect.stringMatching(
        /^MYSQL_STATEMENT_TIMEOUT_MS: 30000 is not above MYSQL_LOCK_WAIT_TIMEOUT_S \(30, 30000 ms\): .*raise MYSQL_STATEMENT_TIMEOUT_MS above 30000/,
      ),
      expect.stringMatching(
        /^MYSQL_BULK_STATEMENT_TIMEOUT_MS: 20000 is not above MYSQL_LOCK_WAIT_TIMEOUT_S \(30, 30000 ms\)/,
      ),
    ]);
    expect(
      problemsOf({ MYSQL_LOCK_WAIT_TIMEOUT_S: '30', MYSQL_STATEMENT_TIMEOUT_MS: '30001' }),
    ).toEqual([]);
  });

  it('refuses a statement deadline not above the classification lock wait, naming both', () => {
    // Reconciliation waits for its classification lock in GET_LOCK steps of 2 s, statements on a
    // pool with this deadline: one cut by it closes the connection, and the run fails instead of
    // waiting for the run that holds the lock.
    const lockWaitS = { MYSQL_LOCK_WAIT_TIMEOUT_S: '1' };
    expect(problemsOf({ ...lockWaitS, MYSQL_STATEMENT_TIMEOUT_MS: '2000' })).toEqual([
      expect.stringMatching(
        /^MYSQL_STATEMENT_TIMEOUT_MS: 2000 is not above the reconciliation classification lock's GET_LOCK wait \(2 s, 2000 ms\): .*raise MYSQL_STATEMENT_TIMEOUT_MS above 2000$/,
      ),
    ]);
    expect(problemsOf({ ...lockWaitS, MYSQL_STATEMENT_TIMEOUT_MS: '1500' })).toEqual([
      expect.stringMatching(/^MYSQL_STATEMENT_TIMEOUT_MS: 1500 is not above the reconciliation/),
    ]);
    expect(problemsOf({ ...lockWaitS, MYSQL_STATEMENT_TIMEOUT_MS: '2001' })).toEqual([]);
  });

  it('refuses a janitor lease not above its interval, naming both and their values', () => {
    // A claim that ends before the next pass leaves a quiet order to be checked on every pass.
    expect(problemsOf({ JANITOR_INTERVAL_MS: '5000', JANITOR_LEASE_MS: '5000' })).toEqual([
      expect.stringMatching(
        /^JANITOR_LEASE_MS: 5000 is not above JANITOR_INTERVAL_MS \(5000\): .*raise JANITOR_LEASE_MS above JANITOR_INTERVAL_MS$/,
      ),
    ]);
    expect(problemsOf({ JANITOR_INTERVAL_MS: '5000', JANITOR_LEASE_MS: '5001' })).toEqual([]);
  });

  it('reports every settings pair that disagrees at once, and exits 2', () => {
    const { status, stderr } = runMain({
      // Were the settings accepted, the node would fail fast on this instead of starting.
      MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_unreachable',
      STARTUP_WAIT_MS: '0',
      PSP_CALL_TIMEOUT_MS: '8000',
      PSP_BREAKER_RESET_MS: '2000',
      JANITOR_INTERVAL_MS: '60000',
      JANITOR_LEASE_MS: '30000',
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/PSP_BREAKER_RESET_MS: 2000 is not above PSP_CALL_TIMEOUT_MS \(8000\)/);
    expect(stderr).toMatch(/JANITOR_LEASE_MS: 30000 is not above JANITOR_INTERVAL_MS \(60000\)/);
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

  it('refuses TRUSTED_PROXIES entries that are no address or range, naming each', () => {
    const { status, stderr } = runMain({
      // Were the setting accepted, the node would fail fast on this instead of starting.
      MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_unreachable',
      STARTUP_WAIT_MS: '0',
      TRUSTED_PROXIES: '10.0.0.0/8, proxy.internal, 10.0.0.0/33, ::/0, 2001:db8::/48',
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/TRUSTED_PROXIES: "proxy\.internal" is not an IP address or CIDR range/);
    expect(stderr).toMatch(/TRUSTED_PROXIES: "10\.0\.0\.0\/33": the prefix length must be 1-32/);
    expect(stderr).toMatch(/TRUSTED_PROXIES: "::\/0" trusts every address/);
    expect(stderr).not.toMatch(/"10\.0\.0\.0\/8"|2001:db8::\/48/);
    expect(problemsOf({ TRUSTED_PROXIES: ' 10.0.0.0/8 ,127.0.0.1,2001:db8::/48' })).toEqual([]);
    expect(loadConfig({ TRUSTED_PROXIES: ' 10.0.0.0/8 ,127.0.0.1,' }).TRUSTED_PROXIES).toEqual([
      '10.0.0.0/8',
      '127.0.0.1',
    ]);
    expect(loadConfig({}).TRUSTED_PROXIES).toEqual([]);
    const many = Array.from({ length: 65 }, (_, i) => `10.0.${i}.1`).join(',');
    expect(problemsOf({ TRUSTED_PROXIES: many })).toEqual([
      expect.stringMatching(/^TRUSTED_PROXIES: at most 64 entries/),
    ]);
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

  it('fails at once, without waiting or showing the password, when NATS refuses the login', async () => {
    if (!existsSync(NATS_SERVER)) return; // a container without the binary: nothing to start
    const port = await freePort();
    const nats = spawn(
      NATS_SERVER,
      ['-a', '127.0.0.1', '-p', String(port), '-js', '--user', 'settle', '--pass', 'right-pass'],
      { stdio: 'ignore' },
    );
    const mysqlUrl = testDatabaseUrl('settle_t_natsauth');
    try {
      await waitForPort(port);
      const started = Date.now();
      // The default STARTUP_WAIT_MS (60 s) would outlast runMain's 30 s if a refusal were waited.
      const { status, stderr } = runMain({
        NATS_URL: `nats://settle:wrong-pass@127.0.0.1:${port}`,
        MYSQL_URL: mysqlUrl,
        STARTUP_WAIT_MS: '60000',
      });
      expect(status).toBe(1);
      expect(Date.now() - started).toBeLessThan(20_000);
      expect(stderr).toMatch(
        /NATS at nats:\/\/127\.0\.0\.1:\d+ refused the login \(Authorization Violation\); check the user, password or token in NATS_URL/,
      );
      expect(stderr).not.toContain('wrong-pass');
    } finally {
      nats.kill();
      await dropDatabase(mysqlUrl);
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

function withHostPort(url: string, host: string, port: number): string {
  const parsed = new URL(url);
  parsed.hostname = host;
  parsed.port = String(port);
  return parsed.toString();
}

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
