/**
 * Goal: Settle's HTTP port answers whatever arrives on the wire and stays up: a request target
 * the URL parser refuses gets 400 (it once threw out of the request handler and ended the
 * process, webhook receiver and gRPC with it); a body past the route's limit gets 413 whether its
 * length was declared or it came chunked (a chunked one was answered with a reset), and the
 * connection is closed after that answer; a body the client aborts is reported as such, never as
 * a handler's error, even when the route asks for the body only after the client has gone; a body
 * trickled past the request timeout gets 408 as the timeout ends, not up to 30 s later. Every
 * error the router answers itself has the REST twin's body (code, reason, message, retryable,
 * correlation_id) and echoes x-request-id. Over TLS, a handshake not finished in time is closed,
 * and every failed handshake is reported with why (the reasons the metrics count).
 * Method: the real router on a loopback port, driven with raw HTTP/1.1 over a socket, so the
 * request targets and framings are exactly what is written; over TLS, node:tls clients with and
 * without certificates from throwaway CAs, curl (an OpenSSL client, which sends alerts where Node's
 * hang up), and sockets that never start a handshake.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHttpServer, json, type HttpServer, type Route } from '../../src/http/router.js';
import type { TlsHandshakeFailure } from '../../src/tls.js';
import { makeTestCertificates } from '../support/certificates.js';

const LIMIT_BYTES = 1_024;
let server: HttpServer;
let port: number;
const errors: unknown[] = [];
const aborted: Array<Record<string, unknown>> = [];

const routes: Route[] = [
  { method: 'GET', path: '/healthz', handle: async () => json(200, { ok: true }) },
  {
    method: 'POST',
    path: '/echo',
    handle: async (request) => json(200, { bytes: (await request.body(LIMIT_BYTES)).length }),
  },
  {
    method: 'POST',
    path: '/late',
    // Reads the body only after the client is gone: it must not wait for an 'end' never coming.
    handle: async (request) => {
      await new Promise((resolve) => setTimeout(resolve, 200));
      return json(200, { bytes: (await request.body(LIMIT_BYTES)).length });
    },
  },
  {
    method: 'GET',
    path: '/boom',
    handle: async () => {
      throw new Error('a bug whose message must not leave the server');
    },
  },
];

beforeAll(async () => {
  server = createHttpServer(
    () => routes,
    (error) => errors.push(error),
    { onClientAborted: (context) => aborted.push(context) },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

/** Writes `raw` on a new connection; answers what came back before the server closed it. */
function exchange(raw: string | Buffer, { endAfterMs = 1_500 } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(received);
    }, endAfterMs);
    socket.on('data', (chunk) => (received += chunk.toString('latin1')));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(received);
    });
    socket.on('error', (error) => {
      clearTimeout(timer);
      // A reset after the answer still counts what was answered; a reset before it does not.
      if (received !== '') resolve(received);
      else reject(error);
    });
    socket.write(raw);
  });
}

const statusOf = (answer: string) => answer.split('\r\n', 1)[0];

/** The JSON body and the x-request-id header of a raw answer. */
function errorOf(answer: string): { body: unknown; requestId: string | undefined } {
  const [head = '', rest = ''] = answer.split('\r\n\r\n', 2);
  const requestId = /^x-request-id: (.+)$/im.exec(head)?.[1];
  // The body may come chunked: the JSON object is what lies between its first and last brace.
  const body = rest.slice(rest.indexOf('{'), rest.lastIndexOf('}') + 1);
  return { body: JSON.parse(body) as unknown, requestId };
}

describe('the HTTP router', () => {
  it.each(['///', '//[/', '//%/', 'http://a:b/'])(
    'answers 400 to the request target %j and stays up',
    async (target) => {
      const answer = await exchange(
        `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
      );
      expect(statusOf(answer)).toBe('HTTP/1.1 400 Bad Request');
      expect(answer).toContain('request target: is not a valid path');
      const health = await exchange(
        'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      );
      expect(statusOf(health)).toBe('HTTP/1.1 200 OK');
    },
  );

  it('answers 413 to a declared body over the limit, and closes the connection', async () => {
    const answer = await exchange(
      `POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ${LIMIT_BYTES * 64}\r\n\r\n` +
        'x'.repeat(LIMIT_BYTES * 2),
    );
    expect(statusOf(answer)).toBe('HTTP/1.1 413 Payload Too Large');
    expect(answer.toLowerCase()).toContain('connection: close');
  });

  it('answers 413, not a reset, to a chunked body that grows past the limit', async () => {
    const chunk = 'y'.repeat(512);
    const body = `${chunk.length.toString(16)}\r\n${chunk}\r\n`.repeat(8);
    const answer = await exchange(
      `POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${body}0\r\n\r\n`,
    );
    expect(statusOf(answer)).toBe('HTTP/1.1 413 Payload Too Large');
    expect(answer).toContain(`body larger than ${LIMIT_BYTES} bytes`);
  });

  it('answers 405 with Allow to a known path and another method, 404 to an unknown path', async () => {
    const wrongMethod = await exchange(
      'DELETE /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(statusOf(wrongMethod)).toBe('HTTP/1.1 405 Method Not Allowed');
    expect(wrongMethod.toLowerCase()).toContain('allow: post');
    expect(wrongMethod).toContain('/echo takes POST, not DELETE');
    const unknown = await exchange('GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(statusOf(unknown)).toBe('HTTP/1.1 404 Not Found');
  });

  it('answers HEAD as GET without a body, and lists HEAD beside GET in Allow', async () => {
    const head = await exchange('HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(statusOf(head)).toBe('HTTP/1.1 200 OK');
    expect(head.toLowerCase()).toContain('content-type: application/json');
    expect(head.endsWith('\r\n\r\n')).toBe(true);
    const post = await exchange(
      'POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n',
    );
    expect(statusOf(post)).toBe('HTTP/1.1 405 Method Not Allowed');
    expect(post.toLowerCase()).toContain('allow: get, head');
    const headOfPost = await exchange(
      'HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(statusOf(headOfPost)).toBe('HTTP/1.1 405 Method Not Allowed');
  });

  it.each<[string, string, string, Record<string, unknown>]>([
    [
      'a path with another method (405)',
      'DELETE /echo',
      'HTTP/1.1 405 Method Not Allowed',
      {
        code: 'UNIMPLEMENTED',
        reason: 'METHOD_NOT_ALLOWED',
        message: '/echo takes POST, not DELETE',
        retryable: false,
      },
    ],
    [
      'an unknown path (404)',
      'GET /nowhere',
      'HTTP/1.1 404 Not Found',
      {
        code: 'NOT_FOUND',
        reason: 'NO_ROUTE',
        message: "route 'GET /nowhere' not found",
        retryable: false,
      },
    ],
    [
      'a request target that is not a path (400)',
      'GET //[/',
      'HTTP/1.1 400 Bad Request',
      {
        code: 'INVALID_ARGUMENT',
        reason: 'INVALID_REQUEST_TARGET',
        message: 'request target: is not a valid path',
        retryable: false,
      },
    ],
    [
      'a body over the limit (413)',
      `POST /echo`,
      'HTTP/1.1 413 Payload Too Large',
      {
        code: 'RESOURCE_EXHAUSTED',
        reason: 'BODY_TOO_LARGE',
        message: `body larger than ${LIMIT_BYTES} bytes`,
        retryable: false,
      },
    ],
  ])(
    'answers %s with the documented error body and x-request-id',
    async (_name, line, status, error) => {
      const length = line.startsWith('POST') ? LIMIT_BYTES * 2 : 0;
      const headers = `Host: x\r\nConnection: close\r\nContent-Length: ${length}\r\n`;
      // The caller's id is echoed, and quoted in the body to find the server's log lines.
      const mine = await exchange(
        `${line} HTTP/1.1\r\n${headers}x-request-id: req-router-1\r\n\r\n${'x'.repeat(length)}`,
      );
      expect(statusOf(mine)).toBe(status);
      expect(errorOf(mine)).toEqual({
        body: { error: { ...error, correlation_id: 'req-router-1' } },
        requestId: 'req-router-1',
      });
      // Without one, a fresh id is made and sent back.
      const fresh = errorOf(
        await exchange(`${line} HTTP/1.1\r\n${headers}\r\n${'x'.repeat(length)}`),
      );
      expect(fresh.requestId).toMatch(/^[0-9a-f-]{36}$/);
      expect(fresh.body).toEqual({ error: { ...error, correlation_id: fresh.requestId } });
    },
  );

  it.each<[string, string, string, Record<string, unknown>]>([
    [
      'a request line past 16 KiB (431)',
      `GET /echo?q=${'x'.repeat(20_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      'HTTP/1.1 431 Request Header Fields Too Large',
      {
        code: 'RESOURCE_EXHAUSTED',
        reason: 'HEADERS_TOO_LARGE',
        message:
          'the request line and headers are larger than this server takes (16 KiB); send a ' +
          'shorter URL (fewer or shorter query parameters) or fewer headers',
        retryable: false,
      },
    ],
    [
      'a header line without a colon (400)',
      'GET /echo HTTP/1.1\r\nHost x\r\n\r\n',
      'HTTP/1.1 400 Bad Request',
      {
        code: 'INVALID_ARGUMENT',
        reason: 'MALFORMED_REQUEST',
        message: 'request: is not a valid HTTP/1.1 request',
        retryable: false,
      },
    ],
  ])(
    "answers what Node's parser refuses, %s, with the documented error body and closes",
    async (_name, raw, status, error) => {
      // Node used to answer these itself: the status line, and no body nor x-request-id.
      const answer = await exchange(raw);
      expect(statusOf(answer)).toBe(status);
      const { body, requestId } = errorOf(answer);
      expect(requestId).toMatch(/^[0-9a-f-]{36}$/);
      expect(body).toEqual({ error: { ...error, correlation_id: requestId } });
      expect(answer.toLowerCase()).toContain('connection: close');
      const health = await exchange(
        'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      );
      expect(statusOf(health)).toBe('HTTP/1.1 200 OK');
    },
  );

  it('still reads a body within the limit, declared or chunked', async () => {
    const declared = await exchange(
      'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello',
    );
    expect(declared).toContain('{"bytes":5}');
    const chunked = await exchange(
      'POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n' +
        '5\r\nhello\r\n0\r\n\r\n',
    );
    expect(chunked).toContain('{"bytes":5}');
    expect(errors).toEqual([]);
  });

  it.each(['/echo', '/late'])(
    'reports a body the client aborts on %s as a client abort, not an error',
    async (path) => {
      const before = aborted.length;
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello`);
      await new Promise((resolve) => setTimeout(resolve, 50));
      socket.resetAndDestroy();
      const deadline = Date.now() + 2_000;
      while (aborted.length === before && errors.length === 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(errors).toEqual([]);
      expect(aborted.slice(before)).toEqual([{ method: 'POST', path }]);
    },
  );

  it('answers 408 and closes a body trickled past the request timeout, without waiting longer', async () => {
    // The timeout is checked periodically; Node's default period (30 s) once let a trickled body
    // hold its connection for up to twice the 30 s timeout. Shortened here to see it in time.
    const slow = createHttpServer(
      () => routes,
      (error) => errors.push(error),
    );
    slow.headersTimeout = 500;
    slow.requestTimeout = 500;
    await new Promise<void>((resolve) => slow.listen(0, '127.0.0.1', resolve));
    const socket = net.connect((slow.address() as AddressInfo).port, '127.0.0.1');
    const started = Date.now();
    let trickle: NodeJS.Timeout | undefined;
    try {
      const answer = await new Promise<string>((resolve) => {
        let received = '';
        socket.on('data', (chunk) => (received += chunk.toString('latin1')));
        socket.on('close', () => resolve(received));
        socket.on('error', () => resolve(received));
        socket.write('POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{');
        trickle = setInterval(() => socket.write(' '), 100);
      });
      expect(statusOf(answer)).toBe('HTTP/1.1 408 Request Timeout');
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      clearInterval(trickle);
      socket.destroy();
      slow.closeAllConnections();
      await new Promise((resolve) => slow.close(resolve));
    }
  }, 40_000);

  it('answers a handler bug 500 INTERNAL with the request id, and hands the bug to onError', async () => {
    const before = errors.length;
    const answer = await exchange(
      'GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-request-id: req-boom-1\r\n\r\n',
    );
    expect(statusOf(answer)).toBe('HTTP/1.1 500 Internal Server Error');
    expect(errorOf(answer)).toEqual({
      body: {
        error: {
          code: 'INTERNAL',
          reason: 'INTERNAL',
          message: 'internal error (request id req-boom-1)',
          retryable: false,
          correlation_id: 'req-boom-1',
        },
      },
      requestId: 'req-boom-1',
    });
    expect(errors.slice(before)).toHaveLength(1);
    errors.splice(before);
  });
});

describe('open connections', () => {
  it('are bounded: past connectionsMax a new one is closed at once, unanswered', async () => {
    const bounded = createHttpServer(
      () => routes,
      () => undefined,
      { connectionsMax: 2 },
    );
    await new Promise<void>((resolve) => bounded.listen(0, '127.0.0.1', resolve));
    const boundedPort = (bounded.address() as AddressInfo).port;
    const sockets: net.Socket[] = [];
    const open = () =>
      new Promise<net.Socket>((resolve, reject) => {
        const socket = net.connect(boundedPort, '127.0.0.1', () => resolve(socket));
        socket.on('error', reject);
        sockets.push(socket);
      });
    try {
      await open();
      await open();
      // Let the server count both before the third arrives.
      await new Promise((resolve) => setTimeout(resolve, 100));
      const third = await open();
      const closedUnanswered = await new Promise<boolean>((resolve) => {
        let answered = false;
        third.on('data', () => (answered = true));
        third.on('close', () => resolve(!answered));
        third.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
        setTimeout(() => resolve(false), 3_000);
      });
      expect(closedUnanswered).toBe(true);
    } finally {
      for (const socket of sockets) socket.destroy();
      bounded.closeAllConnections();
      await new Promise((resolve) => bounded.close(resolve));
    }
  });
});

describe('an HTTPS port', () => {
  it('closes a connection that does not finish its TLS handshake in time, and says so', async () => {
    const certificates = await makeTestCertificates();
    const failures: TlsHandshakeFailure[] = [];
    const secure = createHttpServer(
      () => routes,
      () => undefined,
      {
        tls: {
          cert: await readFile(certificates.serverCert),
          key: await readFile(certificates.serverKey),
          clientCa: undefined,
        },
        tlsHandshakeMs: 300,
        onTlsHandshakeFailed: (reason) => failures.push(reason),
      },
    );
    await new Promise<void>((resolve) => secure.listen(0, '127.0.0.1', resolve));
    const silent = net.connect((secure.address() as AddressInfo).port, '127.0.0.1');
    try {
      // Connected, and never a byte of a handshake: the slot must be given back.
      const closedAfterMs = await new Promise<number | undefined>((resolve) => {
        const started = Date.now();
        silent.on('error', () => undefined);
        silent.on('close', () => resolve(Date.now() - started));
        setTimeout(() => resolve(undefined), 5_000);
      });
      expect(closedAfterMs).toBeDefined();
      expect(closedAfterMs).toBeGreaterThanOrEqual(250);
      expect(failures).toEqual(['timeout']);
    } finally {
      silent.destroy();
      secure.closeAllConnections();
      await new Promise((resolve) => secure.close(resolve));
      await certificates.remove();
    }
  });

  it('tells why a handshake failed: no client certificate, one another CA signed, distrust, not TLS', async () => {
    const certificates = await makeTestCertificates();
    const failures: TlsHandshakeFailure[] = [];
    const pem = (file: string) => readFile(file);
    const secure = createHttpServer(
      () => routes,
      () => undefined,
      {
        tls: {
          cert: await pem(certificates.serverCert),
          key: await pem(certificates.serverKey),
          clientCa: await pem(certificates.caCert),
        },
        onTlsHandshakeFailed: (reason) => failures.push(reason),
      },
    );
    await new Promise<void>((resolve) => secure.listen(0, '127.0.0.1', resolve));
    const securePort = (secure.address() as AddressInfo).port;
    const ca = await pem(certificates.caCert);
    /** Whether a TLS client with `options` got /healthz answered; the port's failures since. */
    const attempt = async (options: tls.ConnectionOptions) => {
      const before = failures.length;
      const answered = await new Promise<boolean>((resolve) => {
        const socket = tls.connect({ port: securePort, host: '127.0.0.1', ...options });
        let answer = '';
        socket.on('secureConnect', () => socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'));
        socket.on('data', (chunk: Buffer) => {
          answer += chunk.toString();
          if (answer.includes('\r\n\r\n')) socket.destroy();
        });
        socket.on('error', () => undefined);
        socket.on('close', () => resolve(answer.startsWith('HTTP/1.1 200 ')));
        socket.setTimeout(5_000, () => socket.destroy());
      });
      // The server counts as it fails the handshake, which the client may learn of first.
      const deadline = Date.now() + 2_000;
      while (failures.length === before && !answered && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      return { answered, failed: failures.slice(before) };
    };
    try {
      const client = { servername: 'localhost', ca };
      expect(await attempt(client)).toEqual({
        answered: false,
        failed: ['no_client_certificate'],
      });
      expect(
        await attempt({
          ...client,
          cert: await pem(certificates.otherClientCert),
          key: await pem(certificates.otherClientKey),
        }),
      ).toEqual({ answered: false, failed: ['client_certificate_refused'] });
      expect(
        await attempt({
          ...client,
          cert: await pem(certificates.clientCert),
          key: await pem(certificates.clientKey),
        }),
      ).toEqual({ answered: true, failed: [] });
      // A client that does not trust the port's certificate hangs up mid-handshake.
      expect(
        await attempt({
          servername: 'localhost',
          ca: await pem(certificates.otherCaCert),
          cert: await pem(certificates.clientCert),
          key: await pem(certificates.clientKey),
        }),
      ).toEqual({ answered: false, failed: ['closed'] });
      // OpenSSL's clients (curl here) send an alert instead: unknown_ca, so ours is refused.
      const beforeCurl = failures.length;
      const curl = await new Promise<{ code: unknown; stdout: string }>((resolve) =>
        execFile(
          'curl',
          ['-s', '--cacert', certificates.otherCaCert, `https://localhost:${securePort}/healthz`],
          { timeout: 5_000 },
          (error, stdout) => resolve({ code: error?.code, stdout }),
        ),
      );
      // 60: curl could not verify the server's certificate.
      expect(curl).toEqual({ code: 60, stdout: '' });
      const curlDeadline = Date.now() + 2_000;
      while (failures.length === beforeCurl && Date.now() < curlDeadline) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(failures.slice(beforeCurl)).toEqual(['server_certificate_refused']);
      // Plain HTTP to the HTTPS port.
      const before = failures.length;
      const plain = net.connect(securePort, '127.0.0.1');
      plain.on('error', () => undefined);
      plain.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      await new Promise((resolve) => plain.on('close', resolve));
      expect(failures.slice(before)).toEqual(['protocol']);
    } finally {
      secure.closeAllConnections();
      await new Promise((resolve) => secure.close(resolve));
      await certificates.remove();
    }
  });
});
