/**
 * Goal: the admin credential cannot be forged, replayed past its expiry or guessed quickly: the
 * bearer token is compared in constant time (by digest), the session cookie is signed with the
 * token and carries an expiry, tampering with either part or rotating the token invalidates it,
 * the cookie is Secure (set and cleared) exactly when ADMIN_COOKIE_SECURE says so, browser POSTs
 * from another site are refused, and wrong credentials on every path share one bound per client
 * (its socket address: IPv4-mapped IPv6 as IPv4, IPv6 by /64) that, once reached, refuses that
 * client's every credential unchecked until its window ends, other clients unaffected; a higher
 * bound per node refuses everyone, and the clients tracked are capped whatever their number.
 * Method: the pure functions of src/admin/auth.ts with fixed clocks.
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
  WrongTokenLimit,
} from '../../src/admin/auth.js';
import { clientOfAddress, clientOfPeer } from '../../src/admin/client-address.js';
import { loadConfig, localRunDefaults } from '../../src/config.js';

const config = { token: 'a-long-enough-admin-token', readonlyOpen: false };
const NOW = 1_800_000_000_000;

const CLIENT_A = clientOfAddress('127.0.0.2');
const CLIENT_B = clientOfAddress('127.0.0.1');

/** A bound that never trips within a test, for the tests that are not about it. */
const roomy = () => new WrongTokenLimit({ max: 1_000, nowMs: () => NOW }).forClient(CLIENT_B);

describe('admin credential', () => {
  it('accepts only the exact token, as bearer or in tokenMatches', () => {
    expect(tokenMatches(config, 'a-long-enough-admin-token')).toBe(true);
    expect(tokenMatches(config, 'a-long-enough-admin-toke')).toBe(false);
    expect(tokenMatches(config, '')).toBe(false);
    expect(tokenMatches({ token: undefined }, '')).toBe(false);
    const limit = roomy();
    expect(
      authenticate(
        config,
        limit,
        { authorization: 'Bearer a-long-enough-admin-token', 'x-admin-actor': 'ops-bob' },
        NOW,
      ),
    ).toEqual({ outcome: 'ok', principal: { actor: 'ops-bob', via: 'bearer' } });
    expect(
      authenticate(
        config,
        limit,
        { authorization: 'Bearer a-long-enough-admin-token', 'x-admin-actor': '<x>' },
        NOW,
      ),
    ).toEqual({ outcome: 'ok', principal: { actor: 'api', via: 'bearer' } });
    expect(authenticate(config, limit, { authorization: 'Bearer wrong' }, NOW)).toEqual({
      outcome: 'wrong',
      via: 'bearer',
      claimed: 'api',
    });
    expect(authenticate(config, limit, {}, NOW)).toEqual({ outcome: 'none' });
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
    expect(
      authenticate(config, roomy(), { cookie: `other=1; ${SESSION_COOKIE}=${value}` }, NOW),
    ).toEqual({ outcome: 'ok', principal: { actor: 'alice', via: 'session' } });
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

  it('refuses an ADMIN_TOKEN no authorization header can carry, without quoting it', () => {
    for (const token of [
      ' secret-admin-token-16+',
      'secret-admin-tøken-16+',
      'secret-admin-token\r',
    ]) {
      expect(() => loadConfig({ ADMIN_TOKEN: token }), JSON.stringify(token)).toThrow(
        /ADMIN_TOKEN: must be printable ASCII with no space at either end/,
      );
      try {
        loadConfig({ ADMIN_TOKEN: token });
      } catch (error) {
        expect(String(error)).not.toContain(token);
      }
    }
    // A passphrase: spaces inside are what the node always matched.
    for (const token of ['secret-admin-token-16+', 'correct horse battery staple']) {
      expect(loadConfig({ ADMIN_TOKEN: token }).ADMIN_TOKEN).toBe(token);
    }
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

  it("bounds a client's wrong credentials from every path together, then refuses its every one unchecked", () => {
    let nowMs = NOW;
    const counted: string[] = [];
    const warned: Array<{ fields: Record<string, unknown>; message: string }> = [];
    const node = new WrongTokenLimit({
      max: 4,
      windowMs: 60_000,
      nowMs: () => nowMs,
      observer: {
        refused: (path, reason) => counted.push(`${path} ${reason}`),
        lockedOut: (scope) => counted.push(`${scope} locked out`),
        warn: (fields, message) => warned.push({ fields, message }),
      },
    });
    const limit = node.forClient(CLIENT_A);
    const bearer = (token: string) =>
      authenticate(config, limit, { authorization: `Bearer ${token}` }, nowMs);
    const session = (value: string) =>
      authenticate(config, limit, { cookie: `${SESSION_COOKIE}=${value}` }, nowMs);
    const valid = sessionValue(config, 'alice', NOW);
    // A session signed with a guessed token is a guess at the token too.
    const forged = sessionValue({ ...config, token: 'a-guessed-admin-token-1' }, 'mallory', NOW);

    expect(bearer('wrong-token-1')).toEqual({ outcome: 'wrong', via: 'bearer', claimed: 'api' });
    expect(limit.check('form', () => undefined)).toEqual({ outcome: 'wrong' });
    expect(session(forged)).toEqual({ outcome: 'wrong', via: 'session', claimed: 'mallory' });
    // The right token, any number of times, is neither counted nor refused below the bound.
    for (let i = 0; i < 20; i += 1) expect(bearer(config.token).outcome).toBe('ok');
    expect(session(valid).outcome).toBe('ok');
    nowMs += 30_000;
    expect(limit.check('grpc', () => undefined)).toEqual({ outcome: 'wrong' });

    // The bound is reached: nothing is compared any more, so the right token cannot be told
    // from a wrong one and is refused too, on every path, until the window ends.
    let compared = 0;
    expect(
      limit.check('grpc', () => {
        compared += 1;
        return true;
      }),
    ).toEqual({ outcome: 'limited', waitMs: 30_000, scope: 'client' });
    expect(compared).toBe(0);
    expect(bearer(config.token)).toEqual({ outcome: 'limited', waitMs: 30_000, scope: 'client' });
    expect(session(valid)).toEqual({ outcome: 'limited', waitMs: 30_000, scope: 'client' });
    // Another client is not affected: its right token is compared and let in.
    expect(
      authenticate(
        config,
        node.forClient(CLIENT_B),
        { authorization: `Bearer ${config.token}` },
        nowMs,
      ),
    ).toEqual({ outcome: 'ok', principal: { actor: 'api', via: 'bearer' } });
    nowMs += 29_999;
    expect(limit.check('form', () => true)).toEqual({
      outcome: 'limited',
      waitMs: 1,
      scope: 'client',
    });
    expect(limit.waitMs()).toBe(1);

    nowMs += 1;
    expect(limit.waitMs()).toBe(0);
    expect(bearer(config.token).outcome).toBe('ok');
    expect(session(valid).outcome).toBe('ok');
    expect(bearer('wrong-token-2').outcome).toBe('wrong');

    expect(counted).toEqual([
      'bearer wrong_token',
      'form wrong_token',
      'session wrong_token',
      'grpc wrong_token',
      'client locked out',
      'grpc rate_limited',
      'bearer rate_limited',
      'session rate_limited',
      'form rate_limited',
      'bearer wrong_token',
    ]);
    // Logged a few times a window, not per attempt: its first wrong credential, and the one
    // that reaches the client's bound.
    const first =
      'a wrong admin token (bearer, from 127.0.0.2); a client may present 4 in 60 s before its ' +
      'admin credentials are refused, and this node takes 100 from all clients before it ' +
      "refuses everyone's; logged: the first of a window and each bound reached";
    expect(warned.map((line) => line.message)).toEqual([
      first,
      '4 wrong admin tokens from 127.0.0.2 in 60 s: its admin credentials, the right token ' +
        'included, are refused unchecked until ' +
        new Date(NOW + 60_000).toISOString() +
        '; other clients are not affected',
      first,
    ]);
    expect(warned[1]?.fields).toEqual({
      client: '127.0.0.2',
      wrongFromClient: 4,
      max: 4,
      nodeMax: 100,
      windowMs: 60_000,
      refusedUntil: new Date(NOW + 60_000).toISOString(),
    });
  });

  it('counts nothing that is not a guess: no credential, an expired session, a node without a token', () => {
    const counted: string[] = [];
    const limit = new WrongTokenLimit({
      max: 1,
      nowMs: () => NOW,
      observer: { refused: (path, reason) => counted.push(`${path} ${reason}`) },
    }).forClient(CLIENT_A);
    const expired = sessionValue(config, 'alice', NOW - SESSION_TTL_MS - 1);
    expect(authenticate(config, limit, {}, NOW)).toEqual({ outcome: 'none' });
    expect(authenticate(config, limit, { cookie: `${SESSION_COOKIE}=${expired}` }, NOW)).toEqual({
      outcome: 'none',
    });
    expect(authenticate(config, limit, { cookie: `${SESSION_COOKIE}=not-a-session` }, NOW)).toEqual(
      { outcome: 'none' },
    );
    expect(
      authenticate(
        { token: undefined, readonlyOpen: false },
        limit,
        { authorization: 'Bearer x' },
        NOW,
      ),
    ).toEqual({ outcome: 'none' });
    expect(counted).toEqual([]);
    expect(limit.waitMs()).toBe(0);
  });

  it('starts a new window when the clock is set back, rather than refusing for longer', () => {
    let nowMs = NOW;
    const node = new WrongTokenLimit({ max: 1, nodeMax: 2, windowMs: 60_000, nowMs: () => nowMs });
    const [a, b] = [node.forClient(CLIENT_A), node.forClient(CLIENT_B)];
    expect(a.check('grpc', () => undefined)).toEqual({ outcome: 'wrong' });
    expect(b.check('grpc', () => undefined)).toEqual({ outcome: 'wrong' });
    expect(a.waitMs()).toBe(60_000);
    nowMs -= 3_600_000;
    expect(a.waitMs()).toBe(0);
    expect(b.waitMs()).toBe(0);
    expect(node.clientsTracked).toBe(0);
  });
});

describe('clients of the bound on wrong tokens', () => {
  it('keys a client by the address the socket sees: ::ffff: as IPv4, IPv6 by /64, no port', () => {
    expect(clientOfAddress('127.0.0.2')).toBe('127.0.0.2');
    expect(clientOfAddress('::ffff:127.0.0.2')).toBe('127.0.0.2');
    expect(clientOfAddress('::FFFF:1.2.3.4')).toBe('1.2.3.4');
    expect(clientOfAddress('::ffff:102:304')).toBe('1.2.3.4');
    // One host rotating through its network's addresses stays one client.
    expect(clientOfAddress('2001:db8:0:7::1')).toBe('2001:db8:0:7::/64');
    expect(clientOfAddress('2001:0db8:0000:0007:ffff:1:2:3')).toBe('2001:db8:0:7::/64');
    expect(clientOfAddress('2001:db8:0:8::1')).toBe('2001:db8:0:8::/64');
    expect(clientOfAddress('::1')).toBe('0:0:0:0::/64');
    expect(clientOfAddress('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(clientOfAddress(undefined)).toBe('unknown');
    expect(clientOfAddress('')).toBe('unknown');
    expect(clientOfAddress('not-an-address')).toBe('unknown');

    // grpc-js's getPeer(): `<remoteAddress>:<port>`, IPv6 unbracketed.
    expect(clientOfPeer('127.0.0.2:50412')).toBe('127.0.0.2');
    expect(clientOfPeer('::ffff:127.0.0.2:50412')).toBe('127.0.0.2');
    expect(clientOfPeer('::1:50412')).toBe('0:0:0:0::/64');
    expect(clientOfPeer('2001:db8:0:7::1:443')).toBe('2001:db8:0:7::/64');
    expect(clientOfPeer('[2001:db8:0:7::1]:443')).toBe('2001:db8:0:7::/64');
    expect(clientOfPeer('127.0.0.2')).toBe('127.0.0.2');
    expect(clientOfPeer('::1')).toBe('0:0:0:0::/64');
    expect(clientOfPeer('unknown')).toBe('unknown');
  });

  it('counts an IPv4-mapped address and its IPv4 form as one client', () => {
    const node = new WrongTokenLimit({ max: 2, nowMs: () => NOW });
    const mapped = node.forClient(clientOfPeer('::ffff:10.1.2.3:40000'));
    const plain = node.forClient(clientOfAddress('10.1.2.3'));
    expect(mapped.check('grpc', () => undefined)).toEqual({ outcome: 'wrong' });
    expect(plain.check('bearer', () => undefined)).toEqual({ outcome: 'wrong' });
    expect(plain.check('bearer', () => true)).toMatchObject({
      outcome: 'limited',
      scope: 'client',
    });
    expect(mapped.check('grpc', () => true)).toMatchObject({ outcome: 'limited', scope: 'client' });
    expect(node.forClient(CLIENT_B).check('bearer', () => true).outcome).toBe('match');
  });

  it('refuses everyone once the node takes nodeMax wrong tokens from many clients, until its window ends', () => {
    let nowMs = NOW;
    const events: string[] = [];
    const warned: string[] = [];
    const node = new WrongTokenLimit({
      nowMs: () => nowMs,
      observer: {
        lockedOut: (scope) => events.push(scope),
        warn: (_fields, message) => warned.push(message),
      },
    });
    expect([node.max, node.nodeMax, node.windowMs]).toEqual([10, 100, 60_000]);
    // 25 addresses, 4 wrong tokens each: none reaches its own bound of 10.
    const guessers = Array.from({ length: 25 }, (_, i) =>
      node.forClient(clientOfAddress(`198.51.100.${i + 1}`)),
    );
    for (const guesser of guessers) {
      for (let i = 0; i < 4; i += 1) {
        expect(guesser.check('bearer', () => undefined)).toEqual({ outcome: 'wrong' });
      }
      nowMs += 1_000;
    }
    // The 100th wrong token reached the node's bound: every client is refused, unchecked, the
    // right token included, whether it guessed or not.
    let compared = 0;
    for (const client of [guessers[0], node.forClient(CLIENT_B)]) {
      expect(
        client?.check('form', () => {
          compared += 1;
          return true;
        }),
      ).toEqual({ outcome: 'limited', waitMs: 35_000, scope: 'node' });
    }
    expect(compared).toBe(0);
    expect(events).toEqual(['node']);
    expect(warned).toHaveLength(2);
    expect(warned[1]).toBe(
      '100 wrong admin tokens on this node in 60 s (form 0, bearer 100, session 0, grpc 0), ' +
        'from 25 clients or more: every admin credential of every client, the right token and ' +
        'sessions included, is refused unchecked until ' +
        new Date(NOW + 60_000).toISOString(),
    );
    nowMs = NOW + 60_000;
    expect(node.forClient(CLIENT_B).check('bearer', () => true).outcome).toBe('match');
  });

  it('tracks at most clientsMax clients; more count against the node only, none is forgotten early', () => {
    let nowMs = NOW;
    const warned: string[] = [];
    const node = new WrongTokenLimit({
      max: 2,
      nodeMax: 1_000_000,
      clientsMax: 3,
      nowMs: () => nowMs,
      observer: { warn: (_fields, message) => warned.push(message) },
    });
    const client = (i: number) => node.forClient(clientOfAddress(`203.0.113.${i}`));
    for (let i = 1; i <= 3; i += 1) {
      for (let guess = 0; guess < 2; guess += 1) client(i).check('bearer', () => undefined);
    }
    expect(node.clientsTracked).toBe(3);
    // Rotating through many more addresses neither grows the map nor frees a refused guesser.
    for (let i = 4; i <= 250; i += 1) {
      for (let guess = 0; guess < 3; guess += 1) {
        expect(client(i).check('bearer', () => undefined)).toEqual({ outcome: 'wrong' });
      }
    }
    expect(node.clientsTracked).toBe(3);
    expect(client(1).check('bearer', () => true)).toMatchObject({ outcome: 'limited' });
    expect(warned.filter((line) => line.includes('clients with wrong admin tokens'))).toEqual([
      '3 clients with wrong admin tokens are tracked on this node: wrong tokens from others ' +
        "(203.0.113.4) count against the node's bound only until windows end",
    ]);
    // Windows end, and the map empties as they do.
    nowMs += 60_000;
    expect(client(1).check('bearer', () => true).outcome).toBe('match');
    expect(node.clientsTracked).toBe(0);
    expect(client(250).check('bearer', () => undefined)).toEqual({ outcome: 'wrong' });
    expect(node.clientsTracked).toBe(1);
  });

  it('has at most 2 × nodeMax clients with a live window with the defaults', () => {
    let nowMs = NOW;
    const node = new WrongTokenLimit({ nowMs: () => nowMs });
    for (let i = 0; i < 5_000; i += 1) {
      node.forClient(clientOfAddress(`10.0.${i >> 8}.${i & 0xff}`)).check('grpc', () => undefined);
      nowMs += 97;
      expect(node.clientsTracked).toBeLessThanOrEqual(2 * node.nodeMax);
    }
  });
});
