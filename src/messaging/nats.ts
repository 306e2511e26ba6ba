/**
 * Connects to NATS and creates (or updates) Settle's streams and consumer idempotently. Uses only
 * features of nats-server 2.9.
 */
import { AuthorizationError, connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type ConsumerConfig,
} from '@nats-io/jetstream';
import { FailedPreconditionError, UnavailableError } from '../domain/errors.js';
import type { Names } from './subjects.js';

/**
 * `noEcho`: messages this connection publishes are not delivered to its own subscriptions (the
 * payment-events hub tells local waiters itself).
 */
export async function connectNats(
  url: string,
  name: string,
  options: Readonly<{ noEcho?: boolean }> = {},
): Promise<NatsConnection> {
  try {
    return await connect({
      servers: url,
      name,
      noEcho: options.noEcho ?? false,
      timeout: 5_000,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      pingInterval: 10_000,
    });
  } catch (error) {
    // The server answered and refused the login: credentials to fix, not a server to wait for.
    if (error instanceof AuthorizationError) {
      throw new FailedPreconditionError(
        `NATS at ${describeServers(url)} refused the login (${error.message}); check the user, ` +
          'password or token in NATS_URL',
        { cause: error },
      );
    }
    throw new UnavailableError(
      `NATS is unreachable at ${describeServers(url)} (${error instanceof Error ? error.message : String(error)}); ` +
        'start it (start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- ' +
        '-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log) or set NATS_URL',
      { cause: error },
    );
  }
}

/** NATS_URL without its credentials, for messages and logs. */
export function describeServers(url: string): string {
  return url
    .split(',')
    .map((server) => server.trim().replace(/\/\/[^@/]*@/, '//'))
    .join(',');
}

export type TopologyOptions = Readonly<{
  ackWaitMs: number;
  /** Deliveries at most: the first one plus the retries. */
  maxDeliver: number;
  maxAckPending: number;
  /** The command stream's max_bytes (1 GiB); tests fill a small one. */
  commandStreamBytesMax?: number;
}>;

const DAY_MS = 24 * 3_600_000;

/**
 * Creates the command and dead-letter streams and the runtime consumer, or updates them. A
 * server without JetStream fails with UnavailableError naming the server and the fix.
 */
export async function ensureTopology(
  nc: NatsConnection,
  names: Names,
  options: TopologyOptions,
): Promise<JetStreamManager> {
  const jsm = await jetstreamManager(nc, { timeout: 5_000 }).catch((error: unknown) => {
    // nats.js's JetStreamNotEnabled, which its public entry point does not export.
    if (error instanceof Error && error.name === 'JetStreamNotEnabled') {
      throw new UnavailableError(
        `NATS at ${nc.getServer()} runs without JetStream; start nats-server with -js ` +
          '(and -sd <store dir>) or set NATS_URL to one that has it',
        { cause: error },
      );
    }
    throw error;
  });
  await upsertStream(jsm, {
    name: names.commandStream,
    subjects: [names.commandSubjectAll],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    // A full stream refuses new commands (the outbox keeps them) rather than dropping old ones.
    // Under limits retention acknowledged commands stay too: housekeeping purges them
    // (`purgeConsumedCommands`) before they fill it.
    discard: DiscardPolicy.New,
    max_bytes: options.commandStreamBytesMax ?? 1024 * 1024 * 1024,
    max_age: nanos(7 * DAY_MS),
    max_msg_size: 64 * 1024,
    duplicate_window: nanos(2 * 60_000),
    num_replicas: 1,
  });
  await upsertStream(jsm, {
    name: names.deadLetterStream,
    subjects: [names.deadLetterSubject],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    max_bytes: 256 * 1024 * 1024,
    max_age: nanos(30 * DAY_MS),
    max_msg_size: 128 * 1024,
    duplicate_window: nanos(2 * 60_000),
    num_replicas: 1,
  });
  const consumer: Partial<ConsumerConfig> = {
    durable_name: names.runtimeConsumer,
    filter_subject: names.commandSubjectAll,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(options.ackWaitMs),
    max_deliver: options.maxDeliver,
    max_ack_pending: options.maxAckPending,
    max_waiting: 512,
  };
  try {
    await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
    await jsm.consumers.update(names.commandStream, names.runtimeConsumer, {
      ack_wait: consumer.ack_wait,
      max_deliver: consumer.max_deliver,
      max_ack_pending: consumer.max_ack_pending,
      max_waiting: consumer.max_waiting,
    });
  } catch (error) {
    if (!isNotFound(error)) throw error;
    await jsm.consumers.add(names.commandStream, consumer);
  }
  return jsm;
}

async function upsertStream(
  jsm: JetStreamManager,
  config: Partial<StreamConfig> & { name: string },
) {
  try {
    await jsm.streams.info(config.name);
    await jsm.streams.update(config.name, config);
  } catch (error) {
    if (!isNotFound(error)) throw error;
    await jsm.streams.add(config);
  }
}

function isNotFound(error: unknown): boolean {
  const message = error instanceof Error ? error.message : String(error);
  return /not found/i.test(message);
}

/** The command stream is purged of consumed commands once it holds this share of its max_bytes. */
export const COMMAND_STREAM_PURGE_AT = 0.5;

/** The runtime consumer's ack floor as a purge pass saw it, on the stream it saw. */
export type AckFloorSeen = Readonly<{
  /** The command stream's creation time: a recreated stream numbers its messages from 1 again. */
  streamCreatedAt: string;
  streamSeq: number;
}>;

/**
 * Purges the commands the runtime consumer is done with (acknowledged, or dead-lettered) once the
 * command stream holds `purgeAt` of its max_bytes or more, and answers how many went and the ack
 * floor it saw, for the next pass. The stream keeps messages by limits (7 days, max_bytes)
 * whatever their acks, and a full stream refuses every publish (discard new): with no purge, a
 * steady dozen commands a second filled 1 GiB within the 7 days and stopped the relay.
 * nats-server 2.9 cannot change an existing stream's retention to work-queue or interest, hence
 * the purge.
 *
 * It purges only up to the floor the previous pass saw (`floorSeen`), never up to the current
 * one: a command that ran out of deliveries passes the ack floor as soon as a later command is
 * acknowledged, possibly before the max-deliveries advisory's handler has read its payload for
 * the dead letter, and purged meanwhile that dead letter would be left without it. Up to a floor
 * a pass earlier, every command has been past it for a whole pass (housekeeping's minute).
 * Without a floor seen on the same stream (the first pass over `purgeAt`, a recreated stream)
 * nothing goes.
 *
 * The consumer's floor is read only once the stream is over `purgeAt`, and `floor` is undefined
 * below it: on nats-server 2.9 a consumer's info is not cheap under a backlog. Asked on every
 * pass, it once held back the runtime consumer's deliveries for about 20 s: 100,000 idle orders
 * took 58 s instead of 39 s to register (`npm run bench -- --duration 2 --warmup 1
 * --no-hot-seller`, three runs each way).
 */
export async function purgeConsumedCommands(
  jsm: JetStreamManager,
  names: Names,
  options: Readonly<{ floorSeen: AckFloorSeen | undefined; purgeAt?: number }>,
): Promise<{ purged: number; floor: AckFloorSeen | undefined }> {
  const stream = await jsm.streams.info(names.commandStream);
  const bytesMax = stream.config.max_bytes;
  const purgeAt = options.purgeAt ?? COMMAND_STREAM_PURGE_AT;
  if (bytesMax <= 0 || stream.state.bytes < bytesMax * purgeAt) {
    return { purged: 0, floor: undefined };
  }
  const consumer = await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
  const floor = { streamCreatedAt: stream.created, streamSeq: consumer.ack_floor.stream_seq };
  const seen = options.floorSeen;
  if (seen === undefined || seen.streamCreatedAt !== floor.streamCreatedAt) {
    return { purged: 0, floor };
  }
  // The consumer may have been recreated since (its floor back at 0): the lower of the two.
  const upTo = Math.min(seen.streamSeq, floor.streamSeq);
  if (upTo < stream.state.first_seq) return { purged: 0, floor };
  // `seq`: every message below it goes.
  const { purged } = await jsm.streams.purge(names.commandStream, { seq: upTo + 1 });
  return { purged, floor };
}

/** A floor is purged up to only once seen this long ago (housekeeping passes: a minute apart). */
export const COMMAND_STREAM_FLOOR_AGE_MS_MIN = 30_000;

/**
 * Housekeeping's command stream task: `purgeConsumedCommands` with a floor it saw at an earlier
 * pass, at least `floorAgeMsMin` ago, so that passes run closer together (`runOnce()` from
 * outside) do not shrink the time a command past the floor is kept. The floor is replaced once
 * used (or when the stream was recreated); a pass that failed, or found the stream under
 * `purgeAt`, keeps the one seen before it.
 */
export class CommandStreamPurge {
  #floorSeen: Readonly<{ floor: AckFloorSeen; atMs: number }> | undefined;

  constructor(
    private readonly jsm: JetStreamManager,
    private readonly names: Names,
    private readonly options: Readonly<{
      purgeAt?: number;
      floorAgeMsMin?: number;
      now?: () => number;
    }> = {},
  ) {}

  /** One pass; answers the commands purged. */
  async run(): Promise<number> {
    const now = this.options.now ?? Date.now;
    const ageMsMin = this.options.floorAgeMsMin ?? COMMAND_STREAM_FLOOR_AGE_MS_MIN;
    const seen = this.#floorSeen;
    const usable = seen !== undefined && now() - seen.atMs >= ageMsMin;
    const { purged, floor } = await purgeConsumedCommands(this.jsm, this.names, {
      floorSeen: usable ? seen.floor : undefined,
      ...(this.options.purgeAt !== undefined && { purgeAt: this.options.purgeAt }),
    });
    // Below `purgeAt` no floor is read, and the one seen before is kept: older, it only leaves
    // more behind.
    if (
      floor !== undefined &&
      (usable || seen === undefined || seen.floor.streamCreatedAt !== floor.streamCreatedAt)
    ) {
      // Timed once read: the floor's age is never taken for more than it is.
      this.#floorSeen = { floor, atMs: now() };
    }
    return purged;
  }
}

/** Deletes a namespace's streams (tests and the chaos demo clean up with it). */
export async function deleteTopology(nc: NatsConnection, names: Names): Promise<void> {
  const jsm = await jetstreamManager(nc);
  for (const stream of [names.commandStream, names.deadLetterStream]) {
    try {
      await jsm.streams.delete(stream);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }
}
