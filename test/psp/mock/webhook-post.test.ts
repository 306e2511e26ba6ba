/**
 * Goal: the webhook poster keeps the delivery rules the sender had with fetch (2xx delivered,
 * 3xx and everything else a failure, no redirect followed), always ends within its deadline, and
 * reuses kept-alive sockets. Method: real local HTTP servers on port 0 that answer, redirect,
 * hang or stream a long body; socket reuse is observed on the server's side.
 */
import { createServer, type Server, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebhookPoster } from '../../../src/psp/mock/webhook-post.js';

const servers: Server[] = [];
const posters: WebhookPoster[] = [];

afterEach(async () => {
  for (const poster of posters.splice(0)) poster.close();
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

async function serve(
  handle: (request: IncomingMessage, response: ServerResponse) => void,
): Promise<{ url: string; server: Server }> {
  const server = createServer(handle);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, server };
}

function poster(requestTimeoutMs = 2_000, socketsMax = 4): WebhookPoster {
  const created = new WebhookPoster({ socketsMax, requestTimeoutMs });
  posters.push(created);
  return created;
}

/** Reads the whole request body, then answers. */
function answering(status: number, extraHeaders: Record<string, string> = {}) {
  return (request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      response.writeHead(status, { 'Content-Type': 'text/plain', ...extraHeaders });
      response.end(Buffer.concat(chunks));
    });
  };
}

describe('WebhookPoster', () => {
  it('sends the body and headers as given and counts a 2xx as delivered', async () => {
    let seen: { method?: string; path?: string; type?: string; sig?: string; body?: string } = {};
    const { url } = await serve((request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        seen = {
          method: request.method,
          path: request.url,
          type: request.headers['content-type'],
          sig: request.headers['psp-signature'] as string,
          body: Buffer.concat(chunks).toString('utf8'),
        };
        response.writeHead(204).end();
      });
    });
    const body = '{"id":"evt_1","amount_minor":"100"}';
    const outcome = await poster().post(
      `${url}/webhooks/psp?x=1`,
      { 'Content-Type': 'application/json', 'Psp-Signature': 't=1,v1=ab' },
      body,
    );
    expect(outcome).toBeUndefined();
    expect(seen).toEqual({
      method: 'POST',
      path: '/webhooks/psp?x=1',
      type: 'application/json',
      sig: 't=1,v1=ab',
      body,
    });
  });

  it('counts a 3xx as a failure and does not follow it', async () => {
    let followed = 0;
    const target = await serve((_request, response) => {
      followed += 1;
      response.writeHead(200).end();
    });
    const { url } = await serve(answering(302, { Location: `${target.url}/elsewhere` }));
    expect(await poster().post(`${url}/hooks`, {}, '{}')).toBe('HTTP 302');
    expect(await poster().post(`${url}/hooks`, {}, '{}')).toBe('HTTP 302');
    expect(followed).toBe(0);
  });

  it('counts a 5xx as a failure', async () => {
    const { url } = await serve(answering(503));
    expect(await poster().post(url, {}, '{}')).toBe('HTTP 503');
  });

  it('gives up on a receiver that never answers at the deadline', async () => {
    const { url } = await serve(() => undefined);
    const started = Date.now();
    const outcome = await poster(300).post(url, {}, '{}');
    const tookMs = Date.now() - started;
    expect(outcome).toBe('TimeoutError: no answer within 300 ms');
    expect(tookMs).toBeGreaterThanOrEqual(290);
    expect(tookMs).toBeLessThan(2_000);
  });

  it('ends a receiver that dribbles an endless body at the deadline, keeping its status', async () => {
    let closed = false;
    const { url } = await serve((request, response) => {
      request.resume();
      request.on('end', () => {
        response.writeHead(200, { 'Content-Type': 'text/plain' });
        const timer = setInterval(() => response.write('x'), 20);
        response.on('close', () => {
          clearInterval(timer);
          closed = true;
        });
      });
    });
    expect(await poster(300).post(url, {}, '{}')).toBeUndefined();
    // The socket is destroyed at the deadline even though the outcome was known earlier.
    await expect.poll(() => closed, { timeout: 2_000 }).toBe(true);
  });

  it('cuts off an answer body longer than 64 KiB', async () => {
    let closed = false;
    const { url } = await serve((request, response) => {
      request.resume();
      request.on('end', () => {
        response.writeHead(500, { 'Content-Type': 'text/plain' });
        const chunk = 'y'.repeat(16 * 1024);
        const timer = setInterval(() => response.write(chunk), 1);
        response.on('close', () => {
          clearInterval(timer);
          closed = true;
        });
      });
    });
    expect(await poster(10_000).post(url, {}, '{}')).toBe('HTTP 500');
    await expect.poll(() => closed, { timeout: 2_000 }).toBe(true);
  });

  it('reuses a kept-alive socket for later requests', async () => {
    const { url, server } = await serve(answering(200));
    let connections = 0;
    server.on('connection', () => (connections += 1));
    const sender = poster(2_000, 2);
    for (let i = 0; i < 20; i += 1)
      expect(await sender.post(url, {}, `{"i":${i}}`)).toBeUndefined();
    expect(connections).toBe(1);
    // Concurrent requests open at most socketsMax sockets.
    const outcomes = await Promise.all(
      Array.from({ length: 20 }, (_, i) => sender.post(url, {}, `{"j":${i}}`)),
    );
    expect(outcomes.every((outcome) => outcome === undefined)).toBe(true);
    expect(connections).toBe(2);
  });

  it('describes a refused connection and a URL that is not http(s)', async () => {
    const { url, server } = await serve(answering(200));
    server.close();
    server.closeAllConnections();
    expect(await poster().post(url, {}, '{}')).toMatch(/^Error: connect ECONNREFUSED/);
    expect(await poster().post('ftp://example.test/x', {}, '{}')).toBe(
      'TypeError: not an http(s) URL: ftp:',
    );
  });

  it('ends the requests in flight as failures when closed', async () => {
    const { url } = await serve(() => undefined);
    const sender = poster(10_000);
    const pending = sender.post(url, {}, '{}');
    await new Promise((resolve) => setTimeout(resolve, 50));
    sender.close();
    expect(await pending).toBe('Error: the webhook sender is stopping');
    expect(await sender.post(url, {}, '{}')).toBe('Error: the webhook sender is stopping');
  });
});
