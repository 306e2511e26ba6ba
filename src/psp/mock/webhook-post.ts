/**
 * POSTs webhook bodies over `node:http`/`node:https` through keep-alive agents, so a busy sender
 * reuses a few sockets instead of opening one per delivery. It replaced `fetch`, whose undici
 * machinery (web streams, AbortSignal.any, transferables) cost as much CPU per webhook as the
 * rest of the mock's work together.
 *
 * The semantics are those the sender had with `fetch(…, { redirect: 'manual' })`: the outcome is
 * decided by the status line (2xx is delivered, anything else, 3xx included, is a failure), no
 * redirect is followed, and the answer's body is read and thrown away, at most
 * RESPONSE_BYTES_MAX of it. Every request has a hard deadline that covers waiting for a socket,
 * connecting, the answer and its body: when it passes, the request and its socket are destroyed.
 */
import { Agent as HttpAgent, request as httpRequest, type ClientRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';

/** A receiver's answer body longer than this is cut off and its socket closed. */
const RESPONSE_BYTES_MAX = 64 * 1024;
/**
 * An idle kept-alive socket is closed after this long. It stays below Node's server default
 * (keepAliveTimeout 5 s), so the sender does not pick a socket the receiver is closing.
 */
const IDLE_SOCKET_MS = 4_000;
/** Parsed notification URLs kept; there are few distinct ones (usually one). */
const TARGETS_CACHED_MAX = 64;

export type WebhookPosterOptions = Readonly<{
  /** Sockets per receiver origin at most, idle ones included. */
  socketsMax: number;
  /** The deadline of one POST, in milliseconds. */
  requestTimeoutMs: number;
}>;

type Target = Readonly<{
  https: boolean;
  hostname: string;
  port: number;
  path: string;
}>;

export class WebhookPoster {
  readonly #options: WebhookPosterOptions;
  readonly #http: HttpAgent;
  readonly #https: HttpsAgent;
  readonly #targets = new Map<string, Target>();
  /** Requests not yet finished (body included); close() destroys them. */
  readonly #live = new Set<ClientRequest>();
  #closed = false;

  constructor(options: WebhookPosterOptions) {
    this.#options = options;
    const agentOptions = {
      keepAlive: true,
      maxSockets: options.socketsMax,
      maxFreeSockets: options.socketsMax,
      timeout: IDLE_SOCKET_MS,
      // The most recently used socket is the one least likely to have been closed by the peer.
      scheduling: 'lifo',
    } as const;
    this.#http = new HttpAgent(agentOptions);
    this.#https = new HttpsAgent(agentOptions);
  }

  /**
   * POSTs `body` to `url` with `headers` added; resolves with undefined on a 2xx answer, else
   * with a description of the failure ("HTTP 503", a network error, the deadline). Never rejects.
   */
  post(
    url: string,
    headers: Readonly<Record<string, string>>,
    body: string | Uint8Array,
  ): Promise<string | undefined> {
    if (this.#closed) return Promise.resolve('Error: the webhook sender is stopping');
    let target: Target;
    try {
      target = this.#target(url);
    } catch (error) {
      return Promise.resolve(describeError(error));
    }
    return new Promise((resolve) => {
      let settled = false;
      let answered = false;
      const settle = (outcome: string | undefined): void => {
        if (settled) return;
        settled = true;
        resolve(outcome);
      };
      const request = (target.https ? httpsRequest : httpRequest)(
        {
          method: 'POST',
          hostname: target.hostname,
          port: target.port,
          path: target.path,
          agent: target.https ? this.#https : this.#http,
          headers: { ...headers, 'Content-Length': Buffer.byteLength(body) },
        },
        (response) => {
          answered = true;
          const status = response.statusCode ?? 0;
          // The status line decides, as it did with fetch; the body is only drained so the
          // socket can be reused, and a body that runs long costs the socket, not the outcome.
          settle(status >= 200 && status < 300 ? undefined : `HTTP ${status}`);
          let bytes = 0;
          response.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (bytes > RESPONSE_BYTES_MAX) request.destroy();
          });
          response.on('error', () => undefined);
          response.on('close', done);
        },
      );
      const timer = setTimeout(() => {
        request.destroy(
          new WebhookTimeoutError(`no answer within ${this.#options.requestTimeoutMs} ms`),
        );
      }, this.#options.requestTimeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.#live.delete(request);
      };
      request.on('error', (error) => {
        settle(describeError(error));
        done();
      });
      request.on('close', () => {
        // Closed before any answer (destroyed by close()): never leave the caller waiting.
        settle('Error: the connection closed before an answer');
        if (!answered) done();
      });
      this.#live.add(request);
      request.end(body);
    });
  }

  /** Destroys the requests in flight (they resolve as failures) and every socket. */
  close(): void {
    this.#closed = true;
    for (const request of this.#live) request.destroy(new Error('the webhook sender is stopping'));
    this.#live.clear();
    this.#http.destroy();
    this.#https.destroy();
  }

  #target(url: string): Target {
    const cached = this.#targets.get(url);
    if (cached !== undefined) return cached;
    const parsed = new URL(url);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new TypeError(`not an http(s) URL: ${parsed.protocol}`);
    }
    const https = parsed.protocol === 'https:';
    const target: Target = Object.freeze({
      https,
      // URL keeps the brackets of an IPv6 literal; the socket wants the bare address.
      hostname: parsed.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: parsed.port === '' ? (https ? 443 : 80) : Number(parsed.port),
      path: `${parsed.pathname}${parsed.search}`,
    });
    if (this.#targets.size >= TARGETS_CACHED_MAX) this.#targets.clear();
    this.#targets.set(url, target);
    return target;
  }
}

class WebhookTimeoutError extends Error {
  override readonly name = 'TimeoutError';
}

function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}
