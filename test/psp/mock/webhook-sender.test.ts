/**
 * Goal: the webhook sender's lease rules hold with the in-memory hand-over. A row inserted
 * already leased is POSTed once, at once, without the poll; no poll takes it while its lease
 * lasts; a row whose hand-over was lost (a crash) is delivered after the lease; a row that waited
 * too long for a slot has its lease given back and is polled at once; stop() gives back the
 * leases of rows never POSTed, also of one whose claim was still running when stop began; a
 * delivered mark waiting to be written does not keep the POST's slot. Method: a real
 * WebhookSender on its own migrated MariaDB database, rows inserted with the repository's
 * insertWebhook, a local HTTP receiver; no mocks (a Kysely plugin holds one query's answer to
 * open the stop-during-claim window and to hold a delivered mark).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ensureDatabase, openDatabase } from '../../../src/storage/db.js';
import { commitInOneTrip, resultRows } from '../../../src/storage/one-trip.js';
import { migratePspToLatest } from '../../../src/psp/mock/migrations/index.js';
import type { PspDb } from '../../../src/psp/mock/payment.repository.js';
import type { PspDatabase } from '../../../src/psp/mock/schema.js';
import {
  WEBHOOK_SENDER_DEFAULTS,
  WebhookSender,
  type WebhookSenderOptions,
} from '../../../src/psp/mock/webhook-sender.js';
import {
  insertWebhook,
  insertWebhooksStatements,
  type WebhookIdRow,
  type PspWebhookDelivery,
} from '../../../src/psp/mock/webhook.repository.js';
import {
  dropDatabase,
  startWebhookReceiver,
  uniqueDatabaseUrl,
  waitFor,
  type WebhookReceiver,
} from '../psp-support.js';

const SECRET = 'whsec_test_secret_0123456789';
/** The mock's group commit under the default config. */
const GROUP_COMMIT = { batchMax: 128, inFlightMax: 2 };

let mysqlUrl: string;
let db: PspDb;
let closeDb: () => Promise<void>;
let receiver: WebhookReceiver;
const senders: WebhookSender[] = [];
let rowNumber = 0;

beforeAll(async () => {
  mysqlUrl = uniqueDatabaseUrl('settle_psp_sender');
  await ensureDatabase(mysqlUrl);
  const opened = openDatabase<PspDatabase>(mysqlUrl, { poolSize: 4, multipleStatements: true });
  db = opened.db;
  closeDb = opened.close;
  await migratePspToLatest(db);
  receiver = await startWebhookReceiver();
});

afterEach(async () => {
  for (const sender of senders.splice(0)) await sender.stop();
});

afterAll(async () => {
  await receiver?.close();
  await closeDb?.();
  if (mysqlUrl !== undefined) await dropDatabase(mysqlUrl);
});

function startSender(
  options: Partial<WebhookSenderOptions> = {},
  log: (line: string) => void = () => undefined,
): WebhookSender {
  const sender = new WebhookSender({
    db,
    secret: SECRET,
    options: { ...WEBHOOK_SENDER_DEFAULTS, backoffMsInitial: 50, backoffMsMax: 100, ...options },
    log,
    groupCommit: GROUP_COMMIT,
  });
  sender.start();
  senders.push(sender);
  return sender;
}

async function insertRow(url: string, leaseUntil: Date | undefined): Promise<PspWebhookDelivery> {
  rowNumber += 1;
  const eventId = `evt_sender_${Date.now()}_${rowNumber}`;
  return db.transaction().execute((trx) =>
    insertWebhook(trx, {
      eventId,
      delivery: 1,
      nonce: `nonce_${eventId}`,
      url,
      body: JSON.stringify({ id: eventId }),
      now: new Date(),
      leaseUntil,
    }),
  );
}

function stored(id: string) {
  return db.selectFrom('psp_webhook').selectAll().where('id', '=', id).executeTakeFirstOrThrow();
}

/**
 * `db` with the answer of its first write (the first statement that reports affected rows) held
 * until `openGate()`: the write itself has run; `reached` resolves when it is being held.
 */
function holdFirstWrite(): { gated: PspDb; reached: Promise<void>; openGate: () => void } {
  let writeReached!: () => void;
  const reached = new Promise<void>((resolve) => (writeReached = resolve));
  let openGate!: () => void;
  const gate = new Promise<void>((resolve) => (openGate = resolve));
  let held = false;
  const gated = db.withPlugin({
    transformQuery: (args) => args.node,
    transformResult: async (args) => {
      if (!held && args.result.numAffectedRows !== undefined) {
        held = true;
        writeReached();
        await gate;
      }
      return args.result;
    },
  });
  return { gated, reached, openGate };
}

describe('insertWebhooksStatements', () => {
  it('returns each row with the id it was stored under, leased or due, in one packet', async () => {
    const now = new Date();
    const lease = new Date(now.getTime() + 60_000);
    const eventIds = [1, 2, 3].map((i) => `evt_many_${Date.now()}_${i}`);
    const statements = insertWebhooksStatements(
      db,
      eventIds.map((eventId, i) => ({
        eventId,
        delivery: 1,
        nonce: `nonce_${eventId}`,
        url: `${receiver.url}/many`,
        body: JSON.stringify({ id: eventId }),
        now,
        leaseUntil: i === 1 ? undefined : lease,
      })),
    );
    const outcome = await commitInOneTrip(db, [statements.insert, statements.readIds]);
    if (!outcome.committed) throw new Error('no guard was sent, none can trip');
    const rows = statements.stored(resultRows<WebhookIdRow>(outcome.results[1]));
    expect(rows.map((row) => row.eventId)).toEqual(eventIds);
    for (const row of rows) {
      const found = await stored(row.id);
      expect(found.event_id).toBe(row.eventId);
      expect(found.attempts).toBe(row.attempts);
      expect(found.next_attempt_at.getTime()).toBe(row.nextAttemptAt.getTime());
    }
    expect(rows.map((row) => row.attempts)).toEqual([1, 0, 1]);
  });
});

describe('WebhookSender hand-over', () => {
  it('POSTs a handed-over row once and at once, with no poll, and records it delivered', async () => {
    // The poll would only run a minute from now: whatever arrives came through the hand-over.
    const sender = startSender({ pollMs: 60_000 });
    const path = `/handed/${Date.now()}`;
    const now = new Date();
    const row = await insertRow(`${receiver.url}${path}`, sender.leaseUntil(now));
    expect(row.attempts).toBe(1);
    sender.deliver(row);
    const done = await waitFor(async () => {
      const found = await stored(row.id);
      return found.delivered_at !== null && found;
    });
    expect(done.attempts).toBe(1);
    expect(receiver.at(path)).toHaveLength(1);
    expect(JSON.parse(receiver.at(path)[0]!.rawBody)).toEqual({ id: row.eventId });
  });

  it('does not let the poll take a leased row before its lease ends, and delivers it after (crash)', async () => {
    // A row leased by a process that died before POSTing it: nobody hands it over.
    const path = `/crashed/${Date.now()}`;
    const leaseMs = 600;
    const inserted = Date.now();
    const row = await insertRow(`${receiver.url}${path}`, new Date(inserted + leaseMs));
    startSender({ pollMs: 20 });
    await waitFor(() => receiver.at(path).length === 1, { what: 'the delivery after the lease' });
    expect(receiver.at(path)[0]!.receivedAtMs - inserted).toBeGreaterThanOrEqual(leaseMs - 10);
    const done = await waitFor(async () => {
      const found = await stored(row.id);
      return found.delivered_at !== null && found;
    });
    // The lost attempt counts, the poll's claim made the second.
    expect(done.attempts).toBe(2);
    expect(receiver.at(path)).toHaveLength(1);
  });

  it('gives back a lease too short for a whole attempt, and the poll delivers the row at once', async () => {
    const lines: string[] = [];
    const sender = startSender({ pollMs: 20, requestTimeoutMs: 1_000 }, (line) => lines.push(line));
    const path = `/short-lease/${Date.now()}`;
    const inserted = Date.now();
    const leaseMs = 2_500;
    // Less than requestTimeoutMs plus the margin to record the outcome is left: POSTing now
    // could outlive the lease.
    const row = await insertRow(`${receiver.url}${path}`, new Date(inserted + leaseMs));
    sender.deliver(row);
    await waitFor(() => receiver.at(path).length === 1, { what: 'the delivery' });
    // Not left to wait out its lease: the lease was given back and the poll claimed it afresh.
    expect(receiver.at(path)[0]!.receivedAtMs - inserted).toBeLessThan(leaseMs);
    const done = await waitFor(async () => {
      const found = await stored(row.id);
      return found.delivered_at !== null && found;
    });
    // The skipped hand-over is not counted: the poll's claim made the only attempt.
    expect(done.attempts).toBe(1);
    expect(receiver.at(path)).toHaveLength(1);
    expect(sender.shortLeases).toBe(1);
    expect(lines.some((line) => line.includes('too little of their lease'))).toBe(true);
  });

  it('frees the POST slot before the delivered mark is written', async () => {
    // The first delivered mark's UPDATE is answered only when the gate opens.
    const { gated, reached, openGate } = holdFirstWrite();
    // One slot: a mark that kept it would keep the second row from being POSTed.
    const sender = new WebhookSender({
      db: gated,
      secret: SECRET,
      options: { ...WEBHOOK_SENDER_DEFAULTS, pollMs: 60_000, inFlightMax: 1 },
      log: () => undefined,
      groupCommit: GROUP_COMMIT,
    });
    sender.start();
    senders.push(sender);
    const path = `/slot/${Date.now()}`;
    const first = await insertRow(`${receiver.url}${path}/1`, sender.leaseUntil(new Date()));
    const second = await insertRow(`${receiver.url}${path}/2`, sender.leaseUntil(new Date()));
    try {
      sender.deliver(first);
      await reached;
      sender.deliver(second);
      await waitFor(() => receiver.at(`${path}/2`).length === 1, {
        what: 'the second POST while the first mark is held',
      });
    } finally {
      openGate();
    }
    for (const row of [first, second]) {
      await waitFor(async () => (await stored(row.id)).delivered_at !== null, {
        what: `row ${row.id} recorded delivered`,
      });
    }
  });

  it('gives back the leases of waiting rows at stop; the one in flight counts as an attempt', async () => {
    // One slot, taken by a POST to a receiver that never answers: the others wait.
    const sender = new WebhookSender({
      db,
      secret: SECRET,
      options: { ...WEBHOOK_SENDER_DEFAULTS, pollMs: 60_000, inFlightMax: 1 },
      log: () => undefined,
      groupCommit: GROUP_COMMIT,
    });
    sender.start();
    const stuck = await startStuckServer();
    try {
      const rows: PspWebhookDelivery[] = [];
      for (let i = 0; i < 3; i += 1) {
        rows.push(await insertRow(`${stuck.url}/stuck`, sender.leaseUntil(new Date())));
      }
      for (const row of rows) sender.deliver(row);
      await waitFor(() => stuck.requests() === 1, { what: 'the first POST to hang' });
      await sender.stop();
      const [first, ...waiting] = await Promise.all(rows.map((row) => stored(row.id)));
      expect(first!.attempts).toBe(1);
      expect(first!.last_error).toBe('Error: the webhook sender is stopping');
      for (const row of waiting) {
        expect(row.attempts).toBe(0);
        expect(row.next_attempt_at.getTime()).toBeLessThanOrEqual(Date.now());
        expect(row.delivered_at).toBeNull();
      }
      expect(stuck.requests()).toBe(1);
    } finally {
      await stuck.close();
    }
  });
});

describe('WebhookSender stop', () => {
  it('gives back the lease of a row whose claim was running when stop began', async () => {
    // The first UPDATE (the poll's claim) commits, then its answer is held until stop() began.
    const { gated, reached, openGate } = holdFirstWrite();
    // Earlier tests' pending rows are retired, so the poll's first claim is this test's row.
    await db
      .updateTable('psp_webhook')
      .set({ given_up_at: new Date() })
      .where('delivered_at', 'is', null)
      .where('given_up_at', 'is', null)
      .execute();
    const path = `/claimed-at-stop/${Date.now()}`;
    const row = await insertRow(`${receiver.url}${path}`, undefined);
    const sender = new WebhookSender({
      db: gated,
      secret: SECRET,
      options: { ...WEBHOOK_SENDER_DEFAULTS, pollMs: 60_000 },
      log: () => undefined,
      groupCommit: GROUP_COMMIT,
    });
    sender.start();
    await reached;
    const stopped = sender.stop();
    openGate();
    await stopped;
    const found = await stored(row.id);
    // The claim's attempt is given back: due now, not counted, never POSTed.
    expect(found.attempts).toBe(0);
    expect(found.next_attempt_at.getTime()).toBeLessThanOrEqual(Date.now());
    expect(found.last_error).toBeNull();
    expect(receiver.at(path)).toHaveLength(0);
  });
});

/** An HTTP server that accepts requests and never answers them. */
async function startStuckServer(): Promise<{
  url: string;
  requests: () => number;
  close: () => Promise<void>;
}> {
  let count = 0;
  const server = createServer(() => {
    count += 1;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests: () => count,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
