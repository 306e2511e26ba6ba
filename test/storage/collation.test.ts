/**
 * Goal: Settle's tables compare ids byte for byte even when the database was created by hand
 * with a case-insensitive default (a managed server's usual default), and a database whose
 * tables already compare text otherwise is refused before anything is written. Method: real
 * MariaDB databases created here with utf8mb4_general_ci; ensureDatabase, then the migrations,
 * then two wallets whose seller ids differ only in case.
 */
import { createConnection, type RowDataPacket } from 'mysql2/promise';
import { afterAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError } from '../../src/domain/errors.js';
import {
  dropDatabase,
  ensureDatabase,
  migrateToLatest,
  openDatabase,
  parseMysqlUrl,
  serverAddress,
} from '../../src/storage/db.js';
import { testDatabaseUrl } from '../support/harness.js';

const urls: string[] = [];
afterAll(async () => {
  for (const url of urls) await dropDatabase(url);
});

/** A database created by hand with the server's usual case-insensitive collation. */
async function caseInsensitiveDatabase(
  prefix: string,
  ddl: string[] = [],
  collation = 'utf8mb4_general_ci',
): Promise<string> {
  const url = testDatabaseUrl(prefix);
  urls.push(url);
  const target = parseMysqlUrl(url);
  const connection = await createConnection(serverAddress(target));
  try {
    await connection.query(
      `CREATE DATABASE \`${target.database}\` CHARACTER SET utf8mb4 COLLATE ${collation}`,
    );
    await connection.query(`USE \`${target.database}\``);
    for (const statement of ddl) await connection.query(statement);
  } finally {
    await connection.end();
  }
  return url;
}

async function collationOf(url: string): Promise<string> {
  const target = parseMysqlUrl(url);
  const connection = await createConnection(serverAddress(target));
  try {
    const [rows] = await connection.query<RowDataPacket[]>(
      'SELECT DEFAULT_COLLATION_NAME AS collation FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?',
      [target.database],
    );
    return String(rows[0]?.['collation']);
  } finally {
    await connection.end();
  }
}

describe('the database collation', () => {
  it('gives an empty case-insensitive database a binary default, so sellers Abc and abc keep two wallets', async () => {
    const url = await caseInsensitiveDatabase('settle_t_coll_empty');
    await ensureDatabase(url);
    expect(await collationOf(url)).toBe('utf8mb4_bin');

    const { db, close } = openDatabase(url, { poolSize: 1 });
    try {
      await migrateToLatest(db);
      for (const sellerId of ['Abc', 'abc']) {
        await db
          .insertInto('wallet')
          .values({
            seller_id: sellerId,
            currency: 'USD',
            balance_minor: 100n,
            version: 0n,
            updated_at: new Date(),
          })
          .execute();
      }
      const wallets = await db
        .selectFrom('wallet')
        .select('seller_id')
        .orderBy('seller_id')
        .execute();
      expect(wallets.map((wallet) => wallet.seller_id)).toEqual(['Abc', 'abc']);
    } finally {
      await close();
    }
  });

  it('refuses a database whose tables compare text case-insensitively, naming a column, and changes nothing', async () => {
    const url = await caseInsensitiveDatabase('settle_t_coll_tables', [
      'CREATE TABLE wallet (seller_id VARCHAR(64) NOT NULL PRIMARY KEY)',
    ]);
    const refusal = await ensureDatabase(url).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(refusal).toBeInstanceOf(FailedPreconditionError);
    expect((refusal as Error).message).toMatch(
      /database '.*' compares text case-insensitively \(column wallet\.seller_id has collation utf8mb4_general_ci\).*utf8mb4_bin/,
    );
    expect(await collationOf(url)).toBe('utf8mb4_general_ci');
  });

  it('refuses case-insensitive tables under a binary default too (only the default was altered)', async () => {
    const url = await caseInsensitiveDatabase(
      'settle_t_coll_altered',
      [
        'CREATE TABLE wallet (seller_id VARCHAR(64) NOT NULL PRIMARY KEY) COLLATE utf8mb4_general_ci',
      ],
      'utf8mb4_bin',
    );
    await expect(ensureDatabase(url)).rejects.toThrow(
      /column wallet\.seller_id has collation utf8mb4_general_ci/,
    );
  });
});
