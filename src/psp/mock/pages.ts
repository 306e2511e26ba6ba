/**
 * The hosted payment page's HTML. Pure functions from data to markup; every value that reaches
 * the markup goes through escapeHtml. Amounts are formatted from minor units with bigint math.
 */
import { assertNever } from '../../domain/errors.js';
import { formatMajor } from '../../domain/money.js';
import type { PspPayment } from './payment.repository.js';
import { PSP_PAYMENT_STATE } from './schema.js';

export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

/** "$19.99" for 1999n USD. */
export function formatAmount(amountMinor: bigint, currency: string): string {
  return currency === 'USD'
    ? `$${formatMajor(amountMinor)}`
    : `${formatMajor(amountMinor)} ${currency}`;
}

function layout(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · Settle PSP (mock)</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem; }
.amount { font-size: 2rem; font-weight: 600; margin: 0.5rem 0; }
.muted { color: #666; font-size: 0.9rem; }
.error { color: #b00020; }
label, input, button { display: block; width: 100%; box-sizing: border-box; margin-top: 0.5rem; }
input, button { padding: 0.6rem; font-size: 1rem; }
</style>
</head>
<body>
${body}
</body>
</html>
`;
}

function summary(payment: PspPayment): string {
  return `<p class="muted">Payment <code data-testid="nonce">${escapeHtml(payment.nonce)}</code></p>
<p class="amount" data-testid="amount">${escapeHtml(formatAmount(payment.amountMinor, payment.currency))}</p>`;
}

/** The form of a payment that is still REGISTERED; `error` is shown above it after a bad card. */
export function checkoutPage(payment: PspPayment, error?: string): string {
  const action = `/pay/${encodeURIComponent(payment.token)}`;
  const errorLine =
    error === undefined ? '' : `<p class="error" role="alert">${escapeHtml(error)}</p>\n`;
  return layout(
    'Pay',
    `<h1>Pay</h1>
${summary(payment)}
${errorLine}<form method="post" action="${escapeHtml(action)}">
<label for="card_number">Card number</label>
<input id="card_number" name="card_number" inputmode="numeric" autocomplete="cc-number" required maxlength="23" placeholder="4242 4242 4242 4242">
<button type="submit">Pay ${escapeHtml(formatAmount(payment.amountMinor, payment.currency))}</button>
</form>
<p class="muted">Test cards: 4242 4242 4242 4242 succeeds; 4000 0000 0000 0002 is declined.</p>`,
  );
}

/** The page of a payment that is no longer payable: paid, declined or cancelled. */
export function resultPage(payment: PspPayment): string {
  switch (payment.status) {
    case PSP_PAYMENT_STATE.succeeded:
      return layout(
        'Payment succeeded',
        `<h1 data-testid="result">Payment succeeded</h1>
${summary(payment)}
<p>Reference <code data-testid="psp-reference">${escapeHtml(payment.pspReference ?? '')}</code></p>`,
      );
    case PSP_PAYMENT_STATE.declined:
      return layout(
        'Payment declined',
        `<h1 data-testid="result">Payment declined</h1>
${summary(payment)}
<p>Decline code <code data-testid="decline-code">${escapeHtml(payment.declineCode ?? '')}</code></p>`,
      );
    case PSP_PAYMENT_STATE.cancelled:
      return layout(
        'Payment cancelled',
        `<h1 data-testid="result">Payment cancelled</h1>
${summary(payment)}
<p>The merchant cancelled this payment; it can no longer be paid.</p>`,
      );
    case PSP_PAYMENT_STATE.registered:
      return checkoutPage(payment);
    default:
      return assertNever(payment.status, 'psp payment status');
  }
}

/** A page with a heading and one message, for 404, 400, 413 and the like. */
export function messagePage(title: string, message: string): string {
  return layout(title, `<h1>${escapeHtml(title)}</h1>\n<p>${escapeHtml(message)}</p>`);
}
