/**
 * Goal: a Settle process can die at any point, or lose NATS, or be stopped, and every in-flight
 * order still completes exactly once: (a) kill -9 during PSP calls, (b) kill -9 at random moments
 * while commits and acks are happening, (c) kill -9 while the outbox is being relayed, (d) a NATS
 * connection cut, (e) SIGTERM hands in-flight commands back to another node and exits 0 within
 * the grace period; a second SIGTERM forces the exit.
 * Method: real child processes (`node --import tsx src/main.ts --settle-only` and the PSP mock)
 * from src/chaos/cluster.ts on the real MariaDB and NATS, each node behind its own MySQL and NATS
 * TCP proxies; SIGKILL and SIGTERM are real signals. Each test ends with the exactly-once check:
 * at most one charge per order in the PSP's own records, one ledger transaction per SUCCEEDED
 * order, balanced ledger, wallets equal to the ledger, every order terminal.
 */
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { openDatabase } from '../../src/storage/db.js';
import type { ChaosCluster } from '../../src/chaos/cluster.js';
import { sleep } from '../../src/chaos/processes.js';
import { callUnary, checkHealth, type HealthState } from '../../src/chaos/rpc.js';
import { TERMINAL_STATES } from '../../src/domain/payment-order.js';
import { TEST_CARD } from '../../src/psp/mock/card.js';
import {
  createPayments,
  expectExactlyOnce,
  orderRows,
  outboxCount,
  payAll,
  setPsp,
  startCluster,
  waitForOrders,
} from './support.js';

let cluster: ChaosCluster | undefined;

afterEach(async () => {
  await cluster?.destroy();
  cluster = undefined;
});

async function streamState(c: ChaosCluster) {
  const nc = await connect({ servers: inject('natsUrl') });
  try {
    const jsm = await jetstreamManager(nc);
    const stream = await jsm.streams.info(c.names.commandStream);
    const consumer = await jsm.consumers.info(c.names.commandStream, c.names.runtimeConsumer);
    // The consumer sequence counts every delivery; past the stream's messages, redeliveries.
    return {
      messages: stream.state.messages,
      redeliveries: consumer.delivered.consumer_seq - stream.state.messages,
    };
  } finally {
    await nc.close();
  }
}

/** PSP webhook deliveries that needed more than one attempt (their receiver died or failed). */
async function webhooksResent(c: ChaosCluster): Promise<number> {
  const psp = openDatabase(c.pspMysqlUrl, { poolSize: 1 });
  try {
    const result = await sql<{ n: string }>`
      SELECT COUNT(*) AS n FROM psp_webhook WHERE attempts > 1`.execute(psp.db);
    return Number(result.rows[0]?.n ?? 0);
  } finally {
    await psp.close();
  }
}

async function waitForHealth(address: string, wanted: HealthState): Promise<void> {
  const deadline = Date.now() + 10_000;
  let last: HealthState = 'UNKNOWN';
  while (Date.now() < deadline) {
    last = await checkHealth(address, 1_000);
    if (last === wanted) return;
    await sleep(100);
  }
  throw new Error(`health stayed ${last}, wanted ${wanted}`);
}

const allTerminal = (rows: { state: string }[]) =>
  rows.every((r) => (TERMINAL_STATES as ReadonlySet<string>).has(r.state));

describe('crash recovery with real processes', () => {
  it('(a) kill -9 during PSP calls: after the restart every order completes exactly once', async () => {
    cluster = await startCluster({
      nodes: 1,
      nodeEnv: { PSP_CALL_TIMEOUT_MS: '10000', PSP_BREAKER_RESET_MS: '11000' },
    });
    const c = cluster;
    await setPsp(c, { latencyMs: 1_500 });
    const payments = await createPayments(c, { count: 8, ordersEach: 2 });
    // EXECUTING is committed before the PSP call: every order's call is now in flight.
    const before = await waitForOrders(
      c,
      (rows) => rows.length === 16 && rows.every((r) => r.state === 'EXECUTING'),
      'every order EXECUTING',
    );
    expect(before.every((r) => r.pspToken === null)).toBe(true);
    // The calls leave right after that commit, over a channel the node may still be opening; the
    // PSP holds each for 1.5 s, so half a second later they are all in flight there.
    await sleep(500);
    await c.killNode(0);
    await setPsp(c, { latencyMs: 0 });

    // The PSP finishes registrations the dead node will never hear about (lost answers): 1.5 s
    // of latency, later on a loaded machine.
    const psp = c.pspApi;
    let atPsp: Array<string | undefined> = [];
    for (let attempt = 0; attempt < 20; attempt += 1) {
      await sleep(attempt === 0 ? 2_000 : 500);
      atPsp = await Promise.all(
        before.map((row) =>
          callUnary(psp.getPaymentStatus.bind(psp), { nonce: row.id }, 5_000).then(
            (status) => status.token,
            () => undefined,
          ),
        ),
      );
      if (atPsp.some((token) => token !== undefined)) break;
    }
    expect(atPsp.filter((token) => token !== undefined).length).toBeGreaterThan(0);

    // The node ran the orders itself, so their ExecuteOrder rows are still held in the outbox:
    // when the hold ends, the restarted node's relay sends them through JetStream.
    await c.startNode(0);
    const registered = await waitForOrders(
      c,
      (rows) => rows.every((r) => r.pspToken !== null),
      'every order registered after the restart',
    );
    // Registration is idempotent by nonce: Settle holds the PSP's first token, not a second one.
    for (const [i, row] of before.entries()) {
      const token = atPsp[i];
      if (token !== undefined) {
        expect(registered.find((r) => r.id === row.id)?.pspToken).toBe(token);
      }
    }
    await payAll(c, registered);
    await waitForOrders(c, (rows) => rows.every((r) => r.state === 'SUCCEEDED'), 'all SUCCEEDED');
    await expectExactlyOnce(c, payments);
  }, 90_000);

  it('(b) kill -9 at random moments between commit and ack: exactly-once outcomes', async () => {
    cluster = await startCluster({ nodes: 1 });
    const c = cluster;
    // Every registration is paid at once, so commits (and acks) happen all the time; the PSP's
    // latency keeps a wave's orders in flight a while after they are created.
    await setPsp(c, { autoPayCard: TEST_CARD.success, latencyMs: 100 });
    const payments: string[] = [];
    const succeeded = (rows: readonly { state: string }[]) =>
      rows.filter((o) => o.state === 'SUCCEEDED').length;
    // A wave of 90 orders, killed a pseudo-random moment after its first 15 % succeeded. A kill
    // that lands after the whole wave is done tests nothing (a fast machine can finish it first):
    // another wave is sent then, a bounded number of times, until two kills landed mid-flight.
    let midFlight = 0;
    for (let wave = 0; wave < 6 && midFlight < 2; wave += 1) {
      payments.push(...(await createPayments(c, { count: 30, ordersEach: 3 })));
      const created = payments.length * 3;
      await waitForOrders(
        c,
        (r) => succeeded(r) >= created - 90 + 14,
        `wave ${wave}: 15 % SUCCEEDED`,
      );
      await sleep(Math.floor(Math.random() * 100));
      await c.killNode(0);
      const atKill = await orderRows(c);
      expect(atKill.length).toBe(created);
      if (succeeded(atKill) < created) midFlight += 1;
      await c.startNode(0);
    }
    expect(midFlight, 'kills that landed while orders were in flight').toBe(2);
    const total = payments.length * 3;
    await waitForOrders(
      c,
      (rows) => rows.length === total && rows.every((r) => r.state === 'SUCCEEDED'),
      'all SUCCEEDED',
      60_000,
    );
    // The kills interrupted work in flight: commands delivered before a kill were delivered again
    // after it, or webhooks being applied at once (no command) were sent again by the PSP.
    const interrupted = (await streamState(c)).redeliveries + (await webhooksResent(c));
    expect(interrupted).toBeGreaterThan(0);
    await expectExactlyOnce(c, payments);
  }, 120_000);

  it('(c) kill -9 while relaying the outbox: nothing lost, nothing published twice', async () => {
    cluster = await startCluster({
      nodes: 1,
      // Every ExecuteOrder through the relay (none run on the creating node first).
      nodeEnv: { OUTBOX_BATCH_MAX: '5', OUTBOX_POLL_MS: '50', LOCAL_EXECUTE_HOLD_MS: '0' },
    });
    const c = cluster;
    const node = c.node(0);
    // With NATS cut, commits pile up in the outbox.
    node.natsProxy.down();
    const payments = await createPayments(c, { count: 40, ordersEach: 5 });
    const total = 200;
    expect(await outboxCount(c)).toBe(total);
    node.natsProxy.up();
    const deadline = Date.now() + 30_000;
    let left = total;
    while (left === total && Date.now() < deadline) {
      await sleep(2);
      left = await outboxCount(c);
    }
    await c.killNode(0);
    const atKill = await outboxCount(c);
    expect(atKill, 'killed while the relay was part-way through').toBeGreaterThan(0);
    expect(atKill).toBeLessThan(total);

    await c.startNode(0);
    const registered = await waitForOrders(
      c,
      (rows) => rows.length === total && rows.every((r) => r.pspToken !== null),
      'every order registered',
      60_000,
    );
    expect(await outboxCount(c)).toBe(0);
    // A batch published before the kill and again after it is deduplicated by Nats-Msg-Id.
    expect((await streamState(c)).messages).toBe(total);
    await payAll(c, registered, (i) => (i % 4 === 0 ? TEST_CARD.declined : TEST_CARD.success));
    await waitForOrders(c, allTerminal, 'all terminal');
    await expectExactlyOnce(c, payments);
  }, 120_000);

  it('(d) NATS connection cut: the node reconnects and carries on', async () => {
    // Every ExecuteOrder through JetStream, so that the cut stops them (new orders run on their
    // own node otherwise, and would carry on without NATS).
    cluster = await startCluster({ nodes: 1, nodeEnv: { LOCAL_EXECUTE_HOLD_MS: '0' } });
    const c = cluster;
    const node = c.node(0);
    await setPsp(c, { autoPayCard: TEST_CARD.success });
    const first = await createPayments(c, { count: 5, ordersEach: 2 });
    await waitForOrders(c, (rows) => rows.every((r) => r.state === 'SUCCEEDED'), 'first batch');

    expect(await checkHealth(node.grpcAddress, 2_000)).toBe('SERVING');
    // Counted from here: a start that found a port taken and moved (startNode) is a second start
    // too, but not a restart through the cut.
    const startsBeforeCut = node.process.starts;
    const pidBeforeCut = node.process.pid;
    node.natsProxy.down();
    const during = await createPayments(c, { count: 5, ordersEach: 2 });
    // The node says it cannot work while NATS is away.
    await waitForHealth(node.grpcAddress, 'NOT_SERVING');
    await sleep(2_000);
    const stuck = (await orderRows(c)).filter((r) => r.state !== 'SUCCEEDED');
    // Without NATS nothing moves: the cut is real.
    expect(stuck.length).toBe(10);
    // Born EXECUTING, none of them got to the PSP.
    expect(stuck.every((r) => r.state === 'EXECUTING' && r.pspToken === null)).toBe(true);
    node.natsProxy.up();
    await waitForHealth(node.grpcAddress, 'SERVING');
    await waitForOrders(
      c,
      (rows) => rows.length === 20 && rows.every((r) => r.state === 'SUCCEEDED'),
      'orders created during the cut',
      30_000,
    );
    // New work after the cut goes through too (the consumer resumed, not only the relay).
    const after = await createPayments(c, { count: 3, ordersEach: 1 });
    await waitForOrders(
      c,
      (rows) => rows.length === 23 && rows.every((r) => r.state === 'SUCCEEDED'),
      'orders created after the cut',
    );
    expect(node.process.starts, 'the node was not restarted through the cut').toBe(startsBeforeCut);
    expect(node.process.pid).toBe(pidBeforeCut);
    expect(node.process.running).toBe(true);
    await expectExactlyOnce(c, [...first, ...during, ...after]);
  }, 90_000);

  describe('(e) graceful shutdown', () => {
    // Both ways an order can be running on the stopping node: from JetStream (handed back with a
    // nak) or run where it was created (its held outbox row made due at once). The ack wait and
    // the hold are both far longer than the test, so only the hand-back can bring them back.
    it.each([
      { way: 'commands from JetStream (nak)', hold: '0' },
      { way: 'orders run where they were created (row made due)', hold: '60000' },
    ])(
      'SIGTERM: exits 0 within the grace period and hands in-flight $way to another node',
      async ({ hold }) => {
        cluster = await startCluster({
          nodes: 2,
          initialNodes: 1,
          nodeEnv: {
            CONSUMER_ACK_WAIT_MS: '30000',
            LOCAL_EXECUTE_HOLD_MS: hold,
            SHUTDOWN_GRACE_MS: '1000',
            PSP_CALL_TIMEOUT_MS: '20000',
            PSP_BREAKER_RESET_MS: '21000',
          },
        });
        const c = cluster;
        await setPsp(c, { latencyMs: 6_000 });
        const payments = await createPayments(c, { count: 5, ordersEach: 2 });
        await waitForOrders(
          c,
          (rows) => rows.length === 10 && rows.every((r) => r.state === 'EXECUTING'),
          'node-1 calling the PSP for every order',
        );
        await c.startNode(1);
        await setPsp(c, { latencyMs: 0 });

        const stopping = Date.now();
        expect(c.signalNode(0, 'SIGTERM')).toBe(true);
        const exit = await c.node(0).process.waitForExit(10_000);
        const tookMs = Date.now() - stopping;
        c.markDown(0);
        expect(exit?.code, c.node(0).process.tail()).toBe(0);
        expect(tookMs).toBeLessThan(1_000 + 3_000);
        // node-1 never heard back from the PSP (6 s latency), so node-2 must finish every order,
        // well before the 30 s ack wait (or the 60 s hold) would have returned them.
        const registered = await waitForOrders(
          c,
          (rows) => rows.every((r) => r.pspToken !== null),
          'node-2 registering the orders node-1 handed back',
          10_000,
        );
        await payAll(c, registered);
        await waitForOrders(c, (rows) => rows.every((r) => r.state === 'SUCCEEDED'), 'all done');
        await expectExactlyOnce(c, payments);
      },
      90_000,
    );

    it('a second SIGTERM forces the exit at once', async () => {
      cluster = await startCluster({
        nodes: 1,
        nodeEnv: {
          SHUTDOWN_GRACE_MS: '20000',
          PSP_CALL_TIMEOUT_MS: '20000',
          PSP_BREAKER_RESET_MS: '21000',
        },
      });
      const c = cluster;
      await setPsp(c, { latencyMs: 10_000 });
      await createPayments(c, { count: 3, ordersEach: 1 });
      await waitForOrders(
        c,
        (rows) => rows.length === 3 && rows.every((r) => r.state === 'EXECUTING'),
        'PSP calls in flight',
      );
      const stopping = Date.now();
      c.signalNode(0, 'SIGTERM');
      // The first stop waits (up to 20 s) for the in-flight calls.
      expect(await c.node(0).process.waitForExit(500)).toBeUndefined();
      c.signalNode(0, 'SIGTERM');
      const exit = await c.node(0).process.waitForExit(5_000);
      c.markDown(0);
      expect(exit?.code).toBe(130);
      expect(Date.now() - stopping).toBeLessThan(3_000);
    }, 60_000);
  });
});
