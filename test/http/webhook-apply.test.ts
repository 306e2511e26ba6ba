/**
 * Goal: a PSP webhook is applied at once by its order's actor on the receiving node, its inbox row
 * committed in the same transaction as the transition, with no command through JetStream; a
 * duplicate is told apart by that inbox row and goes no further; and every case the fast way does
 * not finish (an illegal event, an actor that does not answer within WEBHOOK_APPLY_WAIT_MS, the
 * fast way switched off) takes the durable way (inbox + outbox command + consumer, dead letters);
 * an attempt that commits after its wait, its inbox row found by the durable way, answers its
 * delivery as applied (late), not as a duplicate; /metrics counts each answer by the way it took.
 * Method: a real Settle node and PSP mock (real MariaDB, NATS); signed webhooks posted by the
 * test; a row lock held by the test keeps an actor from committing; the relay's count of
 * published commands tells which way an event went, and the command stream's last sequence
 * whether one was ever published.
 */
import { randomUUID } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/storage/db.js';
import {
  call,
  count,
  expectMoneyInvariants,
  metricSample,
  postWebhook,
  pspEvent,
  rowCounts,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
  type WebhookResponse,
} from '../support/harness.js';

/**
 * WEBHOOK_APPLY_WAIT_MS of the stack that checks the fast way. Which way a webhook takes is a
 * race between the actor's commit and this wait, and the tests here assert the way: at the 2 s
 * default, a commit stalled past 2 s on a loaded machine (CPU, a shared MariaDB) sent the event
 * the durable way, and "SUCCEEDED before the 200" failed with a correct product. 8 s leaves the
 * durable way 2 s to answer within postWebhook's 10 s, so a stall long enough to change the way
 * now fails that call anyway. The wait running out is covered on its own below, with a short wait
 * and an actor held up on purpose.
 */
const FAST_WAY_WAIT_MS = 8_000;

/** An order registered with the PSP (its token stored) whose ExecuteOrder has been relayed. */
async function createOrder(
  stack: Stack,
  amountMinor: bigint,
): Promise<{ orderId: string; token: string }> {
  const created = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId: 'buyer-apply',
    currencyCode: 'USD',
    orders: [{ sellerId: 'seller-apply', amountMinor }],
  });
  const orderId = created.payment?.orders[0]?.orderId ?? '';
  const token = await waitFor(async () => {
    const row = await stack.settle.db
      .selectFrom('payment_order')
      .select('psp_token')
      .where('id', '=', orderId)
      .executeTakeFirst();
    return row?.psp_token !== null &&
      row?.psp_token !== undefined &&
      (await rowCounts(stack.settle.db)).outbox === 0
      ? row.psp_token
      : undefined;
  });
  return { orderId, token };
}

async function deadLetterOf(stack: Stack, orderId: string) {
  return waitFor(async () =>
    stack.settle.db
      .selectFrom('dead_letter')
      .select(['reason', 'last_error'])
      .where('order_id', '=', orderId)
      .executeTakeFirst(),
  );
}

async function orderState(stack: Stack, orderId: string): Promise<string | undefined> {
  const row = await stack.settle.db
    .selectFrom('payment_order')
    .select('state')
    .where('id', '=', orderId)
    .executeTakeFirst();
  return row?.state;
}

async function inboxRows(stack: Stack, orderId: string): Promise<number> {
  const result = await sql<{ n: string }>`
    SELECT COUNT(*) AS n FROM inbox WHERE order_id = ${orderId}`.execute(stack.settle.db);
  return Number(result.rows[0]?.n ?? 0);
}

/**
 * Where a command sent for an event would be: still in the outbox, or published, which moves the
 * command stream's last sequence (a row leaves the outbox only after JetStream acknowledged it).
 * Taken before and after an answer, it tells whether any command was written, without waiting.
 */
async function commandsWritten(stack: Stack): Promise<{ outbox: number; lastSeq: number }> {
  const jsm = await jetstreamManager(stack.settle.nc);
  const stream = await jsm.streams.info(stack.settle.names.commandStream);
  const outbox = await sql<{ n: string }>`SELECT COUNT(*) AS n FROM outbox`.execute(
    stack.settle.db,
  );
  return { outbox: Number(outbox.rows[0]?.n ?? 0), lastSeq: stream.state.last_seq };
}

/**
 * Waits until the relay counted a command more than `before`, then answers the count. The consumer
 * may apply a command, and the test see its effect in MySQL, before the relay's own commit (the
 * delete of the row it published) returns and bumps its counter.
 */
async function relayedAfter(stack: Stack, before: number): Promise<number> {
  await waitFor(async () => stack.settle.relay.relayed > before, { what: 'the relay to count' });
  return stack.settle.relay.relayed;
}

async function ledgerTransactions(stack: Stack, orderId: string): Promise<number> {
  const result = await sql<{ n: string }>`
    SELECT COUNT(*) AS n FROM ledger_transaction WHERE order_id = ${orderId}`.execute(
    stack.settle.db,
  );
  return Number(result.rows[0]?.n ?? 0);
}

describe('a webhook applied at once (WEBHOOK_APPLY_WAIT_MS > 0)', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_APPLY_WAIT_MS: String(FAST_WAY_WAIT_MS) } });
  });
  afterAll(async () => stack?.stop());

  it('is committed with its inbox row before the 200, with no command through JetStream', async () => {
    const { orderId, token } = await createOrder(stack, 2_500n);
    const relayedBefore = stack.settle.relay.relayed;
    const commandsBefore = await commandsWritten(stack);

    const event = pspEvent(orderId, { amountMinor: 2_500n, token });
    expect(await postWebhook(stack, event)).toEqual({
      status: 200,
      body: { received: true, duplicate: false },
    });
    // No waiting: the answer came after the commit.
    expect(await orderState(stack, orderId)).toBe('SUCCEEDED');
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);

    // The same event again: a duplicate, told apart by the inbox row the transition wrote.
    expect(await postWebhook(stack, event)).toEqual({
      status: 200,
      body: { received: true, duplicate: true },
    });
    // Neither answer wrote a command: none is in the outbox, none was ever published.
    expect(await commandsWritten(stack)).toEqual(commandsBefore);
    expect(stack.settle.relay.relayed).toBe(relayedBefore);
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
    // settle_webhook_seconds counts each answer by the way it took.
    const metrics = await scrapeMetrics(stack.settleHttp);
    const answered = (way: string) =>
      metricSample(metrics, 'settle_webhook_seconds_count', { way }) ?? 0;
    expect([answered('applied'), answered('duplicate'), answered('queued')]).toEqual([1, 1, 0]);
  });

  it('sends an event its order refuses the durable way, to the dead-letter queue', async () => {
    const { orderId, token } = await createOrder(stack, 700n);
    const relayedBefore = stack.settle.relay.relayed;

    // The PSP claims another amount than the order's: illegal, never applied.
    expect((await postWebhook(stack, pspEvent(orderId, { amountMinor: 701n, token }))).status).toBe(
      200,
    );
    const deadLetter = await deadLetterOf(stack, orderId);
    expect(deadLetter.reason).toBe('NON_RETRYABLE');
    expect(deadLetter.last_error).toMatch(/charged 701 but the order is for 700/);
    expect(await relayedAfter(stack, relayedBefore)).toBe(relayedBefore + 1);
    expect(await orderState(stack, orderId)).toBe('EXECUTING');
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(0);
  });

  it("dead-letters a success that carries another order's PSP token, booking nothing", async () => {
    const a = await createOrder(stack, 800n);
    const b = await createOrder(stack, 800n);

    const answer = await postWebhook(
      stack,
      pspEvent(a.orderId, { amountMinor: 800n, token: b.token }),
    );
    expect(answer.status).toBe(200);
    const deadLetter = await deadLetterOf(stack, a.orderId);
    expect(deadLetter.reason).toBe('NON_RETRYABLE');
    expect(deadLetter.last_error).toMatch(/names another payment token than the order's/);
    // Neither token is quoted: the reason is logged, and a token opens its checkout page.
    expect(deadLetter.last_error).not.toContain(a.token);
    expect(deadLetter.last_error).not.toContain(b.token);
    expect(await orderState(stack, a.orderId)).toBe('EXECUTING');
    expect(await ledgerTransactions(stack, a.orderId)).toBe(0);
    expect(await orderState(stack, b.orderId)).toBe('EXECUTING');
  });

  it('dead-letters a second charge of a succeeded order (another PSP reference), booking it once', async () => {
    const { orderId, token } = await createOrder(stack, 550n);
    const first = pspEvent(orderId, { amountMinor: 550n, token, pspReference: 'psp_first' });
    expect((await postWebhook(stack, first)).status).toBe(200);
    expect(await orderState(stack, orderId)).toBe('SUCCEEDED');

    // The buyer paid twice: the PSP reports another charge of the same payment.
    const second = pspEvent(orderId, { amountMinor: 550n, token, pspReference: 'psp_second' });
    expect(await postWebhook(stack, second)).toEqual({
      status: 200,
      body: { received: true, duplicate: false },
    });
    const deadLetter = await deadLetterOf(stack, orderId);
    expect(deadLetter.reason).toBe('NON_RETRYABLE');
    expect(deadLetter.last_error).toBe(
      'SUCCEEDED + PspSucceeded: the PSP reports a second charge psp_second for an order ' +
        'already charged as psp_first',
    );
    const row = await stack.settle.db
      .selectFrom('payment_order')
      .select(['state', 'psp_reference'])
      .where('id', '=', orderId)
      .executeTakeFirstOrThrow();
    expect(row).toEqual({ state: 'SUCCEEDED', psp_reference: 'psp_first' });
    expect(await inboxRows(stack, orderId)).toBe(2);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
  });

  it('keeps a signed success in another currency: 200, then dead-lettered like another amount', async () => {
    const { orderId, token } = await createOrder(stack, 600n);

    const answer = await postWebhook(
      stack,
      pspEvent(orderId, { amountMinor: 600n, token, currency: 'EUR' }),
    );
    expect(answer).toEqual({ status: 200, body: { received: true, duplicate: false } });
    const deadLetter = await deadLetterOf(stack, orderId);
    expect(deadLetter.reason).toBe('NON_RETRYABLE');
    expect(deadLetter.last_error).toMatch(/charged in EUR but the order is in USD/);
    expect(await orderState(stack, orderId)).toBe('EXECUTING');
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(0);
  });
});

describe('an actor that does not answer within WEBHOOK_APPLY_WAIT_MS', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_APPLY_WAIT_MS: '200' } });
  });
  afterAll(async () => stack?.stop());

  it('lets the webhook go the durable way, and the order is booked once when the actor is free', async () => {
    const { orderId, token } = await createOrder(stack, 1_200n);
    const relayedBefore = stack.settle.relay.relayed;
    // Another transaction holds the order's row, so the actor's commit waits on it (as it would
    // behind a slow disk or a busy server) until the webhook has been answered.
    const other = openDatabase(stack.config.MYSQL_URL, { poolSize: 1 });
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    let holding: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (holding = resolve));
    const lock = other.db.transaction().execute(async (trx) => {
      await sql`SELECT id FROM payment_order WHERE id = ${orderId} FOR UPDATE`.execute(trx);
      holding();
      await released;
    });
    try {
      await held;
      expect(await postWebhook(stack, pspEvent(orderId, { amountMinor: 1_200n, token }))).toEqual({
        status: 200,
        body: { received: true, duplicate: false },
      });
      // Answered the durable way while the actor still waits: recorded, not yet applied.
      expect(await orderState(stack, orderId)).toBe('EXECUTING');
      expect(await inboxRows(stack, orderId)).toBe(1);
    } finally {
      release();
      await lock;
      await other.close();
    }
    await waitFor(async () =>
      (await orderState(stack, orderId)) === 'SUCCEEDED' ? true : undefined,
    );
    expect(await relayedAfter(stack, relayedBefore)).toBe(relayedBefore + 1);
    // The late transition and the command both reached the order: once every published command
    // is acknowledged, it is booked once, and the second arrival was a no-op, not a dead letter.
    await waitFor(async () => {
      const jsm = await jetstreamManager(stack.settle.nc);
      const { names } = stack.settle;
      const [stream, consumer] = await Promise.all([
        jsm.streams.info(names.commandStream),
        jsm.consumers.info(names.commandStream, names.runtimeConsumer),
      ]);
      return consumer.ack_floor.stream_seq >= stream.state.last_seq;
    });
    const deadLetters = await sql<{ n: string }>`
      SELECT COUNT(*) AS n FROM dead_letter WHERE order_id = ${orderId}`.execute(stack.settle.db);
    expect(Number(deadLetters.rows[0]?.n)).toBe(0);
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
    const metrics = await scrapeMetrics(stack.settleHttp);
    const answered = (way: string) =>
      metricSample(metrics, 'settle_webhook_seconds_count', { way }) ?? 0;
    expect([answered('applied'), answered('duplicate'), answered('queued')]).toEqual([0, 0, 1]);
  });
});

describe('an actor that commits after WEBHOOK_APPLY_WAIT_MS passed', () => {
  let stack: Stack;
  beforeAll(async () => {
    // Long enough for the actor to reach the wallet row on a loaded machine before the durable
    // way starts; the test holds the row for longer.
    stack = await startStack({ env: { WEBHOOK_APPLY_WAIT_MS: '500' } });
  });
  afterAll(async () => stack?.stop());

  /**
   * Statements of the stack's database waiting for a row lock, by their text. InnoDB refreshes
   * INNODB_TRX only when it was not read for 100 ms: poll slower than that.
   */
  async function waitingForLock(like: string): Promise<number> {
    return count(
      stack.settle.db,
      sql<{ n: string }>`
        SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX t
          JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
        WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE() AND t.trx_query LIKE ${like}`,
    );
  }

  /** /metrics' count of accepted webhooks by the way each took. */
  async function answeredByWay(): Promise<Record<string, number>> {
    const text = await scrapeMetrics(stack.settleHttp);
    return Object.fromEntries(
      ['applied', 'applied_late', 'queued', 'duplicate'].map((way) => [
        way,
        metricSample(text, 'settle_webhook_seconds_count', { way }) ?? 0,
      ]),
    );
  }

  /**
   * An order whose seller has a wallet row (a first order of the same seller paid it), for the
   * test to hold: the wallet is the last row the actor's transaction writes, so a held wallet
   * keeps the actor's inbox row written but uncommitted.
   */
  async function orderWithWallet(amountMinor: bigint): Promise<{ orderId: string; token: string }> {
    const first = await createOrder(stack, 300n);
    expect(
      await postWebhook(stack, pspEvent(first.orderId, { amountMinor: 300n, token: first.token })),
    ).toEqual({ status: 200, body: { received: true, duplicate: false } });
    return createOrder(stack, amountMinor);
  }

  /**
   * Posts `event` `deliveries` times while another transaction holds the seller's wallet row, so
   * that the first delivery's actor waits on it past WEBHOOK_APPLY_WAIT_MS (and any other
   * delivery's attempt waits in the mailbox behind it). Each delivery then takes the durable way,
   * whose INSERT of the event's inbox row waits on the row the actor wrote. Only once they all
   * wait is the wallet released: the actor commits late, and every durable way finds the row.
   * Answers the deliveries' answers, in order.
   */
  async function postWhileWalletHeld(
    event: ReturnType<typeof pspEvent>,
    deliveries: number,
  ): Promise<WebhookResponse[]> {
    const other = openDatabase(stack.config.MYSQL_URL, { poolSize: 1 });
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    let holding: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (holding = resolve));
    const lock = other.db.transaction().execute(async (trx) => {
      await sql`SELECT seller_id FROM wallet WHERE seller_id = 'seller-apply' FOR UPDATE`.execute(
        trx,
      );
      holding();
      await released;
    });
    const answers: Promise<WebhookResponse>[] = [];
    try {
      await held;
      for (let delivery = 1; delivery <= deliveries; delivery += 1) {
        const answer = postWebhook(stack, event);
        // Awaited below; a failure before that must not surface as an unhandled rejection.
        answer.catch(() => undefined);
        answers.push(answer);
        // One after another: deliveries recorded together would share one batch, whose single
        // INSERT waits for them all and fails them all on the lock wait timeout.
        await waitFor(
          async () =>
            (await waitingForLock('INSERT INTO wallet %')) === 1 &&
            (await waitingForLock(`insert into \`inbox\` %'${event.id}'%`)) === delivery,
          {
            intervalMs: 250,
            what: `the actor and ${delivery} durable way(s) to wait on row locks`,
          },
        );
      }
    } finally {
      release();
      await lock;
      await other.close();
    }
    return Promise.all(answers);
  }

  it('answers the delivery that applied the event late as applied, and a repeat as a duplicate', async () => {
    const { orderId, token } = await orderWithWallet(1_300n);
    const commandsBefore = await commandsWritten(stack);
    const before = await answeredByWay();
    const event = pspEvent(orderId, { amountMinor: 1_300n, token });

    expect(await postWhileWalletHeld(event, 1)).toEqual([
      { status: 200, body: { received: true, duplicate: false } },
    ]);
    expect(await orderState(stack, orderId)).toBe('SUCCEEDED');
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
    // The durable way found the row, so it wrote no command.
    expect(await commandsWritten(stack)).toEqual(commandsBefore);
    expect(await answeredByWay()).toEqual({
      ...before,
      applied_late: (before.applied_late ?? 0) + 1,
    });

    // The same event again: its own fast attempt stores nothing, so it is a duplicate.
    expect(await postWebhook(stack, event)).toEqual({
      status: 200,
      body: { received: true, duplicate: true },
    });
    expect(await answeredByWay()).toEqual({
      ...before,
      applied_late: (before.applied_late ?? 0) + 1,
      duplicate: (before.duplicate ?? 0) + 1,
    });
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
    await expectMoneyInvariants(stack.settle.db);
  });

  it('answers a repeat whose own attempt was late too as a duplicate', async () => {
    const { orderId, token } = await orderWithWallet(1_400n);
    const before = await answeredByWay();
    const event = pspEvent(orderId, { amountMinor: 1_400n, token });

    // A second delivery while the first is held up: its attempt waits in the mailbox behind the
    // first's, past its wait as well, and then finds the order already moved.
    expect(await postWhileWalletHeld(event, 2)).toEqual([
      { status: 200, body: { received: true, duplicate: false } },
      { status: 200, body: { received: true, duplicate: true } },
    ]);
    expect(await answeredByWay()).toEqual({
      ...before,
      applied_late: (before.applied_late ?? 0) + 1,
      duplicate: (before.duplicate ?? 0) + 1,
    });
    expect(await orderState(stack, orderId)).toBe('SUCCEEDED');
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
    await expectMoneyInvariants(stack.settle.db);
  });
});

describe('with WEBHOOK_APPLY_WAIT_MS=0', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ env: { WEBHOOK_APPLY_WAIT_MS: '0' } });
  });
  afterAll(async () => stack?.stop());

  it('every webhook goes the durable way: inbox + outbox command, applied by the consumer', async () => {
    const { orderId, token } = await createOrder(stack, 900n);
    const relayedBefore = stack.settle.relay.relayed;

    expect((await postWebhook(stack, pspEvent(orderId, { amountMinor: 900n, token }))).status).toBe(
      200,
    );
    await waitFor(async () =>
      (await orderState(stack, orderId)) === 'SUCCEEDED' ? true : undefined,
    );
    expect(await relayedAfter(stack, relayedBefore)).toBe(relayedBefore + 1);
    expect(await inboxRows(stack, orderId)).toBe(1);
    expect(await ledgerTransactions(stack, orderId)).toBe(1);
  });
});
