/**
 * Goal: a reconciliation survives its node: a run whose node died (lease expired) is taken over
 * and redone from a clean slate, a run another node holds is joined and not taken, a FAILED run
 * is run again without booking any fee twice, and stopping a node mid-run marks the run FAILED
 * so the next call redoes it at once; stop() admits no run once begun and waits for an admission
 * already writing its run. Method: ReconciliationService instances (the "nodes") over
 * one real MariaDB database with succeeded orders written by the real ledger repository; runs
 * are crashed by writing their rows the way a dead node leaves them; an admission is held inside
 * stop() by an uncommitted row on its run's unique key (no sleeps); tables are read directly.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '../../src/domain/errors.js';
import { formatMajor } from '../../src/domain/money.js';
import { newId } from '../../src/domain/ids.js';
import {
  ReconciliationService,
  SETTLEMENT_HEADER,
  type ReconciliationEvent,
} from '../../src/reconciliation/index.js';
import type { Db } from '../../src/storage/db.js';
import {
  ACCOUNT,
  creditWallet,
  postLedgerTransaction,
} from '../../src/storage/repositories/ledger.repository.js';
import { inTransaction } from '../../src/storage/transaction.js';
import { expectMoneyInvariants, openTestDatabase, waitFor } from '../support/harness.js';

let db: Db;
let close: () => Promise<void>;
let dir: string;
const services: ReconciliationService[] = [];

beforeAll(async () => {
  ({ db, close } = await openTestDatabase('settle_t', { poolSize: 8 }));
  dir = await mkdtemp(path.join(tmpdir(), 'settle-recovery-'));
});
afterAll(async () => {
  for (const service of services) await service.stop();
  await close?.();
  await rm(dir, { recursive: true, force: true });
});

function node(
  name: string,
  batchRows = 1_000,
  onEvent?: (event: ReconciliationEvent) => void,
): ReconciliationService {
  const service = new ReconciliationService({
    db,
    dir,
    nodeName: name,
    batchRows,
    rowsMax: 100_000,
    waitMs: 0,
    ...(onEvent !== undefined ? { onEvent } : {}),
  });
  services.push(service);
  return service;
}

/** `count` succeeded orders booked on `day`, and their settlement file. */
async function dayWithOrders(day: string, count: number): Promise<void> {
  const lines = [SETTLEMENT_HEADER];
  for (let i = 0; i < count; i += 1) {
    const orderId = newId('order');
    const at = new Date(`${day}T10:00:00.000Z`);
    const amount = BigInt(1_000 + i);
    await sql`
      INSERT INTO payment_order (id, payment_id, seq, seller_id, amount_minor, currency, state,
        created_at, updated_at)
      VALUES (${orderId}, ${newId('payment')}, 1, 'seller-r', ${amount.toString()}, 'USD',
        'SUCCEEDED', ${at}, ${at})`.execute(db);
    await inTransaction(db, async (trx) => {
      await postLedgerTransaction(trx, {
        id: newId('ledgerTransaction'),
        orderId,
        kind: 'PAYMENT',
        currency: 'USD',
        now: at,
        entries: [
          {
            account: ACCOUNT.pspReceivable,
            kind: 'PAYMENT_RECEIVABLE',
            debitMinor: amount,
            creditMinor: 0n,
          },
          {
            account: ACCOUNT.sellerPayable('seller-r'),
            kind: 'PAYMENT_PAYABLE',
            debitMinor: 0n,
            creditMinor: amount,
          },
        ],
      });
      await creditWallet(trx, {
        sellerId: 'seller-r',
        currency: 'USD',
        amountMinor: amount,
        now: at,
      });
    });
    lines.push(
      [
        `psp_${orderId}`,
        orderId,
        'payment',
        'USD',
        formatMajor(amount),
        '0.50',
        formatMajor(amount - 50n),
        'b',
        at.toISOString(),
      ].join(','),
    );
  }
  await writeFile(path.join(dir, `settlement-${day}.csv`), lines.join('\n') + '\n');
}

async function count(query: ReturnType<typeof sql<{ n: string }>>): Promise<number> {
  return Number((await query.execute(db)).rows[0]?.n ?? 0);
}

const feeCount = () =>
  count(sql<{ n: string }>`SELECT COUNT(*) AS n FROM ledger_transaction WHERE kind = 'PSP_FEE'`);

describe('recovery', () => {
  it('takes over a run whose node died, clearing what it left', async () => {
    await dayWithOrders('2024-02-01', 30);
    const a = node('node-a');
    const first = await a.run({ settlementDate: '2024-02-01' }, { waitMs: 30_000 });
    expect(first.state).toBe('SUCCEEDED');
    // Make it look like a node died in the middle of it: RUNNING, lease long gone, half loaded.
    await sql`
      UPDATE recon_run SET state = 'RUNNING', lease_owner = 'dead-node',
        lease_until = ${new Date(Date.now() - 1_000)}, completed_at = NULL
      WHERE id = ${first.id}`.execute(db);
    await sql`DELETE FROM recon_file_row WHERE run_id = ${first.id} AND line_no > 10`.execute(db);
    await sql`UPDATE recon_file_row SET class = NULL WHERE run_id = ${first.id}`.execute(db);
    const fees = await feeCount();

    const b = node('node-b');
    const again = await b.runToCompletion({ settlementDate: '2024-02-01' }, { timeoutMs: 30_000 });
    expect(again.id).toBe(first.id);
    expect(again.state).toBe('SUCCEEDED');
    expect(again.attempts).toBe(2);
    expect(again.counts).toEqual(first.counts);
    expect(
      await count(
        sql<{ n: string }>`SELECT COUNT(*) AS n FROM recon_file_row WHERE run_id = ${first.id}`,
      ),
    ).toBe(30);
    expect(await feeCount()).toBe(fees);
    await expectMoneyInvariants(db);
  });

  it('joins a run another live node holds instead of taking it', async () => {
    await dayWithOrders('2024-02-02', 3);
    const a = node('node-c');
    const done = await a.run({ settlementDate: '2024-02-02' }, { waitMs: 30_000 });
    await sql`
      UPDATE recon_run SET state = 'RUNNING', lease_owner = 'busy-node',
        lease_until = ${new Date(Date.now() + 60_000)}
      WHERE id = ${done.id}`.execute(db);
    const joined = await node('node-d').run({ settlementDate: '2024-02-02' }, { waitMs: 300 });
    expect(joined).toMatchObject({
      id: done.id,
      state: 'RUNNING',
      attempts: 1,
      leaseOwner: 'busy-node',
    });
  });

  it('marks a run FAILED when its node stops, and the next call redoes it', async () => {
    await dayWithOrders('2024-02-03', 400);
    const stopping = node('node-e', 10);
    const started = await stopping.run({ settlementDate: '2024-02-03' }, { waitMs: 0 });
    expect(started.state).toBe('RUNNING');
    await stopping.stop();
    const after = await node('node-f').run({ settlementDate: '2024-02-03' }, { waitMs: 0 });
    // The stopped node marked it FAILED, so node-f took it over at once.
    const [failedBefore] = (
      await sql<{
        attempts: number;
      }>`SELECT attempts FROM recon_run WHERE id = ${started.id}`.execute(db)
    ).rows;
    expect(Number(failedBefore?.attempts)).toBe(2);
    const done = await node('node-g').runToCompletion(
      { settlementDate: '2024-02-03' },
      { timeoutMs: 60_000 },
    );
    expect(done).toMatchObject({ id: after.id, state: 'SUCCEEDED' });
    expect(done.counts.MATCHED).toBe(400n);
    expect(await feeCount()).toBe(30 + 3 + 400);
    await expectMoneyInvariants(db);
  }, 60_000);

  it('admits nothing once stop() has begun, even for a file it had already validated', async () => {
    await dayWithOrders('2024-02-04', 3);
    let stopped: Promise<void> | undefined;
    // The file has been read whole; the node is told to stop before the call goes on to admit it.
    const stopping = node('node-h', 1_000, (event) => {
      if (event.type === 'validated') stopped ??= stopping.stop();
    });
    await expect(stopping.start({ settlementDate: '2024-02-04' })).rejects.toThrow(
      new UnavailableError('the node is stopping'),
    );
    await stopped;
    expect(
      await count(
        sql<{
          n: string;
        }>`SELECT COUNT(*) AS n FROM recon_run WHERE settlement_date = '2024-02-04'`,
      ),
    ).toBe(0);
  });

  it('waits in stop() for an admission writing its run, which ends FAILED and is redone at once', async () => {
    const day = '2024-02-05';
    await dayWithOrders(day, 3);
    const sha256 = createHash('sha256')
      .update(await readFile(path.join(dir, `settlement-${day}.csv`)))
      .digest('hex');
    // An uncommitted row with the same (day, SHA-256) holds the admission's INSERT on the unique
    // key until it is rolled back: stop() is called while the admission is inside #admit.
    const blocker = await db.startTransaction().execute();
    let released = false;
    const release = async () => {
      if (released) return;
      released = true;
      await blocker.rollback().execute();
    };
    try {
      await sql`
        INSERT INTO recon_run (id, settlement_date, file_name, file_sha256, state, rows_total,
          lease_owner, lease_until, created_at, updated_at)
        VALUES (${newId('reconciliationRun')}, ${day}, 'blocker', ${sha256}, 'RUNNING', 3,
          'blocker', NOW(3), NOW(3), NOW(3))`.execute(blocker);
      const stopping = node('node-i');
      const started = stopping.start({ settlementDate: day });
      started.catch(() => undefined);
      const insertWaiting = () =>
        count(sql<{ n: string }>`
          SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX t
            JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
          WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()
            AND t.trx_query LIKE 'insert into \`recon_run\`%'`);
      // InnoDB refreshes INNODB_TRX only when it was not read for 100 ms: poll slower than that.
      await waitFor(async () => (await insertWaiting()) === 1, {
        intervalMs: 250,
        what: 'the admission to wait on the INSERT of its run',
      });
      let stopReturned = false;
      const stopped = stopping.stop().then(() => {
        stopReturned = true;
      });
      // One more round trip: the INSERT still waits, and so must stop().
      expect(await insertWaiting()).toBe(1);
      expect(stopReturned).toBe(false);
      await release();
      await stopped;
      // The admission wrote its run, launched it and the launch, stopped, marked it FAILED: all
      // before stop() returned, so nothing of this node touches the database after that.
      const runId = await started;
      const [run] = (
        await sql<{
          state: string;
          error: string | null;
          lease_owner: string | null;
        }>`SELECT state, error, lease_owner FROM recon_run WHERE id = ${runId}`.execute(db)
      ).rows;
      expect(run).toMatchObject({
        state: 'FAILED',
        error: 'interrupted: the node stopped; run it again',
      });
      await expect(stopping.start({ settlementDate: day })).rejects.toThrow(UnavailableError);
      // FAILED, not RUNNING under a lease: another node redoes it at once.
      const done = await node('node-j').runToCompletion(
        { settlementDate: day },
        { timeoutMs: 30_000 },
      );
      expect(done).toMatchObject({ id: runId, state: 'SUCCEEDED', attempts: 2 });
      await expectMoneyInvariants(db);
    } finally {
      await release();
    }
  });
});
