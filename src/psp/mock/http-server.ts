/**
 * The PSP mock's HTTP side (node:http, no framework): the hosted payment page and a health check.
 *
 *   GET  /healthz       200 "ok"
 *   GET  /pay/<token>   the form (REGISTERED) or the result (decided, cancelled); 404 otherwise
 *   POST /pay/<token>   pays with the form's card_number; 400 bad card, 409 cannot be paid (any
 *                       more), 413 body too large
 *
 * The token's shape is checked before any database lookup. Paying goes through
 * PspPayments.pay, the same code path as the PayWithCard RPC.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../../domain/errors.js';
import { checkoutPage, messagePage, resultPage } from './pages.js';
import { isPaymentToken, type PspPayments } from './payments.js';
import { PSP_PAYMENT_STATE } from './schema.js';

/** The largest form body accepted, in bytes. */
export const FORM_BODY_BYTES_MAX = 4 * 1024;
/** Time allowed to receive one request, headers and body, in milliseconds. */
const REQUEST_TIMEOUT_MS = 10_000;
const HEADERS_TIMEOUT_MS = 5_000;
const KEEP_ALIVE_TIMEOUT_MS = 5_000;

const PAY_PATH = /^\/pay\/([^/]+)$/;

export type PspHttpServer = Readonly<{ port: number; stop: () => Promise<void> }>;

export async function startPspHttpServer(options: {
  payments: PspPayments;
  host: string;
  port: number;
  log: (line: string) => void;
}): Promise<PspHttpServer> {
  const { payments, log } = options;
  const server = createServer(
    {
      requestTimeout: REQUEST_TIMEOUT_MS,
      headersTimeout: HEADERS_TIMEOUT_MS,
      keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    },
    (request, response) => {
      void handle(payments, request, response).catch((error: unknown) => {
        sendError(response, error, log);
      });
    },
  );
  await listen(server, options.host, options.port);
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) =>
      reject(
        error.code === 'EADDRINUSE'
          ? new Error(`PSP mock: address ${host}:${port} is in use; set PSP_HTTP_ADDR`, {
              cause: error,
            })
          : error,
      );
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

async function handle(
  payments: PspPayments,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  const path = pathOf(request.url ?? '/');
  if (path === undefined) {
    request.resume();
    return sendPage(response, 400, messagePage('Bad request', 'The address is not a valid path.'));
  }
  if (path === '/healthz') {
    if (request.method !== 'GET' && request.method !== 'HEAD')
      return methodNotAllowed(response, 'GET');
    response.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
    response.end('ok');
    return;
  }
  const match = PAY_PATH.exec(path);
  const token = match?.[1] === undefined ? undefined : safeDecode(match[1]);
  if (token === undefined) return sendPage(response, 404, notFoundPage());
  if (request.method === 'GET' || request.method === 'HEAD') {
    if (!isPaymentToken(token)) return sendPage(response, 404, notFoundPage());
    const payment = await payments.findByToken(token);
    if (payment === undefined) return sendPage(response, 404, notFoundPage());
    return sendPage(response, 200, resultPage(payment));
  }
  if (request.method === 'POST') return pay(payments, token, request, response);
  return methodNotAllowed(response, 'GET, POST');
}

async function pay(
  payments: PspPayments,
  token: string,
  request: IncomingMessage,
  response: ServerResponse,
): Promise<void> {
  if (!isPaymentToken(token)) {
    request.resume();
    return sendPage(response, 404, notFoundPage());
  }
  const contentType = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (contentType !== 'application/x-www-form-urlencoded') {
    request.resume();
    return sendPage(
      response,
      415,
      messagePage('Unsupported form', 'Send the form as application/x-www-form-urlencoded.'),
    );
  }
  const body = await readBody(request, FORM_BODY_BYTES_MAX);
  if (body === undefined) {
    response.setHeader('Connection', 'close');
    return sendPage(
      response,
      413,
      messagePage('Form too large', `The form may be at most ${FORM_BODY_BYTES_MAX} bytes.`),
    );
  }
  const cardNumber = new URLSearchParams(body).get('card_number') ?? '';
  try {
    const result = await payments.pay(token, cardNumber);
    return sendPage(response, 200, resultPage(result.payment));
  } catch (error) {
    if (error instanceof InvalidArgumentError) {
      const payment = await payments.findByToken(token);
      if (payment === undefined) return sendPage(response, 404, notFoundPage());
      return sendPage(response, 400, checkoutPage(payment, cardMessage(error)));
    }
    if (error instanceof FailedPreconditionError) {
      const payment = await payments.findByToken(token);
      // Still REGISTERED: refused for what it is (a currency the mock does not charge in), so the
      // form again would only be refused again; say why instead.
      if (payment?.status === PSP_PAYMENT_STATE.registered) {
        return sendPage(response, 409, messagePage('Payment not possible', error.message));
      }
      if (payment !== undefined) return sendPage(response, 409, resultPage(payment));
    }
    throw error;
  }
}

function cardMessage(error: InvalidArgumentError): string {
  return `The card number ${error.message.replace(/^card_number: /, '')}.`;
}

/** The body as text, or undefined when it is larger than `bytesMax`. */
function readBody(request: IncomingMessage, bytesMax: number): Promise<string | undefined> {
  const declared = Number(request.headers['content-length'] ?? '0');
  if (Number.isFinite(declared) && declared > bytesMax) {
    request.resume();
    return Promise.resolve(undefined);
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    let tooLarge = false;
    request.on('data', (chunk: Buffer) => {
      if (tooLarge) return;
      bytes += chunk.length;
      if (bytes > bytesMax) {
        tooLarge = true;
        chunks.length = 0;
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => resolve(tooLarge ? undefined : Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

function safeDecode(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment);
  } catch {
    return undefined;
  }
}

/** The request target's path, or undefined for a target no URL can be made of (`//[/`). */
function pathOf(target: string): string | undefined {
  try {
    return new URL(target, 'http://psp.invalid').pathname;
  } catch {
    return undefined;
  }
}

function notFoundPage(): string {
  return messagePage('Payment not found', 'This payment link is unknown or has expired.');
}

function methodNotAllowed(response: ServerResponse, allow: string): void {
  response.setHeader('Allow', allow);
  sendPage(response, 405, messagePage('Method not allowed', `Use ${allow}.`));
}

function sendPage(response: ServerResponse, status: number, html: string): void {
  response.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy':
      "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
  });
  response.end(html);
}

function sendError(response: ServerResponse, error: unknown, log: (line: string) => void): void {
  if (response.headersSent) {
    response.destroy();
    return;
  }
  if (error instanceof NotFoundError) return sendPage(response, 404, notFoundPage());
  if (error instanceof UnavailableError) {
    return sendPage(
      response,
      503,
      messagePage('Temporarily unavailable', 'The payment service is busy; try again shortly.'),
    );
  }
  const reference = randomUUID();
  log(
    `psp http: internal error ${reference}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
  );
  sendPage(
    response,
    500,
    messagePage('Something went wrong', `Try again later (reference ${reference}).`),
  );
}
