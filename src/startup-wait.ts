/**
 * Waiting for MySQL and NATS at start-up. A node started before its dependencies (a host booting,
 * a rollout that starts everything at once, a database restarting) tries each of them again with
 * exponential backoff and jitter until STARTUP_WAIT_MS has passed, reporting every wait with what
 * it waits for and the error code; then it gives up with the last error and how long it waited.
 * Only errors that waiting can cure are waited out: a retryable SettleError, which is what
 * ensureDatabase and connectNats throw for a server they cannot reach. A refused login fails at
 * once. Nothing here starts anything: main.ts (a Settle node) and psp/mock/main.ts (the PSP mock
 * alone) wait for every dependency first and then start, so the migrations run once, on a
 * database known to answer.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from './config.js';
import { FailedPreconditionError, SettleError, UnavailableError } from './domain/errors.js';
import { connectNats, describeServers } from './messaging/nats.js';
import { describeAddress, ensureDatabase, parseMysqlUrl } from './storage/db.js';

/** The first pause between two tries, in milliseconds; each one after doubles, up to the max. */
export const STARTUP_BACKOFF_MS_INITIAL = 250;
export const STARTUP_BACKOFF_MS_MAX = 5_000;
export const STARTUP_BACKOFF_MULTIPLIER = 2;
/** Each pause is spread by ±20 %, so nodes started together do not retry in step. */
export const STARTUP_BACKOFF_JITTER = 0.2;

export type Dependency = Readonly<{
  /** What is waited for, in messages: `MySQL`, `NATS`. */
  name: string;
  /** Where it is expected, in messages. */
  address: string;
  /** One try: resolves once the dependency answers, rejects with why it did not. */
  probe: () => Promise<void>;
}>;

/** One pause of the wait: the try that failed, why, and what comes next. */
export type DependencyWait = Readonly<{
  dependency: string;
  address: string;
  /** The error's code (`ECONNREFUSED`, `ENOTFOUND`, `ETIMEDOUT`, …), or its name. */
  code: string;
  /** Tries of this dependency so far, the failed one included. */
  attempt: number;
  /** The pause before the next try, in milliseconds. */
  delayMs: number;
  /** Time spent waiting so far, over every dependency, in milliseconds. */
  waitedMs: number;
  /** Time left before the node gives up, in milliseconds. */
  leftMs: number;
}>;

export type Backoff = Readonly<{
  initialMs: number;
  maxMs: number;
  multiplier: number;
  /** The fraction each pause is spread by, both ways. */
  jitter: number;
}>;

export type WaitOptions = Readonly<{
  /** How long to wait in all, over every dependency, in milliseconds; 0: one try each. */
  waitMsMax: number;
  /** Aborting ends the wait at once (the promise rejects with the signal's reason). */
  signal?: AbortSignal;
  onWait?: (wait: DependencyWait) => void;
  /** Called when a dependency answers after at least one failed try. */
  onReachable?: (
    reachable: Readonly<{ dependency: string; address: string; attempt: number }>,
  ) => void;
  backoff?: Backoff;
  /** A number in [0, 1), for the jitter (tests pass their own). */
  random?: () => number;
}>;

const BACKOFF: Backoff = {
  initialMs: STARTUP_BACKOFF_MS_INITIAL,
  maxMs: STARTUP_BACKOFF_MS_MAX,
  multiplier: STARTUP_BACKOFF_MULTIPLIER,
  jitter: STARTUP_BACKOFF_JITTER,
};

/**
 * Resolves once every dependency has answered, tried in order within one shared deadline of
 * `waitMsMax`. Rejects with the dependency's own error when waiting cannot help; with the abort
 * reason (as an Error) as soon as `signal` is aborted; and once the deadline has passed, with an
 * UnavailableError holding the last error's message plus how long the node waited (the last error
 * is its cause). A try already running when the deadline passes is let finish, so the wait can
 * exceed `waitMsMax` by one try's own timeout (5 s for MySQL and for NATS).
 */
export async function waitForDependencies(
  dependencies: readonly Dependency[],
  options: WaitOptions,
): Promise<void> {
  const backoff = options.backoff ?? BACKOFF;
  const random = options.random ?? Math.random;
  const startedMs = Date.now();
  const deadlineMs = startedMs + options.waitMsMax;
  for (const dependency of dependencies) {
    for (let attempt = 1; ; attempt += 1) {
      if (isAborted(options.signal)) throw abortReason(options.signal);
      try {
        await untilAborted(dependency.probe(), options.signal);
        if (attempt > 1)
          options.onReachable?.({
            dependency: dependency.name,
            address: dependency.address,
            attempt,
          });
        break;
      } catch (error) {
        if (isAborted(options.signal)) throw abortReason(options.signal);
        if (!(error instanceof SettleError && error.retryable)) throw error;
        const nowMs = Date.now();
        const leftMs = deadlineMs - nowMs;
        if (leftMs <= 0) throw gaveUp(error, nowMs - startedMs, options.waitMsMax);
        const delayMs = Math.min(leftMs, backoffDelayMs(backoff, attempt, random()));
        options.onWait?.({
          dependency: dependency.name,
          address: dependency.address,
          code: errorCode(error),
          attempt,
          delayMs,
          waitedMs: nowMs - startedMs,
          leftMs,
        });
        const { signal } = options;
        try {
          await sleep(delayMs, undefined, signal && { signal });
        } catch (error) {
          // Only an abort ends the pause early; report it with the caller's reason.
          throw signal === undefined ? error : abortReason(signal);
        }
      }
    }
  }
}

/**
 * waitForDependencies as a process runs it before it starts: SIGTERM or SIGINT ends the wait at
 * once, told to `onSignal` first. Resolves with that signal, or undefined once every dependency
 * answered; rejects as waitForDependencies does. Nothing has been started while it waits, so a
 * signal leaves nothing to stop: the caller just exits. Its handlers are gone once it settles;
 * from then on a signal does what the caller installs (until then, Node's default: exit).
 */
export async function waitForDependenciesUnlessSignalled(
  dependencies: readonly Dependency[],
  options: Omit<WaitOptions, 'signal'> & Readonly<{ onSignal?: (signal: NodeJS.Signals) => void }>,
): Promise<NodeJS.Signals | undefined> {
  const waiting = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    signalled = signal;
    options.onSignal?.(signal);
    waiting.abort(signal);
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  try {
    await waitForDependencies(dependencies, { ...options, signal: waiting.signal });
    return undefined;
  } catch (error) {
    if (signalled !== undefined) return signalled;
    throw error;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

/** The log line of one wait: what, where, why, and when the next try and the giving up come. */
export function waitMessage(wait: DependencyWait): string {
  return (
    `waiting for ${wait.dependency} at ${wait.address} (${wait.code}): try ${wait.attempt} ` +
    `failed, next in ${seconds(wait.delayMs)} s, giving up in ${seconds(wait.leftMs)} s ` +
    '(STARTUP_WAIT_MS)'
  );
}

/** The log line of a dependency that answered after failed tries. */
export function reachableMessage(
  reachable: Readonly<{ dependency: string; address: string; attempt: number }>,
): string {
  return `${reachable.dependency} at ${reachable.address} answered on try ${reachable.attempt}`;
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(1);
}

/** The pause after the `attempt`-th failed try: exponential, bounded, spread by the jitter. */
export function backoffDelayMs(backoff: Backoff, attempt: number, random: number): number {
  const baseMs = Math.min(
    backoff.maxMs,
    backoff.initialMs * backoff.multiplier ** Math.max(0, attempt - 1),
  );
  return Math.round(baseMs * (1 + backoff.jitter * (2 * random - 1)));
}

/**
 * The code of the innermost error that has one (mysql2's and Node's `ECONNREFUSED`, …), skipping
 * SettleError's own codes; else the innermost error's name (nats.js's `TimeoutError`).
 */
export function errorCode(error: unknown): string {
  let name = 'unknown';
  for (let current = error, depth = 0; current !== undefined && depth < 8; depth += 1) {
    if (!(current instanceof Error)) break;
    const code = (current as { code?: unknown }).code;
    if (!(current instanceof SettleError) && typeof code === 'string' && code !== '') return code;
    if (current.name !== 'Error' && !(current instanceof SettleError)) name = current.name;
    current = current.cause;
  }
  return name;
}

function gaveUp(last: SettleError, waitedMs: number, waitMsMax: number): UnavailableError {
  const waited =
    waitMsMax === 0
      ? 'did not wait for it (STARTUP_WAIT_MS=0)'
      : `waited ${(waitedMs / 1000).toFixed(1)} s for it (STARTUP_WAIT_MS=${waitMsMax})`;
  return new UnavailableError(`${last.message}; ${waited}`, { cause: last });
}

function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.finally(() => signal.removeEventListener('abort', onAbort)).then(resolve, reject);
  });
}

function isAborted(signal: AbortSignal | undefined): signal is AbortSignal {
  return signal?.aborted === true;
}

/** The signal's reason as an Error (AbortController.abort() may be given anything). */
function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new Error(`aborted: ${String(reason)}`);
}

/**
 * What a node needs before it starts: its MySQL server (the database is created if missing) and
 * NATS; with the PSP mock in the same process (`npm start`), the mock's database too. Each probe
 * opens one connection and closes it.
 */
export function startupDependencies(
  config: Pick<Config, 'MYSQL_URL' | 'PSP_MYSQL_URL' | 'NATS_URL'>,
  options: Readonly<{ pspMock: boolean; nodeName: string }>,
): Dependency[] {
  return [
    ...(options.pspMock ? pspMockDependencies(config) : []),
    mysql(config.MYSQL_URL, 'MYSQL_URL'),
    {
      name: 'NATS',
      // Never the URL itself: it may carry a user and password, or a token.
      address: describeServers(config.NATS_URL),
      probe: async () => {
        const nc = await connectNats(config.NATS_URL, `${options.nodeName}-startup-probe`);
        await nc.close();
      },
    },
  ];
}

/**
 * What the PSP mock needs before it starts, run alone (`npm run start:psp`) or with a node: its
 * own database (created if missing). It uses no NATS, and Settle's webhook endpoint is retried by
 * its sender, not waited for.
 */
export function pspMockDependencies(config: Pick<Config, 'PSP_MYSQL_URL'>): Dependency[] {
  return [mysql(config.PSP_MYSQL_URL, 'PSP_MYSQL_URL')];
}

/** A MySQL server, probed by creating the database if it is missing; errors name `setting`. */
function mysql(url: string, setting: 'MYSQL_URL' | 'PSP_MYSQL_URL'): Dependency {
  return {
    name: 'MySQL',
    address: describeAddress(parseMysqlUrl(url)),
    probe: () =>
      ensureDatabase(url).catch((error: unknown) => {
        throw setting === 'MYSQL_URL' ? error : namingSetting(error, setting);
      }),
  };
}

/** ensureDatabase's error naming `setting` instead of MYSQL_URL (the PSP mock's database). */
function namingSetting(error: unknown, setting: string): unknown {
  if (!(error instanceof SettleError)) return error;
  const message = error.message.replace(/\bMYSQL_URL\b/, setting);
  if (error instanceof UnavailableError)
    return new UnavailableError(message, { cause: error.cause });
  if (error instanceof FailedPreconditionError) {
    return new FailedPreconditionError(message, { cause: error.cause });
  }
  return error;
}
