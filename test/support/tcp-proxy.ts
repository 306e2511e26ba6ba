/**
 * A TCP proxy on 127.0.0.1 for fault injection: put it between Settle and MySQL (or NATS), then
 * cut every connection and refuse new ones (`down()`), and let them through again (`up()`).
 */
import net from 'node:net';

export type TcpProxy = Readonly<{
  port: number;
  down: () => void;
  up: () => void;
  /** Destroys live connections but keeps accepting new ones (a connection kill). */
  killConnections: () => number;
  close: () => Promise<void>;
}>;

export function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  let accepting = true;
  const server = net.createServer((client) => {
    if (!accepting) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target.port, target.host);
    sockets.add(client);
    sockets.add(upstream);
    const cleanup = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', cleanup).on('close', cleanup);
    upstream.on('error', cleanup).on('close', cleanup);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const killConnections = () => {
    const count = sockets.size;
    for (const socket of sockets) socket.destroy();
    sockets.clear();
    return count;
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
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
        close: () =>
          new Promise<void>((done) => {
            killConnections();
            server.close(() => done());
          }),
      });
    });
  });
}
