/**
 * Creates and binds the grpc-js server every Settle service runs on. Limits are explicit (STYLE.md
 * §7): message size both ways, keepalive, concurrent streams per connection and how long a
 * connection may stay open without a call. Requests over
 * maxMessageBytes are refused by grpc-js itself with RESOURCE_EXHAUSTED before any handler runs.
 */
import * as grpc from '@grpc/grpc-js';

/** Ping an idle connection after this long, to find dead peers of long WatchPayment streams. */
const KEEPALIVE_TIME_MS_DEFAULT = 60_000;
/** Drop the connection when a keepalive ping is not answered within this time. */
const KEEPALIVE_TIMEOUT_MS_DEFAULT = 20_000;
/** Concurrent calls per client connection; further calls wait in the client. */
const CONCURRENT_STREAMS_MAX_DEFAULT = 1_000;
/**
 * A connection with no call open this long is closed (GOAWAY; a client reconnects on its next
 * call): one that only answers keepalive pings would otherwise stay open for ever, and the
 * number of connections has no other bound. An open WatchPayment stream is a call.
 */
const CONNECTION_IDLE_MS_MAX_DEFAULT = 5 * 60_000;

export type GrpcServerOptions = Readonly<{
  /** Largest request and response message, in bytes (grpc-js defaults: 4 MiB in, unlimited out). */
  maxMessageBytes: number;
  /** Server-initiated keepalive ping interval, in milliseconds. Default 60 s. */
  keepaliveTimeMs?: number;
  /** How long to wait for a keepalive ping's answer, in milliseconds. Default 20 s. */
  keepaliveTimeoutMs?: number;
  /** Concurrent calls per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Default 1000. */
  concurrentStreamsMax?: number;
  /** A connection without an open call is closed after this long, in milliseconds. Default 5 min. */
  connectionIdleMsMax?: number;
}>;

/** Creates an unbound server with Settle's limits; add services, then `listen`. */
export function createGrpcServer(options: GrpcServerOptions): grpc.Server {
  const { maxMessageBytes } = options;
  if (!Number.isSafeInteger(maxMessageBytes) || maxMessageBytes <= 0) {
    throw new RangeError(`maxMessageBytes must be a positive integer, got ${maxMessageBytes}`);
  }
  return new grpc.Server({
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.max_send_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': options.keepaliveTimeMs ?? KEEPALIVE_TIME_MS_DEFAULT,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS_DEFAULT,
    'grpc.max_concurrent_streams': options.concurrentStreamsMax ?? CONCURRENT_STREAMS_MAX_DEFAULT,
    'grpc.max_connection_idle_ms': options.connectionIdleMsMax ?? CONNECTION_IDLE_MS_MAX_DEFAULT,
  });
}

/**
 * Binds `server` to host:port without TLS and resolves with the bound port (port 0 picks a free
 * one). grpc-js starts serving once bound. Rejects with a message naming the address and
 * SETTLE_GRPC_ADDR when the port is taken.
 */
export function listen(server: grpc.Server, host: string, port: number): Promise<number> {
  const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return new Promise((resolve, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (error, boundPort) => {
      if (!error) {
        resolve(boundPort);
      } else if (/EADDRINUSE/.test(error.message)) {
        reject(new Error(`address ${address} is in use; set SETTLE_GRPC_ADDR`, { cause: error }));
      } else {
        reject(new Error(`cannot listen on ${address}: ${error.message}`, { cause: error }));
      }
    });
  });
}
