/**
 * Goal: a node started with GRPC_TLS_* and HTTP_TLS_* serves TLS on both ports and nothing else:
 * a client that trusts its CA gets answers (payments, health, reflection, /healthz), a plaintext
 * client and one that trusts another CA are refused, and with a client CA set only clients whose
 * certificate that CA signed get through (mTLS). Refusals come out as UNAVAILABLE saying what
 * failed, and the HTTP port counts its failed handshakes by why. Every refusal here would be an
 * answer on a plaintext node, so each test fails if TLS were not on.
 * Method: throwaway CAs and certificates made with openssl (test/support/certificates.ts); a
 * startStack() node with TLS on both ports, and a second node on the same stack that also
 * requires client certificates; the TypeScript client, grpc-js, buf curl and node:https as
 * clients.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSettle, type SettleNode } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { TLS_HANDSHAKE_FAILURE } from '../../src/tls.js';
import {
  createSettleClient,
  TLS_FAILURE,
  TlsHandshakeError,
  type SettleClientOptions,
} from '../../src/client/index.js';
import { makeTestCertificates, type TestCertificates } from '../support/certificates.js';
import { freePort, metricSample, startStack, waitFor, type Stack } from '../support/harness.js';

const execFileAsync = promisify(execFile);
const BUF = path.resolve(import.meta.dirname, '../../node_modules/.bin/buf');
const CALL_TIMEOUT_MS = 5_000;

let certs: TestCertificates;
/** The admin panel's token, for its login over HTTPS. */
const ADMIN_TOKEN_FOR_TLS = 'tls-admin-token-0123456789';
let stack: Stack;
/** The same stack's second node: TLS on both ports, and client certificates required. */
let mtls: SettleNode;
const pem = (file: string) => readFileSync(file);

beforeAll(async () => {
  certs = await makeTestCertificates();
  stack = await startStack({
    env: {
      GRPC_TLS_CERT_FILE: certs.serverCert,
      GRPC_TLS_KEY_FILE: certs.serverKey,
      HTTP_TLS_CERT_FILE: certs.serverCert,
      HTTP_TLS_KEY_FILE: certs.serverKey,
      ADMIN_TOKEN: ADMIN_TOKEN_FOR_TLS,
    },
  });
  const [grpcPort, httpPort] = await Promise.all([freePort(), freePort()]);
  mtls = await startSettle(
    loadConfig({
      ...stack.env,
      SETTLE_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
      GRPC_TLS_CLIENT_CA_FILE: certs.caCert,
      HTTP_TLS_CLIENT_CA_FILE: certs.caCert,
    }),
    { nodeName: 'test-node-mtls' },
  );
});
afterAll(async () => {
  await mtls?.stop();
  await stack?.stop();
  await certs?.remove();
});

/** A client of `node`'s gRPC port; closed when `use` is done. */
async function withClient<T>(
  node: SettleNode,
  options: SettleClientOptions,
  use: (client: ReturnType<typeof createSettleClient>) => Promise<T>,
  host = '127.0.0.1',
): Promise<T> {
  const client = createSettleClient(`${host}:${node.grpcPort}`, {
    defaultTimeoutMs: CALL_TIMEOUT_MS,
    ...options,
  });
  try {
    return await use(client);
  } finally {
    client.close();
  }
}

/** GetPayment of an id no payment has: NOT_FOUND is an answer, so the call got through. */
async function getUnknownPayment(client: ReturnType<typeof createSettleClient>): Promise<unknown> {
  try {
    await client.payments.getPayment({ paymentId: 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G' });
    return 'answered';
  } catch (error) {
    return error;
  }
}

function createPayment(client: ReturnType<typeof createSettleClient>) {
  return client.payments.createPayment({
    requestId: randomUUID(),
    buyerId: 'buyer-tls',
    currencyCode: 'USD',
    orders: [{ sellerId: 'seller-tls', amountMinor: 1999n }],
  });
}

type CheckResponse = { status: string };
type HealthClient = grpc.Client & {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: CheckResponse) => void,
  ): grpc.ClientUnaryCall;
};

function healthCheck(address: string, credentials: grpc.ChannelCredentials): Promise<string> {
  const definition = protoLoader.loadSync(protoPath, { keepCase: true, enums: String });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  const client = new loaded.grpc.health.v1.Health(address, credentials) as unknown as HealthClient;
  return new Promise<string>((resolve, reject) =>
    client.Check({ service: '' }, { deadline: Date.now() + CALL_TIMEOUT_MS }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolve(response?.status ?? 'UNKNOWN');
    }),
  );
}

type HttpAnswer = { status: number; body: string };

/** GET `path` on `port` over HTTPS (with `tls`) or plain HTTP; rejects when the connection fails. */
function get(
  port: number,
  urlPath: string,
  tls: https.RequestOptions | undefined,
): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const request = (tls === undefined ? http : https).request(
      {
        host: '127.0.0.1',
        port,
        path: urlPath,
        timeout: CALL_TIMEOUT_MS,
        ...(tls !== undefined && { ...tls, servername: 'localhost' }),
      },
      (response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (body += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
        response.on('error', reject);
      },
    );
    request.on('timeout', () => request.destroy(new Error('timed out')));
    request.on('error', reject);
    request.end();
  });
}

describe('the gRPC port with TLS', () => {
  it('answers a client that trusts its CA: CreatePayment, GetPayment and health', async () => {
    await withClient(stack.settle, { tls: { ca: pem(certs.caCert) } }, async (client) => {
      const { payment } = await createPayment(client);
      expect(payment?.paymentId).toMatch(/^pay_/);
      const { payment: got } = await client.payments.getPayment({
        paymentId: payment?.paymentId ?? '',
      });
      expect(got?.amountMinor).toBe(1999n);
    });
    const address = `127.0.0.1:${stack.settle.grpcPort}`;
    await expect(healthCheck(address, grpc.credentials.createSsl(pem(certs.caCert)))).resolves.toBe(
      'SERVING',
    );
  });

  it('serves reflection over TLS: buf curl finds and calls a method with --cacert', async () => {
    const { stdout } = await execFileAsync(
      BUF,
      [
        'curl',
        '--protocol',
        'grpc',
        '--cacert',
        certs.caCert,
        '-d',
        '{"service": ""}',
        `https://127.0.0.1:${stack.settle.grpcPort}/grpc.health.v1.Health/Check`,
      ],
      { timeout: 30_000 },
    );
    expect(JSON.parse(stdout)).toEqual({ status: 'SERVING' });
  });

  it('refuses a plaintext client: UNAVAILABLE, no connection', async () => {
    const error = await withClient(stack.settle, {}, getUnknownPayment);
    expect(error).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect((error as grpc.ServiceError).details).toMatch(/^No connection established/);
    await expect(
      healthCheck(`127.0.0.1:${stack.settle.grpcPort}`, grpc.credentials.createInsecure()),
    ).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  it('is refused by a client that trusts another CA, which says so', async () => {
    const error = await withClient(
      stack.settle,
      { tls: { ca: pem(certs.otherCaCert) } },
      getUnknownPayment,
    );
    expect(error).toBeInstanceOf(TlsHandshakeError);
    expect(error).toMatchObject({
      code: grpc.status.UNAVAILABLE,
      failure: TLS_FAILURE.serverNotTrusted,
    });
    expect((error as TlsHandshakeError).details).toMatch(
      new RegExp(
        `^No connection established: the TLS handshake with 127\\.0\\.0\\.1:${stack.settle.grpcPort} ` +
          "failed: the node's certificate is not signed by a CA this client trusts",
      ),
    );
  });

  it('checks its certificate against the server name: one it has passes, another fails', async () => {
    const ca = pem(certs.caCert);
    await expect(
      withClient(stack.settle, { tls: { ca, serverName: 'localhost' } }, getUnknownPayment),
    ).resolves.toMatchObject({ code: grpc.status.NOT_FOUND });
    const error = await withClient(
      stack.settle,
      { tls: { ca, serverName: 'settle.example' } },
      getUnknownPayment,
    );
    expect(error).toMatchObject({ failure: TLS_FAILURE.serverNameMismatch });
    expect((error as TlsHandshakeError).details).toContain('settle.example');
  });
});

describe('the gRPC port with a client CA (mTLS)', () => {
  it('refuses a client without a certificate, saying one is required', async () => {
    const error = await withClient(mtls, { tls: { ca: pem(certs.caCert) } }, getUnknownPayment);
    expect(error).toMatchObject({
      code: grpc.status.UNAVAILABLE,
      failure: TLS_FAILURE.clientCertificateRequired,
    });
    expect((error as TlsHandshakeError).details).toMatch(
      /the node requires a client certificate and this client gave none/,
    );
  });

  it('refuses a client whose certificate another CA signed', async () => {
    const error = await withClient(
      mtls,
      {
        tls: {
          ca: pem(certs.caCert),
          cert: pem(certs.otherClientCert),
          key: pem(certs.otherClientKey),
        },
      },
      getUnknownPayment,
    );
    expect(error).toMatchObject({
      code: grpc.status.UNAVAILABLE,
      failure: TLS_FAILURE.clientCertificateRefused,
    });
  });

  it('answers a client whose certificate its client CA signed', async () => {
    const tls = { ca: pem(certs.caCert), cert: pem(certs.clientCert), key: pem(certs.clientKey) };
    await withClient(mtls, { tls }, async (client) => {
      const { payment } = await createPayment(client);
      const { payment: got } = await client.payments.getPayment({
        paymentId: payment?.paymentId ?? '',
      });
      expect(got?.paymentId).toBe(payment?.paymentId);
    });
  });
});

const HANDSHAKE_FAILURES = 'settle_tls_handshake_failures_total';

describe('the HTTP port with TLS', () => {
  const ca = () => pem(certs.caCert);

  it('exports every handshake-failure reason at 0 before any failure, so increase() sees the first', async () => {
    const { body } = await stack.settle.metrics.render();
    for (const reason of Object.values(TLS_HANDSHAKE_FAILURE)) {
      expect(metricSample(body, HANDSHAKE_FAILURES, { port: 'http', reason }), reason).toBe(0);
    }
  });

  it('answers /healthz over HTTPS to a client that trusts its CA', async () => {
    const answer = await get(stack.settle.httpPort, '/healthz', { ca: ca() });
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toMatchObject({ status: 'ok', mysql: 'up', nats: 'up' });
  });

  it('marks the admin session cookie Secure, ADMIN_COOKIE_SECURE or not', async () => {
    const form = new URLSearchParams({
      token: ADMIN_TOKEN_FOR_TLS,
      actor: 'tls-test',
      next: '/admin/payments',
    }).toString();
    const setCookie = await new Promise<string[]>((resolve, reject) => {
      const request = https.request(
        {
          host: '127.0.0.1',
          port: stack.settle.httpPort,
          path: '/admin/login',
          method: 'POST',
          headers: {
            'content-type': 'application/x-www-form-urlencoded',
            'content-length': String(Buffer.byteLength(form)),
          },
          ca: ca(),
          servername: 'localhost',
          timeout: CALL_TIMEOUT_MS,
        },
        (response) => {
          response.resume();
          response.on('end', () => resolve(response.headers['set-cookie'] ?? []));
        },
      );
      request.on('timeout', () => request.destroy(new Error('timed out')));
      request.on('error', reject);
      request.end(form);
    });
    expect(setCookie).toHaveLength(1);
    expect(setCookie[0]).toMatch(/; Secure(;|$)/i);
  });

  it('refuses plain HTTP and a client that trusts another CA', async () => {
    await expect(get(stack.settle.httpPort, '/healthz', undefined)).rejects.toThrow(
      /socket hang up|ECONNRESET/,
    );
    await expect(
      get(stack.settle.httpPort, '/healthz', { ca: pem(certs.otherCaCert) }),
    ).rejects.toThrow(/unable to verify the first certificate|self-signed certificate/);
  });

  it('with a client CA, answers only a client whose certificate it signed', async () => {
    const noCertificate = { port: 'http', reason: 'no_client_certificate' };
    const failures = async () =>
      metricSample((await mtls.metrics.render()).body, HANDSHAKE_FAILURES, noCertificate);
    expect(await failures()).toBe(0);
    await expect(get(mtls.httpPort, '/livez', { ca: ca() })).rejects.toThrow(
      /certificate required|socket hang up|ECONNRESET/,
    );
    // Counted as the node fails the handshake, which the client may learn of first.
    await waitFor(async () => (await failures()) === 1, {
      timeoutMs: 5_000,
      what: 'the failed handshake to be counted',
    });
    const answer = await get(mtls.httpPort, '/livez', {
      ca: ca(),
      cert: pem(certs.clientCert),
      key: pem(certs.clientKey),
    });
    expect(answer.status).toBe(200);
  });
});

describe('the client', () => {
  it('refuses TLS options it cannot use, naming them, before anything is sent', () => {
    expect(() => createSettleClient('127.0.0.1:1', { tls: { ca: 'not a certificate' } })).toThrow(
      /tls\.ca holds no PEM certificate/,
    );
    expect(() =>
      createSettleClient('127.0.0.1:1', {
        tls: { ca: pem(certs.caCert), cert: pem(certs.clientCert) },
      }),
    ).toThrow(/tls\.cert and tls\.key go together/);
    expect(() =>
      createSettleClient('127.0.0.1:1', {
        tls: { cert: pem(certs.clientCert), key: pem(certs.otherClientKey) },
      }),
    ).toThrow(/tls\.key: is not the private key of the first certificate in tls\.cert/);
    expect(() =>
      createSettleClient('127.0.0.1:1', {
        tls: {},
        credentials: grpc.credentials.createInsecure(),
      }),
    ).toThrow(/tls or credentials, not both/);
  });
});
