/**
 * Reads a PSP settlement file as a stream of validated rows in bounded memory: a hand-written
 * line splitter over a ReadStream (node:readline would buffer a line of any length), one row
 * object at a time, and a SHA-256 of the exact bytes read. Validation is strict, because a wrong
 * row would be booked as money: the header must match exactly, every row has 9 columns, amounts
 * are decimal major units with at most 2 decimals (converted to bigint minor units without
 * floats), the currency is USD, the type is payment/refund/fee, gross - fee = net, and the file
 * ends with a newline (a missing one means it was cut off). The first problem stops the read with
 * a MalformedSettlementFileError naming the file and the line.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { ERROR_CODE, SettleError } from '../domain/errors.js';
import { INT64_MAX, isCurrencyCode, type CurrencyCode } from '../domain/money.js';

/** The header row, exactly. */
export const SETTLEMENT_HEADER =
  'psp_reference,merchant_reference,type,currency,gross,fee,net,batch_id,created_utc';
const COLUMNS = SETTLEMENT_HEADER.split(',');

/**
 * The most a file's amounts of one column may add up to, counted without their signs (minor
 * units): what a BIGINT holds. A run stores the file's totals and every sum over a part of its
 * rows, each at most this; a file past it is refused before anything is written.
 */
export const FILE_TOTAL_MINOR_MAX = INT64_MAX;

/** The longest line accepted, in bytes; real rows are under 200. */
export const LINE_BYTES_MAX = 1_024;
/** Bytes read from the file at a time. */
const READ_CHUNK_BYTES = 256 * 1024;

export const SETTLEMENT_ROW_TYPE = { payment: 'payment', refund: 'refund', fee: 'fee' } as const;
export type SettlementRowType = (typeof SETTLEMENT_ROW_TYPE)[keyof typeof SETTLEMENT_ROW_TYPE];

export type SettlementRow = Readonly<{
  /** 1-based line number in the file; the header is line 1, so rows start at 2. */
  lineNumber: number;
  pspReference: string;
  /** Settle's payment order id. */
  merchantReference: string;
  type: SettlementRowType;
  currency: CurrencyCode;
  grossMinor: bigint;
  feeMinor: bigint;
  netMinor: bigint;
  batchId: string;
  createdUtc: Date;
}>;

/** A file that is not a valid settlement file. `line` is 1-based. Maps to INVALID_ARGUMENT. */
export class MalformedSettlementFileError extends SettleError {
  override readonly name = 'MalformedSettlementFileError';
  readonly code = ERROR_CODE.invalidArgument;
  constructor(
    readonly fileName: string,
    readonly line: number,
    readonly problem: string,
  ) {
    super(`${fileName} line ${line}: ${problem}`);
  }
}

const REFERENCE = /^[A-Za-z0-9_.:-]{1,64}$/;
const DECIMAL = /^-?\d{1,13}(\.\d{1,2})?$/;
const TOO_MANY_DECIMALS = /^-?\d{1,13}\.\d{3,}$/;
const TIMESTAMP = /^(\d{4}-\d{2}-\d{2})T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

/**
 * Converts a decimal amount in major units ("12.3", "-0.05", "7") to minor units (1230n, -5n,
 * 700n); undefined when it is not one or has more than 2 decimals.
 */
export function parseMajorToMinor(value: string): bigint | undefined {
  if (!DECIMAL.test(value)) return undefined;
  const negative = value.startsWith('-');
  const unsigned = negative ? value.slice(1) : value;
  const [whole = '0', fraction = ''] = unsigned.split('.');
  const minor = BigInt(whole) * 100n + BigInt(fraction.padEnd(2, '0'));
  return negative ? -minor : minor;
}

export type ReadOptions = Readonly<{
  /** Rows (not counting the header) accepted before the file is refused. */
  rowsMax: number;
  /** Stops the read between chunks. */
  signal?: AbortSignal;
}>;

export type SettlementFileScan = Readonly<{
  /** Hex SHA-256 of the file's bytes. */
  sha256: string;
  rows: number;
}>;

/**
 * Streams the rows of a settlement file. `onDone` receives the SHA-256 and the row count after
 * the last row, so a caller can tell whether the file changed between two reads.
 */
export async function* readSettlementFile(
  filePath: string,
  options: ReadOptions,
  onDone?: (scan: SettlementFileScan) => void,
): AsyncGenerator<SettlementRow> {
  const fileName = path.basename(filePath);
  const hash = createHash('sha256');
  const fail = (line: number, problem: string): never => {
    throw new MalformedSettlementFileError(fileName, line, problem);
  };
  let lineNumber = 0;
  let rows = 0;
  const totals = { gross: 0n, fee: 0n, net: 0n };
  let pending: Buffer = Buffer.alloc(0);
  const stream = createReadStream(filePath, { highWaterMark: READ_CHUNK_BYTES });
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      options.signal?.throwIfAborted();
      hash.update(chunk);
      const buffer = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      let start = 0;
      for (;;) {
        const end = buffer.indexOf(0x0a, start);
        if (end === -1) break;
        lineNumber += 1;
        if (end - start > LINE_BYTES_MAX) {
          fail(lineNumber, `the line is longer than ${LINE_BYTES_MAX} bytes`);
        }
        const text = decodeLine(buffer, start, end, lineNumber, fail);
        start = end + 1;
        if (lineNumber === 1) {
          checkHeader(text, fail);
          continue;
        }
        rows += 1;
        if (rows > options.rowsMax)
          fail(lineNumber, `the file has more than ${options.rowsMax} rows`);
        const row = parseRow(text, lineNumber, fail);
        addToTotals(totals, row, lineNumber, fail);
        yield row;
      }
      pending = buffer.subarray(start);
      if (pending.length > LINE_BYTES_MAX) {
        fail(lineNumber + 1, `the line is longer than ${LINE_BYTES_MAX} bytes`);
      }
      // Copy the short remainder so the big chunk it points into can be freed.
      pending = Buffer.from(pending);
    }
  } finally {
    stream.destroy();
  }
  if (pending.length > 0) {
    fail(
      lineNumber + 1,
      pending.indexOf(0x0d) !== -1 && pending.indexOf(0x0d) < pending.length - 1
        ? 'lines end with CR alone (old Mac line ends); expected LF or CRLF'
        : lineNumber === 0
          ? 'the header has no line end (is the file truncated?)'
          : 'the last line has no line end: the file is truncated',
    );
  }
  if (lineNumber === 0) fail(1, `the file is empty; expected the header ${SETTLEMENT_HEADER}`);
  onDone?.({ sha256: hash.digest('hex'), rows });
}

function addToTotals(
  totals: { gross: bigint; fee: bigint; net: bigint },
  row: SettlementRow,
  lineNumber: number,
  fail: (line: number, problem: string) => never,
): void {
  const magnitude = (minor: bigint) => (minor < 0n ? -minor : minor);
  totals.gross += magnitude(row.grossMinor);
  totals.fee += magnitude(row.feeMinor);
  totals.net += magnitude(row.netMinor);
  const over =
    totals.gross > FILE_TOTAL_MINOR_MAX
      ? 'gross'
      : totals.fee > FILE_TOTAL_MINOR_MAX
        ? 'fee'
        : totals.net > FILE_TOTAL_MINOR_MAX
          ? 'net'
          : undefined;
  if (over !== undefined) {
    fail(
      lineNumber,
      `the file's ${over} amounts add up past ${FILE_TOTAL_MINOR_MAX} minor units, the most ` +
        'a reconciliation stores: no real day settles this much; split the file if it is real',
    );
  }
}

/** Reads the whole file once: validates every row and returns its digest, writing nothing. */
export async function scanSettlementFile(
  filePath: string,
  options: ReadOptions,
): Promise<SettlementFileScan> {
  let scan: SettlementFileScan | undefined;
  for await (const row of readSettlementFile(filePath, options, (done) => (scan = done))) {
    void row;
  }
  if (scan === undefined) throw new Error('settlement file scan ended without a digest');
  return scan;
}

function decodeLine(
  buffer: Buffer,
  start: number,
  end: number,
  lineNumber: number,
  fail: (line: number, problem: string) => never,
): string {
  const stop = end > start && buffer[end - 1] === 0x0d ? end - 1 : end;
  if (lineNumber === 1 && buffer[start] === 0xef && buffer[start + 1] === 0xbb) {
    fail(1, 'the file starts with a UTF-8 byte order mark (EF BB BF); save it without one');
  }
  for (let index = start; index < stop; index += 1) {
    const byte = buffer[index] ?? 0;
    if (byte < 0x20 || byte > 0x7e) {
      fail(
        lineNumber,
        `byte 0x${byte.toString(16).padStart(2, '0')} at column ${index - start + 1} is not printable ASCII`,
      );
    }
  }
  return buffer.toString('latin1', start, stop);
}

function checkHeader(text: string, fail: (line: number, problem: string) => never): void {
  if (text !== SETTLEMENT_HEADER) {
    fail(1, `the header must be exactly "${SETTLEMENT_HEADER}", found "${text.slice(0, 200)}"`);
  }
}

function parseRow(
  text: string,
  lineNumber: number,
  fail: (line: number, problem: string) => never,
): SettlementRow {
  if (text === '') fail(lineNumber, 'the line is empty (blank lines are refused, at the end too)');
  const fields = text.split(',');
  if (fields.length !== COLUMNS.length) {
    fail(
      lineNumber,
      `expected ${COLUMNS.length} columns, found ${fields.length}` +
        (fields.length < COLUMNS.length ? ' (is the line truncated?)' : ''),
    );
  }
  const [pspReference, merchantReference, type, currency, gross, fee, net, batchId, created] =
    fields as [string, string, string, string, string, string, string, string, string];
  const bad = (column: string, value: string, why: string): never =>
    fail(lineNumber, `${column} '${value.slice(0, 80)}' ${why}`);

  if (!REFERENCE.test(pspReference))
    bad('psp_reference', pspReference, 'must be 1-64 of A-Z a-z 0-9 _.:-');
  if (!REFERENCE.test(merchantReference)) {
    bad('merchant_reference', merchantReference, 'must be 1-64 of A-Z a-z 0-9 _.:-');
  }
  if (!isRowType(type)) bad('type', type, 'must be payment, refund or fee');
  if (!isCurrencyCode(currency)) bad('currency', currency, 'must be USD');
  const amount = (column: string, value: string): bigint => {
    const minor = parseMajorToMinor(value);
    if (minor !== undefined) return minor;
    return TOO_MANY_DECIMALS.test(value)
      ? bad(column, value, 'has more than 2 decimal places')
      : bad(column, value, 'is not a decimal amount such as 12.34');
  };
  const grossMinor = amount('gross', gross);
  const feeMinor = amount('fee', fee);
  const netMinor = amount('net', net);
  if (grossMinor - feeMinor !== netMinor) {
    fail(lineNumber, `gross ${gross} - fee ${fee} is not net ${net}`);
  }
  if (feeMinor < 0n) bad('fee', fee, 'must not be negative');
  if (type === 'payment' && grossMinor <= 0n) bad('gross', gross, 'of a payment must be positive');
  if (type === 'refund' && grossMinor >= 0n) bad('gross', gross, 'of a refund must be negative');
  if (type === 'fee' && grossMinor !== 0n) bad('gross', gross, 'of a fee row must be 0.00');
  if (!REFERENCE.test(batchId)) bad('batch_id', batchId, 'must be 1-64 of A-Z a-z 0-9 _.:-');
  const match = TIMESTAMP.exec(created);
  const createdUtc = new Date(created);
  if (
    match === null ||
    Number.isNaN(createdUtc.getTime()) ||
    createdUtc.toISOString().slice(0, 10) !== match[1]
  ) {
    bad('created_utc', created, 'must be a UTC time such as 2024-05-01T13:45:00.000Z');
  }
  return {
    lineNumber,
    pspReference,
    merchantReference,
    type: type as SettlementRowType,
    currency: currency as CurrencyCode,
    grossMinor,
    feeMinor,
    netMinor,
    batchId,
    createdUtc,
  };
}

function isRowType(value: string): value is SettlementRowType {
  return value === 'payment' || value === 'refund' || value === 'fee';
}
