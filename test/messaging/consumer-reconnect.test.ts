/**
 * Goal: a node's command consumer survives its NATS server going away and coming back: a command
 * in flight when the server died is not lost (it ends acknowledged, run at least once), the
 * consumer pulls again on its own after an outage longer than a pull's expiry, commands
 * published after it all run once, and nothing is dead-lettered for the outage. With the
 * streams in memory instead of on disk this fails: the held command is gone after the restart.
 * Method: a private nats-server (JetStream, file storage in a temporary directory, its own port)
 * so that it can be killed (SIGKILL, as a crash) and restarted on the same port and store; the
 * shared server is never touched. The consumer runs with the node's own connection options
 * (`connectNats`: reconnect forever, every 500 ms). Outcomes are read from the handler's runs and
 * from the consumer's info on the server.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, reachable } from '../../src/chaos/free-port.js';
import { newId } from '../../src/domain/ids.js';
import { CommandConsumer } from '../../src/messaging/command-consumer.js';
import { connectNats, ensureTopology } from '../../src/messaging/nats.js';
import { names as topologyNames } from '../../src/messaging/subjects.js';
import { uniqueSuffix, waitFor } from '../support/harness.js';

const NATS_SERVER = '/usr/sbin/nats-server';
const ACK_WAIT_MS = 2_000;

/** Starts nats-server with JetStream on `port`, storing in `dir`; resolves once it listens. */
async function startNats(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], {
    stdio: 'ignore',
  });
  for (let i = 0; i < 100; i += 1) {
    if (await reachable('127.0.0.1', port, 200)) return child;
    if (child.exitCode !== null) break;
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`nats-server did not listen on ${port}`);
}

function killed(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

describe.skipIf(!existsSync(NATS_SERVER))(
  'a consumer whose NATS server crashes and comes back',
  () => {
    const names = topologyNames(`t${uniqueSuffix()}`, 1);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'settle-nats-'));
    let server: ChildProcess | undefined;
    let nc: NatsConnection | undefined;
    let consumer: CommandConsumer | undefined;
    afterAll(async () => {
      await consumer?.stop(0);
      await nc?.close().catch(() => undefined);
      if (server !== undefined) await killed(server);
      rmSync(dir, { recursive: true, force: true });
    });

    it('keeps the command it held, pulls again by itself, and loses nothing', async () => {
      const port = await freePort();
      server = await startNats(port, dir);
      nc = await connectNats(`nats://127.0.0.1:${port}`, 'reconnect-test');
      const jsm = await ensureTopology(nc, names, {
        ackWaitMs: ACK_WAIT_MS,
        maxDeliver: 6,
        maxAckPending: 100,
      });

      const runs = new Map<string, number>();
      const deadLetters: string[] = [];
      const errors: string[] = [];
      // The one command held across the crash: its turn ends only after the server is gone, so its
      // ack cannot reach the server and it must come back.
      const heldOrder = newId('order');
      let heldStartedResolve: (() => void) | undefined;
      const heldStarted = new Promise<void>((resolve) => (heldStartedResolve = resolve));
      let releaseHeld: (() => void) | undefined;
      const heldTurn = new Promise<void>((resolve) => (releaseHeld = resolve));

      consumer = new CommandConsumer(
        nc,
        jetstream(nc),
        jsm,
        names,
        async (command) => {
          const n = (runs.get(command.orderId) ?? 0) + 1;
          runs.set(command.orderId, n);
          if (command.orderId === heldOrder && n === 1) {
            heldStartedResolve?.();
            await heldTurn;
          }
          return { kind: 'done' };
        },
        {
          inFlightMax: 8,
          ackWaitMs: ACK_WAIT_MS,
          workingMsMax: 30_000,
          backoffMs: [100, 200, 400, 800, 1_600],
          jitter: 0,
          recordDeadLetter: () => Promise.resolve(true),
          onDeadLetter: (entry) => deadLetters.push(`${entry.orderId ?? '?'} ${entry.reason}`),
          onError: (error, context) =>
            errors.push(
              `${String(context.reason ?? '')} ${error instanceof Error ? error.message : ''}`,
            ),
        },
      );
      await consumer.start();

      const js = jetstream(nc);
      const publish = async (orderId: string) =>
        js.publish(
          names.commandSubject(orderId),
          JSON.stringify({ type: 'ExecuteOrder', orderId }),
          {
            msgID: `exec:${orderId}`,
          },
        );

      const before = Array.from({ length: 10 }, () => newId('order'));
      for (const orderId of before) await publish(orderId);
      await publish(heldOrder);
      await waitFor(async () => before.every((orderId) => runs.get(orderId) === 1), {
        timeoutMs: 10_000,
        what: 'the first commands ran',
      });
      await heldStarted;

      // The crash: the held turn ends while no server is there to take its ack, and the outage
      // outlasts a pull's expiry (5 s).
      await killed(server);
      releaseHeld?.();
      await sleep(7_000);
      server = await startNats(port, dir);
      // Answered once the client has reconnected (a JetStream request fails while it has not).
      await waitFor(async () => (await jsm.streams.info(names.commandStream)) !== undefined, {
        timeoutMs: 15_000,
        what: 'the connection back',
      });

      const after = Array.from({ length: 10 }, () => newId('order'));
      // The client buffers publishes while it reconnects; retry the few that fail meanwhile.
      for (const orderId of after) {
        await waitFor(
          async () =>
            publish(orderId).then(
              () => true,
              () => false,
            ),
          { timeoutMs: 15_000, intervalMs: 200, what: `publishing ${orderId}` },
        );
      }

      await waitFor(
        async () => {
          if (![...before, ...after, heldOrder].every((orderId) => (runs.get(orderId) ?? 0) >= 1)) {
            return false;
          }
          const info = await jsm.consumers.info(names.commandStream, names.runtimeConsumer);
          return info.num_ack_pending === 0 && info.num_pending === 0;
        },
        { timeoutMs: 30_000, intervalMs: 200, what: 'every command run and acknowledged' },
      );

      // The held command's turn ended while the server was down; it was not lost: acknowledged
      // (its late ack, buffered by the client, or after running again) like every other.
      expect(runs.get(heldOrder)).toBeGreaterThanOrEqual(1);
      for (const orderId of [...before, ...after])
        expect(runs.get(orderId)).toBeGreaterThanOrEqual(1);
      // Commands published after the restart ran once each: the consumer pulled again by itself.
      expect(after.map((orderId) => runs.get(orderId))).toEqual(after.map(() => 1));
      expect(deadLetters).toEqual([]);
    }, 60_000);
  },
);
