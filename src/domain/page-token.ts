/**
 * Page tokens of the List RPCs (AIP-158): an opaque base64url JSON of the cursor (the last row's
 * id), the list it pages and the filters of the request that made it. A token is honoured only
 * by the same list with the same filters: a cursor taken under one filter, or from another list
 * whose cursors look alike (ListEntries and ListDeadLetters both page by numeric id), would skip
 * or repeat rows without telling anyone, so a mismatch is INVALID_ARGUMENT and the caller starts
 * again. The page size is not a filter: AIP-158 lets it change between pages. Pure; no I/O.
 */
import { InvalidArgumentError } from './errors.js';

/** The filters of a list request, as it names them; `undefined` and '' mean "not filtered". */
export type PageFilter = Readonly<Record<string, string | number | undefined>>;

/** The lists that page with these tokens (the gRPC method; the admin panel uses its RPC's). */
export type PagedList =
  | 'ListPayments'
  | 'ListEntries'
  | 'GetTrialBalance'
  | 'ListDeadLetters'
  | 'ListReports'
  | 'ListMismatches';

/**
 * What a list's cursors look like: a pattern, or a check for what a pattern cannot say (a numeric
 * id that fits the BIGINT it pages by: isInt64Decimal).
 */
export type CursorShape = RegExp | ((cursor: string) => boolean);

/** A token for the page of `list` after `cursor`, valid only with the same `filter`. */
export function encodePageToken(list: PagedList, cursor: string, filter: PageFilter): string {
  return Buffer.from(JSON.stringify({ cursor, filter: filterKey(list, filter) })).toString(
    'base64url',
  );
}

/**
 * The cursor in `token`, or undefined for '' (the first page). Throws INVALID_ARGUMENT naming
 * `field` (page_token, or the admin panel's `before`) when the token is not one of ours, its
 * cursor is not of `cursorShape`, or it was made by another list or under other filters.
 */
export function decodePageToken(
  list: PagedList,
  token: string,
  filter: PageFilter,
  cursorShape: CursorShape,
  field = 'page_token',
): string | undefined {
  if (token === '') return undefined;
  const decoded = parse(token);
  if (
    decoded === undefined ||
    !(typeof cursorShape === 'function'
      ? cursorShape(decoded.cursor)
      : cursorShape.test(decoded.cursor)) ||
    decoded.filter !== filterKey(list, filter)
  ) {
    throw new InvalidArgumentError(
      field,
      field === 'page_token'
        ? 'invalid or from a request with other filters; start again without page_token'
        : `invalid or from a list with another filter; start again without ${field}`,
    );
  }
  return decoded.cursor;
}

// '' and undefined are the same "no filter" on the wire (proto3 defaults), so both are dropped;
// keys are sorted so the order a caller builds the object in does not matter. The list goes in
// first, under a key no request field has.
function filterKey(list: PagedList, filter: PageFilter): string {
  const set = Object.entries(filter)
    .filter(([, value]) => value !== undefined && value !== '')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([list, Object.fromEntries(set)]);
}

function parse(token: string): { cursor: string; filter: string } | undefined {
  try {
    const parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as unknown;
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const { cursor, filter } = parsed as { cursor?: unknown; filter?: unknown };
    return typeof cursor === 'string' && typeof filter === 'string'
      ? { cursor, filter }
      : undefined;
  } catch {
    return undefined;
  }
}
