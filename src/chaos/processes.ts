/**
 * Child processes of the chaos demo, the crash-recovery tests and the bench: a Settle node or the
 * PSP mock run as a real `node --import tsx …` process, so that `kill -9` is a real kill. A process
 * is ready when it prints its ready line; its output goes to a log file and to a bounded in-memory
 * tail (quoted when a start fails), and each line can be watched (breaker changes, retries, dead
 * letters).
 *
 * Every wait has a deadline. Children still alive when this process exits are SIGKILLed, so a
 * crashed run leaves no strays behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { createInterface } from 'node:readline';

/** Lines of output kept in memory per process, for error messages. */
const TAIL_LINES_MAX = 40;

export type ProcessSpec = Readonly<{
  name: string;
  /** The script, relative to cwd, run as `node <nodeArgs> --import tsx <script> <args>`. */
  script: string;
  /** Flags for node itself, before `--import tsx` (the bench's `--cpu-prof`). */
  nodeArgs?: readonly string[];
  args?: readonly string[];
  cwd: string;
  /** The child's whole environment; ManagedProcess.env may change it between starts. */
  env: Readonly<Record<string, string>>;
  /** A line matching this means the process is ready. */
  readyPattern: RegExp;
  /** Output is appended here when set. */
  logFile?: string;
  /** Called with every line of stdout and stderr. */
  onLine?: (line: string) => void;
}>;

export type Exit = Readonly<{ code: number | null; signal: NodeJS.Signals | null }>;

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
  });
}

export class ManagedProcess {
  #child: ChildProcess | undefined;
  #exit: Promise<Exit> | undefined;
  #exited: Exit | undefined;
  #log: WriteStream | undefined;
  readonly #tail: string[] = [];
  #lines = 0;
  #starts = 0;
  /** The environment of the next start (a copy of spec.env). */
  readonly env: Record<string, string>;

  constructor(readonly spec: ProcessSpec) {
    this.env = { ...spec.env };
    installExitHook();
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  /** True from spawn until the process has exited. */
  get running(): boolean {
    return this.#child !== undefined && this.#exited === undefined;
  }

  /** How many times this process was started. */
  get starts(): number {
    return this.#starts;
  }

  /** How the process last exited; undefined while it runs or before its first start. */
  get lastExit(): Exit | undefined {
    return this.#exited;
  }

  /** Lines of output (stdout and stderr) over every start so far. */
  get lines(): number {
    return this.#lines;
  }

  /** The last lines of output (stdout and stderr interleaved). */
  tail(): string {
    return this.#tail.join('\n');
  }

  /**
   * Spawns the process and resolves once it printed its ready line. Rejects, with the tail of its
   * output, if it exits first or is not ready within `timeoutMs` (it is killed then).
   */
  async start(timeoutMs: number): Promise<void> {
    if (this.running) throw new Error(`${this.spec.name} is already running`);
    this.#starts += 1;
    this.#exited = undefined;
    this.#log ??=
      this.spec.logFile === undefined
        ? undefined
        : createWriteStream(this.spec.logFile, { flags: 'a' });
    this.#log?.write(`--- start ${this.#starts} at ${new Date().toISOString()}\n`);
    const child = spawn(
      process.execPath,
      [
        ...(this.spec.nodeArgs ?? []),
        '--import',
        'tsx',
        this.spec.script,
        ...(this.spec.args ?? []),
      ],
      { cwd: this.spec.cwd, env: { ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.#child = child;
    live.add(child);
    let markReady: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => (markReady = resolve));
    const onLine = (line: string) => {
      this.#lines += 1;
      this.#tail.push(line);
      if (this.#tail.length > TAIL_LINES_MAX) this.#tail.shift();
      this.#log?.write(`${line}\n`);
      if (this.spec.readyPattern.test(line)) markReady();
      this.spec.onLine?.(line);
    };
    for (const stream of [child.stdout, child.stderr]) {
      if (stream !== null)
        createInterface({ input: stream, crlfDelay: Infinity }).on('line', onLine);
    }
    this.#exit = new Promise<Exit>((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.#exited = { code, signal };
        this.#log?.write(`--- exit code=${code} signal=${signal}\n`);
        resolve(this.#exited);
      });
    });
    const timeout = new AbortController();
    const outcome = await Promise.race([
      ready.then(() => 'ready' as const),
      this.#exit.then(() => 'exited' as const),
      sleep(timeoutMs, timeout.signal).then(() => 'timeout' as const),
    ]);
    timeout.abort();
    if (outcome === 'ready') return;
    if (outcome === 'timeout') {
      child.kill('SIGKILL');
      await this.waitForExit(5_000);
    }
    const exited = this.lastExit;
    const why =
      outcome === 'timeout'
        ? `not ready within ${timeoutMs} ms`
        : `exited with code ${exited?.code ?? 'null'}`;
    throw new Error(`${this.spec.name} did not start (${why}):\n${this.tail()}`);
  }

  /** Sends a signal; false if the process is not running. */
  signal(signal: NodeJS.Signals): boolean {
    if (!this.running || this.#child === undefined) return false;
    return this.#child.kill(signal);
  }

  /** Resolves with the exit, or undefined if the process is still running after `timeoutMs`. */
  async waitForExit(timeoutMs: number): Promise<Exit | undefined> {
    if (this.#exit === undefined) return this.#exited;
    const timeout = new AbortController();
    const exit = await Promise.race([this.#exit, sleep(timeoutMs, timeout.signal)]);
    timeout.abort();
    return exit ?? undefined;
  }

  /**
   * A graceful stop: SIGTERM, then SIGKILL if the process has not exited within `graceMs`.
   * Resolves with the exit (undefined only if even SIGKILL was not seen to end it in 5 s).
   */
  async stop(graceMs: number): Promise<Exit | undefined> {
    if (!this.signal('SIGTERM')) return this.#exited;
    return (await this.waitForExit(graceMs)) ?? this.kill();
  }

  /** SIGKILL and wait (bounded) for the exit. */
  async kill(): Promise<Exit | undefined> {
    this.signal('SIGKILL');
    return this.waitForExit(5_000);
  }

  /** Kills the process if needed and closes its log. */
  async dispose(): Promise<void> {
    if (this.running) await this.kill();
    await new Promise<void>((resolve) => (this.#log ? this.#log.end(resolve) : resolve()));
    this.#log = undefined;
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}
