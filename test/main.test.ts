/**
 * Goal: `npm start` fails fast and clearly when it cannot work: one line naming the unreachable
 * dependency, its address and how to start it (exit 3), or every configuration problem at once
 * (exit 2); a local run with the PSP mock opens the admin reads by default. Method: run
 * src/main.ts as a real child process with broken settings; the local defaults as a function.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { loadConfig, localRunDefaults } from '../src/config.js';
import { dropDatabase, testDatabaseUrl } from './support/harness.js';

function runMain(env: Record<string, string>) {
  const result = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts', '--settle-only'], {
    env: { ...process.env, LOG_LEVEL: 'silent', ...env },
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
});

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
