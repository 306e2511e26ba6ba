/**
 * The PSP mock's settlement files: one CSV per UTC day listing every money movement the PSP made
 * that day, read from the mock's OWN psp_charge table (never Settle's). Amounts are decimal major
 * units, as real PSP files carry them, formatted from bigint minor units; the fee is computed in
 * integer arithmetic. A file is written to a temporary name, synced and renamed, so a reader
 * sees either the whole file or none.
 *
 * Discrepancies asked for by the test driver (psp_settlement_adjustment) are applied while
 * rendering: the charges themselves never change.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { sql } from 'kysely';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../../domain/errors.js';
import { formatMajor, ORDER_AMOUNT_MINOR_MAX } from '../../domain/money.js';
import {
  addUtcDays,
  dueUtcDays,
  isUtcDay,
  startOfUtcDay,
  utcDayAt,
  type UtcDay,
} from '../../domain/utc-day.js';
import type { PspDb } from './payment.repository.js';
import { SETTLEMENT_ADJUSTMENT, type SettlementAdjustmentKind } from './schema.js';

/** The header row, exactly; Settle's parser refuses any other. */
export const SETTLEMENT_HEADER =
  'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';

/** What a reference may hold: the file has no quoting, so no comma or quote can appear. */
const REFERENCE = /^[A-Za-z0-9_.:-]{1,64}$/;

/** Bytes buffered before a write to the file. */
const WRITE_CHUNK_BYTES = 256 * 1024;
/** Rows fetched per page while reading the charges of a day. */
const STREAM_CHUNK_ROWS = 5_000;

export type FeeModel = Readonly<{
  /** Percentage of the gross in basis points (290 = 2.9 %). */
  percentBp: number;
  /** Added to every charge, in minor units. */
  fixedMinor: number;
}>;

/**
 * The PSP's fee on a charge: percentBp of the gross, rounded half up to a whole minor unit, plus
 * the fixed part. Integer arithmetic only: 1000n at 290 bp + 30 → 29n + 30n = 59n.
 */
export function settlementFeeMinor(grossMinor: bigint, model: FeeModel): bigint {
  if (grossMinor < 0n) throw new RangeError('fees are computed on positive amounts only');
  const percent = (grossMinor * BigInt(model.percentBp) + 5_000n) / 10_000n;
  return percent + BigInt(model.fixedMinor);
}

/** The file name of a day's settlement file. */
export function settlementFileName(day: UtcDay): string {
  return `settlement-${day}.csv`;
}

export type SettlementFile = Readonly<{
  /** Absolute path of the written file. */
  path: string;
  /** Data rows (the header not counted). */
  rows: number;
}>;

type ChargeRow = {
  id: string;
  psp_reference: string;
  nonce: string;
  amount_minor: string;
  currency: string;
  created_at: Date;
  amount_override: string | null;
  duplicate: number;
};

/**
 * Why the mock cannot write settlement files into `dir`, or undefined when it can: the folder is
 * made if missing, one path component at a time (Node's recursive mkdir never returns under
 * /proc), and a probe file is created and removed in it. Bounded by the path's depth.
 */
export async function settlementDirProblem(dir: string): Promise<string | undefined> {
  const target = path.resolve(dir);
  const { root } = path.parse(target);
  let current = root;
  for (const part of target.slice(root.length).split(path.sep).filter(Boolean)) {
    current = path.join(current, part);
    try {
      await mkdir(current);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        const info = await stat(current).catch(() => undefined);
        if (info?.isDirectory() === true) continue;
        return `${current} is not a folder, so ${target} cannot be made`;
      }
      return `cannot make ${current} (${code ?? String(error)}); set it to a folder this process can write`;
    }
  }
  const probe = path.join(target, `.write-check.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    const handle = await open(probe, 'wx');
    await handle.close();
    await rm(probe, { force: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return `cannot write into ${target} (${code ?? String(error)}); set it to a folder this process can write`;
  }
  return undefined;
}

/**
 * Writes the settlement file of `day` into `dir` (created if missing), replacing any earlier
 * version atomically. Rows: the day's charges, then the previous day's charges marked LATE; a
 * charge marked UNSETTLED is left out, AMOUNT changes its gross, DUPLICATE writes it twice.
 */
export async function writeSettlementFile(options: {
  db: PspDb;
  dir: string;
  day: UtcDay;
  fees: FeeModel;
}): Promise<SettlementFile> {
  const { db, day, fees } = options;
  if (!isUtcDay(day)) throw new InvalidArgumentError('settlement_date', 'must be YYYY-MM-DD');
  const dir = path.resolve(options.dir);
  const problem = await settlementDirProblem(dir);
  if (problem !== undefined) throw new FailedPreconditionError(`SETTLEMENT_DIR: ${problem}`);
  const target = path.join(dir, settlementFileName(day));
  const temporary = path.join(
    dir,
    `.${settlementFileName(day)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`,
  );
  const batchId = `batch-${day.replaceAll('-', '')}`;
  const handle = await open(temporary, 'wx');
  let rows = 0;
  try {
    let buffer = `${SETTLEMENT_HEADER}\n`;
    const own = chargesOf(
      db,
      { from: startOfUtcDay(day), to: startOfUtcDay(addUtcDays(day, 1)) },
      false,
    );
    const late = chargesOf(
      db,
      { from: startOfUtcDay(addUtcDays(day, -1)), to: startOfUtcDay(day) },
      true,
    );
    for (const source of [own, late]) {
      for await (const charge of source) {
        if (!REFERENCE.test(charge.nonce) || !REFERENCE.test(charge.psp_reference)) {
          throw new FailedPreconditionError(
            `charge ${charge.psp_reference} has a reference a settlement file cannot carry`,
          );
        }
        const grossMinor = BigInt(charge.amount_override ?? charge.amount_minor);
        const feeMinor = settlementFeeMinor(grossMinor, fees);
        const line =
          [
            charge.psp_reference,
            charge.nonce,
            'payment',
            charge.currency,
            formatMajor(grossMinor),
            formatMajor(feeMinor),
            formatMajor(grossMinor - feeMinor),
            batchId,
            charge.created_at.toISOString(),
          ].join(',') + '\n';
        const copies = Number(charge.duplicate) > 0 ? 2 : 1;
        for (let copy = 0; copy < copies; copy += 1) {
          buffer += line;
          rows += 1;
        }
        if (buffer.length >= WRITE_CHUNK_BYTES) {
          await handle.write(buffer);
          buffer = '';
        }
      }
    }
    await handle.write(buffer);
    await handle.sync();
    await handle.close();
    await rename(temporary, target);
  } catch (error) {
    await handle.close().catch(() => undefined);
    await rm(temporary, { force: true });
    throw error;
  }
  return { path: target, rows };
}

/**
 * The charges created in [from, to), in time order, fetched in pages by keyset (created_at, id)
 * so memory stays bounded and no connection is held between pages. `late` selects the charges
 * marked LATE (they belong to the next day's file); otherwise those not marked LATE. UNSETTLED
 * charges are never returned.
 */
async function* chargesOf(
  db: PspDb,
  range: { from: Date; to: Date },
  late: boolean,
): AsyncGenerator<ChargeRow> {
  let after: { createdAt: Date; id: string } | undefined;
  for (;;) {
    const page = await sql<ChargeRow>`
      SELECT c.id, c.psp_reference, c.nonce, c.amount_minor, c.currency, c.created_at,
             a.amount_minor AS amount_override,
             EXISTS (SELECT 1 FROM psp_settlement_adjustment d
                     WHERE d.psp_reference = c.psp_reference
                       AND d.kind = ${SETTLEMENT_ADJUSTMENT.duplicate}) AS duplicate
      FROM psp_charge c
      LEFT JOIN psp_settlement_adjustment a
        ON a.psp_reference = c.psp_reference AND a.kind = ${SETTLEMENT_ADJUSTMENT.amount}
      WHERE c.created_at >= ${range.from} AND c.created_at < ${range.to}
        ${
          after === undefined
            ? sql``
            : sql`AND (c.created_at > ${after.createdAt}
                       OR (c.created_at = ${after.createdAt} AND c.id > ${after.id}))`
        }
        AND NOT EXISTS (SELECT 1 FROM psp_settlement_adjustment u
                        WHERE u.psp_reference = c.psp_reference
                          AND u.kind = ${SETTLEMENT_ADJUSTMENT.unsettled})
        AND ${late ? sql`` : sql`NOT`} EXISTS (
              SELECT 1 FROM psp_settlement_adjustment l
              WHERE l.psp_reference = c.psp_reference AND l.kind = ${SETTLEMENT_ADJUSTMENT.late})
      ORDER BY c.created_at, c.id
      LIMIT ${STREAM_CHUNK_ROWS}`.execute(db);
    yield* page.rows;
    const last = page.rows[page.rows.length - 1];
    if (last === undefined || page.rows.length < STREAM_CHUNK_ROWS) return;
    after = { createdAt: last.created_at, id: last.id };
  }
}

export type SettlementDiscrepancy =
  | Readonly<{ kind: 'UNRECORDED_CHARGE'; nonce: string; amountMinor: bigint; at: Date }>
  | Readonly<{ kind: SettlementAdjustmentKind; nonce: string; amountMinor?: bigint }>;

/**
 * Records a discrepancy for the settlement files (test driver). UNRECORDED_CHARGE adds a charge
 * the merchant was never told about (no payment, no webhook) and returns its psp_reference; the
 * other kinds mark the nonce's charge and return its psp_reference. NotFoundError when the nonce
 * has no charge.
 */
export async function injectSettlementDiscrepancy(
  db: PspDb,
  discrepancy: SettlementDiscrepancy,
  now: Date,
): Promise<string> {
  if (!REFERENCE.test(discrepancy.nonce)) {
    throw new InvalidArgumentError('nonce', 'must be 1-64 of A-Z a-z 0-9 _.:-');
  }
  if (discrepancy.kind === 'UNRECORDED_CHARGE') {
    const { amountMinor } = discrepancy;
    if (amountMinor < 1n || amountMinor > ORDER_AMOUNT_MINOR_MAX) {
      throw new InvalidArgumentError('amount_minor', 'must be between 1 and 10^12 minor units');
    }
    const pspReference = `psp_unrecorded_${randomBytes(8).toString('hex')}`;
    await db
      .insertInto('psp_charge')
      .values({
        psp_reference: pspReference,
        nonce: discrepancy.nonce,
        amount_minor: amountMinor,
        currency: 'USD',
        created_at: discrepancy.at,
      })
      .execute();
    return pspReference;
  }
  const charge = await db
    .selectFrom('psp_charge')
    .select('psp_reference')
    .where('nonce', '=', discrepancy.nonce)
    .orderBy('id')
    .executeTakeFirst();
  if (charge === undefined) throw new NotFoundError('charge of nonce', discrepancy.nonce);
  let amountMinor: bigint | null = null;
  if (discrepancy.kind === SETTLEMENT_ADJUSTMENT.amount) {
    amountMinor = discrepancy.amountMinor ?? 0n;
    if (amountMinor < 1n || amountMinor > ORDER_AMOUNT_MINOR_MAX) {
      throw new InvalidArgumentError('amount_minor', 'must be between 1 and 10^12 minor units');
    }
  }
  await db
    .insertInto('psp_settlement_adjustment')
    .values({
      psp_reference: charge.psp_reference,
      kind: discrepancy.kind,
      amount_minor: amountMinor,
      created_at: now,
    })
    .onDuplicateKeyUpdate({ amount_minor: amountMinor, created_at: now })
    .execute();
  return charge.psp_reference;
}

export type SettlementFileScheduleOptions = Readonly<{
  db: PspDb;
  dir: string;
  fees: FeeModel;
  /** Minutes after midnight UTC at which yesterday's file is written. */
  atMinutes: number;
  catchUpDays: number;
  /** The longest sleep between two checks, in milliseconds. */
  checkMsMax: number;
  now: () => Date;
  log: (line: string) => void;
}>;

/**
 * Writes each closed day's file once, at `atMinutes` after midnight UTC of the next day, for the
 * last `catchUpDays` days whose file is missing or was written before its day ended (a restart
 * catches up). Checks at most every
 * `checkMsMax`; stop() cancels the timer and waits for a write in progress.
 */
export class SettlementFileSchedule {
  readonly #options: SettlementFileScheduleOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = false;

  constructor(options: SettlementFileScheduleOptions) {
    this.#options = options;
  }

  start(): void {
    this.#schedule(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#running = this.#tick().finally(() => {
        this.#running = undefined;
        this.#schedule(this.#nextDelayMs());
      });
    }, delayMs);
    this.#timer.unref();
  }

  #nextDelayMs(): number {
    const { now, atMinutes, checkMsMax } = this.#options;
    const current = now();
    const today = current.toISOString().slice(0, 10);
    let next = utcDayAt(today, atMinutes).getTime();
    if (next <= current.getTime()) next = utcDayAt(addUtcDays(today, 1), atMinutes).getTime();
    return Math.max(100, Math.min(checkMsMax, next - current.getTime()));
  }

  async #tick(): Promise<void> {
    const { db, dir, fees, atMinutes, catchUpDays, now, log } = this.#options;
    for (const day of dueUtcDays(now(), atMinutes, catchUpDays)) {
      if (this.#stopped) return;
      const target = path.join(path.resolve(dir), settlementFileName(day));
      const written = await modifiedAt(target);
      // A file written before its day ended (on demand, GenerateSettlementFile) misses the
      // day's later charges: it is replaced by the final one, once.
      const final = startOfUtcDay(addUtcDays(day, 1)).getTime();
      if (written !== undefined && written >= final) continue;
      try {
        const file = await writeSettlementFile({ db, dir, day, fees });
        log(
          `psp settlement: ${written === undefined ? 'wrote' : 'rewrote'} ${file.path} (${file.rows} rows)` +
            (written === undefined ? '' : '; the one there was written before the day ended'),
        );
      } catch (error) {
        log(`psp settlement: writing the file of ${day} failed: ${String(error)}`);
        return;
      }
    }
  }
}

/** When `file` was last written (ms since the epoch), or undefined when it is missing. */
async function modifiedAt(file: string): Promise<number | undefined> {
  try {
    return (await stat(file)).mtimeMs;
  } catch {
    return undefined;
  }
}
