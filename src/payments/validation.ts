/**
 * Validation of CreatePayment input. Field names in messages are the proto names
 * (`orders[1].amount_minor`) so a caller knows exactly what to fix.
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { InvalidArgumentError } from '../domain/errors.js';
import { PARTY_ID_PATTERN } from '../domain/ids.js';
import { isCurrencyCode, ORDER_AMOUNT_MINOR_MAX, type CurrencyCode } from '../domain/money.js';

export const ORDERS_PER_PAYMENT_MAX = 50;
/** What an amount out of range is told, here and by the REST twin before it parses one. */
export const AMOUNT_NOT_POSITIVE = 'amount_minor must be greater than 0 (minor units, e.g. cents)';
export const AMOUNT_TOO_LARGE = `amount_minor must be at most ${ORDER_AMOUNT_MINOR_MAX}`;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const partyId = (what: string) =>
  z
    .string()
    .min(1, { error: `${what} is required`, abort: true })
    .regex(
      PARTY_ID_PATTERN,
      `${what} must be 1-64 characters of letters, digits and _.:@- (no spaces)`,
    );

const createPaymentSchema = z
  .object({
    request_id: z
      .string()
      .min(1, {
        error: 'request_id is required (a UUID chosen by the caller, the idempotency key)',
        abort: true,
      })
      .regex(UUID, 'request_id must be a UUID such as 2f1e4b9c-0d8a-4c1e-9b3f-6a7d5e8c9f01'),
    buyer_id: partyId('buyer_id'),
    currency_code: z
      .string()
      .min(1, { error: 'currency_code is required', abort: true })
      .refine(isCurrencyCode, {
        error: (issue) =>
          `currency '${String(issue.input).slice(0, 16)}' is not supported; only USD is accepted`,
      }),
    orders: z
      .array(
        z.object({
          seller_id: partyId('seller_id'),
          amount_minor: z
            .bigint()
            .positive(AMOUNT_NOT_POSITIVE)
            .max(ORDER_AMOUNT_MINOR_MAX, AMOUNT_TOO_LARGE),
        }),
      )
      .min(1, 'at least one order is required')
      .max(ORDERS_PER_PAYMENT_MAX, `at most ${ORDERS_PER_PAYMENT_MAX} orders per payment`),
  })
  .superRefine((value, ctx) => {
    const seen = new Set<string>();
    value.orders.forEach((order, index) => {
      if (seen.has(order.seller_id)) {
        ctx.addIssue({
          code: 'custom',
          path: ['orders', index, 'seller_id'],
          message: `seller '${order.seller_id}' appears twice; a payment has one order per seller`,
        });
      }
      seen.add(order.seller_id);
    });
  });

export type CreatePaymentInput = Readonly<{
  requestId: string;
  buyerId: string;
  currency: CurrencyCode;
  orders: ReadonlyArray<Readonly<{ sellerId: string; amountMinor: bigint }>>;
  amountMinor: bigint;
  /** sha256 of the request body without its key: the same key must come with the same body. */
  requestHash: string;
}>;

export function parseCreatePayment(raw: {
  requestId: string;
  buyerId: string;
  currencyCode: string;
  orders: ReadonlyArray<{ sellerId: string; amountMinor: bigint }>;
}): CreatePaymentInput {
  const result = createPaymentSchema.safeParse({
    request_id: raw.requestId,
    buyer_id: raw.buyerId,
    currency_code: raw.currencyCode,
    orders: raw.orders.map((order) => ({
      seller_id: order.sellerId,
      amount_minor: order.amountMinor,
    })),
  });
  if (!result.success) {
    const issues = result.error.issues.map((issue) => ({
      field: formatPath(issue.path),
      message: issue.message,
    }));
    const first = issues[0] ?? { field: '(request)', message: 'invalid' };
    const rest = issues
      .slice(1)
      .map((issue) => `; ${issue.field}: ${issue.message}`)
      .join('');
    throw new InvalidArgumentError(first.field, first.message + rest);
  }
  const value = result.data;
  const orders = value.orders.map((order) => ({
    sellerId: order.seller_id,
    amountMinor: order.amount_minor,
  }));
  const currency = value.currency_code;
  const canonical = JSON.stringify({
    buyer: value.buyer_id,
    currency,
    orders: orders.map((order) => [order.sellerId, order.amountMinor.toString()]),
  });
  return {
    requestId: value.request_id.toLowerCase(),
    buyerId: value.buyer_id,
    currency,
    orders,
    amountMinor: orders.reduce((total, order) => total + order.amountMinor, 0n),
    requestHash: createHash('sha256').update(canonical).digest('hex'),
  };
}

export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out.length === 0 ? String(part) : `.${String(part)}`;
  }
  return out || '(request)';
}

/** Checks an id argument such as payment_id: present and of a sane shape. */
export function requireId(field: string, value: string, pattern: RegExp, example: string): string {
  if (value.length === 0) throw new InvalidArgumentError(field, `${field} is required`);
  if (!pattern.test(value)) {
    throw new InvalidArgumentError(
      field,
      `'${value.slice(0, 80)}' is not a valid ${field} (expected e.g. ${example})`,
    );
  }
  return value;
}
