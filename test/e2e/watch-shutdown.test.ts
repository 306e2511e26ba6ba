/**
 * Goal: an open WatchPayment does not hold a node's stop. Stopping ends the watch at once with
 * UNAVAILABLE "this node is shutting down; watch again" (retryable), instead of the gRPC server
 * waiting the whole SHUTDOWN_GRACE_MS for it and then cancelling it, which spent the grace the
 * later steps share. Method: a real stack with a 5 s grace; one watch on an EXECUTING payment
 * (it would last an hour); the node is stopped and the client's outcome and the time are taken.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { newId } from '../../src/domain/ids.js';
import { RETRYABLE_METADATA_KEY } from '../../src/grpc/status.js';
import {
  dropDatabase,
  insertPaymentOfOneOrder,
  removeNamespace,
  startStack,
  type Stack,
} from '../support/harness.js';

const GRACE_MS = 5_000;
let stack: Stack;

beforeAll(async () => {
  stack = await startStack({ env: { SHUTDOWN_GRACE_MS: String(GRACE_MS) } });
});

afterAll(async () => {
  // The test stops the node itself; the rest of the stack is torn down here.
  stack.payments.close();
  await stack.psp.stop();
  await removeNamespace(stack.config);
  await dropDatabase(stack.config.MYSQL_URL);
  await dropDatabase(stack.config.PSP_MYSQL_URL);
});

it('ends an open watch with UNAVAILABLE at once when the node stops', async () => {
  const paymentId = newId('payment');
  await insertPaymentOfOneOrder(stack.settle.db, {
    paymentId,
    orderId: newId('order'),
    paymentState: 'EXECUTING',
    orderState: 'EXECUTING',
    at: new Date(),
  });
  const watch = stack.payments.watchPayment({ paymentId }, new grpc.Metadata());
  await new Promise((resolve) => watch.once('data', resolve));
  const ended = new Promise<grpc.ServiceError | 'end'>((resolve) => {
    watch.on('error', resolve);
    watch.on('end', () => resolve('end'));
  });

  const started = Date.now();
  const stopping = stack.settle.stop();
  const outcome = await ended;
  const endedMs = Date.now() - started;
  await stopping;
  const stoppedMs = Date.now() - started;

  if (outcome === 'end') throw new Error('the watch ended without a status');
  expect(outcome.code).toBe(grpc.status.UNAVAILABLE);
  expect(outcome.details).toBe('this node is shutting down; watch again');
  expect(outcome.metadata.get(RETRYABLE_METADATA_KEY)).toEqual(['true']);
  // Well under the grace: the watch did not hold the stop.
  expect(endedMs).toBeLessThan(1_000);
  expect(stoppedMs).toBeLessThan(GRACE_MS / 2);
  // Stopping again (a second signal, a teardown) runs nothing twice and resolves.
  await stack.settle.stop();
});
