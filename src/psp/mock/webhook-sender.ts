/**
 * Delivers the webhook outbox. A decision's row is inserted already leased to this process (see
 * insertWebhook) and handed over in memory right after its commit, so the common case POSTs at
 * once with no poll and no claim. A background loop is the safety net: it polls for due rows
 * (retries, resends, and leased rows whose hand-over was lost to a crash or a full queue once
 * their lease ended), claims each with a lease and POSTs it the same way. Each POST carries the
 * stored body signed with a fresh timestamp; the outcome is recorded. A non-2xx answer or a
 * network error schedules a retry with exponential backoff until the attempts run out, after
 * which the row is marked given up. Delivery is at-least-once: the receiver dedupes by event id.
 *
 * Within a lease only its holder POSTs the row, and only while enough of the lease is left for a
 * whole attempt (the POST's hard deadline plus a margin to record it); a row that waited too
 * long for a free slot has its lease given back (the attempt it was leased for is not counted),
 * so the next poll claims it afresh instead of the row waiting out the lease.
 */
import {
  GroupCommit,
  type GroupCommitBatch,
  type GroupCommitLimits,
} from '../../storage/group-commit.js';
import { toUnavailable } from '../../storage/transaction.js';
import { WakeUp } from '../../domain/deadline.js';
import { signWebhook, PSP_SIGNATURE_HEADER } from '../webhook.js';
import type { PspDb } from './payment.repository.js';
import { WebhookPoster } from './webhook-post.js';
import {
  claimWebhook,
  findDueWebhooks,
  markWebhookDelivered,
  markWebhooksDelivered,
  markWebhookFailed,
  markWebhookGivenUp,
  releaseWebhookLeases,
  type PspWebhookDelivery,
} from './webhook.repository.js';

export type WebhookSenderOptions = Readonly<{
  /** How often the outbox is polled when nothing wakes the loop, in milliseconds. */
  pollMs: number;
  /** The deadline of one POST, in milliseconds. */
  requestTimeoutMs: number;
  /** The delay before the second attempt, in milliseconds; it doubles for each later one. */
  backoffMsInitial: number;
  /** The longest delay between two attempts, in milliseconds. */
  backoffMsMax: number;
  /** Attempts per delivery, the first included; then the row is given up. */
  attemptsMax: number;
  /** POSTs in flight at most. */
  inFlightMax: number;
}>;

export const WEBHOOK_SENDER_DEFAULTS: WebhookSenderOptions = Object.freeze({
  pollMs: 100,
  requestTimeoutMs: 5_000,
  backoffMsInitial: 500,
  backoffMsMax: 30_000,
  attemptsMax: 15,
  inFlightMax: 16,
});

/** A claimed row is not retried by another loop turn before this much time past the deadline. */
const LEASE_MARGIN_MS = 5_000;
/** Of the lease margin, this much is kept for recording the outcome after the POST's deadline. */
const RECORD_MARGIN_MS = 2_000;
/** Leased rows waiting for a free slot at most; beyond, a row is left to its lease. */
const WAITING_MAX = 10_000;
/** Deliveries waiting to be recorded; beyond it one is left to its lease (delivered again). */
const DELIVERED_QUEUE_MAX = 10_000;
/**
 * How long a delivered mark waits for others to share its statement. The row is leased for many
 * seconds, so nothing sends it again meanwhile; at a few hundred deliveries a second this turns a
 * statement per delivery into one per few.
 */
const DELIVERED_LINGER_MS = 10;
/** How long stop() waits for delivered marks still queued. */
const DELIVERED_STOP_MS = 5_000;
/** Unused leases given back per statement. */
const RELEASE_BATCH_MAX = 500;

/** The delay after attempt number `attempts` (1-based) failed. */
export function webhookBackoffMs(attempts: number, options: WebhookSenderOptions): number {
  const exponent = Math.min(Math.max(attempts - 1, 0), 30);
  return Math.min(options.backoffMsInitial * 2 ** exponent, options.backoffMsMax);
}

export class WebhookSender {
  readonly #db: PspDb;
  readonly #secret: string;
  readonly #options: WebhookSenderOptions;
  readonly #log: (line: string) => void;
  readonly #inFlight = new Set<Promise<void>>();
  readonly #stopController = new AbortController();
  readonly #poster: WebhookPoster;
  /**
   * Deliveries that end together are recorded with one statement, by row id, stamped when the
   * statement runs (a moment after their POSTs were answered).
   */
  readonly #delivered: GroupCommit<string, void>;
  /** Rows leased to this process that wait for a free slot, oldest first. */
  readonly #waiting: PspWebhookDelivery[] = [];
  /** Leases being given back (rows whose lease ran short while they waited); stop() waits. */
  readonly #releasing = new Set<Promise<void>>();
  /** Rows whose lease ran short before a slot was free, since start. */
  #shortLeases = 0;
  /** Handed-over rows turned away because WAITING_MAX rows were waiting, since start. */
  #turnedAway = 0;
  #loop: Promise<void> | undefined;
  readonly #wakeUp = new WakeUp();
  /** The last poll could not take every due row: poll again as soon as a slot frees up. */
  #backlog = false;

  constructor(options: {
    db: PspDb;
    secret: string;
    options: WebhookSenderOptions;
    log: (line: string) => void;
    /** Group commit of the delivered marks: rows per statement (1 = off), batches in flight. */
    groupCommit: GroupCommitLimits;
    /** Told of every group-commit batch, named by what it writes (tests, metrics). */
    onBatch?: (name: string, batch: GroupCommitBatch) => void;
  }) {
    this.#db = options.db;
    this.#secret = options.secret;
    this.#options = options.options;
    this.#log = options.log;
    this.#poster = new WebhookPoster({
      socketsMax: options.options.inFlightMax,
      requestTimeoutMs: options.options.requestTimeoutMs,
    });
    const db = options.db;
    const onBatch = options.onBatch;
    this.#delivered = new GroupCommit({
      name: 'webhook deliveries',
      onBatch: onBatch && ((batch) => onBatch('webhook deliveries', batch)),
      ...options.groupCommit,
      queueMax: DELIVERED_QUEUE_MAX,
      lingerMs: DELIVERED_LINGER_MS,
      writeOne: (id) => markWebhookDelivered(db, id, new Date()),
      writeBatch: async (ids) => {
        try {
          await markWebhooksDelivered(db, ids, new Date());
        } catch (error) {
          // Unavailable answers the whole batch; anything else is retried one by one.
          throw toUnavailable(error);
        }
        return ids.map(() => undefined);
      },
    });
  }

  start(): void {
    if (this.#loop !== undefined) throw new Error('webhook sender already started');
    this.#loop = this.#run();
  }

  /** Makes the loop look for due rows now instead of at the next poll. */
  wake(): void {
    this.#wakeUp.wake();
  }

  /** Rows whose lease ran short before a slot was free (their leases were given back). */
  get shortLeases(): number {
    return this.#shortLeases;
  }

  /** Handed-over rows turned away because too many were waiting (left to their leases). */
  get turnedAway(): number {
    return this.#turnedAway;
  }

  /** The end of the lease of an attempt that starts at `now`. */
  leaseUntil(now: Date): Date {
    return new Date(now.getTime() + this.#options.requestTimeoutMs + LEASE_MARGIN_MS);
  }

  /**
   * Takes a committed row that is leased to this process (inserted with `leaseUntil`) and POSTs
   * it as soon as a slot is free. Nothing is lost if it never is: the row is due again when its
   * lease ends.
   */
  deliver(row: PspWebhookDelivery): void {
    if (this.#stopController.signal.aborted) return;
    if (this.#waiting.length >= WAITING_MAX) {
      this.#turnedAway += 1;
      // One line per thousand: a burst past the bound would otherwise log every row.
      if (this.#turnedAway % 1_000 === 1) {
        this.#log(
          `psp webhook: ${WAITING_MAX} rows wait for a slot; row ${row.id} is left to its ` +
            `lease (${this.#turnedAway} turned away since start)`,
        );
      }
      return;
    }
    this.#waiting.push(row);
    this.#startWaiting();
  }

  /**
   * Stops the loop, aborts the POSTs in flight (they are retried later), gives back the leases
   * of rows that were never POSTed, and waits for all of it.
   */
  async stop(): Promise<void> {
    this.#stopController.abort();
    this.#poster.close();
    // Also when the loop is busy polling: it must not go to sleep for pollMs after that.
    this.wake();
    // A claim that was running when stop began adds its row to #waiting when it ends; nothing
    // starts a waiting row once stopping, so after the loop every leased row is in #waiting.
    await this.#loop;
    await Promise.allSettled([...this.#inFlight]);
    await this.#delivered.stop(DELIVERED_STOP_MS);
    await Promise.allSettled([...this.#releasing]);
    await this.#releaseLeases(this.#waiting.splice(0));
  }

  /** Gives back leases that were not used, a bounded number of rows per statement. */
  async #releaseLeases(rows: readonly PspWebhookDelivery[]): Promise<void> {
    for (let start = 0; start < rows.length; start += RELEASE_BATCH_MAX) {
      await releaseWebhookLeases(
        this.#db,
        rows.slice(start, start + RELEASE_BATCH_MAX),
        new Date(),
      ).catch((error: unknown) =>
        // The leases end on their own; the rows are only delivered a little later.
        this.#log(`psp webhook: giving back unused leases failed: ${describe(error)}`),
      );
    }
  }

  async #run(): Promise<void> {
    const stopSignal = this.#stopController.signal;
    while (!stopSignal.aborted) {
      try {
        await this.#sendDue();
      } catch (error) {
        this.#log(`psp webhook: polling the outbox failed: ${describe(error)}`);
      }
      await this.#wakeUp.sleep(this.#options.pollMs);
    }
  }

  async #sendDue(): Promise<void> {
    const free = this.#options.inFlightMax - this.#inFlight.size - this.#waiting.length;
    if (free <= 0) {
      this.#backlog = true;
      return;
    }
    const now = new Date();
    const due = await findDueWebhooks(this.#db, { now, limit: free });
    this.#backlog = due.length >= free;
    for (const row of due) {
      if (this.#stopController.signal.aborted) return;
      const claimed = await claimWebhook(this.#db, row, this.leaseUntil(now));
      if (claimed === undefined) continue;
      this.#waiting.push(claimed);
      // Claimed while stop() began: left waiting, so stop() gives its lease back.
      if (this.#stopController.signal.aborted) return;
      this.#startWaiting();
    }
  }

  /**
   * Starts waiting rows while slots are free. A row with too little lease left for a whole
   * attempt is not POSTed: its lease is given back so the poll claims it afresh at once.
   */
  #startWaiting(): void {
    // Once stopping, waiting rows stay for stop() to give their leases back.
    if (this.#stopController.signal.aborted) return;
    const needMs = this.#options.requestTimeoutMs + RECORD_MARGIN_MS;
    const shortLeases: PspWebhookDelivery[] = [];
    while (this.#inFlight.size < this.#options.inFlightMax) {
      const row = this.#waiting.shift();
      if (row === undefined) break;
      if (Date.now() + needMs > row.nextAttemptAt.getTime()) {
        shortLeases.push(row);
        continue;
      }
      const attempt = this.#attempt(row).finally(() => {
        this.#inFlight.delete(attempt);
        this.#startWaiting();
        // Rows that waited for a slot need not wait for the next poll.
        if (this.#backlog) this.wake();
      });
      this.#inFlight.add(attempt);
    }
    if (shortLeases.length > 0) this.#releaseShortLeases(shortLeases);
  }

  /** Gives back leases too short to POST in, then wakes the poll to claim the rows again. */
  #releaseShortLeases(rows: readonly PspWebhookDelivery[]): void {
    this.#shortLeases += rows.length;
    this.#log(
      `psp webhook: ${rows.length} row(s) waited for a free slot until too little of their ` +
        'lease was left to POST; giving the leases back for the poll',
    );
    const release = this.#releaseLeases(rows)
      .then(() => this.wake())
      .finally(() => this.#releasing.delete(release));
    this.#releasing.add(release);
  }

  async #attempt(row: PspWebhookDelivery): Promise<void> {
    const error = await this.#post(row);
    try {
      if (error === undefined) {
        // Recorded a moment later with others (DELIVERED_LINGER_MS), without holding the slot:
        // the row stays leased meanwhile, and if the mark is lost it is delivered again.
        void this.#delivered
          .submit(row.id)
          .catch((recordError: unknown) =>
            this.#log(
              `psp webhook: recording delivery of ${row.eventId} failed: ${describe(recordError)}`,
            ),
          );
        return;
      }
      const now = new Date();
      if (row.attempts >= this.#options.attemptsMax) {
        await markWebhookGivenUp(this.#db, row.id, { error, now });
        this.#log(
          `psp webhook: gave up on ${row.eventId} (delivery ${row.delivery}) to ${row.url} ` +
            `after ${row.attempts} attempts: ${error}`,
        );
        return;
      }
      const delayMs = webhookBackoffMs(row.attempts, this.#options);
      await markWebhookFailed(this.#db, row.id, {
        error,
        nextAttemptAt: new Date(now.getTime() + delayMs),
      });
    } catch (recordError) {
      // The lease makes the row due again later; nothing is lost.
      this.#log(
        `psp webhook: recording attempt of ${row.eventId} failed: ${describe(recordError)}`,
      );
    }
  }

  /** POSTs one delivery; undefined on a 2xx answer, else a description of the failure. */
  async #post(row: PspWebhookDelivery): Promise<string | undefined> {
    const timestampS = Math.floor(Date.now() / 1000);
    // Encoded once: the bytes signed are the bytes sent.
    const body = Buffer.from(row.body, 'utf8');
    return this.#poster.post(
      row.url,
      {
        'Content-Type': 'application/json',
        [PSP_SIGNATURE_HEADER]: signWebhook(this.#secret, body, timestampS),
      },
      body,
    );
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message})` : '';
    return `${error.name}: ${error.message}${cause}`;
  }
  return String(error);
}
