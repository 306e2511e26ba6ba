/**
 * `npm run demo`: against running services (`npm start` in another terminal), create a payment for
 * two sellers, pay each order on the PSP's hosted page as a browser would (GET the page, POST the
 * form), stream the state changes, then print the ledger entries, the wallets and the trial
 * balance. Uses the published TypeScript client (src/client).
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { loadConfig } from '../src/config.js';
import { PspServiceClient } from '../src/grpc/generated/settle/psp/v1/psp.js';
import { formatMajor } from '../src/domain/money.js';
import {
  createSettleClient,
  PaymentOrderState,
  PaymentState,
  type Payment,
} from '../src/client/index.js';

const config = loadConfig(process.env);
const address = `${config.SETTLE_GRPC_ADDR.host}:${config.SETTLE_GRPC_ADDR.port}`;
/** AdminService needs the token when the server has one (the demo reads the same environment). */
const adminCall =
  config.ADMIN_TOKEN === undefined
    ? {}
    : { metadata: { authorization: `Bearer ${config.ADMIN_TOKEN}` } };
// The API's token too, when the node asks for one (API_TOKENS): the first that may create
// payments (scope write).
const settle = createSettleClient(address, {
  defaultTimeoutMs: 10_000,
  apiToken: config.API_TOKENS.find((entry) => entry.scope === 'write')?.token,
});
const card = process.env.DEMO_CARD ?? '4242424242424242';

const paymentState = (state: PaymentState) =>
  PaymentState[state]?.replace('PAYMENT_STATE_', '') ?? String(state);
const orderState = (state: PaymentOrderState) =>
  PaymentOrderState[state]?.replace('PAYMENT_ORDER_STATE_', '') ?? String(state);
const usd = (minor: bigint) => `$${formatMajor(minor)}`;
const line = (text = '') => process.stdout.write(`${text}\n`);

async function payOnHostedPage(checkoutUrl: string): Promise<string> {
  const page = await fetch(checkoutUrl, { signal: AbortSignal.timeout(5_000) });
  const html = await page.text();
  const action = /<form[^>]*action="([^"]+)"/i.exec(html)?.[1];
  if (page.status !== 200 || action === undefined)
    throw new Error(`hosted page ${checkoutUrl} answered ${page.status}`);
  const result = await fetch(new URL(action, checkoutUrl), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ card_number: card }).toString(),
    signal: AbortSignal.timeout(5_000),
  });
  const text = await result.text();
  const verdict = /<h1[^>]*>([^<]+)<\/h1>/i.exec(text)?.[1] ?? `HTTP ${result.status}`;
  return verdict.trim();
}

function describeOrders(payment: Payment): string {
  return payment.orders.map((o) => `${o.sellerId}=${orderState(o.state)}`).join(', ');
}

async function main(): Promise<void> {
  line(`Settle demo against ${address}`);
  const sellers = [
    `seller-alice-${randomUUID().slice(0, 4)}`,
    `seller-bob-${randomUUID().slice(0, 4)}`,
  ];
  const request = {
    requestId: randomUUID(),
    buyerId: 'buyer-demo',
    currencyCode: 'USD',
    orders: [
      { sellerId: sellers[0] ?? '', amountMinor: 2599n },
      { sellerId: sellers[1] ?? '', amountMinor: 1250n },
    ],
  };
  line(
    `\n1. CreatePayment (request_id ${request.requestId}): ${request.orders.map((o) => `${o.sellerId} ${usd(o.amountMinor)}`).join(', ')}`,
  );
  const created = await settle.payments.createPayment(request);
  const payment = created.payment;
  if (payment === undefined) throw new Error('CreatePayment returned no payment');
  line(`   payment ${payment.paymentId}: ${paymentState(payment.state)}`);
  for (const order of payment.orders) {
    line(
      `   order ${order.orderId} (${order.sellerId}, ${usd(order.amountMinor)}): ${orderState(order.state)} ${order.checkoutUrl || '(checkout URL not registered yet)'}`,
    );
  }
  const again = await settle.payments.createPayment(request);
  line(
    `   the same request again returns the same payment: ${again.payment?.paymentId === payment.paymentId ? 'yes' : 'NO'}`,
  );

  line('\n2. Watching the payment (WatchPayment stream):');
  const watched = (async () => {
    for await (const update of settle.payments.watchPayment(payment.paymentId, {
      timeoutMs: 60_000,
    })) {
      const p = update.payment;
      if (p) line(`   [watch] ${paymentState(p.state)}: ${describeOrders(p)}`);
    }
  })();

  let current = payment;
  for (let i = 0; i < 50 && current.orders.some((o) => o.checkoutUrl === ''); i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    current =
      (await settle.payments.getPayment({ paymentId: payment.paymentId })).payment ?? current;
  }
  line(
    `\n3. Paying each order on the PSP's hosted page with card ${card.slice(0, 4)}…${card.slice(-4)}:`,
  );
  for (const order of current.orders) {
    const verdict = await payOnHostedPage(order.checkoutUrl);
    line(`   ${order.sellerId}: GET ${order.checkoutUrl} → form POST → "${verdict}"`);
  }
  await watched;

  const final = (await settle.payments.getPayment({ paymentId: payment.paymentId })).payment;
  line(
    `\n4. Final state: ${final ? paymentState(final.state) : '?'} (${final ? describeOrders(final) : ''})`,
  );

  line('\n5. Ledger entries of this payment:');
  for (const order of final?.orders ?? []) {
    const { entries } = await settle.ledger.listEntries({
      orderId: order.orderId,
      pageSize: 0,
      pageToken: '',
      account: '',
    });
    for (const entry of entries) {
      const side =
        entry.debitMinor > 0n
          ? `debit  ${usd(entry.debitMinor)}`
          : `credit ${usd(entry.creditMinor)}`;
      line(`   ${entry.transactionId}  ${entry.account.padEnd(36)} ${side}  (${entry.kind})`);
    }
  }
  line('\n6. Wallets:');
  for (const sellerId of sellers) {
    try {
      const { wallet } = await settle.wallets.getWallet({ sellerId });
      line(`   ${sellerId}: ${usd(wallet?.balanceMinor ?? 0n)}`);
    } catch {
      line(`   ${sellerId}: no wallet (nothing credited)`);
    }
  }
  // The first page only: the totals on it cover the whole ledger whatever the page shows.
  const trial = await settle.ledger.getTrialBalance({ pageSize: 20 });
  line('\n7. Trial balance (debits - credits):');
  for (const account of trial.accounts)
    line(`   ${account.account.padEnd(40)} ${usd(account.balanceMinor)}`);
  if (trial.nextPageToken !== '') {
    line(`   … more accounts: npm run settle -- trial-balance --page-token ${trial.nextPageToken}`);
  }
  line(
    `   total: ${trial.totals.map((t) => `${t.currencyCode} ${usd(t.balanceMinor)}`).join(', ')} → ${trial.balanced ? 'balanced' : 'NOT BALANCED'}`,
  );
  await retryStep();
  settle.close();
}

/** The seed's "flow with retries": the PSP fails the first registrations of one order. */
async function retryStep(): Promise<void> {
  const pspAddress = `${config.PSP_GRPC_ADDR.host}:${config.PSP_GRPC_ADDR.port}`;
  const psp = new PspServiceClient(pspAddress, grpc.credentials.createInsecure());
  const failures = 2;
  line(
    `\n8. Flow with retries: the PSP mock fails the next ${failures} registrations (SetBehavior fail_next_registrations)`,
  );
  await new Promise<void>((resolve, reject) =>
    psp.setBehavior({ failNextRegistrations: failures }, (error) =>
      error ? reject(error) : resolve(),
    ),
  );
  const created = await settle.payments.createPayment({
    requestId: randomUUID(),
    buyerId: 'buyer-demo',
    currencyCode: 'USD',
    orders: [{ sellerId: `seller-carol-${randomUUID().slice(0, 4)}`, amountMinor: 999n }],
  });
  const paymentId = created.payment?.paymentId ?? '';
  const shown = new Set<string>();
  let previousMs: number | undefined;
  const deadline = Date.now() + 60_000;
  let registered = false;
  while (!registered && Date.now() < deadline) {
    const { entries } = await settle.admin.getPaymentTimeline({ paymentId }, adminCall);
    for (const entry of entries) {
      const key = `${entry.orderId}:${entry.version}`;
      if (shown.has(key)) continue;
      shown.add(key);
      const atMs = entry.createTime?.getTime() ?? Date.now();
      const gap =
        previousMs === undefined ? '' : ` (+${((atMs - previousMs) / 1000).toFixed(1)} s)`;
      previousMs = atMs;
      const detail = JSON.parse(entry.detail) as { reason?: string };
      const why = entry.eventType === 'PspRegistrationFailed' ? `: ${detail.reason ?? ''}` : '';
      line(
        `   ${entry.createTime?.toISOString().slice(11, 23) ?? ''}${gap} ${entry.fromState} → ${entry.toState} on ${entry.eventType}${why}`,
      );
      if (entry.eventType === 'PspRegistered') registered = true;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const { payment } = await settle.payments.getPayment({ paymentId });
  const order = payment?.orders[0];
  if (order?.checkoutUrl) {
    const verdict = await payOnHostedPage(order.checkoutUrl);
    line(`   retried ${failures} times with backoff, then registered; paid: "${verdict}"`);
    for await (const update of settle.payments.watchPayment(paymentId, { timeoutMs: 30_000 })) {
      if (update.payment && update.payment.state !== PaymentState.PAYMENT_STATE_EXECUTING) {
        line(`   final state: ${paymentState(update.payment.state)}`);
      }
    }
  } else {
    line('   the order did not register in time; see ListDeadLetters');
  }
  psp.close();
}

main().catch((error: unknown) => {
  const err = error as { code?: number; details?: string; message?: string };
  if (err.code === 14) {
    process.stderr.write(
      `demo: Settle is not reachable at ${address}; start it first with \`npm start\`\n`,
    );
  } else {
    process.stderr.write(`demo: ${err.details ?? err.message ?? String(error)}\n`);
  }
  settle.close();
  process.exit(1);
});
