/**
 * Helpers for the PSP tests: a per-file database, a config, a local webhook receiver, a
 * promisified generated client, and waiting on conditions with a deadline (no fixed sleeps).
 */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import {
  credentials,
  Metadata,
  type CallOptions,
  type ClientUnaryCall,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadConfig, type Config } from '../../src/config.js';
import { PspServiceClient } from '../../src/grpc/generated/settle/psp/v1/psp.js';

// Databases and ports come from the shared harness: one implementation for every test.
export {
  dropDatabase,
  freePort as closedPort,
  testDatabaseUrl as uniqueDatabaseUrl,
} from '../support/harness.js';

export function testConfig(env: Record<string, string> = {}): Config {
  return loadConfig({
    PSP_WEBHOOK_SECRET: 'whsec_test_secret_0123456789',
    // The mock's daily settlement-file writer stays off in tests unless a test turns it on.
    PSP_SETTLEMENT_AT: 'off',
    ...env,
  });
}

/** Polls `condition` until it returns a value other than undefined/false, or fails at the deadline. */
export async function waitFor<T>(
  condition: () => Promise<T | undefined | false> | T | undefined | false,
  options: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  let lastError: unknown;
  for (;;) {
    try {
      const value = await condition();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${options.what ?? 'condition'}`, { cause: lastError });
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 20));
  }
}

export type ReceivedWebhook = Readonly<{
  path: string;
  headers: IncomingHttpHeaders;
  rawBody: string;
  /** The body's bytes, which the signature covers. */
  bytes: Buffer;
  receivedAtMs: number;
}>;

export type WebhookReceiver = Readonly<{
  url: string;
  received: ReceivedWebhook[];
  /** Deliveries whose path is `path`. */
  at: (path: string) => ReceivedWebhook[];
  close: () => Promise<void>;
}>;

/**
 * A local HTTP server standing in for Settle's webhook endpoint. `respond` picks the status of
 * each request from its path and how many requests that path had before (0 for the first).
 */
export async function startWebhookReceiver(
  respond: (path: string, previous: number) => number = () => 200,
): Promise<WebhookReceiver> {
  const received: ReceivedWebhook[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const path = request.url ?? '/';
      const previous = received.filter((item) => item.path === path).length;
      received.push({
        path,
        headers: request.headers,
        rawBody: Buffer.concat(chunks).toString('utf8'),
        bytes: Buffer.concat(chunks),
        receivedAtMs: Date.now(),
      });
      response.writeHead(respond(path, previous), { 'Content-Type': 'text/plain' });
      response.end('done');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    at: (path) => received.filter((item) => item.path === path),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export function pspApi(port: number): PspServiceClient {
  return new PspServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
}

type UnaryMethod<Request, Response> = (
  request: Request,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Response) => void,
) => ClientUnaryCall;

/** Calls a generated client method with a deadline; rejects with the ServiceError. */
export function unary<Request, Response>(
  method: UnaryMethod<Request, Response>,
  request: Request,
  timeoutMs = 5_000,
): Promise<Response> {
  return new Promise((resolve, reject) => {
    method(request, new Metadata(), { deadline: Date.now() + timeoutMs }, (error, response) =>
      error === null ? resolve(response) : reject(error),
    );
  });
}

/** Resolves with the ServiceError a call failed with; fails the test if it succeeded. */
export async function grpcError(promise: Promise<unknown>): Promise<ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as ServiceError;
  }
  throw new Error('expected the call to fail');
}

/** A nonce no other test uses. */
export function uniqueNonce(label = 'n'): string {
  return `${label}_${randomBytes(8).toString('hex')}`;
}

/** POSTs the hosted page's form. */
export async function postCard(
  checkoutUrl: string,
  cardNumber: string,
): Promise<{ status: number; html: string }> {
  const response = await fetch(checkoutUrl, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ card_number: cardNumber }).toString(),
    signal: AbortSignal.timeout(5_000),
  });
  return { status: response.status, html: await response.text() };
}
