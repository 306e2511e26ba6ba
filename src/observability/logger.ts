/**
 * Structured JSON logs (pino). Secrets and card data are redacted by key wherever they appear,
 * and card-like digit runs are masked in messages, so a log line can be shared safely.
 */
import {
  pino,
  stdSerializers,
  type DestinationStream,
  type Logger,
  type LevelWithSilent,
} from 'pino';

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
  'psp-signature',
  // The admin panel's session cookie is as good as the token for 12 hours.
  'cookie',
  'set-cookie',
];

export const REDACT_PATHS = REDACTED_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`]);

/** Masks runs of 12-19 digits (card numbers) in free text, keeping the last four. */
export function maskCardNumbers(text: string): string {
  return text.replace(/\b(\d[ -]?){8,15}(\d{4})\b/g, (_match, _d, last4: string) => `****${last4}`);
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
      formatters: { level: (label) => ({ level: label }) },
      hooks: {
        logMethod(args, method) {
          const masked = args.map((arg) => (typeof arg === 'string' ? maskCardNumbers(arg) : arg));
          method.apply(this, masked as Parameters<typeof method>);
        },
      },
      serializers: {
        err: stdSerializers.err,
      },
    },
    destination,
  );
}
