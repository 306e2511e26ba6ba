/**
 * src/main.ts --settle-only as a running child process, for the tests of what a node does with
 * its environment and with signals once it runs: its output lines (stdout and stderr), a bounded
 * wait for a line, and its exit.
 */
import { spawn } from 'node:child_process';

/** Settle alone refuses the published default webhook secret: its test runs bring their own. */
export const MAIN_TEST_SECRET = 'whsec_main_test_0123456789';

export type MainExit = { code: number | null; signal: NodeJS.Signals | null };

/**
 * Starts src/main.ts --settle-only with this process's environment, LOG_LEVEL=silent and
 * MAIN_TEST_SECRET, then `env`. `waitForLine` fails at once if the process exits first.
 */
export function startMain(env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', '--settle-only'], {
    env: { ...process.env, LOG_LEVEL: 'silent', PSP_WEBHOOK_SECRET: MAIN_TEST_SECRET, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Should the test process end first (a worker torn down), the node goes with it rather than
  // outliving the database and streams its test made.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.off('exit', killOnExit));
  const lines: string[] = [];
  const listeners = new Set<() => void>();
  for (const stream of [child.stdout, child.stderr]) {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop() ?? '';
      lines.push(...parts);
      for (const listener of listeners) listener();
    });
  }
  const exited = new Promise<MainExit>((resolve) =>
    child.once('exit', (code, signal) => {
      resolve({ code, signal });
      for (const listener of listeners) listener();
    }),
  );
  const waitForLine = (pattern: RegExp, timeoutMs = 25_000) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = lines.find((line) => pattern.test(line));
        if (found !== undefined) return done(() => resolve(found));
        if (child.exitCode !== null || child.signalCode !== null) {
          done(() => reject(new Error(`exited before ${pattern}:\n${lines.join('\n')}`)));
        }
      };
      const timer = setTimeout(
        () =>
          done(() => reject(new Error(`no ${pattern} in ${timeoutMs} ms:\n${lines.join('\n')}`))),
        timeoutMs,
      );
      const done = (settle: () => void) => {
        clearTimeout(timer);
        listeners.delete(check);
        settle();
      };
      listeners.add(check);
      check();
    });
  return { child, exited, waitForLine, output: () => lines.join('\n') };
}
