/**
 * Housekeeping: the node's bounded deletes of rows whose time has passed (idempotency keys past
 * IDEMPOTENCY_TTL_MS, settlement staging rows past RECONCILIATION_KEEP_DAYS, webhook inbox rows of
 * final orders past WEBHOOK_INBOX_KEEP_DAYS, closed dead letters past DEAD_LETTER_KEEP_DAYS,
 * acknowledged commands of a half-full JetStream command stream, up to the ack floor seen a pass
 * before; order transitions and reconciliation mismatches are audit history, never purged). They
 * run on their own timer, so they go on whatever else the node runs: the nightly reconciliation
 * may be off while RunReconciliation still loads files.
 *
 * A pass runs every task once, each bounded by its own limit, so a backlog is worked off over
 * several passes instead of in one long statement. One task failing does not stop the others;
 * passes never overlap (a runOnce() from outside waits for the timer's pass in progress, and the
 * other way round), and stop() waits for the pass in progress. Several nodes purging at once only
 * take turns on the same rows.
 */

/** The node's housekeeping tasks (their names label logs and metrics). */
export const HOUSEKEEPING_TASK = {
  idempotencyKey: 'idempotency_key',
  settlementStaging: 'settlement_staging',
  webhookInbox: 'webhook_inbox',
  deadLetter: 'dead_letter',
  commandStream: 'command_stream',
} as const;

export type HousekeepingTask = Readonly<{
  /** A label for logs and metrics, e.g. `idempotency_key`. */
  name: string;
  /** Deletes what `now` says has expired, within the task's own bound; answers the rows deleted. */
  run: (now: Date) => Promise<number>;
}>;

export type HousekeepingOptions = Readonly<{
  intervalMs: number;
  /** Delay of the first pass after start(). */
  firstPassMs?: number;
  now?: () => Date;
  /** A task deleted rows (not called for 0). */
  onPurged?: (purged: Readonly<{ task: string; rows: number }>) => void;
  onError?: (task: string, error: unknown) => void;
}>;

export class Housekeeping {
  #timer: NodeJS.Timeout | undefined;
  /** The last pass queued, its failure caught: the next pass starts after it. */
  #lastPass: Promise<unknown> = Promise.resolve();
  #stopped = false;

  constructor(
    private readonly tasks: readonly HousekeepingTask[],
    private readonly options: HousekeepingOptions,
  ) {}

  start(): void {
    this.#schedule(this.options.firstPassMs ?? 0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#lastPass;
  }

  /**
   * Runs every task once, in order, after any pass in progress; answers the rows each deleted
   * (-1: it failed).
   */
  runOnce(): Promise<Record<string, number>> {
    const pass = this.#lastPass.then(() => this.#runTasks());
    this.#lastPass = pass.catch(() => undefined);
    return pass;
  }

  async #runTasks(): Promise<Record<string, number>> {
    const now = (this.options.now ?? (() => new Date()))();
    const deleted: Record<string, number> = {};
    for (const task of this.tasks) {
      if (this.#stopped) break;
      try {
        const rows = await task.run(now);
        deleted[task.name] = rows;
        if (rows > 0) this.options.onPurged?.({ task: task.name, rows });
      } catch (error) {
        deleted[task.name] = -1;
        this.options.onError?.(task.name, error);
      }
    }
    return deleted;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      // A pass rejects only if a callback (now, onPurged, onError) throws; the timer goes on.
      void this.runOnce()
        .catch(() => undefined)
        .finally(() => this.#schedule(this.options.intervalMs));
    }, delayMs);
    this.#timer.unref();
  }
}
