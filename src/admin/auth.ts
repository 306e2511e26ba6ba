/**
 * The admin credential. One token from the config (ADMIN_TOKEN) is presented either as
 * `Authorization: Bearer <token>` (scripts, the CLI) or once on the login form, which sets a signed
 * HttpOnly session cookie holding the operator's name and an expiry (browsers), Secure when
 * ADMIN_COOKIE_SECURE says the panel is reached through TLS. Every comparison is constant-time,
 * and every one goes through the node's WrongTokenLimit, which bounds guessing on all paths
 * together, per client address (client-address.ts) and per node. Without ADMIN_TOKEN nobody gets
 * in; ADMIN_READONLY_OPEN=true lets anyone read (local development), while actions still need
 * the token.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { assertNever } from '../domain/errors.js';
import type { ClientKey } from './client-address.js';

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

/** Wrong credentials one client (ClientKey) presents per window before its own are refused. */
export const WRONG_TOKENS_MAX = 10;
/** Wrong credentials a node takes per window from all clients together before it refuses all. */
export const WRONG_TOKENS_NODE_MAX = 100;
export const WRONG_TOKEN_WINDOW_MS = 60_000;
/** Clients whose wrong credentials a node tracks at once (WrongTokenLimit says when it fills). */
export const WRONG_TOKEN_CLIENTS_MAX = 10_000;

export type CredentialCheck<T> =
  | Readonly<{ outcome: 'match'; value: T }>
  | Readonly<{ outcome: 'wrong' }>
  /** Refused without a comparison, for `waitMs` more, by the client's bound or the node's. */
  | Readonly<{ outcome: 'limited'; waitMs: number; scope: LockoutScope }>;

/** Whose bound refused a credential unchecked: its client's own, or the node's backstop. */
export const LOCKOUT_SCOPE = { client: 'client', node: 'node' } as const;
export type LockoutScope = (typeof LOCKOUT_SCOPE)[keyof typeof LOCKOUT_SCOPE];

/** What a caller refused unchecked is told (panel and AdminService alike). */
export function lockoutMessage(limited: Readonly<{ waitMs: number; scope: LockoutScope }>): string {
  const seconds = Math.max(1, Math.ceil(limited.waitMs / 1_000));
  switch (limited.scope) {
    case 'client':
      return (
        `too many wrong admin tokens from your address: its admin credentials, the right token ` +
        `included, are refused for ${seconds} s more`
      );
    case 'node':
      return (
        `too many wrong admin tokens on this node: every admin credential, the right token ` +
        `included, is refused for ${seconds} s more`
      );
    default:
      return assertNever(limited.scope);
  }
}

export type WrongTokenObserver = Readonly<{
  /** Every credential refused, for a metric: compared and wrong, or refused unchecked. */
  refused?: (path: CredentialPath, reason: 'wrong_token' | 'rate_limited') => void;
  /** A bound reached, for a metric: a client's (it alone is refused), or the node's (everyone). */
  lockedOut?: (scope: LockoutScope) => void;
  /**
   * For a log line, a few a window: its first wrong credential, each client that reaches its
   * bound, the node reaching its own, and the client map filling up.
   */
  warn?: (fields: Record<string, unknown>, message: string) => void;
}>;

export type WrongTokenLimitOptions = Readonly<{
  /** Wrong credentials per client per window (WRONG_TOKENS_MAX). */
  max?: number;
  /** Wrong credentials per node per window, from all clients together (WRONG_TOKENS_NODE_MAX). */
  nodeMax?: number;
  /** Clients tracked at once (WRONG_TOKEN_CLIENTS_MAX). */
  clientsMax?: number;
  windowMs?: number;
  /** The clock (tests give their own). */
  nowMs?: () => number;
  observer?: WrongTokenObserver;
}>;

/** One client's use of the node's WrongTokenLimit (WrongTokenLimit.forClient). */
export type ClientWrongTokens = Readonly<{
  client: ClientKey;
  /**
   * Runs `compare`, the one comparison of a credential presented on `path` with the token,
   * unless this client's bound or the node's is reached. `compare` answers undefined for a
   * wrong credential, which is counted against both.
   */
  check: <T>(path: CredentialPath, compare: () => T | undefined) => CredentialCheck<T>;
  /** How long until this client's credentials are compared again; 0 when they are now. */
  waitMs: () => number;
}>;

type ClientWindow = { startMs: number; wrong: number };

/**
 * A node's bound on guessing the admin token. Every comparison of a presented credential with
 * the token, by every path (CREDENTIAL_PATH), goes through `check`, counted against the client
 * that presented it (ClientKey: its address as ClientResolver resolves it, the socket's peer or,
 * from a trusted proxy, the client it forwarded for) and against the node.
 *
 * A client that presented `max` wrong credentials in its window (which starts at its first) has
 * every credential refused without a comparison until that window ends, the right one included:
 * comparing it first would answer every guess, so the guessing would be unbounded. Other clients
 * are not affected, so one guesser no longer keeps every operator out. After `nodeMax` wrong ones
 * in the node's window from all clients together, every client is refused, as a backstop against
 * a guesser spread over many addresses.
 *
 * The defaults: 10 a minute per client lets an operator mistype several times and still log in,
 * and 100 a minute per node needs ten addresses (ten IPv6 /64s) to keep everyone out. Guessing
 * stays hopeless at that pace: ADMIN_TOKEN has at least 16 characters, and 100 a minute is 53
 * million a year, while even 16 lowercase letters are 4 × 10^22 tokens (the README's
 * `openssl rand -hex 24` gives one of 2^192).
 *
 * Memory: a client is tracked from its first counted wrong credential for one window, and at most
 * `clientsMax` at once. With the defaults that never fills (the node counts at most `nodeMax` a
 * window, so at most 2 × `nodeMax` clients have a live window); if it does, wrong credentials
 * from clients not yet tracked count against the node's bound only, so no tracked client (a
 * guesser refused) is forgotten early. Counted per node, in memory: a restart or another node
 * starts afresh. Behind a proxy not listed in TRUSTED_PROXIES every client has the proxy's
 * address, and the client bound acts node-wide, as the only bound did before (README, "Admin
 * panel").
 */
export class WrongTokenLimit {
  readonly max: number;
  readonly nodeMax: number;
  readonly clientsMax: number;
  readonly windowMs: number;
  readonly #nowMs: () => number;
  readonly #observer: WrongTokenObserver;
  #windowStartMs = Number.NEGATIVE_INFINITY;
  #wrong: Record<CredentialPath, number> = { form: 0, bearer: 0, session: 0, grpc: 0 };
  #wrongTotal = 0;
  #clientsFullWarned = false;
  /** In the order their windows started, so the ended ones are at the front. */
  readonly #clients = new Map<ClientKey, ClientWindow>();

  constructor(options: WrongTokenLimitOptions = {}) {
    this.max = options.max ?? WRONG_TOKENS_MAX;
    this.nodeMax = options.nodeMax ?? WRONG_TOKENS_NODE_MAX;
    this.clientsMax = options.clientsMax ?? WRONG_TOKEN_CLIENTS_MAX;
    this.windowMs = options.windowMs ?? WRONG_TOKEN_WINDOW_MS;
    this.#nowMs = options.nowMs ?? Date.now;
    this.#observer = options.observer ?? {};
  }

  /** Clients with a live window (tracked), at most `clientsMax`. */
  get clientsTracked(): number {
    return this.#clients.size;
  }

  forClient(client: ClientKey): ClientWrongTokens {
    return {
      client,
      check: (path, compare) => this.#check(client, path, compare),
      waitMs: () => this.#limited(client, this.#nowMs())?.waitMs ?? 0,
    };
  }

  // A clock set back ends a window too, rather than stretching it.
  #ended(startMs: number, nowMs: number): boolean {
    return nowMs < startMs || nowMs - startMs >= this.windowMs;
  }

  /** Whether the client is refused unchecked now, for how long and by whose bound. */
  #limited(
    client: ClientKey,
    nowMs: number,
  ): Readonly<{ waitMs: number; scope: LockoutScope }> | undefined {
    if (this.#ended(this.#windowStartMs, nowMs)) {
      this.#windowStartMs = nowMs;
      this.#wrong = { form: 0, bearer: 0, session: 0, grpc: 0 };
      this.#wrongTotal = 0;
      this.#clientsFullWarned = false;
    }
    for (const [key, window] of this.#clients) {
      if (!this.#ended(window.startMs, nowMs)) break;
      this.#clients.delete(key);
    }
    // The node's bound first: while it is reached, everyone is refused, whatever their own.
    if (this.#wrongTotal >= this.nodeMax) {
      return { waitMs: this.#windowStartMs + this.windowMs - nowMs, scope: LOCKOUT_SCOPE.node };
    }
    const own = this.#clients.get(client);
    if (own === undefined || own.wrong < this.max || this.#ended(own.startMs, nowMs)) {
      return undefined;
    }
    return { waitMs: own.startMs + this.windowMs - nowMs, scope: LOCKOUT_SCOPE.client };
  }

  #check<T>(
    client: ClientKey,
    path: CredentialPath,
    compare: () => T | undefined,
  ): CredentialCheck<T> {
    const nowMs = this.#nowMs();
    const limited = this.#limited(client, nowMs);
    if (limited !== undefined) {
      this.#observer.refused?.(path, 'rate_limited');
      return { outcome: 'limited', ...limited };
    }
    const value = compare();
    if (value !== undefined) return { outcome: 'match', value };
    this.#wrong[path] += 1;
    this.#wrongTotal += 1;
    const own = this.#track(client, nowMs);
    if (own !== undefined) own.wrong += 1;
    this.#observer.refused?.(path, 'wrong_token');
    this.#warn(client, path, own);
    return { outcome: 'wrong' };
  }

  /** The client's window, started now if it has none; undefined when no more fit. */
  #track(client: ClientKey, nowMs: number): ClientWindow | undefined {
    const own = this.#clients.get(client);
    if (own !== undefined && !this.#ended(own.startMs, nowMs)) return own;
    // Out of order only after the clock was set back; the loop in #limited drops it meanwhile.
    this.#clients.delete(client);
    if (this.#clients.size >= this.clientsMax) return undefined;
    const window = { startMs: nowMs, wrong: 0 };
    this.#clients.set(client, window);
    return window;
  }

  // Not one line per attempt: a flood of guesses would be a flood of lines. The metric counts
  // every attempt; the audit trail has the failed logins and actions, bounded by the same limit.
  // A window has one line for its first wrong credential, one per client reaching its bound (at
  // most nodeMax / max), one for the node reaching its own and one for the client map filling.
  #warn(client: ClientKey, path: CredentialPath, own: ClientWindow | undefined): void {
    const seconds = Math.round(this.windowMs / 1_000);
    const limits = { max: this.max, nodeMax: this.nodeMax, windowMs: this.windowMs };
    if (this.#wrongTotal === 1) {
      this.#observer.warn?.(
        { client, wrong: { ...this.#wrong }, ...limits },
        `a wrong admin token (${path}, from ${client}); a client may present ${this.max} in ` +
          `${seconds} s before its admin credentials are refused, and this node takes ` +
          `${this.nodeMax} from all clients before it refuses everyone's; logged: the first of ` +
          `a window and each bound reached`,
      );
    }
    if (own === undefined && !this.#clientsFullWarned) {
      this.#clientsFullWarned = true;
      this.#observer.warn?.(
        { client, clientsMax: this.clientsMax, ...limits },
        `${this.clientsMax} clients with wrong admin tokens are tracked on this node: wrong ` +
          `tokens from others (${client}) count against the node's bound only until windows end`,
      );
    }
    // `check` counts no more for a client at its bound, so its count stops at `max`.
    if (own?.wrong === this.max) {
      this.#observer.lockedOut?.(LOCKOUT_SCOPE.client);
      const refusedUntil = new Date(own.startMs + this.windowMs).toISOString();
      this.#observer.warn?.(
        { client, wrongFromClient: own.wrong, refusedUntil, ...limits },
        `${this.max} wrong admin tokens from ${client} in ${seconds} s: its admin credentials, ` +
          `the right token included, are refused unchecked until ${refusedUntil}; other ` +
          `clients are not affected`,
      );
    }
    // Nor for the node at its bound, so the total stops at `nodeMax`.
    if (this.#wrongTotal === this.nodeMax) {
      this.#observer.lockedOut?.(LOCKOUT_SCOPE.node);
      const refusedUntil = new Date(this.#windowStartMs + this.windowMs).toISOString();
      const counts = Object.entries(this.#wrong)
        .map(([where, count]) => `${where} ${count}`)
        .join(', ');
      this.#observer.warn?.(
        {
          wrong: { ...this.#wrong },
          clientsTracked: this.#clients.size,
          refusedUntil,
          ...limits,
        },
        `${this.nodeMax} wrong admin tokens on this node in ${seconds} s (${counts}), from ` +
          `${this.#clients.size} clients or more: every admin credential of every client, ` +
          `the right token and sessions included, is refused unchecked until ${refusedUntil}`,
      );
    }
  }
}

/** A token's SHA-256, so that tokens of any length compare in constant time (timingSafeEqual). */
export function tokenDigest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** Constant-time: both sides are hashed to the same length first. */
export function tokenMatches(config: Pick<AdminAuthConfig, 'token'>, presented: string): boolean {
  if (config.token === undefined) return false;
  return timingSafeEqual(tokenDigest(presented), tokenDigest(config.token));
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
  /** Refused unchecked: the client's bound on wrong tokens or the node's, for `waitMs` more. */
  | Readonly<{ outcome: 'limited'; waitMs: number; scope: LockoutScope }>;

/**
 * Who is calling: a bearer token (actor from `X-Admin-Actor`, else `api`), a session cookie, or
 * nobody. Both credentials are compared through `limit`, the calling client's. Never throws.
 */
export function authenticate(
  config: AdminAuthConfig,
  limit: ClientWrongTokens,
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
