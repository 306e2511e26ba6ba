/**
 * A minimal HTTP router on node:http for Settle's HTTP port (webhooks in, health, and later the
 * REST twin, admin pages and metrics). Bodies are read with a size limit; a handler that throws
 * answers 500 with a generic message, never a stack. A client that goes away before its body
 * ended is its own outcome (ClientAbortedError): reported apart, answered with nothing.
 */
import http from 'node:http';

export type HttpRequest = Readonly<{
  method: string;
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  /** Path parameters captured by `:name` segments. */
  params: Readonly<Record<string, string>>;
  /**
   * Reads the raw body; rejects with HttpError 413 beyond `limitBytes`, and with
   * ClientAbortedError when the client goes away before the body ends.
   */
  body: (limitBytes: number) => Promise<Buffer>;
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

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
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
 * Requests whose body was refused as too large: the rest of the body is not read, so their
 * answer closes the connection (the client learns why from the 413 instead of a reset, and no
 * more of the body is taken in).
 */
const closeAfterAnswer = new WeakSet<http.IncomingMessage>();

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
      reject(new HttpError(413, `body larger than ${limitBytes} bytes`));
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

export type HttpServerOptions = Readonly<{
  /** A request whose client went away before its body ended (at debug: not a server fault). */
  onClientAborted?: (context: { method: string; path: string }) => void;
}>;

export function createHttpServer(
  routes: () => readonly Route[],
  onError: (error: unknown, context: Record<string, unknown>) => void,
  options: HttpServerOptions = {},
): http.Server {
  const server = http.createServer((req, res) => {
    const send = (response: HttpResponse) => {
      if (res.headersSent) return;
      const close = closeAfterAnswer.has(req);
      res.writeHead(response.status, {
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
      send(
        json(400, { error: { code: '400', message: 'the request target is not a valid path' } }),
      );
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
        allowed === ''
          ? json(404, {
              error: { code: 'NOT_FOUND', message: `no route for ${method} ${url.pathname}` },
            })
          : json(
              405,
              {
                error: {
                  code: 'METHOD_NOT_ALLOWED',
                  message: `${url.pathname} takes ${allowed}, not ${method}`,
                },
              },
              { allow: allowed },
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
      body: (limitBytes) => readBody(req, limitBytes),
    };
    route.handle(request).then(send, (error: unknown) => {
      if (error instanceof ClientAbortedError) {
        options.onClientAborted?.({ method, path: url.pathname });
        if (!res.destroyed) res.destroy();
        return;
      }
      if (error instanceof HttpError) {
        send(json(error.status, { error: { code: String(error.status), message: error.message } }));
        return;
      }
      onError(error, { method, path: url.pathname });
      send(json(500, { error: { code: 'INTERNAL', message: 'internal error' } }));
    });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.keepAliveTimeout = 5_000;
  return server;
}

/** Listens on host:port; `setting` is the configuration that chose them, named if in use. */
export function listenHttp(
  server: http.Server,
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
