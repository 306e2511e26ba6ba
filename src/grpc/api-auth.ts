/**
 * The optional credential of the non-admin API: PaymentService, WalletService, LedgerService,
 * ReconciliationService and the REST twin (/v1/payments). With API_TOKENS set, a caller presents
 * one of its tokens as `authorization: Bearer <token>` (gRPC metadata, or the HTTP header); a
 * list so a token can be rotated: add the new one, move the callers, drop the old one. Without
 * API_TOKENS everything is open, as before (a local run, the demo, the bench), and the node warns
 * once at start. Health and reflection never ask: probes and tools must reach them.
 *
 * Each token has a name, which the call's log line carries (`caller`), and a scope: `write`
 * opens every method, `read` only those api-scopes.ts lists as reads, and any other call is
 * refused with PERMISSION_DENIED before its request is looked at. A token listed alone is
 * `unnamed`, scope write, as every token was before names.
 *
 * Every comparison is constant-time, against every token (no early exit reveals which one came
 * close), and a token is never logged or quoted in an answer. Wrong tokens are not rate-bounded
 * as admin ones are: each token has at least 16 characters, too many to guess at any rate a
 * node answers.
 */
import { timingSafeEqual } from 'node:crypto';
import { bearerToken, tokenDigest } from '../admin/auth.js';
import { API_SCOPE, type ApiScope, type ApiTokenEntry } from '../domain/api-token.js';
import { PermissionDeniedError, UnauthenticatedError } from '../domain/errors.js';
import type { ApiMethod } from './api-scopes.js';

/**
 * Why a call was refused: no bearer token at all, one that is none of API_TOKENS, or one of
 * scope read for a method that writes.
 */
export const API_TOKEN_REFUSAL = {
  missing: 'MISSING_API_TOKEN',
  wrong: 'WRONG_API_TOKEN',
  scopeTooNarrow: 'SCOPE_TOO_NARROW',
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

/**
 * A call refused because its token's scope does not cover the method: PERMISSION_DENIED (403 on
 * the REST twin), reason SCOPE_TOO_NARROW. The message names the token (never quotes it), the
 * scope the method needs and the one the token has.
 */
export class ApiScopeError extends PermissionDeniedError {
  readonly reason = API_TOKEN_REFUSAL.scopeTooNarrow;
}

/**
 * The `caller` of settle_api_requests_total for a call no configured name covers. Upper case, as a
 * token's name cannot be (api-token.ts), so neither is ever mistaken for a caller's name:
 * `ANONYMOUS`, refused UNAUTHENTICATED for no token or a wrong one; `NO_API_TOKENS`, any call on a
 * node without API_TOKENS, where nobody is asked who they are.
 */
export const API_CALLER_LABEL = {
  anonymous: 'ANONYMOUS',
  open: 'NO_API_TOKENS',
} as const;

/** Who made a call, as far as API_TOKENS tells: its token's name and scope. */
export type ApiCaller = Readonly<{ name: string; scope: ApiScope }>;

/** Where a credential is presented: it picks the words of the refusal. */
export type ApiSurface = Readonly<{
  /** e.g. `PaymentService`, or `/v1/payments` */
  name: string;
  kind: 'grpc' | 'http';
}>;

/**
 * The tokens of API_TOKENS, kept only as digests with their names and scopes; `enabled` is false
 * for an empty list. `onRefused` hears of every refusal (gRPC and REST alike), before it is
 * thrown: the node counts them in `settle_api_credentials_refused_total`, since the general call
 * metrics show only UNAUTHENTICATED and PERMISSION_DENIED.
 */
export class ApiTokens {
  readonly #entries: ReadonlyArray<Readonly<{ caller: ApiCaller; digest: Buffer }>>;
  readonly #onRefused: (refusal: ApiTokenRefusal) => void;
  readonly #names: ReadonlySet<string>;

  constructor(
    entries: readonly ApiTokenEntry[],
    options: { onRefused?: (refusal: ApiTokenRefusal) => void } = {},
  ) {
    this.#entries = entries.map(({ name, scope, token }) => ({
      caller: Object.freeze({ name, scope }),
      digest: tokenDigest(token),
    }));
    this.#onRefused = options.onRefused ?? (() => {});
    this.#names = new Set(entries.map(({ name }) => name));
  }

  /** Whether callers must present a token (API_TOKENS is set). */
  get enabled(): boolean {
    return this.#entries.length > 0;
  }

  /** The names and scopes of the tokens, for the node's start log: never the tokens. */
  get callers(): readonly ApiCaller[] {
    return this.#entries.map(({ caller }) => caller);
  }

  /**
   * The `caller` label of a call whose caller is `name` (undefined: none known), from a closed
   * set: the names of API_TOKENS and the two fixed values of API_CALLER_LABEL, never anything
   * the request carries, so the metric's series stay bounded by the configuration.
   */
  callerLabel(name: string | undefined): string {
    if (!this.enabled) return API_CALLER_LABEL.open;
    return name !== undefined && this.#names.has(name) ? name : API_CALLER_LABEL.anonymous;
  }

  /**
   * The caller whose token `presented` is, or undefined for none. Both sides are hashed to the
   * same length and every token is compared, so the time taken says neither how much matched nor
   * which token did.
   */
  callerOf(presented: string): ApiCaller | undefined {
    const given = tokenDigest(presented);
    let found: ApiCaller | undefined;
    // No early exit: a match does not stop the loop. One token listed twice has one name and
    // scope (the configuration refuses anything else), so the first match is as good as any.
    for (const entry of this.#entries) {
      const equal = timingSafeEqual(given, entry.digest);
      if (equal && found === undefined) found = entry.caller;
    }
    return found;
  }

  /**
   * The caller, when `authorization` (the metadata or header value) is `Bearer <one of the
   * tokens>` and that token's scope covers `method`; undefined while the API is open (no
   * API_TOKENS). Throws ApiTokenError (UNAUTHENTICATED) for no token or a wrong one, and
   * ApiScopeError (PERMISSION_DENIED) for a read token on a method that writes.
   */
  require(authorization: unknown, surface: ApiSurface, method: ApiMethod): ApiCaller | undefined {
    if (!this.enabled) return undefined;
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
    const caller = this.callerOf(presented);
    if (caller === undefined) {
      this.#onRefused(API_TOKEN_REFUSAL.wrong);
      throw new ApiTokenError(
        API_TOKEN_REFUSAL.wrong,
        `${surface.name} refused the bearer token: it is none of this node's API_TOKENS; send ` +
          `${expected()} with a current token`,
      );
    }
    if (!scopeCovers(caller.scope, method.scope)) {
      this.#onRefused(API_TOKEN_REFUSAL.scopeTooNarrow);
      throw new ApiScopeError(
        `${method.name} needs an API token of scope ${method.scope}, and the token named ` +
          `"${caller.name}" has scope ${caller.scope}; call it with a token of scope ` +
          `${method.scope} (in API_TOKENS: "<name> ${method.scope} <token>", or a token alone)`,
        caller.name,
      );
    }
    return caller;
  }
}

/** Whether a token of scope `held` may call a method that needs `needed`: write covers read. */
function scopeCovers(held: ApiScope, needed: ApiScope): boolean {
  return held === API_SCOPE.write || needed === API_SCOPE.read;
}
