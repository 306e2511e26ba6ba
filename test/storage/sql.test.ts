/**
 * Goal: caseOfId builds the SQL a multi-row UPDATE relies on: one WHEN per item, in order, with
 * the id and the value as bound parameters (never spliced into the text). Method: compiled with
 * Kysely's MySQL compiler and no connection.
 */
import {
  DummyDriver,
  Kysely,
  MysqlAdapter,
  MysqlIntrospector,
  MysqlQueryCompiler,
  sql,
} from 'kysely';
import { describe, expect, it } from 'vitest';
import { caseOfId } from '../../src/storage/sql.js';

const db = new Kysely<unknown>({
  dialect: {
    createAdapter: () => new MysqlAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (kysely) => new MysqlIntrospector(kysely),
    createQueryCompiler: () => new MysqlQueryCompiler(),
  },
});

describe('caseOfId', () => {
  it('picks each row its value by id, with every id and value bound', () => {
    const rows = [
      { id: "ord_1'; DROP TABLE x; --", state: 'SUCCEEDED' },
      { id: 'ord_2', state: 'FAILED' },
      { id: 'ord_3', state: null },
    ];
    const compiled = sql`SET state = ${caseOfId(
      rows,
      (row) => row.id,
      (row) => row.state,
    )}`.compile(db);
    expect(compiled.sql).toBe(
      'SET state = (CASE id WHEN ? THEN ? WHEN ? THEN ? WHEN ? THEN ? END)',
    );
    expect(compiled.parameters).toEqual([
      "ord_1'; DROP TABLE x; --",
      'SUCCEEDED',
      'ord_2',
      'FAILED',
      'ord_3',
      null,
    ]);
  });

  it('works for one row', () => {
    const compiled = sql`${caseOfId(
      [{ id: 'a', n: 1 }],
      (row) => row.id,
      (row) => row.n,
    )}`.compile(db);
    expect(compiled.sql).toBe('(CASE id WHEN ? THEN ? END)');
    expect(compiled.parameters).toEqual(['a', 1]);
  });
});
