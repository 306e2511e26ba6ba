/**
 * Goal: the PSP mock's gRPC server has Settle's bound on open connections: past
 * PSP_GRPC_CONNECTIONS_MAX a new connection is closed unanswered and logged (once, not once per
 * refusal), while the client already connected is served; an accept failure (out of file
 * descriptors) is logged at most once a second; a taken port names PSP_GRPC_ADDR.
 * Method: a mock started in-process with PSP_GRPC_CONNECTIONS_MAX=2 on ephemeral ports and its
 * own MariaDB database (dropped afterwards); its own client takes one connection, raw HTTP/2
 * connections (node:http2) the rest; the listener is handed 1,000 EMFILE failures where libuv
 * reports one (test/grpc/harness.ts failAccepts); a second mock on the first one's gRPC port.
 */
import type * as http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PspServiceClient } from '../../../src/grpc/generated/settle/psp/v1/psp.js';
import { ACCEPT_FAILED_MESSAGE } from '../../../src/grpc/server.js';
import { startPspMock, type PspMock } from '../../../src/psp/mock/index.js';
import { failAccepts, openRawConnection } from '../../grpc/harness.js';
import {
  dropDatabase,
  pspApi,
  testConfig,
  unary,
  uniqueDatabaseUrl,
  uniqueNonce,
} from '../psp-support.js';

const lines: string[] = [];
let mysqlUrl: string;
let mock: PspMock;
let api: PspServiceClient;

beforeAll(async () => {
  mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
  mock = await startPspMock({
    config: testConfig({ PSP_GRPC_CONNECTIONS_MAX: '2' }),
    grpcPort: 0,
    httpPort: 0,
    mysqlUrl,
    log: (line) => lines.push(line),
  });
  api = pspApi(mock.grpcPort);
});

afterAll(async () => {
  api?.close();
  await mock?.stop();
  if (mysqlUrl !== undefined) await dropDatabase(mysqlUrl);
});

function register(nonce: string) {
  return unary(api.registerPayment.bind(api), {
    nonce,
    amountMinor: 1999n,
    currencyCode: 'USD',
    notificationUrl: 'http://127.0.0.1:9/hooks',
  });
}

describe('PSP_GRPC_CONNECTIONS_MAX', () => {
  it('defaults to 1,000', () => {
    expect(testConfig().PSP_GRPC_CONNECTIONS_MAX).toBe(1_000);
  });

  it('closes connections past it unanswered, logs that once, and serves the connected client', async () => {
    const raws: http2.ClientHttp2Session[] = [];
    const raw = () => {
      const opened = openRawConnection(mock.grpcPort);
      raws.push(opened.session);
      return opened.accepted;
    };
    try {
      // The client holds one connection: a token back means it was served.
      expect((await register(uniqueNonce())).token).toMatch(/^tok_/);
      expect(await raw()).toBe(true);
      expect(await Promise.all([raw(), raw(), raw()])).toEqual([false, false, false]);

      const refusals = lines.filter((line) => line.includes('gRPC connections refused'));
      expect(refusals).toEqual([
        'psp mock: gRPC connections refused: 2 open (PSP_GRPC_CONNECTIONS_MAX); ' +
          '1 refused since the last line',
      ]);
      expect((await register(uniqueNonce())).token).toMatch(/^tok_/);

      // A closed connection frees its place.
      raws[0]!.destroy();
      await expect.poll(() => raw(), { timeout: 5_000 }).toBe(true);
    } finally {
      for (const session of raws) session.destroy();
    }
  });

  it('logs accept failures at most once a second, and serves on', async () => {
    expect(failAccepts(mock.grpcPort, 1_000)).toBe(1);
    expect(lines.filter((line) => line.includes(ACCEPT_FAILED_MESSAGE))).toEqual([
      `psp mock: ${ACCEPT_FAILED_MESSAGE}: Error: accept EMFILE; 1 since the last line`,
    ]);
    expect((await register(uniqueNonce())).token).toMatch(/^tok_/);
  });

  it('names PSP_GRPC_ADDR when the gRPC port is taken', async () => {
    const secondUrl = uniqueDatabaseUrl('settle_psp_t');
    try {
      await expect(
        startPspMock({
          config: testConfig(),
          grpcPort: mock.grpcPort,
          httpPort: 0,
          mysqlUrl: secondUrl,
        }),
      ).rejects.toThrow(`address 127.0.0.1:${mock.grpcPort} is in use; set PSP_GRPC_ADDR`);
    } finally {
      await dropDatabase(secondUrl);
    }
  });
});
