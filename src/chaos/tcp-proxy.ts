/**
 * A TCP proxy on 127.0.0.1 for fault injection without touching the shared servers: put it
 * between a Settle node and MySQL (or NATS), then cut every connection and refuse new ones
 * (`down()`), let them through again (`up()`), or kill the live connections only
 * (`killConnections()`). With several targets it is also a small failover balancer: each new
 * connection goes to the next target in turn, and to the one after if that one refuses, so the PSP
 * can reach whichever Settle node is alive.
 *
 * A client is paused until its upstream connection is open, so no byte is lost when the first
 * target refuses and the next one is tried.
 */
import net from 'node:net';

export type ProxyTarget = Readonly<{ host: string; port: number }>;

export type TcpProxy = Readonly<{
  port: number;
  /** Destroys every connection and refuses new ones until up(). */
  down: () => void;
  up: () => void;
  /** Destroys live connections but keeps accepting new ones (a connection kill). */
  killConnections: () => number;
  /** Sends new connections to these targets from now on (live ones keep theirs). */
  retarget: (targets: readonly ProxyTarget[]) => void;
  close: () => Promise<void>;
}>;

export type TcpProxyOptions = Readonly<{
  /** How long one upstream connect may take before the next target is tried, in milliseconds. */
  connectTimeoutMs?: number;
  /**
   * The port to listen on; 0 (the default) picks a free one. A fixed port lets a client be started
   * before its server exists (nothing listens: connections are refused) and the proxy be started
   * on that port later.
   */
  port?: number;
}>;

const CONNECT_TIMEOUT_MS = 2_000;
/** Client connections open at once at most; more are refused. */
const CONNECTIONS_MAX = 1_024;

export function startTcpProxy(
  target: ProxyTarget | readonly ProxyTarget[],
  options: TcpProxyOptions = {},
): Promise<TcpProxy> {
  let targets: readonly ProxyTarget[] = Array.isArray(target)
    ? (target as readonly ProxyTarget[])
    : [target as ProxyTarget];
  if (targets.length === 0) throw new Error('a TCP proxy needs at least one target');
  const connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
  const sockets = new Set<net.Socket>();
  let clients = 0;
  let nextTarget = 0;
  let accepting = true;

  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    if (!accepting || clients >= CONNECTIONS_MAX) {
      client.destroy();
      return;
    }
    clients += 1;
    sockets.add(client);
    let upstream: net.Socket | undefined;
    let closed = false;
    const closeBoth = () => {
      if (closed) return;
      closed = true;
      clients -= 1;
      client.destroy();
      upstream?.destroy();
      sockets.delete(client);
      if (upstream !== undefined) sockets.delete(upstream);
    };
    client.on('error', closeBoth).on('close', closeBoth);

    const first = nextTarget;
    nextTarget = (nextTarget + 1) % targets.length;
    const connectTo = (tried: number) => {
      const chosen = targets[(first + tried) % targets.length] as ProxyTarget;
      const socket = net.connect(chosen.port, chosen.host);
      upstream = socket;
      sockets.add(socket);
      let connected = false;
      let ended = false;
      const timer = setTimeout(
        () => socket.destroy(new Error('connect timeout')),
        connectTimeoutMs,
      );
      // 'error' is followed by 'close': act once per upstream socket.
      const failed = () => {
        if (ended) return;
        ended = true;
        clearTimeout(timer);
        sockets.delete(socket);
        if (connected || closed) return closeBoth();
        if (tried + 1 < targets.length && accepting) return connectTo(tried + 1);
        closeBoth();
      };
      socket.once('connect', () => {
        clearTimeout(timer);
        connected = true;
        if (closed) {
          socket.destroy();
          return;
        }
        client.pipe(socket);
        socket.pipe(client);
      });
      socket.on('error', failed).on('close', failed);
    };
    connectTo(0);
  });

  const killConnections = () => {
    const count = sockets.size;
    for (const socket of [...sockets]) socket.destroy();
    sockets.clear();
    return count;
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      const address = server.address();
      resolve({
        port: typeof address === 'object' && address !== null ? address.port : 0,
        down: () => {
          accepting = false;
          killConnections();
        },
        up: () => {
          accepting = true;
        },
        killConnections,
        retarget: (next) => {
          if (next.length === 0) throw new Error('a TCP proxy needs at least one target');
          targets = [...next];
          nextTarget = 0;
        },
        close: () =>
          new Promise<void>((done) => {
            accepting = false;
            killConnections();
            server.close(() => done());
          }),
      });
    });
  });
}
