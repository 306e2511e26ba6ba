/**
 * Goal: log lines never carry secrets or card numbers: keys such as card_number, token, secret,
 * authorization, cookie and ADMIN_TOKEN are redacted at any of the first three levels, and card-like
 * digit runs in messages are masked to their last four digits. Method: a real pino logger from
 * createLogger writing into an in-memory destination; every line is parsed as JSON and searched
 * for the raw values.
 */
import { describe, expect, it } from 'vitest';
import { createLogger, maskCardNumbers } from '../../src/observability/logger.js';

function capture() {
  const lines: string[] = [];
  const logger = createLogger(
    { level: 'info', name: 'settle' },
    { write: (line) => lines.push(line) },
  );
  return { logger, lines, text: () => lines.join('') };
}

const CARD = '4242424242424242';
const TOKEN = 'admin-token-that-must-not-leak-1234';
const SECRET = 'whsec_do_not_log_me_9876';

describe('log redaction', () => {
  it('redacts secret keys at the top level and nested, in objects and in request headers', () => {
    const { logger, lines, text } = capture();
    logger.info(
      {
        card_number: CARD,
        cardNumber: CARD,
        ADMIN_TOKEN: TOKEN,
        PSP_WEBHOOK_SECRET: SECRET,
        token: TOKEN,
        request: { headers: { authorization: `Bearer ${TOKEN}`, cookie: `settle_admin=${TOKEN}` } },
        config: { secret: SECRET, password: SECRET },
        response: { 'set-cookie': `settle_admin=${TOKEN}` },
      },
      'an event with secrets',
    );
    expect(lines).toHaveLength(1);
    const parsed = JSON.parse(lines[0] ?? '{}');
    expect(parsed.card_number).toBe('[redacted]');
    expect(parsed.request.headers.authorization).toBe('[redacted]');
    expect(parsed.request.headers.cookie).toBe('[redacted]');
    expect(parsed.config.secret).toBe('[redacted]');
    expect(parsed.response['set-cookie']).toBe('[redacted]');
    expect(text()).not.toContain(CARD);
    expect(text()).not.toContain(TOKEN);
    expect(text()).not.toContain(SECRET);
  });

  it('masks card numbers in messages, keeping the last four digits', () => {
    const { logger, text } = capture();
    logger.warn(`PSP said card ${CARD} and 4000 0000 0000 0002 were used`);
    expect(text()).not.toContain(CARD);
    expect(text()).not.toContain('4000 0000 0000 0002');
    expect(text()).toContain('****4242');
    expect(text()).toContain('****0002');
    expect(maskCardNumbers('order 12345 of 3 items')).toBe('order 12345 of 3 items');
  });
});

describe('card numbers outside the message', () => {
  it('masks them in string fields and in a logged error, at any depth', () => {
    const { logger, lines, text } = capture();
    logger.warn(
      {
        err: new Error(`PSP refused card ${CARD}`),
        reason: `INVALID_ARGUMENT: description: 4000-0000-0000-0002 is not allowed`,
        request: { body: { note: `pay with ${CARD}`, tags: [`card ${CARD}`] } },
      },
      'a rejected request',
    );
    expect(lines).toHaveLength(1);
    expect(text()).not.toContain(CARD);
    expect(text()).not.toContain('4000-0000-0000-0002');
    const parsed = JSON.parse(lines[0] ?? '{}');
    expect(parsed.err.message).toBe('PSP refused card ****4242');
    expect(parsed.reason).toContain('****0002');
    expect(parsed.request.body.note).toBe('pay with ****4242');
  });

  it('leaves request ids and amounts that only look like card numbers', () => {
    // A UUID whose last group is all digits (about 1 in 280 random ones), and digit runs of card
    // length that fail the Luhn check: an amount in minor units, a timestamp in ms.
    const requestId = '5a85b48a-7a4f-41b3-a39e-123456789015'; // its last group passes Luhn
    expect(maskCardNumbers(`request ${requestId}`)).toBe(`request ${requestId}`);
    expect(maskCardNumbers('amount 100000000001 minor units')).toBe(
      'amount 100000000001 minor units',
    );
    expect(maskCardNumbers('at 1764214541233')).toBe('at 1764214541233');
    // A card number is masked wherever it stands, hyphenated or not.
    expect(maskCardNumbers(`card-${CARD}`)).toBe('card-****4242');
    expect(maskCardNumbers(`face-${CARD}`)).toBe('face-****4242');
    const { logger, lines } = capture();
    logger.info({ requestId, amountMinor: '100000000001' }, 'fine');
    expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({ requestId, amountMinor: '100000000001' });
  });

  it('keeps ids, numbers and booleans as they are', () => {
    const { logger, lines } = capture();
    logger.info({ orderId: 'ord_abc', amountMinor: 4242424242424242, ok: true }, 'fine');
    expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({
      orderId: 'ord_abc',
      amountMinor: 4242424242424242,
      ok: true,
    });
  });
});
