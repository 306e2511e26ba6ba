/**
 * Goal: the start-up wait tries a dependency again only when waiting can cure the error, with
 * exponential backoff that is bounded and jittered, within one deadline shared by every
 * dependency; it reports each wait with the error's code, gives up with the last error and how
 * long it waited, and an abort ends it at once, even in the middle of a try. The probes of MySQL
 * and NATS tell an unreachable server (wait) from a refused login (do not). Method: scripted
 * probes with short backoffs and a fixed jitter; the real probes against closed ports and the
 * test servers.
 */
import { describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import {
  FailedPreconditionError,
  UnavailableError,
  type SettleError,
} from '../src/domain/errors.js';
import {
  backoffDelayMs,
  errorCode,
  pspMockDependencies,
  STARTUP_BACKOFF_JITTER,
  STARTUP_BACKOFF_MS_INITIAL,
  STARTUP_BACKOFF_MS_MAX,
  STARTUP_BACKOFF_MULTIPLIER,
  startupDependencies,
  waitForDependencies,
  type Dependency,
  type DependencyWait,
} from '../src/startup-wait.js';
import { dropDatabase, testDatabaseUrl } from './support/harness.js';

const FAST = { initialMs: 10, maxMs: 40, multiplier: 2, jitter: 0 } as const;

function refused(): UnavailableError {
  const cause = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), {
    code: 'ECONNREFUSED',
  });
  return new UnavailableError('MySQL is unreachable at 127.0.0.1:1; start it', { cause });
}

/** A dependency whose probe fails with `errors` in turn, then answers. */
function scripted(name: string, errors: readonly Error[]): Dependency & { tries: () => number } {
  let tries = 0;
  return {
    name,
    address: `${name.toLowerCase()}:1`,
    probe: async () => {
      tries += 1;
      const error = errors[tries - 1];
      if (error !== undefined) throw error;
    },
    tries: () => tries,
  };
}

describe('backoffDelayMs', () => {
  const backoff = {
    initialMs: STARTUP_BACKOFF_MS_INITIAL,
    maxMs: STARTUP_BACKOFF_MS_MAX,
    multiplier: STARTUP_BACKOFF_MULTIPLIER,
    jitter: STARTUP_BACKOFF_JITTER,
  };

  it('doubles from 250 ms up to 5 s, and spreads each pause by ±20 %', () => {
    const middle = [1, 2, 3, 4, 5, 6, 7, 10].map((attempt) =>
      backoffDelayMs(backoff, attempt, 0.5),
    );
    expect(middle).toEqual([250, 500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
    expect(backoffDelayMs(backoff, 1, 0)).toBe(200);
    expect(backoffDelayMs(backoff, 1, 0.999_999)).toBe(300);
    expect(backoffDelayMs(backoff, 30, 0)).toBe(4_000);
    expect(backoffDelayMs(backoff, 30, 0.999_999)).toBe(6_000);
  });
});

describe('waitForDependencies', () => {
  it('waits out unreachable servers in order, reporting each wait with its code', async () => {
    const mysql = scripted('MySQL', [refused(), refused()]);
    const nats = scripted('NATS', [refused()]);
    const waits: DependencyWait[] = [];
    const reachable: unknown[] = [];
    await waitForDependencies([mysql, nats], {
      waitMsMax: 5_000,
      backoff: FAST,
      onWait: (wait) => waits.push(wait),
      onReachable: (event) => reachable.push(event),
    });
    expect([mysql.tries(), nats.tries()]).toEqual([3, 2]);
    expect(
      waits.map(({ dependency, address, code, attempt, delayMs }) => ({
        dependency,
        address,
        code,
        attempt,
        delayMs,
      })),
    ).toEqual([
      { dependency: 'MySQL', address: 'mysql:1', code: 'ECONNREFUSED', attempt: 1, delayMs: 10 },
      { dependency: 'MySQL', address: 'mysql:1', code: 'ECONNREFUSED', attempt: 2, delayMs: 20 },
      { dependency: 'NATS', address: 'nats:1', code: 'ECONNREFUSED', attempt: 1, delayMs: 10 },
    ]);
    for (const wait of waits) {
      expect(wait.leftMs).toBeGreaterThan(0);
      expect(wait.leftMs + wait.waitedMs).toBe(5_000);
    }
    expect(reachable).toEqual([
      { dependency: 'MySQL', address: 'mysql:1', attempt: 3 },
      { dependency: 'NATS', address: 'nats:1', attempt: 2 },
    ]);
  });

  it('gives up once the deadline has passed, with the last message, the time waited and the cause', async () => {
    const mysql = scripted('MySQL', Array.from({ length: 1_000 }, refused));
    const waits: DependencyWait[] = [];
    const started = Date.now();
    const error = (await waitForDependencies([mysql], {
      waitMsMax: 200,
      backoff: FAST,
      onWait: (wait) => waits.push(wait),
    }).catch((e: unknown) => e)) as SettleError;
    const elapsedMs = Date.now() - started;
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.message).toMatch(
      /^MySQL is unreachable at 127\.0\.0\.1:1; start it; waited 0\.[2-4] s for it \(STARTUP_WAIT_MS=200\)$/,
    );
    expect((error.cause as Error).message).toMatch(/^MySQL is unreachable/);
    expect(elapsedMs).toBeGreaterThanOrEqual(200);
    expect(elapsedMs).toBeLessThan(1_000);
    // 10, 20, 40, 40, … ms apart: bounded by maxMs, the last pause cut to the deadline.
    expect(Math.max(...waits.map((wait) => wait.delayMs))).toBe(40);
    expect(mysql.tries()).toBe(waits.length + 1);
  });

  it('tries once and gives up at once when the wait is 0', async () => {
    const mysql = scripted('MySQL', [refused(), refused()]);
    const waits: DependencyWait[] = [];
    const error = (await waitForDependencies([mysql], {
      waitMsMax: 0,
      onWait: (wait) => waits.push(wait),
    }).catch((e: unknown) => e)) as Error;
    expect(error.message).toMatch(/; did not wait for it \(STARTUP_WAIT_MS=0\)$/);
    expect(mysql.tries()).toBe(1);
    expect(waits).toEqual([]);
  });

  it('does not wait out an error waiting cannot cure (a refused login, a bug)', async () => {
    for (const cause of [
      new FailedPreconditionError('MySQL at 127.0.0.1:3306 refused the login'),
      new Error('not a SettleError'),
    ]) {
      const mysql = scripted('MySQL', [cause]);
      const waits: DependencyWait[] = [];
      await expect(
        waitForDependencies([mysql], {
          waitMsMax: 60_000,
          backoff: FAST,
          onWait: (w) => waits.push(w),
        }),
      ).rejects.toBe(cause);
      expect(mysql.tries()).toBe(1);
      expect(waits).toEqual([]);
    }
  });

  it('ends at once when aborted, during a pause or during a try that hangs', async () => {
    const pausing = new AbortController();
    const started = Date.now();
    const duringPause = waitForDependencies(
      [scripted('MySQL', Array.from({ length: 99 }, refused))],
      {
        waitMsMax: 60_000,
        backoff: { initialMs: 30_000, maxMs: 30_000, multiplier: 1, jitter: 0 },
        signal: pausing.signal,
        onWait: () => pausing.abort(new Error('SIGTERM')),
      },
    );
    await expect(duringPause).rejects.toThrow('SIGTERM');

    const hanging = new AbortController();
    const duringTry = waitForDependencies(
      [{ name: 'NATS', address: 'nats:1', probe: () => new Promise<void>(() => {}) }],
      { waitMsMax: 60_000, signal: hanging.signal },
    );
    setTimeout(() => hanging.abort('SIGINT'), 20);
    await expect(duringTry).rejects.toThrow('aborted: SIGINT');
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});

describe('errorCode', () => {
  it("finds the innermost code (mysql2's, Node's), skipping Settle's own, else the error's name", () => {
    expect(errorCode(refused())).toBe('ECONNREFUSED');
    // nats.js: ConnectionError('connection refused') caused by Node's ECONNREFUSED.
    const connection = Object.assign(new Error('connection refused', { cause: refused().cause }), {
      name: 'ConnectionError',
    });
    expect(errorCode(new UnavailableError('NATS is unreachable', { cause: connection }))).toBe(
      'ECONNREFUSED',
    );
    const timeout = Object.assign(new Error('timeout'), { name: 'TimeoutError' });
    expect(errorCode(new UnavailableError('NATS is unreachable', { cause: timeout }))).toBe(
      'TimeoutError',
    );
    expect(errorCode(new UnavailableError('no cause'))).toBe('unknown');
  });
});

describe('startupDependencies', () => {
  it('waits out closed ports (naming the setting to change) and answers for the test servers', async () => {
    const closed = startupDependencies(
      {
        MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_unreachable',
        PSP_MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_psp_unreachable',
        NATS_URL: 'nats://127.0.0.1:1',
      },
      { pspMock: true, nodeName: 'test' },
    );
    expect(closed.map((d) => `${d.name} ${d.address}`)).toEqual([
      'MySQL 127.0.0.1:1',
      'MySQL 127.0.0.1:1',
      'NATS nats://127.0.0.1:1',
    ]);
    const errors = await Promise.all(
      closed.map((dependency) =>
        dependency.probe().catch((error: unknown) => error as SettleError),
      ),
    );
    for (const error of errors) {
      expect(error).toBeInstanceOf(UnavailableError);
      expect(error?.retryable).toBe(true);
      expect(errorCode(error)).toBe('ECONNREFUSED');
    }
    expect(errors[0]?.message).toMatch(/or set PSP_MYSQL_URL$/);
    expect(errors[1]?.message).toMatch(/or set MYSQL_URL$/);
    expect(errors[2]?.message).toMatch(/or set NATS_URL$/);

    const mysqlUrl = testDatabaseUrl('settle_t_startup');
    try {
      await waitForDependencies(
        startupDependencies(
          { MYSQL_URL: mysqlUrl, PSP_MYSQL_URL: mysqlUrl, NATS_URL: inject('natsUrl') },
          { pspMock: false, nodeName: 'test' },
        ),
        { waitMsMax: 0 },
      );
    } finally {
      await dropDatabase(mysqlUrl);
    }
  });

  it('names NATS by its servers, never with the user, password or token in NATS_URL', async () => {
    const [, nats] = startupDependencies(
      {
        MYSQL_URL: 'mysql://settle:mysql-s3cret@127.0.0.1:1/settle_unreachable',
        PSP_MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_psp_unreachable',
        NATS_URL: 'nats://alice:nats-s3cret@127.0.0.1:1,nats://nats-t0ken@127.0.0.1:2',
      },
      { pspMock: false, nodeName: 'test' },
    );
    // The address is what the start-up wait logs ("waiting for NATS at …", "… answered").
    expect(nats?.address).toBe('nats://127.0.0.1:1,nats://127.0.0.1:2');
    const error = (await nats?.probe().catch((e: unknown) => e)) as Error;
    expect(error.message).not.toMatch(/s3cret|t0ken|alice/);
  });

  it('gives the PSP mock run alone its own MySQL only, naming PSP_MYSQL_URL', async () => {
    const dependencies = pspMockDependencies({
      PSP_MYSQL_URL: 'mysql://root@127.0.0.1:1/settle_psp_unreachable',
    });
    expect(dependencies.map((d) => `${d.name} ${d.address}`)).toEqual(['MySQL 127.0.0.1:1']);
    const error = (await dependencies[0]?.probe().catch((e: unknown) => e)) as SettleError;
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error.retryable).toBe(true);
    expect(error.message).toMatch(/or set PSP_MYSQL_URL$/);
  });

  it('does not wait out a login MySQL refuses', async () => {
    const url = new URL(testDatabaseUrl('settle_t_startup_login'));
    url.username = 'settle_no_such_user';
    url.password = 'wrong';
    const [mysql] = startupDependencies(
      { MYSQL_URL: url.toString(), PSP_MYSQL_URL: url.toString(), NATS_URL: inject('natsUrl') },
      { pspMock: false, nodeName: 'test' },
    );
    const waits: DependencyWait[] = [];
    await expect(
      waitForDependencies([mysql as Dependency], {
        waitMsMax: 60_000,
        onWait: (w) => waits.push(w),
      }),
    ).rejects.toBeInstanceOf(FailedPreconditionError);
    expect(waits).toEqual([]);
  });
});
