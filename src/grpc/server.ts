/**
 * Creates and binds the grpc-js server every Settle service runs on. Limits are explicit (STYLE.md
 * §7): message size both ways, keepalive, concurrent streams per connection, how long a TLS
 * handshake may take, how long a connection may stay open without a call, and how many
 * connections are open at once. Requests over maxMessageBytes are refused by grpc-js itself with
 * RESOURCE_EXHAUSTED before any handler runs.
 *
 * grpc-js has no bound on connections (its `bindAsync` listens with its own `http2.Server` and
 * takes every connection), so the server listens with its own `net.Server`s instead, counts the
 * connections it accepts, closes those past the bound at once, and hands the others to grpc-js
 * through its `createConnectionInjector`. Everything past the accept is grpc-js's: the TLS
 * handshake (when the server has secure credentials; its time bound is Settle's, through the
 * credentials), services, reflection, health, keepalive and the idle limit behave as with
 * `bindAsync`.
 *
 * A listener that fails to accept (EMFILE or ENFILE: out of file descriptors) must go on
 * listening. Node reports such a failure as 'error' on the `net.Server`, which kills the process
 * when nothing listens for it, so each listener has a handler that tells the observer. On Linux,
 * Node 20 (libuv 1.46) reports none, checked by experiment: libuv sheds the waiting connections
 * itself (it closes a descriptor it keeps in reserve, accepts and closes them, and reopens it),
 * and when it cannot reopen the reserve it leaves them waiting and polls again, a busy event loop
 * until a descriptor frees that no handler here sees. Older libuv on Unix reported each failed
 * accept, in a loop that could report thousands a second, so the observer counts each and logs
 * few. (libuv on Windows reports one and stops accepting on that listener: not a platform we run.)
 */
import * as grpc from '@grpc/grpc-js';
import { lookup } from 'node:dns/promises';
import type { SecureServerOptions } from 'node:http2';
import * as net from 'node:net';
import type { SecureContextOptions } from 'node:tls';
import { withDeadline } from '../domain/deadline.js';
import { GRPC_CONNECTIONS_MAX_DEFAULT } from './limits.js';
import { TLS_HANDSHAKE_MS_MAX, type TlsFiles } from '../tls.js';

/** Ping an idle connection after this long, to find dead peers of long WatchPayment streams. */
const KEEPALIVE_TIME_MS_DEFAULT = 60_000;
/** Drop the connection when a keepalive ping is not answered within this time. */
const KEEPALIVE_TIMEOUT_MS_DEFAULT = 20_000;
/** Concurrent calls per client connection; further calls wait in the client. */
const CONCURRENT_STREAMS_MAX_DEFAULT = 1_000;
/**
 * A connection with no call open this long is closed (GOAWAY; a client reconnects on its next
 * call): one that only answers keepalive pings would otherwise hold one of connectionsMax for
 * ever. An open WatchPayment stream is a call.
 */
const CONNECTION_IDLE_MS_MAX_DEFAULT = 5 * 60_000;
/** The warning a service logs for `acceptFailed` (at most once a second, with a count). */
export const ACCEPT_FAILED_MESSAGE = 'gRPC listener failed to accept a connection';
/** How long resolving the listen host may take (a name, such as localhost, not an address). */
const LISTEN_LOOKUP_MS_MAX = 10_000;

/** What the server tells of its connections, for metrics and logs. */
export type GrpcConnectionObserver = Readonly<{
  /** The number of open connections changed (one accepted, or one closed). */
  open?: (open: number) => void;
  /** A connection was closed unanswered: `connectionsMax` were open. */
  refused?: (refused: { remoteAddress: string | undefined }) => void;
  /**
   * A listener failed to accept a connection (`error.code` EMFILE or ENFILE: out of file
   * descriptors) and keeps listening. Called once per failure, possibly thousands of times a
   * second: count each, log a few.
   */
  acceptFailed?: (error: NodeJS.ErrnoException) => void;
}>;

export type GrpcServerOptions = Readonly<{
  /** Largest request and response message, in bytes (grpc-js defaults: 4 MiB in, unlimited out). */
  maxMessageBytes: number;
  /** Largest response message, in bytes, when it differs from the largest request's. */
  maxSendBytes?: number;
  /** Server-initiated keepalive ping interval, in milliseconds. Default 60 s. */
  keepaliveTimeMs?: number;
  /** How long to wait for a keepalive ping's answer, in milliseconds. Default 20 s. */
  keepaliveTimeoutMs?: number;
  /** Concurrent calls per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Default 1000. */
  concurrentStreamsMax?: number;
  /** A connection without an open call is closed after this long, in milliseconds. Default 5 min. */
  connectionIdleMsMax?: number;
  /** Open connections at once, all listen addresses together (GRPC_CONNECTIONS_MAX_DEFAULT). */
  connectionsMax?: number;
  observer?: GrpcConnectionObserver;
  /**
   * TLS of every connection (serverCredentials); plaintext when left out. A connection that fails
   * its handshake, or has not finished it within tlsHandshakeMs, is closed before any call, and
   * counts against connectionsMax until then.
   */
  credentials?: grpc.ServerCredentials;
  /** How long a client has to finish its TLS handshake, in ms (TLS_HANDSHAKE_MS_MAX; tests). */
  tlsHandshakeMs?: number;
}>;

/**
 * A grpc-js server whose connections come through its own listeners, at most `connectionsMax`
 * open at once. `tryShutdown` and `forceShutdown` close the listeners too, so callers stop it as
 * any grpc-js server.
 */
export class GrpcServer extends grpc.Server {
  readonly connectionsMax: number;
  readonly #observer: GrpcConnectionObserver;
  readonly #listeners: net.Server[] = [];
  readonly #injector: grpc.ConnectionInjector;
  #open = 0;
  #stopped = false;

  constructor(
    serverOptions: grpc.ServerOptions,
    connectionsMax: number,
    observer: GrpcConnectionObserver = {},
    credentials: grpc.ServerCredentials = grpc.ServerCredentials.createInsecure(),
  ) {
    super(serverOptions);
    this.connectionsMax = connectionsMax;
    this.#observer = observer;
    // With secure credentials grpc-js runs the TLS handshake on each injected socket itself.
    this.#injector = this.createConnectionInjector(credentials);
  }

  /** Connections open now (accepted and not yet closed). */
  get connectionsOpen(): number {
    return this.#open;
  }

  /**
   * Listens on the addresses of `host` (a name may have several, as localhost has) on one port,
   * and resolves with it; port 0 picks a free one. As grpc-js's bindAsync, an address that cannot
   * be bound is skipped (say ::1 where IPv6 is off) as long as another one is bound; rejects with
   * the first address's error when none is.
   */
  async listenOn(host: string, port: number): Promise<number> {
    if (this.#stopped) throw new Error('the gRPC server is shut down');
    const addresses =
      net.isIP(host) !== 0
        ? [host]
        : (
            await withDeadline(lookup(host, { all: true }), LISTEN_LOOKUP_MS_MAX).catch(
              (error: unknown) => {
                throw new Error(`cannot resolve ${host}: ${String(error)}`, { cause: error });
              },
            )
          ).map((found) => found.address);
    let firstError: Error | undefined;
    let bound = 0;
    let boundPort = port;
    // Port 0 on the first address that binds, then that port on the others, as grpc-js binds.
    for (const address of new Set(addresses)) {
      const listener = net.createServer((socket) => this.#accept(socket));
      try {
        boundPort = await listenOne(listener, address, boundPort);
      } catch (error) {
        firstError ??= error instanceof Error ? error : new Error(String(error));
        continue;
      }
      // Without a handler an accept error would be thrown out of the event loop.
      listener.on('error', (error: NodeJS.ErrnoException) => this.#observer.acceptFailed?.(error));
      // Shut down while this address was being bound: nothing may stay listening.
      if (this.#stopped) listener.close();
      else this.#listeners.push(listener);
      bound += 1;
    }
    if (this.#stopped) throw new Error('the gRPC server was shut down while it began to listen');
    if (bound === 0) throw firstError ?? new Error(`${host} has no address to listen on`);
    return boundPort;
  }

  override tryShutdown(callback: (error?: Error) => void): void {
    this.#closeListeners();
    super.tryShutdown(callback);
  }

  override forceShutdown(): void {
    this.#closeListeners();
    super.forceShutdown();
  }

  #accept(socket: net.Socket): void {
    if (this.#open >= this.connectionsMax) {
      // Before any HTTP/2 byte: the client sees its connection closed and tries again later
      // (grpc-js: UNAVAILABLE, reconnecting with backoff). A refusal costs no more than an accept.
      const remoteAddress = socket.remoteAddress;
      socket.destroy();
      this.#observer.refused?.({ remoteAddress });
      return;
    }
    this.#open += 1;
    this.#observer.open?.(this.#open);
    socket.once('close', () => {
      this.#open -= 1;
      this.#observer.open?.(this.#open);
    });
    this.#injector.injectConnection(socket);
  }

  #closeListeners(): void {
    this.#stopped = true;
    // Stop accepting; the connections already handed over are grpc-js's to close.
    for (const listener of this.#listeners.splice(0)) listener.close();
  }
}

/** Creates an unbound server with Settle's limits; add services, then `listen`. */
export function createGrpcServer(options: GrpcServerOptions): GrpcServer {
  const { maxMessageBytes } = options;
  if (!Number.isSafeInteger(maxMessageBytes) || maxMessageBytes <= 0) {
    throw new RangeError(`maxMessageBytes must be a positive integer, got ${maxMessageBytes}`);
  }
  const maxSendBytes = options.maxSendBytes ?? maxMessageBytes;
  if (!Number.isSafeInteger(maxSendBytes) || maxSendBytes <= 0) {
    throw new RangeError(`maxSendBytes must be a positive integer, got ${maxSendBytes}`);
  }
  const connectionsMax = options.connectionsMax ?? GRPC_CONNECTIONS_MAX_DEFAULT;
  if (!Number.isSafeInteger(connectionsMax) || connectionsMax <= 0) {
    throw new RangeError(`connectionsMax must be a positive integer, got ${connectionsMax}`);
  }
  const tlsHandshakeMs = options.tlsHandshakeMs ?? TLS_HANDSHAKE_MS_MAX;
  // Node takes a handshakeTimeout of 0 for "unset", which is its 120 s.
  if (!Number.isSafeInteger(tlsHandshakeMs) || tlsHandshakeMs <= 0) {
    throw new RangeError(`tlsHandshakeMs must be a positive integer, got ${tlsHandshakeMs}`);
  }
  const { credentials } = options;
  return new GrpcServer(
    {
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxSendBytes,
      'grpc.keepalive_time_ms': options.keepaliveTimeMs ?? KEEPALIVE_TIME_MS_DEFAULT,
      'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS_DEFAULT,
      'grpc.max_concurrent_streams': options.concurrentStreamsMax ?? CONCURRENT_STREAMS_MAX_DEFAULT,
      'grpc.max_connection_idle_ms': options.connectionIdleMsMax ?? CONNECTION_IDLE_MS_MAX_DEFAULT,
    },
    connectionsMax,
    options.observer,
    credentials?._isSecure() === true
      ? new HandshakeBoundCredentials(credentials, tlsHandshakeMs)
      : credentials,
  );
}

/**
 * Secure credentials whose server gives each TLS handshake `handshakeMs`. grpc-js sets no
 * handshakeTimeout and has no option for one, so its TLS server would wait Node's 120 s for a
 * client that connects and says nothing; but it creates that server with
 * `_getConstructorOptions()` spread into `http2.createSecureServer`'s options, and Node's TLS
 * server takes `handshakeTimeout` from there (grpc-js 1.14's createHttp2Server; the tests of a
 * silent TLS client in test/grpc/server.test.ts fail if an upgrade drops it). Everything else
 * is the wrapped credentials', as in grpc-js's own InterceptorServerCredentials: the watchers go
 * to them, so certificates pushed after start (serverCredentials' `update`) still reach the
 * server. A timed-out handshake is a TLS client error, which Node's HTTP/2 server answers by
 * destroying the socket, so its connection is closed, and given back to connectionsMax, without
 * a log line or an 'error'. Each of grpc-js's `_` methods is delegated by hand; a test fails when
 * an upgrade adds one this class does not override (it would run on this wrapper's own state).
 */
export class HandshakeBoundCredentials extends grpc.ServerCredentials {
  readonly #credentials: grpc.ServerCredentials;
  readonly #handshakeMs: number;

  constructor(credentials: grpc.ServerCredentials, handshakeMs: number) {
    super(credentials._getConstructorOptions());
    this.#credentials = credentials;
    this.#handshakeMs = handshakeMs;
  }

  override _isSecure(): boolean {
    return this.#credentials._isSecure();
  }

  override _getConstructorOptions(): SecureServerOptions | null {
    const options = this.#credentials._getConstructorOptions();
    return options === null ? null : { ...options, handshakeTimeout: this.#handshakeMs };
  }

  override _getSecureContextOptions(): SecureContextOptions | null {
    return this.#credentials._getSecureContextOptions();
  }

  override _addWatcher(watcher: Parameters<grpc.ServerCredentials['_addWatcher']>[0]): void {
    this.#credentials._addWatcher(watcher);
  }

  override _removeWatcher(watcher: Parameters<grpc.ServerCredentials['_removeWatcher']>[0]): void {
    this.#credentials._removeWatcher(watcher);
  }

  override _getInterceptors(): grpc.ServerInterceptor[] {
    return this.#credentials._getInterceptors();
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return (
      other instanceof HandshakeBoundCredentials &&
      other.#handshakeMs === this.#handshakeMs &&
      this.#credentials._equals(other.#credentials)
    );
  }
}

/**
 * A grpc-js certificate provider whose certificates are pushed to it (`update`), once checked,
 * rather than read by it: grpc-js's FileWatcherCertificateProvider would serve whatever the files
 * hold at its next read, a key half written or not the certificate's included. grpc-js listens
 * while its server has a connection injector or a bound port, and sets each update as the TLS
 * context of the handshakes that follow; connections already open keep their session.
 */
class PushedCertificateProvider implements grpc.experimental.CertificateProvider {
  #tls: TlsFiles;
  readonly #identityListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>();
  readonly #caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>();

  constructor(tls: TlsFiles) {
    this.#tls = tls;
  }

  /** Serves `tls` to the handshakes that follow. Its client CA must be set as at construction. */
  update(tls: TlsFiles): void {
    this.#tls = tls;
    // The CA first: between the two calls grpc-js holds the new CA with the old certificate,
    // never a context without a CA (which it would take for "not loaded" and drop connections).
    const ca = this.#caUpdate();
    if (ca !== undefined) for (const listener of this.#caListeners) listener(ca);
    const identity = this.#identityUpdate();
    for (const listener of this.#identityListeners) listener(identity);
  }

  addCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    this.#caListeners.add(listener);
    // grpc-js adds its listeners before the watcher they feed: an answer now would be lost.
    const ca = this.#caUpdate();
    if (ca !== undefined) process.nextTick(listener, ca);
  }

  removeCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    this.#caListeners.delete(listener);
  }

  addIdentityCertificateListener(
    listener: grpc.experimental.IdentityCertificateUpdateListener,
  ): void {
    this.#identityListeners.add(listener);
    process.nextTick(listener, this.#identityUpdate());
  }

  removeIdentityCertificateListener(
    listener: grpc.experimental.IdentityCertificateUpdateListener,
  ): void {
    this.#identityListeners.delete(listener);
  }

  #caUpdate(): grpc.experimental.CaCertificateUpdate | undefined {
    const { clientCa } = this.#tls;
    return clientCa === undefined ? undefined : { caCertificate: clientCa };
  }

  #identityUpdate(): grpc.experimental.IdentityCertificateUpdate {
    return { certificate: this.#tls.cert, privateKey: this.#tls.key };
  }
}

/**
 * The credentials of a gRPC port with `tls` (its certificate chain and key, and the CAs whose
 * client certificates it requires, if any), or plaintext ones without. With TLS, `update` serves
 * new files (checked beforehand) to the handshakes that follow.
 */
export function serverCredentials(tls: TlsFiles | undefined): {
  credentials: grpc.ServerCredentials;
  update: ((tls: TlsFiles) => void) | undefined;
} {
  if (tls === undefined) {
    return { credentials: grpc.ServerCredentials.createInsecure(), update: undefined };
  }
  const provider = new PushedCertificateProvider(tls);
  const requireClientCertificate = tls.clientCa !== undefined;
  return {
    // grpc-js 1.14 names these parameters the wrong way round (its .d.ts says CA first), but
    // hands them on as identity first, CA second: the identity provider is the one never null.
    credentials: grpc.experimental.createCertificateProviderServerCredentials(
      provider,
      requireClientCertificate ? provider : null,
      // requestCert and rejectUnauthorized: a client without a certificate the CA signed fails.
      requireClientCertificate,
    ),
    update: (next) => provider.update(next),
  };
}

/**
 * Binds `server` to host:port (with the TLS of its credentials, if any) and resolves with the bound port (port 0 picks a free
 * one). It serves once bound. Rejects with a message naming the address and the variable that
 * sets it (`addressVariable`, default SETTLE_GRPC_ADDR) when the port is taken.
 */
export async function listen(
  server: GrpcServer,
  host: string,
  port: number,
  options: Readonly<{ addressVariable?: string }> = {},
): Promise<number> {
  const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  try {
    return await server.listenOn(host, port);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      const variable = options.addressVariable ?? 'SETTLE_GRPC_ADDR';
      throw new Error(`address ${address} is in use; set ${variable}`, { cause: error });
    }
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`cannot listen on ${address}: ${message}`, { cause: error });
  }
}

/** Listens on one address and resolves with the bound port, or rejects with the listen error. */
function listenOne(listener: net.Server, address: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(port, address, () => {
      listener.off('error', reject);
      resolve((listener.address() as net.AddressInfo).port);
    });
  });
}
