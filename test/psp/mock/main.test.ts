/**
 * Goal: `npm run start:psp` behaves as a standalone service: it starts, serves, stops cleanly on
 * SIGTERM, and fails with one clear line (and a non-zero exit) on a bad config or an unreachable
 * MySQL.
 * Method: spawn `node --import tsx src/psp/mock/main.ts` as a child process with a controlled
 * environment, wait for its health check (deadline), signal it, and check the exit code and
 * output.
 */
import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
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
  return { child, exited, output: () => stdout };
}

const databases: string[] = [];
afterAll(async () => {
  for (const url of databases) await dropDatabase(url);
});

describe('src/psp/mock/main.ts', () => {
  it('exits 1 with one line naming the address when MySQL is unreachable', async () => {
    const port = await closedPort();
    const { exited } = startMain({ PSP_MYSQL_URL: `mysql://root@127.0.0.1:${port}/settle_psp` });
    const exit = await exited;
    expect(exit.code).toBe(1);
    const lines = exit.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`MySQL is unreachable at 127.0.0.1:${port}`);
    expect(lines[0]).toContain('PSP_MYSQL_URL');
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
