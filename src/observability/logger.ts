/**
 * Structured JSON logs (pino). Secrets and card data are redacted by key wherever they appear,
 * and card-like digit runs are masked in messages, in string fields and in logged errors (an
 * error message or a rejected input can quote what a buyer typed), so a log line can be shared
 * safely.
 */
import {
  pino,
  stdSerializers,
  type DestinationStream,
  type Logger,
  type LevelWithSilent,
} from 'pino';
import { passesLuhn } from '../domain/luhn.js';

export type { Logger };

const REDACTED_KEYS = [
  'card_number',
  'cardNumber',
  'secret',
  'password',
  'authorization',
  'token',
  'PSP_WEBHOOK_SECRET',
  'PSP_WEBHOOK_SECRET_PREVIOUS',
  'ADMIN_TOKEN',
  'API_TOKENS',
  'psp-signature',
  // The admin panel's session cookie is as good as the token for 12 hours.
  'cookie',
  'set-cookie',
];

export const REDACT_PATHS = REDACTED_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`]);

/**
 * Masks card numbers in free text, keeping the last four: runs of 12-19 digits, optionally
 * grouped by spaces or hyphens, that pass the Luhn check (every card number does, and 9 in 10
 * other digit runs do not: amounts, timestamps) and are not the last group of a UUID (all digits
 * now and then: a request id is no card number).
 */
export function maskCardNumbers(text: string): string {
  return text.replace(
    /(?<!\b[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-)\b(?:\d[ -]?){11,18}\d\b/g,
    (match) => {
      const digits = match.replace(/[ -]/g, '');
      return passesLuhn(digits) ? `****${digits.slice(-4)}` : match;
    },
  );
}

/** Plain objects and arrays are walked this deep for strings to mask; deeper ones are left. */
const MASK_DEPTH_MAX = 6;

/** `value` with card-like digit runs masked in every string; the same object when none is. */
function maskDeep(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return maskCardNumbers(value);
  if (depth >= MASK_DEPTH_MAX || typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) {
    const masked = value.map((item) => maskDeep(item, depth + 1));
    return masked.some((item, i) => item !== value[i]) ? masked : value;
  }
  const prototype = Object.getPrototypeOf(value) as unknown;
  if (prototype !== Object.prototype && prototype !== null) return value;
  let masked: Record<string, unknown> | undefined;
  for (const [key, item] of Object.entries(value)) {
    const next = maskDeep(item, depth + 1);
    if (next !== item) {
      masked ??= { ...(value as Record<string, unknown>) };
      masked[key] = next;
    }
  }
  return masked ?? value;
}

/** pino's error serializer, with card-like digit runs masked in the message and stack. */
function serializeError(error: Error): unknown {
  // A fresh object of pino's (not a plain one, so maskDeep would leave it): masked in place.
  const serialized = stdSerializers.err(error) as unknown as Record<string, unknown>;
  for (const [key, value] of Object.entries(serialized)) {
    serialized[key] = maskDeep(value, 1);
  }
  return serialized;
}

export function createLogger(
  options: { level: LevelWithSilent; name: string },
  destination?: DestinationStream,
): Logger {
  return pino(
    {
      name: options.name,
      level: options.level,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: { service: options.name },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: (label) => ({ level: label }),
        log: (object) => maskDeep(object, 0) as Record<string, unknown>,
      },
      hooks: {
        logMethod(args, method) {
          const masked = args.map((arg) => (typeof arg === 'string' ? maskCardNumbers(arg) : arg));
          method.apply(this, masked as Parameters<typeof method>);
        },
      },
      serializers: {
        err: serializeError,
      },
    },
    destination,
  );
}
