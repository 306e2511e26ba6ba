/**
 * A TCP port on 127.0.0.1 that was free a moment ago (bound to 0, then released), for starting
 * servers whose ports must be known before they start (the chaos demo, the bench, the tests).
 */
import net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
