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

/**
 * Purges the commands the runtime consumer is done with (those up to its ack floor: acknowledged,
 * or dead-lettered) once the command stream holds `purgeAt` of its max_bytes or more, and
 * answers how many went. The stream keeps messages by limits (7 days, max_bytes) whatever their
 * acks, and a full stream refuses every publish (discard new): with no purge, a steady dozen
 * commands a second filled 1 GiB within the 7 days and stopped the relay. What is not yet
 * acknowledged is above the floor and stays. nats-server 2.9 cannot change an existing stream's
 * retention to work-queue or interest, hence the purge.
 */
export async function purgeConsumedCommands(
  jsm: JetStreamManager,
  names: Names,
  purgeAt = COMMAND_STREAM_PURGE_AT,
): Promise<number> {
  const stream = await jsm.streams.info(names.commandStream);
  const bytesMax = stream.config.max_bytes;
  if (bytesMax <= 0 || stream.state.bytes < bytesMax * purgeAt) return 0;
  const consumer = await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
  const floor = consumer.ack_floor.stream_seq;
  if (floor < stream.state.first_seq) return 0;
  // `seq`: every message below it goes.
  const { purged } = await jsm.streams.purge(names.commandStream, { seq: floor + 1 });
  return purged;
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
