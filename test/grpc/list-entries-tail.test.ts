/**
 * Goal: ListEntries can be tailed. A caller that follows next_page_token, and resume_page_token
 * once that is empty, gets every committed entry exactly once and in id order, also an entry whose
 * booking commits after bookings with higher ids did; a page ends before such a booking while it is
 * open, and says so (stopped_at_horizon); ids an INSERT was given before a later booking committed,
 * and whose rows come after it, are waited for too (they look like a rollback's gap); a booking
 * rolled back holds the tail for the settle window only, and a payment order's listing not at all;
 * a gap is passed once a mark the node's LedgerMarker took (no listing) is a settle window old; a
 * listing of one account is not held by another account's booking, and moves on through others' ids
 * a bounded range per call. Before, a page ended at whatever had committed, its token passed the
 * open booking's ids, and the entries were never listed; the last page had no token to tail with.
 * Method: the real LedgerService handlers on 127.0.0.1:0 over a fresh MariaDB database, with a
 * settle window of SETTLE_MS; bookings are posted by the ledger repository in real transactions,
 * one of them held open on its own connection while later ones commit, or sent as group commit's
 * one-packet transactions, one of them waiting for a wallet row another connection holds locked;
 * what a tail saw is compared with the table.
 */
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  LedgerServiceClient,
  LedgerServiceService,
  type ListEntriesResponse,
} from '../../src/grpc/generated/settle/v1/wallet.js';
import { ledgerHandlers } from '../../src/grpc/handlers/ledger.handlers.js';
import { openDatabase, type Db } from '../../src/storage/db.js';
import { commitInOneTrip } from '../../src/storage/one-trip.js';
import {
  LedgerMarker,
  listSettledLedgerEntries,
} from '../../src/storage/repositories/ledger-horizon.repository.js';
import {
  creditWallets,
  ledgerPosting,
  postLedgerTransaction,
  postLedgerTransactions,
  walletCredits,
} from '../../src/storage/repositories/ledger.repository.js';
import { advanceLedgerSums } from '../../src/storage/repositories/ledger-sums.repository.js';
import { inTransaction, type Trx } from '../../src/storage/transaction.js';
import { expectLedgerBalanced, openTestDatabase } from '../support/harness.js';
import { holdOpenBooking, paymentBooking, type HeldBooking } from '../support/ledger.js';
import { callUnary, startServer, stopServer, type RunningServer } from './harness.js';

/**
 * The settle window of these tests (reservationSettleMs), how often marks are taken, and how
 * many ids a page checks for gaps at most.
 */
const HORIZON = { reservationSettleMs: 400, markIntervalMs: 50, gapCheckIdsMax: 50 } as const;
const SETTLE_MS = HORIZON.reservationSettleMs;

let db: Db;
/** A pool that sends one-packet transactions, as Settle's group commits do. */
let writers: Db;
let close: () => Promise<void>;
let closeWriters: () => Promise<void> = () => Promise.resolve();
let running: RunningServer | undefined;
let client: LedgerServiceClient;

beforeAll(async () => {
  let url: string;
  ({ db, url, close } = await openTestDatabase('settle_ledger_tail_t', { poolSize: 12 }));
  ({ db: writers, close: closeWriters } = openDatabase(url, {
    poolSize: 4,
    multipleStatements: true,
  }));
  running = await startServer((server) =>
    server.addService(LedgerServiceService, ledgerHandlers(db, { log: () => {} }, HORIZON)),
  );
  client = new LedgerServiceClient(running.address, grpc.credentials.createInsecure());
});
afterAll(async () => {
  client?.close();
  stopServer(running);
  await closeWriters();
  await close?.();
});
afterEach(async () => {
  // A test that failed midway leaves its held bookings open: end them before cleaning up.
  await Promise.all([...holds].map((hold) => hold.finish('rollback')));
  await expectLedgerBalanced(db);
  // TRUNCATE: ids start again at 1, so no test begins above a hole of deleted ids (which holds
  // a listing for the settle window); the marks of where ids were go with them.
  for (const table of [
    'ledger_entry',
    'ledger_transaction',
    'ledger_entry_mark',
    'wallet',
    'ledger_account_sum',
    'ledger_currency_sum',
  ]) {
    await sql`TRUNCATE TABLE ${sql.table(table)}`.execute(db);
  }
  // The ids start again at 1: a checkpoint a test moved up would claim them settled.
  await sql`UPDATE ledger_sum_checkpoint SET upto_id = 0`.execute(db);
});

/** Posts a booking and commits it; answers its order id. */
async function book(seller = 's1'): Promise<string> {
  const posted = paymentBooking(seller);
  await inTransaction(db, (trx) => postLedgerTransaction(trx, posted));
  return posted.orderId;
}

/** Bookings held open and not yet finished. */
const holds = new Set<HeldBooking>();

/** A booking to `seller` left open until `finish` (holdOpenBooking). */
function holdOpen(seller = 's1'): Promise<HeldBooking> {
  return holdOpenBooking(db, paymentBooking(seller), holds);
}

/**
 * Writes a booking's entries at ids 3 and 4, as an INSERT given those ids before a later booking
 * committed would once its rows come.
 */
async function insertLateBooking(trx: Trx): Promise<void> {
  const late = paymentBooking('late');
  await sql`INSERT INTO ledger_transaction (id, order_id, kind, currency, amount_minor, created_at)
    VALUES (${late.id}, ${late.orderId}, 'PAYMENT', 'USD', 100, NOW(3))`.execute(trx);
  await sql`INSERT INTO ledger_entry (id, transaction_id, account, order_id, kind, currency,
      debit_minor, credit_minor, created_at)
    VALUES (3, ${late.id}, 'psp_receivable', ${late.orderId}, 'PAYMENT_RECEIVABLE', 'USD',
            100, 0, NOW(3)),
           (4, ${late.id}, 'seller_payable:late', ${late.orderId}, 'PAYMENT_PAYABLE', 'USD',
            0, 100, NOW(3))`.execute(trx);
}

/** Ids of `account`'s entries in the table, committed or not. */
async function idsOfAccountUncommitted(account: string): Promise<string[]> {
  return db
    .transaction()
    .setIsolationLevel('read uncommitted')
    .execute(async (trx) => {
      const result = await sql<{ id: string }>`
        SELECT id FROM ledger_entry WHERE account = ${account} ORDER BY id`.execute(trx);
      return result.rows.map((row) => String(row.id));
    });
}

/** Polls `condition` every 10 ms until it holds; fails after `timeoutMs`. */
async function waitFor(condition: () => Promise<boolean>, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Entry ids in the table, committed, in order. */
async function committedIds(): Promise<string[]> {
  const result = await sql<{ id: string }>`SELECT id FROM ledger_entry ORDER BY id`.execute(db);
  return result.rows.map((row) => String(row.id));
}

/**
 * A caller tailing the ledger: it follows next_page_token, and resume_page_token once that is
 * empty; with neither (as before this change), it keeps the token it had.
 */
class Tail {
  readonly seen: string[] = [];
  token = '';
  calls = 0;
  constructor(
    private readonly pageSize: number,
    private readonly filter: Readonly<{ account?: string; orderId?: string }> = {},
    private readonly via: LedgerServiceClient = client,
  ) {}

  /** Asks for the settled head (from_head) and goes on from its token; answers the response. */
  async startAtHead(): Promise<ListEntriesResponse> {
    this.calls += 1;
    const outcome = await callUnary(this.via.listEntries.bind(this.via), {
      pageSize: 0,
      pageToken: '',
      account: this.filter.account ?? '',
      orderId: this.filter.orderId ?? '',
      fromHead: true,
    });
    if (!outcome.ok) throw outcome.error;
    this.token = outcome.response.resumePageToken;
    return outcome.response;
  }

  async read(): Promise<ListEntriesResponse> {
    this.calls += 1;
    const outcome = await callUnary(this.via.listEntries.bind(this.via), {
      pageSize: this.pageSize,
      pageToken: this.token,
      account: this.filter.account ?? '',
      orderId: this.filter.orderId ?? '',
      fromHead: false,
    });
    if (!outcome.ok) throw outcome.error;
    const response = outcome.response;
    this.seen.push(...response.entries.map((entry) => entry.entryId));
    if (response.nextPageToken !== '') this.token = response.nextPageToken;
    // Falsy, not only '': against a server of the code before (the test's proof that it fails
    // there), the field is missing.
    else if (response.resumePageToken) this.token = response.resumePageToken;
    return response;
  }

  /** Reads until a page has nothing after it (or `deadlineMs` passes, which fails the test). */
  async catchUp(deadlineMs = 5_000): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    for (;;) {
      const response = await this.read();
      if (response.nextPageToken === '' && !response.stoppedAtHorizon) return;
      if (Date.now() > deadline) throw new Error(`the tail did not catch up in ${deadlineMs} ms`);
      if (response.stoppedAtHorizon) await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

describe('ListEntries tailing', () => {
  it('lists an entry that commits after entries with higher ids were listed, once', async () => {
    await book();
    const open = await holdOpen();
    await book();
    await book();
    const tail = new Tail(3);

    const first = await tail.read();
    // The page ends before the open booking: the entries after it wait for it.
    expect(first.entries).toHaveLength(2);
    expect(first.stoppedAtHorizon).toBe(true);
    // Nothing more now: a caller paging until the token is empty stops here instead of spinning;
    // a tail goes on with the resume token.
    expect(first.nextPageToken).toBe('');
    expect(first.resumePageToken).not.toBe('');
    const held = await tail.read();
    expect(held.entries).toEqual([]);
    expect(held.stoppedAtHorizon).toBe(true);

    await open.finish('commit');
    await tail.catchUp();
    await book();
    await tail.catchUp();

    const ids = await committedIds();
    expect(ids).toHaveLength(10);
    expect(tail.seen).toEqual(ids);
  });

  it('lists entries whose ids were handed out before a later booking committed', async () => {
    // InnoDB gives an INSERT its ids before its rows are in the table, and a later booking can
    // commit meanwhile: the ids look like a rollback's gap until the rows come. Here ids 3 and 4
    // are skipped (AUTO_INCREMENT moved past them), 5 and 6 committed, and 3 and 4 written last.
    await book();
    await sql`ALTER TABLE ledger_entry AUTO_INCREMENT = 5`.execute(db);
    await book();
    const tail = new Tail(10);
    const first = await tail.read();
    expect(first.entries.map((entry) => entry.entryId)).toEqual(['1', '2']);
    expect(first.stoppedAtHorizon).toBe(true);
    expect((await tail.read()).entries).toEqual([]);

    await inTransaction(db, (trx) => insertLateBooking(trx));
    await tail.catchUp();
    expect(tail.seen).toEqual(['1', '2', '3', '4', '5', '6']);
  });

  it('holds a page at a rolled-back booking only for the settle window', async () => {
    await book();
    const open = await holdOpen();
    await book();
    const tail = new Tail(10);
    expect((await tail.read()).stoppedAtHorizon).toBe(true);

    await open.finish('rollback');
    const started = Date.now();
    // Its ids are a gap now, which an INSERT about to put its row there would leave too.
    const young = await tail.read();
    expect(young.entries).toEqual([]);
    expect(young.stoppedAtHorizon).toBe(true);
    await tail.catchUp();
    expect(Date.now() - started).toBeLessThan(SETTLE_MS + 2_000);
    expect(tail.seen).toEqual(await committedIds());
    expect(tail.seen).toHaveLength(4);
  });

  it("does not hold one account's listing at another account's open booking", async () => {
    await book('s1');
    const open = await holdOpen('s2');
    await book('s1');
    const tail = new Tail(10, { account: 'seller_payable:s1' });

    const page = await tail.read();
    expect(page.entries.map((entry) => entry.account)).toEqual([
      'seller_payable:s1',
      'seller_payable:s1',
    ]);
    expect(page.stoppedAtHorizon).toBe(false);
    expect(page.nextPageToken).toBe('');
    expect(page.resumePageToken).not.toBe('');
    await open.finish('commit');
  });

  it("moves a listing of one account on through other accounts' ids, a bounded range a call", async () => {
    await book('s1');
    for (let i = 0; i < 60; i += 1) await book('s2');
    await book('s1');
    const tail = new Tail(10, { account: 'seller_payable:s1' });
    // 124 ids, 50 checked for gaps a call: three calls, none of them waiting for a mark to age.
    await tail.catchUp();
    expect(tail.seen).toEqual(['2', '124']);
    expect(tail.calls).toBe(3);
  });

  it("does not hold a payment order's listing at a gap", async () => {
    await book();
    const open = await holdOpen();
    await open.finish('rollback');
    const orderId = await book();
    const everything = await new Tail(10).read();
    expect(everything.stoppedAtHorizon).toBe(true);
    const order = await new Tail(10, { orderId }).read();
    expect(order.entries.map((entry) => entry.entryId)).toEqual(['5', '6']);
    expect(order.stoppedAtHorizon).toBe(false);
  });

  it('passes a gap once a mark a node took by itself is a settle window old', async () => {
    await book();
    const open = await holdOpen();
    await open.finish('rollback');
    await book();
    // No listing before this one takes a mark: the marker alone does.
    const marker = new LedgerMarker(db, HORIZON, (error) => {
      throw error;
    });
    marker.start();
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS + 3 * HORIZON.markIntervalMs));
    await marker.stop();
    const page = await new Tail(10).read();
    expect(page.entries.map((entry) => entry.entryId)).toEqual(['1', '2', '5', '6']);
    expect(page.stoppedAtHorizon).toBe(false);
  });

  it('stops at rows that land between its two uncommitted reads', async () => {
    // Ids 3 and 4 handed out and not in the table yet, 5 and 6 committed (as above); the rows of
    // 3 and 4 land, uncommitted, right after the first of the page's two READ UNCOMMITTED reads
    // (the gap check, the in-flight read) answers. Reading in-flight rows first let them pass
    // both: not in the table for the one, no gap any more for the other.
    await book();
    await sql`ALTER TABLE ledger_entry AUTO_INCREMENT = 5`.execute(db);
    await book();
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    let lateDone: Promise<void> | undefined;
    const landLateRows = async () => {
      let inserted: () => void = () => {};
      const isInserted = new Promise<void>((resolve) => (inserted = resolve));
      lateDone = db.transaction().execute(async (trx) => {
        await insertLateBooking(trx);
        inserted();
        await released;
      });
      await isInserted;
    };
    const uncommittedReads = new Set<unknown>();
    let landed = false;
    const hooked = db.withPlugin({
      transformQuery: (args) => {
        const text = (args.node as { sqlFragments?: readonly string[] }).sqlFragments?.join('?');
        if (text !== undefined && /NOT IN|NOT EXISTS/.test(text))
          uncommittedReads.add(args.queryId);
        return args.node;
      },
      transformResult: async (args) => {
        if (uncommittedReads.has(args.queryId) && !landed) {
          landed = true;
          await landLateRows();
        }
        return args.result;
      },
    });
    try {
      const first = await listSettledLedgerEntries(hooked, { limit: 10 }, HORIZON);
      expect(landed).toBe(true);
      expect(first.entries.map((entry) => String(entry.id))).toEqual(['1', '2']);
      expect(first.stoppedAtHorizon).toBe(true);
      release();
      await lateDone;
      const tail = new Tail(10);
      tail.token = '';
      await tail.catchUp();
      const afterFirst = tail.seen.filter((id) => BigInt(id) > (first.resumeAfter ?? 0n));
      expect([...first.entries.map((entry) => String(entry.id)), ...afterFirst]).toEqual([
        '1',
        '2',
        '3',
        '4',
        '5',
        '6',
      ]);
    } finally {
      release();
      await lateDone;
    }
  });

  it('answers a page at once when its mark cannot be written, and the marker skips ticks', async () => {
    await book();
    // Every mark older than the interval, so the listing wants to write one; the ring's rows
    // locked by another connection, so that write waits for the lock.
    await sql`INSERT INTO ledger_entry_mark (slot, taken_at, max_id)
      VALUES (0, '2000-01-01', 0), (1, '2000-01-01', 0)`.execute(db);
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked: () => void = () => {};
    const isLocked = new Promise<void>((resolve) => (locked = resolve));
    const holder = db.transaction().execute(async (trx) => {
      await sql`SELECT slot FROM ledger_entry_mark FOR UPDATE`.execute(trx);
      locked();
      await released;
    });
    await isLocked;
    let marks = 0;
    class Counting extends LedgerMarker {
      override async takeMark(): Promise<void> {
        marks += 1;
        return super.takeMark();
      }
    }
    const markErrors: unknown[] = [];
    const marker = new Counting(db, { ...HORIZON, markIntervalMs: 20 }, () => {});
    try {
      marker.start();
      // The listing's own mark waits for the lock: the page does not (before, it waited the
      // pool's lock wait, 5 s, and then failed).
      const started = Date.now();
      const page = await listSettledLedgerEntries(
        db,
        { limit: 10 },
        {
          ...HORIZON,
          onMarkError: (error) => markErrors.push(error),
        },
      );
      expect(page.entries.map((entry) => String(entry.id))).toEqual(['1', '2']);
      expect(Date.now() - started).toBeLessThan(1_000);
      await new Promise((resolve) => setTimeout(resolve, 300));
      // One mark waiting for the lock all along; the ticks meanwhile were skipped.
      expect(marks).toBe(1);
      release();
      await holder;
      await new Promise((resolve) => setTimeout(resolve, 100));
      // No burst of the ticks of the wait once the lock is gone (before, about 15 ran back to
      // back): about one a tick from then on.
      expect(marks).toBeLessThan(10);
      expect(markErrors).toEqual([]);
    } finally {
      release();
      await holder;
      await marker.stop();
    }
  }, 20_000);

  it("holds a tail at a one-packet booking waiting for a hot seller's wallet", async () => {
    // Group commit's packets insert the ledger rows, then credit the wallets: a batch that waits
    // for a hot seller's wallet row holds its ledger rows uncommitted meanwhile.
    const now = new Date();
    const credit = (sellerId: string) => ({
      sellerId,
      currency: 'USD' as const,
      amountMinor: 100n,
      now,
    });
    await inTransaction(db, (trx) => creditWallets(trx, [credit('hot')]));
    const packet = (seller: string) => {
      const posting = ledgerPosting(writers, [paymentBooking(seller)]);
      const wallets = walletCredits(writers, [credit(seller)]);
      if (posting === undefined || wallets === undefined) throw new Error('nothing to write');
      return [...posting.inserts, ...posting.balancedGuard(), wallets];
    };
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked: () => void = () => {};
    const isLocked = new Promise<void>((resolve) => (locked = resolve));
    const holder = db.transaction().execute(async (trx) => {
      await sql`SELECT seller_id FROM wallet WHERE seller_id = 'hot' FOR UPDATE`.execute(trx);
      locked();
      await released;
    });
    await isLocked;
    try {
      await book('early');
      const waiting = commitInOneTrip(writers, packet('hot'));
      await waitFor(async () => (await idsOfAccountUncommitted('seller_payable:hot')).length === 1);
      expect((await commitInOneTrip(writers, packet('cold'))).committed).toBe(true);
      const tail = new Tail(10);
      const page = await tail.read();
      expect(page.entries.map((entry) => entry.account)).toEqual([
        'psp_receivable',
        'seller_payable:early',
      ]);
      expect(page.stoppedAtHorizon).toBe(true);
      release();
      expect((await waiting).committed).toBe(true);
      await tail.catchUp();
      expect(tail.seen).toEqual(await committedIds());
      expect(tail.seen).toHaveLength(6);
    } finally {
      release();
      await holder;
    }
  });

  it('gives every entry once, in order, to a tail running beside concurrent bookings', async () => {
    const tail = new Tail(7);
    let writing = true;
    const reader = (async () => {
      while (writing) {
        await tail.read();
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    // Lanes of bookings, each held open for a random while, some rolled back: they commit in
    // another order than their ids.
    await Promise.all(
      Array.from({ length: 8 }, async (_, lane) => {
        for (let i = 0; i < 8; i += 1) {
          const open = await holdOpen(`s${lane}`);
          await new Promise((resolve) => setTimeout(resolve, Math.random() * 25));
          await open.finish(Math.random() < 0.15 ? 'rollback' : 'commit');
        }
      }),
    );
    writing = false;
    await reader;
    // A gap left by the last rollbacks holds the tail for the settle window at most.
    await tail.catchUp();

    const ids = await committedIds();
    expect(ids.length).toBeGreaterThan(0);
    expect(tail.seen).toEqual(ids);
  });
});

describe('ListEntries from_head', () => {
  it('starts a tail after the entries booked before, and gives those booked after once', async () => {
    await book();
    await book();
    const tail = new Tail(10);

    const head = await tail.startAtHead();
    expect(head.entries).toEqual([]);
    expect(head.nextPageToken).toBe('');
    expect(head.stoppedAtHorizon).toBe(false);
    expect(head.resumePageToken).not.toBe('');
    await tail.catchUp();
    expect(tail.seen).toEqual([]);

    await book();
    await tail.catchUp();
    await book();
    await tail.catchUp();
    expect(tail.seen).toEqual((await committedIds()).slice(4));
    expect(tail.seen).toEqual(['5', '6', '7', '8']);
  });

  it('answers the token of the start on an empty ledger', async () => {
    const head = await new Tail(10).startAtHead();
    // The same token as the resume token of the empty ledger's one page: at 0, before the first.
    const first = await new Tail(10).read();
    expect(head.resumePageToken).toBe(first.resumePageToken);
    const tail = new Tail(10);
    tail.token = head.resumePageToken;
    await book();
    await tail.catchUp();
    expect(tail.seen).toEqual(['1', '2']);
  });

  it('keeps the head below a booking still open, so its entries come when it commits', async () => {
    await book();
    const open = await holdOpen();
    // Far more entries committed after the open booking than a search for the head reads a page:
    // a head found among the newest entries alone would be past the open booking.
    await inTransaction(db, (trx) =>
      postLedgerTransactions(
        trx,
        Array.from({ length: 600 }, () => paymentBooking('after')),
      ),
    );
    const tail = new Tail(500);
    await tail.startAtHead();
    const held = await tail.read();
    expect(held.entries).toEqual([]);
    expect(held.stoppedAtHorizon).toBe(true);

    await open.finish('commit');
    await tail.catchUp();
    // The open booking's entries (ids 3 and 4) and, after them, those committed above it before
    // the call: the head could not pass what might still commit.
    const ids = await committedIds();
    expect(ids).toHaveLength(1_204);
    expect(tail.seen).toEqual(ids.slice(2));
  });

  it('keeps the filters in the token', async () => {
    await book('s1');
    await book('s2');
    const tail = new Tail(10, { account: 'seller_payable:s1' });
    const head = await tail.startAtHead();

    const other = new Tail(10, { account: 'seller_payable:s2' });
    other.token = head.resumePageToken;
    await expect(other.read()).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details:
        'page_token: invalid or from a request with other filters; start again without page_token',
    });

    await book('s2');
    await book('s1');
    await tail.catchUp();
    expect(tail.seen).toEqual(['8']);
  });

  it('refuses from_head with a page_token', async () => {
    await book();
    const first = await new Tail(1).read();
    const outcome = await callUnary(client.listEntries.bind(client), {
      pageSize: 0,
      pageToken: first.nextPageToken,
      account: '',
      orderId: '',
      fromHead: true,
    });
    expect(outcome.ok ? 'OK' : `${grpc.status[outcome.error.code]} ${outcome.error.details}`).toBe(
      'INVALID_ARGUMENT from_head: cannot be set with page_token, which says where to read from ' +
        'already; send one or the other',
    );
  });

  it("searches for the head from the running sums' checkpoint, UNAVAILABLE while too far", async () => {
    // A node whose search reads 10 entries a page, two pages at most: 30 entries are too many.
    const small = await startServer((server) =>
      server.addService(
        LedgerServiceService,
        ledgerHandlers(db, { log: () => {} }, { ...HORIZON, headSearchEntriesMax: 10 }),
      ),
    );
    const smallClient = new LedgerServiceClient(small.address, grpc.credentials.createInsecure());
    try {
      for (let i = 0; i < 15; i += 1) await book();
      const tail = new Tail(10, {}, smallClient);
      await expect(tail.startAtHead()).rejects.toMatchObject({
        code: grpc.status.UNAVAILABLE,
        details:
          "the settled head is too far past the ledger's running sums (entry 0, moved up a pass " +
          'at a time) to be found in one call; try again once they have caught up',
      });

      const pass = await advanceLedgerSums(db, { horizon: HORIZON, entriesPerPassMax: 1_000 });
      expect(pass.to).toBe(30n);
      await tail.startAtHead();
      await book();
      await tail.catchUp();
      expect(tail.seen).toEqual(['31', '32']);
    } finally {
      smallClient.close();
      stopServer(small);
    }
  });
});
