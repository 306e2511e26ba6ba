/**
 * Goal: the webhook inbox and closed dead letters do not grow forever, and nothing that still
 * matters goes. Housekeeping deletes an inbox row only once it is older than
 * WEBHOOK_INBOX_KEEP_DAYS and its order is final (an unfinished or unknown order's row stays), and
 * a dead letter only once it was closed (REPLAYED, DISCARDED, RESOLVED) more than
 * DEAD_LETTER_KEEP_DAYS ago (an OPEN one stays whatever its age); both a bounded number of rows
 * per pass, through an index. A webhook the PSP sends again after its inbox row went is recorded
 * anew and changes nothing: no second credit, no ledger entry, no transition, no second review
 * flag; one naming another charge is dead-lettered again, OPEN, as the first time. A message whose
 * closed dead letter went is recorded OPEN again should it come back, never dropped.
 * Method: the purge functions on a migrated database of the real MariaDB with rows written in
 * the states and ages each case needs, and EXPLAIN of their DELETEs; then a real node (PSP mock,
 * Settle, NATS): orders paid, declined and charged after failure, their inbox rows aged and
 * purged by the node's housekeeping, the same event sent again (the PSP's ResendWebhook, or
 * re-signed) until JetStream delivered its command to the actor, and the wallet, ledger,
 * transitions and dead letters compared.
 */
import { sql } from 'kysely';
import { jetstreamManager } from '@nats-io/jetstream';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  findDeadLetter,
  listDeadLetters,
  purgeClosedDeadLetters,
  recordDeadLetter,
} from '../../src/admin/dead-letters.js';
import { loadConfig } from '../../src/config.js';
import { newId } from '../../src/domain/ids.js';
import type { DeadLetter } from '../../src/messaging/command-consumer.js';
import type { Db } from '../../src/storage/db.js';
import { purgeWebhookInbox } from '../../src/storage/repositories/outbox.repository.js';
import {
  call,
  CARD,
  count,
  expectMoneyInvariants,
  insertPaymentOfOneOrder,
  metricSample,
  openTestDatabase,
  payOnHostedPage,
  postWebhook,
  pspEvent,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
  type TestDatabase,
} from '../support/harness.js';

const DAY_MS = 24 * 3_600_000;
/** The command stream's duplicate window in the node test (see its beforeAll). */
const DUPLICATE_WINDOW_MS = 200;
const NOW = new Date('2026-06-01T12:00:00.000Z');
const daysAgo = (days: number, from = NOW) => new Date(from.getTime() - days * DAY_MS);

let database: TestDatabase;
let db: Db;
beforeAll(async () => {
  database = await openTestDatabase('settle_retention_inbox_t', { poolSize: 2 });
  db = database.db;
});
afterAll(async () => database?.close());

/** An order in `state`, created long ago, and `received` inbox rows for it at those ages. */
async function orderWithWebhooks(state: string, receivedDaysAgo: readonly number[]) {
  const orderId = newId('order');
  await insertPaymentOfOneOrder(db, {
    paymentId: newId('payment'),
    orderId,
    paymentState:
      state === 'SUCCEEDED' ? 'SUCCEEDED' : state === 'EXECUTING' ? 'EXECUTING' : 'FAILED',
    orderState: state,
    at: daysAgo(200),
  });
  await insertInbox(orderId, receivedDaysAgo);
  return orderId;
}

async function insertInbox(orderId: string, receivedDaysAgo: readonly number[]) {
  for (const days of receivedDaysAgo) {
    await db
      .insertInto('inbox')
      .values({
        source: 'psp',
        event_id: `evt_${randomUUID()}`,
        order_id: orderId,
        received_at: daysAgo(days),
      })
      .execute();
  }
}

const inboxRowsOf = (orderId: string) =>
  count(db, sql<{ n: string }>`SELECT COUNT(*) AS n FROM inbox WHERE order_id = ${orderId}`);

describe('the webhook inbox purge (WEBHOOK_INBOX_KEEP_DAYS)', () => {
  it('deletes old rows of final orders only, a bounded number per statement and per pass', async () => {
    const succeeded = await orderWithWebhooks('SUCCEEDED', [120, 100, 95]);
    const failed = await orderWithWebhooks('FAILED', [100]);
    const expired = await orderWithWebhooks('EXPIRED', [100, 10]);
    const executing = await orderWithWebhooks('EXECUTING', [150]);
    // Recorded for a nonce no order has: its command was dead-lettered for review.
    const unknown = newId('order');
    await insertInbox(unknown, [150]);
    const cutoff = daysAgo(90);

    // Two DELETEs of two rows: four of the five old rows of final orders, oldest first.
    expect(await purgeWebhookInbox(db, cutoff, { rowsPerStatement: 2, statementsMax: 2 })).toBe(4);
    expect(await purgeWebhookInbox(db, cutoff, { rowsPerStatement: 2, statementsMax: 2 })).toBe(1);
    expect(await purgeWebhookInbox(db, cutoff)).toBe(0);

    expect(await inboxRowsOf(succeeded)).toBe(0);
    expect(await inboxRowsOf(failed)).toBe(0);
    expect(await inboxRowsOf(expired), 'the row inside the window stays').toBe(1);
    expect(await inboxRowsOf(executing), 'an unfinished order keeps its rows').toBe(1);
    expect(await inboxRowsOf(unknown), 'an unknown order keeps its rows').toBe(1);
  });

  it('walks the received_at index rather than the whole table', async () => {
    // Mostly recent rows, as in a live inbox: the old ones are a small range of the index.
    const recent = await orderWithWebhooks('SUCCEEDED', []);
    await insertInbox(
      recent,
      Array.from({ length: 200 }, () => 1),
    );
    const plan = await sql<{ table: string; key: string | null }>`
      EXPLAIN DELETE FROM inbox
      WHERE received_at < ${daysAgo(90)}
        AND EXISTS (SELECT 1 FROM payment_order o
                    WHERE o.id = inbox.order_id AND o.state IN ('SUCCEEDED', 'FAILED', 'EXPIRED'))
      ORDER BY received_at LIMIT 10`.execute(db);
    expect(plan.rows.map((row) => [row.table, row.key])).toEqual([
      ['inbox', 'inbox_received'],
      ['o', 'PRIMARY'],
    ]);
  });
});

/** The fixtures' command stream was created then (StreamInfo.created). */
const STREAM_CREATED_AT = '2026-01-01T00:00:00.000000000Z';
let sequence = 1;

function deadLetterEntry(): DeadLetter {
  const orderId = newId('order');
  sequence += 1;
  return {
    streamCreatedAt: STREAM_CREATED_AT,
    streamSequence: sequence,
    orderId,
    subject: 'settle.test.cmd.execute',
    reason: 'RETRIES_EXHAUSTED',
    attempts: 6,
    lastError: 'the PSP was unavailable',
    payload: JSON.stringify({ type: 'ExecuteOrder', orderId }),
    deadLetteredAt: NOW.toISOString(),
  };
}

/** Records a dead letter, then puts it in `state` as of `closedDaysAgo`; answers its id. */
async function deadLetterIn(state: string, closedDaysAgo: number, entry = deadLetterEntry()) {
  expect(await recordDeadLetter(db, 'TEST_DLQ', entry, daysAgo(closedDaysAgo + 1))).toBe(true);
  const [row] = await listDeadLetters(db, { orderIds: [entry.orderId ?? ''], limit: 1 });
  if (row === undefined) throw new Error('no dead letter');
  await db
    .updateTable('dead_letter')
    .set({ state: state as 'OPEN', updated_at: daysAgo(closedDaysAgo) })
    .where('id', '=', row.id)
    .execute();
  return row.id;
}

describe('the dead-letter purge (DEAD_LETTER_KEEP_DAYS)', () => {
  it('deletes entries closed before the window, never OPEN ones, bounded per pass', async () => {
    const openOld = await deadLetterIn('OPEN', 400);
    const replayed = await deadLetterIn('REPLAYED', 100);
    const discarded = await deadLetterIn('DISCARDED', 120);
    const resolved = await deadLetterIn('RESOLVED', 91);
    const discardedRecent = await deadLetterIn('DISCARDED', 30);
    const cutoff = daysAgo(90);

    // One DELETE a state while it deletes fewer than its limit: two states in two statements.
    const bounds = { rowsPerStatement: 2, statementsMax: 2 };
    expect(await purgeClosedDeadLetters(db, cutoff, bounds)).toBe(2);
    expect(await purgeClosedDeadLetters(db, cutoff)).toBe(1);
    expect(await purgeClosedDeadLetters(db, cutoff)).toBe(0);
    for (const id of [replayed, discarded, resolved]) {
      expect(await findDeadLetter(db, id), `entry ${id} purged`).toBeUndefined();
    }
    expect((await findDeadLetter(db, openOld))?.state, 'an OPEN entry is never purged').toBe(
      'OPEN',
    );
    expect((await findDeadLetter(db, discardedRecent))?.state).toBe('DISCARDED');
  });

  it('records a message again, OPEN, should it come back after its closed entry went', async () => {
    const entry = deadLetterEntry();
    const id = await deadLetterIn('DISCARDED', 100, entry);
    // While the entry is kept, a second record of the same message is a no-op.
    expect(await recordDeadLetter(db, 'TEST_DLQ', entry, NOW)).toBe(false);
    await purgeClosedDeadLetters(db, daysAgo(90));
    expect(await findDeadLetter(db, id)).toBeUndefined();
    // Its key is free again: the message is kept for an operator, not dropped as a duplicate.
    expect(await recordDeadLetter(db, 'TEST_DLQ', entry, NOW)).toBe(true);
    const again = await listDeadLetters(db, { orderIds: [entry.orderId ?? ''], limit: 10 });
    expect(again.map((row) => row.state)).toEqual(['OPEN']);
  });

  it('walks the (state, updated_at) index', async () => {
    const plan = await sql<{ key: string | null }>`
      EXPLAIN DELETE FROM dead_letter WHERE state = 'DISCARDED' AND updated_at < ${NOW}
      ORDER BY updated_at LIMIT 10`.execute(db);
    expect(plan.rows[0]?.key).toBe('dead_letter_closed');
  });
});

describe('a node: a webhook sent again after its inbox row was purged', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
    // JetStream drops a command whose message id (`psp:<event id>`) it saw within the stream's
    // duplicate window (2 min). A webhook sent again after WEBHOOK_INBOX_KEEP_DAYS (31 days at
    // least) is long past it; the window is shortened so that the test's resent commands, too,
    // go through JetStream to the order's actor instead of being dropped on the way.
    const jsm = await jetstreamManager(stack.settle.nc);
    const stream = await jsm.streams.info(stack.settle.names.commandStream);
    await jsm.streams.update(stack.settle.names.commandStream, {
      ...stream.config,
      duplicate_window: DUPLICATE_WINDOW_MS * 1_000_000,
    });
  });
  afterAll(async () => stack?.stop());

  /** A new payment of one order of 42.00 for a new seller. */
  async function newOrder() {
    const sellerId = `seller-ret-${randomUUID()}`;
    const created = await call(stack.payments.createPayment.bind(stack.payments), {
      requestId: randomUUID(),
      buyerId: 'buyer-retention',
      currencyCode: 'USD',
      orders: [{ sellerId, amountMinor: 4200n }],
    });
    const order = created.payment?.orders[0];
    return { orderId: order?.orderId ?? '', checkoutUrl: order?.checkoutUrl ?? '', sellerId };
  }

  /** What an order has booked and been through, to compare before and after. */
  async function footprint(orderId: string, sellerId: string) {
    const node = stack.settle.db;
    const order = await node
      .selectFrom('payment_order')
      .select(['state', 'version', 'review_reason', 'psp_token'])
      .where('id', '=', orderId)
      .executeTakeFirstOrThrow();
    const wallet = await node
      .selectFrom('wallet')
      .select('balance_minor')
      .where('seller_id', '=', sellerId)
      .executeTakeFirst();
    const rows = (table: string) =>
      count(
        node,
        sql<{
          n: string;
        }>`SELECT COUNT(*) AS n FROM ${sql.table(table)} WHERE order_id = ${orderId}`,
      );
    return {
      order,
      walletMinor: wallet?.balance_minor,
      ledgerEntries: await rows('ledger_entry'),
      ledgerTransactions: await rows('ledger_transaction'),
      transitions: await rows('payment_order_transition'),
      deadLetters: await rows('dead_letter'),
    };
  }

  const inboxOf = (orderId: string) =>
    count(
      stack.settle.db,
      sql<{ n: string }>`SELECT COUNT(*) AS n FROM inbox WHERE order_id = ${orderId}`,
    );

  /**
   * The runtime consumer's deliveries so far, or undefined while the outbox or the consumer has
   * anything left to hand over or acknowledge.
   */
  async function deliveredWhenDrained(): Promise<number | undefined> {
    const outbox = await count(
      stack.settle.db,
      sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`,
    );
    if (outbox !== 0) return undefined;
    const jsm = await jetstreamManager(stack.settle.nc);
    const consumer = await jsm.consumers.info(
      stack.settle.names.commandStream,
      stack.settle.names.runtimeConsumer,
    );
    return consumer.num_pending === 0 && consumer.num_ack_pending === 0
      ? consumer.delivered.consumer_seq
      : undefined;
  }

  /** Ages the order's inbox rows past the window; the node's next pass purges `rows` of them. */
  async function purgeInboxOf(orderId: string, rows: number): Promise<void> {
    await sql`UPDATE inbox SET received_at = ${daysAgo(91, new Date())}
              WHERE order_id = ${orderId}`.execute(stack.settle.db);
    expect((await stack.settle.housekeeping.runOnce()).webhook_inbox).toBe(rows);
    expect(await inboxOf(orderId)).toBe(0);
  }

  /**
   * Sends an event again with `send` once the duplicate window is over, and waits until it is in
   * the inbox and its command was delivered by JetStream to the actor and acknowledged.
   */
  async function sendAgain(orderId: string, send: () => Promise<unknown>): Promise<void> {
    const before = await waitFor(deliveredWhenDrained, { what: 'the commands handled' });
    await sleep(2 * DUPLICATE_WINDOW_MS);
    await send();
    await waitFor(
      async () =>
        (await inboxOf(orderId)) === 1 && ((await deliveredWhenDrained()) ?? before) > before,
      { what: 'the event recorded again and its command delivered and acknowledged' },
    );
  }

  it.each([
    ['paid', CARD.success, 'SUCCEEDED'],
    ['declined', CARD.decline, 'FAILED'],
  ])(
    'changes nothing for an order %s: no credit, no ledger entry, no transition',
    async (_, card, finalState) => {
      const { orderId, checkoutUrl, sellerId } = await newOrder();
      await payOnHostedPage(checkoutUrl, card);
      await waitFor(async () => (await footprint(orderId, sellerId)).order.state === finalState, {
        what: `the order ${finalState}`,
      });
      await waitFor(async () => (await inboxOf(orderId)) === 1 && (await deliveredWhenDrained()), {
        what: 'the webhook recorded and its command handled',
      });
      const before = await footprint(orderId, sellerId);
      expect(before.walletMinor).toBe(finalState === 'SUCCEEDED' ? '4200' : undefined);

      // Inside the window the row stays; aged past it, the node's next pass purges it.
      expect((await stack.settle.housekeeping.runOnce()).webhook_inbox).toBe(0);
      await purgeInboxOf(orderId, 1);

      // The PSP sends the same event (same id and body) again: it is news to the inbox now.
      await sendAgain(orderId, () =>
        call(stack.pspApi.resendWebhook.bind(stack.pspApi), { nonce: orderId }),
      );
      expect(await footprint(orderId, sellerId)).toEqual(before);
      await expectMoneyInvariants(stack.settle.db);
    },
  );

  it('changes nothing for a charge after failure already flagged for review', async () => {
    const { orderId, sellerId } = await newOrder();
    const token = await waitFor(
      async () => (await footprint(orderId, sellerId)).order.psp_token ?? undefined,
    );
    // Declined, then the PSP reports a charge: the order stays FAILED, flagged for review, and
    // nothing is booked (an operator refunds it or books it by hand).
    const declined = pspEvent(orderId, { amountMinor: 4200n, token, declineCode: 'card_declined' });
    expect((await postWebhook(stack, declined)).status).toBe(200);
    await waitFor(async () => (await footprint(orderId, sellerId)).order.state === 'FAILED');
    const charge = pspEvent(orderId, { amountMinor: 4200n, token });
    expect((await postWebhook(stack, charge)).status).toBe(200);
    await waitFor(async () => (await footprint(orderId, sellerId)).order.review_reason !== null, {
      what: 'the charge flagged for review',
    });
    await waitFor(deliveredWhenDrained, { what: 'the commands handled' });
    const before = await footprint(orderId, sellerId);
    expect(before.order.review_reason).toBe('CHARGED_AFTER_FAILURE');

    await purgeInboxOf(orderId, 2);
    // The charge comes again: recorded anew, and still one flag, no booking, no transition.
    await sendAgain(orderId, async () =>
      expect(await postWebhook(stack, charge)).toEqual({
        status: 200,
        body: { received: true, duplicate: false },
      }),
    );
    expect(await footprint(orderId, sellerId)).toEqual(before);
    await expectMoneyInvariants(stack.settle.db);
  });

  it('keeps the rows of an order with a dead letter: a resent result naming another charge is a duplicate, not a second dead letter', async () => {
    const node = stack.settle.db;
    const { orderId, checkoutUrl, sellerId } = await newOrder();
    await payOnHostedPage(checkoutUrl, CARD.success);
    await waitFor(async () => (await footprint(orderId, sellerId)).order.state === 'SUCCEEDED');
    const token = (await footprint(orderId, sellerId)).order.psp_token ?? '';
    const other = pspEvent(orderId, { amountMinor: 9999n, token, pspReference: 'psp_other' });
    expect((await postWebhook(stack, other)).status).toBe(200);
    await waitFor(async () => (await footprint(orderId, sellerId)).deadLetters === 1);
    await waitFor(async () => (await inboxOf(orderId)) === 2 && (await deliveredWhenDrained()));
    const before = await footprint(orderId, sellerId);

    // Aged past the window, the rows stay while the order has a dead letter: a second one for
    // the same charge could have an operator refund it twice.
    await sql`UPDATE inbox SET received_at = ${daysAgo(91, new Date())}
              WHERE order_id = ${orderId}`.execute(node);
    expect((await stack.settle.housekeeping.runOnce()).webhook_inbox).toBe(0);
    expect(await inboxOf(orderId)).toBe(2);
    await sleep(2 * DUPLICATE_WINDOW_MS);
    expect(await postWebhook(stack, other)).toEqual({
      status: 200,
      body: { received: true, duplicate: true },
    });
    await waitFor(deliveredWhenDrained, { what: 'the commands handled' });
    expect(await footprint(orderId, sellerId)).toEqual(before);

    // Once its dead letter is closed and past its own window, both go (in one pass or two).
    await sql`UPDATE dead_letter SET state = 'DISCARDED', updated_at = ${daysAgo(91, new Date())}
              WHERE order_id = ${orderId}`.execute(node);
    const passes = [
      await stack.settle.housekeeping.runOnce(),
      await stack.settle.housekeeping.runOnce(),
    ];
    expect(passes.reduce((sum, pass) => sum + (pass.dead_letter ?? 0), 0)).toBe(1);
    expect(passes.reduce((sum, pass) => sum + (pass.webhook_inbox ?? 0), 0)).toBe(2);
    expect(await inboxOf(orderId)).toBe(0);
    await expectMoneyInvariants(node);
  });

  it('purges old closed dead letters and counts both tasks in /metrics', async () => {
    const node = stack.settle.db;
    const entry = { ...deadLetterEntry(), streamSequence: 1_000_000 };
    await recordDeadLetter(node, 'TEST_DLQ', entry, daysAgo(100, new Date()));
    await sql`UPDATE dead_letter SET state = 'DISCARDED', updated_at = ${daysAgo(91, new Date())}
              WHERE order_id = ${entry.orderId}`.execute(node);
    expect((await stack.settle.housekeeping.runOnce()).dead_letter).toBe(1);
    const metrics = await scrapeMetrics(stack.settleHttp);
    // This one and the previous test's.
    expect(metricSample(metrics, 'settle_rows_purged_total', { task: 'dead_letter' })).toBe(2);
    expect(metricSample(metrics, 'settle_rows_purged_total', { task: 'webhook_inbox' })).toBe(6);
  });
});

describe('WEBHOOK_INBOX_KEEP_DAYS and DEAD_LETTER_KEEP_DAYS', () => {
  it('default to 90 days and keep at least 31 (longer than webhooks and commands come back)', () => {
    const defaults = loadConfig({});
    expect(defaults.WEBHOOK_INBOX_KEEP_DAYS).toBe(90);
    expect(defaults.DEAD_LETTER_KEEP_DAYS).toBe(90);
    for (const name of ['WEBHOOK_INBOX_KEEP_DAYS', 'DEAD_LETTER_KEEP_DAYS'] as const) {
      expect(loadConfig({ [name]: '31' })[name]).toBe(31);
      expect(() => loadConfig({ [name]: '30' })).toThrow(new RegExp(`${name}: .*>=31`));
      expect(() => loadConfig({ [name]: 'a month' })).toThrow(
        new RegExp(`${name}: must be a number`),
      );
      expect(() => loadConfig({ [name]: '36501' })).toThrow(new RegExp(name));
    }
  });
});
