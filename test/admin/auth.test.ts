/**
 * Goal: the admin credential cannot be forged or replayed past its expiry: the bearer token is
 * compared in constant time (by digest), the session cookie is signed with the token and carries
 * an expiry, tampering with either part or rotating the token invalidates it, the cookie is Secure
 * (set and cleared) exactly when ADMIN_COOKIE_SECURE says so, and browser POSTs from another site
 * are refused. Method: the pure functions of src/admin/auth.ts with fixed clocks.
 */
import { describe, expect, it } from 'vitest';
import {
  authenticate,
  clearedSessionCookie,
  isSameOrigin,
  SESSION_COOKIE,
  SESSION_TTL_MS,
  sessionCookie,
  sessionValue,
  tokenMatches,
  verifySession,
} from '../../src/admin/auth.js';
import { loadConfig, localRunDefaults } from '../../src/config.js';

const config = { token: 'a-long-enough-admin-token', readonlyOpen: false };
const NOW = 1_800_000_000_000;

describe('admin credential', () => {
  it('accepts only the exact token, as bearer or in tokenMatches', () => {
    expect(tokenMatches(config, 'a-long-enough-admin-token')).toBe(true);
    expect(tokenMatches(config, 'a-long-enough-admin-toke')).toBe(false);
    expect(tokenMatches(config, '')).toBe(false);
    expect(tokenMatches({ token: undefined }, '')).toBe(false);
    expect(
      authenticate(
        config,
        { authorization: 'Bearer a-long-enough-admin-token', 'x-admin-actor': 'ops-bob' },
        NOW,
      ),
    ).toEqual({ actor: 'ops-bob', via: 'bearer' });
    expect(
      authenticate(
        config,
        { authorization: 'Bearer a-long-enough-admin-token', 'x-admin-actor': '<x>' },
        NOW,
      ),
    ).toEqual({
      actor: 'api',
      via: 'bearer',
    });
    expect(authenticate(config, { authorization: 'Bearer wrong' }, NOW)).toBeUndefined();
    expect(authenticate(config, {}, NOW)).toBeUndefined();
  });

  it('signs sessions with the token and an expiry; tampering, expiry or a new token end them', () => {
    const value = sessionValue(config, 'alice', NOW);
    expect(verifySession(config, value, NOW + 1_000)).toBe('alice');
    expect(verifySession(config, value, NOW + SESSION_TTL_MS + 1)).toBeUndefined();
    expect(
      verifySession({ ...config, token: 'another-long-admin-token' }, value, NOW),
    ).toBeUndefined();
    const [version, actor, expires, signature] = value.split('.');
    const mallory = Buffer.from('mallory').toString('base64url');
    expect(
      verifySession(config, [version, mallory, expires, signature].join('.'), NOW),
    ).toBeUndefined();
    expect(
      verifySession(config, [version, actor, String(NOW * 2), signature].join('.'), NOW),
    ).toBeUndefined();
    expect(verifySession(config, `${value}x`, NOW)).toBeUndefined();
    expect(authenticate(config, { cookie: `other=1; ${SESSION_COOKIE}=${value}` }, NOW)).toEqual({
      actor: 'alice',
      via: 'session',
    });
    const cookie = sessionCookie(config, 'alice', NOW, { secure: false });
    expect(cookie).toContain('HttpOnly');
    expect(cookie).toContain('SameSite=Strict');
    expect(cookie).toContain('Path=/admin');
    expect(cookie).not.toContain(config.token);
  });

  it('marks the session cookie Secure, set and cleared alike, only when asked (ADMIN_COOKIE_SECURE)', () => {
    const value = sessionValue(config, 'alice', NOW);
    const maxAgeS = SESSION_TTL_MS / 1000;
    expect(sessionCookie(config, 'alice', NOW, { secure: true })).toBe(
      `${SESSION_COOKIE}=${value}; Path=/admin; HttpOnly; SameSite=Strict; Secure; Max-Age=${maxAgeS}`,
    );
    expect(clearedSessionCookie({ secure: true })).toBe(
      `${SESSION_COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Secure; Max-Age=0`,
    );
    // Off, the default: the panel on plain HTTP.
    expect(sessionCookie(config, 'alice', NOW, { secure: false })).toBe(
      `${SESSION_COOKIE}=${value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=${maxAgeS}`,
    );
    expect(clearedSessionCookie({ secure: false })).toBe(
      `${SESSION_COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0`,
    );

    expect(loadConfig({}).ADMIN_COOKIE_SECURE).toBe(false);
    expect(loadConfig(localRunDefaults({})).ADMIN_COOKIE_SECURE).toBe(false);
    expect(loadConfig({ ADMIN_COOKIE_SECURE: 'true' }).ADMIN_COOKIE_SECURE).toBe(true);
    expect(loadConfig({ ADMIN_COOKIE_SECURE: 'false' }).ADMIN_COOKIE_SECURE).toBe(false);
    expect(() => loadConfig({ ADMIN_COOKIE_SECURE: 'yes' })).toThrow(/ADMIN_COOKIE_SECURE: /);
  });

  it('refuses cross-site browser POSTs', () => {
    expect(isSameOrigin({ 'sec-fetch-site': 'same-origin' })).toBe(true);
    expect(isSameOrigin({ 'sec-fetch-site': 'cross-site' })).toBe(false);
    expect(isSameOrigin({ 'sec-fetch-site': 'same-site' })).toBe(false);
    expect(isSameOrigin({ origin: 'http://127.0.0.1:8080', host: '127.0.0.1:8080' })).toBe(true);
    expect(isSameOrigin({ origin: 'http://evil.example', host: '127.0.0.1:8080' })).toBe(false);
    expect(isSameOrigin({ origin: 'null', host: '127.0.0.1:8080' })).toBe(false);
    // curl and scripts send neither header; they must bring the token anyway.
    expect(isSameOrigin({ host: '127.0.0.1:8080' })).toBe(true);
  });
});
