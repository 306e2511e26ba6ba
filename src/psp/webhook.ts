/**
 * The PSP's webhook wire format and its signature, shared by the PSP mock (which signs) and
 * Settle's receiver (which verifies). The signature is Stripe's scheme: the header
 * `Psp-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + rawBody)>` binds the
 * exact bytes of the body to a timestamp, so a receiver must verify the raw body before parsing it
 * and must refuse timestamps outside its tolerance (replays). Both sides work on bytes, never on
 * decoded text: decoding maps different bytes to one string (a lone 0xFF and the three bytes of
 * U+FFFD both become U+FFFD), so a text signature would vouch for bytes nobody signed. Amounts
 * travel as decimal strings.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { ORDER_AMOUNT_MINOR_MAX } from '../domain/money.js';
import { PSP_VALUE_LENGTH_MAX, type PspValueField } from './value-limits.js';

/** The HTTP header that carries the signature. */
export const PSP_SIGNATURE_HEADER = 'Psp-Signature';

/** The longest signature header accepted; longer ones are refused before any parsing. */
const SIGNATURE_HEADER_LENGTH_MAX = 1_024;
/** A signature header may carry several v1 signatures (secret rotation); at most this many. */
const SIGNATURES_MAX = 4;
const HEX_SHA256 = /^[0-9a-f]{64}$/;
const UNIX_SECONDS = /^\d{1,12}$/;

/**
 * Signs a raw webhook body, the exact bytes that will be sent; returns the value of the
 * `Psp-Signature` header.
 */
export function signWebhook(secret: string, rawBody: Uint8Array, timestampS: number): string {
  if (!Number.isSafeInteger(timestampS) || timestampS < 0) {
    throw new Error(`timestampS must be a non-negative integer, got ${timestampS}`);
  }
  return `t=${timestampS},v1=${hmacHex(secret, timestampS, rawBody)}`;
}

/**
 * Why verifyWebhook refused a signature. The webhook route counts every one of them as its own
 * SIGNATURE_REJECTED (WEBHOOK_REJECTION in src/http/webhook.route.ts, a metric's labels) and
 * names this one in its answer.
 */
export const SIGNATURE_REJECTION = {
  missingHeader: 'missing signature header',
  malformedHeader: 'malformed signature header',
  timestampOutOfTolerance: 'timestamp outside tolerance',
  signatureMismatch: 'signature mismatch',
} as const;
export type SignatureRejection = (typeof SIGNATURE_REJECTION)[keyof typeof SIGNATURE_REJECTION];

export type WebhookVerification = { ok: true } | { ok: false; reason: SignatureRejection };

export type VerifyWebhookOptions = Readonly<{
  secret: string;
  /**
   * The secret being rotated out, accepted beside `secret` while the PSP still signs with it
   * (see PSP_WEBHOOK_SECRET_PREVIOUS); undefined outside a rotation.
   */
  previousSecret?: string | undefined;
  /** The body's bytes exactly as received, before any decoding or parsing. */
  rawBody: Uint8Array;
  /** The `Psp-Signature` header value; undefined when absent. */
  header: string | undefined;
  /** The receiver's clock, in unix seconds. */
  nowS: number;
  /** How far the signed timestamp may be from nowS, in seconds, in either direction. */
  toleranceS: number;
}>;

/**
 * Verifies a webhook signature in constant time. Refuses a missing or malformed header, a
 * timestamp older or newer than the tolerance, and a signature that matches neither the secret
 * nor, during a rotation, the previous one.
 */
export function verifyWebhook(options: VerifyWebhookOptions): WebhookVerification {
  const { header } = options;
  if (header === undefined || header.trim() === '') {
    return { ok: false, reason: SIGNATURE_REJECTION.missingHeader };
  }
  const parsed = parseSignatureHeader(header);
  if (parsed === undefined) return { ok: false, reason: SIGNATURE_REJECTION.malformedHeader };
  if (Math.abs(options.nowS - parsed.timestampS) > options.toleranceS) {
    return { ok: false, reason: SIGNATURE_REJECTION.timestampOutOfTolerance };
  }
  const secrets =
    options.previousSecret === undefined
      ? [options.secret]
      : [options.secret, options.previousSecret];
  const expected = secrets.map((secret) =>
    Buffer.from(hmacHex(secret, parsed.timestampS, options.rawBody), 'hex'),
  );
  // Every candidate is compared with every secret, so the time taken does not depend on which
  // one matched.
  let matched = false;
  for (const signature of parsed.signatures) {
    const candidate = Buffer.from(signature, 'hex');
    for (const bytes of expected) {
      if (timingSafeEqual(bytes, candidate)) matched = true;
    }
  }
  return matched ? { ok: true } : { ok: false, reason: SIGNATURE_REJECTION.signatureMismatch };
}

type ParsedSignatureHeader = { timestampS: number; signatures: string[] };

function parseSignatureHeader(header: string): ParsedSignatureHeader | undefined {
  if (header.length > SIGNATURE_HEADER_LENGTH_MAX) return undefined;
  let timestampS: number | undefined;
  const signatures: string[] = [];
  for (const part of header.split(',')) {
    const index = part.indexOf('=');
    if (index <= 0) return undefined;
    const key = part.slice(0, index).trim();
    const value = part.slice(index + 1).trim();
    if (key === 't') {
      if (timestampS !== undefined || !UNIX_SECONDS.test(value)) return undefined;
      timestampS = Number(value);
    } else if (key === 'v1') {
      if (!HEX_SHA256.test(value)) return undefined;
      signatures.push(value);
    }
    // Other schemes (v0, future versions) are ignored, as Stripe's receivers do.
  }
  if (timestampS === undefined || signatures.length === 0 || signatures.length > SIGNATURES_MAX) {
    return undefined;
  }
  return { timestampS, signatures };
}

function hmacHex(secret: string, timestampS: number, rawBody: Uint8Array): string {
  return createHmac('sha256', secret)
    .update(`${timestampS}.`, 'utf8')
    .update(rawBody)
    .digest('hex');
}

/** The kinds of events the PSP sends. */
export const PSP_WEBHOOK_EVENT_TYPE = {
  paymentSucceeded: 'payment.succeeded',
  paymentDeclined: 'payment.declined',
} as const;
export type PspWebhookEventType =
  (typeof PSP_WEBHOOK_EVENT_TYPE)[keyof typeof PSP_WEBHOOK_EVENT_TYPE];

const EVENT_TYPES: ReadonlySet<string> = new Set(Object.values(PSP_WEBHOOK_EVENT_TYPE));

/**
 * The `type` of a signed body whose type Settle does not handle (one the PSP added, say
 * `payment.refunded`); undefined when the body has a type Settle knows, or none that is a string.
 */
export function unhandledEventType(body: unknown): string | undefined {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return undefined;
  const type = (body as { type?: unknown }).type;
  return typeof type === 'string' && !EVENT_TYPES.has(type) ? type : undefined;
}

const shortText = z.string().min(1).max(64);
/** A value Settle stores: at most its column's length (value-limits.ts), as the client checks. */
const storedText = (field: PspValueField) => z.string().min(1).max(PSP_VALUE_LENGTH_MAX[field]);

/** Minor units as a decimal string ("1999"), 1..10^12, parsed to bigint. */
const amountMinorString = z
  .string()
  .regex(/^[1-9]\d{0,12}$/, 'must be a positive integer in minor units, as a decimal string')
  .transform((value) => BigInt(value))
  .refine((value) => value <= ORDER_AMOUNT_MINOR_MAX, 'must be at most 10^12');

/**
 * A currency as the PSP names it: any ISO 4217 code, not only those Settle takes. A signed event
 * in another currency than its order's is a fact to keep for an operator (the order refuses it
 * and it is dead-lettered, as another amount is), not a malformed body to answer 400.
 */
const currencyCode = z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 currency code');

/**
 * A webhook body. Unknown fields are ignored (the PSP may add some); a succeeded event carries a
 * psp_reference, a declined one a decline_code.
 */
export const pspWebhookEventSchema = z
  .object({
    id: shortText,
    type: z.enum([PSP_WEBHOOK_EVENT_TYPE.paymentSucceeded, PSP_WEBHOOK_EVENT_TYPE.paymentDeclined]),
    /** When the event happened, in unix seconds. */
    created: z.number().int().nonnegative(),
    data: z.object({
      nonce: shortText,
      // As long as payment_order.psp_token and the client's check (128), not shortText's 64: a
      // PSP whose tokens Settle stores must not see its webhooks for them refused.
      token: storedText('token'),
      psp_reference: storedText('pspReference').nullable(),
      amount_minor: amountMinorString,
      currency: currencyCode,
      decline_code: storedText('declineCode').nullable(),
    }),
  })
  .superRefine((event, context) => {
    if (
      event.type === PSP_WEBHOOK_EVENT_TYPE.paymentSucceeded &&
      event.data.psp_reference === null
    ) {
      context.addIssue({
        code: 'custom',
        path: ['data', 'psp_reference'],
        message: 'is required for payment.succeeded',
      });
    }
    if (event.type === PSP_WEBHOOK_EVENT_TYPE.paymentDeclined && event.data.decline_code === null) {
      context.addIssue({
        code: 'custom',
        path: ['data', 'decline_code'],
        message: 'is required for payment.declined',
      });
    }
  });

/** A parsed webhook body: amount_minor is a bigint. */
export type PspWebhookEvent = z.output<typeof pspWebhookEventSchema>;

/** Serialises an event to its wire form (amount_minor as a decimal string). */
export function encodePspWebhookEvent(event: PspWebhookEvent): string {
  return JSON.stringify({
    id: event.id,
    type: event.type,
    created: event.created,
    data: {
      nonce: event.data.nonce,
      token: event.data.token,
      psp_reference: event.data.psp_reference,
      amount_minor: event.data.amount_minor.toString(),
      currency: event.data.currency,
      decline_code: event.data.decline_code,
    },
  });
}
