/**
 * The optional credential of the non-admin API: PaymentService, WalletService, LedgerService,
 * ReconciliationService and the REST twin (/v1/payments). With API_TOKENS set, a caller presents
 * one of its tokens as `authorization: Bearer <token>` (gRPC metadata, or the HTTP header); a
 * list so a token can be rotated: add the new one, move the callers, drop the old one. Without
 * API_TOKENS everything is open, as before (a local run, the demo, the bench), and the node warns
 * once at start. Health and reflection never ask: probes and tools must reach them.
 *
 * Every comparison is constant-time, against every token (no early exit reveals which one came
 * close), and a token is never logged or quoted in an answer. Wrong tokens are not rate-bounded
 * as admin ones are: each token has at least 16 characters, too many to guess at any rate a
 * node answers.
 */
import { timingSafeEqual } from 'node:crypto';
import { bearerToken, tokenDigest } from '../admin/auth.js';
import { UnauthenticatedError } from '../domain/errors.js';

/** Why a call was refused: no bearer token at all, or one that is none of API_TOKENS. */
export const API_TOKEN_REFUSAL = {
  missing: 'MISSING_API_TOKEN',
  wrong: 'WRONG_API_TOKEN',
} as const;
export type ApiTokenRefusal = (typeof API_TOKEN_REFUSAL)[keyof typeof API_TOKEN_REFUSAL];

/**
 * A call refused for its credential: UNAUTHENTICATED (401 on the REST twin), with `reason` for
 * the REST error body. The message says what to send and never quotes what was sent.
 */
export class ApiTokenError extends UnauthenticatedError {
  readonly httpHeaders = { 'www-authenticate': 'Bearer realm="settle"' };
  constructor(
    readonly reason: ApiTokenRefusal,
    message: string,
  ) {
    super(message);
  }
}

/** Where a credential is presented: it picks the words of the refusal. */
export type ApiSurface = Readonly<{
  /** e.g. `PaymentService`, or `/v1/payments` */
  name: string;
  kind: 'grpc' | 'http';
}>;

/**
 * The tokens of API_TOKENS, kept only as digests; `enabled` is false for an empty list.
 * `onRefused` hears of every refusal (gRPC and REST alike), before it is thrown: the node counts
 * them in `settle_api_credentials_refused_total`, since the general call metrics show only
 * UNAUTHENTICATED.
 */
export class ApiTokens {
  readonly #digests: readonly Buffer[];
  readonly #onRefused: (refusal: ApiTokenRefusal) => void;

  constructor(
    tokens: readonly string[],
    options: { onRefused?: (refusal: ApiTokenRefusal) => void } = {},
  ) {
    this.#digests = tokens.map(tokenDigest);
    this.#onRefused = options.onRefused ?? (() => {});
  }

  /** Whether callers must present a token (API_TOKENS is set). */
  get enabled(): boolean {
    return this.#digests.length > 0;
  }

  /**
   * Whether `presented` is one of the tokens. Both sides are hashed to the same length and every
   * token is compared, so the time taken says neither how much matched nor which token did.
   */
  matches(presented: string): boolean {
    const given = tokenDigest(presented);
    let found = 0;
    // `|` rather than `||` or `some`, which would stop at the first match.
    for (const expected of this.#digests) found |= Number(timingSafeEqual(given, expected));
    return found === 1;
  }

  /**
   * Throws ApiTokenError unless `authorization` (the metadata or header value) is
   * `Bearer <one of the tokens>`; does nothing while the API is open (no API_TOKENS).
   */
  require(authorization: unknown, surface: ApiSurface): void {
    if (!this.enabled) return;
    const presented = bearerToken(authorization);
    // Built only for a refusal: the check runs on every call.
    const expected = () =>
      surface.kind === 'grpc'
        ? `the metadata "authorization: Bearer <token>"`
        : `the header "Authorization: Bearer <token>"`;
    if (presented === undefined || presented === '') {
      this.#onRefused(API_TOKEN_REFUSAL.missing);
      throw new ApiTokenError(
        API_TOKEN_REFUSAL.missing,
        `${surface.name} needs ${expected()}, the token one of this node's API_TOKENS ` +
          `(the settle CLI sends SETTLE_API_TOKEN, the TypeScript client its apiToken option)`,
      );
    }
    if (!this.matches(presented)) {
      this.#onRefused(API_TOKEN_REFUSAL.wrong);
      throw new ApiTokenError(
        API_TOKEN_REFUSAL.wrong,
        `${surface.name} refused the bearer token: it is none of this node's API_TOKENS; send ` +
          `${expected()} with a current token`,
      );
    }
  }
}
