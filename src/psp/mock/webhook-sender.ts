/**
 * Delivers the webhook outbox: a background loop polls for due rows (and wakes at once after a
 * decision), claims each with a lease, POSTs the stored body signed with a fresh timestamp, and
 * records the outcome. A non-2xx answer or a network error schedules a retry with exponential
 * backoff until the attempts run out, after which the row is marked given up. Delivery is
 * at-least-once: the receiver dedupes by event id.
 */
import { GroupCommit } from '../../storage/group-commit.js';
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
  /** Deliveries that end together are recorded with one statement. */
  readonly #delivered: GroupCommit<{ id: string; now: Date }, void>;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #wakeRequested = false;

  constructor(options: {
    db: PspDb;
    secret: string;
    options: WebhookSenderOptions;
    log: (line: string) => void;
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
    this.#delivered = new GroupCommit({
      name: 'webhook deliveries',
      batchMax: 500,
      inFlightMax: 2,
      queueMax: 10_000,
      writeOne: ({ id, now }) => markWebhookDelivered(db, id, now),
      writeBatch: async (deliveries) => {
        await markWebhooksDelivered(db, deliveries);
        return deliveries.map(() => undefined);
      },
    });
  }

  start(): void {
    if (this.#loop !== undefined) throw new Error('webhook sender already started');
    this.#loop = this.#run();
  }

  /** Makes the loop look for due rows now instead of at the next poll. */
  wake(): void {
    this.#wakeRequested = true;
    this.#wake?.();
  }

  /** Stops the loop, aborts the POSTs in flight (they are retried later) and waits for both. */
  async stop(): Promise<void> {
    this.#stopController.abort();
    this.#poster.close();
    this.#wake?.();
    await this.#loop;
    await Promise.allSettled([...this.#inFlight]);
  }

  async #run(): Promise<void> {
    const stopSignal = this.#stopController.signal;
    while (!stopSignal.aborted) {
      this.#wakeRequested = false;
      try {
        await this.#sendDue();
      } catch (error) {
        this.#log(`psp webhook: polling the outbox failed: ${describe(error)}`);
      }
      if (this.#wakeRequested) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, this.#options.pollMs);
        this.#wake = done;
        function done(): void {
          clearTimeout(timer);
          resolve();
        }
      });
      this.#wake = undefined;
    }
  }

  async #sendDue(): Promise<void> {
    const free = this.#options.inFlightMax - this.#inFlight.size;
    if (free <= 0) return;
    const now = new Date();
    const due = await findDueWebhooks(this.#db, { now, limit: free });
    for (const row of due) {
      if (this.#stopController.signal.aborted) return;
      const leaseUntil = new Date(now.getTime() + this.#options.requestTimeoutMs + LEASE_MARGIN_MS);
      const claimed = await claimWebhook(this.#db, row, leaseUntil);
      if (claimed === undefined) continue;
      const attempt = this.#attempt(claimed).finally(() => {
        this.#inFlight.delete(attempt);
        // A slot is free: rows that waited for one need not wait for the next poll.
        this.wake();
      });
      this.#inFlight.add(attempt);
    }
  }

  async #attempt(row: PspWebhookDelivery): Promise<void> {
    const error = await this.#post(row);
    try {
      const now = new Date();
      if (error === undefined) {
        await this.#delivered.submit({ id: row.id, now });
        return;
      }
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
    return this.#poster.post(
      row.url,
      {
        'Content-Type': 'application/json',
        [PSP_SIGNATURE_HEADER]: signWebhook(this.#secret, row.body, timestampS),
      },
      row.body,
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
