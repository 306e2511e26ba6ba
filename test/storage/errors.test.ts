/**
 * Goal: driver errors are classified by what they mean for the caller. mysql2's full pool queue
 * ("Queue limit reached") is this node's overload on a healthy database, answered
 * RESOURCE_EXHAUSTED (retryable), never "the database is unavailable". Method: a real pool of one
 * connection on MariaDB, given more statements than its queue holds, and the error it answers
 * taken through toUnavailable and toGrpcStatus.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResourceExhaustedError } from '../../src/domain/errors.js';
import { toGrpcStatus } from '../../src/grpc/status.js';
import { isConnectionError, isPoolQueueFull } from '../../src/storage/errors.js';
import { toUnavailable } from '../../src/storage/transaction.js';
import { openTestDatabase, type TestDatabase } from '../support/harness.js';

let opened: TestDatabase;
beforeAll(async () => {
  // One connection: openDatabase queues at most 64 requests for it.
  opened = await openTestDatabase('settle_errors', { poolSize: 1 });
});
afterAll(async () => {
  await opened?.close();
});

describe("mysql2's full pool queue", () => {
  it('is an overload (RESOURCE_EXHAUSTED), not the database being unavailable', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 70 }, () => sql`SELECT SLEEP(0.05)`.execute(opened.db)),
    );
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(refused.length).toBeGreaterThan(0);
    const error = refused[0]?.reason as Error;
    expect(error.message).toMatch(/^Queue limit reached/);
    expect(isPoolQueueFull(error)).toBe(true);
    expect(isConnectionError(error)).toBe(false);

    const mapped = toUnavailable(error);
    expect(mapped).toBeInstanceOf(ResourceExhaustedError);
    expect((mapped as ResourceExhaustedError).retryable).toBe(true);

    // A path that passed the raw error up gets the same answer.
    for (const thrown of [error, mapped]) {
      const status = toGrpcStatus(thrown);
      expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(status.details).toBe(
        'too many database statements are waiting for a connection on this node; retry later',
      );
    }
  });
});
