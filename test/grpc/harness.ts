/**
 * Shared helpers for the gRPC tests: a real server on 127.0.0.1:0 (as grpc-js's own
 * test/common.ts TestServer), promise wrappers for client calls, and waiting on a condition with
 * a deadline instead of sleeping.
 */
import * as grpc from '@grpc/grpc-js';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { constants } from 'node:os';
import {
  createGrpcServer,
  listen,
  type GrpcConnectionObserver,
  type GrpcServer,
} from '../../src/grpc/server.js';

export type RunningServer = Readonly<{ server: GrpcServer; address: string; port: number }>;

/** Creates a server, lets `setup` add services, binds 127.0.0.1:0 and returns the address. */
export async function startServer(
  setup: (server: grpc.Server) => void,
  options: {
    maxMessageBytes?: number;
    connectionIdleMsMax?: number;
    connectionsMax?: number;
    observer?: GrpcConnectionObserver;
    credentials?: grpc.ServerCredentials;
    tlsHandshakeMs?: number;
  } = {},
): Promise<RunningServer> {
  const server = createGrpcServer({
    maxMessageBytes: options.maxMessageBytes ?? 4 * 1024 * 1024,
    ...(options.connectionIdleMsMax !== undefined
      ? { connectionIdleMsMax: options.connectionIdleMsMax }
      : {}),
    ...(options.connectionsMax !== undefined ? { connectionsMax: options.connectionsMax } : {}),
    ...(options.observer !== undefined ? { observer: options.observer } : {}),
    ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
    ...(options.tlsHandshakeMs !== undefined ? { tlsHandshakeMs: options.tlsHandshakeMs } : {}),
  });
  setup(server);
  const port = await listen(server, '127.0.0.1', 0);
  return { server, address: `127.0.0.1:${port}`, port };
}

export function stopServer(running: RunningServer | undefined): void {
  running?.server.forceShutdown();
}

/** A deadline `ms` from now, for client calls: a hang fails the test instead of stalling it. */
export function deadlineIn(ms: number): Date {
  return new Date(Date.now() + ms);
}

/** The outcome of a unary call, error or response, without throwing. */
export type UnaryOutcome<Response> =
  | { ok: true; response: Response; headers: grpc.Metadata }
  | { ok: false; error: grpc.ServiceError; headers: grpc.Metadata | undefined };

/** Calls a generated unary client method and resolves with its outcome and initial metadata. */
export function callUnary<Request, Response>(
  method: (
    request: Request,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (error: grpc.ServiceError | null, response: Response) => void,
  ) => grpc.ClientUnaryCall,
  request: Request,
  metadata = new grpc.Metadata(),
): Promise<UnaryOutcome<Response>> {
  return new Promise((resolve) => {
    let headers: grpc.Metadata | undefined;
    const call = method(request, metadata, { deadline: deadlineIn(5_000) }, (error, response) => {
      if (error) resolve({ ok: false, error, headers });
      else resolve({ ok: true, response, headers: headers ?? new grpc.Metadata() });
    });
    call.on('metadata', (received: grpc.Metadata) => {
      headers = received;
    });
  });
}

/** Polls `condition` every 5 ms until it holds, or throws after `timeoutMs`. */
export async function waitFor(
  condition: () => boolean,
  what: string,
  timeoutMs = 2_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * A raw HTTP/2 connection to 127.0.0.1:`port`, no gRPC client in between; `accepted` is true once
 * the server has sent its SETTINGS (grpc-js took the connection), false when it is closed first,
 * and 'no answer' when neither happens within 3 s. Destroy `session` when done.
 */
export function openRawConnection(port: number): {
  session: http2.ClientHttp2Session;
  accepted: Promise<boolean | 'no answer'>;
} {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', () => {}); // a refused connection may end in ECONNRESET: 'close' says it
  const accepted = new Promise<boolean | 'no answer'>((resolve) => {
    const timer = setTimeout(() => resolve('no answer'), 3_000);
    session.once('remoteSettings', () => {
      clearTimeout(timer);
      resolve(true);
    });
    session.once('close', () => {
      clearTimeout(timer);
      resolve(false);
    });
  });
  return { session, accepted };
}

/**
 * Hands each listener on 127.0.0.1:`port` in this process `count` accept failures (EMFILE), the
 * way libuv reports one: through the listening handle's `onconnection(status)`, which Node's C++
 * side calls with a negative errno when accept fails and which emits 'error' (syscall accept,
 * code EMFILE) on the net.Server. Synchronously, as libuv's old accept loop reported a lasting
 * EMFILE. Node 20 on Linux reports no failure of its own (libuv sheds the connection; see
 * src/grpc/server.ts), so tests of the handler have no other way to see one. Returns how many
 * listeners it found.
 */
export function failAccepts(port: number, count: number): number {
  const status = -constants.errno.EMFILE;
  const listeners = (process as unknown as { _getActiveHandles(): unknown[] })
    ._getActiveHandles()
    .filter(
      (handle): handle is net.Server =>
        handle instanceof net.Server && (handle.address() as net.AddressInfo | null)?.port === port,
    );
  for (const listener of listeners) {
    const handle = (listener as unknown as { _handle: { onconnection(status: number): void } })
      ._handle;
    for (let i = 0; i < count; i += 1) handle.onconnection(status);
  }
  return listeners.length;
}
