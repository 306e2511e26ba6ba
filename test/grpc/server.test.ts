/**
 * Goal: createGrpcServer() enforces maxMessageBytes both ways through grpc-js itself, and listen()
 * binds ephemeral ports and explains a taken port.
 * Method: real servers on 127.0.0.1 with a 1 KiB limit and the ts-proto PaymentService, called
 * through the generated client; a second listen() on a bound port.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unary } from '../../src/grpc/adapters.js';
import {
  GetPaymentResponse,
  PaymentServiceClient,
  PaymentServiceService,
  type GetPaymentRequest,
  type PaymentServiceServer,
} from '../../src/grpc/generated/settle/v1/payment.js';
import { createGrpcServer, listen } from '../../src/grpc/server.js';
import { callUnary, startServer, stopServer, type RunningServer } from './harness.js';

const LIMIT_BYTES = 1024;

describe('createGrpcServer', () => {
  let running: RunningServer | undefined;
  let client: PaymentServiceClient | undefined;
  let handled = 0;

  const notUsed = unary(async () => {
    throw new Error('not used');
  });
  const implementation: PaymentServiceServer = {
    createPayment: notUsed,
    listPayments: notUsed,
    watchPayment: () => {},
    getPayment: unary<GetPaymentRequest, GetPaymentResponse>(async (request) => {
      handled += 1;
      // Echo the id back, padded when asked, to make an oversized response.
      const padding = request.paymentId === 'big-response' ? 'x'.repeat(2 * LIMIT_BYTES) : '';
      return GetPaymentResponse.fromPartial({
        payment: { paymentId: request.paymentId + padding },
      });
    }),
  };

  beforeAll(async () => {
    running = await startServer(
      (server) => server.addService(PaymentServiceService, implementation),
      { maxMessageBytes: LIMIT_BYTES },
    );
    // The client's own limits stay at their defaults so that only the server enforces the limit.
    client = new PaymentServiceClient(running.address, grpc.credentials.createInsecure());
  });

  afterAll(() => {
    client?.close();
    stopServer(running);
  });

  it('serves a request under the limit', async () => {
    const outcome = await callUnary(client!.getPayment.bind(client), { paymentId: 'pay_1' });
    if (!outcome.ok) throw outcome.error;
    expect(outcome.response.payment?.paymentId).toBe('pay_1');
  });

  it('refuses a request over maxMessageBytes with RESOURCE_EXHAUSTED before the handler', async () => {
    const before = handled;
    const outcome = await callUnary(client!.getPayment.bind(client), {
      paymentId: 'x'.repeat(2 * LIMIT_BYTES),
    });
    if (outcome.ok) throw new Error('expected RESOURCE_EXHAUSTED');
    expect(outcome.error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(outcome.error.details).toMatch(/larger than max/i);
    expect(handled).toBe(before);
  });

  it('refuses to send a response over maxMessageBytes with RESOURCE_EXHAUSTED', async () => {
    const outcome = await callUnary(client!.getPayment.bind(client), { paymentId: 'big-response' });
    if (outcome.ok) throw new Error('expected RESOURCE_EXHAUSTED');
    expect(outcome.error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
  });

  it('rejects a nonsensical limit', () => {
    for (const maxMessageBytes of [0, -1, 1.5, Number.NaN]) {
      expect(() => createGrpcServer({ maxMessageBytes })).toThrow(RangeError);
    }
  });
});

describe('a connection without a call', () => {
  it('is closed after connectionIdleMsMax, and the client reconnects on its next call', async () => {
    const running = await startServer(
      (server) =>
        server.addService(PaymentServiceService, {
          createPayment: unary(async () => {
            throw new Error('not used');
          }),
          listPayments: unary(async () => {
            throw new Error('not used');
          }),
          watchPayment: () => {},
          getPayment: unary<GetPaymentRequest, GetPaymentResponse>(async (request) =>
            GetPaymentResponse.fromPartial({ payment: { paymentId: request.paymentId } }),
          ),
        }),
      { connectionIdleMsMax: 300 },
    );
    const client = new PaymentServiceClient(running.address, grpc.credentials.createInsecure());
    try {
      const first = await callUnary(client.getPayment.bind(client), { paymentId: 'pay_1' });
      expect(first.ok).toBe(true);
      const channel = client.getChannel();
      expect(channel.getConnectivityState(false)).toBe(grpc.connectivityState.READY);
      // The server's GOAWAY takes the channel out of READY; a deadline bounds the wait.
      await new Promise<void>((resolve, reject) =>
        channel.watchConnectivityState(grpc.connectivityState.READY, Date.now() + 5_000, (error) =>
          error ? reject(error) : resolve(),
        ),
      );
      expect(channel.getConnectivityState(false)).not.toBe(grpc.connectivityState.READY);
      const again = await callUnary(client.getPayment.bind(client), { paymentId: 'pay_2' });
      expect(again.ok).toBe(true);
    } finally {
      client.close();
      stopServer(running);
    }
  });
});

describe('listen', () => {
  it('binds an ephemeral port for port 0 and says which address is taken', async () => {
    const first = createGrpcServer({ maxMessageBytes: LIMIT_BYTES });
    const second = createGrpcServer({ maxMessageBytes: LIMIT_BYTES });
    try {
      const port = await listen(first, '127.0.0.1', 0);
      expect(port).toBeGreaterThan(0);
      await expect(listen(second, '127.0.0.1', port)).rejects.toThrow(
        `address 127.0.0.1:${port} is in use; set SETTLE_GRPC_ADDR`,
      );
    } finally {
      first.forceShutdown();
      second.forceShutdown();
    }
  });
});
