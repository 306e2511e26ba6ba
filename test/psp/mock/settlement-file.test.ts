/**
 * Goal: the PSP mock's settlement files are what Settle expects: one CSV per UTC day listing the
 * day's charges from the mock's own records, amounts in decimal major units, the fee computed in
 * integer arithmetic and rounded half up, written atomically, with the injected discrepancies
 * (unsettled, re-priced, duplicated, late, unrecorded) applied; the daily writer writes each
 * missing closed day once. Method: the mock in-process with its own database and a temporary
 * folder, payments made through its gRPC API (RegisterPayment + PayWithCard), files read back
 * with Settle's own reader (so writer and reader agree) and as text.
 */
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addUtcDays, utcDayOf } from '../../../src/domain/utc-day.js';
import {
  SettlementDiscrepancy,
  type PspServiceClient,
} from '../../../src/grpc/generated/settle/psp/v1/psp.js';
import { openDatabase } from '../../../src/storage/db.js';
import { startPspMock, type PspMock } from '../../../src/psp/mock/index.js';
import {
  settlementDirProblem,
  settlementFeeMinor,
  SettlementFileSchedule,
} from '../../../src/psp/mock/settlement-file.js';
import type { PspDatabase } from '../../../src/psp/mock/schema.js';
import { readSettlementFile, type SettlementRow } from '../../../src/reconciliation/index.js';
import {
  dropDatabase,
  grpcError,
  pspApi,
  startWebhookReceiver,
  testConfig,
  unary,
  uniqueDatabaseUrl,
  uniqueNonce,
  type WebhookReceiver,
} from '../psp-support.js';

const FEES = { percentBp: 290, fixedMinor: 30 };

describe('settlementFeeMinor', () => {
  it.each([
    [1_000n, 59n], // 29.000 + 30
    [1_999n, 88n], // 57.971 -> 58
    [500n, 45n], // 14.5 -> 15: half up
    [1_724n, 80n], // 49.996 -> 50
    [50n, 31n], // 1.45 -> 1
    [1n, 30n], // 0.029 -> 0
    [1_000_000_000_000n, 29_000_000_030n],
  ])('charges %s minor units %s', (gross, fee) => {
    expect(settlementFeeMinor(gross, FEES)).toBe(fee);
  });

  it('follows the configured model', () => {
    expect(settlementFeeMinor(10_000n, { percentBp: 0, fixedMinor: 0 })).toBe(0n);
    expect(settlementFeeMinor(10_000n, { percentBp: 150, fixedMinor: 25 })).toBe(175n);
  });
});

describe('settlementDirProblem', () => {
  let scratch: string;
  beforeAll(async () => {
    scratch = await mkdtemp(path.join(tmpdir(), 'settle-dir-'));
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it('makes a missing folder, however deep, and leaves no probe file in it', async () => {
    const dir = path.join(scratch, 'a', 'b', 'c');
    expect(await settlementDirProblem(dir)).toBeUndefined();
    expect(await readdir(dir)).toEqual([]);
    // A second check of a folder that exists is as good.
    expect(await settlementDirProblem(dir)).toBeUndefined();
  });

  it('names the file standing where a folder should be', async () => {
    const file = path.join(scratch, 'a-file');
    await writeFile(file, 'x');
    expect(await settlementDirProblem(path.join(file, 'settlements'))).toBe(
      `${file} is not a folder, so ${path.join(file, 'settlements')} cannot be made`,
    );
  });

  it('answers at once where a folder cannot be made (under /proc, recursive mkdir never returns)', async () => {
    const started = Date.now();
    const problem = await settlementDirProblem('/proc/settle-no-such-folder/settlements');
    expect(problem).toMatch(
      /^cannot make \/proc\/settle-no-such-folder \(ENOENT\); set it to a folder this process can write$/,
    );
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});

describe('settlement files', () => {
  let dir: string;
  let mysqlUrl: string;
  let mock: PspMock;
  let api: PspServiceClient;
  let receiver: WebhookReceiver;
  const today = utcDayOf(new Date());

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'settle-psp-files-'));
    mysqlUrl = uniqueDatabaseUrl('settle_psp_t');
    receiver = await startWebhookReceiver();
    mock = await startPspMock({
      config: testConfig({ SETTLEMENT_DIR: dir }),
      grpcPort: 0,
      httpPort: 0,
      mysqlUrl,
    });
    api = pspApi(mock.grpcPort);
  });
  afterAll(async () => {
    api?.close();
    await mock?.stop();
    await receiver?.close();
    if (mysqlUrl !== undefined) await dropDatabase(mysqlUrl);
    await rm(dir, { recursive: true, force: true });
  });

  async function charge(amountMinor: bigint): Promise<{ nonce: string; pspReference: string }> {
    const nonce = uniqueNonce('ord');
    const { token } = await unary(api.registerPayment.bind(api), {
      nonce,
      amountMinor,
      currencyCode: 'USD',
      notificationUrl: `${receiver.url}/hooks`,
    });
    const paid = await unary(api.payWithCard.bind(api), {
      token,
      cardNumber: '4242424242424242',
    });
    return { nonce, pspReference: paid.pspReference };
  }

  async function generate(day: string): Promise<{ path: string; rows: SettlementRow[] }> {
    const file = await unary(api.generateSettlementFile.bind(api), { settlementDate: day });
    const rows: SettlementRow[] = [];
    for await (const row of readSettlementFile(file.path, { rowsMax: 1_000 })) rows.push(row);
    expect(BigInt(rows.length)).toBe(file.rows);
    return { path: file.path, rows };
  }

  function inject(discrepancy: SettlementDiscrepancy, nonce: string, amountMinor = 0n) {
    return unary(api.injectSettlementDiscrepancy.bind(api), {
      discrepancy,
      nonce,
      amountMinor,
      settlementDate: '',
    });
  }

  it('lists the day’s charges with fees, in a file named after the day', async () => {
    const charges = [await charge(1_999n), await charge(500n)];
    const declined = uniqueNonce('ord');
    const { token } = await unary(api.registerPayment.bind(api), {
      nonce: declined,
      amountMinor: 700n,
      currencyCode: 'USD',
      notificationUrl: `${receiver.url}/hooks`,
    });
    await unary(api.payWithCard.bind(api), { token, cardNumber: '4000000000000002' });

    const file = await generate(today);
    expect(path.basename(file.path)).toBe(`settlement-${today}.csv`);
    expect(
      file.rows.map((row) => [row.merchantReference, row.grossMinor, row.feeMinor, row.netMinor]),
    ).toEqual([
      [charges[0]?.nonce, 1_999n, 88n, 1_911n],
      [charges[1]?.nonce, 500n, 45n, 455n],
    ]);
    expect(file.rows.every((row) => row.batchId === `batch-${today.replaceAll('-', '')}`)).toBe(
      true,
    );
    expect(file.rows.map((row) => row.pspReference)).toEqual(charges.map((c) => c.pspReference));
    const text = await readFile(file.path, 'utf8');
    expect(text).toContain(`,${charges[0]?.nonce},payment,USD,19.99,0.88,19.11,`);
    // Written atomically: no temporary file is left behind.
    expect(await readdir(dir)).toEqual([`settlement-${today}.csv`]);
  });

  it('applies injected discrepancies without touching the charges', async () => {
    const [unsettled, repriced, doubled, late] = [
      await charge(1_000n),
      await charge(2_000n),
      await charge(3_000n),
      await charge(4_000n),
    ];
    await inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_UNSETTLED, unsettled.nonce);
    await inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_AMOUNT, repriced.nonce, 2_100n);
    await inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_DUPLICATE, doubled.nonce);
    await inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_LATE, late.nonce);
    const unrecorded = await unary(api.injectSettlementDiscrepancy.bind(api), {
      discrepancy: SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_UNRECORDED_CHARGE,
      nonce: 'ord_never_registered',
      amountMinor: 777n,
      settlementDate: today,
    });

    const { rows } = await generate(today);
    const of = (nonce: string) => rows.filter((row) => row.merchantReference === nonce);
    expect(of(unsettled.nonce)).toEqual([]);
    expect(of(repriced.nonce).map((row) => [row.grossMinor, row.feeMinor])).toEqual([
      [2_100n, settlementFeeMinor(2_100n, FEES)],
    ]);
    expect(of(doubled.nonce)).toHaveLength(2);
    expect(of(late.nonce)).toEqual([]);
    expect(of('ord_never_registered')).toMatchObject([
      { pspReference: unrecorded.pspReference, grossMinor: 777n },
    ]);
    expect(of('ord_never_registered')[0]?.createdUtc.toISOString()).toBe(`${today}T12:00:00.000Z`);

    const next = await generate(addUtcDays(today, 1));
    expect(next.rows.map((row) => row.merchantReference)).toEqual([late.nonce]);
    expect(utcDayOf(next.rows[0]!.createdUtc)).toBe(today);

    // The PSP's own record of the charge is unchanged.
    const listed = await unary(api.listCharges.bind(api), { nonce: repriced.nonce });
    expect(listed.charges.map((c) => c.amountMinor)).toEqual([2_000n]);
  });

  it('refuses bad requests', async () => {
    const badDay = await grpcError(
      unary(api.generateSettlementFile.bind(api), { settlementDate: '2024-13-01' }),
    );
    expect(badDay.code).toBe(status.INVALID_ARGUMENT);
    expect(badDay.details).toBe('settlement_date: must be YYYY-MM-DD');
    const unknown = await grpcError(
      inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_LATE, 'ord_nobody'),
    );
    expect(unknown.code).toBe(status.NOT_FOUND);
    const { nonce } = await charge(100n);
    const noAmount = await grpcError(
      inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_AMOUNT, nonce),
    );
    expect(noAmount.code).toBe(status.INVALID_ARGUMENT);
    const noKind = await grpcError(
      inject(SettlementDiscrepancy.SETTLEMENT_DISCREPANCY_UNSPECIFIED, nonce),
    );
    expect(noKind.details).toBe('discrepancy: must name a discrepancy');
  });

  it('writes each missing closed day once on its own, leaving final files alone', async () => {
    const scheduleDir = await mkdtemp(path.join(tmpdir(), 'settle-psp-schedule-'));
    const { db, close } = openDatabase<PspDatabase>(mysqlUrl, { poolSize: 2 });
    try {
      // Written after its day ended: final. The 1st's was written during the day: replaced.
      await writeFile(path.join(scheduleDir, 'settlement-2024-04-02.csv'), 'kept as it is\n');
      const early = path.join(scheduleDir, 'settlement-2024-04-01.csv');
      await writeFile(early, 'written at noon\n');
      await utimes(early, new Date('2024-04-01T12:00:00Z'), new Date('2024-04-01T12:00:00Z'));
      const lines: string[] = [];
      const schedule = new SettlementFileSchedule({
        db,
        dir: scheduleDir,
        fees: FEES,
        atMinutes: 10,
        catchUpDays: 3,
        checkMsMax: 50,
        now: () => new Date('2024-04-04T00:10:00Z'),
        log: (line) => lines.push(line),
      });
      schedule.start();
      // Until both writes are done: a file being written is there under a temporary name first.
      const done = () =>
        lines.some((line) => line.includes(' wrote ')) &&
        lines.some((line) => line.includes(' rewrote '));
      const deadline = Date.now() + 10_000;
      while (!done() && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await schedule.stop();
      expect((await readdir(scheduleDir)).sort()).toEqual([
        'settlement-2024-04-01.csv',
        'settlement-2024-04-02.csv',
        'settlement-2024-04-03.csv',
      ]);
      expect(await readFile(path.join(scheduleDir, 'settlement-2024-04-02.csv'), 'utf8')).toBe(
        'kept as it is\n',
      );
      for (const day of ['2024-04-01', '2024-04-03']) {
        expect(await readFile(path.join(scheduleDir, `settlement-${day}.csv`), 'utf8')).toBe(
          'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc\n',
        );
      }
      expect(lines.filter((line) => line.includes(' wrote '))).toHaveLength(1);
      expect(lines.filter((line) => line.includes(' rewrote '))).toHaveLength(1);
    } finally {
      await close();
      await rm(scheduleDir, { recursive: true, force: true });
    }
  });
});
