/**
 * Helpers shared by the admin panel tests: payments through the real gRPC API, a dead letter
 * produced the way production produces one (the PSP mock fails every registration attempt), and
 * HTTP calls to the panel with the admin token.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { recordDeadLetter } from '../../src/admin/dead-letters.js';
import type { Payment } from '../../src/grpc/generated/settle/v1/payment.js';
import { deadLetterKey } from '../../src/messaging/command-consumer.js';
import { call, waitFor, type Stack } from '../support/harness.js';

export const ADMIN_TOKEN = 'test-admin-token-0123456789';

export async function createPayment(
  stack: Stack,
  buyerId: string,
  orders: Array<[seller: string, amountMinor: bigint]>,
): Promise<Payment> {
  const response = await call(stack.payments.createPayment.bind(stack.payments), {
    requestId: randomUUID(),
    buyerId,
    currencyCode: 'USD',
    orders: orders.map(([sellerId, amountMinor]) => ({ sellerId, amountMinor })),
  });
  if (response.payment === undefined) throw new Error('no payment in the response');
  return response.payment;
}

/**
 * A payment whose only order is dead-lettered with RETRIES_EXHAUSTED: the PSP mock fails as many
 * registrations as there are deliveries. Needs a stack with RETRY_BACKOFF_MS of two short steps.
 */
export async function deadLetteredPayment(
  stack: Stack,
  buyerId: string,
): Promise<{ payment: Payment; orderId: string; deadLetterId: string }> {
  stack.psp.setBehavior({ failNextRegistrations: stack.config.RETRY_BACKOFF_MS.length + 1 });
  const payment = await createPayment(stack, buyerId, [
    [`seller-dlq-${randomUUID().slice(0, 8)}`, 700n],
  ]);
  const orderId = payment.orders[0]?.orderId ?? '';
  const row = await waitFor(
    () =>
      stack.settle.db
        .selectFrom('dead_letter')
        .select(['id'])
        .where('order_id', '=', orderId)
        .executeTakeFirst(),
    { what: `a dead letter for ${orderId}` },
  );
  return { payment, orderId, deadLetterId: row.id };
}

/**
 * An OPEN dead letter for `orderId` (or none) recorded directly, as the consumer records one,
 * without failing PSP calls (which would count towards opening the stack's circuit breaker). Its
 * id.
 */
export async function recordedDeadLetter(stack: Stack, orderId: string | null): Promise<string> {
  const position = {
    streamCreatedAt: '2026-01-01T00:00:00.000000000Z',
    streamSequence: Number.parseInt(randomUUID().slice(0, 8), 16),
  };
  await recordDeadLetter(
    stack.settle.db,
    'fixture-stream',
    {
      orderId,
      subject: 'fixture',
      ...position,
      attempts: 3,
      reason: 'RETRIES_EXHAUSTED',
      lastError: 'fixture',
      // A payload of its own: an order holds one OPEN entry per reason and payload.
      payload: JSON.stringify({ fixture: position.streamSequence }),
      deadLetteredAt: new Date().toISOString(),
    },
    new Date(),
  );
  const row = await stack.settle.db
    .selectFrom('dead_letter')
    .select('id')
    .where('dedupe_key', '=', deadLetterKey('fixture-stream', position))
    .executeTakeFirstOrThrow();
  return row.id;
}

export async function adminFetch(
  stack: Stack,
  path: string,
  init: { method?: string; form?: Record<string, string>; headers?: Record<string, string> } = {},
): Promise<{ status: number; html: string; headers: Headers }> {
  const response = await fetch(`${stack.settleHttp}${path}`, {
    method: init.method ?? (init.form !== undefined ? 'POST' : 'GET'),
    redirect: 'manual',
    headers: {
      authorization: `Bearer ${ADMIN_TOKEN}`,
      'x-admin-actor': 'tester',
      ...(init.form !== undefined ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      ...init.headers,
    },
    ...(init.form !== undefined ? { body: new URLSearchParams(init.form).toString() } : {}),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: response.status, html: await response.text(), headers: response.headers };
}

/** The stored state of a dead letter (to check that a refused action changed nothing). */
export async function deadLetterState(stack: Stack, id: string): Promise<string> {
  const row = await stack.settle.db
    .selectFrom('dead_letter')
    .select('state')
    .where('id', '=', id)
    .executeTakeFirstOrThrow();
  return row.state;
}

export async function auditRows(stack: Stack, target: string) {
  return stack.settle.db
    .selectFrom('admin_audit')
    .selectAll()
    .where('target', '=', target)
    .orderBy('id')
    .execute();
}

/**
 * A TCP relay to `port` on 127.0.0.1 whose upstream sockets are bound to `localAddress`: grpc-js
 * cannot bind a client socket, so calls from another peer address go through it. Answers the
 * relay's port and how to close it.
 */
export async function relayFrom(
  localAddress: string,
  port: number,
): Promise<{ port: number; close: () => Promise<void> }> {
  const relay = net.createServer((downstream) => {
    const upstream = net.connect({ host: '127.0.0.1', port, localAddress });
    downstream.pipe(upstream).pipe(downstream);
    const close = () => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  return {
    port: (relay.address() as net.AddressInfo).port,
    close: () => new Promise<void>((resolve) => relay.close(() => resolve())),
  };
}
