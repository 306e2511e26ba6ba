/**
 * Goal: unary() and serverStream() answer every call exactly once with the mapped status, echo a
 * request id, and stop streaming handlers when the client goes away (and only then: a call's
 * signal is not aborted after its answer).
 * Method: unary() is first driven directly with a fake call that counts callbacks (a handler that
 * throws synchronously, one that rejects, one that succeeds). Then both adapters run behind the
 * ts-proto PaymentService on a real server on 127.0.0.1:0, called through the generated client
 * with deadlines, so a missing status shows up as DEADLINE_EXCEEDED rather than a hang; status
 * code AND message are asserted.
 */
import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import * as z from 'zod';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { FailedPreconditionError, NotFoundError } from '../../src/domain/errors.js';
import {
  REQUEST_ID_METADATA_KEY,
  refuseUndecodable,
  serverStream,
  unary,
} from '../../src/grpc/adapters.js';
import {
  GetPaymentResponse,
  PaymentServiceClient,
  PaymentServiceService,
  WatchPaymentResponse,
  type GetPaymentRequest,
  type PaymentServiceServer,
  type WatchPaymentRequest,
} from '../../src/grpc/generated/settle/v1/payment.js';
import {
  callUnary,
  deadlineIn,
  startServer,
  stopServer,
  waitFor,
  type RunningServer,
} from './harness.js';

type Callback = (error: grpc.ServerErrorResponse | null, response?: GetPaymentResponse) => void;

function fakeUnaryCall(request: GetPaymentRequest, requestId?: string) {
  const metadata = new grpc.Metadata();
  if (requestId !== undefined) metadata.set(REQUEST_ID_METADATA_KEY, requestId);
  const sent: grpc.Metadata[] = [];
  const call = Object.assign(new EventEmitter(), {
    request,
    metadata,
    cancelled: false,
    getPath: () => '/settle.v1.PaymentService/GetPayment',
    sendMetadata: (md: grpc.Metadata) => sent.push(md),
  });
  return {
    call: call as unknown as grpc.ServerUnaryCall<GetPaymentRequest, GetPaymentResponse>,
    sent,
  };
}

async function invokeDirectly(
  handler: grpc.handleUnaryCall<GetPaymentRequest, GetPaymentResponse>,
  requestId?: string,
) {
  const { call, sent } = fakeUnaryCall({ paymentId: 'p1' }, requestId);
  const callback = vi.fn<Callback>();
  handler(call, callback as unknown as grpc.sendUnaryData<GetPaymentResponse>);
  await waitFor(() => callback.mock.calls.length > 0, 'the callback');
  // Give a second (wrong) callback every chance to happen before counting.
  await new Promise((resolve) => setTimeout(resolve, 20));
  return { callback, sent };
}

describe('unary() called directly', () => {
  it('answers a synchronous throw once, with the mapped status', async () => {
    const handler = unary<GetPaymentRequest, GetPaymentResponse>(() => {
      throw new NotFoundError('payment', 'p1');
    });
    const { callback } = await invokeDirectly(handler, 'req-sync');
    expect(callback).toHaveBeenCalledOnce();
    const [error] = callback.mock.calls[0]!;
    expect(error).toMatchObject({ code: grpc.status.NOT_FOUND, details: "payment 'p1' not found" });
    expect(error?.metadata?.get(REQUEST_ID_METADATA_KEY)).toEqual(['req-sync']);
  });

  it('answers a rejection once, as INTERNAL without the message, and logs it', async () => {
    const log = vi.fn();
    const failure = new Error('secret db password in message');
    const handler = unary<GetPaymentRequest, GetPaymentResponse>(
      async () => {
        await Promise.resolve();
        throw failure;
      },
      { log },
    );
    const { callback } = await invokeDirectly(handler, 'req-reject');
    expect(callback).toHaveBeenCalledOnce();
    expect(callback.mock.calls[0]![0]).toMatchObject({
      code: grpc.status.INTERNAL,
      details: 'internal error (request id req-reject)',
    });
    expect(log).toHaveBeenCalledWith(failure, {
      requestId: 'req-reject',
      path: '/settle.v1.PaymentService/GetPayment',
    });
  });

  it('answers a success once and echoes the request id in the initial metadata', async () => {
    const response = GetPaymentResponse.fromPartial({ payment: { paymentId: 'p1' } });
    const handler = unary<GetPaymentRequest, GetPaymentResponse>(async () => response);
    const { callback, sent } = await invokeDirectly(handler, 'req-ok');
    expect(callback).toHaveBeenCalledOnce();
    expect(callback.mock.calls[0]).toEqual([null, response]);
    expect(sent.map((md) => md.get(REQUEST_ID_METADATA_KEY))).toEqual([['req-ok']]);
  });

  it.each([
    ['absent', undefined],
    ['empty', ''],
    ['too long', 'x'.repeat(200)],
    ['with spaces', 'a b c'],
    ['with other punctuation', 'id;drop=1'],
  ])('replaces a request id that is %s with a UUID', async (_, requestId) => {
    const handler = unary<GetPaymentRequest, GetPaymentResponse>(async () =>
      GetPaymentResponse.fromPartial({}),
    );
    const { sent } = await invokeDirectly(handler, requestId);
    expect(sent[0]?.get(REQUEST_ID_METADATA_KEY)[0]).toMatch(/^[0-9a-f-]{36}$/);
  });
});

describe('adapters end to end', () => {
  let running: RunningServer | undefined;
  let client: PaymentServiceClient | undefined;
  const log = vi.fn();
  let unarySignal: AbortSignal | undefined;
  let streamAbort: { signal: AbortSignal | undefined; writes: number } = {
    signal: undefined,
    writes: 0,
  };

  const payment = (paymentId: string) =>
    WatchPaymentResponse.fromPartial({ payment: { paymentId } });

  const implementation: PaymentServiceServer = {
    createPayment: unary(async () => {
      throw new Error('not used');
    }),
    listPayments: unary(async () => {
      throw new Error('not used');
    }),
    getPayment: unary<GetPaymentRequest, GetPaymentResponse>(
      (request, _call, context) => {
        unarySignal = context.signal;
        switch (request.paymentId) {
          case 'sync-throw':
            throw new NotFoundError('payment', request.paymentId);
          case 'zod':
            return Promise.resolve(
              z.object({ paymentId: z.string().startsWith('pay_') }).parse(request) && {},
            );
          case 'bug':
            return Promise.reject(new Error('secret db password in message'));
          default:
            return Promise.resolve(
              GetPaymentResponse.fromPartial({ payment: { paymentId: request.paymentId } }),
            );
        }
      },
      { log },
    ),
    watchPayment: serverStream<WatchPaymentRequest, WatchPaymentResponse>(
      async (request, call, signal) => {
        if (request.paymentId === 'fail-mid-stream') {
          call.write(payment('first'));
          throw new FailedPreconditionError('payment pay_1 was deleted');
        }
        if (request.paymentId === 'forever') {
          streamAbort = { signal, writes: 0 };
          while (!signal.aborted) {
            call.write(payment(`tick-${streamAbort.writes++}`));
            await new Promise((resolve) => setTimeout(resolve, 10));
          }
          throw signal.reason;
        }
        call.write(payment('a'));
        call.write(payment('b'));
      },
      { log },
    ),
  };

  beforeAll(async () => {
    running = await startServer((server) =>
      server.addService(refuseUndecodable(PaymentServiceService), implementation),
    );
    client = new PaymentServiceClient(running.address, grpc.credentials.createInsecure());
  });

  afterAll(() => {
    client?.close();
    stopServer(running);
  });

  it('sends a synchronous throw as its mapped status and message', async () => {
    const outcome = await callUnary(client!.getPayment.bind(client), { paymentId: 'sync-throw' });
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.error.code).toBe(grpc.status.NOT_FOUND);
    expect(outcome.error.details).toBe("payment 'sync-throw' not found");
  });

  it('sends a ZodError as INVALID_ARGUMENT naming the field', async () => {
    const outcome = await callUnary(client!.getPayment.bind(client), { paymentId: 'zod' });
    if (outcome.ok) throw new Error('expected an error');
    expect(outcome.error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(outcome.error.details).toMatch(/^payment_id: .*pay_/);
  });

  it('sends a bug as INTERNAL with the caller’s request id and nothing else', async () => {
    const metadata = new grpc.Metadata();
    metadata.set(REQUEST_ID_METADATA_KEY, 'req-e2e-1');
    const outcome = await callUnary(
      client!.getPayment.bind(client),
      { paymentId: 'bug' },
      metadata,
    );
    if (outcome.ok) throw new Error('expected an error');
    expect(outcome.error.code).toBe(grpc.status.INTERNAL);
    expect(outcome.error.details).toBe('internal error (request id req-e2e-1)');
    expect(outcome.error.metadata.get(REQUEST_ID_METADATA_KEY)).toEqual(['req-e2e-1']);
    expect(log).toHaveBeenCalledWith(expect.any(Error), {
      requestId: 'req-e2e-1',
      path: '/settle.v1.PaymentService/GetPayment',
    });
  });

  it('returns a success with the request id in the response headers', async () => {
    const metadata = new grpc.Metadata();
    metadata.set(REQUEST_ID_METADATA_KEY, 'req-e2e-2');
    const outcome = await callUnary(
      client!.getPayment.bind(client),
      { paymentId: 'pay_1' },
      metadata,
    );
    if (!outcome.ok) throw outcome.error;
    expect(outcome.response.payment?.paymentId).toBe('pay_1');
    expect(outcome.headers.get(REQUEST_ID_METADATA_KEY)).toEqual(['req-e2e-2']);
  });

  function watch(paymentId: string) {
    const call = client!.watchPayment({ paymentId }, new grpc.Metadata(), {
      deadline: deadlineIn(5_000),
    });
    const received: string[] = [];
    call.on('data', (response: WatchPaymentResponse) => received.push(response.payment!.paymentId));
    const ended = new Promise<grpc.StatusObject>((resolve) => {
      call.on('error', () => {});
      call.on('status', resolve);
    });
    return { call, received, ended };
  }

  it('streams messages and ends with OK', async () => {
    const { received, ended } = watch('ok');
    const status = await ended;
    expect(status.code).toBe(grpc.status.OK);
    expect(received).toEqual(['a', 'b']);
  });

  it('delivers a mid-stream error as the mapped status after the messages sent', async () => {
    const { received, ended } = watch('fail-mid-stream');
    const status = await ended;
    expect(status.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(status.details).toBe('payment pay_1 was deleted');
    expect(received).toEqual(['first']);
  });

  it('leaves the signal of an answered call alone when its stream closes', async () => {
    // grpc-js emits 'cancelled' as the stream of every finished call closes; an abort then
    // would reach nobody and only cost a DOMException per call.
    const outcome = await callUnary(client!.getPayment.bind(client), { paymentId: 'pay_ok' });
    expect(outcome.ok).toBe(true);
    const signal = unarySignal;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(signal?.aborted).toBe(false);
  });

  it('refuses bytes that are not a request message as INVALID_ARGUMENT, through the handler path', async () => {
    // A length-delimited field 1 (payment_id) whose length runs past the end of the message.
    const truncated = Buffer.from([0x0a, 0x05, 0x61]);
    log.mockClear();
    const raw = new grpc.Client(running!.address, grpc.credentials.createInsecure());
    try {
      const unaryError = await new Promise<grpc.ServiceError>((resolve, reject) => {
        raw.makeUnaryRequest(
          '/settle.v1.PaymentService/GetPayment',
          (bytes: Buffer) => bytes,
          (bytes: Buffer) => bytes,
          truncated,
          new grpc.Metadata(),
          { deadline: deadlineIn(5_000) },
          (error) => (error ? resolve(error) : reject(new Error('answered OK'))),
        );
      });
      expect(unaryError.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(unaryError.details).toContain("/settle.v1.PaymentService/GetPayment's request type");
      // Answered by the adapter: the request id it gives every call is in the trailers.
      expect(unaryError.metadata.get(REQUEST_ID_METADATA_KEY)).toHaveLength(1);

      const stream = raw.makeServerStreamRequest(
        '/settle.v1.PaymentService/WatchPayment',
        (bytes: Buffer) => bytes,
        (bytes: Buffer) => bytes,
        truncated,
        new grpc.Metadata(),
        { deadline: deadlineIn(5_000) },
      );
      const streamStatus = await new Promise<grpc.StatusObject>((resolve) => {
        stream.on('data', () => {});
        stream.on('error', () => {});
        stream.on('status', resolve);
      });
      expect(streamStatus.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(log).not.toHaveBeenCalled();
    } finally {
      raw.close();
    }
  });

  it('aborts the handler’s signal when the client cancels', async () => {
    log.mockClear();
    const { call, received, ended } = watch('forever');
    await waitFor(() => received.length >= 2, 'two ticks');
    call.cancel();
    expect((await ended).code).toBe(grpc.status.CANCELLED);
    await waitFor(() => streamAbort.signal?.aborted === true, 'the abort signal');
    const writes = streamAbort.writes;
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(streamAbort.writes).toBe(writes);
    expect(log).not.toHaveBeenCalled();
  });
});
