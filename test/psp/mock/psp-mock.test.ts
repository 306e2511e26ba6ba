/**
 * Goal: the PSP mock behaves like the PSP Settle expects: idempotent registration, a hosted page
 * that charges at most once per payment, signed webhooks that are retried and can be resent, the
 * cancel rules, and the behaviour knobs.
 * Method: one mock started in-process on ephemeral ports with its own MariaDB database (dropped
 * afterwards), driven end to end through the generated gRPC client and real HTTP requests to the
 * hosted page; webhooks go to a local HTTP receiver that verifies every signature. The mock's own
 * tables are read directly to check charges and the outbox. Waits poll with a deadline.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client, credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../../src/storage/db.js';
import {
  PaymentStatus,
  type PspServiceClient,
  type RegisterPaymentResponse,
} from '../../../src/grpc/generated/settle/psp/v1/psp.js';
import { startPspMock, type PspMock } from '../../../src/psp/mock/index.js';
import type { PspDatabase } from '../../../src/psp/mock/schema.js';
import {
  PSP_SIGNATURE_HEADER,
  pspWebhookEventSchema,
  verifyWebhook,
  type PspWebhookEvent,
} from '../../../src/psp/webhook.js';
import {
  dropDatabase,
  grpcError,
  postCard,
  pspApi,
  startWebhookReceiver,
  testConfig,
  unary,
  uniqueDatabaseUrl,
  uniqueNonce,
  waitFor,
  type ReceivedWebhook,
  type WebhookReceiver,
} from '../psp-support.js';

const SUCCESS_CARD = '4242424242424242';
const DECLINE_CARD = '4000000000000002';
/** A valid card that is not a test card: its outcome follows success_rate. */
const OTHER_CARD = '5555555555554444';
const config = testConfig();
const ATTEMPTS_MAX = 4;

const execFileAsync = promisify(execFile);

let mysqlUrl: string;
let mock: PspMock;
let api: PspServiceClient;
let receiver: WebhookReceiver;
let db: Kysely<PspDatabase>;
let closeDb: () => Promise<void>;
/** Every group-commit batch the mock ended, by what it writes. */
const batches: Array<{ name: string; size: number; ok: boolean }> = [];

beforeAll(async () => {
  mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
  // /fail-once answers 500 to its first delivery, /always-500 to every one.
  receiver = await startWebhookReceiver((path, previous) => {
    if (path.startsWith('/fail-once')) return previous === 0 ? 500 : 200;
    if (path.startsWith('/always-500')) return 500;
    return 204;
  });
  mock = await startPspMock({
    config,
    grpcPort: 0,
    httpPort: 0,
    mysqlUrl,
    webhook: { backoffMsInitial: 100, backoffMsMax: 200, attemptsMax: ATTEMPTS_MAX },
    onBatch: (name, { size, ok }) => batches.push({ name, size, ok }),
  });
  api = pspApi(mock.grpcPort);
  const opened = openDatabase<PspDatabase>(mysqlUrl, { poolSize: 2 });
  db = opened.db;
  closeDb = opened.close;
});

afterAll(async () => {
  api?.close();
  await closeDb?.();
  await mock?.stop();
  await receiver?.close();
  if (mysqlUrl !== undefined) await dropDatabase(mysqlUrl);
});

function register(
  nonce: string,
  amountMinor = 1999n,
  path = '/hooks',
  currencyCode = 'USD',
): Promise<RegisterPaymentResponse> {
  return unary(api.registerPayment.bind(api), {
    nonce,
    amountMinor,
    currencyCode,
    notificationUrl: `${receiver.url}${path}`,
  });
}

function getStatus(nonce: string) {
  return unary(api.getPaymentStatus.bind(api), { nonce });
}

function verified(webhook: ReceivedWebhook): PspWebhookEvent {
  const header = webhook.headers[PSP_SIGNATURE_HEADER.toLowerCase()];
  expect(typeof header).toBe('string');
  const verdict = verifyWebhook({
    secret: config.PSP_WEBHOOK_SECRET,
    rawBody: webhook.bytes,
    header: header as string,
    nowS: Math.floor(Date.now() / 1000),
    toleranceS: config.PSP_WEBHOOK_TOLERANCE_S,
  });
  expect(verdict).toEqual({ ok: true });
  expect(webhook.headers['content-type']).toBe('application/json');
  return pspWebhookEventSchema.parse(JSON.parse(webhook.rawBody));
}

async function chargesOf(nonce: string) {
  return (await unary(api.listCharges.bind(api), { nonce })).charges;
}

describe('the PSP mock database', () => {
  it('holds only its own psp_ tables', async () => {
    const tables = await db.introspection.getTables();
    const names = tables.map((table) => table.name).filter((name) => !name.startsWith('psp_'));
    expect(names).toEqual([]);
    expect(tables.map((table) => table.name)).toEqual(
      expect.arrayContaining(['psp_payment', 'psp_charge', 'psp_webhook']),
    );
  });
});

describe('RegisterPayment', () => {
  it('returns the same token and checkout URL for the same nonce', async () => {
    const nonce = uniqueNonce();
    const first = await register(nonce);
    const second = await register(nonce);
    expect(first.token).toMatch(/^tok_[a-z2-7]{24}$/);
    expect(first.checkoutUrl).toBe(`${mock.publicUrl}/pay/${first.token}`);
    expect(second).toEqual(first);
    const row = await getStatus(nonce);
    expect(row.status).toBe(PaymentStatus.PAYMENT_STATUS_REGISTERED);
    expect(row.amountMinor).toBe(1999n);
  });

  it('fails with ALREADY_EXISTS for a known nonce with another amount or currency', async () => {
    const nonce = uniqueNonce();
    await register(nonce, 1999n);
    const error = await grpcError(register(nonce, 2000n));
    expect(error.code).toBe(status.ALREADY_EXISTS);
    expect(error.details).toContain(nonce);
  });

  it.each([
    ['nonce', '', 1999n, 'USD', ''],
    ['nonce', 'x'.repeat(65), 1999n, 'USD', ''],
    ['nonce', 'has space', 1999n, 'USD', ''],
    ['amount_minor', 'ok', 0n, 'USD', ''],
    ['amount_minor', 'ok', 1_000_000_000_001n, 'USD', ''],
    ['currency_code', 'ok', 1999n, 'EUR', ''],
    ['notification_url', 'ok', 1999n, 'USD', 'ftp://example.com/x'],
    ['notification_url', 'ok', 1999n, 'USD', 'not a url'],
  ])('fails with INVALID_ARGUMENT naming %s', async (field, nonce, amountMinor, currency, url) => {
    const error = await grpcError(
      unary(api.registerPayment.bind(api), {
        nonce: nonce === 'ok' ? uniqueNonce() : nonce,
        amountMinor,
        currencyCode: currency,
        notificationUrl: url,
      }),
    );
    expect(error.code).toBe(status.INVALID_ARGUMENT);
    expect(error.details.startsWith(`${field}:`)).toBe(true);
    expect(error.details).not.toMatch(/\bat \w+ \(/); // no stack trace
  });

  it('uses Settle’s webhook endpoint when no notification_url is given', async () => {
    const nonce = uniqueNonce();
    await unary(api.registerPayment.bind(api), {
      nonce,
      amountMinor: 5n,
      currencyCode: 'USD',
      notificationUrl: '',
    });
    const row = await db
      .selectFrom('psp_payment')
      .select('notification_url')
      .where('nonce', '=', nonce)
      .executeTakeFirstOrThrow();
    expect(row.notification_url).toBe('http://127.0.0.1:8080/webhooks/psp');
  });
});

describe('registrations and decisions that arrive together (group commit)', () => {
  const BURST = 40;

  it('registers a burst, each with its own token, and answers a repeat inside it like a repeat', async () => {
    const nonces = Array.from({ length: BURST }, () => uniqueNonce());
    const repeated = nonces[0]!;
    const results = await Promise.allSettled([
      ...nonces.map((nonce) => register(nonce, 500n)),
      register(repeated, 500n),
      register(repeated, 501n),
    ]);
    const tokens = results.slice(0, BURST + 1).map((result) => {
      if (result.status === 'rejected') throw result.reason;
      return result.value.token;
    });
    // One token per nonce; the repeat got the token of its nonce.
    expect(new Set(tokens.slice(0, BURST)).size).toBe(BURST);
    expect(tokens[BURST]).toBe(tokens[0]);
    const mismatch = results[BURST + 1]!;
    expect(mismatch.status).toBe('rejected');
    expect((mismatch as PromiseRejectedResult).reason.code).toBe(status.ALREADY_EXISTS);
    const rows = await db
      .selectFrom('psp_payment')
      .select(['nonce', 'token', 'status'])
      .where('nonce', 'in', nonces)
      .execute();
    expect(rows).toHaveLength(BURST);
    for (const row of rows) {
      expect(row.token).toBe(tokens[nonces.indexOf(row.nonce)]);
      expect(row.status).toBe('REGISTERED');
    }
  });

  it('decides each payment of a racing burst once: one charge, one webhook row, one delivery', async () => {
    const nonces = Array.from({ length: BURST }, () => uniqueNonce());
    const registered = await Promise.all(
      nonces.map((nonce) => register(nonce, 700n, `/burst/${nonce}`)),
    );
    // Every payment is paid three times at once, so most batches hold a payment twice.
    const paid = await Promise.all(
      registered.flatMap(({ token }) =>
        [0, 1, 2].map(() => unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD })),
      ),
    );
    expect(paid.every((result) => result.status === PaymentStatus.PAYMENT_STATUS_SUCCEEDED)).toBe(
      true,
    );
    const charges = await db
      .selectFrom('psp_charge')
      .select(['nonce', 'psp_reference'])
      .where('nonce', 'in', nonces)
      .execute();
    expect(charges.map((charge) => charge.nonce).sort()).toEqual([...nonces].sort());
    for (const [index, nonce] of nonces.entries()) {
      const answers = paid.slice(index * 3, index * 3 + 3).map((result) => result.pspReference);
      const charge = charges.find((row) => row.nonce === nonce)!;
      expect(answers).toEqual([charge.psp_reference, charge.psp_reference, charge.psp_reference]);
    }
    const delivered = await waitFor(
      async () => {
        const rows = await db
          .selectFrom('psp_webhook')
          .selectAll()
          .where('nonce', 'in', nonces)
          .execute();
        return rows.length === BURST && rows.every((row) => row.delivered_at !== null) && rows;
      },
      { what: 'every webhook delivered' },
    );
    // Delivered through the in-memory hand-over: the first attempt, no retry.
    expect(delivered.every((row) => row.attempts === 1)).toBe(true);
    for (const nonce of nonces) expect(receiver.at(`/burst/${nonce}`)).toHaveLength(1);
  });

  it('auto-pays a burst of registrations once each', async () => {
    await unary(api.setBehavior.bind(api), { autoPayCard: SUCCESS_CARD });
    const nonces = Array.from({ length: BURST }, () => uniqueNonce());
    batches.length = 0;
    try {
      await Promise.all(nonces.map((nonce) => register(nonce, 900n, `/auto/${nonce}`)));
      await waitFor(() => nonces.every((nonce) => receiver.at(`/auto/${nonce}`).length === 1), {
        what: 'one webhook per auto-paid payment',
      });
    } finally {
      await unary(api.setBehavior.bind(api), { autoPayCard: '' });
    }
    const charges = await db
      .selectFrom('psp_charge')
      .select(['nonce', 'psp_reference'])
      .where('nonce', 'in', nonces)
      .execute();
    expect(charges.map((charge) => charge.nonce).sort()).toEqual([...nonces].sort());
    // Each payment row got its own decision (ids of batched inserts were matched right).
    const payments = await db
      .selectFrom('psp_payment')
      .select(['nonce', 'status', 'psp_reference'])
      .where('nonce', 'in', nonces)
      .execute();
    for (const payment of payments) {
      expect(payment.status).toBe('SUCCEEDED');
      expect(payment.psp_reference).toBe(
        charges.find((charge) => charge.nonce === payment.nonce)!.psp_reference,
      );
    }
    for (const nonce of nonces) {
      expect(verified(receiver.at(`/auto/${nonce}`)[0]!).data.nonce).toBe(nonce);
    }
    // The burst went out in batches that committed whole: a batch that failed would have been
    // retried unit by unit, and the rows above would look the same.
    for (const name of ['psp registrations', 'psp decisions']) {
      expect(
        batches.some((batch) => batch.name === name && batch.size > 1 && batch.ok),
        `a batch of ${name} with more than one unit that committed`,
      ).toBe(true);
    }
  });
});

describe('GROUP_COMMIT_MAX=1', () => {
  it('turns the group commit off: every registration and decision is written alone', async () => {
    const seen: Array<{ name: string; size: number; ok: boolean }> = [];
    const alone = await startPspMock({
      config: testConfig({ GROUP_COMMIT_MAX: '1' }),
      grpcPort: 0,
      httpPort: 0,
      mysqlUrl,
      onBatch: (name, { size, ok }) => seen.push({ name, size, ok }),
    });
    const aloneApi = pspApi(alone.grpcPort);
    try {
      const registered = await Promise.all(
        Array.from({ length: 20 }, () =>
          unary(aloneApi.registerPayment.bind(aloneApi), {
            nonce: uniqueNonce(),
            amountMinor: 300n,
            currencyCode: 'USD',
            notificationUrl: `${receiver.url}/alone`,
          }),
        ),
      );
      await Promise.all(
        registered.map(({ token }) =>
          unary(aloneApi.payWithCard.bind(aloneApi), { token, cardNumber: SUCCESS_CARD }),
        ),
      );
    } finally {
      aloneApi.close();
      await alone.stop();
    }
    for (const name of ['psp registrations', 'psp decisions']) {
      expect(seen.filter((batch) => batch.name === name && batch.ok)).toHaveLength(20);
    }
    expect(seen.every((batch) => batch.size === 1)).toBe(true);
  });
});

describe('GetPaymentStatus', () => {
  it('fails with NOT_FOUND for an unknown nonce', async () => {
    const error = await grpcError(getStatus(uniqueNonce('unknown')));
    expect(error.code).toBe(status.NOT_FOUND);
  });

  it('reads a stored payment in a currency other than USD as stored, and refuses to charge it', async () => {
    // The mock registers only in USD, but its table holds whatever was written to it (a newer
    // mock sharing the database, a hand-written row). Before, the read asserted USD and every
    // call that read the row answered INTERNAL.
    const nonce = uniqueNonce();
    const { token, checkoutUrl } = await register(nonce, 2500n);
    await db
      .updateTable('psp_payment')
      .set({ currency: 'EUR' })
      .where('nonce', '=', nonce)
      .execute();

    expect(await getStatus(nonce)).toMatchObject({
      nonce,
      token,
      status: PaymentStatus.PAYMENT_STATUS_REGISTERED,
      amountMinor: 2500n,
      currencyCode: 'EUR',
    });
    const repeat = await grpcError(register(nonce, 2500n));
    expect(repeat.code).toBe(status.ALREADY_EXISTS);
    expect(repeat.details).toContain('2500 EUR, not 2500 USD');
    // The hosted page shows it, and its form says why it cannot be paid.
    const page = await fetch(checkoutUrl, { signal: AbortSignal.timeout(5_000) });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('25.00 EUR');
    const posted = await postCard(checkoutUrl, SUCCESS_CARD);
    expect(posted.status).toBe(409);
    expect(posted.html).toContain('is in EUR, which this mock does not charge');
    expect(posted.html).not.toContain('<form');
    const paid = await grpcError(
      unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD }),
    );
    expect(paid.code).toBe(status.FAILED_PRECONDITION);
    expect(paid.details).toBe(
      `payment '${nonce}' is in EUR, which this mock does not charge (it charges in USD); ` +
        'cancel it instead',
    );
    expect(await chargesOf(nonce)).toEqual([]);
    expect((await getStatus(nonce)).status).toBe(PaymentStatus.PAYMENT_STATUS_REGISTERED);
    expect(await unary(api.cancelPayment.bind(api), { nonce })).toEqual({
      status: PaymentStatus.PAYMENT_STATUS_CANCELLED,
    });
  });
});

describe('the hosted page', () => {
  it('answers /healthz', async () => {
    const response = await fetch(`${mock.publicUrl}/healthz`);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('ok');
  });

  it('shows the amount, the nonce and a form posting card_number', async () => {
    const nonce = uniqueNonce();
    const { checkoutUrl, token } = await register(nonce, 123_456_789n);
    const response = await fetch(checkoutUrl);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const html = await response.text();
    expect(html).toContain('<form method="post" action="/pay/' + token + '">');
    expect(html).toContain('name="card_number"');
    expect(html).toMatch(/<button type="submit">/);
    expect(html).toContain('$1234567.89');
    expect(html).toContain(nonce);
  });

  it('answers 404 for an unknown token, a malformed token and an unknown path', async () => {
    for (const path of ['/pay/tok_aaaaaaaaaaaaaaaaaaaaaaaa', '/pay/../../etc', '/pay/x', '/nope']) {
      const response = await fetch(`${mock.publicUrl}${path}`);
      expect(response.status, path).toBe(404);
      expect(await response.text()).toContain('Payment not found');
    }
    const post = await postCard(`${mock.publicUrl}/pay/tok_aaaaaaaaaaaaaaaaaaaaaaaa`, SUCCESS_CARD);
    expect(post.status).toBe(404);
  });

  it('answers 400 to a request target no URL can be made of, and keeps serving', async () => {
    const { port } = new URL(mock.publicUrl);
    for (const target of ['///', '//[/', '//%/']) {
      const head = await rawGet(Number(port), target);
      expect(head, target).toMatch(/^HTTP\/1\.1 400 /);
    }
    expect((await fetch(`${mock.publicUrl}/healthz`)).status).toBe(200);
  });

  it('charges 4242… once, sends one signed payment.succeeded webhook, and shows the result', async () => {
    const nonce = uniqueNonce();
    const path = `/hooks/${nonce}`;
    const { checkoutUrl, token } = await register(nonce, 1999n, path);

    const paid = await postCard(checkoutUrl, '4242 4242 4242 4242');
    expect(paid.status).toBe(200);
    expect(paid.html).toContain('Payment succeeded');

    const row = await getStatus(nonce);
    expect(row.status).toBe(PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    expect(row.pspReference).toMatch(/^psp_[a-z2-7]{24}$/);
    expect(row.declineCode).toBe('');

    const charges = await chargesOf(nonce);
    expect(charges).toHaveLength(1);
    expect(charges[0]).toMatchObject({
      pspReference: row.pspReference,
      nonce,
      amountMinor: 1999n,
      currencyCode: 'USD',
    });

    const [webhook] = await waitFor(() => receiver.at(path).length === 1 && receiver.at(path), {
      what: 'the webhook',
    });
    const event = verified(webhook!);
    expect(event.id).toMatch(/^evt_[a-z2-7]{24}$/);
    expect(event).toMatchObject({
      type: 'payment.succeeded',
      data: {
        nonce,
        token,
        psp_reference: row.pspReference,
        amount_minor: 1999n,
        currency: 'USD',
        decline_code: null,
      },
    });
    expect(JSON.parse(webhook!.rawBody).data.amount_minor).toBe('1999');

    // The page now shows the result instead of the form.
    const page = await (await fetch(checkoutUrl)).text();
    expect(page).toContain('Payment succeeded');
    expect(page).not.toContain('name="card_number"');
  });

  it('does not charge twice: a second POST shows the first result', async () => {
    const nonce = uniqueNonce();
    const path = `/hooks/${nonce}`;
    const { checkoutUrl } = await register(nonce, 700n, path);
    expect((await postCard(checkoutUrl, SUCCESS_CARD)).status).toBe(200);
    const again = await postCard(checkoutUrl, DECLINE_CARD);
    expect(again.status).toBe(200);
    expect(again.html).toContain('Payment succeeded');
    expect(await chargesOf(nonce)).toHaveLength(1);
    await waitFor(() => receiver.at(path).length === 1, { what: 'the webhook' });
    const rows = await db
      .selectFrom('psp_webhook')
      .selectAll()
      .where('nonce', '=', nonce)
      .execute();
    expect(rows).toHaveLength(1);
  });

  it('decides once when several POSTs race', async () => {
    const nonce = uniqueNonce();
    const { checkoutUrl } = await register(nonce, 800n, `/hooks/${nonce}`);
    const results = await Promise.all(
      Array.from({ length: 8 }, () => postCard(checkoutUrl, SUCCESS_CARD)),
    );
    expect(results.map((result) => result.status)).toEqual(Array(8).fill(200));
    expect(await chargesOf(nonce)).toHaveLength(1);
    const rows = await db
      .selectFrom('psp_webhook')
      .selectAll()
      .where('nonce', '=', nonce)
      .execute();
    expect(rows).toHaveLength(1);
  });

  it('declines 4000…0002 with card_declined: a declined webhook and no charge', async () => {
    const nonce = uniqueNonce();
    const path = `/hooks/${nonce}`;
    const { checkoutUrl } = await register(nonce, 1500n, path);
    const declined = await postCard(checkoutUrl, DECLINE_CARD);
    expect(declined.status).toBe(200);
    expect(declined.html).toContain('Payment declined');
    expect(declined.html).toContain('card_declined');

    const row = await getStatus(nonce);
    expect(row.status).toBe(PaymentStatus.PAYMENT_STATUS_DECLINED);
    expect(row.declineCode).toBe('card_declined');
    expect(row.pspReference).toBe('');
    expect(await chargesOf(nonce)).toHaveLength(0);

    const [webhook] = await waitFor(() => receiver.at(path).length === 1 && receiver.at(path));
    expect(verified(webhook!)).toMatchObject({
      type: 'payment.declined',
      data: { nonce, psp_reference: null, decline_code: 'card_declined', amount_minor: 1500n },
    });
  });

  it.each([
    ['fails the Luhn check', '4242424242424241'],
    ['is too short', '42424242'],
    ['is not digits', '4242-abcd-4242-4242'],
    ['is empty', ''],
  ])(
    'answers 400 with a message when the card number %s, and does not decide',
    async (_n, card) => {
      const nonce = uniqueNonce();
      const { checkoutUrl } = await register(nonce);
      const result = await postCard(checkoutUrl, card);
      expect(result.status).toBe(400);
      expect(result.html).toContain('The card number');
      expect(result.html).toContain('name="card_number"');
      expect((await getStatus(nonce)).status).toBe(PaymentStatus.PAYMENT_STATUS_REGISTERED);
    },
  );

  it('answers 413 for a form larger than 4 KiB and 415 for another content type', async () => {
    const { checkoutUrl } = await register(uniqueNonce());
    const large = await fetch(checkoutUrl, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `card_number=${SUCCESS_CARD}&padding=${'x'.repeat(5_000)}`,
    });
    expect(large.status).toBe(413);
    const json = await fetch(checkoutUrl, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ card_number: SUCCESS_CARD }),
    });
    expect(json.status).toBe(415);
  });

  it('follows success_rate for cards other than the test cards', async () => {
    try {
      mock.setBehavior({ successRate: 0 });
      const declined = await register(uniqueNonce());
      expect((await postCard(declined.checkoutUrl, OTHER_CARD)).html).toContain('Payment declined');
      mock.setBehavior({ successRate: 1 });
      const approved = await register(uniqueNonce());
      expect((await postCard(approved.checkoutUrl, OTHER_CARD)).html).toContain(
        'Payment succeeded',
      );
    } finally {
      mock.setBehavior({ successRate: config.PSP_SUCCESS_RATE });
    }
  });
});

/** The status line of a GET sent byte for byte (fetch would normalise the target). */
async function rawGet(port: number, target: string): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  socket.setTimeout(5_000, () => socket.destroy(new Error(`no answer to GET ${target}`)));
  socket.end(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
  let answer = '';
  for await (const chunk of socket) answer += String(chunk);
  return answer.split('\r\n')[0] ?? '';
}

describe('PayWithCard', () => {
  it('pays exactly like the hosted page and fails with NOT_FOUND / INVALID_ARGUMENT', async () => {
    const nonce = uniqueNonce();
    const { token } = await register(nonce, 42n, `/hooks/${nonce}`);
    const paid = await unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD });
    expect(paid.status).toBe(PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    const again = await unary(api.payWithCard.bind(api), { token, cardNumber: DECLINE_CARD });
    expect(again).toEqual(paid);
    expect(await chargesOf(nonce)).toHaveLength(1);

    const unknown = await grpcError(
      unary(api.payWithCard.bind(api), {
        token: 'tok_aaaaaaaaaaaaaaaaaaaaaaaa',
        cardNumber: SUCCESS_CARD,
      }),
    );
    expect(unknown.code).toBe(status.NOT_FOUND);
    const other = await register(uniqueNonce());
    const bad = await grpcError(
      unary(api.payWithCard.bind(api), { token: other.token, cardNumber: '1234' }),
    );
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.details).toMatch(/^card_number: /);
    const empty = await grpcError(
      unary(api.payWithCard.bind(api), { token: '', cardNumber: SUCCESS_CARD }),
    );
    expect(empty.code).toBe(status.INVALID_ARGUMENT);
    expect(empty.details).toBe('token: is required');
  });
});

describe('ListCharges', () => {
  it('lists a stored charge in a currency other than USD as it is stored', async () => {
    // The mock only charges in USD, but its table holds whatever was written to it (a newer mock
    // sharing the database, a hand-written row for a settlement case); ListCharges is how a
    // tester looks at it. Before, the read asserted USD and the call answered INTERNAL.
    const nonce = uniqueNonce();
    const pspReference = `psp_eur_${nonce}`.slice(0, 64);
    const createdAt = new Date('2026-01-02T03:04:05.678Z');
    await db
      .insertInto('psp_charge')
      .values({
        psp_reference: pspReference,
        nonce,
        amount_minor: 2500n,
        currency: 'EUR',
        created_at: createdAt,
      })
      .execute();
    expect(await chargesOf(nonce)).toEqual([
      { pspReference, nonce, amountMinor: 2500n, currencyCode: 'EUR', createTime: createdAt },
    ]);
  });

  it('answers more charges than fit in a request message', async () => {
    // Requests are bounded at 64 KiB; answers are not as small: the chaos run lists every
    // charge it made (thousands) in one call. 1,500 charges are about 116 KB.
    const nonce = uniqueNonce();
    const rows = Array.from({ length: 1_500 }, (_, index) => ({
      psp_reference: `psp_many_${index}_${nonce}`.slice(0, 64),
      nonce,
      amount_minor: BigInt(index + 1),
      currency: 'USD',
      created_at: new Date('2026-01-02T03:04:05.678Z'),
    }));
    await db.insertInto('psp_charge').values(rows).execute();
    const charges = await chargesOf(nonce);
    expect(charges).toHaveLength(1_500);
    expect(charges.reduce((sum, charge) => sum + charge.amountMinor, 0n)).toBe(1_125_750n);
  });
});

describe('webhook delivery', () => {
  it('retries after a 500 and delivers the same event', async () => {
    const nonce = uniqueNonce();
    const path = `/fail-once/${nonce}`;
    const { token } = await register(nonce, 300n, path);
    await unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD });
    const deliveries = await waitFor(() => receiver.at(path).length === 2 && receiver.at(path), {
      what: 'two delivery attempts',
    });
    const [first, second] = deliveries.map(verified);
    expect(second!.id).toBe(first!.id);
    const row = await waitFor(async () => {
      const found = await db
        .selectFrom('psp_webhook')
        .selectAll()
        .where('nonce', '=', nonce)
        .executeTakeFirstOrThrow();
      return found.delivered_at !== null && found;
    });
    expect(row.attempts).toBe(2);
    expect(row.last_error).toBeNull();
    // The retry waited for the backoff.
    expect(deliveries[1]!.receivedAtMs - deliveries[0]!.receivedAtMs).toBeGreaterThanOrEqual(90);
  });

  it('gives up after the attempts run out and records why', async () => {
    const nonce = uniqueNonce();
    const path = `/always-500/${nonce}`;
    const { token } = await register(nonce, 301n, path);
    await unary(api.payWithCard.bind(api), { token, cardNumber: DECLINE_CARD });
    const row = await waitFor(
      async () => {
        const found = await db
          .selectFrom('psp_webhook')
          .selectAll()
          .where('nonce', '=', nonce)
          .executeTakeFirstOrThrow();
        return found.given_up_at !== null && found;
      },
      { what: 'the delivery to be given up' },
    );
    expect(row.attempts).toBe(ATTEMPTS_MAX);
    expect(row.delivered_at).toBeNull();
    expect(row.last_error).toBe('HTTP 500');
    expect(receiver.at(path)).toHaveLength(ATTEMPTS_MAX);
  });

  it('ResendWebhook sends the latest event again with the same id as a new delivery', async () => {
    const nonce = uniqueNonce();
    const path = `/hooks/${nonce}`;
    const { token } = await register(nonce, 302n, path);
    await unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD });
    const [original] = await waitFor(() => receiver.at(path).length === 1 && receiver.at(path));
    const originalEvent = verified(original!);

    const { eventId } = await unary(api.resendWebhook.bind(api), { nonce });
    expect(eventId).toBe(originalEvent.id);
    const deliveries = await waitFor(() => receiver.at(path).length === 2 && receiver.at(path));
    const resent = verified(deliveries[1]!);
    expect(resent.id).toBe(originalEvent.id);
    expect(deliveries[1]!.rawBody).toBe(original!.rawBody);
    const rows = await db
      .selectFrom('psp_webhook')
      .select(['event_id', 'delivery'])
      .where('nonce', '=', nonce)
      .orderBy('id')
      .execute();
    expect(rows).toEqual([
      { event_id: eventId, delivery: 1 },
      { event_id: eventId, delivery: 2 },
    ]);
  });

  it('ResendWebhook fails with NOT_FOUND for an unknown nonce and FAILED_PRECONDITION before a decision', async () => {
    expect(
      (await grpcError(unary(api.resendWebhook.bind(api), { nonce: uniqueNonce() }))).code,
    ).toBe(status.NOT_FOUND);
    const nonce = uniqueNonce();
    await register(nonce);
    const error = await grpcError(unary(api.resendWebhook.bind(api), { nonce }));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toContain('no webhook event');
  });
});

describe('CancelPayment', () => {
  it('cancels a registered payment, is a no-op the second time, and the page can no longer pay', async () => {
    const nonce = uniqueNonce();
    const { checkoutUrl, token } = await register(nonce);
    const first = await unary(api.cancelPayment.bind(api), { nonce });
    expect(first.status).toBe(PaymentStatus.PAYMENT_STATUS_CANCELLED);
    const second = await unary(api.cancelPayment.bind(api), { nonce });
    expect(second.status).toBe(PaymentStatus.PAYMENT_STATUS_CANCELLED);

    const page = await (await fetch(checkoutUrl)).text();
    expect(page).toContain('Payment cancelled');
    const post = await postCard(checkoutUrl, SUCCESS_CARD);
    expect(post.status).toBe(409);
    expect(post.html).toContain('Payment cancelled');
    // A bad card number must not bring the form back for a payment that can no longer be paid.
    const badCard = await postCard(checkoutUrl, '12');
    expect(badCard.status).toBe(409);
    expect(badCard.html).toContain('Payment cancelled');
    expect(badCard.html).not.toContain('<button');
    const pay = await grpcError(
      unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD }),
    );
    expect(pay.code).toBe(status.FAILED_PRECONDITION);
    expect(await chargesOf(nonce)).toHaveLength(0);
  });

  it('fails with FAILED_PRECONDITION for a decided payment and NOT_FOUND for an unknown one', async () => {
    const nonce = uniqueNonce();
    const { token } = await register(nonce, 303n, `/hooks/${nonce}`);
    await unary(api.payWithCard.bind(api), { token, cardNumber: SUCCESS_CARD });
    const error = await grpcError(unary(api.cancelPayment.bind(api), { nonce }));
    expect(error.code).toBe(status.FAILED_PRECONDITION);
    expect(error.details).toBe(`payment '${nonce}' is already SUCCEEDED and cannot be cancelled`);
    expect((await getStatus(nonce)).status).toBe(PaymentStatus.PAYMENT_STATUS_SUCCEEDED);

    const unknown = await grpcError(unary(api.cancelPayment.bind(api), { nonce: uniqueNonce() }));
    expect(unknown.code).toBe(status.NOT_FOUND);
  });
});

describe('request bytes that are not a request message', () => {
  it('are refused with INVALID_ARGUMENT naming the method, on merchant and driver methods alike', async () => {
    // A length-delimited field 1 whose length runs past the end of the message.
    const truncated = Buffer.from([0x0a, 0x05, 0x61]);
    const raw = new Client(`127.0.0.1:${mock.grpcPort}`, credentials.createInsecure());
    try {
      for (const method of ['RegisterPayment', 'SetBehavior']) {
        const path = `/settle.psp.v1.PspService/${method}`;
        const error = await new Promise<ServiceError>((resolve, reject) => {
          raw.makeUnaryRequest(
            path,
            (bytes: Buffer) => bytes,
            (bytes: Buffer) => bytes,
            truncated,
            new Metadata(),
            { deadline: Date.now() + 5_000 },
            (failure) => (failure ? resolve(failure) : reject(new Error(`${method} answered OK`))),
          );
        });
        expect(error.code, method).toBe(status.INVALID_ARGUMENT);
        expect(error.details).toMatch(
          new RegExp(
            `^request: the bytes sent are not a protobuf message of ${path}'s request type`,
          ),
        );
      }
    } finally {
      raw.close();
    }
    // The mock goes on serving well-formed calls.
    expect((await register(uniqueNonce())).token).toMatch(/^tok_/);
  });
});

describe('SetBehavior', () => {
  it('injects UNAVAILABLE faults into the merchant API but not into the test drivers', async () => {
    const nonce = uniqueNonce();
    await register(nonce);
    try {
      await unary(api.setBehavior.bind(api), { errorRate: 1 });
      const error = await grpcError(register(uniqueNonce()));
      expect(error.code).toBe(status.UNAVAILABLE);
      expect(error.details).toBe('injected fault');
      expect((await grpcError(getStatus(nonce))).code).toBe(status.UNAVAILABLE);
      await unary(api.listCharges.bind(api), { nonce });
    } finally {
      await unary(api.setBehavior.bind(api), { errorRate: 0 });
    }
    expect((await getStatus(nonce)).status).toBe(PaymentStatus.PAYMENT_STATUS_REGISTERED);
  });

  it('fails the next N registrations, then registers again', async () => {
    await unary(api.setBehavior.bind(api), { failNextRegistrations: 2 });
    const nonce = uniqueNonce();
    expect((await grpcError(register(nonce))).code).toBe(status.UNAVAILABLE);
    expect((await grpcError(register(nonce))).code).toBe(status.UNAVAILABLE);
    expect((await register(nonce)).token).toMatch(/^tok_/);
    expect(mock.behavior().failNextRegistrations).toBe(0);
  });

  it('keeps unset fields and rejects bad values with INVALID_ARGUMENT naming the field', async () => {
    const before = mock.behavior();
    await unary(api.setBehavior.bind(api), { latencyMs: 0 });
    expect(mock.behavior()).toEqual(before);
    for (const [request, field] of [
      [{ successRate: 2 }, 'success_rate'],
      [{ errorRate: -0.1 }, 'error_rate'],
      [{ latencyMs: 60_001 }, 'latency_ms'],
      [{ failNextRegistrations: -1 }, 'fail_next_registrations'],
      [{ autoPayCard: '1234' }, 'auto_pay_card'],
    ] as const) {
      const error = await grpcError(unary(api.setBehavior.bind(api), request));
      expect(error.code).toBe(status.INVALID_ARGUMENT);
      expect(error.details.startsWith(`${field}:`)).toBe(true);
    }
    expect(mock.behavior()).toEqual(before);
  });

  it('adds latency to merchant calls', async () => {
    await unary(api.setBehavior.bind(api), { latencyMs: 200 });
    try {
      const started = Date.now();
      await register(uniqueNonce());
      expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    } finally {
      await unary(api.setBehavior.bind(api), { latencyMs: 0 });
    }
  });

  it('auto-pays new registrations with auto_pay_card, and stops when it is cleared', async () => {
    await unary(api.setBehavior.bind(api), { autoPayCard: SUCCESS_CARD });
    const nonce = uniqueNonce();
    const path = `/hooks/${nonce}`;
    try {
      await register(nonce, 999n, path);
      await waitFor(
        async () => (await getStatus(nonce)).status === PaymentStatus.PAYMENT_STATUS_SUCCEEDED,
        { what: 'the auto-payment' },
      );
      const [webhook] = await waitFor(() => receiver.at(path).length === 1 && receiver.at(path));
      expect(verified(webhook!).type).toBe('payment.succeeded');
    } finally {
      await unary(api.setBehavior.bind(api), { autoPayCard: '' });
    }
    expect(mock.behavior().autoPayCard).toBeUndefined();
    const later = uniqueNonce();
    await register(later);
    expect((await getStatus(later)).status).toBe(PaymentStatus.PAYMENT_STATUS_REGISTERED);
  });
});

describe('reflection', () => {
  it('lets buf curl (as grpcurl would) list the PSP service and call it by name', async () => {
    const buf = fileURLToPath(new URL('../../../node_modules/.bin/buf', import.meta.url));
    const base = `http://127.0.0.1:${mock.grpcPort}`;
    const flags = ['curl', '--protocol', 'grpc', '--http2-prior-knowledge'];
    const { stdout: listed } = await execFileAsync(buf, [...flags, '--list-methods', base], {
      timeout: 10_000,
    });
    expect(listed).toContain('settle.psp.v1.PspService/GenerateSettlementFile');
    expect(listed).toContain('settle.psp.v1.PspService/RegisterPayment');
    // The request is encoded from the reflected schema; the answer is the mock's own NOT_FOUND.
    const failed = await execFileAsync(
      buf,
      [
        ...flags,
        '-d',
        '{"nonce":"ord_unknown"}',
        `${base}/settle.psp.v1.PspService/GetPaymentStatus`,
      ],
      { timeout: 10_000 },
    ).then(
      () => undefined,
      (error: unknown) => error as { stdout: string; stderr: string },
    );
    // buf curl prints a failed call's status as JSON on stderr and exits non-zero.
    expect(JSON.parse(failed?.stderr ?? '{}')).toMatchObject({ code: 'not_found' });
  });
});
