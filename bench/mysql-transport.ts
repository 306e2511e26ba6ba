/**
 * How the bench reaches MySQL. Every process of a run (the ceiling's script, Settle, the PSP mock,
 * the load generator) connects through the one URL chosen here, so the ceiling and Settle always
 * go the same way.
 *
 * `auto` (the default) takes the server's Unix socket when it has one on this machine, else TCP.
 * On one machine a Unix socket spares both sides the TCP stack for every packet, and MariaDB
 * answers each statement of a multi-statement packet with a packet of its own, so Settle's
 * one-trip transactions send few packets but receive many (docs/performance.md, "Over MariaDB's
 * Unix socket").
 * The socket is the server's own `@@socket`, asked over TCP first: never a guessed path, so it is
 * the same server as the URL's host and port.
 */
import { statSync } from 'node:fs';
import { createConnection, type RowDataPacket } from 'mysql2/promise';
import { describeAddress, parseMysqlUrl, serverAddress } from '../src/storage/db.js';

export const MYSQL_TRANSPORTS = ['auto', 'socket', 'tcp'] as const;
export type MysqlTransport = (typeof MYSQL_TRANSPORTS)[number];

export type MysqlRoute = Readonly<{
  /** The URL every process of the run connects with. */
  url: string;
  /** How, for the report: "Unix socket /run/mysqld/mysqld.sock (...)" or "TCP 127.0.0.1:3306". */
  way: string;
}>;

export function isSocketFile(path: string): boolean {
  try {
    return statSync(path).isSocket();
  } catch {
    return false;
  }
}

/**
 * The URL to use for `transport`. A URL that already names a socket (`?socket=`) is kept as
 * given. Throws when `socket` is asked for and the server has none on this machine.
 */
export async function chooseMysqlRoute(
  url: string,
  transport: MysqlTransport,
  isSocket: (path: string) => boolean = isSocketFile,
): Promise<MysqlRoute> {
  const target = parseMysqlUrl(url);
  if (target.socketPath !== undefined) {
    return { url, way: `Unix socket ${target.socketPath} (named by --mysql-url)` };
  }
  const tcp = { url, way: `TCP ${describeAddress(target)}` };
  if (transport === 'tcp') return tcp;
  const connection = await createConnection({
    ...serverAddress(target),
    connectTimeout: 5_000,
  }).catch((error: unknown) => {
    throw new Error(
      `MySQL is unreachable at ${describeAddress(target)} (${String(error)}); start it ` +
        '(start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd) or pass ' +
        '--mysql-url',
      { cause: error },
    );
  });
  let socket: string;
  try {
    const [rows] = await connection.query<RowDataPacket[]>('SELECT @@socket AS socket');
    socket = String(rows[0]?.socket ?? '');
  } finally {
    await connection.end();
  }
  if (socket !== '' && isSocket(socket)) {
    const parsed = new URL(url);
    parsed.searchParams.set('socket', socket);
    return {
      url: parsed.toString(),
      way: `Unix socket ${socket} (the server's @@socket; --mysql-transport tcp for TCP)`,
    };
  }
  if (transport === 'socket') {
    throw new Error(
      `--mysql-transport socket: the server at ${describeAddress(target)} reports @@socket ` +
        `'${socket}', which is not a socket file on this machine; use --mysql-transport tcp`,
    );
  }
  return { ...tcp, way: `${tcp.way} (the server has no Unix socket here)` };
}
