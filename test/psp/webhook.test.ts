/**
 * Goal: the webhook signature accepts exactly the bytes the PSP signed within the tolerance, and
 * the event schema accepts the PSP's body and nothing malformed.
 * Method: pure unit tests of signWebhook/verifyWebhook/pspWebhookEventSchema with fixed clocks:
 * a valid signature, then each way a signature can be wrong (forged body, other bytes that decode
 * to the same text, wrong secret, stale, future, missing, malformed headers).
 */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  encodePspWebhookEvent,
  pspWebhookEventSchema,
  SIGNATURE_REJECTION,
  signWebhook,
  verifyWebhook,
} from '../../src/psp/webhook.js';

const secret = 'whsec_test_secret_0123456789';
const nowS = 1_800_000_000;
const toleranceS = 300;
const text = JSON.stringify({
  id: 'evt_abcdefghijklmnopqrstuvwx',
  type: 'payment.succeeded',
  created: nowS,
  data: {
    nonce: 'ord_01',
    token: 'tok_abcdefghijklmnopqrstuvwx',
    psp_reference: 'psp_abcdefghijklmnopqrstuvwx',
    amount_minor: '1999',
    currency: 'USD',
    decline_code: null,
  },
});
const body = Buffer.from(text);

function verify(header: string | undefined, rawBody = body, atS = nowS) {
  return verifyWebhook({ secret, rawBody, header, nowS: atS, toleranceS });
}

describe('signWebhook', () => {
  it('produces t=<seconds>,v1=<hex HMAC-SHA256 of "t.body">', () => {
    const expected = createHmac('sha256', secret).update(`${nowS}.${text}`).digest('hex');
    expect(signWebhook(secret, body, nowS)).toBe(`t=${nowS},v1=${expected}`);
  });
});

describe('verifyWebhook during a secret rotation (previousSecret)', () => {
  const previousSecret = 'whsec_previous_secret_987654';
  const during = (header: string) =>
    verifyWebhook({ secret, previousSecret, rawBody: body, header, nowS, toleranceS });

  it('accepts signatures made with either secret, alone or side by side', () => {
    expect(during(signWebhook(secret, body, nowS))).toEqual({ ok: true });
    expect(during(signWebhook(previousSecret, body, nowS))).toEqual({ ok: true });
    // A PSP that signs with both while it rotates sends two v1 signatures.
    const both = `${signWebhook(previousSecret, body, nowS)},v1=${signWebhook(secret, body, nowS).split('v1=')[1]}`;
    expect(during(both)).toEqual({ ok: true });
  });

  it('refuses any other secret, and the previous one once the rotation is over', () => {
    expect(during(signWebhook('whsec_someone_else_000000', body, nowS))).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.signatureMismatch,
    });
    expect(verify(signWebhook(previousSecret, body, nowS))).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.signatureMismatch,
    });
  });

  it('still refuses a stale timestamp signed with the previous secret', () => {
    expect(during(signWebhook(previousSecret, body, nowS - toleranceS - 1))).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.timestampOutOfTolerance,
    });
  });
});

describe('verifyWebhook', () => {
  it('accepts a signature made with the same secret within the tolerance', () => {
    expect(verify(signWebhook(secret, body, nowS))).toEqual({ ok: true });
    expect(verify(signWebhook(secret, body, nowS - toleranceS))).toEqual({ ok: true });
    expect(verify(signWebhook(secret, body, nowS + toleranceS))).toEqual({ ok: true });
  });

  it('rejects a forged body and a wrong secret', () => {
    const header = signWebhook(secret, body, nowS);
    const forged = Buffer.from(text.replace('"1999"', '"999999"'));
    expect(verify(header, forged)).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.signatureMismatch,
    });
    const wrongSecret = signWebhook('whsec_someone_else_000000', body, nowS);
    expect(verify(wrongSecret)).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.signatureMismatch,
    });
  });

  it('verifies the bytes received, not their decoding: a lone 0xFF is not the U+FFFD signed', () => {
    // Signed: the three bytes of U+FFFD (EF BF BD). Sent: one 0xFF byte, which a UTF-8 decoder
    // turns into U+FFFD, so a signature checked over the decoded text matched a body never signed.
    const signed = Buffer.from('{"note":"\uFFFD"}');
    const sent = Buffer.concat([Buffer.from('{"note":"'), Buffer.from([0xff]), Buffer.from('"}')]);
    expect(sent.toString('utf8')).toBe(signed.toString('utf8'));
    expect(verify(signWebhook(secret, signed, nowS), sent)).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.signatureMismatch,
    });
    expect(verify(signWebhook(secret, sent, nowS), sent)).toEqual({ ok: true });
  });

  it('rejects a stale timestamp and one from the future', () => {
    expect(verify(signWebhook(secret, body, nowS - toleranceS - 1))).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.timestampOutOfTolerance,
    });
    expect(verify(signWebhook(secret, body, nowS + toleranceS + 1))).toEqual({
      ok: false,
      reason: SIGNATURE_REJECTION.timestampOutOfTolerance,
    });
  });

  it('rejects a replayed signature once the tolerance has passed', () => {
    const header = signWebhook(secret, body, nowS);
    expect(verify(header, body, nowS + toleranceS + 1).ok).toBe(false);
  });

  it('rejects a missing header', () => {
    expect(verify(undefined)).toEqual({ ok: false, reason: SIGNATURE_REJECTION.missingHeader });
    expect(verify('  ')).toEqual({ ok: false, reason: SIGNATURE_REJECTION.missingHeader });
  });

  it.each([
    ['no v1', `t=${nowS}`],
    ['no t', `v1=${'a'.repeat(64)}`],
    ['non-numeric t', `t=abc,v1=${'a'.repeat(64)}`],
    ['short v1', `t=${nowS},v1=abc`],
    ['non-hex v1', `t=${nowS},v1=${'z'.repeat(64)}`],
    ['two t', `t=${nowS},t=${nowS},v1=${'a'.repeat(64)}`],
    ['no key', `${nowS}`],
    ['garbage', 'hello world'],
    ['too long', `t=${nowS},${`v0=${'a'.repeat(64)},`.repeat(20)}v1=${'a'.repeat(64)}`],
  ])('rejects a malformed header (%s)', (_name, header) => {
    expect(verify(header)).toEqual({ ok: false, reason: SIGNATURE_REJECTION.malformedHeader });
  });

  it('accepts a header with several v1 signatures when one matches (secret rotation)', () => {
    const good = signWebhook(secret, body, nowS).split(',v1=')[1] ?? '';
    expect(verify(`t=${nowS},v1=${'0'.repeat(64)},v1=${good}`)).toEqual({ ok: true });
  });
});

describe('pspWebhookEventSchema', () => {
  it('parses the PSP body, amount_minor as bigint, and round-trips through the encoder', () => {
    const event = pspWebhookEventSchema.parse(JSON.parse(text));
    expect(event.data.amount_minor).toBe(1999n);
    expect(event.type).toBe('payment.succeeded');
    expect(JSON.parse(encodePspWebhookEvent(event))).toEqual(JSON.parse(text));
  });

  it('parses a declined event', () => {
    const declined = JSON.parse(text) as { type: string; data: Record<string, unknown> };
    declined.type = 'payment.declined';
    declined.data.psp_reference = null;
    declined.data.decline_code = 'card_declined';
    const event = pspWebhookEventSchema.parse(declined);
    expect(event.data.decline_code).toBe('card_declined');
  });

  it.each([
    ['amount as a number', { amount_minor: 1999 }],
    ['a fractional amount', { amount_minor: '19.99' }],
    ['a zero amount', { amount_minor: '0' }],
    ['an amount above 10^12', { amount_minor: '1000000000001' }],
    ['a currency that is not an ISO 4217 code', { currency: 'usd' }],
    ['a currency name', { currency: 'DOLLARS' }],
    ['a succeeded event without psp_reference', { psp_reference: null }],
  ])('rejects %s', (_name, change) => {
    const parsed = JSON.parse(text) as { data: Record<string, unknown> };
    Object.assign(parsed.data, change);
    expect(pspWebhookEventSchema.safeParse(parsed).success).toBe(false);
  });

  it('parses a currency Settle does not take: the order refuses it, and keeps it for review', () => {
    const parsed = JSON.parse(text) as { data: Record<string, unknown> };
    parsed.data.currency = 'EUR';
    expect(pspWebhookEventSchema.parse(parsed).data.currency).toBe('EUR');
  });

  it('rejects an unknown event type', () => {
    const parsed = JSON.parse(text) as { type: string };
    parsed.type = 'payment.refunded';
    expect(pspWebhookEventSchema.safeParse(parsed).success).toBe(false);
  });
});
