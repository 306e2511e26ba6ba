/**
 * Goal: Settle's settlement-file reader accepts exactly the PSP's format and refuses anything else
 * with an error that names the file, the line and the problem: bad header, wrong column count
 * (a truncated line), bad or over-precise amounts, wrong currency or type, gross - fee != net, a
 * missing final newline, an over-long line, non-ASCII bytes. Amounts become exact bigint minor
 * units. Method: real files in a temporary folder, read through the streaming reader (the same
 * code the reconciliation runs); the SHA-256 is compared with node:crypto's over the same bytes.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LINE_BYTES_MAX,
  MalformedSettlementFileError,
  SETTLEMENT_HEADER,
  parseMajorToMinor,
  readSettlementFile,
  scanSettlementFile,
  FILE_TOTAL_MINOR_MAX,
  type SettlementRow,
} from '../../src/reconciliation/settlement-file.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'settle-csv-'));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

const ROW = 'psp_a1,ord_1,payment,USD,19.99,0.88,19.11,batch-1,2024-05-01T10:00:00.000Z';
let fileCount = 0;

async function file(content: string | Buffer): Promise<string> {
  fileCount += 1;
  const target = path.join(dir, `settlement-2024-05-01.${fileCount}.csv`);
  await writeFile(target, content);
  return target;
}

async function read(content: string | Buffer): Promise<SettlementRow[]> {
  const rows: SettlementRow[] = [];
  for await (const row of readSettlementFile(await file(content), { rowsMax: 100 })) rows.push(row);
  return rows;
}

async function problem(content: string | Buffer): Promise<MalformedSettlementFileError> {
  try {
    await read(content);
  } catch (error) {
    expect(error).toBeInstanceOf(MalformedSettlementFileError);
    return error as MalformedSettlementFileError;
  }
  throw new Error('expected the file to be refused');
}

describe('parseMajorToMinor', () => {
  it.each([
    ['19.99', 1999n],
    ['19.9', 1990n],
    ['19', 1900n],
    ['0.05', 5n],
    ['-0.05', -5n],
    ['-12.30', -1230n],
    ['9999999999999.99', 999999999999999n],
  ])('reads %s as %s minor units', (text, minor) => {
    expect(parseMajorToMinor(text)).toBe(minor);
  });

  it.each(['19.999', '1e3', '', '.5', '5.', '+1.00', '1,00', ' 1.00', '0x10', 'NaN'])(
    'refuses %j',
    (text) => {
      expect(parseMajorToMinor(text)).toBeUndefined();
    },
  );
});

describe('readSettlementFile', () => {
  it('reads valid rows into exact minor units with their line numbers', async () => {
    const rows = await read(
      `${SETTLEMENT_HEADER}\n${ROW}\n` +
        'psp_a2,ord_2,refund,USD,-5.00,0.00,-5.00,batch-1,2024-05-01T11:00:00Z\r\n' +
        'psp_a3,ord_3,fee,USD,0.00,1.50,-1.50,batch-1,2024-05-01T12:00:00.5Z\n',
    );
    expect(rows).toHaveLength(3);
    expect(rows[0]).toEqual({
      lineNumber: 2,
      pspReference: 'psp_a1',
      merchantReference: 'ord_1',
      type: 'payment',
      currency: 'USD',
      grossMinor: 1999n,
      feeMinor: 88n,
      netMinor: 1911n,
      batchId: 'batch-1',
      createdUtc: new Date('2024-05-01T10:00:00.000Z'),
    });
    expect(rows[1]).toMatchObject({ lineNumber: 3, type: 'refund', grossMinor: -500n });
    expect(rows[2]).toMatchObject({ lineNumber: 4, type: 'fee', feeMinor: 150n, netMinor: -150n });
  });

  it('accepts a header-only file and reports its SHA-256 and row count', async () => {
    const content = `${SETTLEMENT_HEADER}\n`;
    const scan = await scanSettlementFile(await file(content), { rowsMax: 10 });
    expect(scan).toEqual({
      rows: 0,
      sha256: createHash('sha256').update(content).digest('hex'),
    });
  });

  it('hashes files larger than one read chunk correctly', async () => {
    const lines = [SETTLEMENT_HEADER];
    for (let i = 0; i < 5_000; i += 1) {
      lines.push(`psp_${i},ord_${i},payment,USD,1.00,0.33,0.67,b,2024-05-01T10:00:00.000Z`);
    }
    const content = lines.join('\n') + '\n';
    const scan = await scanSettlementFile(await file(content), { rowsMax: 10_000 });
    expect(scan.rows).toBe(5_000);
    expect(scan.sha256).toBe(createHash('sha256').update(content).digest('hex'));
  });

  it.each([
    ['an empty file', '', 1, 'the file is empty'],
    ['a different header', 'psp_reference,merchant_reference\n', 1, 'the header must be exactly'],
    [
      'a truncated line (too few columns)',
      `${SETTLEMENT_HEADER}\n${ROW}\npsp_a2,ord_2,payment,US\n`,
      3,
      'expected 9 columns, found 4 (is the line truncated?)',
    ],
    [
      'a file cut off mid-line (no final newline)',
      `${SETTLEMENT_HEADER}\n${ROW}\n${ROW.slice(0, 40)}`,
      3,
      'the last line has no line end: the file is truncated',
    ],
    [
      'an amount with 3 decimals',
      `${SETTLEMENT_HEADER}\n${ROW.replace('19.99', '19.999').replace('19.11', '19.119')}\n`,
      2,
      "gross '19.999' has more than 2 decimal places",
    ],
    [
      'an amount that is not a number',
      `${SETTLEMENT_HEADER}\n${ROW}\n${ROW.replace('0.88', 'abc')}\n`,
      3,
      "fee 'abc' is not a decimal amount",
    ],
    [
      'another currency',
      `${SETTLEMENT_HEADER}\n${ROW.replace('USD', 'EUR')}\n`,
      2,
      "currency 'EUR' must be USD",
    ],
    [
      'an unknown type',
      `${SETTLEMENT_HEADER}\n${ROW.replace('payment', 'chargeback')}\n`,
      2,
      "type 'chargeback' must be payment, refund or fee",
    ],
    [
      'gross - fee != net',
      `${SETTLEMENT_HEADER}\n${ROW.replace('19.11', '19.12')}\n`,
      2,
      'gross 19.99 - fee 0.88 is not net 19.12',
    ],
    [
      'a negative payment',
      `${SETTLEMENT_HEADER}\n${ROW.replace('19.99,0.88,19.11', '-1.00,0.00,-1.00')}\n`,
      2,
      'of a payment must be positive',
    ],
    [
      'a bad timestamp',
      `${SETTLEMENT_HEADER}\n${ROW.replace('2024-05-01T10:00:00.000Z', '2024-02-30T10:00:00Z')}\n`,
      2,
      'created_utc',
    ],
    ['an empty line', `${SETTLEMENT_HEADER}\n${ROW}\n\n${ROW}\n`, 3, 'the line is empty'],
    [
      'a blank line at the end',
      `${SETTLEMENT_HEADER}\n${ROW}\n\n`,
      3,
      'the line is empty (blank lines are refused, at the end too)',
    ],
    [
      'a byte order mark',
      `\ufeff${SETTLEMENT_HEADER}\n${ROW}\n`,
      1,
      'the file starts with a UTF-8 byte order mark (EF BB BF); save it without one',
    ],
    [
      'lines ended by CR alone',
      `${SETTLEMENT_HEADER}\r${ROW}\r`,
      1,
      'lines end with CR alone (old Mac line ends); expected LF or CRLF',
    ],
    [
      'a CRLF file cut after its last CR',
      `${SETTLEMENT_HEADER}\r\n${ROW}\r`,
      2,
      'the last line has no line end: the file is truncated',
    ],
    [
      'a quoted field',
      `${SETTLEMENT_HEADER}\n${ROW.replace('batch-1', '"batch,1"')}\n`,
      2,
      'expected 9 columns, found 10',
    ],
  ])('refuses %s, naming the line', async (_name, content, line, text) => {
    const error = await problem(content);
    expect(error.line).toBe(line);
    expect(error.message).toContain(`line ${line}: `);
    expect(error.message).toContain(text);
    expect(error.message).toMatch(/^settlement-2024-05-01\.\d+\.csv line /);
  });

  it('refuses a line longer than the limit without buffering it whole', async () => {
    const long = `${SETTLEMENT_HEADER}\n${'x'.repeat(3 * 1024 * 1024)}\n`;
    const error = await problem(long);
    expect(error.line).toBe(2);
    expect(error.message).toContain(`longer than ${LINE_BYTES_MAX} bytes`);
  });

  it('refuses a file whose amounts add up past what a run stores, naming the line', async () => {
    // Each row is the largest amount a row may have (13 digits before the point); 9,224 of them
    // add up past the largest BIGINT, which a run's totals once overflowed after loading them.
    const big =
      'psp_b,ord_b,payment,USD,9999999999999.99,0.00,9999999999999.99,b,2024-05-01T10:00:00.000Z';
    const fits = Number(FILE_TOTAL_MINOR_MAX / 999_999_999_999_999n);
    const target = await file(`${SETTLEMENT_HEADER}
${`${big}
`.repeat(fits + 1)}`);
    await expect(scanSettlementFile(target, { rowsMax: 20_000 })).rejects.toThrow(
      new RegExp(`line ${fits + 2}: the file's gross amounts add up past`),
    );
    // One row fewer fits.
    const under = await file(`${SETTLEMENT_HEADER}
${`${big}
`.repeat(fits)}`);
    await expect(scanSettlementFile(under, { rowsMax: 20_000 })).resolves.toMatchObject({
      rows: fits,
    });
  });

  it('counts amounts without their signs, so refunds cannot hide a payment total', async () => {
    const pay =
      'psp_p,ord_p,payment,USD,9999999999999.99,0.00,9999999999999.99,b,2024-05-01T10:00:00.000Z';
    const refund =
      'psp_r,ord_p,refund,USD,-9999999999999.99,0.00,-9999999999999.99,b,2024-05-01T10:00:00.000Z';
    const pairs = Number(FILE_TOTAL_MINOR_MAX / 999_999_999_999_999n / 2n) + 1;
    const target = await file(`${SETTLEMENT_HEADER}
${`${pay}
${refund}
`.repeat(pairs)}`);
    await expect(scanSettlementFile(target, { rowsMax: 20_000 })).rejects.toThrow(
      /the file's gross amounts add up past/,
    );
  });

  it('refuses more rows than allowed', async () => {
    const target = await file(`${SETTLEMENT_HEADER}\n${ROW}\n${ROW}\n${ROW}\n`);
    await expect(scanSettlementFile(target, { rowsMax: 2 })).rejects.toThrow(
      /line 4: the file has more than 2 rows/,
    );
  });
});
