/**
 * Goal: the command stream does not fill up with commands already handled. It keeps messages by
 * limits (max_bytes, 7 days) whatever their acks and, full, refuses every publish (discard new):
 * the housekeeping purge removes what the runtime consumer acknowledged once the stream is half
 * full, so the relay's publishes are taken again, and leaves every command not yet acknowledged.
 * It purges only up to the ack floor an earlier pass saw (at least a set time before), so a
 * command that ran out of deliveries, which passes the floor at once, is still there when the
 * max-deliveries advisory's handler reads it for its dead letter; a command gone all the same
 * gets a dead letter that says its payload is not known.
 * Method: real NATS JetStream, the runtime's own topology under a namespace of this file with a
 * small max_bytes, commands acknowledged through the runtime consumer; for the race, the real
 * CommandConsumer with a handler that hangs, its read of the stored command held at a gate until
 * the purge has run, so the purge always comes first.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it, inject } from 'vitest';
import { CommandConsumer, type DeadLetter } from '../../src/messaging/command-consumer.js';
import { CommandStreamPurge, deleteTopology, ensureTopology } from '../../src/messaging/nats.js';
import { names as namesOf, type Names } from '../../src/messaging/subjects.js';
import { executeOrderPayload } from '../../src/messaging/commands.js';
import { newId } from '../../src/domain/ids.js';
import { uniqueSuffix, waitFor } from '../support/harness.js';

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
async function publish(on: Names = names): Promise<boolean> {
  const orderId = newId('order');
  try {
    await js.publish(on.commandSubject(orderId), executeOrderPayload(orderId, 0), {
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
async function handle(count: number, on: Names = names): Promise<void> {
  const consumer = await js.consumers.get(on.commandStream, on.runtimeConsumer);
  for (let i = 0; i < count; i += 1) {
    const message = await consumer.next({ expires: 2_000 });
    if (message === null) throw new Error(`only ${i} of ${count} commands were delivered`);
    await message.ackAck();
  }
}

const messages = async () => (await jsm.streams.info(names.commandStream)).state.messages;

describe('command stream purge', () => {
  it('purges handled commands before the stream refuses new ones, and keeps the rest', async () => {
    const purge = new CommandStreamPurge(jsm, names, { floorAgeMsMin: 0 });
    expect(await publish()).toBe(true);
    await handle(1);
    // The first pass only sees the floor; the next one is far below half full: nothing goes
    // (tooling may still read recent history).
    expect(await purge.run()).toBe(0);
    expect(await purge.run()).toBe(0);

    let taken = 1;
    while (await publish()) {
      taken += 1;
      if (taken > 1_000) throw new Error('the stream never filled');
    }
    await handle(taken - 1);
    // Every command handled, and still the stream refuses the next one.
    expect(await publish()).toBe(false);

    // Below half full no floor was read: the first pass over it only sees the floor just
    // reached, and the next purges up to it.
    expect(await purge.run()).toBe(0);
    expect(await messages()).toBe(taken);
    expect(await purge.run()).toBe(taken);
    expect(await messages()).toBe(0);
    expect(await publish()).toBe(true);

    // Not yet acknowledged (delivered or not): kept.
    expect(await publish()).toBe(true);
    expect(await publish()).toBe(true);
    await handle(1);
    const always = new CommandStreamPurge(jsm, names, { purgeAt: 0, floorAgeMsMin: 0 });
    expect(await always.run()).toBe(0);
    expect(await always.run()).toBe(1);
    expect(await messages()).toBe(2);
  });

  // On nats-server 2.9 a consumer's info is not cheap under a backlog: asked on every pass, it
  // held back the consumer's deliveries for about 20 s with 100,000 commands waiting.
  it('does not ask for the consumer while the stream is under half full', async () => {
    let asked = 0;
    const counting = {
      ...jsm,
      streams: jsm.streams,
      consumers: {
        ...jsm.consumers,
        info: (...args: Parameters<typeof jsm.consumers.info>) => {
          asked += 1;
          return jsm.consumers.info(...args);
        },
      },
    };
    const purge = new CommandStreamPurge(counting, names, { floorAgeMsMin: 0 });
    expect(await publish()).toBe(true);
    await handle(1);
    expect(await purge.run()).toBe(0);
    expect(await purge.run()).toBe(0);
    expect(asked).toBe(0);
  });

  it('purges up to a floor only once it was seen floorAgeMsMin before', async () => {
    const own = namesOf(`purgeage${uniqueSuffix()}`, 1);
    const ownJsm = await ensureTopology(nc, own, {
      ackWaitMs: 30_000,
      maxDeliver: 5,
      maxAckPending: 10,
    });
    try {
      expect(await publish(own)).toBe(true);
      await handle(1, own);
      let nowMs = 0;
      const purge = new CommandStreamPurge(ownJsm, own, {
        purgeAt: 0,
        floorAgeMsMin: 30_000,
        now: () => nowMs,
      });
      expect(await purge.run()).toBe(0);
      // Passes sooner than that (runOnce() from outside) purge nothing, however many.
      nowMs = 29_999;
      expect(await purge.run()).toBe(0);
      expect(await purge.run()).toBe(0);
      nowMs = 30_000;
      expect(await purge.run()).toBe(1);
    } finally {
      await deleteTopology(nc, own).catch(() => undefined);
    }
  });
});

/**
 * A CommandConsumer on `on` whose handler hangs on `stuck`'s only delivery and handles the rest,
 * its dead letters kept in memory, and its max-deliveries advisory handler's read of the stored
 * command held at a gate until `openGate()`: whatever the test does meanwhile comes first.
 */
async function gatedConsumer(on: Names, stuck: string) {
  const ackWaitMs = 300;
  const realJsm = await ensureTopology(nc, on, { ackWaitMs, maxDeliver: 1, maxAckPending: 10 });
  let advisoryHeard = false;
  let openGate = () => undefined as void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  const gatedStreams = new Proxy(realJsm.streams, {
    get(target, property) {
      if (property === 'getMessage') {
        return async (...args: Parameters<typeof target.getMessage>) => {
          advisoryHeard = true;
          await gate;
          return target.getMessage(...args);
        };
      }
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
    },
  });
  const gatedJsm = new Proxy(realJsm, {
    get(target, property) {
      if (property === 'streams') return gatedStreams;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
    },
  });
  const deadLetters: DeadLetter[] = [];
  const consumer = new CommandConsumer(
    nc,
    js,
    gatedJsm,
    on,
    (command) =>
      command.orderId === stuck
        ? new Promise(() => undefined)
        : Promise.resolve({ kind: 'done' as const }),
    {
      inFlightMax: 4,
      ackWaitMs,
      workingMsMax: 1,
      backoffMs: [],
      jitter: 0,
      recordDeadLetter: (entry) => {
        deadLetters.push(entry);
        return Promise.resolve(true);
      },
    },
  );
  await consumer.start();
  const heard = () =>
    waitFor(() => Promise.resolve(advisoryHeard), { what: 'the max-deliveries advisory' });
  return { jsm: realJsm, consumer, deadLetters, heard, openGate };
}

describe('command stream purge and the max-deliveries advisory', () => {
  const stopping: Array<() => Promise<void>> = [];
  afterAll(async () => {
    for (const stop of stopping) await stop().catch(() => undefined);
  });

  async function setUp(stuck: string) {
    const on = namesOf(`purgerace${uniqueSuffix()}`, 1);
    const gated = await gatedConsumer(on, stuck);
    stopping.push(async () => {
      await gated.consumer.stop(0);
      await deleteTopology(nc, on);
    });
    return { on, ...gated };
  }

  it('keeps a command that ran out of deliveries until its dead letter has its payload', async () => {
    const stuck = newId('order');
    const { on, jsm: raceJsm, deadLetters, heard, openGate } = await setUp(stuck);
    const purge = new CommandStreamPurge(raceJsm, on, { purgeAt: 0, floorAgeMsMin: 0 });
    expect(await purge.run()).toBe(0);

    const payload = executeOrderPayload(stuck, 0);
    const ack = await js.publish(on.commandSubject(stuck), payload, {
      msgID: `exec:${stuck}`,
      timeout: 2_000,
    });
    await heard();
    // The floor moves past a command out of deliveries once a later one is acknowledged.
    const next = newId('order');
    const nextAck = await js.publish(on.commandSubject(next), executeOrderPayload(next, 0), {
      msgID: `exec:${next}`,
      timeout: 2_000,
    });
    const floor = async () =>
      (await raceJsm.consumers.info(on.commandStream, on.runtimeConsumer)).ack_floor.stream_seq;
    await waitFor(async () => (await floor()) >= nextAck.seq, { what: 'the ack floor past it' });

    // The pass that sees the floor past the command does not purge it.
    expect(await purge.run()).toBe(0);
    openGate();
    await waitFor(() => Promise.resolve(deadLetters.length > 0), { what: 'the dead letter' });
    expect(deadLetters).toEqual([
      expect.objectContaining({
        orderId: stuck,
        streamSequence: ack.seq,
        reason: 'MAX_DELIVERIES',
        payload,
      }),
    ]);
    // The next pass does.
    expect(await purge.run()).toBe(2);
  });

  it('says so in the dead letter when the command was gone from the stream', async () => {
    const stuck = newId('order');
    const { on, jsm: raceJsm, deadLetters, heard, openGate } = await setUp(stuck);
    const ack = await js.publish(on.commandSubject(stuck), executeOrderPayload(stuck, 0), {
      msgID: `exec:${stuck}`,
      timeout: 2_000,
    });
    await heard();
    // Gone before the handler reads it (past max_age, say).
    await raceJsm.streams.deleteMessage(on.commandStream, ack.seq);
    openGate();
    await waitFor(() => Promise.resolve(deadLetters.length > 0), { what: 'the dead letter' });
    expect(deadLetters).toEqual([
      expect.objectContaining({ orderId: null, streamSequence: ack.seq, payload: '' }),
    ]);
    expect(deadLetters[0]?.lastError).toMatch(
      /no longer in the stream .*, so its payload and order are not known$/,
    );
  });
});
