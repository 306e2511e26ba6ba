/**
 * Pulls commands from the runtime's durable consumer and hands each to a handler, at most
 * `inFlightMax` at a time. A message is acked only after the handler says its effect is
 * committed; a retryable failure is nak'ed with exponential backoff and jitter; after the last
 * allowed delivery, or on a non-retryable failure (a `reject`, or a thrown error that says
 * `retryable: false`), the message goes to the dead-letter stream with its reason and is
 * terminated. Malformed messages go straight to the dead-letter stream.
 * Terminations carry no reason: nats-server 2.9 ignores a `+TERM` that has one, leaving the message
 * unacknowledged and redelivered after ack_wait; the reason is in the dead letter instead.
 * While a message is handled its ack deadline is extended (`+WPI`), for a bounded time only.
 *
 * A node holds a message only while it works on it: each pull asks for as many messages as there
 * are free slots, so a backlog stays on the stream (for any node with room) instead of waiting in
 * this node's buffer, where ack_wait would run out and JetStream redeliver a healthy command, each
 * time spending one of its deliveries. A message that arrives with no free slot all the same (a
 * pull renewed after a reconnect) waits reported in progress, for a bounded time.
 *
 * It also keeps what it last saw of the consumer's progress (`progress()`), so that the lag on
 * /metrics and the admin panel needs no consumer info from the server, which on nats-server 2.9
 * holds back this consumer's deliveries under a backlog: each first delivery's stream sequence,
 * and each pull heartbeat's `Nats-Last-Stream` (the consumer's delivered stream sequence,
 * whichever node it delivered to), which the server sends every PULL_HEARTBEAT_MS while a pull
 * waits with nothing to deliver.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type {
  Consumer,
  JsMsg,
  JetStreamClient,
  ConsumerMessages,
  JetStreamManager,
} from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { orderIdOfMalformed, parseCommand, type Command } from './commands.js';
import type { Names } from './subjects.js';

export type HandleOutcome =
  /**
   * `receiptStored`: the message's inbox receipt was committed with its transition;
   * `outboxRowDeleted`: so was the deletion of the command's held outbox row.
   */
  | Readonly<{ kind: 'done'; receiptStored?: boolean; outboxRowDeleted?: boolean }>
  | Readonly<{ kind: 'retry'; reason: string }>
  | Readonly<{ kind: 'reject'; reason: string }>;

export type CommandHandler = (
  command: Command,
  delivery: { attempt: number; isLastAttempt: boolean },
) => Promise<HandleOutcome>;

/**
 * What a node knows of the runtime consumer's progress without asking the server for the
 * consumer's info.
 */
export type ConsumerProgress = Readonly<{
  /**
   * The consumer's delivered stream sequence (for every node, not only this one) as of
   * `seenAtMs`: the last first delivery or pull heartbeat this node saw. Undefined before the
   * first. Other nodes' deliveries since are not in it, so it is never ahead of the server's.
   */
  deliveredStreamSeq: number | undefined;
  /** When `deliveredStreamSeq` was seen (Unix ms). */
  seenAtMs: number | undefined;
  /** Messages this node holds unacknowledged: being handled, or waiting for a slot. */
  held: number;
  /** Of those, delivered more than once. */
  heldRedelivered: number;
  /** Whether this node has a pull open at the server. */
  pullOpen: boolean;
}>;

export type ConsumerOptions = Readonly<{
  inFlightMax: number;
  /** The consumer's ack_wait: a message being handled is reported in progress every third of it. */
  ackWaitMs: number;
  /**
   * How long a message being handled is kept from redelivery at most. Past it the handler is
   * taken for hung: the reports stop and JetStream redelivers the message after ack_wait.
   */
  workingMsMax: number;
  /** Delay before retry n (1-based) is backoffMs[n - 1]; its length is the number of retries. */
  backoffMs: readonly number[];
  /** Fraction of random spread around each delay, e.g. 0.2 for ±20 %. */
  jitter: number;
  onError?: (error: unknown, context: Record<string, unknown>) => void;
  /**
   * Durably records a dead letter (MySQL); awaited before the message is terminated. Answers
   * false when this very message was already recorded (another node heard the advisory too, or
   * a node recorded it and died before terminating it), or when its order has an OPEN entry for
   * the same command and reason (a janitor's check refused again); it is then terminated, not
   * counted again.
   */
  recordDeadLetter: (entry: DeadLetter) => Promise<boolean | void>;
  onDeadLetter?: (entry: DeadLetter) => void;
  onRetry?: (entry: { orderId: string; attempt: number; delayMs: number; reason: string }) => void;
}>;

/** A dead letter keeps this much of its last error. */
export const DEAD_LETTER_ERROR_CHARS_MAX = 2_000;

/**
 * Why a command was dead-lettered: its handler kept asking for a retry, or refused it for good;
 * its payload is not a command; or JetStream delivered it max_deliver times without an answer.
 */
export const DEAD_LETTER_REASON = {
  retriesExhausted: 'RETRIES_EXHAUSTED',
  nonRetryable: 'NON_RETRYABLE',
  malformedCommand: 'MALFORMED_COMMAND',
  maxDeliveries: 'MAX_DELIVERIES',
} as const;
export type DeadLetterReason = (typeof DEAD_LETTER_REASON)[keyof typeof DEAD_LETTER_REASON];

export type DeadLetter = Readonly<{
  orderId: string | null;
  subject: string;
  /**
   * When JetStream created the command stream (StreamInfo.created, RFC 3339 in nanoseconds). A
   * recreated stream (its storage lost, or deleted and set up again) numbers its messages from 1
   * again, so only the sequence with this names one message: see deadLetterKey.
   */
  streamCreatedAt: string;
  streamSequence: number;
  attempts: number;
  reason: string;
  lastError: string;
  payload: string;
  deadLetteredAt: string;
}>;

/**
 * The name of the stream message a dead letter is for: the same for every node and for both
 * ways a message is dead-lettered (its handler's answer, the max-deliveries advisory), and
 * different for a later message at a reused sequence of a recreated stream. It keys the
 * `dead_letter` row and the dead-letter stream's copy.
 */
export function deadLetterKey(
  streamName: string,
  entry: Pick<DeadLetter, 'streamSequence' | 'streamCreatedAt'>,
): string {
  return `${streamName}:${entry.streamSequence}@${entry.streamCreatedAt}`;
}

/** How long a pull waits at the server for messages before the next one replaces it. */
const PULL_EXPIRES_MS = 5_000;
/**
 * While a pull waits with nothing to deliver, the server sends a heartbeat this often, with the
 * consumer's delivered stream sequence; nats.js ends a pull that misses two. Half of
 * PULL_EXPIRES_MS (nats.js's default for fetch), so that every idle pull brings one.
 */
export const PULL_HEARTBEAT_MS = PULL_EXPIRES_MS / 2;
/** Pause after a failed pull, doubled per failure in a row up to the max. */
const PULL_RETRY_MS_MIN = 100;
const PULL_RETRY_MS_MAX = 5_000;

/** Deliveries at most: the first one plus one per backoff step (the consumer and its stream). */
export function maxDeliveries(backoffMs: readonly number[]): number {
  return backoffMs.length + 1;
}

/**
 * What a handler that threw asks for: its error's own retry advice (`retryable`, as domain errors
 * carry it). One that says it is not retryable is refused at once: each retry would ask the same
 * question again (the PSP refusing our credentials, say) and end as RETRIES_EXHAUSTED, which
 * misleads the operator. An error that says nothing (a bug, a driver's error) is retried.
 */
export function outcomeOfThrow(error: unknown): HandleOutcome {
  const reason = error instanceof Error ? error.message : String(error);
  const retryable = (error as { retryable?: unknown } | null | undefined)?.retryable;
  return retryable === false ? { kind: 'reject', reason } : { kind: 'retry', reason };
}

export class CommandConsumer {
  /** The pull being read, while there is one. */
  private batch: ConsumerMessages | undefined;
  private advisories: Subscription | undefined;
  private loop: Promise<void> | undefined;
  private inFlight = 0;
  /** Each message being handled, with the function that stops its in-progress reports. */
  private readonly inFlightMessages = new Map<JsMsg, () => void>();
  /** Messages that came with no free slot, oldest first, each reported in progress meanwhile. */
  private readonly waiting: Array<{ message: JsMsg; stopWorking: () => void }> = [];
  private slotFreed: (() => void) | undefined;
  private readonly stopped = new AbortController();
  private stopping = false;
  /** The command stream's creation time as last read, and the read in flight (shared). */
  private streamCreatedAt: string | undefined;
  private streamCreatedAtRead: Promise<string> | undefined;
  private deliveredStreamSeq: number | undefined;
  private deliveredSeenAtMs: number | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly names: Names,
    private readonly handler: CommandHandler,
    private readonly options: ConsumerOptions,
  ) {}

  get maxDeliver(): number {
    return maxDeliveries(this.options.backoffMs);
  }

  /** What this node last saw of the consumer's progress, and what it holds; no I/O. */
  progress(): ConsumerProgress {
    let heldRedelivered = 0;
    for (const message of this.inFlightMessages.keys()) {
      if (message.info.deliveryCount > 1) heldRedelivered += 1;
    }
    for (const { message } of this.waiting) {
      if (message.info.deliveryCount > 1) heldRedelivered += 1;
    }
    return {
      deliveredStreamSeq: this.deliveredStreamSeq,
      seenAtMs: this.deliveredSeenAtMs,
      held: this.inFlightMessages.size + this.waiting.length,
      heldRedelivered,
      pullOpen: this.batch !== undefined,
    };
  }

  /**
   * The latest sighting wins rather than the highest: a recreated stream numbers from 1 again.
   * Within one stream the sightings only grow: the server delivers new messages in order.
   */
  private sawDelivered(streamSeq: number): void {
    this.deliveredStreamSeq = streamSeq;
    this.deliveredSeenAtMs = Date.now();
  }

  private async watchHeartbeats(batch: ConsumerMessages): Promise<void> {
    // Ends when the pull does.
    for await (const status of batch.status()) {
      // 0 is a consumer that has delivered nothing yet.
      if (status.type === 'heartbeat' && Number.isSafeInteger(status.lastStreamSequence)) {
        this.sawDelivered(status.lastStreamSequence);
      }
    }
  }

  async start(): Promise<void> {
    const consumer = await this.js.consumers.get(
      this.names.commandStream,
      this.names.runtimeConsumer,
    );
    // The info `get` read (no second request): the lag has a figure before the first delivery.
    this.sawDelivered((await consumer.info(true)).delivered.stream_seq);
    await this.readStreamCreatedAt();
    this.loop = this.run(consumer);
    this.listenForMaxDeliveries();
  }

  /**
   * The safety net for messages that ran out of deliveries without an answer (their node died
   * or hung on the last attempt): JetStream announces them, and any node records the dead letter.
   * Recording is deduplicated, so several nodes hearing the same advisory is harmless.
   */
  private listenForMaxDeliveries(): void {
    const subject = `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${this.names.commandStream}.${this.names.runtimeConsumer}`;
    const subscription = this.nc.subscribe(subject);
    this.advisories = subscription;
    void (async () => {
      for await (const advisory of subscription) {
        try {
          const body = advisory.json<{ stream_seq: number; deliveries: number }>();
          const stored = await this.jsm.streams.getMessage(this.names.commandStream, {
            seq: body.stream_seq,
          });
          const payload = stored?.string() ?? '';
          const command = parseCommand(stored?.data ?? new Uint8Array());
          const entry: DeadLetter = {
            orderId: command?.orderId ?? null,
            subject: stored?.subject ?? this.names.commandSubjectAll,
            streamCreatedAt: await this.readStreamCreatedAt(),
            streamSequence: body.stream_seq,
            attempts: body.deliveries,
            reason: DEAD_LETTER_REASON.maxDeliveries,
            lastError:
              `delivered ${body.deliveries} times without an answer (a node crashed or hung)` +
              (stored === null
                ? '; the command was no longer in the stream when its dead letter was written ' +
                  '(purged, or past max_age), so its payload and order are not known'
                : ''),
            payload,
            deadLetteredAt: new Date().toISOString(),
          };
          // Counted and logged by the node that recorded it, once, however many heard it.
          if ((await this.options.recordDeadLetter(entry)) !== false) {
            this.options.onDeadLetter?.(entry);
          }
        } catch (error) {
          this.options.onError?.(error, { reason: 'max-deliveries advisory not recorded' });
        }
      }
    })();
  }

  /**
   * Stops pulling, then waits (bounded) for in-flight messages to finish. Those still running at
   * the deadline are handed back (nak) so that another node takes them at once instead of after
   * ack_wait; if this node finishes one after all, the version fence makes the second run a no-op.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true;
    this.advisories?.unsubscribe();
    this.stopped.abort();
    this.wakeLoop();
    // Not awaited: a pull's close settles only once its reader has seen it, and the loop is
    // awaited below.
    void this.batch?.close().catch(() => undefined);
    // Not started: handed back at once so that another node picks them up.
    for (const { message, stopWorking } of this.waiting.splice(0)) {
      stopWorking();
      message.nak();
    }
    const deadline = Date.now() + timeoutMs;
    while (this.inFlight > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    for (const [message, stopWorking] of this.inFlightMessages) {
      stopWorking();
      message.nak();
    }
    await this.loop?.catch(() => undefined);
  }

  /**
   * Pulls as many messages as there are free slots and starts each as it arrives; with every slot
   * taken, it waits for one to free up without a pull open. A pull ends once it has brought what
   * it asked for or after PULL_EXPIRES_MS. While one is open, the slots freed meanwhile are not
   * asked for yet, but the messages it may still bring are never more than the free slots, so
   * nothing waits; the next pull asks for them.
   */
  private async run(consumer: Consumer): Promise<void> {
    let failures = 0;
    while (!this.stopping && !this.nc.isClosed()) {
      const free = this.options.inFlightMax - this.inFlight - this.waiting.length;
      if (free <= 0) {
        await new Promise<void>((resolve) => (this.slotFreed = resolve));
        continue;
      }
      const startedAt = Date.now();
      let received = 0;
      try {
        const batch = await consumer.fetch({
          max_messages: free,
          expires: PULL_EXPIRES_MS,
          idle_heartbeat: PULL_HEARTBEAT_MS,
        });
        this.batch = batch;
        void this.watchHeartbeats(batch).catch((error: unknown) =>
          this.options.onError?.(error, { reason: 'pull heartbeats not read' }),
        );
        // Stopped while the pull was being made; its close settles once the loop below reads it.
        if (this.stopping) void batch.close().catch(() => undefined);
        for await (const message of batch) {
          received += 1;
          this.take(message);
        }
        // An empty pull that ended well before it expired is a failure too, so that the loop
        // never spins.
        if (received === 0 && Date.now() - startedAt < PULL_EXPIRES_MS / 2 && !this.stopping) {
          throw new Error(`a pull ended empty after ${Date.now() - startedAt} ms`);
        }
        failures = 0;
      } catch (error) {
        if (this.stopping || this.nc.isClosed()) return;
        failures += 1;
        this.options.onError?.(error, { reason: 'pulling commands failed', failures });
        const pauseMs = Math.min(PULL_RETRY_MS_MIN * 2 ** (failures - 1), PULL_RETRY_MS_MAX);
        await sleep(pauseMs, undefined, { signal: this.stopped.signal }).catch(() => undefined);
      } finally {
        this.batch = undefined;
      }
    }
  }

  private take(message: JsMsg): void {
    // A redelivery is older than what the consumer has delivered by now.
    if (message.info.deliveryCount === 1) this.sawDelivered(message.info.streamSequence);
    if (this.stopping) {
      // Not started: hand it back at once so another node picks it up.
      message.nak();
      return;
    }
    if (this.inFlight < this.options.inFlightMax) {
      this.dispatch(message);
      return;
    }
    // A pull renewed after a reconnect can bring more than was asked for. Kept alive so that the
    // wait costs no delivery; past workingMsMax it comes back after ack_wait, as a hung one does.
    this.waiting.push({ message, stopWorking: this.keepWorking(message) });
  }

  private dispatch(message: JsMsg): void {
    this.inFlight += 1;
    const stopWorking = this.keepWorking(message);
    this.inFlightMessages.set(message, stopWorking);
    void this.process(message)
      .catch((error: unknown) => this.options.onError?.(error, { subject: message.subject }))
      .finally(() => {
        stopWorking();
        this.inFlight -= 1;
        this.inFlightMessages.delete(message);
        const next = this.waiting.shift();
        if (next !== undefined) {
          next.stopWorking();
          this.dispatch(next.message);
        }
        this.wakeLoop();
      });
  }

  private wakeLoop(): void {
    const wake = this.slotFreed;
    this.slotFreed = undefined;
    wake?.();
  }

  /**
   * Reports `message` in progress every third of ack_wait until the returned function is called,
   * so that a turn longer than ack_wait (two PSP calls, a queue in the actor's mailbox) is not
   * redelivered mid-turn: each such redelivery would burn one of the allowed deliveries, and the
   * last one would dead-letter a healthy order as MAX_DELIVERIES. The reports stop on their own
   * after workingMsMax, so a hung handler's message still comes back after ack_wait.
   */
  private keepWorking(message: JsMsg): () => void {
    const startedAt = Date.now();
    const intervalMs = Math.max(1, Math.floor(this.options.ackWaitMs / 3));
    const timer = setInterval(() => {
      if (Date.now() - startedAt >= this.options.workingMsMax) {
        clearInterval(timer);
        return;
      }
      try {
        message.working();
      } catch (error) {
        // The connection is closing: the message comes back after ack_wait, as after a crash.
        clearInterval(timer);
        this.options.onError?.(error, { subject: message.subject, reason: 'working() failed' });
      }
    }, intervalMs);
    return () => clearInterval(timer);
  }

  private async process(message: JsMsg): Promise<void> {
    const command = parseCommand(message.data);
    if (command === undefined) {
      await this.deadLetter(
        message,
        orderIdOfMalformed(message.data) ?? null,
        DEAD_LETTER_REASON.malformedCommand,
        'payload is not a known command',
      );
      message.term();
      return;
    }
    // A command its node already tried once before handing it over counts that attempt, so the
    // retries stay within the configured steps whichever way the command came.
    const prior = command.type === 'ExecuteOrder' ? (command.priorAttempts ?? 0) : 0;
    const attempt = message.info.deliveryCount + prior;
    const isLastAttempt = attempt >= this.maxDeliver;
    let outcome: HandleOutcome;
    try {
      outcome = await this.handler(command, { attempt, isLastAttempt });
    } catch (error) {
      this.options.onError?.(error, { orderId: command.orderId, attempt });
      outcome = outcomeOfThrow(error);
    }
    switch (outcome.kind) {
      case 'done':
        message.ack();
        return;
      case 'retry': {
        if (isLastAttempt) {
          await this.deadLetter(
            message,
            command.orderId,
            DEAD_LETTER_REASON.retriesExhausted,
            outcome.reason,
            attempt,
          );
          message.term();
          return;
        }
        const delayMs = this.retryDelayMs(attempt);
        this.options.onRetry?.({
          orderId: command.orderId,
          attempt,
          delayMs,
          reason: outcome.reason,
        });
        message.nak(delayMs);
        return;
      }
      case 'reject':
        await this.deadLetter(
          message,
          command.orderId,
          DEAD_LETTER_REASON.nonRetryable,
          outcome.reason,
          attempt,
        );
        message.term();
        return;
    }
  }

  /**
   * The command stream's creation time, read again for each dead letter rather than kept from
   * start(): another node may have recreated the stream since (one JetStream request per dead
   * letter, shared by those in flight together). When JetStream does not answer, the last value
   * read serves; recording still dedupes a different message by its payload then.
   */
  private readStreamCreatedAt(): Promise<string> {
    this.streamCreatedAtRead ??= this.jsm.streams
      .info(this.names.commandStream)
      .then(
        (info) => (this.streamCreatedAt = info.created),
        (error: unknown) => {
          if (this.streamCreatedAt === undefined) throw error;
          this.options.onError?.(error, { reason: 'command stream info not read; using the last' });
          return this.streamCreatedAt;
        },
      )
      .finally(() => {
        this.streamCreatedAtRead = undefined;
      });
    return this.streamCreatedAtRead;
  }

  /** Exponential backoff from the configured steps, spread by ±jitter. */
  retryDelayMs(attempt: number): number {
    const steps = this.options.backoffMs;
    const base = steps[Math.min(attempt, steps.length) - 1] ?? steps[steps.length - 1] ?? 1_000;
    const spread = base * this.options.jitter;
    return Math.max(1, Math.round(base - spread + Math.random() * 2 * spread));
  }

  private async deadLetter(
    message: JsMsg,
    orderId: string | null,
    reason: DeadLetterReason,
    lastError: string,
    attempts = message.info.deliveryCount,
  ): Promise<void> {
    const entry: DeadLetter = {
      orderId,
      subject: message.subject,
      streamCreatedAt: await this.readStreamCreatedAt(),
      streamSequence: message.info.streamSequence,
      attempts,
      reason,
      lastError: lastError.slice(0, DEAD_LETTER_ERROR_CHARS_MAX),
      payload: message.string().slice(0, 64 * 1024),
      deadLetteredAt: new Date().toISOString(),
    };
    // MySQL first: it is what operators list and replay from. If this throws, the message is
    // left unacked; the max-deliveries advisory (or the janitor) picks it up. False: this message
    // is recorded already (a node recorded it and died before terminating it), counted then.
    if ((await this.options.recordDeadLetter(entry)) !== false) this.options.onDeadLetter?.(entry);
    await publishDeadLetterCopy(
      this.js,
      this.names,
      entry,
      deadLetterKey(this.names.commandStream, entry),
      (error) =>
        this.options.onError?.(error, { orderId, reason: 'dead-letter stream publish failed' }),
    );
  }
}

/**
 * The dead-letter stream's copy of an entry MySQL recorded, deduplicated by `key`. It is for
 * JetStream tooling only, so losing it loses nothing: a failed publish goes to `onError`.
 */
export async function publishDeadLetterCopy(
  js: JetStreamClient,
  names: Names,
  entry: DeadLetter,
  key: string,
  onError: (error: unknown) => void,
): Promise<void> {
  await js
    .publish(names.deadLetterSubject, JSON.stringify(entry), {
      msgID: `dlq:${key}`,
      timeout: 5_000,
    })
    .then(
      () => undefined,
      (error: unknown) => onError(error),
    );
}
