/**
 * Group commit: units of work that arrive while earlier transactions are running are written
 * together, as one batch, by the caller's `writeBatch` (typically one transaction with a few
 * multi-row statements), so MySQL round trips and commits are shared. At low load a unit finds
 * a free slot and goes out at once, alone, through `writeOne`: batching adds no waiting.
 *
 * Each unit still gets its own answer, and only after its batch committed. A batch that fails
 * for a reason other than the database being unavailable is retried unit by unit through
 * `writeOne`, so a unit that fails for its own reason (a constraint, a duplicate) fails alone
 * and its batch mates go through. `writeBatch` may also throw on purpose (say, when it sees a
 * case it does not handle in bulk) to get exactly that fallback.
 *
 * Bounded: `batchMax` units per batch, `inFlightMax` batches at once, `queueMax` units waiting
 * (beyond it, submit() fails at once with RESOURCE_EXHAUSTED, which callers treat as retryable),
 * and `replayInFlightMax` units of a failed batch replayed at once: a batch holds one connection
 * of its pool, and its replay must not ask for a hundred more.
 */
import { ResourceExhaustedError, UnavailableError } from '../domain/errors.js';
import { isTransientLockError } from './errors.js';

/**
 * Units of one failed batch written alone at once, by default. More than one, so that a unit
 * waiting out a row lock held elsewhere (up to innodb_lock_wait_timeout) does not hold up its
 * batch mates behind it; few, because each holds or waits for a connection of a pool sized for
 * one per batch in flight: a batch of 128 replayed all at once overflowed mysql2's queue
 * ("Queue limit reached"), failing healthy units.
 */
export const REPLAY_IN_FLIGHT_MAX_DEFAULT = 4;

/** The limits a caller usually takes from config (GROUP_COMMIT_MAX, GROUP_COMMITS_IN_FLIGHT). */
export type GroupCommitLimits = Readonly<{ batchMax: number; inFlightMax: number }>;

/** What `onBatch` is told about one batch that ended. */
export type GroupCommitBatch = Readonly<{ size: number; ms: number; ok: boolean }>;

export type GroupCommitOptions<I, O> = Readonly<{
  /** What the batches write, for error messages. */
  name: string;
  batchMax: number;
  inFlightMax: number;
  queueMax: number;
  /** Writes several units (≥ 2) at once; answers in the order of `units`. */
  writeBatch: (units: readonly I[]) => Promise<readonly O[]>;
  /** Writes one unit alone. */
  writeOne: (unit: I) => Promise<O>;
  /** Units of a failed batch written alone at once (default REPLAY_IN_FLIGHT_MAX_DEFAULT). */
  replayInFlightMax?: number;
  /** Called after every batch with its size and duration (metrics, the bench). */
  onBatch?: (batch: GroupCommitBatch) => void;
  /**
   * How long the first unit of a batch waits for others, in milliseconds (default 0: the next
   * turn of the event loop). Only for writes nobody waits on: each unit's answer comes that much
   * later, and in exchange for fewer, larger batches at moderate load.
   */
  lingerMs?: number;
}>;

type Pending<I, O> = { unit: I; resolve: (result: O) => void; reject: (error: unknown) => void };

export class GroupCommit<I, O> {
  private readonly queue: Pending<I, O>[] = [];
  private inFlight = 0;
  private flushScheduled = false;
  private stopping = false;
  private readonly idleWaiters: Array<() => void> = [];

  constructor(private readonly options: GroupCommitOptions<I, O>) {}

  /** Writes `unit` with whatever else is waiting; resolves after the commit. */
  readonly submit = (unit: I): Promise<O> => {
    if (this.stopping) {
      return Promise.reject(new UnavailableError('this node is stopping; retry'));
    }
    if (this.queue.length >= this.options.queueMax) {
      return Promise.reject(
        new ResourceExhaustedError(
          `${this.queue.length} ${this.options.name} are waiting for the database; retry later`,
        ),
      );
    }
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ unit, resolve, reject });
      // Everything that arrives in this turn of the event loop (or while the first unit
      // lingers) can go out together.
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        const flush = () => {
          this.flushScheduled = false;
          this.pump();
        };
        const lingerMs = this.options.lingerMs ?? 0;
        if (lingerMs > 0) setTimeout(flush, lingerMs);
        else setImmediate(flush);
      }
    });
  };

  /** Refuses new units and waits (bounded) until those already submitted are written. */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    if (this.inFlight === 0 && this.queue.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => this.idleWaiters.push(resolve)),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
  }

  private pump(): void {
    while (this.inFlight < this.options.inFlightMax && this.queue.length > 0) {
      const batch = this.queue.splice(0, this.options.batchMax);
      this.inFlight += 1;
      void this.write(batch).finally(() => {
        this.inFlight -= 1;
        this.pump();
        if (this.inFlight === 0 && this.queue.length === 0) {
          for (const wake of this.idleWaiters.splice(0)) wake();
        }
      });
    }
  }

  private async write(batch: Pending<I, O>[]): Promise<void> {
    if (batch.length === 1) {
      const only = batch[0] as Pending<I, O>;
      const started = performance.now();
      try {
        only.resolve(await this.options.writeOne(only.unit));
        this.options.onBatch?.({ size: 1, ms: performance.now() - started, ok: true });
      } catch (error) {
        this.options.onBatch?.({ size: 1, ms: performance.now() - started, ok: false });
        only.reject(error);
      }
      return;
    }
    const started = performance.now();
    let results: readonly O[];
    try {
      results = await this.options.writeBatch(batch.map((pending) => pending.unit));
      if (results.length !== batch.length) {
        throw new Error(
          `${this.options.name}: a batch of ${batch.length} answered ${results.length} results`,
        );
      }
    } catch (error) {
      this.options.onBatch?.({ size: batch.length, ms: performance.now() - started, ok: false });
      // The database is gone for all of them, or its pool is full for all of them (a replay
      // would only ask for more); a lock that outlasted its retries is one unit's (or a few):
      // each alone tells which.
      if (
        (error instanceof UnavailableError && !isTransientLockError(error.cause)) ||
        error instanceof ResourceExhaustedError
      ) {
        for (const pending of batch) pending.reject(error);
        return;
      }
      // Which unit broke the batch is unknown: each one alone tells.
      await this.replay(batch);
      return;
    }
    this.options.onBatch?.({ size: batch.length, ms: performance.now() - started, ok: true });
    batch.forEach((pending, i) => pending.resolve(results[i] as O));
  }

  /** Writes each unit of `batch` alone, a few at a time; each is answered once, for itself. */
  private async replay(batch: readonly Pending<I, O>[]): Promise<void> {
    let next = 0;
    const lane = async () => {
      for (let pending = batch[next++]; pending !== undefined; pending = batch[next++]) {
        try {
          pending.resolve(await this.options.writeOne(pending.unit));
        } catch (error) {
          pending.reject(error);
        }
      }
    };
    const lanes = Math.min(
      batch.length,
      Math.max(1, this.options.replayInFlightMax ?? REPLAY_IN_FLIGHT_MAX_DEFAULT),
    );
    await Promise.all(Array.from({ length: lanes }, lane));
  }
}
