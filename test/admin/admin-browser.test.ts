/**
 * Goal: the admin panel works in a real browser with no build step: an operator logs in, finds a
 * payment, reads its orders' timelines (transitions, PSP results, webhooks), and replays a dead
 * letter through the button — the browser's confirm dialog guards it (dismissing it changes
 * nothing), and the replay lands in admin_audit under the operator's name. Method: headless
 * Chromium (Debian package `chromium`) driven by playwright-core with a fresh profile, against a
 * real stack (PSP mock + Settle on MariaDB and NATS); payments are paid on the PSP's hosted page;
 * a dead letter is produced by making the PSP mock fail every registration. With
 * SETTLE_UPDATE_SCREENSHOTS=1 the main pages are saved to docs/screenshots/ for the README.
 */
import { mkdtemp, mkdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CARD,
  expectMoneyInvariants,
  payOnHostedPage,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { ADMIN_TOKEN, auditRows, createPayment, deadLetteredPayment } from './admin-support.js';

const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT_DIR = path.resolve(import.meta.dirname, '../../docs/screenshots');
const SCREENSHOT_BYTES_MAX = 300 * 1024;

let stack: Stack;
let browser: BrowserContext;
let page: Page;
let profile: string;
let shots: string;

beforeAll(async () => {
  // A high breaker volume keeps the dead letter's three failed registrations from opening it.
  stack = await startStack({
    env: { ADMIN_TOKEN, RETRY_BACKOFF_MS: '100,100', PSP_BREAKER_VOLUME_THRESHOLD: '50' },
  });
  profile = await mkdtemp(path.join(os.tmpdir(), 'settle-chromium-'));
  shots =
    process.env.SETTLE_UPDATE_SCREENSHOTS === '1'
      ? SCREENSHOT_DIR
      : await mkdtemp(path.join(os.tmpdir(), 'settle-shots-'));
  await mkdir(shots, { recursive: true });
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1200, height: 800 },
    timeout: 30_000,
  });
  page = browser.pages()[0] ?? (await browser.newPage());
  page.setDefaultTimeout(10_000);
});

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
  if (profile !== undefined) await rm(profile, { recursive: true, force: true });
  if (shots !== undefined && shots !== SCREENSHOT_DIR)
    await rm(shots, { recursive: true, force: true });
});

/** The element's rendered text (the pages are server-rendered: loaded means complete). */
function text(locator: Locator): Promise<string> {
  return locator.innerText();
}

async function screenshot(name: string, height = 800): Promise<void> {
  const file = path.join(shots, `${name}.png`);
  await page.setViewportSize({ width: 1200, height });
  await page.screenshot({ path: file });
  await page.setViewportSize({ width: 1200, height: 800 });
  const { size } = await stat(file);
  expect(size).toBeGreaterThan(1_000);
  expect(size).toBeLessThan(SCREENSHOT_BYTES_MAX);
}

describe('admin panel in Chromium', () => {
  let paidPaymentId = '';

  it('logs in and lists payments', async () => {
    const paid = await createPayment(stack, 'buyer-browser', [
      ['seller-browser-a', 4200n],
      ['seller-browser-b', 1550n],
    ]);
    paidPaymentId = paid.paymentId;
    for (const [buyer, seller, amount] of [
      ['buyer-carol', 'seller-books', 1299n],
      ['buyer-dave', 'seller-garden', 8900n],
      ['buyer-erin', 'seller-books', 450n],
    ] as const) {
      await createPayment(stack, buyer, [[seller, amount]]);
    }
    expect((await payOnHostedPage(paid.orders[0]?.checkoutUrl ?? '', CARD.success)).status).toBe(
      200,
    );
    expect((await payOnHostedPage(paid.orders[1]?.checkoutUrl ?? '', CARD.decline)).status).toBe(
      200,
    );
    await waitFor(async () => {
      const row = await stack.settle.db
        .selectFrom('payment')
        .select('state')
        .where('id', '=', paid.paymentId)
        .executeTakeFirst();
      return row?.state === 'PARTIALLY_SUCCEEDED';
    });

    await page.goto(`${stack.settleHttp}/admin/payments`);
    expect(page.url()).toContain('/admin/login');
    await page.fill('input[name=actor]', 'Browser Bob');
    await page.fill('input[name=token]', ADMIN_TOKEN);
    await page.click('button[type=submit]');
    await page.waitForURL('**/admin/payments');
    expect(await text(page.locator('#payments'))).toContain(paid.paymentId);
    expect(await text(page.locator('header .who'))).toContain('Browser Bob');
    await screenshot('payments-list');
  });

  it("opens a real payment's page and shows every order's timeline", async () => {
    await page.click(`a[href="/admin/payments/${paidPaymentId}"]`);
    await page.waitForURL(`**/admin/payments/${paidPaymentId}`);
    expect(await text(page.locator('#payment-state'))).toContain('PARTIALLY_SUCCEEDED');
    const timelines = page.locator('.timeline');
    expect(await timelines.count()).toBe(2);
    const succeeded = timelines.nth(0);
    expect(await text(succeeded)).toContain('NOT_STARTED → EXECUTING on ExecuteOrder');
    expect(await text(succeeded)).toContain('PSP RegisterPayment succeeded');
    expect(await text(succeeded)).toContain('webhook received from psp');
    expect(await text(succeeded)).toContain('EXECUTING → SUCCEEDED on PspSucceeded');
    expect(await text(timelines.nth(1))).toContain('EXECUTING → FAILED on PspDeclined');
    expect(await text(page.locator('#diagnosis'))).toContain('failed: card_declined');
    expect(await text(page.locator('#ledger'))).toContain('seller_payable:seller-browser-a');
    expect(await text(page.locator('#wallets'))).toContain('42.00 USD');
    await screenshot('payment-detail', 1150);
  });

  it('replays a dead letter through the button after the confirm dialog, audited', async () => {
    const { orderId, deadLetterId } = await deadLetteredPayment(stack, 'buyer-browser-dlq');
    await page.goto(`${stack.settleHttp}/admin/operations`);
    expect(await text(page.locator('#breaker'))).toContain('CLOSED');
    expect(await text(page.locator('#dead-letters'))).toContain('Open');
    await screenshot('operations');

    await page.click('a[href="/admin/dead-letters"]');
    const row = page.locator(`tr[data-dead-letter="${deadLetterId}"]`);
    expect(await text(row)).toContain('RETRIES_EXHAUSTED');
    expect(await text(row)).toContain(orderId);
    await screenshot('dead-letters');

    await row.locator('a', { hasText: 'Replay' }).click();
    await page.waitForURL(`**/admin/dead-letters/${deadLetterId}/replay`);
    await page.fill('textarea[name=reason]', 'PSP outage over, replaying (INC-1234)');

    // Dismissing the browser's confirm dialog sends nothing.
    const dismissed = new Promise<string>((resolve) =>
      page.once('dialog', (dialog) => {
        resolve(dialog.message());
        void dialog.dismiss();
      }),
    );
    await page.click('#confirm-replay');
    expect(await dismissed).toBe(`Replay dead letter ${deadLetterId}?`);
    expect(page.url()).toContain(`/admin/dead-letters/${deadLetterId}/replay`);
    expect(await auditRows(stack, `dead-letter:${deadLetterId}`)).toEqual([]);

    page.once('dialog', (dialog) => void dialog.accept());
    await page.click('#confirm-replay');
    await page.waitForURL('**/admin/dead-letters?state=ALL&done=replayed*');
    expect(await text(page.locator('.flash'))).toContain(`Dead letter ${deadLetterId} replayed.`);
    expect(await text(page.locator(`tr[data-dead-letter="${deadLetterId}"]`))).toContain(
      'REPLAYED',
    );

    const audit = await auditRows(stack, `dead-letter:${deadLetterId}`);
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({
      actor: 'Browser Bob',
      action: 'REPLAY_DEAD_LETTER',
      reason: 'PSP outage over, replaying (INC-1234)',
      outcome: 'OK',
    });
    expect(JSON.parse(audit[0]?.detail ?? '{}')).toMatchObject({
      via: 'session',
      state: 'REPLAYED',
    });
    await waitFor(async () => {
      const order = await stack.settle.db
        .selectFrom('payment_order')
        .select('checkout_url')
        .where('id', '=', orderId)
        .executeTakeFirst();
      return typeof order?.checkout_url === 'string';
    });
    await expectMoneyInvariants(stack.settle.db);
  });
});
