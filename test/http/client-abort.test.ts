/**
 * Goal: a client that goes away mid-body is the client's doing, not a server fault: no error line
 * with a stack, no 5xx in the REST twin's metrics, but one debug line per request and the REST
 * twin's `settle_http_requests_total{status="499"}` (nginx's "client closed request"). Ten such
 * POSTs to /webhooks/psp once wrote ten error lines, and aborted /v1/payments bodies were counted
 * as 503 (the reset's ECONNRESET was taken for a lost database connection).
 * Method: a real Settle node whose log lines are captured at debug; raw sockets that send the
 * headers and part of the body, then reset the connection.
 */
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import {
  metricSample,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
const lines: Array<{ level: string; msg: string; path?: string; route?: string }> = [];

beforeAll(async () => {
  stack = await startStack({
    overrides: {
      logger: createLogger(
        { level: 'debug', name: 'settle' },
        { write: (line) => lines.push(JSON.parse(line) as (typeof lines)[number]) },
      ),
    },
  });
});
afterAll(async () => stack?.stop());

/** Sends the headers and the first bytes of a 1,000-byte body, then resets the connection. */
async function abortMidBody(path: string): Promise<void> {
  const port = Number(new URL(stack.settleHttp).port);
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(
    `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
      `Idempotency-Key: 0d9b5a9e-2f5c-4c49-a0a4-6f7a1c3e9b21\r\nContent-Length: 1000\r\n\r\n{"id":`,
  );
  await new Promise((resolve) => setTimeout(resolve, 50));
  socket.resetAndDestroy();
}

const REQUESTS = 3;

describe('a request body the client aborts', () => {
  it('on /webhooks/psp is logged at debug, never as an internal error', async () => {
    for (let i = 0; i < REQUESTS; i += 1) await abortMidBody('/webhooks/psp');
    const about = () => lines.filter((line) => line.path === '/webhooks/psp');
    await waitFor(async () => about().length >= REQUESTS, { what: 'the aborts to be handled' });
    expect(lines.filter((line) => line.level === 'error')).toEqual([]);
    expect(about().map((line) => [line.level, line.msg])).toEqual(
      Array.from({ length: REQUESTS }, () => [
        'debug',
        'the client aborted the request before its body ended',
      ]),
    );
  });

  it('on /v1/payments is counted as 499, not as a 5xx', async () => {
    for (let i = 0; i < REQUESTS; i += 1) await abortMidBody('/v1/payments');
    const sample = (text: string, status: string) =>
      metricSample(text, 'settle_http_requests_total', {
        method: 'POST',
        route: '/v1/payments',
        status,
      }) ?? 0;
    const text = await waitFor(
      async () => {
        const scraped = await scrapeMetrics(stack.settleHttp);
        return sample(scraped, '499') + sample(scraped, '503') >= REQUESTS ? scraped : undefined;
      },
      { what: 'the aborted requests to be counted' },
    );
    expect(sample(text, '503')).toBe(0);
    expect(sample(text, '499')).toBe(REQUESTS);
    const serverSide = lines.filter(
      (line) =>
        (line.level === 'error' || line.level === 'warn') &&
        (line.path === '/v1/payments' || line.route === '/v1/payments'),
    );
    expect(serverSide).toEqual([]);
  });
});
