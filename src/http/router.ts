/**
 * A minimal HTTP router on node:http for Settle's HTTP port (webhooks in, health, and later the
 * REST twin, admin pages and metrics). Bodies are read with a size limit; a handler that throws
 * answers 500 with a generic message, never a stack. A client that goes away before its body
 * ended is its own outcome (ClientAbortedError): reported apart, answered with nothing.
 *
 * Every exchange has one request id (the caller's `x-request-id`, or a fresh UUID), echoed in that
 * header on every answer. Every error answer, the router's own (404, 405, 400, 413, 500), the
 * routes', and those to what Node's parser refuses (431, 400, 408), is built by errorResponse:
 * the REST twin's documented body.
 */
import http from 'node:http';
import https from 'node:https';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import {
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
  UnimplementedError,
} from '../domain/errors.js';
import { requestIdOrNew } from '../grpc/adapters.js';
import { ApiTokenError } from '../grpc/api-auth.js';
import { toHttpError } from '../grpc/http-status.js';
import type { StatusOptions } from '../grpc/status.js';
import {
  TLS_HANDSHAKE_MS_MAX,
  tlsHandshakeFailure,
  type TlsFiles,
  type TlsHandshakeFailure,
} from '../tls.js';

export type HttpRequest = Readonly<{
  method: string;
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  /** Path parameters captured by `:name` segments. */
  params: Readonly<Record<string, string>>;
  /**
   * The peer address of the connection as the socket sees it (`req.socket.remoteAddress`);
   * undefined once the socket is gone. Behind a proxy, the proxy's. Forwarded headers are not
   * read into it: any client can write them; the admin panel asks ClientResolver
   * (src/admin/client-address.ts), which reads them only from TRUSTED_PROXIES.
   */
  remoteAddress: string | undefined;
  /**
   * The exchange's id: the caller's `x-request-id` when it is a sane one, else a fresh UUID. The
   * router echoes it on the answer; error bodies quote it as `correlation_id`.
   */
  requestId: string;
  /**
   * Reads the raw body; rejects with BodyTooLargeError beyond `limitBytes`, and with
   * ClientAbortedError when the client goes away before the body ends.
   */
  body: (limitBytes: number) => Promise<Buffer>;
  /**
   * The route answers without reading the body (a call refused by the rate limit): if the request
   * has one, the answer closes the connection, as a 413's does, so Node does not go on to read
   * and discard it to keep the connection alive.
   */
  leaveBodyUnread: () => void;
}>;

export type HttpResponse = Readonly<{
  status: number;
  headers?: Readonly<Record<string, string>>;
  body?: string | Buffer;
}>;

export type Route = Readonly<{
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** Literal segments and `:param` segments, e.g. /v1/payments/:id */
  path: string;
  handle: (request: HttpRequest) => Promise<HttpResponse>;
}>;

/**
 * An input error found at the HTTP layer, with a finer `reason` than INVALID_ARGUMENT (e.g.
 * MALFORMED_JSON). The message is `field: message`, as for every InvalidArgumentError.
 */
export class HttpInputError extends InvalidArgumentError {
  constructor(
    field: string,
    message: string,
    readonly reason: string,
  ) {
    super(field, message);
  }
}

/**
 * A body over the route's limit: RESOURCE_EXHAUSTED, as gRPC would say, but answered 413 rather
 * than 429, since waiting would not make it fit; not retryable.
 */
export class BodyTooLargeError extends ResourceExhaustedError {
  readonly reason = 'BODY_TOO_LARGE';
  readonly httpStatus = 413;
  constructor(limitBytes: number) {
    super(`body larger than ${limitBytes} bytes`, { retryable: false });
  }
}

/** A known path asked with a method it does not take: UNIMPLEMENTED (as grpc-gateway), 405. */
export class MethodNotAllowedError extends UnimplementedError {
  readonly reason = 'METHOD_NOT_ALLOWED';
  readonly httpStatus = 405;
  constructor(
    path: string,
    method: string,
    /** The methods the path takes, for the `Allow` header. */
    readonly allowed: string,
  ) {
    super(`${path} takes ${allowed}, not ${method}`);
  }
}

/**
 * The request line and headers together passed Node's limit (`maxHeaderSize`, 16 KiB by
 * default), most often a long query string: 431, as Node answers it, with the documented body.
 */
export class HeadersTooLargeError extends ResourceExhaustedError {
  readonly reason = 'HEADERS_TOO_LARGE';
  readonly httpStatus = 431;
  constructor() {
    super(
      'the request line and headers are larger than this server takes (16 KiB); send a shorter ' +
        'URL (fewer or shorter query parameters) or fewer headers',
      { retryable: false },
    );
  }
}

/** Bytes Node's HTTP parser refuses as a request (bad framing, a bad header): 400. */
class MalformedRequestError extends InvalidArgumentError {
  readonly reason = 'MALFORMED_REQUEST';
  constructor() {
    super('request', 'is not a valid HTTP/1.1 request');
  }
}

/** The request did not arrive within the server's requestTimeout or headersTimeout: 408. */
class RequestTimeoutError extends UnavailableError {
  readonly reason = 'REQUEST_TIMEOUT';
  readonly httpStatus = 408;
  constructor() {
    super('the request did not arrive in time; send it again');
  }
}

class NoRouteError extends NotFoundError {
  readonly reason = 'NO_ROUTE';
}

class RequestTargetError extends InvalidArgumentError {
  readonly reason = 'INVALID_REQUEST_TARGET';
  constructor() {
    super('request target', 'is not a valid path');
  }
}

/**
 * The one way an HTTP error answer is built, by the router and by the routes: toHttpError's body
 * (`code`, `reason`, `message`, `retryable`, `correlation_id`) and headers (`Retry-After`), plus
 * `x-request-id`. The status is the gRPC code's, unless the error names a more precise one
 * (`httpStatus`: 405, 413, or a route's own, such as the webhook's 400 for a bad signature).
 * Errors that map to INTERNAL go to `options.log`.
 */
export function errorResponse(
  error: unknown,
  requestId: string,
  options: StatusOptions = {},
): HttpResponse {
  const answer = toHttpError(error, requestId, options);
  const own = (error as { httpStatus?: unknown } | null)?.httpStatus;
  const status = typeof own === 'number' && own >= 400 && own <= 599 ? own : answer.status;
  return json(status, answer.body, {
    ...answer.headers,
    ...(error instanceof MethodNotAllowedError && { allow: error.allowed }),
    ...(error instanceof ApiTokenError && error.httpHeaders),
    'x-request-id': requestId,
  });
}

/**
 * The client closed or reset the connection before its request body ended. Not a server fault,
 * and nobody is left to read an answer: the router reports it apart from errors (at debug) and
 * sends nothing. Deliberately not an ECONNRESET-coded error, which status.ts would take for a lost
 * database connection (UNAVAILABLE, a 503).
 */
export class ClientAbortedError extends Error {
  override readonly name = 'ClientAbortedError';
  constructor(options?: ErrorOptions) {
    super('the client aborted the request before its body ended', options);
  }
}

/** The status a request its client aborted is recorded with (nginx's "client closed request"). */
export const CLIENT_CLOSED_REQUEST_STATUS = 499;

export function json(
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
): HttpResponse {
  return {
    status,
    headers: { 'content-type': 'application/json; charset=utf-8', ...headers },
    body: JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)),
  };
}

function match(pattern: string, path: string): Record<string, string> | undefined {
  const want = pattern.split('/').filter(Boolean);
  const got = path.split('/').filter(Boolean);
  if (want.length !== got.length) return undefined;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i += 1) {
    const segment = want[i] ?? '';
    const actual = got[i] ?? '';
    if (segment.startsWith(':')) {
      try {
        params[segment.slice(1)] = decodeURIComponent(actual);
      } catch {
        return undefined;
      }
    } else if (segment !== actual) return undefined;
  }
  return params;
}

/**
 * Requests whose body was refused as too large, or left unread (leaveBodyUnread): the rest of the
 * body is not read, so their answer closes the connection (the client learns why from the 413 or
 * 429 instead of a reset, and no more of the body is taken in).
 */
const closeAfterAnswer = new WeakSet<http.IncomingMessage>();

/** A request that sends a body: a content-length above 0, or one with no length (chunked). */
function hasBody(req: http.IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const declared = Number(req.headers['content-length'] ?? '0');
  return declared > 0;
}

function leaveBodyUnread(req: http.IncomingMessage): void {
  if (!hasBody(req) || req.readableEnded) return;
  closeAfterAnswer.add(req);
  req.pause();
}

function readBody(req: http.IncomingMessage, limitBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    // Gone before the route asked: its 'error' and 'close' have been and 'end' never comes.
    if (req.destroyed && !req.readableEnded) {
      reject(new ClientAbortedError());
      return;
    }
    const refuse = () => {
      closeAfterAnswer.add(req);
      req.pause();
      reject(new BodyTooLargeError(limitBytes));
    };
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > limitBytes) {
      refuse();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limitBytes) {
        // A body with no length (chunked) or a false one: refused once it passes the limit.
        req.off('data', onData);
        refuse();
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks)));
    // A reset or a close mid-body: 'error' (ECONNRESET, "aborted"), then 'close' without 'end'.
    // Once settled, a promise ignores later calls, so a 413 stays a 413.
    req.on('error', (error) => reject(new ClientAbortedError({ cause: error })));
    req.on('close', () => {
      if (!req.readableEnded) reject(new ClientAbortedError());
    });
  });
}

/** Open connections a node's HTTP server takes at once; past it a new one is closed at once. */
export const HTTP_CONNECTIONS_MAX_DEFAULT = 10_000;
/** A request's headers must have arrived this long after it began (else 408). */
const HEADERS_TIMEOUT_MS = 10_000;
/** A whole request, its body included, must have arrived this long after it began (else 408). */
const REQUEST_TIMEOUT_MS = 30_000;
/**
 * How often Node checks the two timeouts above. Its default is 30 s, which let a body trickled a
 * byte at a time hold its connection (and a slot of connectionsMax) for up to twice
 * REQUEST_TIMEOUT_MS.
 */
const TIMEOUT_CHECK_MS = 1_000;
const SERVER_OPTIONS: http.ServerOptions = { connectionsCheckingInterval: TIMEOUT_CHECK_MS };

export type HttpServerOptions = Readonly<{
  /** A request whose client went away before its body ended (at debug: not a server fault). */
  onClientAborted?: (context: { method: string; path: string }) => void;
  /** Open connections at once (HTTP_CONNECTIONS_MAX_DEFAULT). */
  connectionsMax?: number;
  /**
   * Serve HTTPS only, with this certificate chain and key (PEM); with `clientCa`, only to clients
   * whose certificate it signed (the handshake of any other fails). Plaintext when left out.
   */
  tls?: TlsFiles | undefined;
  /** How long a client has to finish its TLS handshake, in ms (TLS_HANDSHAKE_MS_MAX; tests). */
  tlsHandshakeMs?: number;
  /** A client's TLS handshake failed (with `tls` only), and why; its connection is closed. */
  onTlsHandshakeFailed?: (reason: TlsHandshakeFailure) => void;
}>;

/**
 * The TLS context of the HTTPS port, at start and for `setSecureContext` when its files are read
 * again: that call replaces every context option, so the minimum version must be given again.
 */
export function httpsContextOptions(tls: TlsFiles): SecureContextOptions {
  return {
    cert: tls.cert,
    key: tls.key,
    minVersion: 'TLSv1.2',
    ...(tls.clientCa !== undefined && { ca: tls.clientCa }),
  };
}

/** The HTTP port's server: plaintext, or HTTPS with `HttpServerOptions.tls`. */
export type HttpServer = http.Server | https.Server;

export function createHttpServer(
  routes: () => readonly Route[],
  onError: (error: unknown, context: Record<string, unknown>) => void,
  options: HttpServerOptions = {},
): HttpServer {
  const handle: http.RequestListener = (req, res) => {
    const requestId = requestIdOrNew(req.headers['x-request-id']);
    const send = (response: HttpResponse) => {
      if (res.headersSent) return;
      const close = closeAfterAnswer.has(req);
      res.writeHead(response.status, {
        'x-request-id': requestId,
        ...response.headers,
        ...(close && { connection: 'close' }),
      });
      res.end(response.body ?? '');
      if (close) res.once('finish', () => req.socket.destroy());
    };
    // Node accepts request targets the URL parser refuses (`///`, `//[/`): answered, never thrown
    // (a throw here would end the process).
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://localhost');
    } catch {
      send(errorResponse(new RequestTargetError(), requestId));
      return;
    }
    const method = req.method ?? 'GET';
    // HEAD is a GET whose body Node leaves out (RFC 9110 §9.3.2).
    const routed = method === 'HEAD' ? 'GET' : method;
    let params: Record<string, string> | undefined;
    const route = routes().find(
      (candidate) =>
        candidate.method === routed && (params = match(candidate.path, url.pathname)) !== undefined,
    );
    if (route === undefined || params === undefined) {
      const allowed = [
        ...new Set(
          routes()
            .filter((candidate) => match(candidate.path, url.pathname) !== undefined)
            .flatMap((candidate) =>
              candidate.method === 'GET' ? ['GET', 'HEAD'] : [candidate.method],
            ),
        ),
      ].join(', ');
      send(
        errorResponse(
          allowed === ''
            ? new NoRouteError('route', `${method} ${url.pathname}`)
            : new MethodNotAllowedError(url.pathname, method, allowed),
          requestId,
        ),
      );
      return;
    }
    const request: HttpRequest = {
      method: routed,
      path: url.pathname,
      query: url.searchParams,
      headers: req.headers,
      params,
      remoteAddress: req.socket.remoteAddress,
      requestId,
      body: (limitBytes) => readBody(req, limitBytes),
      leaveBodyUnread: () => leaveBodyUnread(req),
    };
    route.handle(request).then(send, (error: unknown) => {
      if (error instanceof ClientAbortedError) {
        options.onClientAborted?.({ method, path: url.pathname });
        if (!res.destroyed) res.destroy();
        return;
      }
      // A route's operating error maps to its own status; anything else is a bug: INTERNAL, and
      // onError is told (with the request id the answer quotes).
      send(
        errorResponse(error, requestId, {
          path: `${method} ${url.pathname}`,
          log: (bug) => onError(bug, { method, path: url.pathname, requestId }),
        }),
      );
    });
  };
  const { tls } = options;
  const server =
    tls === undefined
      ? http.createServer(SERVER_OPTIONS, handle)
      : https.createServer(
          {
            ...SERVER_OPTIONS,
            ...httpsContextOptions(tls),
            handshakeTimeout: options.tlsHandshakeMs ?? TLS_HANDSHAKE_MS_MAX,
            // A client without a certificate the CA signed fails the handshake, before any route.
            ...(tls.clientCa !== undefined && { requestCert: true, rejectUnauthorized: true }),
          },
          handle,
        );
  // Requests Node's parser refuses before any handler runs (headers over maxHeaderSize, bad
  // framing, a request that does not arrive in time) were answered by Node itself: the right
  // status, but with no body, so not the documented error body nor x-request-id.
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    // A TLS handshake that failed or ran out of time (Node passes its timeout on as a client
    // error) has no channel to answer on: a plaintext answer would be written into a socket that
    // never closes, holding one of connectionsMax for good.
    if (!socket.writable || (tls !== undefined && isTlsFailure(error))) {
      socket.destroy();
      return;
    }
    const refusal =
      error.code === 'HPE_HEADER_OVERFLOW'
        ? new HeadersTooLargeError()
        : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? new RequestTimeoutError()
          : new MalformedRequestError();
    const response = errorResponse(refusal, requestIdOrNew(undefined));
    const body = Buffer.from(response.body ?? '');
    const headers = Object.entries({
      ...response.headers,
      'content-length': String(body.length),
      connection: 'close',
    })
      .map(([name, value]) => `${name}: ${value}\r\n`)
      .join('');
    const reason = http.STATUS_CODES[response.status] ?? '';
    socket.end(
      Buffer.concat([Buffer.from(`HTTP/1.1 ${response.status} ${reason}\r\n${headers}\r\n`), body]),
    );
  });
  // Once per failed handshake, after the 'clientError' above (Node passes the failure on as one)
  // has closed the socket. Counted, not logged: a scanner would fill the log.
  if (tls !== undefined) {
    server.on('tlsClientError', (error: NodeJS.ErrnoException, socket: TLSSocket) =>
      options.onTlsHandshakeFailed?.(tlsHandshakeFailure(error, socket)),
    );
  }
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = 5_000;
  // Each open connection costs a socket and its buffers, and clients that open many and keep
  // them had no bound (file descriptors run out first, for every route at once).
  server.maxConnections = options.connectionsMax ?? HTTP_CONNECTIONS_MAX_DEFAULT;
  return server;
}

/** Listens on host:port; `setting` is the configuration that chose them, named if in use. */
export function listenHttp(
  server: HttpServer,
  host: string,
  port: number,
  setting: string,
): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(
        error.code === 'EADDRINUSE'
          ? new Error(`HTTP address ${host}:${port} is in use; set ${setting}`, { cause: error })
          : error,
      );
    });
    server.listen(port, host, () => {
      const address = server.address();
      resolve(typeof address === 'object' && address !== null ? address.port : port);
    });
  });
}

/** An error of the TLS layer (a handshake refused or not finished in time), not of HTTP. */
function isTlsFailure(error: NodeJS.ErrnoException): boolean {
  const code = error.code ?? '';
  return code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_');
}
