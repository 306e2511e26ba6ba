/**
 * Goal: toGrpcStatus is the one mapping from errors to gRPC statuses (STYLE.md §6).
 * Method: a table of every SettleError subclass (each must keep its message and map by its code,
 * and the table must cover every ErrorCode); real zod 4 errors; and a plain Error whose message
 * must not leak, checked with an injected logger.
 */
import * as grpc from '@grpc/grpc-js';
import * as z from 'zod';
import { describe, expect, it, vi } from 'vitest';
import {
  AbortedError,
  AlreadyExistsError,
  ERROR_CODE,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  type SettleError,
} from '../../src/domain/errors.js';
import {
  protoFieldPath,
  RETRY_DELAY_MS_METADATA_KEY,
  RETRYABLE_METADATA_KEY,
  STATUS_MESSAGE_LENGTH_MAX,
  toGrpcStatus,
} from '../../src/grpc/status.js';

const SETTLE_ERRORS: Array<[SettleError, grpc.status]> = [
  [new InvalidArgumentError('currency_code', 'must be USD'), grpc.status.INVALID_ARGUMENT],
  [new NotFoundError('payment', 'pay_123'), grpc.status.NOT_FOUND],
  [new AlreadyExistsError('request_id reused with a different body'), grpc.status.ALREADY_EXISTS],
  [new FailedPreconditionError('order is SUCCEEDED'), grpc.status.FAILED_PRECONDITION],
  [new AbortedError('request still in flight'), grpc.status.ABORTED],
  [new UnauthenticatedError('bad webhook signature'), grpc.status.UNAUTHENTICATED],
  [new PermissionDeniedError('needs scope write', 'dashboard'), grpc.status.PERMISSION_DENIED],
  [new ResourceExhaustedError('mailbox full'), grpc.status.RESOURCE_EXHAUSTED],
  [new UnavailableError('PSP circuit open', { retryDelayMs: 1500 }), grpc.status.UNAVAILABLE],
  [new UnimplementedError('DELETE is not served here'), grpc.status.UNIMPLEMENTED],
];

describe('toGrpcStatus', () => {
  it.each(SETTLE_ERRORS)('maps %s by its code and keeps the message', (error, code) => {
    const log = vi.fn();
    const status = toGrpcStatus(error, 'req-1', { log });
    expect(status.code).toBe(code);
    expect(grpc.status[status.code]).toBe(error.code);
    expect(status.details).toBe(error.message);
    expect(log).not.toHaveBeenCalled();
  });

  it('cuts a message too long for a trailer, saying so, and never inside a character', () => {
    const huge = `currency '${'X'.repeat(100_000)}' is not supported`;
    const status = toGrpcStatus(new InvalidArgumentError('currency_code', huge));
    expect(status.details.length).toBeLessThan(STATUS_MESSAGE_LENGTH_MAX + 50);
    expect(status.details).toMatch(/^currency_code: currency 'XXX.*… \(cut at 1000 characters\)$/);
    const emoji = '💳'.repeat(STATUS_MESSAGE_LENGTH_MAX);
    const cut = Array.from(toGrpcStatus(new InvalidArgumentError('f', emoji)).details);
    expect(cut[STATUS_MESSAGE_LENGTH_MAX - 1]).toBe('💳');
    expect(cut[STATUS_MESSAGE_LENGTH_MAX]).toBe('…');
    // A zod message that quotes a huge input is cut the same way.
    const parsed = z
      .object({ code: z.string().refine(() => false, { error: (i) => `bad ${String(i.input)}` }) })
      .safeParse({ code: 'Y'.repeat(100_000) });
    expect(parsed.success).toBe(false);
    if (!parsed.success) {
      expect(toGrpcStatus(parsed.error).details.length).toBeLessThan(
        STATUS_MESSAGE_LENGTH_MAX + 50,
      );
    }
    // A message that fits is kept as it is.
    expect(toGrpcStatus(new InvalidArgumentError('f', 'short')).details).toBe('f: short');
  });

  it('replaces a lone surrogate, which grpc-js cannot percent-encode, with U+FFFD', () => {
    // A quote of the caller's input cut with slice(0, 40) right inside an emoji's pair.
    const quoted = `${'x'.repeat(39)}🙂`.slice(0, 40);
    const status = toGrpcStatus(new InvalidArgumentError('settlement_date', `got '${quoted}'`));
    expect(status.details).toBe(`settlement_date: got '${'x'.repeat(39)}\ufffd'`);
    // What grpc-js does with it on the way out: encodeURI throws on a lone surrogate.
    expect(() => encodeURI(status.details)).not.toThrow();
    const low = toGrpcStatus(new InvalidArgumentError('f', '\udc00a\ud83d\ude42b\ud800'));
    expect(low.details).toBe('f: \ufffda🙂b\ufffd');
  });

  it('covers every ErrorCode', () => {
    const covered = new Set(SETTLE_ERRORS.map(([error]) => error.code));
    expect([...covered].sort()).toEqual(Object.values(ERROR_CODE).sort());
  });

  it('puts retry advice in the trailers of retryable errors only', () => {
    const unavailable = toGrpcStatus(new UnavailableError('PSP down', { retryDelayMs: 1500 }));
    expect(unavailable.metadata?.get(RETRYABLE_METADATA_KEY)).toEqual(['true']);
    expect(unavailable.metadata?.get(RETRY_DELAY_MS_METADATA_KEY)).toEqual(['1500']);
    const aborted = toGrpcStatus(new AbortedError('in flight'));
    expect(aborted.metadata?.get(RETRYABLE_METADATA_KEY)).toEqual(['true']);
    expect(aborted.metadata?.get(RETRY_DELAY_MS_METADATA_KEY)).toEqual([]);
    expect(toGrpcStatus(new NotFoundError('payment', 'p')).metadata).toBeUndefined();
  });

  it('maps a ZodError to INVALID_ARGUMENT naming every field in proto names', () => {
    const schema = z.object({
      buyerId: z.string().min(1),
      orders: z.array(z.object({ sellerId: z.string(), amountMinor: z.bigint().positive() })),
    });
    const result = schema.safeParse({
      buyerId: '',
      orders: [
        { sellerId: 's1', amountMinor: 5n },
        { sellerId: 's2', amountMinor: -1n },
      ],
    });
    expect(result.success).toBe(false);
    const log = vi.fn();
    const status = toGrpcStatus(result.error, 'req-1', { log });
    expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
    const parts = status.details.split('; ');
    expect(parts).toHaveLength(2);
    expect(parts[0]).toMatch(/^buyer_id: /);
    expect(parts[1]).toMatch(/^orders\[1\]\.amount_minor: /);
    expect(log).not.toHaveBeenCalled();
  });

  it('keeps a root-level zod message without a path', () => {
    const result = z.string().safeParse(42);
    const status = toGrpcStatus(result.error);
    expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(status.details).toBe(result.error!.issues[0]!.message);
  });

  it('accepts a caller-supplied field path renderer', () => {
    const result = z.object({ buyerId: z.string() }).safeParse({});
    const status = toGrpcStatus(result.error, undefined, { fieldPath: (path) => path.join('/') });
    expect(status.details).toMatch(/^buyerId: /);
  });

  it('renders zod paths as proto field paths', () => {
    expect(protoFieldPath(['orders', 0, 'amountMinor'])).toBe('orders[0].amount_minor');
    expect(protoFieldPath(['request_id'])).toBe('request_id');
  });

  it('maps anything else to INTERNAL without the message or stack, and logs it', () => {
    const error = new Error('secret db password in message');
    const log = vi.fn();
    const status = toGrpcStatus(error, 'req-42', { log, path: '/settle.v1.PaymentService/X' });
    expect(status).toEqual({
      code: grpc.status.INTERNAL,
      details: 'internal error (request id req-42)',
    });
    expect(status.details).not.toContain('secret');
    expect(status.details).not.toMatch(/\bat\s/);
    expect(log).toHaveBeenCalledOnce();
    expect(log).toHaveBeenCalledWith(error, {
      requestId: 'req-42',
      path: '/settle.v1.PaymentService/X',
    });
  });

  it('treats thrown non-errors and gRPC-shaped errors as bugs too', () => {
    const log = vi.fn();
    for (const thrown of ['a string', undefined, { code: grpc.status.NOT_FOUND, details: 'x' }]) {
      expect(toGrpcStatus(thrown, 'r', { log }).code).toBe(grpc.status.INTERNAL);
    }
    expect(log).toHaveBeenCalledTimes(3);
  });

  it('generates a request id for INTERNAL when none is given', () => {
    const log = vi.fn();
    const status = toGrpcStatus(new Error('boom'), undefined, { log });
    const [, context] = log.mock.calls[0] as [unknown, { requestId: string }];
    expect(context.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(status.details).toBe(`internal error (request id ${context.requestId})`);
  });
});
