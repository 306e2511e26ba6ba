/**
 * Moves committed outbox rows to JetStream. Each batch is claimed with SELECT ... FOR UPDATE SKIP
 * LOCKED (so several nodes relay without overlapping), published with Nats-Msg-Id = the row's
 * msg_id (so a batch published twice after a crash is deduplicated by the stream), and each row
 * is deleted in the same transaction only once its publish was acknowledged; the transaction
 * takes two round trips (storage/one-trip.ts). Woken right after local commits; polls as a
 * safety net for commits whose wake-up was lost (another node, a crash).
 *
 * A row JetStream answers with a refusal (too big for the stream's max_msg_size, a subject no
 * stream covers, a full stream) is parked in the same transaction: its `available_at` moves past
 * a backoff that doubles with each refusal, from `parkMsMin` up to `parkMsMax`, so refused rows
 * never fill the batches of the rows behind them, and are tried again, at most once per
 * `parkMsMax` each. A parked row still counts as outbox lag from when it first became due. A row
 * whose publish got no answer (NATS down, a timeout) stays due: that is an outage, and the loop
 * backs off.
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import type { CompiledQuery } from 'kysely';
import type { Db } from '../storage/db.js';
import {
  outboxBatchLock,
  outboxDelete,
  outboxPark,
  toPendingOutbox,
  type OutboxRow,
  type PendingOutbox,
} from '../storage/repositories/outbox.repository.js';
import { resultRows, transactionInOneTrip } from '../storage/one-trip.js';
import { WakeUp } from '../domain/deadline.js';

/** A refused row's first parking; each further refusal doubles it. */
export const OUTBOX_PARK_MS_MIN = 1_000;
/** A refused row's longest parking: it is tried again at least this often. */
export const OUTBOX_PARK_MS_MAX = 60_000;

export type RelayOptions = Readonly<{
  batchMax: number;
  pollMs: number;
  publishTimeoutMs: number;
  /** A refused row's first parking (OUTBOX_PARK_MS_MIN); doubled per refusal. */
  parkMsMin?: number;
  /** A refused row's longest parking (OUTBOX_PARK_MS_MAX). */
  parkMsMax?: number;
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
   * Relays until no due row is left or `passesMax` batches were sent; returns rows relayed. Rows
   * JetStream refused are parked and named in one ParkedRowsError, passed to `onError`: the pass
   * itself went well, so the loop does not back off and new rows go at once. Rows that got no
   * answer stay due and are named in one UnansweredRowsError: thrown when no row went at all (NATS
   * down: the loop backs off), else passed to `onError`. Stops between batches once `keepGoing`
   * says so (the relay is stopping: a backlog of `passesMax` batches, each waiting up to
   * `publishTimeoutMs` on a slow NATS, must not hold up shutdown).
   */
  async relayOnce(passesMax = 100, keepGoing: () => boolean = () => true): Promise<number> {
    let total = 0;
    const kept = new Map<string, Error>();
    const parked = new Map<string, ParkedRow>();
    for (let pass = 0; pass < passesMax && (pass === 0 || keepGoing()); pass += 1) {
      const batch = await this.relayBatch();
      total += batch.relayed.length;
      for (const msgId of batch.relayed) kept.delete(msgId);
      for (const row of batch.parked) {
        kept.delete(row.msgId);
        parked.set(row.msgId, row);
      }
      for (const row of batch.kept) kept.set(row.msgId, row.error);
      const handled = batch.relayed.length + batch.parked.length;
      // A full batch, rows kept included, may have more rows behind it; one in which no row went
      // or was parked would only claim the same rows again.
      if (handled === 0 || handled + batch.kept.length < this.options.batchMax) break;
    }
    if (parked.size > 0) this.options.onError?.(new ParkedRowsError(parked));
    if (kept.size > 0) {
      const error = new UnansweredRowsError(kept);
      if (total === 0 && parked.size === 0) throw error;
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
   * One batch: publishes every claimed row, then, in the same transaction, deletes those JetStream
   * acknowledged and parks those it refused. The rows whose publish got no answer in time stay
   * due, with their lock released at the end.
   */
  private async relayBatch(): Promise<{
    relayed: string[];
    parked: ParkedRow[];
    kept: UnansweredRow[];
  }> {
    let parked: ParkedRow[] = [];
    let kept: UnansweredRow[] = [];
    // Two round trips: the lock (with START TRANSACTION), then the delete and parking with the
    // COMMIT.
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
        const acked: PendingOutbox[] = [];
        const refused: Array<{ row: PendingOutbox; error: Error }> = [];
        kept = [];
        batch.forEach((row, index) => {
          const result = published[index];
          if (result?.status === 'fulfilled') acked.push(row);
          else {
            const error = asError(result?.reason);
            if (isRefusal(error)) refused.push({ row, error });
            else kept.push({ msgId: row.msgId, error });
          }
        });
        // Read after the publishes: a parking counts from the refusal it answers.
        const now = Date.now();
        parked = refused.map(({ row, error }) => ({
          msgId: row.msgId,
          error,
          until: new Date(now + this.parkMs(row.refusals)),
        }));
        if (acked.length === 0 && refused.length === 0) return { rollback: 'no row was published' };
        const statements: CompiledQuery[] = [];
        if (acked.length > 0) {
          statements.push(
            outboxDelete(
              this.db,
              acked.map((row) => row.id),
            ),
          );
        }
        statements.push(...this.parkStatements(refused, now));
        return { commit: acked.map((row) => row.msgId), then: statements };
      },
    );
    // Rolled back only when no row was published or refused: all of them are still due.
    if (!outcome.committed) return { relayed: [], parked: [], kept };
    const relayed = outcome.value;
    if (relayed.length > 0) {
      this.relayedTotal += relayed.length;
      this.options.onRelayed?.(relayed.length);
    }
    return { relayed, parked, kept };
  }

  /** How long a row refused `refusals` times before is parked after this refusal. */
  private parkMs(refusals: number): number {
    const min = this.options.parkMsMin ?? OUTBOX_PARK_MS_MIN;
    const max = this.options.parkMsMax ?? OUTBOX_PARK_MS_MAX;
    // Capped before the power, so that a row refused for a year does not overflow it.
    return Math.min(max, min * 2 ** Math.min(refusals, 30));
  }

  /** One UPDATE per parking length: few, since lengths double up to the cap. */
  private parkStatements(
    refused: ReadonlyArray<{ row: PendingOutbox }>,
    now: number,
  ): CompiledQuery[] {
    const idsByMs = new Map<number, string[]>();
    for (const { row } of refused) {
      const ms = this.parkMs(row.refusals);
      const ids = idsByMs.get(ms);
      if (ids === undefined) idsByMs.set(ms, [row.id]);
      else ids.push(row.id);
    }
    return [...idsByMs].map(([ms, ids]) => outboxPark(this.db, ids, new Date(now + ms)));
  }
}

type UnansweredRow = Readonly<{ msgId: string; error: Error }>;
type ParkedRow = Readonly<{ msgId: string; error: Error; until: Date }>;

/**
 * Whether JetStream answered a publish with a refusal (an API error such as "message size exceeds
 * maximum allowed" or "maximum bytes exceeded", or no stream covering the subject), rather than
 * not answering at all (a timeout, a closed connection) or answering that it is unavailable for
 * now (status 503: "JetStream system temporarily unavailable"), which are outages: the row stays
 * due and the loop backs off, rather than every due row being parked for up to a minute.
 */
export function isRefusal(error: Error): boolean {
  // nats.js's JetStreamNotEnabled (no responders: no stream takes the subject) is not exported.
  if (error.name === 'JetStreamNotEnabled') return true;
  if (error.name !== 'JetStreamApiError') return false;
  const status = (error as Error & { status?: unknown }).status;
  return !(typeof status === 'number' && status >= 500);
}

/** Outbox rows whose publish got no answer (a timeout, NATS down): they stay due, tried again. */
export class UnansweredRowsError extends Error {
  constructor(readonly unanswered: ReadonlyMap<string, Error>) {
    super(
      `JetStream did not answer for ${unanswered.size} outbox row(s), kept for the next pass: ` +
        listed(
          [...unanswered].map(([msgId, error]) => `${msgId} (${error.name}: ${error.message})`),
        ),
      { cause: [...unanswered.values()][0] },
    );
    this.name = 'UnansweredRowsError';
  }
}

/** Outbox rows JetStream refused: parked, and tried again after their backoff. */
export class ParkedRowsError extends Error {
  constructor(readonly parked: ReadonlyMap<string, ParkedRow>) {
    const rows = [...parked.values()];
    super(
      `JetStream refused ${parked.size} outbox row(s), parked and tried again later: ` +
        `${listed(rows.map(describeParked))}. ` +
        "A row refused on every try (too big for the command stream's max_msg_size, a subject no " +
        'stream covers: JetStreamNotEnabled) will never go: fix or delete it by hand; a full ' +
        'stream takes rows again once housekeeping purged it',
      { cause: rows[0]?.error },
    );
    this.name = 'ParkedRowsError';
  }
}

function describeParked(row: ParkedRow): string {
  return `${row.msgId} (${row.error.name}: ${row.error.message}; until ${row.until.toISOString()})`;
}

function listed(items: readonly string[]): string {
  const shown = items.slice(0, 5);
  const more = items.length > shown.length ? ` and ${items.length - shown.length} more` : '';
  return `${shown.join(', ')}${more}`;
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
