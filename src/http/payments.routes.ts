/**
 * The REST twin of settle.v1.PaymentService: POST /v1/payments, GET /v1/payments/:id and
 * GET /v1/payments. Behind it is the same PaymentService the gRPC handlers call (no second
 * implementation), the same validation, and the same error mapping (src/grpc/status.ts, then
 * src/grpc/http-status.ts for the HTTP status). Bodies follow the proto3 JSON mapping, as
 * grpc-gateway does: responses use lowerCamelCase names, int64 amounts are decimal strings and
 * enums are their names; requests may use either lowerCamelCase or the proto's snake_case names.
 * The `Idempotency-Key` header is the request's `request_id`. With API_TOKENS set, every request
 * needs `Authorization: Bearer <token>`, checked before anything else and answered 401 otherwise,
 * exactly as the gRPC API asks for it (src/grpc/api-auth.ts); each route needs the scope of the
 * gRPC method it stands for (src/grpc/api-scopes.ts), else 403. With API_RATE_LIMIT_PER_S, a
 * caller over its limit (src/grpc/api-rate-limit.ts) gets 429 with Retry-After next.
 */
import { z } from 'zod';
import type { ApiScope } from '../domain/api-token.js';
import { InvalidArgumentError } from '../domain/errors.js';
import { ID_PREFIX, PAYMENT_ID_PATTERN } from '../domain/ids.js';
import { isInt64Decimal } from '../domain/int64.js';
import { ORDER_AMOUNT_MINOR_MAX } from '../domain/money.js';
import {
  CreatePaymentResponse,
  GetPaymentResponse,
  ListPaymentsResponse,
  PaymentState,
  paymentStateFromJSON,
} from '../grpc/generated/settle/v1/payment.js';
import { paymentStateFromProto, paymentToProto } from '../grpc/handlers/mappers.js';
import { refusedCallerOf } from '../grpc/adapters.js';
import type { ApiTokens } from '../grpc/api-auth.js';
import { API_TRANSPORT, ApiRateLimitError, type ApiRateLimit } from '../grpc/api-rate-limit.js';
import { API_METHOD_SCOPES } from '../grpc/api-scopes.js';
import type { ErrorLogger } from '../grpc/status.js';
import type { PaymentService } from '../payments/payment.service.js';
import { AMOUNT_NOT_POSITIVE, AMOUNT_TOO_LARGE } from '../payments/validation.js';
import { firstDuplicateKey } from './strict-json.js';
import {
  CLIENT_CLOSED_REQUEST_STATUS,
  ClientAbortedError,
  errorResponse,
  HttpInputError,
  json,
  type HttpRequest,
  type HttpResponse,
  type Route,
} from './router.js';

/** A payment has at most 50 orders; 64 KiB is far more than such a body needs. */
const CREATE_BODY_BYTES_MAX = 64 * 1024;

export type RestObservation = Readonly<{
  method: string;
  route: string;
  status: number;
  ms: number;
  requestId: string;
  /** The name of the request's API token, when API_TOKENS is set and it presented one. */
  caller?: string | undefined;
  paymentId?: string | undefined;
}>;

export type PaymentRoutesOptions = Readonly<{
  /** Where errors that map to INTERNAL are logged. */
  log?: ErrorLogger;
  /** Called once per request, after the answer is built (logs). */
  observe?: (observation: RestObservation) => void;
  /**
   * When enabled (API_TOKENS), every request needs `Authorization: Bearer <one of them>`, of a
   * scope that covers the route.
   */
  apiTokens?: ApiTokens;
  /**
   * API_RATE_LIMIT_PER_S (shared with the gRPC API): each request is charged to its caller after
   * the token check and before anything else, and refused 429 with Retry-After past it.
   */
  apiRateLimit?: ApiRateLimit | undefined;
}>;

/** Each route's scope is its gRPC twin's: one list (api-scopes.ts) for both. */
const SCOPES = API_METHOD_SCOPES.PaymentService;

const AMOUNT_EXAMPLE = 'e.g. "1999" for $19.99';

/**
 * What is wrong with an amount_minor as sent, in words a caller can act on; undefined if it is
 * fine. Amounts travel as decimal strings (proto3 JSON for int64); a safe-integer number is
 * accepted too. Zero and negative amounts pass here: the shared validation refuses them with the
 * message gRPC callers get.
 */
function amountProblem(value: unknown): string | undefined {
  if (value === undefined || value === null) {
    return (
      'amount_minor is required: a whole number of minor units greater than 0, ' + AMOUNT_EXAMPLE
    );
  }
  if (typeof value === 'string') {
    if (isInt64Decimal(value, { signed: true })) return undefined;
    // Whole minor units in more than 19 digits: said by value, as the shared validation says
    // of any amount out of range, rather than "not a whole number". Leading zeros are dropped
    // first (by pattern, never BigInt over a body's worth of digits).
    const digits = /^(-?)0*(\d*)$/.exec(value);
    if (digits !== null) {
      const [, sign, significant = ''] = digits;
      if (sign === '-' || significant === '') return AMOUNT_NOT_POSITIVE;
      if (significant.length > 19 || BigInt(significant) > ORDER_AMOUNT_MINOR_MAX) {
        return AMOUNT_TOO_LARGE;
      }
      return 'amount_minor has more than 19 digits: write it without leading zeros';
    }
    return `amount_minor must be a whole number of minor units as a decimal string, ${AMOUNT_EXAMPLE}`;
  }
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) {
      return `amount_minor must be whole minor units, not a fraction, ${AMOUNT_EXAMPLE}`;
    }
    return Number.isSafeInteger(value)
      ? undefined
      : 'amount_minor is too large for a JSON number; send it as a decimal string';
  }
  return `amount_minor must be a decimal string of minor units, ${AMOUNT_EXAMPLE}`;
}

const amountMinor = z.unknown().transform((value, context) => {
  const problem = amountProblem(value);
  if (problem !== undefined) {
    context.addIssue({ code: 'custom', message: problem });
    return z.NEVER;
  }
  return BigInt(value as string | number);
});

/** A string field: missing or null is '' (proto3 JSON); the shared validation requires it. */
const text = (field: string) =>
  z
    .string({ error: `${field} must be a string` })
    .nullish()
    .transform((value) => value ?? '');

const createBodySchema = z.object({
  request_id: z.string({ error: 'request_id must be a string' }).optional(),
  buyer_id: text('buyer_id'),
  currency_code: text('currency_code'),
  orders: z
    .array(
      z.object(
        { seller_id: text('seller_id'), amount_minor: amountMinor },
        { error: 'each order must be an object with seller_id and amount_minor' },
      ),
      { error: 'orders must be a list of objects with seller_id and amount_minor' },
    )
    .nullish()
    .transform((orders) => orders ?? []),
});

/** The REST twin, as the token check names what a caller reached. */
const API_SURFACE = { name: '/v1/payments', kind: 'http' } as const;

export function paymentRoutes(payments: PaymentService, options: PaymentRoutesOptions): Route[] {
  const route = (
    method: Route['method'],
    path: string,
    scope: ApiScope,
    handle: (request: HttpRequest) => Promise<HttpResponse>,
  ): Route => {
    // What the route is to the token check, fixed with the route rather than built per request.
    const apiMethod = { name: `${method} ${path}`, scope };
    return {
      method,
      path,
      handle: async (request) => {
        const started = performance.now();
        const { requestId } = request;
        let caller: string | undefined;
        const observe = (status: number, location?: string) =>
          options.observe?.({
            method,
            route: path,
            status,
            ms: Math.round((performance.now() - started) * 10) / 10,
            requestId,
            caller,
            paymentId: paymentIdOf(request.params.id ?? location ?? ''),
          });
        let response: HttpResponse;
        try {
          // First: an unauthenticated caller learns nothing of its request, not even a bad body.
          caller = options.apiTokens?.require(
            request.headers.authorization,
            API_SURFACE,
            apiMethod,
          )?.name;
          // Next, before the body is read: a request over the limit does nothing.
          options.apiRateLimit?.charge(caller, API_TRANSPORT.rest);
          response = await handle(request);
        } catch (error) {
          caller ??= refusedCallerOf(error);
          // Refused before its body was read: not read at all (a throttled client's large POSTs
          // would otherwise still be received, to keep the connection alive).
          if (error instanceof ApiRateLimitError) request.leaveBodyUnread();
          if (error instanceof ClientAbortedError) {
            // Counted apart from errors (and from 5xx): the router reports it and answers nothing.
            observe(CLIENT_CLOSED_REQUEST_STATUS);
            throw error;
          }
          response = errorResponse(error, requestId, {
            log: options.log,
            path: `${method} ${path}`,
          });
        }
        observe(response.status, response.headers?.location);
        return response;
      },
    };
  };

  return [
    route('POST', '/v1/payments', SCOPES.createPayment, async (request) => {
      const contentType = String(request.headers['content-type'] ?? '');
      if (!/^application\/json\b/i.test(contentType)) {
        throw new HttpInputError('content-type', 'send the body as application/json', 'NOT_JSON');
      }
      const raw = (await request.body(CREATE_BODY_BYTES_MAX)).toString('utf8');
      let parsed: unknown;
      try {
        parsed = JSON.parse(raw);
      } catch {
        throw new HttpInputError('body', 'is not valid JSON', 'MALFORMED_JSON');
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        throw new HttpInputError('body', 'must be a JSON object', 'MALFORMED_JSON');
      }
      const duplicate = firstDuplicateKey(raw);
      if (duplicate !== undefined) {
        throw new HttpInputError(
          duplicate.field,
          'is sent twice in one object; send each field once',
          'DUPLICATE_FIELD',
        );
      }
      const body = createBodySchema.parse(snakeCaseKeys(parsed));
      const header = request.headers['idempotency-key'];
      const key = typeof header === 'string' ? header.trim() : '';
      if (key === '') {
        throw new HttpInputError(
          'Idempotency-Key',
          'header is required: a UUID chosen by the caller, sent again on retries',
          'MISSING_IDEMPOTENCY_KEY',
        );
      }
      if (body.request_id !== undefined && body.request_id !== key) {
        throw new HttpInputError(
          'request_id',
          'differs from the Idempotency-Key header; send the key in the header only',
          'IDEMPOTENCY_KEY_MISMATCH',
        );
      }
      const payment = await payments.create({
        requestId: key,
        buyerId: body.buyer_id,
        currencyCode: body.currency_code,
        orders: body.orders.map((order) => ({
          sellerId: order.seller_id,
          amountMinor: order.amount_minor,
        })),
      });
      return json(200, CreatePaymentResponse.toJSON({ payment: paymentToProto(payment) }), {
        location: `/v1/payments/${payment.id}`,
      });
    }),
    route('GET', '/v1/payments/:id', SCOPES.getPayment, async (request) =>
      json(
        200,
        GetPaymentResponse.toJSON({
          payment: paymentToProto(await payments.get(request.params.id ?? '')),
        }),
      ),
    ),
    route('GET', '/v1/payments', SCOPES.listPayments, async (request) => {
      const query = request.query;
      const pageSizeText = query.get('page_size') ?? query.get('pageSize') ?? '0';
      if (!/^\d{1,6}$/.test(pageSizeText)) {
        throw new InvalidArgumentError('page_size', 'must be a whole number');
      }
      const stateText = query.get('state') ?? '';
      const state = stateText === '' ? undefined : restPaymentState(stateText);
      const buyerId = query.get('buyer_id') ?? query.get('buyerId') ?? '';
      const page = await payments.list({
        pageSize: Number(pageSizeText),
        pageToken: query.get('page_token') ?? query.get('pageToken') ?? '',
        ...(state !== undefined ? { state } : {}),
        ...(buyerId !== '' ? { buyerId } : {}),
      });
      return json(
        200,
        ListPaymentsResponse.toJSON({
          payments: page.payments.map(paymentToProto),
          nextPageToken: page.nextPageToken,
        }),
      );
    }),
  ];
}

/** `SUCCEEDED` or `PAYMENT_STATE_SUCCEEDED` → the storage name; INVALID_ARGUMENT otherwise. */
function restPaymentState(text: string): string | undefined {
  const name = text.toUpperCase();
  const proto = paymentStateFromJSON(
    name.startsWith('PAYMENT_STATE_') ? name : `PAYMENT_STATE_${name}`,
  );
  if (proto === PaymentState.UNRECOGNIZED) {
    throw new InvalidArgumentError(
      'state',
      `unknown payment state '${text.slice(0, 40)}'; one of NOT_STARTED, EXECUTING, SUCCEEDED, ` +
        'PARTIALLY_SUCCEEDED, FAILED',
    );
  }
  return paymentStateFromProto(proto);
}

/** Keys that reach an object's prototype rather than a field of its own, were they assigned. */
const PROTOTYPE_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * Top-level and order keys in lowerCamelCase become the proto's snake_case names. The copy has no
 * prototype, and `__proto__`, `constructor` and `prototype` are refused: JSON.parse makes
 * "__proto__" an own key, and assigned to a plain object it set that object's prototype, from
 * which buyer_id was then read. A field sent under both names (buyer_id and buyerId) is refused
 * too, rather than one of them silently winning. `path` prefixes the field names in errors.
 */
function snakeCaseKeys(value: object, path = ''): Record<string, unknown> {
  const out = Object.create(null) as Record<string, unknown>;
  const sentAs = new Map<string, string>();
  for (const [key, item] of Object.entries(value)) {
    const name = key.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
    if (PROTOTYPE_KEYS.has(key) || PROTOTYPE_KEYS.has(name)) {
      throw new HttpInputError(`${path}${key}`, 'is not a field of this request', 'UNKNOWN_FIELD');
    }
    const earlier = sentAs.get(name);
    if (earlier !== undefined) {
      throw new HttpInputError(
        `${path}${name}`,
        `sent twice, as ${earlier} and ${key}; send it once`,
        'DUPLICATE_FIELD',
      );
    }
    sentAs.set(name, key);
    out[name] =
      name === 'orders' && Array.isArray(item)
        ? item.map((order: unknown, index) =>
            typeof order === 'object' && order !== null && !Array.isArray(order)
              ? snakeCaseKeys(order, `${path}orders[${index}].`)
              : order,
          )
        : item;
  }
  return out;
}

/** The payment id that ends `text` (a path parameter or a Location header). */
function paymentIdOf(text: string): string | undefined {
  const tail = text.slice(-(ID_PREFIX.payment.length + 26));
  return PAYMENT_ID_PATTERN.test(tail) ? tail : undefined;
}
