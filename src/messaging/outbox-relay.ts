/**
 * Moves committed outbox rows to JetStream. Each batch is claimed with SELECT ... FOR UPDATE SKIP
 * LOCKED (so several nodes relay without overlapping), published with Nats-Msg-Id = the row's
 * msg_id (so a batch published twice after a crash is deduplicated by the stream), and each row
 * is deleted in the same transaction only once its publish was acknowledged (a row JetStream
 * refuses stays, and does not hold back the rows behind it); the transaction takes two round
 * trips (storage/one-trip.ts). Woken right after local
 * commits; polls as a safety net for commits whose wake-up was lost (another node, a crash).
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import type { Db } from '../storage/db.js';
import {
  outboxBatchLock,
  outboxDelete,
  toPendingOutbox,
  type OutboxRow,
} from '../storage/repositories/outbox.repository.js';
import { resultRows, transactionInOneTrip } from '../storage/one-trip.js';
import { WakeUp } from '../domain/deadline.js';

export type RelayOptions = Readonly<{
  batchMax: number;
  pollMs: number;
  publishTimeoutMs: number;
  onError?: (error: unknown) => void;
  onRelayed?: (count: number) => void;
}>;

export class OutboxRelay {
  private running = false;
  private readonly wakeUp = new WakeUp();
  private loop: Promise<void> | undefined;
  private relayedTotal = 0;

  constructor(
    private readonly db: Db,
    private readonly js: JetStreamClient,
    private readonly options: RelayOptions,
  ) {}

  get relayed(): number {
    return this.relayedTotal;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
  }

  /** Asks for a pass now (after a local commit). */
  wake(): void {
    this.wakeUp.wake();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wakeUp.wake();
    await this.loop;
  }

  /**
   * Relays until the outbox is empty or `passesMax` batches were sent; returns rows relayed. Rows
   * JetStream did not take are kept for the next call and named in one RefusedRowsError: thrown
   * when no row went at all (NATS down: the loop backs off), else passed to `onError`. Stops
   * between batches once `keepGoing` says so (the relay is stopping: a backlog of `passesMax`
   * batches, each waiting up to `publishTimeoutMs` on a slow NATS, must not hold up shutdown).
   */
  async relayOnce(passesMax = 100, keepGoing: () => boolean = () => true): Promise<number> {
    let total = 0;
    const refused = new Map<string, Error>();
    for (let pass = 0; pass < passesMax && (pass === 0 || keepGoing()); pass += 1) {
      const { relayed, failed } = await this.relayBatch();
      total += relayed.length;
      for (const msgId of relayed) refused.delete(msgId);
      for (const failure of failed) refused.set(failure.msgId, failure.error);
      // A full batch, refused rows included, may have more rows behind it.
      if (relayed.length === 0 || relayed.length + failed.length < this.options.batchMax) break;
    }
    if (refused.size > 0) {
      const error = new RefusedRowsError(refused);
      if (total === 0) throw error;
      this.options.onError?.(error);
    }
    return total;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (this.running) {
      try {
        await this.relayOnce(undefined, () => this.running);
        failures = 0;
      } catch (error) {
        failures += 1;
        this.options.onError?.(error);
      }
      if (!this.running) break;
      // After a failure, back off even if a commit asked for a pass meanwhile.
      if (failures > 0) this.wakeUp.forget();
      await this.wakeUp.sleep(
        failures === 0 ? this.options.pollMs : Math.min(5_000, 100 * 2 ** failures),
      );
    }
  }

  /**
   * One batch: publishes every claimed row, then deletes those JetStream acknowledged in the same
   * transaction. The rows it refused (or whose acknowledgement did not come in time) stay, with
   * their lock released at the commit, so a row JetStream never takes (too big for the stream, a
   * subject no stream covers) does not hold back the rows behind it.
   */
  private async relayBatch(): Promise<{ relayed: string[]; failed: RefusedRow[] }> {
    let failed: RefusedRow[] = [];
    // Two round trips: the lock (with START TRANSACTION), then the delete with the COMMIT.
    const outcome = await transactionInOneTrip<string[]>(
      this.db,
      [outboxBatchLock(this.db, this.options.batchMax, new Date())],
      async (results) => {
        const batch = toPendingOutbox(resultRows<OutboxRow>(results[0]));
        const published = await Promise.allSettled(
          batch.map((row) =>
            this.js.publish(row.subject, row.payload, {
              msgID: row.msgId,
              timeout: this.options.publishTimeoutMs,
            }),
          ),
        );
        const acked = batch.filter((_, index) => published[index]?.status === 'fulfilled');
        failed = batch.flatMap((row, index) => {
          const result = published[index];
          return result?.status === 'rejected'
            ? [{ msgId: row.msgId, error: asError(result.reason) }]
            : [];
        });
        if (acked.length === 0) return { rollback: 'no row was published' };
        return {
          commit: acked.map((row) => row.msgId),
          then: [
            outboxDelete(
              this.db,
              acked.map((row) => row.id),
            ),
          ],
        };
      },
    );
    const relayed = outcome.committed ? outcome.value : [];
    if (relayed.length > 0) {
      this.relayedTotal += relayed.length;
      this.options.onRelayed?.(relayed.length);
    }
    return { relayed, failed };
  }
}

type RefusedRow = Readonly<{ msgId: string; error: Error }>;

/** Outbox rows JetStream did not take while others went: they stay, and are tried again. */
export class RefusedRowsError extends Error {
  constructor(readonly refused: ReadonlyMap<string, Error>) {
    const shown = [...refused]
      .slice(0, 5)
      .map(([msgId, error]) => `${msgId} (${error.name}: ${error.message})`);
    const more = refused.size > shown.length ? ` and ${refused.size - shown.length} more` : '';
    super(
      `JetStream did not take ${refused.size} outbox row(s), kept for the next pass: ` +
        `${shown.join(', ')}${more}. A row refused on every pass while others go (too big for ` +
        "the command stream's max_msg_size, a subject no stream covers: JetStreamNotEnabled) " +
        'will never go: fix or delete it by hand',
      { cause: [...refused.values()][0] },
    );
    this.name = 'RefusedRowsError';
  }
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
