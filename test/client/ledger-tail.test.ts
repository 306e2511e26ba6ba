/**
 * Goal: the client's tailLedgerEntries gives every ledger entry once and in id order: entries
 * booked after the tail started, one whose booking commits after a later booking did, and, from a
 * `resumeToken` taken mid-page, exactly the entries after the one given last (no duplicate, no
 * gap), also resumed with another page size; a position of its first page is refused under other
 * filters. It ends on abort, also mid-call (the call is cancelled); it retries UNAVAILABLE,
 * DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED (after the node's retry delay) a bounded number of
 * times, throws other failures, and refuses options that would make it spin. Method: createSettleClient against a real node (startStack: MariaDB, NATS,
 * the PSP mock); bookings are posted by the ledger repository in real transactions on the node's
 * database, one held open on its own connection while a later one commits; what the tail gave is
 * compared with the ledger_entry table. Deadlines and cancelling are checked against a real gRPC
 * server whose ListEntries never answers, retries against a port nothing listens on, and a node
 * from before tailing by a gRPC server that answers ListEntries without a resume token.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  createSettleClient,
  NoHeadError,
  NoResumeTokenError,
  type LedgerEntry,
  type LedgerTail,
  type SettleClient,
  type TailLedgerEntriesOptions,
  type TailStart,
} from '../../src/client/index.js';
import {
  LedgerServiceService,
  ListEntriesResponse,
} from '../../src/grpc/generated/settle/v1/wallet.js';
import { postLedgerTransaction } from '../../src/storage/repositories/ledger.repository.js';
import { inTransaction } from '../../src/storage/transaction.js';
import {
  expectLedgerBalanced,
  freePort,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { holdOpenBooking, paymentBooking, type HeldBooking } from '../support/ledger.js';

let stack: Stack;
let client: SettleClient;
/** Bookings a test holds open; committed by the test, rolled back if it failed first. */
const holds = new Set<HeldBooking>();
beforeAll(async () => {
  stack = await startStack();
  client = createSettleClient(`127.0.0.1:${stack.settle.grpcPort}`, { defaultTimeoutMs: 5_000 });
});
afterAll(async () => {
  client?.close();
  await stack?.stop();
});
afterEach(async () => {
  await Promise.all([...holds].map((hold) => hold.finish('rollback')));
  await expectLedgerBalanced(stack.settle.db);
});

/** A ledger entry as a node answers it, for the server that stands in for an old node. */
function entryOf(entryId: string): LedgerEntry {
  return {
    entryId,
    transactionId: `ltx_${entryId}`,
    account: 'psp_receivable',
    orderId: '',
    kind: 'PAYMENT_RECEIVABLE',
    currencyCode: 'USD',
    debitMinor: 1n,
    creditMinor: 0n,
    createTime: new Date(),
  };
}

async function book(seller: string): Promise<void> {
  await inTransaction(stack.settle.db, (trx) => postLedgerTransaction(trx, paymentBooking(seller)));
}

/** Ids of `seller`'s payable entries in the table, in order. */
async function tableIds(seller: string): Promise<string[]> {
  const rows = await stack.settle.db
    .selectFrom('ledger_entry')
    .select('id')
    .where('account', '=', `seller_payable:${seller}`)
    .orderBy('id')
    .execute();
  return rows.map((row) => String(row.id));
}

/** Reads `tail` in the background into `seen`, until it ends; answers how it ended. */
function drain(tail: LedgerTail, seen: LedgerEntry[]): Promise<unknown> {
  return (async () => {
    for await (const entry of tail) seen.push(entry);
    return 'ended';
  })().catch((error: unknown) => error);
}

describe('tailLedgerEntries', () => {
  it('gives entries booked after it started, in id order, once, and ends on abort', async () => {
    const seller = 'tail-new';
    const abort = new AbortController();
    const seen: LedgerEntry[] = [];
    const tail = client.ledger.tailLedgerEntries({
      account: `seller_payable:${seller}`,
      pollMs: 100,
      signal: abort.signal,
    });
    const ended = drain(tail, seen);
    // Caught up first: the tail is at the head of the ledger, waiting.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(seen).toEqual([]);
    for (let i = 0; i < 3; i += 1) await book(seller);
    await waitFor(() => Promise.resolve(seen.length >= 3), { what: 'three entries' });
    // No entry twice while it keeps polling the head.
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    expect(seen.map((e) => e.entryId)).toEqual(await tableIds(seller));
    expect(seen.every((e) => e.creditMinor === 100n && e.kind === 'PAYMENT_PAYABLE')).toBe(true);
  });

  it('waits for a booking that commits after a later one did, and gives both in id order', async () => {
    const seller = 'tail-late';
    // Takes its entry ids first, and commits last.
    const held = await holdOpenBooking(stack.settle.db, paymentBooking(seller), holds);
    await book(seller);
    const abort = new AbortController();
    const seen: LedgerEntry[] = [];
    const ended = drain(
      client.ledger.tailLedgerEntries({
        account: `seller_payable:${seller}`,
        pollMs: 100,
        signal: abort.signal,
      }),
      seen,
    );
    try {
      // The later booking is committed, but its entry is past the open one: not given yet.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(seen).toEqual([]);
    } finally {
      await held.finish('commit');
    }
    await waitFor(() => Promise.resolve(seen.length >= 2), { what: 'both entries' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    expect(seen.map((e) => e.entryId)).toEqual(await tableIds(seller));
  });

  it("starts at the head with from: 'head': not what was booked before, what is booked after once", async () => {
    const seller = 'tail-head';
    for (let i = 0; i < 2; i += 1) await book(seller);
    const abort = new AbortController();
    const seen: LedgerEntry[] = [];
    const tail = client.ledger.tailLedgerEntries({
      account: `seller_payable:${seller}`,
      from: 'head',
      pollMs: 100,
      signal: abort.signal,
    });
    expect(tail.resumeToken).toBe('');
    const ended = drain(tail, seen);
    // The head's token is the tail's position once the node has answered from_head.
    const atHead = await waitFor(() => Promise.resolve(tail.resumeToken || undefined), {
      what: 'the head',
    });
    for (let i = 0; i < 2; i += 1) await book(seller);
    await waitFor(() => Promise.resolve(seen.length >= 2), { what: 'two entries' });
    // No entry twice while it keeps polling the head.
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    const all = await tableIds(seller);
    expect(all).toHaveLength(4);
    expect(seen.map((e) => e.entryId)).toEqual(all.slice(2));

    // The head's token is a position like any other: resumed there, the same two entries.
    const again: LedgerEntry[] = [];
    for await (const entry of client.ledger.tailLedgerEntries({
      account: `seller_payable:${seller}`,
      resumeToken: atHead,
    })) {
      again.push(entry);
      if (again.length === 2) break;
    }
    expect(again.map((e) => e.entryId)).toEqual(all.slice(2));
  });

  it('starts at the head below a booking still open, and gives it once it commits', async () => {
    const seller = 'tail-head-held';
    const held = await holdOpenBooking(stack.settle.db, paymentBooking(seller), holds);
    await book(seller);
    const abort = new AbortController();
    const seen: LedgerEntry[] = [];
    const tail = client.ledger.tailLedgerEntries({
      account: `seller_payable:${seller}`,
      from: 'head',
      pollMs: 100,
      signal: abort.signal,
    });
    const ended = drain(tail, seen);
    try {
      await waitFor(() => Promise.resolve(tail.resumeToken !== ''), { what: 'the head' });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(seen).toEqual([]);
    } finally {
      await held.finish('commit');
    }
    // The open booking's entry, and the one committed above it before the head was read.
    await waitFor(() => Promise.resolve(seen.length >= 2), { what: 'both entries' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    expect(seen.map((e) => e.entryId)).toEqual(await tableIds(seller));
  });

  it('resumes from a token taken mid-page with no duplicate and no gap', async () => {
    const seller = 'tail-resume';
    for (let i = 0; i < 5; i += 1) await book(seller);
    const first: LedgerEntry[] = [];
    // Pages of 2: the consumer stops after the first entry of the second page.
    const tail = client.ledger.tailLedgerEntries({
      account: `seller_payable:${seller}`,
      pageSize: 2,
      pollMs: 100,
    });
    for await (const entry of tail) {
      first.push(entry);
      if (first.length === 3) break;
    }
    const token = tail.resumeToken;
    expect(token).toMatch(/\.\d+$/);
    for (let i = 0; i < 2; i += 1) await book(seller);

    const abort = new AbortController();
    const rest: LedgerEntry[] = [];
    const ended = drain(
      client.ledger.tailLedgerEntries({
        account: `seller_payable:${seller}`,
        resumeToken: token,
        pageSize: 2,
        pollMs: 100,
        signal: abort.signal,
      }),
      rest,
    );
    await waitFor(() => Promise.resolve(rest.length >= 4), { what: 'the other four entries' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    const all = await tableIds(seller);
    expect(all).toHaveLength(7);
    expect(first.map((e) => e.entryId)).toEqual(all.slice(0, 3));
    expect(rest.map((e) => e.entryId)).toEqual(all.slice(3));
  });

  it('resumes with another page size without giving an entry twice', async () => {
    // Stopped mid-way through a page of 5, resumed with pages of 2: the page read again is
    // shorter, so the highest id given must carry over to later pages (before, entry 3's id was
    // forgotten after the first short page and it came again).
    const seller = 'tail-resize';
    for (let i = 0; i < 5; i += 1) await book(seller);
    const account = `seller_payable:${seller}`;
    const first: LedgerEntry[] = [];
    const tail = client.ledger.tailLedgerEntries({ account, pageSize: 5, pollMs: 100 });
    for await (const entry of tail) {
      first.push(entry);
      if (first.length === 3) break;
    }
    const rest: LedgerEntry[] = [];
    const abort = new AbortController();
    const ended = drain(
      client.ledger.tailLedgerEntries({
        account,
        resumeToken: tail.resumeToken,
        pageSize: 2,
        pollMs: 100,
        signal: abort.signal,
      }),
      rest,
    );
    await waitFor(() => Promise.resolve(rest.length >= 2), { what: 'the other two entries' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    const all = await tableIds(seller);
    expect([...first, ...rest].map((e) => e.entryId)).toEqual(all);
  });

  it('refuses a position of its first page under other filters', async () => {
    // Before the first page there is no server token to bind a position to its filters.
    const seller = 'tail-filter';
    await book(seller);
    const tail = client.ledger.tailLedgerEntries({
      account: `seller_payable:${seller}`,
      pollMs: 100,
    });
    for await (const entry of tail) {
      expect(entry.account).toBe(`seller_payable:${seller}`);
      break;
    }
    expect(tail.resumeToken).toMatch(/^@[\w-]+\.\d+$/);
    expect(() =>
      client.ledger.tailLedgerEntries({ account: 'psp_receivable', resumeToken: tail.resumeToken }),
    ).toThrow(/taken with other filters/);
    expect(() =>
      client.ledger.tailLedgerEntries({
        account: `seller_payable:${seller}`,
        resumeToken: tail.resumeToken,
      }),
    ).not.toThrow();
  });

  it("retries RESOURCE_EXHAUSTED after the node's retry delay", async () => {
    // A node whose database queue is full sheds ListEntries with RESOURCE_EXHAUSTED and says
    // when to come back; a tail must outlast that, not end.
    const busy = new grpc.Server();
    let calls = 0;
    busy.addService(LedgerServiceService, {
      listEntries: (_call: unknown, callback: grpc.sendUnaryData<unknown>) => {
        calls += 1;
        if (calls === 1) {
          const metadata = new grpc.Metadata();
          metadata.set('settle-retry-delay-ms', '700');
          callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'busy', metadata });
          return;
        }
        callback(
          null,
          ListEntriesResponse.fromPartial({ entries: [entryOf('1')], resumePageToken: 'r1' }),
        );
      },
      getTrialBalance: () => {},
    });
    const port = await bindLocal(busy);
    const busyClient = createSettleClient(`127.0.0.1:${port}`);
    try {
      const delays: number[] = [];
      const tail = busyClient.ledger.tailLedgerEntries({
        pollMs: 100,
        onRetry: (error, delayMs) => {
          expect(error.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
          delays.push(delayMs);
        },
      });
      for await (const entry of tail) {
        expect(entry.entryId).toBe('1');
        break;
      }
      // The node's 700 ms, not the first backoff of 250 ms ± 20 %.
      expect(delays).toEqual([700]);
    } finally {
      busyClient.close();
      busy.forceShutdown();
    }
  });

  it('retries UNAVAILABLE with backoff up to retriesMax, then throws it', async () => {
    const nowhere = createSettleClient(`127.0.0.1:${await freePort()}`, {
      defaultTimeoutMs: 2_000,
    });
    try {
      const retries: Array<[number, number]> = [];
      const ended = await drain(
        nowhere.ledger.tailLedgerEntries({
          retriesMax: 2,
          onRetry: (error, delayMs, attempt) => {
            expect(error.code).toBe(grpc.status.UNAVAILABLE);
            retries.push([attempt, delayMs]);
          },
        }),
        [],
      );
      expect((ended as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
      expect(retries.map(([attempt]) => attempt)).toEqual([1, 2]);
      // 250 ms, then 500 ms, each ±20 %.
      expect(retries[0]?.[1]).toBeGreaterThanOrEqual(200);
      expect(retries[0]?.[1]).toBeLessThanOrEqual(300);
      expect(retries[1]?.[1]).toBeGreaterThanOrEqual(400);
      expect(retries[1]?.[1]).toBeLessThanOrEqual(600);
    } finally {
      nowhere.close();
    }
  });

  it('ends on abort while it retries, and says it was retrying', async () => {
    const nowhere = createSettleClient(`127.0.0.1:${await freePort()}`);
    try {
      const tail = nowhere.ledger.tailLedgerEntries({ signal: AbortSignal.timeout(800) });
      expect(await drain(tail, [])).toBe('ended');
      expect(tail.retryingAfter?.code).toBe(grpc.status.UNAVAILABLE);
      expect(tail.resumeToken).toBe('');
    } finally {
      nowhere.close();
    }
    const abort = new AbortController();
    const up = client.ledger.tailLedgerEntries({ pollMs: 100, signal: abort.signal });
    const ended = drain(up, []);
    await new Promise((resolve) => setTimeout(resolve, 300));
    abort.abort();
    expect(await ended).toBe('ended');
    expect(up.retryingAfter).toBeUndefined();
    // Read to the head of the ledger: a position, even with nothing given.
    expect(up.resumeToken).not.toBe('');
  });

  describe('against a server that never answers', () => {
    // A real gRPC server whose ListEntries never calls back: each call ends at its deadline.
    let silent: grpc.Server;
    let silentClient: SettleClient;
    beforeAll(async () => {
      silent = new grpc.Server();
      silent.addService(LedgerServiceService, { listEntries: () => {}, getTrialBalance: () => {} });
      const port = await bindLocal(silent);
      silentClient = createSettleClient(`127.0.0.1:${port}`);
    });
    afterAll(() => {
      silentClient?.close();
      silent?.forceShutdown();
    });

    it('retries DEADLINE_EXCEEDED, each call bounded by timeoutMs', async () => {
      const retries: number[] = [];
      const started = Date.now();
      const ended = await drain(
        silentClient.ledger.tailLedgerEntries({
          timeoutMs: 200,
          retriesMax: 1,
          onRetry: (error) => retries.push(error.code),
        }),
        [],
      );
      expect((ended as grpc.ServiceError).code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(retries).toEqual([grpc.status.DEADLINE_EXCEEDED]);
      // Two calls of 200 ms and a backoff of 250 ms ±20 %.
      expect(Date.now() - started).toBeLessThan(2_000);
    });

    it('cancels the call in flight on abort and ends at once', async () => {
      const abort = new AbortController();
      const tail = silentClient.ledger.tailLedgerEntries({
        timeoutMs: 60_000,
        signal: abort.signal,
      });
      const ended = drain(tail, []);
      await new Promise((resolve) => setTimeout(resolve, 300));
      const abortedAt = Date.now();
      abort.abort();
      expect(await ended).toBe('ended');
      expect(Date.now() - abortedAt).toBeLessThan(200);
      expect(tail.retryingAfter).toBeUndefined();
    });
  });

  it('stops with NoResumeTokenError on a node that gives no resume token, not starting over', async () => {
    // A node from before tailing: one full page with a next token, then a last page without.
    const pages = [
      { entries: [entryOf('1'), entryOf('2')], nextPageToken: 'p2' },
      { entries: [entryOf('3')], nextPageToken: '' },
    ].map((page) => ListEntriesResponse.fromPartial(page));
    const old = new grpc.Server();
    const asked: string[] = [];
    old.addService(LedgerServiceService, {
      listEntries: (
        call: grpc.ServerUnaryCall<{ pageToken: string }, unknown>,
        callback: grpc.sendUnaryData<unknown>,
      ) => {
        asked.push(call.request.pageToken);
        callback(null, pages[asked.length - 1] ?? ListEntriesResponse.fromPartial({}));
      },
      getTrialBalance: () => {},
    });
    const port = await bindLocal(old);
    const oldClient = createSettleClient(`127.0.0.1:${port}`);
    try {
      const seen: LedgerEntry[] = [];
      // Bounded, so a tail that starts over fails on what it gave rather than on the timeout.
      const tail = oldClient.ledger.tailLedgerEntries({
        pageSize: 2,
        pollMs: 100,
        signal: AbortSignal.timeout(5_000),
      });
      const ended = await drain(tail, seen);
      expect(ended).toBeInstanceOf(NoResumeTokenError);
      expect(seen.map((e) => e.entryId)).toEqual(['1', '2', '3']);
      expect(asked).toEqual(['', 'p2']);
      expect(tail.resumeToken).toBe('p2.3');
    } finally {
      oldClient.close();
      old.forceShutdown();
    }
  });

  it("stops with NoHeadError on a node that ignores from_head, not giving the ledger's first page", async () => {
    const old = new grpc.Server();
    const asked: boolean[] = [];
    old.addService(LedgerServiceService, {
      listEntries: (
        call: grpc.ServerUnaryCall<{ fromHead: boolean }, unknown>,
        callback: grpc.sendUnaryData<unknown>,
      ) => {
        asked.push(call.request.fromHead);
        callback(
          null,
          ListEntriesResponse.fromPartial({ entries: [entryOf('1')], resumePageToken: 'p1' }),
        );
      },
      getTrialBalance: () => {},
    });
    const port = await bindLocal(old);
    const oldClient = createSettleClient(`127.0.0.1:${port}`);
    try {
      const seen: LedgerEntry[] = [];
      const tail = oldClient.ledger.tailLedgerEntries({
        from: 'head',
        signal: AbortSignal.timeout(5_000),
      });
      expect(await drain(tail, seen)).toBeInstanceOf(NoHeadError);
      expect(seen).toEqual([]);
      expect(asked).toEqual([true]);
      expect(tail.resumeToken).toBe('');
    } finally {
      oldClient.close();
      old.forceShutdown();
    }
  });

  it('throws a refusal such as INVALID_ARGUMENT at once, without retrying', async () => {
    let retried = 0;
    const ended = await drain(
      client.ledger.tailLedgerEntries({
        account: 'no-such-account',
        onRetry: () => (retried += 1),
      }),
      [],
    );
    expect((ended as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((ended as grpc.ServiceError).details).toMatch(/^account: 'no-such-account' is not/);
    expect(retried).toBe(0);
  });

  it('ends at once on an abort while it waits at the head of the ledger', async () => {
    const abort = new AbortController();
    const ended = drain(
      client.ledger.tailLedgerEntries({
        account: 'seller_payable:tail-idle',
        pollMs: 3_600_000,
        signal: abort.signal,
      }),
      [],
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    const abortedAt = Date.now();
    abort.abort();
    expect(await ended).toBe('ended');
    expect(Date.now() - abortedAt).toBeLessThan(200);
  });

  it.each<[TailLedgerEntriesOptions, RegExp]>([
    [{ pollMs: 10 }, /pollMs 10 is not a whole number from 100 to 3600000/],
    [{ pageSize: 0 }, /pageSize 0 is not a whole number from 1 to 500/],
    [{ timeoutMs: 0 }, /timeoutMs 0 is not a whole number/],
    [
      { resumeToken: 'abc.x1' },
      /resumeToken is neither a tail position nor a ListEntries page token/,
    ],
    // An entry id past int64 (a BIGINT): no entry has one, so the tail would skip them all.
    [
      { resumeToken: 'abc.9223372036854775808' },
      /resumeToken is neither a tail position nor a ListEntries page token/,
    ],
    [{ from: 'head', resumeToken: 'abc' }, /from: 'head' and a resumeToken both say where/],
    // As a caller without the types could pass it.
    [{ from: 'last' as TailStart }, /from last is neither 'first' nor 'head'/],
  ])('refuses %j before calling', (options, message) => {
    expect(() => client.ledger.tailLedgerEntries(options)).toThrow(message);
  });
});

/** Binds a stand-in server to a free local port, plaintext. */
function bindLocal(server: grpc.Server): Promise<number> {
  return new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
}
