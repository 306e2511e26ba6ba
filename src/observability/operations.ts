/**
 * One snapshot of a node's moving parts, for the admin panel's operations page and the Prometheus
 * gauges: PSP circuit breaker, JetStream consumer lag, command stream, dead letters, outbox lag,
 * live actors and mailbox depth, payments per state. Each probe has its own deadline and fails on
 * its own: a dead NATS shows as an error next to a working outbox, never as a failed page.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { withDeadline } from '../domain/deadline.js';
import type { Names } from '../messaging/subjects.js';
import type { BreakerState } from '../psp/client.js';
import type { Db } from '../storage/db.js';
import { outboxLag } from '../storage/repositories/outbox.repository.js';

export type Probe<T> = Readonly<{ ok: true; value: T }> | Readonly<{ ok: false; error: string }>;

export type ConsumerLag = Readonly<{
  /** Messages in the stream not yet delivered to the consumer. */
  pending: number;
  /** Delivered, not yet acknowledged. */
  ackPending: number;
  /** Delivered more than once and not yet acknowledged. */
  redelivered: number;
  /** Pull requests waiting on the server. */
  waiting: number;
  deliveredStreamSeq: number;
  ackFloorStreamSeq: number;
}>;

export type StreamState = Readonly<{
  messages: number;
  bytes: number;
  firstSeq: number;
  lastSeq: number;
}>;

/** Dead letters still waiting for an operator, and all kept. */
export type DeadLetterCounts = Readonly<{ open: number; total: number }>;

export type OperationsSnapshot = Readonly<{
  takenAt: Date;
  /** undefined when the node runs with a PSP port that has no breaker (tests). */
  breaker: BreakerState | undefined;
  consumer: Probe<ConsumerLag>;
  /** undefined unless asked for (`withCommandStream`). */
  commandStream: Probe<StreamState> | undefined;
  deadLetters: Probe<DeadLetterCounts>;
  outbox: Probe<{ pending: number; oldestAgeMs: number }>;
  actors: Readonly<{ live: number; mailboxDepth: number; passivated: number }>;
  payments: Probe<ReadonlyArray<Readonly<{ state: string; count: number }>>>;
}>;

export type OperationsDeps = Readonly<{
  db: Db;
  jsm: JetStreamManager;
  names: Names;
  registry: { size: number; passivated: number; mailboxDepth(): number };
  psp: object;
  deadLetters: { counts(): Promise<DeadLetterCounts> };
  /** Ask JetStream for the command stream's size: the operations page shows it, no gauge does. */
  withCommandStream: boolean;
  /** Deadline of each probe, in milliseconds. */
  probeTimeoutMs: number;
}>;

export function breakerStateOf(psp: object): BreakerState | undefined {
  const candidate = psp as { breakerState?: unknown };
  return typeof candidate.breakerState === 'function'
    ? (candidate.breakerState as () => BreakerState)()
    : undefined;
}

export async function operationsSnapshot(deps: OperationsDeps): Promise<OperationsSnapshot> {
  const probe = <T>(work: () => Promise<T>) => probeWithin(work, deps.probeTimeoutMs);
  const [consumer, commandStream, deadLetters, outbox, payments] = await Promise.all([
    probe(async (): Promise<ConsumerLag> => {
      const info = await deps.jsm.consumers.info(
        deps.names.commandStream,
        deps.names.runtimeConsumer,
      );
      return {
        pending: info.num_pending,
        ackPending: info.num_ack_pending,
        redelivered: info.num_redelivered,
        waiting: info.num_waiting,
        deliveredStreamSeq: info.delivered.stream_seq,
        ackFloorStreamSeq: info.ack_floor.stream_seq,
      };
    }),
    deps.withCommandStream
      ? probe(async (): Promise<StreamState> => {
          const info = await deps.jsm.streams.info(deps.names.commandStream);
          return {
            messages: info.state.messages,
            bytes: info.state.bytes,
            firstSeq: info.state.first_seq,
            lastSeq: info.state.last_seq,
          };
        })
      : undefined,
    probe(() => deps.deadLetters.counts()),
    probe(() => outboxLag(deps.db)),
    probe(async () => {
      // The (state, id) index answers this without touching the rows.
      const result = await sql<{ state: string; n: string }>`
        SELECT state, COUNT(*) AS n FROM payment GROUP BY state ORDER BY state`.execute(deps.db);
      return result.rows.map((row) => ({ state: row.state, count: Number(row.n) }));
    }),
  ]);
  return {
    takenAt: new Date(),
    breaker: breakerStateOf(deps.psp),
    consumer,
    commandStream,
    deadLetters,
    outbox,
    actors: {
      live: deps.registry.size,
      mailboxDepth: deps.registry.mailboxDepth(),
      passivated: deps.registry.passivated,
    },
    payments,
  };
}

async function probeWithin<T>(work: () => Promise<T>, timeoutMs: number): Promise<Probe<T>> {
  try {
    return { ok: true, value: await withDeadline(work(), timeoutMs) };
  } catch (error) {
    return { ok: false, error: error instanceof Error ? error.message : String(error) };
  }
}
