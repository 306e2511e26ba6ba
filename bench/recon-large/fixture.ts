/**
 * A large reconciliation, end to end: fresh Settle and PSP mock databases, `rows` succeeded
 * payment orders (order, balanced PAYMENT ledger transaction, wallets) and the PSP's matching
 * charges, a handful of injected discrepancies, the PSP mock's real file writer, then Settle's
 * reconciliation of that file. Everything is generated in batches from a seeded PRNG, so memory
 * stays bounded here too. Used by `npm run recon:large` (1,000,000 rows, numbers in the README)
 * and by a 10,000-row test.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { newId } from '../../src/domain/ids.js';
import { startOfUtcDay, type UtcDay } from '../../src/domain/utc-day.js';
import { migratePspToLatest } from '../../src/psp/mock/migrations/index.js';
import type { PspDatabase } from '../../src/psp/mock/schema.js';
import { writeSettlementFile } from '../../src/psp/mock/settlement-file.js';
import { ReconciliationService, type RunPhase, type Run } from '../../src/reconciliation/index.js';
import {
  dropDatabase,
  ensureDatabase,
  migrateToLatest,
  openDatabase,
  withDatabaseName,
} from '../../src/storage/db.js';

/** Orders written per round trip while generating. */
const GENERATE_BATCH = 5_000;
const SELLERS = 1_000;
const FEES = { percentBp: 290, fixedMinor: 30 };

export type LargeFixtureOptions = Readonly<{
  rows: number;
  /** Any database URL on the server; the fixture creates its own databases there. */
  mysqlUrl: string;
  day?: UtcDay;
  log?: (line: string) => void;
}>;

export type LargeFixture = Readonly<{
  settleUrl: string;
  dir: string;
  day: UtcDay;
  rows: number;
  fileBytes: number;
  generateMs: number;
  writeFileMs: number;
  /** What the report must count per class, from the injected discrepancies. */
  expected: Readonly<Record<string, bigint>>;
  /** Drops the databases and removes the folder. */
  remove: () => Promise<void>;
}>;

export type LargeReconcileResult = Readonly<{
  report: Run;
  reconcileMs: number;
  phases: Readonly<Partial<Record<RunPhase, number>>>;
  /** RSS when the reconciliation started, in bytes. */
  rssBeforeBytes: number;
  /** Highest RSS sampled every 50 ms while it ran, in bytes. */
  rssPeakBytes: number;
}>;

function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

export async function generateLargeFixture(options: LargeFixtureOptions): Promise<LargeFixture> {
  const log = options.log ?? (() => undefined);
  const day = options.day ?? '2024-01-15';
  const suffix = `${process.pid}_${Date.now().toString(36)}`;
  const settleUrl = withDatabaseName(options.mysqlUrl, `settle_bench_recon_${suffix}`);
  const pspUrl = withDatabaseName(options.mysqlUrl, `settle_psp_bench_recon_${suffix}`);
  const dir = await mkdtemp(path.join(tmpdir(), 'settle-recon-large-'));
  await ensureDatabase(settleUrl);
  await ensureDatabase(pspUrl);
  const settle = openDatabase(settleUrl, { poolSize: 4 });
  const psp = openDatabase<PspDatabase>(pspUrl, { poolSize: 4 });
  try {
    await migrateToLatest(settle.db);
    await migratePspToLatest(psp.db);

    // 1. Orders, ledger and wallets in Settle; charges at the PSP.
    const generateStarted = Date.now();
    const random = prng(42);
    const dayStartMs = startOfUtcDay(day).getTime();
    const wallets = new Map<string, bigint>();
    const picked: Record<'unsettled' | 'amount' | 'duplicate' | 'late', string[]> = {
      unsettled: [],
      amount: [],
      duplicate: [],
      late: [],
    };
    const kinds = ['unsettled', 'amount', 'duplicate', 'late'] as const;
    // Spread a few discrepancies over the file: one of each kind every `spacing` orders.
    const spacing = Math.max(8, Math.floor(options.rows / 10));
    for (let start = 0; start < options.rows; start += GENERATE_BATCH) {
      const count = Math.min(GENERATE_BATCH, options.rows - start);
      const orders = [];
      for (let i = 0; i < count; i += 1) {
        const index = start + i;
        // Spread over the day in time order, so the file is sorted like a real one.
        const at = new Date(dayStartMs + Math.floor(((index + 0.5) / options.rows) * 86_399_000));
        // Booked a moment after the PSP charged, as a webhook would arrive.
        const bookedAt = new Date(at.getTime() + 250);
        const orderId = newId('order', at.getTime());
        const seller = `seller-${index % SELLERS}`;
        const amountMinor = BigInt(100 + Math.floor(random() * 99_900));
        wallets.set(seller, (wallets.get(seller) ?? 0n) + amountMinor);
        if (index % spacing < kinds.length && index > 0)
          picked[kinds[index % spacing]!].push(orderId);
        orders.push({
          orderId,
          seller,
          amountMinor,
          at,
          bookedAt,
          txId: newId('ledgerTransaction', at.getTime()),
        });
      }
      await Promise.all([
        settle.db
          .insertInto('payment_order')
          .values(
            orders.map((o) => ({
              id: o.orderId,
              payment_id: `pay_${o.orderId.slice(4)}`,
              seq: 1,
              seller_id: o.seller,
              amount_minor: o.amountMinor,
              currency: 'USD',
              state: 'SUCCEEDED',
              version: 2n,
              attempts: 1,
              psp_reference: `psp_${o.orderId.slice(4)}`,
              created_at: o.at,
              updated_at: o.bookedAt,
            })),
          )
          .execute(),
        settle.db
          .insertInto('ledger_transaction')
          .values(
            orders.map((o) => ({
              id: o.txId,
              order_id: o.orderId,
              kind: 'PAYMENT',
              currency: 'USD',
              amount_minor: o.amountMinor,
              created_at: o.bookedAt,
            })),
          )
          .execute(),
        settle.db
          .insertInto('ledger_entry')
          .values(
            orders.flatMap((o) => [
              {
                transaction_id: o.txId,
                account: 'psp_receivable',
                order_id: o.orderId,
                kind: 'PAYMENT_RECEIVABLE',
                currency: 'USD',
                debit_minor: o.amountMinor,
                credit_minor: 0n,
                created_at: o.bookedAt,
              },
              {
                transaction_id: o.txId,
                account: `seller_payable:${o.seller}`,
                order_id: o.orderId,
                kind: 'PAYMENT_PAYABLE',
                currency: 'USD',
                debit_minor: 0n,
                credit_minor: o.amountMinor,
                created_at: o.bookedAt,
              },
            ]),
          )
          .execute(),
        psp.db
          .insertInto('psp_charge')
          .values(
            orders.map((o) => ({
              psp_reference: `psp_${o.orderId.slice(4)}`,
              nonce: o.orderId,
              amount_minor: o.amountMinor,
              currency: 'USD',
              created_at: o.at,
            })),
          )
          .execute(),
      ]);
      if ((start / GENERATE_BATCH) % 40 === 0)
        log(`generated ${start + count} of ${options.rows} orders`);
    }
    const now = new Date();
    await settle.db
      .insertInto('wallet')
      .values(
        [...wallets].map(([seller, balance]) => ({
          seller_id: seller,
          currency: 'USD',
          balance_minor: balance,
          version: 1n,
          updated_at: now,
        })),
      )
      .execute();
    const adjustments = kinds.flatMap((kind) =>
      picked[kind].map((orderId) => ({
        psp_reference: `psp_${orderId.slice(4)}`,
        kind: { unsettled: 'UNSETTLED', amount: 'AMOUNT', duplicate: 'DUPLICATE', late: 'LATE' }[
          kind
        ] as 'UNSETTLED' | 'AMOUNT' | 'DUPLICATE' | 'LATE',
        amount_minor: kind === 'amount' ? 123_456n : null,
        created_at: now,
      })),
    );
    if (adjustments.length > 0)
      await psp.db.insertInto('psp_settlement_adjustment').values(adjustments).execute();
    const unrecorded = 3;
    await psp.db
      .insertInto('psp_charge')
      .values(
        Array.from({ length: unrecorded }, (_, i) => ({
          psp_reference: `psp_unrecorded_${i}`,
          nonce: `ord_unrecorded_${i}`,
          amount_minor: 999n,
          currency: 'USD',
          created_at: new Date(dayStartMs + 43_200_000 + i),
        })),
      )
      .execute();
    const generateMs = Date.now() - generateStarted;
    log(`generated ${options.rows} orders in ${(generateMs / 1000).toFixed(1)} s`);

    // 2. The PSP's file.
    const writeStarted = Date.now();
    const file = await writeSettlementFile({ db: psp.db, dir, day, fees: FEES });
    const writeFileMs = Date.now() - writeStarted;
    const fileBytes = (await stat(file.path)).size;
    log(
      `wrote ${file.rows} rows (${(fileBytes / 1e6).toFixed(1)} MB) in ${(writeFileMs / 1000).toFixed(1)} s`,
    );

    const expected = {
      MATCHED: BigInt(
        options.rows - picked.unsettled.length - picked.amount.length - picked.late.length,
      ),
      MISSING_IN_LEDGER: BigInt(unrecorded),
      MISSING_IN_SETTLEMENT: BigInt(picked.unsettled.length + picked.late.length),
      AMOUNT_MISMATCH: BigInt(picked.amount.length),
      DUPLICATE: BigInt(picked.duplicate.length),
      TIMING: 0n,
    };
    return {
      settleUrl,
      dir,
      day,
      rows: file.rows,
      fileBytes,
      generateMs,
      writeFileMs,
      expected,
      remove: async () => {
        await rm(dir, { recursive: true, force: true });
        await dropDatabase(settleUrl);
        await dropDatabase(pspUrl);
      },
    };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    await dropDatabase(settleUrl).catch(() => undefined);
    await dropDatabase(pspUrl).catch(() => undefined);
    throw error;
  } finally {
    await settle.close();
    await psp.close();
  }
}

/**
 * Reconciles a fixture's file with Settle's ReconciliationService, in this process, sampling the
 * RSS every 50 ms while it runs.
 */
export async function reconcileLarge(options: {
  settleUrl: string;
  dir: string;
  day: UtcDay;
  batchRows?: number;
}): Promise<LargeReconcileResult> {
  const { db, close } = openDatabase(options.settleUrl, { poolSize: 4 });
  global.gc?.();
  const rssBeforeBytes = process.memoryUsage.rss();
  let rssPeakBytes = rssBeforeBytes;
  const sampler = setInterval(() => {
    rssPeakBytes = Math.max(rssPeakBytes, process.memoryUsage.rss());
  }, 50);
  const phases: Partial<Record<RunPhase, number>> = {};
  const service = new ReconciliationService({
    db,
    dir: options.dir,
    nodeName: 'recon-large',
    batchRows: options.batchRows ?? 5_000,
    rowsMax: 50_000_000,
    waitMs: 0,
    onEvent: (event) => {
      if (event.type === 'phase') phases[event.phase] = event.ms;
    },
  });
  const started = Date.now();
  try {
    const report = await service.runToCompletion(
      { settlementDate: options.day },
      { timeoutMs: 3 * 3_600_000 },
    );
    const reconcileMs = Date.now() - started;
    rssPeakBytes = Math.max(rssPeakBytes, process.memoryUsage.rss());
    return { report, reconcileMs, phases, rssBeforeBytes, rssPeakBytes };
  } finally {
    clearInterval(sampler);
    await service.stop();
    await close();
  }
}
