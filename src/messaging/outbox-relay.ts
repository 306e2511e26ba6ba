/**
 * Moves committed outbox rows to JetStream. Each batch is claimed with SELECT ... FOR UPDATE SKIP
 * LOCKED (so several nodes relay without overlapping), published with Nats-Msg-Id = the row's
 * msg_id (so a batch published twice after a crash is deduplicated by the stream), and deleted in
 * the same transaction only after every publish was acknowledged; the transaction takes two
 * round trips (storage/one-trip.ts). Woken right after local
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

  /** Relays until the outbox is empty or `passesMax` batches were sent; returns rows relayed. */
  async relayOnce(passesMax = 100): Promise<number> {
    let total = 0;
    for (let pass = 0; pass < passesMax; pass += 1) {
      const count = await this.relayBatch();
      total += count;
      if (count < this.options.batchMax) break;
    }
    return total;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (this.running) {
      try {
        await this.relayOnce();
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

  private async relayBatch(): Promise<number> {
    // Two round trips: the lock (with START TRANSACTION), then the delete with the COMMIT.
    const outcome = await transactionInOneTrip(
      this.db,
      [outboxBatchLock(this.db, this.options.batchMax, new Date())],
      async (results) => {
        const batch = toPendingOutbox(resultRows<OutboxRow>(results[0]));
        if (batch.length === 0) return { commit: 0 };
        await Promise.all(
          batch.map((row) =>
            this.js.publish(row.subject, row.payload, {
              msgID: row.msgId,
              timeout: this.options.publishTimeoutMs,
            }),
          ),
        );
        return {
          commit: batch.length,
          then: [
            outboxDelete(
              this.db,
              batch.map((row) => row.id),
            ),
          ],
        };
      },
    );
    const count = outcome.committed ? outcome.value : 0;
    if (count > 0) {
      this.relayedTotal += count;
      this.options.onRelayed?.(count);
    }
    return count;
  }
}
