/**
 * One snapshot of a node's moving parts, for the admin panel's operations page and the Prometheus
 * gauges: PSP circuit breaker, JetStream consumer lag, command stream, dead letters, outbox lag,
 * live actors and mailbox depth, payments per state, what the last reconciliation found. Each
 * probe has its own deadline and fails on its own: a dead NATS shows as an error next to a working
 * outbox, never as a failed page.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { withDeadline } from '../domain/deadline.js';
import type { ConsumerProgress } from '../messaging/command-consumer.js';
import type { Names } from '../messaging/subjects.js';
import type { BreakerState } from '../psp/client.js';
import type { Db } from '../storage/db.js';
import { outboxLag } from '../storage/repositories/outbox.repository.js';
import {
  ledgerSumsLag,
  type LedgerSumsLag,
} from '../storage/repositories/ledger-sums.repository.js';
import {
  countUnsettledOrders,
  firstSucceededAt,
  latestSucceededRun,
  type Run,
} from '../reconciliation/reconciliation.repository.js';
import {
  PAYMENT_STATE,
  TERMINAL_PAYMENT_STATES,
} from '../storage/repositories/payment.repository.js';

export type Probe<T> = Readonly<{ ok: true; value: T }> | Readonly<{ ok: false; error: string }>;

/**
 * The runtime consumer's lag, derived without asking the server for the consumer's info (on
 * nats-server 2.9 that holds back the consumer's deliveries under a backlog): from the command
 * stream's state, read on every snapshot, and what this node's consumer last saw.
 */
export type ConsumerLag = Readonly<{
  /**
   * Commands in the stream past the consumer's delivered sequence: the stream's last sequence
   * now, less the delivered sequence as of the last first delivery or pull heartbeat this node
   * saw (`seenAgoMs`). Never under the server's num_pending; over it by what other nodes were
   * delivered since. A stalled consumer shows here as the stream grows.
   */
  pending: number;
  /** Delivered to this node and not yet acknowledged (being handled, or waiting for a slot). */
  ackPending: number;
  /** Of those, delivered more than once. */
  redelivered: number;
  /** Whether this node has a pull open at the server. */
  pullOpen: boolean;
  /** The consumer's delivered stream sequence, as of `seenAgoMs` ago. */
  deliveredStreamSeq: number;
  seenAgoMs: number;
}>;

export type StreamState = Readonly<{
  messages: number;
  bytes: number;
  /** The stream's max_bytes: full, it refuses every publish (discard new); -1 for no limit. */
  bytesMax: number;
  firstSeq: number;
  lastSeq: number;
  /** When the stream was created (the server's clock), ms since the epoch. */
  createdAtMs: number;
}>;

/** What reconciliation last found, for alerts. */
export type ReconciliationStatus = Readonly<{
  /** The latest settlement day's newest succeeded run; undefined before the first. */
  lastRun: Run | undefined;
  /**
   * When the latest settlement day was first reconciled (its earliest succeeded run): another
   * file for that day, run later, does not make it recent.
   */
  lastDayReconciledAt: Date | undefined;
  /** Orders booked as paid that no file has settled yet (of UNSETTLED_COUNT_MAX mismatches). */
  unsettledOrders: number;
}>;

/** Dead letters still waiting for an operator, and all kept. */
export type DeadLetterCounts = Readonly<{ open: number; total: number }>;

export type OperationsSnapshot = Readonly<{
  takenAt: Date;
  /** undefined when the node runs with a PSP port that has no breaker (tests). */
  breaker: BreakerState | undefined;
  consumer: Probe<ConsumerLag>;
  commandStream: Probe<StreamState>;
  deadLetters: Probe<DeadLetterCounts>;
  outbox: Probe<{ pending: number; oldestAgeMs: number }>;
  /** How far the trial balance's running sums trail the ledger. */
  ledgerSums: Probe<LedgerSumsLag>;
  actors: Readonly<{ live: number; mailboxDepth: number; passivated: number }>;
  payments: Probe<ReadonlyArray<StateCount>>;
  reconciliation: Probe<ReconciliationStatus>;
}>;

export type StateCount = Readonly<{ state: string; count: number }>;

export type OperationsDeps = Readonly<{
  db: Db;
  jsm: JetStreamManager;
  names: Names;
  /** What this node's runtime consumer last saw (`CommandConsumer.progress`). */
  consumerProgress: () => ConsumerProgress;
  registry: { size: number; passivated: number; mailboxDepth(): number };
  psp: object;
  deadLetters: { counts(): Promise<DeadLetterCounts> };
  /** Deadline of each probe, in milliseconds. */
  probeTimeoutMs: number;
  /** Payments by state; one per node, so final states' counts are reused across snapshots. */
  paymentCounts: PaymentCounts;
}>;

/** Open MISSING_IN_SETTLEMENT mismatches read per snapshot at most (the gauge is capped there). */
export const UNSETTLED_COUNT_MAX = 100_000;

/** States a payment is still in on its way; counted exactly in every snapshot. */
const LIVE_PAYMENT_STATES = Object.values(PAYMENT_STATE).filter(
  (state) => !TERMINAL_PAYMENT_STATES.has(state),
);

/**
 * Payments by state, cluster-wide (it is the same on every node). The states a payment passes
 * through are counted in every snapshot: an index range as large as the payments in flight. The
 * final states grow with the table (a GROUP BY over 1,000,000 payments took 0.2–0.4 s here), so
 * they are counted at most every `finalReuseMs` per node, one count at a time, and the last
 * count answers in between (and while a new one runs): a scrape every 15 s on every node does
 * not scan the table each time.
 */
export class PaymentCounts {
  private final: Readonly<{ at: number; rows: StateCount[] }> | undefined;
  private counting: Promise<StateCount[]> | undefined;

  constructor(
    private readonly db: Db,
    private readonly finalReuseMs: number,
    private readonly nowMs: () => number = Date.now,
  ) {}

  /** Every state with at least one payment, sorted by state. */
  async read(): Promise<StateCount[]> {
    const [live, final] = await Promise.all([this.countLive(), this.finalCounts()]);
    return [...live, ...final].sort((a, b) => (a.state < b.state ? -1 : a.state > b.state ? 1 : 0));
  }

  private async countLive(): Promise<StateCount[]> {
    // The (state, id) index answers these without touching the rows.
    const result = await sql<{ state: string; n: string }>`
      SELECT state, COUNT(*) AS n FROM payment
      WHERE state IN (${sql.join(LIVE_PAYMENT_STATES)})
      GROUP BY state`.execute(this.db);
    return result.rows.map((row) => ({ state: row.state, count: Number(row.n) }));
  }

  private async finalCounts(): Promise<StateCount[]> {
    const cached = this.final;
    if (cached !== undefined && this.nowMs() - cached.at < this.finalReuseMs) return cached.rows;
    // A count already running: the last one answers meanwhile, if there is one.
    if (this.counting !== undefined && cached !== undefined) return cached.rows;
    this.counting ??= (async () => {
      try {
        const at = this.nowMs();
        const result = await sql<{ state: string; n: string }>`
          SELECT state, COUNT(*) AS n FROM payment
          WHERE state IN (${sql.join([...TERMINAL_PAYMENT_STATES])})
          GROUP BY state`.execute(this.db);
        const rows = result.rows.map((row) => ({ state: row.state, count: Number(row.n) }));
        this.final = { at, rows };
        return rows;
      } finally {
        this.counting = undefined;
      }
    })();
    return this.counting;
  }
}

/**
 * The runtime consumer's info as nats-server reports it, for every node. Read only when an
 * operator asks for it on the admin panel: on nats-server 2.9.10 one read under a backlog of
 * 30,000 commands held the consumer's deliveries to a third or less for about 8 s.
 */
export type ConsumerInfoReading = Readonly<{
  readAt: Date;
  pending: number;
  ackPending: number;
  redelivered: number;
  /** Pull requests waiting on the server (every node's). */
  waiting: number;
  deliveredStreamSeq: number;
  ackFloorStreamSeq: number;
}>;

/** An operator's request for the consumer's info is answered from the last read this recent. */
export const CONSUMER_INFO_REUSE_MS = 60_000;

/**
 * The consumer's info on request, read from the server at most once per `reuseMs` per node (one
 * read at a time): operators reloading the page, or a crawler, cannot turn it into the polling
 * that slows the consumer.
 */
export class ConsumerInfoReads {
  #last: ConsumerInfoReading | undefined;
  /** The last read's failure, answered again for reuseMs: a slow NATS is not asked on every view. */
  #failed: Readonly<{ atMs: number; error: Error }> | undefined;
  #reading: Promise<ConsumerInfoReading> | undefined;

  constructor(
    private readonly jsm: JetStreamManager,
    private readonly names: Names,
    private readonly reuseMs: number = CONSUMER_INFO_REUSE_MS,
    private readonly nowMs: () => number = Date.now,
  ) {}

  read(): Promise<ConsumerInfoReading> {
    const last = this.#last;
    const failed = this.#failed;
    if (failed !== undefined && this.nowMs() - failed.atMs < this.reuseMs) {
      const retryAt = new Date(failed.atMs + this.reuseMs).toISOString();
      return Promise.reject(
        new Error(`${failed.error.message} (not asked again before ${retryAt})`, {
          cause: failed.error,
        }),
      );
    }
    if (last !== undefined && this.nowMs() - last.readAt.getTime() < this.reuseMs) {
      return Promise.resolve(last);
    }
    this.#reading ??= (async () => {
      try {
        const info = await this.jsm.consumers.info(
          this.names.commandStream,
          this.names.runtimeConsumer,
        );
        const reading: ConsumerInfoReading = {
          readAt: new Date(this.nowMs()),
          pending: info.num_pending,
          ackPending: info.num_ack_pending,
          redelivered: info.num_redelivered,
          waiting: info.num_waiting,
          deliveredStreamSeq: info.delivered.stream_seq,
          ackFloorStreamSeq: info.ack_floor.stream_seq,
        };
        this.#last = reading;
        this.#failed = undefined;
        return reading;
      } catch (error) {
        this.#failed = {
          atMs: this.nowMs(),
          error: error instanceof Error ? error : new Error(String(error)),
        };
        throw error;
      } finally {
        this.#reading = undefined;
      }
    })();
    return this.#reading;
  }
}

export function breakerStateOf(psp: object): BreakerState | undefined {
  const candidate = psp as { breakerState?: unknown };
  return typeof candidate.breakerState === 'function'
    ? (candidate.breakerState as () => BreakerState)()
    : undefined;
}

export async function operationsSnapshot(deps: OperationsDeps): Promise<OperationsSnapshot> {
  const probe = <T>(work: () => Promise<T>) => probeWithin(work, deps.probeTimeoutMs);
  // Read before the stream, so that a delivery in between can only make `pending` larger.
  const progress = deps.consumerProgress();
  const [commandStream, deadLetters, outbox, ledgerSums, payments, reconciliation] =
    await Promise.all([
      probe(async (): Promise<StreamState> => {
        const info = await deps.jsm.streams.info(deps.names.commandStream);
        return {
          messages: info.state.messages,
          bytes: info.state.bytes,
          bytesMax: info.config.max_bytes,
          firstSeq: info.state.first_seq,
          lastSeq: info.state.last_seq,
          createdAtMs: Date.parse(info.created),
        };
      }),
      probe(() => deps.deadLetters.counts()),
      probe(() => outboxLag(deps.db)),
      probe(() => ledgerSumsLag(deps.db)),
      probe(() => deps.paymentCounts.read()),
      probe(async (): Promise<ReconciliationStatus> => {
        const [lastRun, unsettledOrders] = await Promise.all([
          latestSucceededRun(deps.db),
          countUnsettledOrders(deps.db, UNSETTLED_COUNT_MAX),
        ]);
        const lastDayReconciledAt =
          lastRun === undefined ? undefined : await firstSucceededAt(deps.db, lastRun.day);
        return { lastRun, lastDayReconciledAt, unsettledOrders };
      }),
    ]);
  const takenAt = new Date();
  return {
    takenAt,
    breaker: breakerStateOf(deps.psp),
    consumer: consumerLag(progress, commandStream, takenAt.getTime()),
    commandStream,
    deadLetters,
    outbox,
    ledgerSums,
    actors: {
      live: deps.registry.size,
      mailboxDepth: deps.registry.mailboxDepth(),
      passivated: deps.registry.passivated,
    },
    payments,
    reconciliation,
  };
}

/**
 * The consumer's lag from the stream's state and what this node saw. Every message past the
 * delivered sequence matches the consumer (its filter is the stream's one subject), and none of
 * them is deleted but by max_age, hence the stream's first sequence as a floor. A delivered
 * sequence seen before the stream was created, or past its last sequence, was seen on a stream
 * since recreated (it numbers from 1 again): until this node sees one on the new stream, every
 * message stored counts as pending. Comparing sequences alone missed a new stream that had
 * already passed the old sequence, and read low. The creation time is the server's clock, the
 * sighting the node's: a skew errs high just after a recreation, or low only for a sighting
 * within the skew before it.
 */
export function consumerLag(
  progress: ConsumerProgress,
  stream: Probe<StreamState>,
  nowMs: number,
): Probe<ConsumerLag> {
  if (!stream.ok) return { ok: false, error: `command stream not read: ${stream.error}` };
  const { deliveredStreamSeq, seenAtMs } = progress;
  if (deliveredStreamSeq === undefined || seenAtMs === undefined) {
    return { ok: false, error: 'no delivery or pull heartbeat seen yet by this node' };
  }
  const { firstSeq, lastSeq, createdAtMs } = stream.value;
  const seenOnThisStream = deliveredStreamSeq <= lastSeq && !(seenAtMs < createdAtMs);
  const pastSeq = Math.max(seenOnThisStream ? deliveredStreamSeq : 0, firstSeq - 1);
  return {
    ok: true,
    value: {
      pending: Math.max(0, lastSeq - pastSeq),
      ackPending: progress.held,
      redelivered: progress.heldRedelivered,
      pullOpen: progress.pullOpen,
      deliveredStreamSeq,
      seenAgoMs: Math.max(0, nowMs - seenAtMs),
    },
  };
}

export async function probeWithin<T>(work: () => Promise<T>, timeoutMs: number): Promise<Probe<T>> {
  try {
    return { ok: true, value: await withDeadline(work(), timeoutMs) };
  } catch (error) {
    return { ok: false, error: error instanceof Error ? error.message : String(error) };
  }
}
