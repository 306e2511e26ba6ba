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
  const branches = items.map((item) => sql`WHEN ${id(item)} THEN ${value(item)}`);
  return sql<V>`(CASE id ${sql.join(branches, sql` `)} END)`;
}
