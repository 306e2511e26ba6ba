/**
 * Goal: the bench reaches MySQL the way it is told: `tcp` keeps the URL; `auto` takes the
 * server's own Unix socket (`@@socket`) when that is a socket file on this machine, and the URL
 * it answers reaches the same server; with no such socket `auto` stays on TCP and `socket` fails
 * with a message naming the way out; a URL that names a socket is kept as given.
 * Method: the real MariaDB the tests use; whether the socket file exists is injected for the
 * branches this machine cannot show, and read from the file system otherwise.
 */
import { createConnection, type RowDataPacket } from 'mysql2/promise';
import { describe, expect, inject, it } from 'vitest';
import { chooseMysqlRoute, isSocketFile } from '../../bench/mysql-transport.js';
import { parseMysqlUrl, serverAddress } from '../../src/storage/db.js';

const url = inject('mysqlUrl');

/** Which server a URL reaches: its port and data directory, asked through that URL. */
async function serverOf(target: string): Promise<{ port: number; datadir: string }> {
  const connection = await createConnection({
    ...serverAddress(parseMysqlUrl(target)),
    connectTimeout: 5_000,
  });
  try {
    const [rows] = await connection.query<RowDataPacket[]>(
      'SELECT @@port AS port, @@datadir AS datadir',
    );
    return { port: Number(rows[0]?.port), datadir: String(rows[0]?.datadir) };
  } finally {
    await connection.end();
  }
}

describe('chooseMysqlRoute', () => {
  it('keeps the URL for tcp', async () => {
    const route = await chooseMysqlRoute(url, 'tcp');
    expect(route.url).toBe(url);
    expect(route.way).toMatch(/^TCP /);
  });

  it('takes the server’s own Unix socket for auto when it is on this machine, reaching the same server', async () => {
    const route = await chooseMysqlRoute(url, 'auto');
    const socket = new URL(route.url).searchParams.get('socket');
    if (socket === null) {
      // A server without a socket here (in a container, say): TCP, and said so.
      expect(route.way).toMatch(/the server has no Unix socket here/);
      return;
    }
    expect(isSocketFile(socket)).toBe(true);
    expect(route.way).toBe(
      `Unix socket ${socket} (the server's @@socket; --mysql-transport tcp for TCP)`,
    );
    expect(await serverOf(route.url)).toEqual(await serverOf(url));
  });

  it('stays on TCP for auto, and fails for socket, when the server’s socket is not here', async () => {
    const noSocket = () => false;
    const route = await chooseMysqlRoute(url, 'auto', noSocket);
    expect(route.url).toBe(url);
    expect(route.way).toMatch(/^TCP .*\(the server has no Unix socket here\)$/);
    await expect(chooseMysqlRoute(url, 'socket', noSocket)).rejects.toThrow(
      /^--mysql-transport socket: the server at .* reports @@socket '.*', which is not a socket file on this machine; use --mysql-transport tcp$/,
    );
  });

  it('keeps a URL that names a socket as given', async () => {
    const named = `${url}?socket=/nowhere/mysqld.sock`;
    const route = await chooseMysqlRoute(named, 'tcp');
    expect(route).toEqual({
      url: named,
      way: 'Unix socket /nowhere/mysqld.sock (named by --mysql-url)',
    });
  });
});
