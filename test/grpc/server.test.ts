/**
 * Goal: createGrpcServer() enforces maxMessageBytes both ways through grpc-js itself, closes idle
 * connections, bounds the open connections (past the bound a new one is closed unanswered and
 * counted, while open ones go on), closes a TLS connection whose handshake does not end in time
 * (and gives its place back), and listen() binds ephemeral ports and explains a taken port.
 * Method: real servers on 127.0.0.1 with a 1 KiB limit and the ts-proto PaymentService, called
 * through the generated client; raw HTTP/2 connections (node:http2) beyond the bound; raw TCP
 * connections that never send a byte to a TLS server with a short handshake bound; a second
 * listen() on a bound port.
 */
import * as grpc from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import type * as http2 from 'node:http2';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unary } from '../../src/grpc/adapters.js';
import {
  GetPaymentResponse,
  PaymentServiceClient,
  PaymentServiceService,
  type GetPaymentRequest,
  type PaymentServiceServer,
} from '../../src/grpc/generated/settle/v1/payment.js';
import {
  createGrpcServer,
  HandshakeBoundCredentials,
  listen,
  serverCredentials,
} from '../../src/grpc/server.js';
import { makeTestCertificates, type TestCertificates } from '../support/certificates.js';
import {
  callUnary,
  deadlineIn,
  openRawConnection,
  startServer,
  stopServer,
  waitFor,
  type RunningServer,
} from './harness.js';

const LIMIT_BYTES = 1024;

/** Answers GetPayment with the id asked for; nothing else is called. */
const echo: PaymentServiceServer = {
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
};

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

describe('open connections', () => {
  it('past connectionsMax closes a new one unanswered and counts it; open ones go on, and a closed one frees its place', async () => {
    let open = 0;
    const refused: Array<string | undefined> = [];
    const running = await startServer((server) => server.addService(PaymentServiceService, echo), {
      connectionsMax: 3,
      observer: {
        open: (now) => (open = now),
        refused: ({ remoteAddress }) => refused.push(remoteAddress),
      },
    });
    const client = new PaymentServiceClient(running.address, grpc.credentials.createInsecure());
    // Its own connection (not the one grpc-js would share with `client`), retried quickly.
    const newcomer = new PaymentServiceClient(running.address, grpc.credentials.createInsecure(), {
      'grpc.use_local_subchannel_pool': 1,
      'grpc.initial_reconnect_backoff_ms': 50,
      'grpc.max_reconnect_backoff_ms': 50,
    });
    const raws: http2.ClientHttp2Session[] = [];
    const raw = () => {
      const opened = openRawConnection(running.port);
      raws.push(opened.session);
      return opened.accepted;
    };
    try {
      expect((await callUnary(client.getPayment.bind(client), { paymentId: 'pay_1' })).ok).toBe(
        true,
      );
      expect(await raw()).toBe(true);
      expect(await raw()).toBe(true);

      const startedAt = Date.now();
      expect(await Promise.all([raw(), raw(), raw()])).toEqual([false, false, false]);
      expect(Date.now() - startedAt).toBeLessThan(1_000);
      expect(refused).toEqual(['127.0.0.1', '127.0.0.1', '127.0.0.1']);
      expect(open).toBe(3);
      expect(running.server.connectionsOpen).toBe(3);

      // The client already connected is served as before; a new one is told UNAVAILABLE.
      const served = await callUnary(client.getPayment.bind(client), { paymentId: 'pay_2' });
      if (!served.ok) throw served.error;
      expect(served.response.payment?.paymentId).toBe('pay_2');
      const turnedAway = await callUnary(newcomer.getPayment.bind(newcomer), {
        paymentId: 'pay_3',
      });
      if (turnedAway.ok) throw new Error('expected UNAVAILABLE');
      expect(turnedAway.error.code).toBe(grpc.status.UNAVAILABLE);
      expect(turnedAway.error.details).toMatch(/No connection established/);
      expect(refused.length).toBeGreaterThan(3); // newcomer's tries are counted too

      // Two raw connections close: two places free, one for a raw connection, one for newcomer.
      raws[0]!.destroy();
      raws[1]!.destroy();
      await waitFor(() => open === 1, 'the server to count the two closed connections');
      expect(await raw()).toBe(true);
      // Wait for newcomer's next try rather than fail while its last one is still refused.
      const waitForReady = new grpc.Metadata();
      waitForReady.setOptions({ waitForReady: true });
      const welcomed = await new Promise<grpc.ServiceError | null>((resolve) =>
        newcomer.getPayment(
          { paymentId: 'pay_4' },
          waitForReady,
          { deadline: deadlineIn(5_000) },
          (error) => resolve(error),
        ),
      );
      expect(welcomed).toBeNull();
      expect(open).toBe(3);
    } finally {
      for (const session of raws) session.destroy();
      client.close();
      newcomer.close();
      stopServer(running);
    }
  });

  it("keeps each call's peer address, which the admin bound on wrong tokens counts by", async () => {
    const running = await startServer((server) =>
      server.addService(PaymentServiceService, {
        ...echo,
        getPayment: unary<GetPaymentRequest, GetPaymentResponse>(async (_request, call) =>
          GetPaymentResponse.fromPartial({ payment: { paymentId: call.getPeer() } }),
        ),
      }),
    );
    const client = new PaymentServiceClient(running.address, grpc.credentials.createInsecure());
    try {
      const outcome = await callUnary(client.getPayment.bind(client), { paymentId: 'pay_1' });
      if (!outcome.ok) throw outcome.error;
      expect(outcome.response.payment?.paymentId).toMatch(/^127\.0\.0\.1:\d+$/);
    } finally {
      client.close();
      stopServer(running);
    }
  });

  it('rejects a nonsensical bound', () => {
    for (const connectionsMax of [0, -1, 1.5, Number.NaN]) {
      expect(() => createGrpcServer({ maxMessageBytes: LIMIT_BYTES, connectionsMax })).toThrow(
        RangeError,
      );
    }
  });
});

describe('a TLS port', () => {
  let certificates: TestCertificates | undefined;
  let credentials: grpc.ServerCredentials;
  let clientCredentials: grpc.ChannelCredentials;
  beforeAll(async () => {
    certificates = await makeTestCertificates();
    credentials = serverCredentials({
      cert: await readFile(certificates.serverCert),
      key: await readFile(certificates.serverKey),
      clientCa: undefined,
    }).credentials;
    clientCredentials = grpc.credentials.createSsl(await readFile(certificates.caCert));
  });
  afterAll(async () => certificates?.remove());

  /** A TLS client with its own connection, retried quickly when it is refused. */
  const tlsClient = (address: string) =>
    new PaymentServiceClient(address, clientCredentials, {
      'grpc.ssl_target_name_override': 'localhost',
      'grpc.use_local_subchannel_pool': 1,
      'grpc.initial_reconnect_backoff_ms': 50,
      'grpc.max_reconnect_backoff_ms': 50,
    });

  /**
   * A TCP connection to `port` that never sends a byte of a handshake; `closedAfterMs` is how long
   * the server took to close it, or undefined when it is still open after 5 s (Node's own bound
   * is 120 s).
   */
  function silentConnection(port: number): {
    socket: net.Socket;
    closedAfterMs: Promise<number | undefined>;
  } {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined); // a reset is a close too: 'close' says it
    const closedAfterMs = new Promise<number | undefined>((resolve) => {
      const startedAt = Date.now();
      const timer = setTimeout(() => resolve(undefined), 5_000);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve(Date.now() - startedAt);
      });
    });
    return { socket, closedAfterMs };
  }

  it('closes a connection that does not finish its handshake within tlsHandshakeMs, and keeps one that did', async () => {
    let accepted = 0;
    let open = 0;
    const running = await startServer((server) => server.addService(PaymentServiceService, echo), {
      credentials,
      // Long enough for the real client's own handshake on a loaded CI machine.
      tlsHandshakeMs: 1_000,
      observer: {
        open: (now) => {
          if (now > open) accepted += 1;
          open = now;
        },
      },
    });
    const client = tlsClient(running.address);
    // What grpc-js would say of the closed connection (its logger is console.error by default).
    const logged: unknown[][] = [];
    grpc.setLogger({ error: (...args: unknown[]) => logged.push(args) });
    let silent: net.Socket | undefined;
    try {
      expect((await callUnary(client.getPayment.bind(client), { paymentId: 'pay_1' })).ok).toBe(
        true,
      );
      expect(accepted).toBe(1);

      const connection = silentConnection(running.port);
      silent = connection.socket;
      const closedAfterMs = await connection.closedAfterMs;
      expect(closedAfterMs).toBeDefined();
      expect(closedAfterMs).toBeGreaterThanOrEqual(900);
      await waitFor(() => open === 1, 'the server to count the closed connection');
      expect(running.server.connectionsOpen).toBe(1);

      // Its handshake done, the TLS client's connection outlives the bound: no new connection.
      const again = await callUnary(client.getPayment.bind(client), { paymentId: 'pay_2' });
      if (!again.ok) throw again.error;
      expect(again.response.payment?.paymentId).toBe('pay_2');
      expect(accepted).toBe(2);
      expect(logged).toEqual([]);
    } finally {
      grpc.setLogger(console);
      silent?.destroy();
      client.close();
      stopServer(running);
    }
  });

  it('lets a client in once the silent connections that fill connectionsMax run out of time', async () => {
    let open = 0;
    let refused = 0;
    const running = await startServer((server) => server.addService(PaymentServiceService, echo), {
      credentials,
      tlsHandshakeMs: 1_000,
      connectionsMax: 2,
      observer: {
        open: (now) => (open = now),
        refused: () => (refused += 1),
      },
    });
    const client = tlsClient(running.address);
    const silent = [silentConnection(running.port), silentConnection(running.port)];
    try {
      await waitFor(() => open === 2, 'the server to take both silent connections');
      // Refused while they hold both places, let in once they are closed: well within 5 s.
      const waitForReady = new grpc.Metadata();
      waitForReady.setOptions({ waitForReady: true });
      const welcomed = await new Promise<grpc.ServiceError | null>((resolve) =>
        client.getPayment(
          { paymentId: 'pay_1' },
          waitForReady,
          { deadline: deadlineIn(5_000) },
          (error) => resolve(error),
        ),
      );
      expect(welcomed).toBeNull();
      expect(refused).toBeGreaterThan(0);
      expect(await Promise.all(silent.map((connection) => connection.closedAfterMs))).not.toContain(
        undefined,
      );
      expect(open).toBe(1);
    } finally {
      for (const connection of silent) connection.socket.destroy();
      client.close();
      stopServer(running);
    }
  });

  it("overrides every one of grpc-js's credential methods, so none runs on the wrapper's own state", () => {
    // grpc-js calls these `_` methods on a server's credentials; one the wrapper inherits would
    // answer from the copy of the options it was constructed with, not from the wrapped
    // credentials (whose watchers get pushed certificates). An upgrade that adds one fails here.
    const called = Object.getOwnPropertyNames(grpc.ServerCredentials.prototype).filter((name) =>
      name.startsWith('_'),
    );
    expect(called).toContain('_getConstructorOptions');
    const overridden = Object.getOwnPropertyNames(HandshakeBoundCredentials.prototype);
    expect(called.filter((name) => !overridden.includes(name))).toEqual([]);
  });

  it('rejects a nonsensical handshake bound', () => {
    for (const tlsHandshakeMs of [0, -1, 1.5, Number.NaN]) {
      expect(() => createGrpcServer({ maxMessageBytes: LIMIT_BYTES, tlsHandshakeMs })).toThrow(
        RangeError,
      );
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

  it('listens on the addresses of a name, and frees the port when shut down', async () => {
    const server = createGrpcServer({ maxMessageBytes: LIMIT_BYTES });
    server.addService(PaymentServiceService, echo);
    const port = await listen(server, 'localhost', 0);
    const client = new PaymentServiceClient(`localhost:${port}`, grpc.credentials.createInsecure());
    try {
      const outcome = await callUnary(client.getPayment.bind(client), { paymentId: 'pay_1' });
      if (!outcome.ok) throw outcome.error;
    } finally {
      client.close();
      server.forceShutdown();
    }
    const connected = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    expect(connected).toBe(false);
    await expect(listen(server, '127.0.0.1', 0)).rejects.toThrow(/shut down/);
  });
});
