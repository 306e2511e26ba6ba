/**
 * Goal: `npm run start:psp` behaves as a standalone service: it starts, serves, stops cleanly on
 * SIGTERM, and fails with one clear line (and a non-zero exit) on a bad config or an unreachable
 * MySQL. Started before its MySQL server, it waits for it as a Settle node does
 * (STARTUP_WAIT_MS), logging each wait with the error code, and comes up once it answers; it
 * exits 3 when the wait ends first, at once on a refused login, and at once (0) on SIGTERM.
 * Method: spawn `node --import tsx src/psp/mock/main.ts` as a child process with a controlled
 * environment, wait for its health check or a log line (deadline), signal it, and check the exit
 * code and output; MySQL appears later as a TCP proxy to the real server, opened on a port
 * nothing listened on.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startTcpProxy, type TcpProxy } from '../../../src/chaos/tcp-proxy.js';
import { closedPort, dropDatabase, uniqueDatabaseUrl, waitFor } from '../psp-support.js';

type Exit = { code: number | null; stdout: string; stderr: string };

function startMain(env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/psp/mock/main.ts'], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<Exit>((resolve) =>
    child.on('exit', (code) => resolve({ code, stdout, stderr })),
  );
  const timer = setTimeout(() => child.kill('SIGKILL'), 25_000);
  void exited.then(() => clearTimeout(timer));
  /** Resolves with the first stdout line matching `pattern`; fails if the process exits first. */
  const waitForLine = (pattern: RegExp) =>
    waitFor(
      () => {
        const found = stdout.split('\n').find((line) => pattern.test(line));
        if (found === undefined && child.exitCode !== null) {
          throw new Error(`exited ${child.exitCode} before ${pattern}:\n${stdout}${stderr}`);
        }
        return found;
      },
      { timeoutMs: 20_000, intervalMs: 50, what: String(pattern) },
    );
  return { child, exited, output: () => stdout, waitForLine };
}

/** The mock's lines that report a wait for MySQL. */
function waitLines(stdout: string): string[] {
  return stdout.split('\n').filter((line) => line.includes(' psp mock: waiting for MySQL at '));
}

const databases: string[] = [];
afterAll(async () => {
  for (const url of databases) await dropDatabase(url);
});

describe('src/psp/mock/main.ts', () => {
  it('exits 3 with one line naming the address when MySQL is unreachable; STARTUP_WAIT_MS=0 does not wait', async () => {
    const port = await closedPort();
    const { exited } = startMain({
      PSP_MYSQL_URL: `mysql://root@127.0.0.1:${port}/settle_psp`,
      STARTUP_WAIT_MS: '0',
    });
    const exit = await exited;
    expect(exit.code).toBe(3);
    const lines = exit.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(
        `^psp mock: MySQL is unreachable at 127\\.0\\.0\\.1:${port} .*or set PSP_MYSQL_URL; ` +
          'did not wait for it \\(STARTUP_WAIT_MS=0\\)$',
      ),
    );
    expect(waitLines(exit.stdout)).toEqual([]);
  });

  it('waits for MySQL until STARTUP_WAIT_MS has passed, logging each wait with its code, then exits 3 in one line', async () => {
    const port = await closedPort(); // nothing listens there: every connection is refused
    const { exited } = startMain({
      PSP_MYSQL_URL: `mysql://root@127.0.0.1:${port}/settle_psp`,
      STARTUP_WAIT_MS: '1500',
    });
    const exit = await exited;
    expect(exit.code).toBe(3);
    const lines = exit.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(
        `^psp mock: MySQL is unreachable at 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED.*\\); ` +
          '.*or set PSP_MYSQL_URL; waited 1\\.\\d s for it \\(STARTUP_WAIT_MS=1500\\)$',
      ),
    );
    const waits = waitLines(exit.stdout);
    expect(waits.length).toBeGreaterThanOrEqual(2);
    for (const [index, wait] of waits.entries()) {
      expect(wait).toMatch(
        new RegExp(
          `psp mock: waiting for MySQL at 127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\): ` +
            `try ${index + 1} failed, next in \\d+\\.\\d s, giving up in \\d+\\.\\d s \\(STARTUP_WAIT_MS\\)$`,
        ),
      );
    }
  });

  it('comes up and serves once MySQL appears within STARTUP_WAIT_MS', async () => {
    const mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
    databases.push(mysqlUrl);
    const real = new URL(mysqlUrl);
    const [mysqlPort, grpcPort, httpPort] = [
      await closedPort(),
      await closedPort(),
      await closedPort(),
    ];
    const proxied = new URL(mysqlUrl);
    proxied.hostname = '127.0.0.1';
    proxied.port = String(mysqlPort);
    const dir = await mkdtemp(path.join(tmpdir(), 'settle-psp-wait-'));
    let proxy: TcpProxy | undefined;
    const { child, exited, waitForLine } = startMain({
      PSP_MYSQL_URL: proxied.toString(),
      PSP_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      PSP_HTTP_ADDR: `127.0.0.1:${httpPort}`,
      PSP_SETTLEMENT_AT: 'off',
      SETTLEMENT_DIR: dir,
      STARTUP_WAIT_MS: '60000',
    });
    try {
      await waitForLine(
        new RegExp(
          `psp mock: waiting for MySQL at 127\\.0\\.0\\.1:${mysqlPort} \\(ECONNREFUSED\\)`,
        ),
      );
      // While it waits nothing listens: a probe of /healthz finds no mock, not a healthy one.
      await expect(fetch(`http://127.0.0.1:${httpPort}/healthz`)).rejects.toThrow();
      proxy = await startTcpProxy(
        { host: real.hostname, port: Number(real.port || 3306) },
        { port: mysqlPort },
      );
      await waitForLine(/psp mock: MySQL at 127\.0\.0\.1:\d+ answered on try \d+$/);
      await waitForLine(new RegExp(`psp mock: gRPC 127\\.0\\.0\\.1:${grpcPort}`));
      expect((await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status).toBe(200);
      child.kill('SIGTERM');
      expect((await exited).code).toBe(0);
    } finally {
      child.kill('SIGKILL');
      await proxy?.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('exits at once, with 0, on SIGTERM while it waits', async () => {
    const port = await closedPort();
    const { child, exited, waitForLine } = startMain({
      PSP_MYSQL_URL: `mysql://root@127.0.0.1:${port}/settle_psp`,
      STARTUP_WAIT_MS: '60000',
    });
    try {
      await waitForLine(/psp mock: waiting for MySQL at .*\(ECONNREFUSED\)/);
      const signalled = Date.now();
      child.kill('SIGTERM');
      const exit = await exited;
      expect(exit.code).toBe(0);
      expect(Date.now() - signalled).toBeLessThan(2_000);
      expect(exit.stdout).toContain('psp mock: SIGTERM received while waiting for MySQL: exiting');
      expect(exit.stderr).toBe('');
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('fails at once, exit 1, when MySQL refuses the login, naming PSP_MYSQL_URL', async () => {
    const url = new URL(uniqueDatabaseUrl('settle_psp_t'));
    url.username = 'settle_no_such_user';
    url.password = 'wrong';
    const started = Date.now();
    // The 60 s wait would outlast the child's 25 s limit if a refusal were waited out.
    const { exited } = startMain({ PSP_MYSQL_URL: url.toString(), STARTUP_WAIT_MS: '60000' });
    const exit = await exited;
    expect(exit.code).toBe(1);
    expect(Date.now() - started).toBeLessThan(20_000);
    const lines = exit.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /MySQL at .* refused the login \(.*\); check the user, password .*PSP_MYSQL_URL/,
    );
    expect(waitLines(exit.stdout)).toEqual([]);
  });

  it('exits 2 listing every config problem, as Settle does', async () => {
    const { exited } = startMain({ PSP_SUCCESS_RATE: '7', PSP_GRPC_ADDR: 'nowhere' });
    const exit = await exited;
    expect(exit.code).toBe(2);
    expect(exit.stderr).toContain('PSP_SUCCESS_RATE');
    expect(exit.stderr).toContain('PSP_GRPC_ADDR');
  });

  it('exits 2 naming SETTLEMENT_DIR when it cannot make the settlement folder', async () => {
    const mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
    databases.push(mysqlUrl);
    const { exited } = startMain({
      PSP_MYSQL_URL: mysqlUrl,
      SETTLEMENT_DIR: '/proc/settle-no-such-folder/settlements',
    });
    const exit = await exited;
    expect(exit.code).toBe(2);
    expect(exit.stderr).toContain(
      'SETTLEMENT_DIR: cannot make /proc/settle-no-such-folder (ENOENT); set it to a folder this process can write',
    );
    // Told before anything else started: the mock made no database.
    expect(exit.stdout).not.toContain('gRPC');
  });

  it('serves until SIGTERM, then stops and exits 0', async () => {
    const mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
    databases.push(mysqlUrl);
    const [grpcPort, httpPort] = [await closedPort(), await closedPort()];
    const { child, exited, output } = startMain({
      PSP_MYSQL_URL: mysqlUrl,
      PSP_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      PSP_HTTP_ADDR: `127.0.0.1:${httpPort}`,
      // Otherwise the mock writes the last days' settlement files into ./.settle/settlements.
      PSP_SETTLEMENT_AT: 'off',
    });
    await waitFor(
      async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status === 200,
      { timeoutMs: 20_000, intervalMs: 100, what: 'the health check' },
    );
    expect(output()).toContain(`gRPC 127.0.0.1:${grpcPort}`);
    child.kill('SIGTERM');
    const exit = await exited;
    expect(exit.code).toBe(0);
    expect(exit.stdout).toContain('stopped');
  });
});
