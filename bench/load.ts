/**
 * Drives Settle over gRPC and watches payments finish. Two shapes of load:
 *
 * - closed loop: `concurrency` workers, each creating a payment and waiting until it is terminal
 *   before the next, which finds the maximum rate;
 * - open loop: payments started at a fixed rate whatever happens, which measures latency at a
 *   chosen load (half the maximum) without the coordinated omission of a closed loop.
 *
 * Completion is observed in Settle's database (the payment row's state): a payment counts as
 * terminal when a read first sees it so. Reads are driven by Settle's own "payment changed"
 * notifications on NATS (published after each commit; the ids that changed are read back in one
 * query per turn), so a sample is not stretched by a polling interval; a poll of every payment in
 * flight every POLL_MS stays as the fallback should a notification be lost. Every loop ends at
 * its deadline or count, whichever comes first.
 */
import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { createPool, type Pool, type RowDataPacket } from 'mysql2/promise';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  PaymentServiceClient,
  type CreatePaymentRequest,
  type CreatePaymentResponse,
} from '../src/grpc/generated/settle/v1/payment.js';
import { parseMysqlUrl, serverAddress } from '../src/storage/db.js';
import { TERMINAL_PAYMENT_STATES } from '../src/storage/repositories/payment.repository.js';
import { sleep } from '../src/chaos/processes.js';
import { WakeUp } from '../src/domain/deadline.js';
import { isRetryableStatus } from '../src/chaos/rpc.js';

/** The fallback poll of every payment in flight (notifications drive the reads in between). */
const POLL_MS = 50;
/**
 * Reads driven by notifications are at least this far apart, so that each one carries the ids
 * of several commits (fewer queries and less of the machine's CPU for the watcher); it bounds
 * what the watcher adds to a sample.
 */
const READ_GAP_MS = 3;
const POLL_IDS_MAX = 2_000;
/** A payment not terminal this long after its creation counts as timed out. */
export const TERMINAL_TIMEOUT_MS = 60_000;
const CREATE_DEADLINE_MS = 10_000;
/**
 * Attempts of one CreatePayment, all with the same request id: retried when Settle asks
 * (ABORTED, RESOURCE_EXHAUSTED, UNAVAILABLE) or the answer was lost (DEADLINE_EXCEEDED).
 */
const CREATE_RETRIES_MAX = 20;

export type PaymentShape = Readonly<{
  ordersPerPayment: number;
  sellers: number;
  /** Every payment has one order, to this seller, when set. */
  hotSeller: string | undefined;
}>;

export type Sample = Readonly<{
  paymentId: string;
  orders: number;
  createMs: number;
  /** The attempt CreatePayment answered at (1: no retry; createMs includes every attempt). */
  attempts: number;
  /** Create start → terminal seen; undefined when it timed out. */
  terminalMs: number | undefined;
  state: string | undefined;
  startedAt: number;
}>;

export type LoadResult = Readonly<{
  samples: Sample[];
  elapsedMs: number;
  createErrors: Record<string, number>;
  /** Open loop only: starts skipped because too many payments were in flight. */
  skipped: number;
}>;

type Waiter = {
  startedAt: number;
  resolve: (seen: { state: string; at: number } | undefined) => void;
};

/** Watches payments in Settle's database until they are terminal. */
export class CompletionWatcher {
  private readonly pool: Pool;
  private readonly waiting = new Map<string, Waiter>();
  /** Payments in flight that a notification said changed, not read since. */
  private readonly changed = new Set<string>();
  private running = true;
  private readonly wakeUp = new WakeUp();
  private readonly loop: Promise<void>;
  private readonly nats: Promise<NatsConnection | undefined>;
  private stopped: Promise<void> | undefined;

  /**
   * `events`: the NATS server and the subject of Settle's payment notifications
   * (`names(namespace).paymentEventSubjectAll`); without it, or if NATS cannot be reached, the
   * watcher only polls.
   */
  constructor(mysqlUrl: string, events?: Readonly<{ natsUrl: string; subject: string }>) {
    const target = parseMysqlUrl(mysqlUrl);
    this.pool = createPool({
      ...serverAddress(target),
      database: target.database,
      connectionLimit: 2,
      connectTimeout: 5_000,
    });
    this.nats = events === undefined ? Promise.resolve(undefined) : this.listen(events);
    this.loop = this.run();
  }

  /** Resolves when the payment is terminal, or with undefined after TERMINAL_TIMEOUT_MS. */
  wait(paymentId: string, startedAt: number): Promise<{ state: string; at: number } | undefined> {
    return new Promise((resolve) => this.waiting.set(paymentId, { startedAt, resolve }));
  }

  get inFlight(): number {
    return this.waiting.size;
  }

  /** Stops polling; waits still pending resolve with undefined. Idempotent. */
  stop(): Promise<void> {
    return (this.stopped ??= (async () => {
      this.running = false;
      this.wakeUp.wake();
      await this.loop;
      await (await this.nats)?.close();
      for (const waiter of this.waiting.values()) waiter.resolve(undefined);
      this.waiting.clear();
      await this.pool.end();
    })());
  }

  private async listen(events: Readonly<{ natsUrl: string; subject: string }>) {
    let nc: NatsConnection;
    try {
      nc = await connect({ servers: events.natsUrl, timeout: 5_000 });
    } catch {
      return undefined;
    }
    const subscription = nc.subscribe(events.subject);
    void (async () => {
      for await (const message of subscription) {
        // One id on its own subject, or several space-separated on `<prefix>.batch`.
        const last = message.subject.slice(message.subject.lastIndexOf('.') + 1);
        const ids = last === 'batch' ? message.string().split(' ') : [last];
        for (const id of ids) if (this.waiting.has(id)) this.changed.add(id);
        if (this.changed.size > 0) this.wakeUp.wake();
      }
    })();
    return nc;
  }

  private async run(): Promise<void> {
    let polledAt = 0;
    let readAt = 0;
    while (this.running) {
      const sinceRead = Date.now() - readAt;
      if (this.changed.size > 0 && sinceRead < READ_GAP_MS) await sleep(READ_GAP_MS - sinceRead);
      // Until a notification arrives or the fallback poll is due.
      const untilPoll = polledAt + POLL_MS - Date.now();
      if (this.changed.size === 0 && untilPoll > 0) {
        await this.wakeUp.sleep(untilPoll);
        continue;
      }
      let ids: string[];
      if (untilPoll <= 0) {
        ids = [...this.waiting.keys()].slice(0, POLL_IDS_MAX);
        polledAt = Date.now();
      } else {
        ids = [...this.changed].slice(0, POLL_IDS_MAX);
      }
      for (const id of ids) this.changed.delete(id);
      readAt = Date.now();
      if (ids.length > 0) await this.read(ids);
      const now = Date.now();
      for (const [id, waiter] of this.waiting) {
        if (now - waiter.startedAt > TERMINAL_TIMEOUT_MS) {
          waiter.resolve(undefined);
          this.waiting.delete(id);
          this.changed.delete(id);
        }
      }
    }
  }

  private async read(ids: readonly string[]): Promise<void> {
    try {
      const [rows] = await this.pool.query<RowDataPacket[]>(
        'SELECT id, state FROM payment WHERE id IN (?)',
        [ids],
      );
      const seenAt = Date.now();
      for (const row of rows) {
        const state = String(row['state']);
        if (!TERMINAL_PAYMENT_STATES.has(state)) continue;
        const id = String(row['id']);
        this.waiting.get(id)?.resolve({ state, at: seenAt });
        this.waiting.delete(id);
      }
    } catch {
      // A failed read is retried by the next poll; timeouts still bound every wait.
    }
  }
}

export class LoadDriver {
  private readonly client: PaymentServiceClient;
  private buyerSeq = 0;

  constructor(
    address: string,
    private readonly watcher: CompletionWatcher,
  ) {
    this.client = new PaymentServiceClient(address, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    });
  }

  close(): void {
    this.client.close();
  }

  /**
   * Creates one payment, retrying with the same request id what may be retried; returns its id
   * and the time. A call past its deadline may still have committed the payment, so it is asked
   * again (the same id answers with that payment) rather than given up: the end-of-run check
   * counts every stored payment as created.
   */
  async create(
    shape: PaymentShape,
    errors: Record<string, number>,
  ): Promise<
    { paymentId: string; createMs: number; attempts: number; startedAt: number } | undefined
  > {
    const request: CreatePaymentRequest = {
      requestId: randomUUID(),
      buyerId: `buyer-${(this.buyerSeq += 1) % 10_000}`,
      currencyCode: 'USD',
      orders: sellersFor(shape).map((sellerId) => ({
        sellerId,
        amountMinor: BigInt(100 + Math.floor(Math.random() * 10_000)),
      })),
    };
    // Latency is the client's: from the first attempt, retries and their pauses included.
    const startedAt = Date.now();
    for (let attempt = 1; attempt <= CREATE_RETRIES_MAX; attempt += 1) {
      try {
        const response = await this.call(request);
        const paymentId = response.payment?.paymentId;
        if (paymentId === undefined) throw new Error('CreatePayment answered without a payment');
        return { paymentId, createMs: Date.now() - startedAt, attempts: attempt, startedAt };
      } catch (error) {
        const code = (error as grpc.ServiceError).code;
        const name = code === undefined ? 'ERROR' : (grpc.status[code] ?? String(code));
        errors[name] = (errors[name] ?? 0) + 1;
        if (!isRetryableStatus(error)) return undefined;
        await sleep(Math.min(1_000, 20 * attempt));
      }
    }
    return undefined;
  }

  /** `concurrency` workers, each create → wait terminal → repeat, until the deadline/count. */
  async closedLoop(options: {
    shape: PaymentShape;
    concurrency: number;
    durationMs: number;
    paymentsMax: number;
    onProgress?: (done: number) => void;
  }): Promise<LoadResult> {
    const samples: Sample[] = [];
    const createErrors: Record<string, number> = {};
    const started = Date.now();
    const deadline = started + options.durationMs;
    let launched = 0;
    await Promise.all(
      Array.from({ length: options.concurrency }, async () => {
        while (Date.now() < deadline && launched < options.paymentsMax) {
          launched += 1;
          const sample = await this.onePayment(options.shape, createErrors);
          if (sample !== undefined) samples.push(sample);
          options.onProgress?.(samples.length);
        }
      }),
    );
    return { samples, elapsedMs: lastEnd(samples, started) - started, createErrors, skipped: 0 };
  }

  /** Starts payments at `ratePerS` until the deadline/count, never more than `inFlightMax` at once. */
  async openLoop(options: {
    shape: PaymentShape;
    ratePerS: number;
    durationMs: number;
    paymentsMax: number;
    inFlightMax: number;
  }): Promise<LoadResult> {
    const samples: Sample[] = [];
    const createErrors: Record<string, number> = {};
    const running = new Set<Promise<void>>();
    const started = Date.now();
    const intervalMs = 1000 / options.ratePerS;
    let skipped = 0;
    for (let i = 0; i < options.paymentsMax; i += 1) {
      const due = started + i * intervalMs;
      if (due >= started + options.durationMs) break;
      const wait = due - Date.now();
      if (wait > 0) await sleep(wait);
      if (running.size >= options.inFlightMax) {
        skipped += 1;
        continue;
      }
      const task: Promise<void> = this.onePayment(options.shape, createErrors).then((sample) => {
        if (sample !== undefined) samples.push(sample);
        running.delete(task);
      });
      running.add(task);
    }
    await Promise.all(running);
    return { samples, elapsedMs: lastEnd(samples, started) - started, createErrors, skipped };
  }

  private async onePayment(
    shape: PaymentShape,
    errors: Record<string, number>,
  ): Promise<Sample | undefined> {
    const created = await this.create(shape, errors);
    if (created === undefined) return undefined;
    const seen = await this.watcher.wait(created.paymentId, created.startedAt);
    return {
      paymentId: created.paymentId,
      orders: shape.ordersPerPayment,
      createMs: created.createMs,
      attempts: created.attempts,
      terminalMs: seen === undefined ? undefined : seen.at - created.startedAt,
      state: seen?.state,
      startedAt: created.startedAt,
    };
  }

  private call(request: CreatePaymentRequest): Promise<CreatePaymentResponse> {
    return new Promise((resolve, reject) => {
      this.client.createPayment(
        request,
        new grpc.Metadata(),
        { deadline: Date.now() + CREATE_DEADLINE_MS },
        (error, response) => (error ? reject(error) : resolve(response)),
      );
    });
  }
}

/** Distinct sellers for one payment (a payment has one order per seller). */
function sellersFor(shape: PaymentShape): string[] {
  if (shape.hotSeller !== undefined) return [shape.hotSeller];
  const picked = new Set<string>();
  const wanted = Math.min(shape.ordersPerPayment, shape.sellers);
  for (let tries = 0; picked.size < wanted && tries < wanted * 100; tries += 1) {
    picked.add(`seller-${Math.floor(Math.random() * shape.sellers)}`);
  }
  return [...picked];
}

function lastEnd(samples: readonly Sample[], started: number): number {
  let end = started + 1;
  for (const sample of samples) {
    const at = sample.startedAt + (sample.terminalMs ?? 0);
    if (at > end) end = at;
  }
  return end;
}

/** The q-quantile (0..1) of the values, nearest rank; NaN when empty. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}
