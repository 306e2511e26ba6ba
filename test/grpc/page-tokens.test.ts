/**
 * Goal: a page token of a List RPC is honoured only with the filters it was made under (AIP-158).
 * Before, ListEntries, ListDeadLetters, ListReports and ListMismatches took the bare cursor of
 * one filter and applied it to another, silently skipping or repeating rows. Method: a real node
 * (startStack) whose tables get fixture rows under two values of each filter; each RPC pages
 * through one filter with page_size 1, then reuses its token with another filter, which must be
 * INVALID_ARGUMENT naming page_token; a token of one list is refused by another whose cursors look
 * alike. A numeric cursor or dead-letter id of 19 digits past int64 (which no BIGINT holds) is
 * malformed too: INVALID_ARGUMENT, where it was an empty page, the first page again or NOT_FOUND.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newId } from '../../src/domain/ids.js';
import { encodePageToken } from '../../src/domain/page-token.js';
import { AdminServiceClient, DeadLetterState } from '../../src/grpc/generated/settle/v1/admin.js';
import {
  MismatchClass,
  ReconciliationServiceClient,
} from '../../src/grpc/generated/settle/v1/reconciliation.js';
import { insertRun } from '../../src/reconciliation/reconciliation.repository.js';
import { ADMIN_TOKEN, recordedDeadLetter } from '../admin/admin-support.js';
import { call, startStack, type Stack } from '../support/harness.js';

const REFUSED =
  'page_token: invalid or from a request with other filters; start again without page_token';

let stack: Stack;
let admin: AdminServiceClient;
let recon: ReconciliationServiceClient;
beforeAll(async () => {
  stack = await startStack({ env: { ADMIN_TOKEN } });
  const address = `127.0.0.1:${stack.settle.grpcPort}`;
  admin = new AdminServiceClient(address, grpc.credentials.createInsecure());
  recon = new ReconciliationServiceClient(address, grpc.credentials.createInsecure());
});
afterAll(async () => {
  admin?.close();
  recon?.close();
  await stack?.stop();
});

type Outcome<Res> = { ok: true; response: Res } | { ok: false; error: grpc.ServiceError };

/** `call` with the admin token, answering the outcome instead of throwing. */
function unary<Req, Res>(
  method: Parameters<typeof call<Req, Res>>[0],
  request: Req,
): Promise<Outcome<Res>> {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
  return call(method, request, 10_000, metadata).then(
    (response): Outcome<Res> => ({ ok: true, response }),
    (error: grpc.ServiceError): Outcome<Res> => ({ ok: false, error }),
  );
}

/** Pages through with page_size 1 and answers the ids seen and the first page's token. */
async function pageThrough<Res extends { nextPageToken: string }>(
  page: (pageToken: string) => Promise<Outcome<Res>>,
  ids: (response: Res) => string[],
): Promise<{ seen: string[]; firstToken: string }> {
  const seen: string[] = [];
  let pageToken = '';
  let firstToken = '';
  for (let i = 0; i < 20; i += 1) {
    const outcome = await page(pageToken);
    if (!outcome.ok) throw outcome.error;
    seen.push(...ids(outcome.response));
    pageToken = outcome.response.nextPageToken;
    if (i === 0) firstToken = pageToken;
    if (pageToken === '') break;
  }
  return { seen, firstToken };
}

function expectRefused<Res>(outcome: Outcome<Res>): void {
  expect(outcome.ok, 'the call must fail').toBe(false);
  if (outcome.ok) return;
  expect(grpc.status[outcome.error.code]).toBe('INVALID_ARGUMENT');
  expect(outcome.error.details).toBe(REFUSED);
}

describe('page tokens are tied to the filters', () => {
  it('ListEntries: a token of one order is refused for another order and another account', async () => {
    const [orderA, orderB] = [newId('order'), newId('order')];
    const now = new Date();
    for (const [index, orderId] of [orderA, orderA, orderA, orderB, orderB].entries()) {
      await stack.settle.db
        .insertInto('ledger_entry')
        .values({
          transaction_id: newId('ledgerTransaction'),
          account: 'psp_receivable',
          order_id: orderId,
          kind: `fixture-${index}`, // (order, kind) is unique
          currency: 'USD',
          debit_minor: 1n,
          credit_minor: 0n,
          created_at: now,
        })
        .execute();
    }
    const list = (orderId: string, pageToken: string, account = '') =>
      unary(stack.ledger.listEntries.bind(stack.ledger), {
        pageSize: 1,
        pageToken,
        account,
        orderId,
        fromHead: false,
      });
    const a = await pageThrough(
      (token) => list(orderA, token),
      (r) => r.entries.map((e) => e.orderId),
    );
    expect(a.seen).toEqual([orderA, orderA, orderA]);
    expectRefused(await list(orderB, a.firstToken));
    expectRefused(await list(orderA, a.firstToken, 'psp_receivable'));
    expectRefused(await list(orderA, String(1)));
  });

  it('ListDeadLetters: a token of one order or state is refused for another', async () => {
    const [orderA, orderB] = [newId('order'), newId('order')];
    for (const orderId of [orderA, orderA, orderA, orderB])
      await recordedDeadLetter(stack, orderId);
    const list = (
      orderId: string,
      pageToken: string,
      state = DeadLetterState.DEAD_LETTER_STATE_UNSPECIFIED,
    ) => unary(admin.listDeadLetters.bind(admin), { pageSize: 1, pageToken, state, orderId });
    const a = await pageThrough(
      (token) => list(orderA, token),
      (r) => r.deadLetters.map((d) => d.orderId),
    );
    expect(a.seen).toEqual([orderA, orderA, orderA]);
    expectRefused(await list(orderB, a.firstToken));
    expectRefused(await list(orderA, a.firstToken, DeadLetterState.DEAD_LETTER_STATE_OPEN));
  });

  it('ListEntries and ListDeadLetters: a token of one list is refused by the other, both unfiltered', async () => {
    // Runs after the two tests above, which left at least two rows in each list. Both lists page
    // by numeric id, so only the list's name in the token tells their tokens apart.
    const entries = await unary(stack.ledger.listEntries.bind(stack.ledger), {
      pageSize: 1,
      pageToken: '',
      account: '',
      orderId: '',
      fromHead: false,
    });
    const deadLetters = await unary(admin.listDeadLetters.bind(admin), {
      pageSize: 1,
      pageToken: '',
      state: DeadLetterState.DEAD_LETTER_STATE_UNSPECIFIED,
      orderId: '',
    });
    if (!entries.ok || !deadLetters.ok) throw new Error('a first page failed');
    expect(entries.response.nextPageToken).not.toBe('');
    expect(deadLetters.response.nextPageToken).not.toBe('');
    expectRefused(
      await unary(admin.listDeadLetters.bind(admin), {
        pageSize: 1,
        pageToken: entries.response.nextPageToken,
        state: DeadLetterState.DEAD_LETTER_STATE_UNSPECIFIED,
        orderId: '',
      }),
    );
    expectRefused(
      await unary(stack.ledger.listEntries.bind(stack.ledger), {
        pageSize: 1,
        pageToken: deadLetters.response.nextPageToken,
        account: '',
        orderId: '',
        fromHead: false,
      }),
    );
  });

  it('ListReports and ListMismatches: a token of one day, report or class is refused for another', async () => {
    const days = ['2024-03-01', '2024-03-01', '2024-03-01', '2024-03-02'];
    const runIds: string[] = [];
    for (const [index, day] of days.entries()) {
      const id = newId('reconciliationRun');
      runIds.push(id);
      await insertRun(stack.settle.db, {
        id,
        day,
        fileName: `fixture-${index}-${randomUUID()}.csv`,
        fileSha256: randomUUID(),
        rowsTotal: 0,
        owner: 'fixture',
        leaseUntil: new Date(Date.now() + 3_600_000),
        now: new Date(),
      });
    }
    await sql`UPDATE recon_run SET state = 'FAILED', lease_owner = NULL`.execute(stack.settle.db);
    const reports = (settlementDate: string, pageToken: string) =>
      unary(recon.listReports.bind(recon), { pageSize: 1, pageToken, settlementDate });
    const march1 = await pageThrough(
      (token) => reports('2024-03-01', token),
      (r) => r.reports.map((report) => report.settlementDate),
    );
    expect(march1.seen).toEqual(['2024-03-01', '2024-03-01', '2024-03-01']);
    expectRefused(await reports('2024-03-02', march1.firstToken));
    expectRefused(await reports('', march1.firstToken));

    const [runA, runB] = [runIds[0] ?? '', runIds[1] ?? ''];
    for (const [runId, klass] of [
      [runA, 'TIMING'],
      [runA, 'TIMING'],
      [runA, 'TIMING'],
      [runA, 'DUPLICATE'],
      [runB, 'TIMING'],
      [runB, 'TIMING'],
    ] as const) {
      await sql`INSERT INTO recon_mismatch (run_id, class, order_id, ledger_entries, detail, created_at)
        VALUES (${runId}, ${klass}, ${newId('order')}, '[]', 'fixture', NOW(3))`.execute(
        stack.settle.db,
      );
    }
    const mismatches = (reportId: string, mismatchClass: MismatchClass, pageToken: string) =>
      unary(recon.listMismatches.bind(recon), { pageSize: 1, pageToken, reportId, mismatchClass });
    const timingA = await pageThrough(
      (token) => mismatches(runA, MismatchClass.MISMATCH_CLASS_TIMING, token),
      (r) => r.mismatches.map((m) => `${m.reportId}:${MismatchClass[m.mismatchClass]}`),
    );
    expect(timingA.seen).toEqual(Array(3).fill(`${runA}:MISMATCH_CLASS_TIMING`));
    expectRefused(await mismatches(runB, MismatchClass.MISMATCH_CLASS_TIMING, timingA.firstToken));
    expectRefused(
      await mismatches(runA, MismatchClass.MISMATCH_CLASS_UNSPECIFIED, timingA.firstToken),
    );
  });
});

describe('numeric cursors and ids past int64 are malformed', () => {
  // 19 digits, as the cursors' pattern allows, but past what a BIGINT column holds.
  const PAST_INT64 = ['9223372036854775808', '9999999999999999999'];

  it('ListEntries, ListDeadLetters and ListMismatches refuse a cursor past int64 as one not theirs', async () => {
    const reportId = newId('reconciliationRun');
    await insertRun(stack.settle.db, {
      id: reportId,
      day: '2024-04-01',
      fileName: `fixture-int64-${randomUUID()}.csv`,
      fileSha256: randomUUID(),
      rowsTotal: 0,
      owner: 'fixture',
      leaseUntil: new Date(Date.now() + 3_600_000),
      now: new Date(),
    });
    for (const cursor of PAST_INT64) {
      expectRefused(
        await unary(stack.ledger.listEntries.bind(stack.ledger), {
          pageSize: 1,
          pageToken: encodePageToken('ListEntries', cursor, {}),
          account: '',
          orderId: '',
          fromHead: false,
        }),
      );
      expectRefused(
        await unary(admin.listDeadLetters.bind(admin), {
          pageSize: 1,
          pageToken: encodePageToken('ListDeadLetters', cursor, {}),
          state: DeadLetterState.DEAD_LETTER_STATE_UNSPECIFIED,
          orderId: '',
        }),
      );
      expectRefused(
        await unary(recon.listMismatches.bind(recon), {
          pageSize: 1,
          pageToken: encodePageToken('ListMismatches', cursor, { reportId }),
          reportId,
          mismatchClass: MismatchClass.MISMATCH_CLASS_UNSPECIFIED,
        }),
      );
    }
    // The largest cursor that fits is still a cursor: the page after it is empty.
    const atMax = await unary(stack.ledger.listEntries.bind(stack.ledger), {
      pageSize: 1,
      pageToken: encodePageToken('ListEntries', '9223372036854775807', {}),
      account: '',
      orderId: '',
      fromHead: false,
    });
    expect(atMax.ok && atMax.response.entries).toEqual([]);
  });

  it('ReplayDeadLetter and DiscardDeadLetter refuse an id past int64 as no dead-letter id', async () => {
    for (const id of PAST_INT64) {
      for (const outcome of [
        await unary(admin.replayDeadLetter.bind(admin), { id, reason: 'int64 test' }),
        await unary(admin.discardDeadLetter.bind(admin), { id, reason: 'int64 test' }),
      ]) {
        expect(outcome.ok, id).toBe(false);
        if (outcome.ok) continue;
        expect(grpc.status[outcome.error.code]).toBe('INVALID_ARGUMENT');
        expect(outcome.error.details).toBe(`id: '${id}' is not a dead-letter id`);
      }
    }
  });
});
