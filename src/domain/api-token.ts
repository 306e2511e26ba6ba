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
 * What an API token opens: `write` every method of the non-admin API (the only scope there was
 * before scopes), `read` only the methods that read (src/grpc/api-scopes.ts lists which is which).
 */
export const API_SCOPE = {
  read: 'read',
  write: 'write',
} as const;
export type ApiScope = (typeof API_SCOPE)[keyof typeof API_SCOPE];
