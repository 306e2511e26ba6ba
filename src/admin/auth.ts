/**
 * The admin credential. One token from the config (ADMIN_TOKEN) is presented either as
 * `Authorization: Bearer <token>` (scripts, the CLI) or once on the login form, which sets a signed
 * HttpOnly session cookie holding the operator's name and an expiry (browsers), Secure when
 * ADMIN_COOKIE_SECURE says the panel is reached through TLS. Every comparison is constant-time,
 * and every one goes through the node's WrongTokenLimit, which bounds guessing on all paths
 * together. Without ADMIN_TOKEN nobody gets in; ADMIN_READONLY_OPEN=true lets anyone
 * read (local development), while actions still need the token.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export const SESSION_COOKIE = 'settle_admin';
/** A browser session lasts this long, then the operator logs in again. */
export const SESSION_TTL_MS = 12 * 3_600_000;
/** Operator names: what the audit trail shows as `actor`. */
export const ACTOR_PATTERN = /^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$/;

export type AdminAuthConfig = Readonly<{
  token: string | undefined;
  readonlyOpen: boolean;
}>;

export type Principal = Readonly<{
  actor: string;
  /** `open`: nobody logged in, allowed to read because ADMIN_READONLY_OPEN is set. */
  via: 'bearer' | 'session' | 'open';
}>;

/**
 * Where an admin credential is presented. Each is compared with the token, so each is a way to
 * guess it: a session cookie too, since its signature is checked with the token as the key.
 */
export const CREDENTIAL_PATH = {
  /** The login form's token field. */
  form: 'form',
  /** `Authorization: Bearer` on a panel request. */
  bearer: 'bearer',
  /** The session cookie's signature. */
  session: 'session',
  /** AdminService's `authorization` metadata. */
  grpc: 'grpc',
} as const;
export type CredentialPath = (typeof CREDENTIAL_PATH)[keyof typeof CREDENTIAL_PATH];

/** Wrong credentials a node takes per window, on all paths together, before it refuses all. */
export const WRONG_TOKENS_MAX = 10;
export const WRONG_TOKEN_WINDOW_MS = 60_000;

export type CredentialCheck<T> =
  | Readonly<{ outcome: 'match'; value: T }>
  | Readonly<{ outcome: 'wrong' }>
  /** Refused without a comparison, for `waitMs` more. */
  | Readonly<{ outcome: 'limited'; waitMs: number }>;

export type WrongTokenObserver = Readonly<{
  /** Every credential refused, for a metric: compared and wrong, or refused unchecked. */
  refused?: (path: CredentialPath, reason: 'wrong_token' | 'rate_limited') => void;
  /** At most twice a window, for a log line: its first wrong credential, and its last. */
  warn?: (fields: Record<string, unknown>, message: string) => void;
}>;

export type WrongTokenLimitOptions = Readonly<{
  max?: number;
  windowMs?: number;
  /** The clock (tests give their own). */
  nowMs?: () => number;
  observer?: WrongTokenObserver;
}>;

/**
 * A node's bound on guessing the admin token. Every comparison of a presented credential with
 * the token, by every path (CREDENTIAL_PATH), goes through `check`. After `max` wrong ones in a
 * window, every credential is refused without a comparison until the window ends, the right one
 * included: comparing it first would answer every guess, so the guessing would be unbounded.
 * The price is that whoever reaches the node can keep operators out by guessing `max` times a
 * window; they get back in when the guessing stops (README, "Admin panel"). One window for all
 * callers, so its memory is a few counters whatever the number of guessers or addresses. Counted
 * per node, in memory: a restart or another node starts afresh.
 */
export class WrongTokenLimit {
  readonly max: number;
  readonly windowMs: number;
  readonly #nowMs: () => number;
  readonly #observer: WrongTokenObserver;
  #windowStartMs = Number.NEGATIVE_INFINITY;
  #wrong: Record<CredentialPath, number> = { form: 0, bearer: 0, session: 0, grpc: 0 };
  #wrongTotal = 0;

  constructor(options: WrongTokenLimitOptions = {}) {
    this.max = options.max ?? WRONG_TOKENS_MAX;
    this.windowMs = options.windowMs ?? WRONG_TOKEN_WINDOW_MS;
    this.#nowMs = options.nowMs ?? Date.now;
    this.#observer = options.observer ?? {};
  }

  /** How long until credentials are compared again; 0 when they are now. */
  waitMs(): number {
    const nowMs = this.#nowMs();
    // A clock set back starts a window too, rather than stretching this one.
    if (nowMs < this.#windowStartMs || nowMs - this.#windowStartMs >= this.windowMs) {
      this.#windowStartMs = nowMs;
      this.#wrong = { form: 0, bearer: 0, session: 0, grpc: 0 };
      this.#wrongTotal = 0;
    }
    return this.#wrongTotal >= this.max ? this.#windowStartMs + this.windowMs - nowMs : 0;
  }

  /**
   * Runs `compare`, the one comparison of a credential presented on `path` with the token,
   * unless the window's wrong credentials have reached the bound. `compare` answers undefined
   * for a wrong credential, which is counted.
   */
  check<T>(path: CredentialPath, compare: () => T | undefined): CredentialCheck<T> {
    const waitMs = this.waitMs();
    if (waitMs > 0) {
      this.#observer.refused?.(path, 'rate_limited');
      return { outcome: 'limited', waitMs };
    }
    const value = compare();
    if (value !== undefined) return { outcome: 'match', value };
    this.#wrong[path] += 1;
    this.#wrongTotal += 1;
    this.#observer.refused?.(path, 'wrong_token');
    this.#warn(path);
    return { outcome: 'wrong' };
  }

  // Not one line per attempt: a flood of guesses would be a flood of lines. The metric counts
  // every attempt; the audit trail has the failed logins and actions, bounded by the same limit.
  #warn(path: CredentialPath): void {
    const seconds = Math.round(this.windowMs / 1_000);
    // `check` counts no more once the bound is reached, so the total stops at `max`.
    if (this.#wrongTotal === this.max) {
      const refusedUntil = new Date(this.#windowStartMs + this.windowMs).toISOString();
      const counts = Object.entries(this.#wrong)
        .map(([where, count]) => `${where} ${count}`)
        .join(', ');
      this.#observer.warn?.(
        { wrong: { ...this.#wrong }, max: this.max, windowMs: this.windowMs, refusedUntil },
        `${this.max} wrong admin tokens on this node in ${seconds} s (${counts}): every admin ` +
          `credential, the right token and sessions included, is refused unchecked until ` +
          refusedUntil,
      );
    } else if (this.#wrongTotal === 1) {
      this.#observer.warn?.(
        { wrong: { ...this.#wrong }, max: this.max, windowMs: this.windowMs },
        `a wrong admin token (${path}); this node takes ${this.max} in ${seconds} s before it ` +
          `refuses every admin credential, and logs only the first and the one that reaches ` +
          `the bound`,
      );
    }
  }
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** Constant-time: both sides are hashed to the same length first. */
export function tokenMatches(config: Pick<AdminAuthConfig, 'token'>, presented: string): boolean {
  if (config.token === undefined) return false;
  return timingSafeEqual(digest(presented), digest(config.token));
}

/**
 * The token of an `Authorization: Bearer <token>` value (scheme in any case, token trimmed), or
 * undefined for any other value. HTTP headers and gRPC metadata read it the same way.
 */
export function bearerToken(authorization: unknown): string | undefined {
  if (typeof authorization !== 'string' || !/^Bearer /i.test(authorization)) return undefined;
  return authorization.slice(7).trim();
}

function sign(token: string, payload: string): string {
  return createHmac('sha256', token).update(`settle-admin-session.${payload}`).digest('base64url');
}

/** The cookie value for `actor`, valid until now + SESSION_TTL_MS. */
export function sessionValue(config: AdminAuthConfig, actor: string, nowMs: number): string {
  if (config.token === undefined) throw new Error('no ADMIN_TOKEN: sessions are disabled');
  const payload = `v1.${Buffer.from(actor, 'utf8').toString('base64url')}.${nowMs + SESSION_TTL_MS}`;
  return `${payload}.${sign(config.token, payload)}`;
}

/** How the session cookie is set (ADMIN_COOKIE_SECURE). */
export type SessionCookieOptions = Readonly<{
  /**
   * Adds `Secure`: browsers send the cookie over HTTPS only, and keep it only from an HTTPS page
   * (most also from localhost). For a panel reached through TLS; a panel on plain HTTP on another
   * host would never get its cookie back.
   */
  secure: boolean;
}>;

/** The Set-Cookie value that logs `actor` in until now + SESSION_TTL_MS. */
export function sessionCookie(
  config: AdminAuthConfig,
  actor: string,
  nowMs: number,
  options: SessionCookieOptions,
): string {
  const value = sessionValue(config, actor, nowMs);
  return `${SESSION_COOKIE}=${value}; ${cookieAttributes(options)}; Max-Age=${SESSION_TTL_MS / 1000}`;
}

/**
 * The Set-Cookie value that drops the session cookie. It carries the same attributes as the one
 * that set it, so it replaces that very cookie, and with ADMIN_COOKIE_SECURE on no Set-Cookie of
 * the panel goes out without Secure.
 */
export function clearedSessionCookie(options: SessionCookieOptions): string {
  return `${SESSION_COOKIE}=; ${cookieAttributes(options)}; Max-Age=0`;
}

function cookieAttributes(options: SessionCookieOptions): string {
  return `Path=/admin; HttpOnly; SameSite=Strict${options.secure ? '; Secure' : ''}`;
}

type SessionParts = Readonly<{
  payload: string;
  actorB64: string;
  expiresText: string;
  signature: string;
}>;

/** The parts of a value shaped like our session cookie; undefined for anything else. */
function sessionParts(value: string): SessionParts | undefined {
  const parts = value.split('.');
  if (parts.length !== 4 || parts[0] !== 'v1') return undefined;
  const [version, actorB64, expiresText, signature] = parts as [string, string, string, string];
  return { payload: `${version}.${actorB64}.${expiresText}`, actorB64, expiresText, signature };
}

/** The comparison with the token: whether `token` signed these parts. */
function signedWith(token: string, parts: SessionParts): boolean {
  const expected = Buffer.from(sign(token, parts.payload));
  const given = Buffer.from(parts.signature);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** The name the parts claim, whether or not they are signed; undefined if it is no name. */
function claimedActor(parts: SessionParts): string | undefined {
  const actor = Buffer.from(parts.actorB64, 'base64url').toString('utf8');
  return ACTOR_PATTERN.test(actor) ? actor : undefined;
}

/** The operator of signed parts, unless the session has expired. */
function sessionActor(parts: SessionParts, nowMs: number): string | undefined {
  if (!/^\d{1,15}$/.test(parts.expiresText) || Number(parts.expiresText) <= nowMs) return undefined;
  return claimedActor(parts);
}

/** The operator a session cookie names, if its signature checks out and it has not expired. */
export function verifySession(
  config: AdminAuthConfig,
  value: string,
  nowMs: number,
): string | undefined {
  if (config.token === undefined) return undefined;
  const parts = sessionParts(value);
  if (parts === undefined || !signedWith(config.token, parts)) return undefined;
  return sessionActor(parts, nowMs);
}

function cookieOf(headers: IncomingHttpHeaders, name: string): string | undefined {
  const header = headers.cookie;
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const index = part.indexOf('=');
    if (index > 0 && part.slice(0, index).trim() === name) return part.slice(index + 1).trim();
  }
  return undefined;
}

/** Who is calling, as far as their credential says. */
export type Authentication =
  | Readonly<{ outcome: 'ok'; principal: Principal }>
  /** No credential: none presented, an expired session, or a node without ADMIN_TOKEN. */
  | Readonly<{ outcome: 'none' }>
  /**
   * A wrong bearer token or a session not signed with the token: a guess, counted by the limit.
   * `claimed` is the name it came with (not verified), for the audit trail.
   */
  | Readonly<{ outcome: 'wrong'; via: 'bearer' | 'session'; claimed: string }>
  /** Refused unchecked: the node's bound on wrong tokens is reached for `waitMs` more. */
  | Readonly<{ outcome: 'limited'; waitMs: number }>;

/**
 * Who is calling: a bearer token (actor from `X-Admin-Actor`, else `api`), a session cookie, or
 * nobody. Both credentials are compared through `limit`. Never throws.
 */
export function authenticate(
  config: AdminAuthConfig,
  limit: WrongTokenLimit,
  headers: IncomingHttpHeaders,
  nowMs: number,
): Authentication {
  // Without a token there is nothing to guess, and nothing is counted.
  if (config.token === undefined) return { outcome: 'none' };
  const presented = bearerToken(headers.authorization);
  if (presented !== undefined) {
    const claimed = headers['x-admin-actor'];
    const actor = typeof claimed === 'string' && ACTOR_PATTERN.test(claimed) ? claimed : 'api';
    const check = limit.check(CREDENTIAL_PATH.bearer, () =>
      tokenMatches(config, presented) ? true : undefined,
    );
    if (check.outcome === 'limited') return check;
    return check.outcome === 'match'
      ? { outcome: 'ok', principal: { actor, via: 'bearer' } }
      : { outcome: 'wrong', via: 'bearer', claimed: actor };
  }
  const cookie = cookieOf(headers, SESSION_COOKIE);
  const parts = cookie === undefined ? undefined : sessionParts(cookie);
  if (parts === undefined) return { outcome: 'none' };
  const token = config.token;
  const check = limit.check(CREDENTIAL_PATH.session, () =>
    signedWith(token, parts) ? true : undefined,
  );
  if (check.outcome === 'limited') return check;
  if (check.outcome === 'wrong') {
    return { outcome: 'wrong', via: 'session', claimed: claimedActor(parts) ?? 'unknown' };
  }
  const actor = sessionActor(parts, nowMs);
  return actor === undefined
    ? { outcome: 'none' }
    : { outcome: 'ok', principal: { actor, via: 'session' } };
}

/**
 * A browser POST must come from our own pages: an Origin (or Referer) naming another host is
 * refused, on top of the SameSite=Strict cookie.
 */
export function isSameOrigin(headers: IncomingHttpHeaders): boolean {
  // Browsers since 2020-2023 say where a request comes from; trust that first.
  const site = headers['sec-fetch-site'];
  if (typeof site === 'string') return site === 'same-origin' || site === 'none';
  const source = headers.origin ?? headers.referer;
  if (typeof source !== 'string' || source === '') return true;
  try {
    return new URL(source).host === headers.host;
  } catch {
    return false;
  }
}
