/**
 * SQL fragments shared by repositories (Settle's and the PSP mock's alike); they name no table.
 */
import { sql, type RawBuilder } from 'kysely';

/**
 * `(CASE id WHEN ? THEN ? … END)`: in a multi-row UPDATE, the value each row gets, picked by its
 * id. Rows whose id is not among `items` get NULL, so the UPDATE's WHERE must name only those ids.
 */
export function caseOfId<T, V>(
  items: readonly T[],
  id: (item: T) => string,
  value: (item: T) => V,
): RawBuilder<V> {
  // One raw node with 2n parameters, the same SQL as n `WHEN ${id} THEN ${value}` fragments
  // joined, without a node per branch for Kysely to build and visit (these run per column of
  // every group-commit UPDATE).
  const fragments = ['(CASE id WHEN '];
  const parameters: unknown[] = [];
  items.forEach((item, i) => {
    parameters.push(id(item), value(item));
    fragments.push(' THEN ', i === items.length - 1 ? ' END)' : ' WHEN ');
  });
  if (items.length === 0) return sql<V>`(CASE id END)`;
  return sql<V>(Object.assign(fragments, { raw: fragments }), ...parameters);
}

/** How much one retention purge may delete in a housekeeping pass. */
export type PurgeBounds = Readonly<{ rowsPerStatement: number; statementsMax: number }>;

/**
 * Runs `deleteBatch(rowsPerStatement)` (one `DELETE … LIMIT`, answering how many rows went) until
 * one deletes fewer than asked or `statementsMax` statements have run; answers the rows deleted
 * and the statements run. Every retention purge is this loop, so none runs unbounded, and none
 * stops early while a full batch says more is waiting.
 */
export async function deleteInBatches(
  bounds: PurgeBounds,
  deleteBatch: (limit: number) => Promise<number>,
): Promise<{ deleted: number; statements: number }> {
  let deleted = 0;
  let statements = 0;
  while (statements < bounds.statementsMax) {
    statements += 1;
    const batch = await deleteBatch(bounds.rowsPerStatement);
    deleted += batch;
    if (batch < bounds.rowsPerStatement) break;
  }
  return { deleted, statements };
}
