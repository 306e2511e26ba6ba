/**
 * Goal: a node takes GRPC_CONNECTIONS_MAX gRPC connections at once; past it a new one is closed
 * unanswered, counted on /metrics and logged (once, not once per refusal), while the clients
 * already connected are served. Method: a real stack with GRPC_CONNECTIONS_MAX=2 and a capturing
 * logger; its own client takes one connection, raw HTTP/2 connections (node:http2) the rest;
 * /metrics is scraped over HTTP. An accept failure (out of file descriptors) is counted on
 * /metrics and logged at most once a second while the node serves on: the node's gRPC listener is
 * handed 1,000 EMFILE failures where libuv reports one (harness.ts failAccepts).
 */
import type * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newId } from '../../src/domain/ids.js';
import { ACCEPT_FAILED_MESSAGE } from '../../src/grpc/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { failAccepts, openRawConnection } from '../grpc/harness.js';
import {
  callError,
  metricSample,
  scrapeMetrics,
  startStack,
  type Stack,
} from '../support/harness.js';

let stack: Stack;
const lines: string[] = [];
beforeAll(async () => {
  stack = await startStack({
    env: { GRPC_CONNECTIONS_MAX: '2' },
    overrides: {
      logger: createLogger(
        { level: 'info', name: 'settle' },
        { write: (line) => lines.push(line) },
      ),
    },
  });
});
afterAll(async () => stack?.stop());

describe('GRPC_CONNECTIONS_MAX', () => {
  it('closes connections past it, counts and logs them, and serves the connected client', async () => {
    const getPayment = stack.payments.getPayment.bind(stack.payments);
    const paymentId = newId('payment'); // never created: answered NOT_FOUND
    const scrape = () => scrapeMetrics(stack.settleHttp);
    const before = await scrape();
    expect(metricSample(before, 'settle_grpc_connections_refused_total', {})).toBe(0);
    expect(metricSample(before, 'settle_grpc_connections_max', {})).toBe(2);

    const raws: http2.ClientHttp2Session[] = [];
    const raw = () => {
      const opened = openRawConnection(stack.settle.grpcPort);
      raws.push(opened.session);
      return opened.accepted;
    };
    try {
      // The stack's client holds one connection: an answer (NOT_FOUND) means it was served.
      expect((await callError(getPayment, { paymentId })).code).toBe(grpc.status.NOT_FOUND);
      expect(await raw()).toBe(true);
      expect(await Promise.all([raw(), raw(), raw()])).toEqual([false, false, false]);

      const after = await scrape();
      expect(metricSample(after, 'settle_grpc_connections_refused_total', {})).toBe(3);
      expect(metricSample(after, 'settle_grpc_connections_open', {})).toBe(2);
      // Set once at start, not on each connection: it stays the bound.
      expect(metricSample(after, 'settle_grpc_connections_max', {})).toBe(2);
      const warnings = lines
        .map((line) => JSON.parse(line) as { msg: string; refused?: number })
        .filter((line) => line.msg.startsWith('gRPC connections refused'));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatchObject({
        msg: 'gRPC connections refused: 2 open (GRPC_CONNECTIONS_MAX)',
        refused: 1,
        remoteAddress: '127.0.0.1',
        connectionsMax: 2,
      });

      const again = await callError(getPayment, { paymentId });
      expect(again.code).toBe(grpc.status.NOT_FOUND);
      expect(again.details).toContain(paymentId);
    } finally {
      for (const session of raws) session.destroy();
    }
  });
});

describe('an accept failure of the gRPC listener', () => {
  it('is counted, logged once a second at most, and the node serves on', async () => {
    const getPayment = stack.payments.getPayment.bind(stack.payments);
    const paymentId = newId('payment'); // never created: answered NOT_FOUND
    const scrape = () => scrapeMetrics(stack.settleHttp);
    expect(metricSample(await scrape(), 'settle_grpc_accept_errors_total', {})).toBe(0);

    expect(failAccepts(stack.settle.grpcPort, 1_000)).toBe(1);

    expect(metricSample(await scrape(), 'settle_grpc_accept_errors_total', {})).toBe(1_000);
    const warnings = lines
      .map((line) => JSON.parse(line) as { msg: string })
      .filter((line) => line.msg === ACCEPT_FAILED_MESSAGE);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({
      level: 'warn',
      err: { code: 'EMFILE', syscall: 'accept' },
    });
    expect((await callError(getPayment, { paymentId })).code).toBe(grpc.status.NOT_FOUND);
  });
});
