/**
 * Runs a new order's ExecuteOrder on the node that created it, straight into the order's actor,
 * instead of sending it through the outbox relay, JetStream and a consumer first. JetStream stays
 * the backstop, and the outbox row is still what makes the command durable:
 *
 * - the creation's transaction writes the ExecuteOrder row as before, but held back from the
 *   relay until `holdMs` later (outbox.available_at);
 * - after the commit, this node sends the command to the order's actor, seeded with the order as
 *   just written (no read back);
 * - when the actor is done (registered with the PSP, the token committed) the row is gone: it is
 *   deleted in the transaction of the turn's last transition (or alone, if the turn wrote none);
 * - when it asks for a retry, the row is handed to the relay with the attempt counted
 *   (`priorAttempts`), due after the first backoff step: the usual retries with backoff and the
 *   dead-letter queue take over, within the configured number of retries (unless the run outlasted
 *   the hold and the row was already relayed as written: one retry more, at most, and logged);
 * - when it rejects the command (the order vanished or refuses it: not expected for an order just
 *   created), the row is handed over at once: the consumer runs it again and, if it is refused
 *   there too, dead-letters it with the consumer's own reason;
 * - when it throws an error that says it is not retryable (the PSP answered a registration with
 *   a token Settle cannot store), the command is dead-lettered here, as the consumer would
 *   (NON_RETRYABLE, the row's payload, one OPEN entry per order, reason and command), and the row
 *   is deleted in the same transaction: handed over, it would only ask the PSP the same question
 *   again, one hop later, for the same dead letter;
 * - if this node dies before either, the row becomes due when the hold ends and any node's relay
 *   publishes it: the order is executed there (an ExecuteOrder that finds the order further on
 *   is a no-op, and the PSP deduplicates a registration by the order's id).
 *
 * Bounded: at most `inFlightMax` orders run here at once; a payment whose orders do not fit is
 * written with its rows due at once and goes the JetStream way.
 */
import {
  DEAD_LETTER_ERROR_CHARS_MAX,
  DEAD_LETTER_REASON,
  outcomeOfThrow,
  type DeadLetter,
  type HandleOutcome,
} from '../../messaging/command-consumer.js';
import { executeOrderMsgId, executeOrderPayload } from '../../messaging/commands.js';
import type { Db } from '../../storage/db.js';
import { retryOnDeadlock } from '../../storage/transaction.js';
import {
  deleteOutboxByMsgId,
  makeOutboxDue,
  releaseOutbox,
} from '../../storage/repositories/outbox.repository.js';
import type { OrderMessage } from './actor.js';
import type { PaymentOrder } from './machine.js';

export type LocalExecuteOptions = Readonly<{
  /** How long a new order's row is held back from the relay; 0 turns local execution off. */
  holdMs: number;
  /** Orders run here at once, at most. */
  inFlightMax: number;
  /** When a retryable failure here is retried through JetStream (the first backoff step). */
  retryDelayMs: number;
}>;

export type LocalExecuteDeps = Readonly<{
  db: Db;
  /** Delivers a message to the order's actor on this node. */
  send: (orderId: string, message: OrderMessage) => Promise<HandleOutcome>;
  /** The subject the order's commands are published on (a dead letter names it). */
  commandSubject: (orderId: string) => string;
  /**
   * Records the dead letter of a run refused for good here and deletes the held row `msgId` in
   * the same transaction (admin/dead-letters.ts recordHeldDeadLetter); false when it was recorded
   * already (an OPEN entry for the same command and reason).
   */
  deadLetter: (entry: DeadLetter, msgId: string) => Promise<boolean>;
  /** A dead letter recorded here: counted and logged as the consumer's are. */
  onDeadLetter?: (entry: DeadLetter) => void;
  wakeRelay: () => void;
  now: () => Date;
  onError?: (error: unknown, context: Record<string, unknown>) => void;
  /**
   * Called when an order leaves this node for JetStream, with why; `retry` for a retry after a
   * failed attempt here (false for a rejection).
   */
  onHandover?: (handover: {
    orderId: string;
    reason: string;
    delayMs: number;
    retry: boolean;
  }) => void;
}>;

export class LocalExecutor {
  private reserved = 0;
  /** Runs in progress here, by order id. */
  private readonly running = new Map<string, Promise<void>>();
  private stopping = false;
  private handedOverTotal = 0;
  private deletedWithTransition = 0;

  constructor(
    private readonly deps: LocalExecuteDeps,
    private readonly options: LocalExecuteOptions,
  ) {}

  get enabled(): boolean {
    return this.options.holdMs > 0 && !this.stopping;
  }

  /** Runs whose row went with their last transition, and runs handed over to JetStream. */
  get counts(): { deletedWithTransition: number; handedOver: number } {
    return { deletedWithTransition: this.deletedWithTransition, handedOver: this.handedOverTotal };
  }

  /**
   * Reserves local runs for one payment's `count` orders, all or none. When it answers a time,
   * the caller writes the orders' ExecuteOrder rows held until then and, once committed, calls
   * `run`; if the write fails, `unreserve`.
   */
  reserve(count: number, now: Date): Date | undefined {
    if (!this.enabled || count === 0 || this.reserved + count > this.options.inFlightMax) {
      return undefined;
    }
    this.reserved += count;
    return new Date(now.getTime() + this.options.holdMs);
  }

  unreserve(count: number): void {
    this.reserved -= count;
  }

  /** Runs the reserved orders, whose creation has committed; returns at once. */
  run(orders: readonly PaymentOrder[]): void {
    for (const order of orders) {
      const run: Promise<void> = this.runOne(order)
        .catch((error: unknown) => this.deps.onError?.(error, { orderId: order.id }))
        .finally(() => {
          this.reserved -= 1;
          this.running.delete(order.id);
        });
      this.running.set(order.id, run);
    }
  }

  /**
   * Stops taking orders and waits (bounded) for those running here. The rows of runs still going
   * at the deadline are made due at once, so that another node's relay takes them now rather than
   * when their hold ends (if this node finishes one after all, the second run is a no-op).
   */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.running.values()]),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
    const unfinished = [...this.running.keys()].map(executeOrderMsgId);
    if (unfinished.length > 0) {
      await makeOutboxDue(this.deps.db, unfinished, this.deps.now()).catch((error: unknown) =>
        this.deps.onError?.(error, { unfinished: unfinished.length }),
      );
      this.deps.wakeRelay();
    }
  }

  private async runOne(order: PaymentOrder): Promise<void> {
    const msgId = executeOrderMsgId(order.id);
    let outcome: HandleOutcome;
    try {
      outcome = await this.deps.send(order.id, {
        event: { type: 'ExecuteOrder' },
        seed: order,
        outboxRow: msgId,
      });
    } catch (error) {
      // Read as the consumer reads a throw: one that says it is not retryable is refused for good.
      const thrown = outcomeOfThrow(error);
      if (thrown.kind === 'reject') {
        await this.deadLetter(order.id, msgId, thrown.reason);
        return;
      }
      // Counted as an attempt even when the actor refused before running (a full mailbox): one
      // retry too few is safe, one too many is not.
      outcome = thrown;
    }
    if (outcome.kind === 'done') {
      // Deleted with the turn's last transition; on its own (rare) when the turn wrote none.
      if (outcome.outboxRowDeleted === true) this.deletedWithTransition += 1;
      else await retryOnDeadlock(() => deleteOutboxByMsgId(this.deps.db, [msgId]));
      return;
    }
    const retry = outcome.kind === 'retry';
    const delayMs = retry ? this.options.retryDelayMs : 0;
    this.handedOverTotal += 1;
    this.deps.onHandover?.({ orderId: order.id, reason: outcome.reason, delayMs, retry });
    // An autocommit UPDATE, safe to repeat, and repeated when the outbox relay's pass deadlocks
    // with it (else the attempt made here would go uncounted and the retry would wait for the
    // hold to end). If it still fails, the row is due when its hold ends.
    const released = await retryOnDeadlock(() =>
      releaseOutbox(this.deps.db, {
        msgId,
        payload: executeOrderPayload(order.id, 1),
        availableAt: new Date(this.deps.now().getTime() + delayMs),
      }),
    );
    if (!released) {
      // The run outlasted the hold and the relay took the row as written: JetStream runs it
      // without knowing of the attempt made here (one retry more than configured, at most).
      this.deps.onError?.(new Error('the held row was relayed before the run here ended'), {
        orderId: order.id,
      });
    }
    if (delayMs === 0) this.deps.wakeRelay();
  }

  /**
   * The consumer's NON_RETRYABLE dead letter for this order's ExecuteOrder, on its first attempt,
   * with the payload its held row carries. Should recording fail, the row stays held and is
   * relayed when its hold ends: JetStream then runs it, as after a crash here.
   */
  private async deadLetter(orderId: string, msgId: string, reason: string): Promise<void> {
    const entry: DeadLetter = {
      orderId,
      subject: this.deps.commandSubject(orderId),
      // It never reached the stream: no sequence, no stream creation time.
      streamCreatedAt: '',
      streamSequence: 0,
      attempts: 1,
      reason: DEAD_LETTER_REASON.nonRetryable,
      lastError: reason.slice(0, DEAD_LETTER_ERROR_CHARS_MAX),
      payload: executeOrderPayload(orderId, 0),
      deadLetteredAt: this.deps.now().toISOString(),
    };
    if (await this.deps.deadLetter(entry, msgId)) this.deps.onDeadLetter?.(entry);
  }
}
