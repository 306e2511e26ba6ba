/**
 * The syntax of an API token (API_TOKENS), written once for the configuration that accepts tokens
 * and the TypeScript client that sends one. The client's entry (src/client/index.ts) imports this
 * file, so it imports nothing.
 */

/** The fewest characters a token may have: at 16 it cannot be guessed at any rate a node answers. */
export const API_TOKEN_LENGTH_MIN = 16;

/**
 * A token's characters: printable ASCII without spaces, because it travels in the `authorization`
 * header (grpc-js refuses any other header value, deep in the call and quoting it in its error).
 */
export const API_TOKEN_CHARACTERS = /^[\x21-\x7E]+$/;
/**
 * The admin token's characters: printable ASCII, spaces inside allowed (a passphrase; an
 * `authorization` header carries them, and the node matched such tokens before this rule), but
 * none at either end, which the node trims from what a caller sends (admin/auth.ts bearerToken).
 */
export const ADMIN_TOKEN_CHARACTERS = /^[\x21-\x7E](?:[\x20-\x7E]*[\x21-\x7E])?$/;

/**
 * What an API token opens: `write` every method of the non-admin API (the only scope there was
 * before scopes), `read` only the methods that read (src/grpc/api-scopes.ts lists which is which).
 */
export const API_SCOPE = {
  read: 'read',
  write: 'write',
} as const;
export type ApiScope = (typeof API_SCOPE)[keyof typeof API_SCOPE];

/** The name of a token listed alone, the form API_TOKENS had before names: it has scope write. */
const UNNAMED_API_TOKEN = 'unnamed';

/**
 * A token's name: plain and short, because it goes into every log line of its calls; shorter than
 * any token (API_TOKEN_LENGTH_MIN), so that a token written where the name goes ("<token> read
 * dashboard-bot", fields swapped) is refused rather than logged as a name on every call.
 */
const API_TOKEN_NAME = /^[a-z0-9][a-z0-9_-]{0,14}$/;

/**
 * An item written `<name>:<scope>:<token>`, the form of many other tools' token lists: read as a
 * token alone it would open every method under a token no caller sends. Neither field is held to
 * the name's or token's rules (a swapped `<token>:read:<name>` is the same mistake, and so is an
 * empty name, `:read:<token>`), and the scope is matched in any case; no generated token (hex,
 * base64, base64url, UUID) holds a `:` at all.
 */
const COLON_SEPARATED_ITEM = /^[^:]*:(?:read|write):/i;

/** One token of API_TOKENS, with the name logs know its caller by and what it may call. */
export type ApiTokenEntry = Readonly<{ name: string; scope: ApiScope; token: string }>;

/**
 * Reads one item of API_TOKENS: a token alone (`unnamed`, scope `write`), or `<name> <scope>
 * <token>` separated by spaces. Spaces, because a token cannot hold one (it travels in a header),
 * while any other separator (`:`, `=`) may already be inside a token in use: so every item that
 * was valid before still means what it meant, except a token alone that reads as `<name>:<read or
 * write>:<rest>`, refused because it is far likelier a mistaken separator than a token. Returns
 * what is wrong in words that never quote the item: a field in the wrong place may be the token.
 */
export function parseApiTokenItem(item: string): ApiTokenEntry | { problem: string } {
  const fields = item.trim().split(/\s+/);
  if (fields.length !== 1 && fields.length !== 3) {
    return {
      problem:
        `has ${fields.length} fields separated by spaces, but a token cannot hold a space (it ` +
        'travels in a header): write a token alone (scope write), or "<name> <scope> <token>"',
    };
  }
  if (fields.length === 1 && COLON_SEPARATED_ITEM.test(item.trim())) {
    return {
      problem:
        'reads as "<name>:<scope>:<token>", which would be one token of scope write that no ' +
        'caller sends: separate the fields by spaces, "<name> <scope> <token>"',
    };
  }
  const [name, scope, token] =
    fields.length === 1 ? [UNNAMED_API_TOKEN, API_SCOPE.write, fields[0]] : fields;
  if (fields.length === 3) {
    if (name === UNNAMED_API_TOKEN) {
      return {
        problem: `the name "${UNNAMED_API_TOKEN}" stands for tokens listed alone; choose another`,
      };
    }
    if (name === undefined || !API_TOKEN_NAME.test(name)) {
      return {
        problem:
          'the name (first field) must be 1-15 characters of a-z, 0-9, _ and -, starting with a ' +
          'letter or digit (shorter than any token, so a token in its place is refused)',
      };
    }
    if (scope !== API_SCOPE.read && scope !== API_SCOPE.write) {
      return { problem: 'the scope (second field) must be read or write' };
    }
  }
  if (token === undefined || token.length < API_TOKEN_LENGTH_MIN) {
    return { problem: `each token must have ${API_TOKEN_LENGTH_MIN} characters or more` };
  }
  if (!API_TOKEN_CHARACTERS.test(token)) {
    return {
      problem: 'each token must be printable ASCII without spaces (it travels in a header)',
    };
  }
  return { name: name ?? UNNAMED_API_TOKEN, scope: scope as ApiScope, token };
}

/**
 * What is wrong with a list of well-formed items taken together, by position (from 0, as the
 * configuration's messages count: API_TOKENS.0 is the first item): a name given
 * twice (the logs could not tell the callers apart), or one token under two names or scopes
 * (which would it be?). The same token listed alone twice is harmless and passes, as before.
 */
export function apiTokenListProblems(
  entries: readonly ApiTokenEntry[],
): Array<{ index: number; problem: string }> {
  const problems: Array<{ index: number; problem: string }> = [];
  const firstByName = new Map<string, number>();
  const firstByToken = new Map<string, number>();
  for (const [index, entry] of entries.entries()) {
    const sameName = firstByName.get(entry.name);
    if (entry.name !== UNNAMED_API_TOKEN && sameName !== undefined) {
      problems.push({
        index,
        problem: `has the name of API_TOKENS.${sameName}; give each caller its own name`,
      });
    }
    firstByName.set(entry.name, firstByName.get(entry.name) ?? index);
    const sameToken = firstByToken.get(entry.token);
    const earlier = sameToken === undefined ? undefined : entries[sameToken];
    if (
      sameToken !== undefined &&
      earlier !== undefined &&
      (earlier.name !== entry.name || earlier.scope !== entry.scope)
    ) {
      problems.push({
        index,
        problem:
          `has the token of API_TOKENS.${sameToken} under another name or scope; give each ` +
          'caller its own token',
      });
    }
    firstByToken.set(entry.token, sameToken ?? index);
  }
  return problems;
}
