/**
 * Goal: the command stream does not fill up with commands already handled. It keeps messages by
 * limits (max_bytes, 7 days) whatever their acks and, full, refuses every publish (discard new):
 * the housekeeping purge removes what the runtime consumer acknowledged once the stream is half
 * full, so the relay's publishes are taken again, and leaves every command not yet acknowledged.
 * Method: real NATS JetStream, the runtime's own topology under a namespace of this file with a
 * small max_bytes, commands acknowledged through the runtime consumer.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { deleteTopology, ensureTopology, purgeConsumedCommands } from '../../src/messaging/nats.js';
import { names as namesOf, type Names } from '../../src/messaging/subjects.js';
import { executeOrderPayload } from '../../src/messaging/commands.js';
import { newId } from '../../src/domain/ids.js';
import { uniqueSuffix } from '../support/harness.js';

let nc: NatsConnection;
let js: JetStreamClient;
let jsm: JetStreamManager;
let names: Names;
beforeAll(async () => {
  nc = await connect({ servers: inject('natsUrl') });
  js = jetstream(nc);
  names = namesOf(`purge${uniqueSuffix()}`, 4);
  jsm = await ensureTopology(nc, names, {
    ackWaitMs: 30_000,
    maxDeliver: 5,
    maxAckPending: 1_000,
    commandStreamBytesMax: 20_000,
  });
});
afterAll(async () => {
  await deleteTopology(nc, names).catch(() => undefined);
  await nc.close();
});

/** Publishes one ExecuteOrder as the relay does; false when the stream refused it. */
async function publish(): Promise<boolean> {
  const orderId = newId('order');
  try {
    await js.publish(names.commandSubject(orderId), executeOrderPayload(orderId, 0), {
      msgID: `exec:${orderId}`,
      timeout: 2_000,
    });
    return true;
  } catch (error) {
    expect(String(error)).toMatch(/maximum bytes exceeded/);
    return false;
  }
}

/** Takes `count` commands through the runtime consumer and acknowledges them. */
async function handle(count: number): Promise<void> {
  const consumer = await js.consumers.get(names.commandStream, names.runtimeConsumer);
  for (let i = 0; i < count; i += 1) {
    const message = await consumer.next({ expires: 2_000 });
    if (message === null) throw new Error(`only ${i} of ${count} commands were delivered`);
    await message.ackAck();
  }
}

const messages = async () => (await jsm.streams.info(names.commandStream)).state.messages;

describe('command stream purge', () => {
  it('purges handled commands before the stream refuses new ones, and keeps the rest', async () => {
    expect(await publish()).toBe(true);
    await handle(1);
    // Far below half full: nothing goes (tooling may still read recent history).
    expect(await purgeConsumedCommands(jsm, names)).toBe(0);

    let taken = 1;
    while (await publish()) {
      taken += 1;
      if (taken > 1_000) throw new Error('the stream never filled');
    }
    await handle(taken - 1);
    // Every command handled, and still the stream refuses the next one.
    expect(await publish()).toBe(false);

    expect(await purgeConsumedCommands(jsm, names)).toBe(taken);
    expect(await messages()).toBe(0);
    expect(await publish()).toBe(true);

    // Not yet acknowledged (delivered or not): kept.
    expect(await publish()).toBe(true);
    expect(await publish()).toBe(true);
    await handle(1);
    expect(await purgeConsumedCommands(jsm, names, 0)).toBe(1);
    expect(await messages()).toBe(2);
  });
});
