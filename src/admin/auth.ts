/**
 * The admin credential. One token from the config (ADMIN_TOKEN) is presented either as
 * `Authorization: Bearer <token>` (scripts, the CLI) or once on the login form, which sets a signed
 * HttpOnly session cookie holding the operator's name and an expiry (browsers), Secure when
 * ADMIN_COOKIE_SECURE says the panel is reached through TLS. Every comparison is constant-time.
 * Without ADMIN_TOKEN nobody gets in; ADMIN_READONLY_OPEN=true lets anyone read (local
 * development), while actions still need the token.
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

/** Wrong tokens a node takes on its login form per window before it refuses logins. */
export const FAILED_LOGINS_MAX = 10;
export const FAILED_LOGIN_WINDOW_MS = 60_000;

/**
 * The login form's bound on guessing. Every wrong token is audited, under a name the guesser
 * chooses, so without a bound the form takes any number of guesses and writes a row for each.
 * After FAILED_LOGINS_MAX wrong tokens in a window, the form refuses every login (right or
 * wrong, since telling them apart would be answering a guess) until the window ends. Counted
 * per node, in memory: a restart or another node starts afresh. A bearer token is not limited.
 */
export class FailedLoginLimit {
  #windowStartMs = Number.NEGATIVE_INFINITY;
  #failures = 0;

  constructor(
    private readonly max = FAILED_LOGINS_MAX,
    private readonly windowMs = FAILED_LOGIN_WINDOW_MS,
  ) {}

  /** How long until the form takes a login again; 0 when it takes one now. */
  waitMs(nowMs: number): number {
    if (nowMs - this.#windowStartMs >= this.windowMs) {
      this.#windowStartMs = nowMs;
      this.#failures = 0;
    }
    return this.#failures >= this.max ? this.#windowStartMs + this.windowMs - nowMs : 0;
  }

  failed(nowMs: number): void {
    this.waitMs(nowMs);
    this.#failures += 1;
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

/** The operator a session cookie names, if its signature checks out and it has not expired. */
export function verifySession(
  config: AdminAuthConfig,
  value: string,
  nowMs: number,
): string | undefined {
  if (config.token === undefined) return undefined;
  const parts = value.split('.');
  if (parts.length !== 4 || parts[0] !== 'v1') return undefined;
  const [version, actorB64, expiresText, signature] = parts as [string, string, string, string];
  const expected = Buffer.from(sign(config.token, `${version}.${actorB64}.${expiresText}`));
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
  if (!/^\d{1,15}$/.test(expiresText) || Number(expiresText) <= nowMs) return undefined;
  const actor = Buffer.from(actorB64, 'base64url').toString('utf8');
  return ACTOR_PATTERN.test(actor) ? actor : undefined;
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

/**
 * Who is calling: a bearer token (actor from `X-Admin-Actor`, else `api`), a session cookie, or
 * nobody. Never throws.
 */
export function authenticate(
  config: AdminAuthConfig,
  headers: IncomingHttpHeaders,
  nowMs: number,
): Principal | undefined {
  const presented = bearerToken(headers.authorization);
  if (presented !== undefined) {
    if (!tokenMatches(config, presented)) return undefined;
    const claimed = headers['x-admin-actor'];
    const actor = typeof claimed === 'string' && ACTOR_PATTERN.test(claimed) ? claimed : 'api';
    return { actor, via: 'bearer' };
  }
  const cookie = cookieOf(headers, SESSION_COOKIE);
  if (cookie !== undefined) {
    const actor = verifySession(config, cookie, nowMs);
    if (actor !== undefined) return { actor, via: 'session' };
  }
  return undefined;
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
