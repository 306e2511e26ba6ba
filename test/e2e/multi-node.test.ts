/**
 * Goal: several runtime nodes share the work without ever doing it twice: each runs the new
 * orders it created, JetStream carries the rest (webhooks that miss the fast way, retries), and
 * the version check fences them all. (A node that dies with orders held for it is covered in
 * local-execute.test.ts and the crash-recovery tests.)
 * Method: two Settle nodes on one database and one namespace (one durable consumer between them)
 * plus the PSP mock paying every registration automatically; payments are created on both
 * nodes, and the outcome is checked from MySQL and from the PSP mock's own charge records; each
 * node's counters show which way its orders went.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { startSettle, type SettleNode } from '../../src/app.js';
import { PaymentServiceClient, PaymentState } from '../../src/grpc/generated/settle/v1/payment.js';
import {
  call,
  expectMoneyInvariants,
  freePort,
  startStack,
  testConfig,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
let nodeB: SettleNode;
let clientB: PaymentServiceClient;

/**
 * WEBHOOK_APPLY_WAIT_MS of both nodes. The test asserts that every webhook took the fast way, and
 * which way one takes is a race between its actor's commit and this wait: at the 2 s default, a
 * commit held up past 2 s on a loaded machine (or behind the other node's lock on the shared
 * seller's wallet) sent webhooks through JetStream, and `relayed` was no longer 0. 4 s stays below
 * the PSP mock's 5 s deadline per POST, so the mock still hears the answer of a slow fast way
 * rather than timing out and sending the event again.
 */
const APPLY_WAIT_MS = 4_000;

beforeAll(async () => {
  stack = await startStack({
    env: { CREATE_WAIT_MS: '0', WEBHOOK_APPLY_WAIT_MS: String(APPLY_WAIT_MS) },
  });
  const [grpcPort, httpPort] = await Promise.all([freePort(), freePort()]);
  const config = testConfig({
    ...stack.env,
    SETTLE_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
    SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
  });
  nodeB = await startSettle(config, { nodeName: 'test-node-b' });
  clientB = new PaymentServiceClient(
    `127.0.0.1:${nodeB.grpcPort}`,
    grpc.credentials.createInsecure(),
  );
  stack.psp.setBehavior({ autoPayCard: '4242424242424242' });
});
afterAll(async () => {
  clientB?.close();
  await nodeB?.stop();
  await stack?.stop();
});

describe('two nodes', () => {
  it('complete every order exactly once, whichever node created it', async () => {
    const nodes = [stack.settle, nodeB];
    const before = nodes.map((node) => ({
      local: node.local.counts.deletedWithTransition,
      relayed: node.relay.relayed,
    }));
    const ids: string[] = [];
    for (let i = 0; i < 30; i += 1) {
      const client = i % 2 === 0 ? stack.payments : clientB;
      const response = await call(client.createPayment.bind(client), {
        requestId: randomUUID(),
        buyerId: `buyer-${i}`,
        currencyCode: 'USD',
        orders: [
          { sellerId: 'seller-shared', amountMinor: 100n + BigInt(i) },
          { sellerId: `seller-${i}`, amountMinor: 50n },
        ],
      });
      ids.push(response.payment?.paymentId ?? '');
    }
    await waitFor(
      async () => {
        const result = await sql<{
          n: string;
        }>`SELECT COUNT(*) AS n FROM payment WHERE state = 'SUCCEEDED'`.execute(stack.settle.db);
        return Number(result.rows[0]?.n) === ids.length;
      },
      { timeoutMs: 30_000, what: 'all payments to succeed' },
    );
    // Each node ran the 30 orders it created (15 payments of 2), straight into its actors: the
    // row left with the token commit. Their webhooks came back to the node that registered them
    // and were applied at once, so neither relay published anything: nothing needed JetStream.
    nodes.forEach((node, i) => {
      expect(node.local.counts.deletedWithTransition - (before[i]?.local ?? 0)).toBe(30);
      expect(node.relay.relayed).toBe(before[i]?.relayed);
    });
    for (const paymentId of ids.slice(0, 3)) {
      const { payment } = await call(clientB.getPayment.bind(clientB), { paymentId });
      expect(payment?.state).toBe(PaymentState.PAYMENT_STATE_SUCCEEDED);
    }
    const perOrder = await sql<{ order_id: string; n: string }>`
      SELECT o.id AS order_id, COUNT(t.id) AS n FROM payment_order o
      LEFT JOIN ledger_transaction t ON t.order_id = o.id GROUP BY o.id`.execute(stack.settle.db);
    expect(perOrder.rows).toHaveLength(60);
    expect(perOrder.rows.every((row) => row.n === '1')).toBe(true);
    const { charges } = await call(stack.pspApi.listCharges.bind(stack.pspApi), { nonce: '' });
    const chargesPerNonce = new Map<string, number>();
    for (const charge of charges)
      chargesPerNonce.set(charge.nonce, (chargesPerNonce.get(charge.nonce) ?? 0) + 1);
    expect(chargesPerNonce.size).toBe(60);
    expect([...chargesPerNonce.values()].every((n) => n === 1)).toBe(true);
    const wallet = await call(stack.wallets.getWallet.bind(stack.wallets), {
      sellerId: 'seller-shared',
    });
    expect(wallet.wallet?.balanceMinor).toBe(BigInt(30 * 100 + (29 * 30) / 2));
    await expectMoneyInvariants(stack.settle.db);
  });
});
