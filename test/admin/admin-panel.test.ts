/**
 * Goal: the admin panel answers "why is this payment stuck?" on one page and lets an operator act
 * safely: search by every id, party, state and time range with paging; a payment's page shows its
 * orders' full timelines (transitions, PSP results, webhooks, dead letters), ledger entries and
 * wallets; dead letters can be replayed or discarded only with the token, a reason and a
 * confirmation step, and every action (failed ones too) lands in admin_audit; views are closed
 * without the token unless ADMIN_READONLY_OPEN is set; wrong tokens on every path (form, bearer,
 * session, AdminService) share one bound per client address, so a guesser on 127.0.0.2 locks out
 * itself but not an operator on 127.0.0.1. Method: a real stack (PSP mock + Settle on
 * MariaDB and NATS) with ADMIN_TOKEN; payments go through gRPC and the PSP's hosted page; dead
 * letters are produced by making the PSP mock fail every registration; pages are fetched over HTTP
 * and checked as text, state is checked in MySQL.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { sql } from 'kysely';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { adminRoutes, type AdminDeps } from '../../src/admin/routes.js';
import { WrongTokenLimit, type AdminAuthConfig } from '../../src/admin/auth.js';
import { ClientResolver } from '../../src/admin/client-address.js';
import { tableDeadLetters } from '../../src/admin/dead-letter-source.js';
import type { HttpRequest, Route } from '../../src/http/router.js';
import { operationsSnapshot, PaymentCounts } from '../../src/observability/operations.js';
import { idAt } from '../../src/domain/ids.js';
import { encodePageToken } from '../../src/domain/page-token.js';
import { createLogger } from '../../src/observability/logger.js';
import {
  AdminServiceClient,
  AdminServiceService,
} from '../../src/grpc/generated/settle/v1/admin.js';
import { adminHandlers } from '../../src/grpc/handlers/admin.handlers.js';
import { callUnary, startServer, stopServer } from '../grpc/harness.js';
import { ReconciliationServiceClient } from '../../src/grpc/generated/settle/v1/reconciliation.js';
import { SETTLEMENT_HEADER } from '../../src/reconciliation/index.js';
import {
  call,
  CARD,
  expectMoneyInvariants,
  metricSample,
  payOnHostedPage,
  scrapeMetrics,
  startStack,
  waitFor,
  type Stack,
} from '../support/harness.js';
import { insertBogusAccountSums, insertBogusCurrencySums } from '../support/ledger.js';
import {
  ADMIN_TOKEN,
  adminFetch,
  auditRows,
  deadLetterState,
  createPayment,
  deadLetteredPayment,
  recordedDeadLetter,
  relayFrom,
} from './admin-support.js';

let stack: Stack;
let settlementDir: string;
/** The node's warn lines. */
const logLines: string[] = [];
/** How far the node's bound on wrong admin tokens sees ahead of the wall clock. */
let wrongTokenClockAheadMs = 0;
/** Starts a fresh window of the node's bound, so a test neither sees nor leaves others' counts. */
const freshWrongTokenWindow = () => {
  wrongTokenClockAheadMs += 3_600_000;
};

beforeAll(async () => {
  settlementDir = await mkdtemp(path.join(tmpdir(), 'settle-admin-'));
  stack = await startStack({
    overrides: {
      logger: createLogger(
        { level: 'warn', name: 'settle' },
        { write: (line) => logLines.push(line) },
      ),
      adminWrongTokens: { nowMs: () => Date.now() + wrongTokenClockAheadMs },
    },
    env: {
      ADMIN_TOKEN,
      SETTLEMENT_DIR: settlementDir,
      RETRY_BACKOFF_MS: '100,100',
      RISK_BLOCKED_BUYERS: 'buyer-blocked',
      CREATE_WAIT_MS: '2000',
      // The reconciliation below settles a fixed day of 2024: keep it inside the window.
      RECONCILIATION_KEEP_DAYS: '36500',
      // As behind TLS.
      ADMIN_COOKIE_SECURE: 'true',
    },
  });
});
afterAll(async () => {
  await stack?.stop();
  if (settlementDir !== undefined) await rm(settlementDir, { recursive: true, force: true });
});
afterEach(async () => {
  stack.psp.setBehavior({ failNextRegistrations: 0 });
  await expectMoneyInvariants(stack.settle.db);
});

/** Ids of the payments listed on a search page, in order. */
function listedPayments(html: string): string[] {
  const table = html.slice(html.indexOf('id="payments"'));
  return [...table.matchAll(/href="\/admin\/payments\/(pay_[0-9A-Z]{26})"/g)].map(
    (m) => m[1] ?? '',
  );
}

/** The panel's routes on the test stack's database, outside its node, with `overrides`. */
function panelRoutes(overrides: Partial<AdminDeps> & Pick<AdminDeps, 'auth'>): Route[] {
  return adminRoutes({
    db: stack.settle.db,
    names: stack.settle.names,
    deadLetters: tableDeadLetters({
      db: stack.settle.db,
      wakeRelay: () => {},
      now: () => new Date(),
    }),
    snapshot: () => Promise.reject(new Error('not used')),
    consumerInfo: () => Promise.reject(new Error('not used')),
    psp: {},
    nodeName: 'n',
    settings: [],
    now: () => new Date(),
    cookie: { secure: false },
    wrongTokens: new WrongTokenLimit(),
    clients: new ClientResolver(),
    ...overrides,
  });
}

describe('access', () => {
  it('sends a browser without the credential to the login page and refuses a wrong token', async () => {
    const anonymous = await fetch(`${stack.settleHttp}/admin/payments?state=FAILED`, {
      redirect: 'manual',
    });
    expect(anonymous.status).toBe(303);
    expect(anonymous.headers.get('location')).toBe(
      '/admin/login?next=%2Fadmin%2Fpayments%3Fstate%3DFAILED',
    );
    const wrong = await adminFetch(stack, '/admin/payments', {
      headers: { authorization: 'Bearer wrong-token-wrong-token' },
    });
    expect(wrong.status).toBe(303);
    const right = await adminFetch(stack, '/admin/payments');
    expect(right.status).toBe(200);
    expect(right.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(right.headers.get('cache-control')).toBe('no-store');
  });

  it('logs in with the form: signed HttpOnly cookie (Secure with ADMIN_COOKIE_SECURE), audited, cross-site forms refused', async () => {
    const form = (token: string) =>
      fetch(`${stack.settleHttp}/admin/login`, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ actor: 'Alice Ops', token, next: '/admin/audit' }).toString(),
      });
    const bad = await form('not-the-token-at-all');
    expect(bad.status).toBe(401);
    expect(bad.headers.get('set-cookie')).toBeNull();
    const good = await form(ADMIN_TOKEN);
    expect(good.status).toBe(303);
    expect(good.headers.get('location')).toBe('/admin/audit');
    const cookie = (good.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
    expect(good.headers.get('set-cookie')).toMatch(/HttpOnly; SameSite=Strict; Secure; Max-Age=/);
    expect(cookie).not.toContain(ADMIN_TOKEN);

    const page = await fetch(`${stack.settleHttp}/admin/audit`, { headers: { cookie } });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('Alice Ops');
    expect(html).toContain('LOGIN');
    const [failed, login] = await auditRows(stack, 'session');
    expect(failed).toMatchObject({
      actor: 'Alice Ops',
      action: 'LOGIN',
      reason: 'wrong token',
      outcome: 'FAILED',
    });
    expect(login).toMatchObject({ actor: 'Alice Ops', action: 'LOGIN', outcome: 'OK' });

    const crossSite = await fetch(`${stack.settleHttp}/admin/dead-letters/1/discard`, {
      method: 'POST',
      redirect: 'manual',
      headers: {
        cookie,
        origin: 'http://evil.example',
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: 'reason=because',
    });
    expect(crossSite.status).toBe(403);

    // The logout drops the cookie with the attributes that set it, Secure included.
    const logout = await fetch(`${stack.settleHttp}/admin/logout`, {
      method: 'POST',
      redirect: 'manual',
      headers: { cookie, origin: stack.settleHttp },
    });
    expect(logout.status).toBe(303);
    expect(logout.headers.get('set-cookie')).toBe(
      'settle_admin=; Path=/admin; HttpOnly; SameSite=Strict; Secure; Max-Age=0',
    );
  });

  it('guards AdminService as the panel: same token check, bearer scheme in any case', async () => {
    const admin = new AdminServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    const list = (authorization: string | undefined, pageToken = '') =>
      new Promise<grpc.ServiceError | null>((resolve) => {
        const metadata = new grpc.Metadata();
        if (authorization !== undefined) metadata.set('authorization', authorization);
        admin.listDeadLetters(
          { pageSize: 1, pageToken, state: 0, orderId: '' },
          metadata,
          { deadline: Date.now() + 10_000 },
          (error) => resolve(error),
        );
      });
    try {
      expect((await list(undefined))?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect((await list('Bearer wrong-token-wrong-token'))?.code).toBe(
        grpc.status.UNAUTHENTICATED,
      );
      // One character short: a length check must not tell it apart from any other wrong token.
      expect((await list(`Bearer ${ADMIN_TOKEN.slice(1)}`))?.code).toBe(
        grpc.status.UNAUTHENTICATED,
      );
      expect(await list(`bearer ${ADMIN_TOKEN}`)).toBeNull();
      expect(await list(`BEARER  ${ADMIN_TOKEN}`)).toBeNull();
      // The page cursor is checked as the panel checks its `before`.
      expect((await list(`Bearer ${ADMIN_TOKEN}`, '1 OR 1'))?.code).toBe(
        grpc.status.INVALID_ARGUMENT,
      );
      const panel = await adminFetch(stack, '/admin/dead-letters?before=1%20OR%201');
      expect(panel.status).toBe(400);
      expect(panel.html).toContain('before');
    } finally {
      admin.close();
    }
  });

  it('is closed without ADMIN_TOKEN, and read-only when ADMIN_READONLY_OPEN is set', async () => {
    const routesFor = (token: string | undefined, readonlyOpen: boolean) =>
      panelRoutes({ auth: { token, readonlyOpen } });
    const request = (path: string, method = 'GET'): HttpRequest => ({
      method,
      path,
      query: new URLSearchParams(),
      headers: {},
      params: { id: '1' },
      remoteAddress: '127.0.0.1',
      requestId: 'req-admin-test',
      body: async () => Buffer.from('reason=because'),
      leaveBodyUnread: () => {},
    });
    const route = (routes: Route[], method: string, path: string) => {
      const found = routes.find((r) => r.method === method && r.path === path);
      if (found === undefined) throw new Error(`no route ${method} ${path}`);
      return found;
    };

    const closed = routesFor(undefined, false);
    const refused = await route(closed, 'GET', '/admin/payments').handle(
      request('/admin/payments'),
    );
    expect(refused.status).toBe(403);
    expect(String(refused.body)).toContain('no ADMIN_TOKEN');

    const open = routesFor(undefined, true);
    const readable = await route(open, 'GET', '/admin/payments').handle(request('/admin/payments'));
    expect(readable.status).toBe(200);
    expect(String(readable.body)).toContain('read-only (ADMIN_READONLY_OPEN)');
    const act = await route(open, 'POST', '/admin/dead-letters/:id/discard').handle(
      request('/admin/dead-letters/1/discard', 'POST'),
    );
    expect(act.status).toBe(403);

    // Open for reading, a session cookie not signed with the token is read as anyone, and dropped:
    // it would count as a wrong token on every page.
    const stale = await route(routesFor(ADMIN_TOKEN, true), 'GET', '/admin/payments').handle({
      ...request('/admin/payments'),
      headers: { cookie: `settle_admin=v1.${Buffer.from('bob').toString('base64url')}.1.x` },
    });
    expect(stale.status).toBe(200);
    expect(stale.headers?.['set-cookie']).toMatch(/^settle_admin=; /);

    // Open for reading, a lockout does not put an operator's session below anonymous: the page
    // is served as to anyone (closed, it is 429 for everyone, the right credential included).
    for (const [readonlyOpen, status] of [
      [true, 200],
      [false, 429],
    ] as const) {
      const wrongTokens = new WrongTokenLimit();
      const routes = panelRoutes({ auth: { token: ADMIN_TOKEN, readonlyOpen }, wrongTokens });
      for (let guess = 0; guess < 10; guess += 1) {
        await route(routes, 'GET', '/admin/payments').handle({
          ...request('/admin/payments'),
          headers: { authorization: `Bearer wrong-token-${guess}-0123456789` },
        });
      }
      const operator = await route(routes, 'GET', '/admin/payments').handle({
        ...request('/admin/payments'),
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      expect(operator.status, `ADMIN_READONLY_OPEN=${readonlyOpen}`).toBe(status);
    }
  });
  it('bounds wrong tokens on the login form: then refuses every login until the window ends', async () => {
    let nowMs = Date.parse('2026-11-26T12:00:00.000Z');
    const login = panelRoutes({
      auth: { token: ADMIN_TOKEN, readonlyOpen: false },
      now: () => new Date(nowMs),
      wrongTokens: new WrongTokenLimit({ max: 3, windowMs: 60_000, nowMs: () => nowMs }),
    }).find((route) => route.method === 'POST' && route.path === '/admin/login');
    const attempt = (actor: string, token: string) =>
      login!.handle({
        method: 'POST',
        path: '/admin/login',
        query: new URLSearchParams(),
        headers: { origin: 'http://127.0.0.1', host: '127.0.0.1' },
        requestId: 'req-admin-login',
        params: {},
        remoteAddress: '127.0.0.1',
        body: async () => Buffer.from(new URLSearchParams({ actor, token }).toString()),
        leaveBodyUnread: () => {},
      });
    const before = (await auditRows(stack, 'session')).length;
    for (let i = 0; i < 3; i += 1) {
      expect((await attempt(`guesser ${i}`, `wrong-token-number-${i}`)).status).toBe(401);
    }
    // The limit is reached: the right token is refused too (telling them apart answers a guess),
    // the answer says when to come back, and nothing more is audited.
    const refused = await attempt('Alice Ops', ADMIN_TOKEN);
    expect(refused.status).toBe(429);
    expect(refused.headers?.['retry-after']).toBe('60');
    expect(String(refused.body)).toContain('too many wrong admin tokens from your address');
    expect((await attempt('guesser 4', 'wrong-token-number-4')).status).toBe(429);
    expect((await auditRows(stack, 'session')).length - before).toBe(3);
    // The window ends: logins are taken again.
    nowMs += 60_000;
    expect((await attempt('Alice Ops', ADMIN_TOKEN)).status).toBe(303);
  });

  it("bounds a client's wrong tokens on every path together, then refuses its every credential until the window ends", async () => {
    const payment = await createPayment(stack, 'buyer-guessing', [['seller-guessing', 900n]]);
    const deadLetterId = await recordedDeadLetter(stack, payment.orders[0]?.orderId ?? '');
    const target = `dead-letter:${deadLetterId}`;
    const metric = async (labels: { path: string; reason: string }) =>
      metricSample(
        await scrapeMetrics(stack.settleHttp),
        'settle_admin_credentials_refused_total',
        labels,
      ) ?? 0;
    const lockouts = async (scope: string) =>
      metricSample(await scrapeMetrics(stack.settleHttp), 'settle_admin_lockouts_total', {
        scope,
      }) ?? 0;
    const metricsBefore = {
      bearer: await metric({ path: 'bearer', reason: 'wrong_token' }),
      grpc: await metric({ path: 'grpc', reason: 'wrong_token' }),
      limited: await metric({ path: 'grpc', reason: 'rate_limited' }),
      lockouts: await lockouts('client'),
    };
    const admin = new AdminServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    const bearer = (token: string) => {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${token}`);
      metadata.set('x-admin-actor', 'guesser');
      return metadata;
    };
    const outcome = (result: { ok: boolean; error?: grpc.ServiceError }) =>
      result.ok ? 'OK' : `${grpc.status[result.error?.code ?? 2]} ${result.error?.details}`;
    const list = (token: string) =>
      callUnary(
        admin.listDeadLetters.bind(admin),
        { pageSize: 1, pageToken: '', state: 0, orderId: '' },
        bearer(token),
      );
    const discard = (token: string, id = deadLetterId) =>
      callUnary(
        admin.discardDeadLetter.bind(admin),
        { id, reason: 'guessing the token' },
        bearer(token),
      );
    const login = (token: string) =>
      fetch(`${stack.settleHttp}/admin/login`, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ actor: 'Alice Ops', token }).toString(),
      });
    freshWrongTokenWindow();
    logLines.length = 0;
    try {
      const loggedIn = await login(ADMIN_TOKEN);
      const session = { cookie: (loggedIn.headers.get('set-cookie') ?? '').split(';')[0] ?? '' };
      const forged = { cookie: session.cookie.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')) };

      // Ten wrong tokens, a client's bound, in one minute and by every way in.
      for (let i = 0; i < 3; i += 1) {
        expect(outcome(await list(`wrong-token-${i}`))).toMatch(/^UNAUTHENTICATED /);
      }
      // On an action, a wrong token is audited (by the entry's own id) and changes nothing.
      expect(outcome(await discard('wrong-token-3', `00${deadLetterId}`))).toMatch(
        /^UNAUTHENTICATED /,
      );
      for (let i = 4; i < 7; i += 1) {
        const page = await adminFetch(stack, '/admin/payments', {
          headers: { authorization: `Bearer wrong-token-${i}` },
        });
        expect(page.status).toBe(303);
      }
      const action = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/discard`, {
        headers: { authorization: 'Bearer wrong-token-7' },
        form: { reason: 'guessing the token' },
      });
      expect(action.status).toBe(303);
      const forgedPage = await adminFetch(stack, '/admin/payments', {
        headers: { authorization: '', ...forged },
      });
      expect(forgedPage.status).toBe(303);
      // The stale cookie is dropped, so a browser holding one does not count again and again.
      expect(forgedPage.headers.get('set-cookie')).toMatch(/^settle_admin=; /);
      // Right tokens in between are neither counted nor refused.
      expect((await adminFetch(stack, '/admin/payments')).status).toBe(200);
      expect(outcome(await list(ADMIN_TOKEN))).toBe('OK');
      expect((await login('wrong-token-9')).status).toBe(401);

      // The bound is reached: every credential of this client (all come from 127.0.0.1) is
      // refused unchecked, the right ones included.
      const refusedPage = await adminFetch(stack, '/admin/payments');
      expect(refusedPage.status).toBe(429);
      expect(Number(refusedPage.headers.get('retry-after'))).toBeGreaterThan(50);
      expect(Number(refusedPage.headers.get('retry-after'))).toBeLessThanOrEqual(60);
      expect(refusedPage.html).toContain('too many wrong admin tokens from your address');
      expect(
        (await adminFetch(stack, '/admin/payments', { headers: { authorization: '', ...session } }))
          .status,
      ).toBe(429);
      expect((await login(ADMIN_TOKEN)).status).toBe(429);
      const refusedCall = await list(ADMIN_TOKEN);
      expect(outcome(refusedCall)).toMatch(
        /^RESOURCE_EXHAUSTED too many wrong admin tokens from your address: its admin credentials, the right token included, are refused for \d+ s more$/,
      );
      expect(
        refusedCall.ok ? [] : refusedCall.error.metadata.get('settle-retry-delay-ms'),
      ).toHaveLength(1);
      // Wrong tokens are no longer compared, so no longer audited: the trail stays bounded.
      expect(outcome(await discard('wrong-token-10'))).toMatch(/^RESOURCE_EXHAUSTED /);
      const refusedAction = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/discard`, {
        headers: { authorization: 'Bearer wrong-token-11' },
        form: { reason: 'guessing the token' },
      });
      expect(refusedAction.status).toBe(429);
      expect((await auditRows(stack, target)).map((r) => [r.actor, r.outcome, r.reason])).toEqual([
        ['grpc:guesser', 'FAILED', 'wrong token'],
        ['tester', 'FAILED', 'wrong token'],
      ]);
      expect(await deadLetterState(stack, deadLetterId)).toBe('OPEN');

      // Counted per attempt, logged per window: the first wrong token and the tenth.
      expect((await metric({ path: 'bearer', reason: 'wrong_token' })) - metricsBefore.bearer).toBe(
        4,
      );
      expect((await metric({ path: 'grpc', reason: 'wrong_token' })) - metricsBefore.grpc).toBe(4);
      expect((await metric({ path: 'grpc', reason: 'rate_limited' })) - metricsBefore.limited).toBe(
        2,
      );
      expect((await lockouts('client')) - metricsBefore.lockouts).toBe(1);
      const warnings = logLines
        .map((line) => JSON.parse(line) as { msg: string })
        .filter((line) => line.msg.includes('wrong admin token'));
      expect(warnings.map((line) => line.msg)).toEqual([
        expect.stringMatching(
          /^a wrong admin token \(grpc, from 127\.0\.0\.1\); a client may present 10 in 60 s /,
        ),
        expect.stringMatching(/^10 wrong admin tokens from 127\.0\.0\.1 in 60 s: /),
      ]);
      expect(warnings[0]).toMatchObject({
        adminTokens: { client: '127.0.0.1', wrong: { grpc: 1 }, max: 10, nodeMax: 100 },
      });
      expect(warnings[1]).toMatchObject({
        adminTokens: { client: '127.0.0.1', wrongFromClient: 10, max: 10, nodeMax: 100 },
      });

      // The window ends: the right credentials work again.
      freshWrongTokenWindow();
      expect((await adminFetch(stack, '/admin/payments')).status).toBe(200);
      expect(outcome(await list(ADMIN_TOKEN))).toBe('OK');
      expect(
        (await adminFetch(stack, '/admin/payments', { headers: { authorization: '', ...session } }))
          .status,
      ).toBe(200);
    } finally {
      admin.close();
      freshWrongTokenWindow();
    }
  });

  it("does not let one client's wrong tokens lock out another: HTTP and gRPC, 127.0.0.2 guessing, 127.0.0.1 let in", async () => {
    // Linux routes all of 127.0.0.0/8 to loopback, so binding the client socket to 127.0.0.2
    // makes a second client. node:http binds with `localAddress`; grpc-js has no such option,
    // so the guesser's gRPC calls go through a TCP relay whose upstream socket is bound there.
    const guesser = '127.0.0.2';
    const panel = (token: string, localAddress: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const request = http.get(
          `${stack.settleHttp}/admin/payments`,
          { localAddress, headers: { authorization: `Bearer ${token}` }, timeout: 10_000 },
          (response) => {
            let body = '';
            response.setEncoding('utf8');
            response.on('data', (chunk: string) => (body += chunk));
            response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
          },
        );
        request.on('error', reject);
        request.on('timeout', () => request.destroy(new Error('timed out')));
      });
    const relay = await relayFrom(guesser, stack.settle.grpcPort);
    const relayPort = relay.port;
    const viaRelay = new AdminServiceClient(
      `127.0.0.1:${relayPort}`,
      grpc.credentials.createInsecure(),
    );
    const direct = new AdminServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    const list = (client: AdminServiceClient, token: string) => {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${token}`);
      return callUnary(
        client.listDeadLetters.bind(client),
        { pageSize: 1, pageToken: '', state: 0, orderId: '' },
        metadata,
      );
    };
    const outcome = (result: { ok: boolean; error?: grpc.ServiceError }) =>
      result.ok ? 'OK' : `${grpc.status[result.error?.code ?? 2]} ${result.error?.details}`;
    freshWrongTokenWindow();
    logLines.length = 0;
    try {
      // The guesser's ten wrong tokens, a client's bound, half over HTTP and half over gRPC.
      for (let i = 0; i < 5; i += 1) {
        expect((await panel(`wrong-token-${i}-0123456789`, guesser)).status).toBe(303);
        expect(outcome(await list(viaRelay, `wrong-token-${i}-9876543210`))).toMatch(
          /^UNAUTHENTICATED /,
        );
      }
      // Another client with the right token is let in on both.
      expect((await panel(ADMIN_TOKEN, '127.0.0.1')).status).toBe(200);
      expect(outcome(await list(direct, ADMIN_TOKEN))).toBe('OK');
      // The guesser is refused unchecked on both, the right token included.
      const refused = await panel(ADMIN_TOKEN, guesser);
      expect(refused.status).toBe(429);
      expect(refused.body).toContain('too many wrong admin tokens from your address');
      expect(outcome(await list(viaRelay, ADMIN_TOKEN))).toMatch(
        /^RESOURCE_EXHAUSTED too many wrong admin tokens from your address: /,
      );
      const warnings = logLines
        .map((line) => JSON.parse(line) as { msg: string })
        .filter((line) => line.msg.includes('wrong admin token'));
      expect(warnings.map((line) => line.msg)).toEqual([
        expect.stringMatching(/^a wrong admin token \(bearer, from 127\.0\.0\.2\); /),
        expect.stringMatching(/^10 wrong admin tokens from 127\.0\.0\.2 in 60 s: /),
      ]);
    } finally {
      viaRelay.close();
      direct.close();
      await relay.close();
      freshWrongTokenWindow();
    }
  });

  it('AdminService is closed without ADMIN_TOKEN too, and read-only when ADMIN_READONLY_OPEN is set', async () => {
    // The node's handlers on a server of their own, under each access setting the config can give.
    const serve = (access: AdminAuthConfig) =>
      startServer((server) =>
        server.addService(
          AdminServiceService,
          adminHandlers(
            {
              db: stack.settle.db,
              bulkDb: stack.settle.db,
              wakeRelay: () => {},
              now: () => new Date(),
              access,
              wrongTokens: new WrongTokenLimit(),
              clients: new ClientResolver(),
            },
            { log: () => {} },
          ),
        ),
      );
    const { paymentId } = await createPayment(stack, 'buyer-admin-closed', [
      ['seller-admin-closed', 700n],
    ]);
    // Refused before it is looked up: were it let through, this id would answer NOT_FOUND.
    const deadLetterId = '987654321';
    const outcomes = async (access: AdminAuthConfig, authorization?: string) => {
      const running = await serve(access);
      const client = new AdminServiceClient(running.address, grpc.credentials.createInsecure());
      const metadata = () => {
        const m = new grpc.Metadata();
        if (authorization !== undefined) m.set('authorization', authorization);
        return m;
      };
      try {
        const code = (outcome: { ok: boolean; error?: grpc.ServiceError }) =>
          outcome.ok ? 'OK' : grpc.status[outcome.error?.code ?? 2];
        const list = await callUnary(
          client.listDeadLetters.bind(client),
          { pageSize: 1, pageToken: '', state: 0, orderId: '' },
          metadata(),
        );
        const timeline = await callUnary(
          client.getPaymentTimeline.bind(client),
          { paymentId },
          metadata(),
        );
        const discard = await callUnary(
          client.discardDeadLetter.bind(client),
          { id: deadLetterId, reason: 'checking who may discard' },
          metadata(),
        );
        return {
          list: code(list),
          timeline: code(timeline),
          discard: code(discard),
          message: list.ok ? '' : list.error.details,
        };
      } finally {
        client.close();
        stopServer(running);
      }
    };

    const closed = await outcomes({ token: undefined, readonlyOpen: false });
    expect(closed).toMatchObject({
      list: 'UNAUTHENTICATED',
      timeline: 'UNAUTHENTICATED',
      discard: 'UNAUTHENTICATED',
    });
    expect(closed.message).toContain('no ADMIN_TOKEN');
    // Refused before anything was audited (a failed action is audited too).
    expect(await auditRows(stack, `dead-letter:${deadLetterId}`)).toHaveLength(0);

    // A bearer token is no way in when the node has none.
    expect(
      await outcomes({ token: undefined, readonlyOpen: false }, `Bearer ${ADMIN_TOKEN}`),
    ).toMatchObject({
      list: 'UNAUTHENTICATED',
      discard: 'UNAUTHENTICATED',
    });
    expect(await outcomes({ token: undefined, readonlyOpen: true })).toMatchObject({
      list: 'OK',
      timeline: 'OK',
      discard: 'UNAUTHENTICATED',
    });
    expect(await outcomes({ token: ADMIN_TOKEN, readonlyOpen: true })).toMatchObject({
      list: 'OK',
      timeline: 'OK',
      discard: 'UNAUTHENTICATED',
    });
    expect(await auditRows(stack, `dead-letter:${deadLetterId}`)).toHaveLength(0);

    // With the token the same calls get through: the id is looked up, and the attempt audited.
    expect(
      await outcomes({ token: ADMIN_TOKEN, readonlyOpen: false }, `Bearer ${ADMIN_TOKEN}`),
    ).toMatchObject({ list: 'OK', timeline: 'OK', discard: 'NOT_FOUND' });
    expect(await auditRows(stack, `dead-letter:${deadLetterId}`)).toHaveLength(1);
  });

  it('GetPaymentTimeline tells a missing payment_id from a malformed one', async () => {
    const running = await startServer((server) =>
      server.addService(
        AdminServiceService,
        adminHandlers(
          {
            db: stack.settle.db,
            bulkDb: stack.settle.db,
            wakeRelay: () => {},
            now: () => new Date(),
            access: { token: undefined, readonlyOpen: true },
            wrongTokens: new WrongTokenLimit(),
            clients: new ClientResolver(),
          },
          { log: () => {} },
        ),
      ),
    );
    const client = new AdminServiceClient(running.address, grpc.credentials.createInsecure());
    try {
      const details = async (paymentId: string) => {
        const outcome = await callUnary(
          client.getPaymentTimeline.bind(client),
          { paymentId },
          new grpc.Metadata(),
        );
        return outcome.ok ? 'OK' : `${grpc.status[outcome.error.code]} ${outcome.error.details}`;
      };
      expect(await details('')).toBe('INVALID_ARGUMENT payment_id: payment_id is required');
      expect(await details('not-an-id')).toMatch(
        /^INVALID_ARGUMENT payment_id: 'not-an-id' is not a valid payment_id \(expected e\.g\. pay_/,
      );
    } finally {
      client.close();
      stopServer(running);
    }
  });
});

describe('payments', () => {
  it('searches by payment id, order id, buyer, seller, state and time range, with paging', async () => {
    const first = await createPayment(stack, 'buyer-search-a', [['seller-search-x', 1000n]]);
    const second = await createPayment(stack, 'buyer-search-b', [
      ['seller-search-y', 2000n],
      ['seller-search-z', 300n],
    ]);
    const third = await createPayment(stack, 'buyer-search-a', [['seller-search-y', 400n]]);
    const blocked = await createPayment(stack, 'buyer-blocked', [['seller-search-x', 500n]]);

    const search = async (query: string) => {
      const page = await adminFetch(stack, `/admin/payments?${query}`);
      expect(page.status).toBe(200);
      return page.html;
    };
    expect(listedPayments(await search('buyer=buyer-search-a'))).toEqual([
      third.paymentId,
      first.paymentId,
    ]);
    expect(listedPayments(await search('seller=seller-search-y'))).toEqual([
      third.paymentId,
      second.paymentId,
    ]);
    expect(listedPayments(await search(`q=${second.orders[1]?.orderId}`))).toEqual([
      second.paymentId,
    ]);
    expect(listedPayments(await search(`q=${first.paymentId}`))).toEqual([first.paymentId]);
    expect(listedPayments(await search('state=FAILED&seller=seller-search-x'))).toEqual([
      blocked.paymentId,
    ]);
    expect(listedPayments(await search('buyer=buyer-search-a&state=FAILED'))).toEqual([]);

    // Time range: ids start with their creation time, so the page searches by id range.
    const created = (id: string) =>
      stack.settle.db
        .selectFrom('payment')
        .select('created_at')
        .where('id', '=', id)
        .executeTakeFirstOrThrow();
    const secondAt = (await created(second.paymentId)).created_at;
    const thirdAt = (await created(third.paymentId)).created_at;
    expect(idAt('payment', secondAt.getTime()) <= second.paymentId).toBe(true);
    const iso = (date: Date) => date.toISOString().replace(/Z$/, '');
    expect(
      listedPayments(
        await search(
          `from=${encodeURIComponent(iso(secondAt))}&to=${encodeURIComponent(iso(thirdAt))}`,
        ),
      ).filter((id) => [first, second, third].some((p) => p.paymentId === id)),
    ).toEqual([third.paymentId, second.paymentId]);

    // Paging: one per page, newest first, "Older" links carry the filters.
    const pageOne = await search('buyer=buyer-search-a&size=1');
    expect(listedPayments(pageOne)).toEqual([third.paymentId]);
    const older = /href="(\/admin\/payments\?[^"]*before=[^"]*)"/.exec(pageOne)?.[1];
    expect(older).toBeDefined();
    const pageTwo = await adminFetch(stack, (older ?? '').replace(/&amp;/g, '&'));
    expect(listedPayments(pageTwo.html)).toEqual([first.paymentId]);
    expect(pageTwo.html).toContain('End of results.');

    const invalid = await search('q=%3Cscript%3E');
    expect(invalid).toContain('id: give a payment id (pay_…) or an order id (ord_…)');
    expect(invalid).not.toContain('<script>');
  });

  it("shows a paid payment's timeline, webhook, ledger entries and wallets", async () => {
    const payment = await createPayment(stack, 'buyer-page', [['seller-page', 2599n]]);
    const order = payment.orders[0];
    expect(order?.checkoutUrl).toMatch(/^http/);
    const paid = await payOnHostedPage(order?.checkoutUrl ?? '', CARD.success);
    expect(paid.status).toBe(200);
    await waitFor(async () => {
      const row = await stack.settle.db
        .selectFrom('payment')
        .select('state')
        .where('id', '=', payment.paymentId)
        .executeTakeFirst();
      return row?.state === 'SUCCEEDED';
    });
    const inbox = await stack.settle.db
      .selectFrom('inbox')
      .select('event_id')
      .where('order_id', '=', order?.orderId ?? '')
      .executeTakeFirstOrThrow();

    const { status, html } = await adminFetch(stack, `/admin/payments/${payment.paymentId}`);
    expect(status).toBe(200);
    const text = html.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ');
    expect(text).toContain(`Timeline of order ${order?.orderId}`);
    expect(text).toContain('v0: NOT_STARTED → EXECUTING on ExecuteOrder');
    expect(text).toContain(
      'v1: EXECUTING → EXECUTING on PspRegistered (PSP RegisterPayment succeeded)',
    );
    expect(text).toContain(
      'v2: EXECUTING → SUCCEEDED on PspSucceeded (PSP webhook: charge succeeded)',
    );
    expect(text).toContain(`webhook received from psp: event ${inbox.event_id}`);
    expect(text).toMatch(/OK .*succeeded \(PSP reference \S+\); ledger and wallet posted/);
    expect(text).toContain('psp_receivable');
    expect(text).toContain('seller_payable:seller-page');
    expect(text).toMatch(/seller-page 25\.99 USD/);
    // The timeline is in time order: ExecuteOrder, then the registration, then the webhook.
    const executeAt = text.indexOf('on ExecuteOrder');
    const webhookAt = text.indexOf('webhook received');
    const succeededAt = text.indexOf('on PspSucceeded');
    expect(executeAt).toBeLessThan(webhookAt);
    expect(webhookAt).toBeLessThan(succeededAt);

    const viaOrder = await adminFetch(stack, `/admin/orders/${order?.orderId}`);
    expect(viaOrder.status).toBe(303);
    expect(viaOrder.headers.get('location')).toBe(
      `/admin/payments/${payment.paymentId}#${order?.orderId}`,
    );
    const wallet = await adminFetch(stack, '/admin/wallets/seller-page');
    expect(wallet.html).toContain('25.99 USD');
    const ledger = await adminFetch(stack, '/admin/ledger');
    expect(ledger.html).toContain('(balanced)');
    const missing = await adminFetch(stack, '/admin/payments/pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G');
    expect(missing.status).toBe(404);
  });
});

describe('ledger page', () => {
  /** The trial balance rows of a ledger page as "account currency", and its footer. */
  function trialBalanceOf(html: string): { rows: string[]; footer: string } {
    const table = html.slice(html.indexOf('id="trial-balance"'));
    const body = table.slice(table.indexOf('<tbody>'), table.indexOf('</tbody>'));
    const rows = [
      ...body.matchAll(/<td>([^<]*)<\/td>\s*<td class="num">[^<]*? ([A-Z]{3})<\/td>/g),
    ].map((m) => `${m[1]} ${m[2]}`);
    const footer = table
      .slice(table.indexOf('<tfoot>'), table.indexOf('</tfoot>'))
      .replace(/<[^>]+>/g, ' ')
      .replace(/\s+/g, ' ');
    return { rows, footer };
  }

  it("pages the trial balance with a Next link, the whole ledger's totals on every page", async () => {
    // Balanced fixture transactions between accounts of their own, written directly.
    const accounts = ['a', 'b', 'c', 'd', 'e', 'f', 'g'].map((x) => `fixture-ledger:${x}`);
    for (const [index, account] of accounts.entries()) {
      const transactionId = `ltx_ADMINLEDGER${String(index).padStart(15, '0')}`;
      const orderId = `ord_ADMINLEDGER${String(index).padStart(15, '0')}`;
      await sql`INSERT INTO ledger_entry
        (transaction_id, account, order_id, kind, currency, debit_minor, credit_minor, created_at)
        VALUES (${transactionId}, ${account}, ${orderId}, 'FIXTURE_DEBIT', 'USD', ${100 + index}, 0, NOW(3)),
               (${transactionId}, 'fixture-ledger:~contra', ${orderId}, 'FIXTURE_CREDIT', 'USD', 0, ${100 + index}, NOW(3))`.execute(
        stack.settle.db,
      );
    }
    try {
      const expected = (
        await sql<{ account: string; currency: string }>`
          SELECT account, currency FROM ledger_entry
          GROUP BY account, currency ORDER BY account, currency`.execute(stack.settle.db)
      ).rows.map((r) => `${r.account} ${r.currency}`);
      expect(expected.length).toBeGreaterThan(2 * 3); // three pages at least

      const seen: string[] = [];
      const footers = new Set<string>();
      let path: string | undefined = '/admin/ledger?size=3';
      let pages = 0;
      while (path !== undefined && pages < 50) {
        const { status, html } = await adminFetch(stack, path);
        expect(status).toBe(200);
        const { rows, footer } = trialBalanceOf(html);
        expect(rows.length).toBeLessThanOrEqual(3);
        seen.push(...rows);
        footers.add(footer);
        pages += 1;
        path = /href="(\/admin\/ledger\?[^"]*)"\s+rel="next"/
          .exec(html)?.[1]
          ?.replace(/&amp;/g, '&');
        if (path === undefined) expect(html).toContain('End of the ledger.');
        expect(html.includes('« First'), `page ${pages}`).toBe(pages > 1);
      }
      expect(seen).toEqual(expected);
      expect(pages).toBe(Math.ceil(expected.length / 3));
      // The same footer on every page: the whole ledger's totals, balanced.
      expect([...footers]).toHaveLength(1);
      expect([...footers][0]).toMatch(/Total USD \(whole ledger\) .* 0\.00 USD \(balanced\)/);

      const refused = await adminFetch(stack, '/admin/ledger?page_token=not-a-token');
      expect(refused.status).toBe(400);
      expect(refused.html).toContain(
        'page_token: invalid or from a request with other filters; start again without page_token',
      );
    } finally {
      await sql`DELETE FROM ledger_entry WHERE transaction_id LIKE 'ltx_ADMINLEDGER%'`.execute(
        stack.settle.db,
      );
    }
  });
});

describe('dead letters', () => {
  it('shows a dead-lettered order on its payment page and replays it with a reason, audited', async () => {
    const { payment, orderId, deadLetterId } = await deadLetteredPayment(stack, 'buyer-dlq');
    const target = `dead-letter:${deadLetterId}`;

    const page = await adminFetch(stack, `/admin/payments/${payment.paymentId}`);
    expect(page.html).toContain(`replay dead letter ${deadLetterId}`);
    expect(page.html).toMatch(/dead-lettered after 3 attempt\(s\): <strong>RETRIES_EXHAUSTED/);

    const list = await adminFetch(stack, '/admin/dead-letters');
    expect(list.html).toContain(`data-dead-letter="${deadLetterId}"`);
    expect(list.html).toContain(`href="/admin/dead-letters/${deadLetterId}/replay"`);

    const confirm = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/replay`);
    expect(confirm.status).toBe(200);
    expect(confirm.html).toContain(`data-confirm="Replay dead letter ${deadLetterId}?"`);
    expect(confirm.html).toMatch(/<textarea name="reason" required/);

    const noReason = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/replay`, {
      form: { reason: ' ' },
    });
    expect(noReason.status).toBe(400);
    expect(noReason.html).toContain('reason: say why');
    expect(await deadLetterState(stack, deadLetterId)).toBe('OPEN');

    const replayed = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/replay`, {
      form: { reason: 'PSP outage is over (INC-42)' },
    });
    expect(replayed.status).toBe(303);
    expect(replayed.headers.get('location')).toBe(
      `/admin/dead-letters?state=ALL&done=replayed&id=${deadLetterId}`,
    );
    const audit = await auditRows(stack, target);
    // A form without a reason is refused before anything is attempted, so only the replay is audited.
    expect(audit.map((row) => [row.actor, row.action, row.outcome, row.reason])).toEqual([
      ['tester', 'REPLAY_DEAD_LETTER', 'OK', 'PSP outage is over (INC-42)'],
    ]);

    // The replayed command went the normal way: the order is registered with the PSP.
    await waitFor(
      async () => {
        const row = await stack.settle.db
          .selectFrom('payment_order')
          .select('checkout_url')
          .where('id', '=', orderId)
          .executeTakeFirst();
        return row?.checkout_url !== null && row?.checkout_url !== undefined;
      },
      { what: 'the replayed order to be registered' },
    );
    const after = await adminFetch(stack, `/admin/payments/${payment.paymentId}`);
    expect(after.html).toContain('admin REPLAY_DEAD_LETTER by tester (OK)');
    expect(after.html).not.toContain(`replay dead letter ${deadLetterId}`);
    const done = await adminFetch(
      stack,
      `/admin/dead-letters?state=ALL&done=replayed&id=${deadLetterId}`,
    );
    expect(done.html).toContain(`Dead letter ${deadLetterId} replayed.`);
  });

  it('discards with a reason; a discarded entry cannot be replayed and the refusal is audited', async () => {
    const { deadLetterId } = await deadLetteredPayment(stack, 'buyer-dlq-discard');
    const target = `dead-letter:${deadLetterId}`;
    const discarded = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/discard`, {
      form: { reason: 'duplicate of a refunded order' },
    });
    expect(discarded.status).toBe(303);
    const row = await stack.settle.db
      .selectFrom('dead_letter')
      .select(['state', 'resolution_note'])
      .where('id', '=', deadLetterId)
      .executeTakeFirstOrThrow();
    expect(row).toEqual({
      state: 'DISCARDED',
      resolution_note: 'discarded by tester: duplicate of a refunded order',
    });

    const replay = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/replay`, {
      form: { reason: 'try anyway' },
    });
    expect(replay.status).toBe(409);
    expect(replay.html).toContain('was discarded; it cannot be replayed');
    expect((await auditRows(stack, target)).map((r) => `${r.action} ${r.outcome}`)).toEqual([
      'DISCARD_DEAD_LETTER OK',
      'REPLAY_DEAD_LETTER FAILED',
    ]);
    const list = await adminFetch(stack, '/admin/dead-letters?state=DISCARDED');
    expect(list.html).toContain(`data-dead-letter="${deadLetterId}"`);
    expect(list.html).not.toContain(`/admin/dead-letters/${deadLetterId}/replay`);
  });

  it('audits an entry named with leading zeros under its own id, on the panel and over gRPC', async () => {
    // The payment's page finds an order's admin actions by the entries' ids, as the table holds
    // them: an action audited under `dead-letter:001` would be missing there.
    const payment = await createPayment(stack, 'buyer-dlq-zeros', [['seller-dlq-zeros', 900n]]);
    const deadLetterId = await recordedDeadLetter(stack, payment.orders[0]?.orderId ?? '');
    const discarded = await adminFetch(stack, `/admin/dead-letters/00${deadLetterId}/discard`, {
      form: { reason: 'zeros in the path' },
    });
    expect(discarded.status).toBe(303);
    expect(await auditRows(stack, `dead-letter:00${deadLetterId}`)).toHaveLength(0);
    expect(discarded.headers.get('location')).toBe(
      `/admin/dead-letters?state=ALL&done=discarded&id=${deadLetterId}`,
    );

    const admin = new AdminServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      const metadata = new grpc.Metadata();
      metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
      const code = (outcome: { ok: boolean; error?: grpc.ServiceError }) =>
        outcome.ok ? 'OK' : `${grpc.status[outcome.error?.code ?? 2]} ${outcome.error?.details}`;
      const replay = await callUnary(
        admin.replayDeadLetter.bind(admin),
        { id: `000${deadLetterId}`, reason: 'zeros over gRPC' },
        metadata,
      );
      expect(code(replay)).toBe(
        `FAILED_PRECONDITION dead letter ${deadLetterId} was discarded; it cannot be replayed`,
      );
      const missing = await callUnary(
        admin.replayDeadLetter.bind(admin),
        { id: '0987654320', reason: 'no such entry' },
        metadata,
      );
      expect(code(missing)).toBe("NOT_FOUND dead letter '987654320' not found");
      expect((await auditRows(stack, 'dead-letter:987654320')).map((r) => r.outcome)).toEqual([
        'FAILED',
      ]);
    } finally {
      admin.close();
    }
    expect(await auditRows(stack, `dead-letter:000${deadLetterId}`)).toHaveLength(0);
    expect(
      (await auditRows(stack, `dead-letter:${deadLetterId}`)).map(
        (r) => `${r.actor} ${r.action} ${r.outcome}`,
      ),
    ).toEqual(['tester DISCARD_DEAD_LETTER OK', 'grpc REPLAY_DEAD_LETTER FAILED']);
    const page = await adminFetch(stack, `/admin/payments/${payment.paymentId}`);
    expect(page.html).toContain('admin DISCARD_DEAD_LETTER by tester (OK)');
    expect(page.html).toContain('admin REPLAY_DEAD_LETTER by grpc (FAILED)');
  });

  it('answers an oversized form with 413 and a page saying so, and does nothing', async () => {
    const payment = await createPayment(stack, 'buyer-dlq-large', [['seller-dlq-large', 900n]]);
    const deadLetterId = await recordedDeadLetter(stack, payment.orders[0]?.orderId ?? '');
    const reason = 'x'.repeat(20_000);
    const action = await adminFetch(stack, `/admin/dead-letters/${deadLetterId}/discard`, {
      form: { reason },
    });
    expect(action.status).toBe(413);
    expect(action.headers.get('content-type')).toMatch(/^text\/html/);
    expect(action.html).toContain('The form is larger than 16384 bytes');
    expect(action.headers.get('connection')).toBe('close');
    expect(await deadLetterState(stack, deadLetterId)).toBe('OPEN');
    // Refused before anything was attempted, like a form without a reason.
    expect(await auditRows(stack, `dead-letter:${deadLetterId}`)).toHaveLength(0);

    const login = await fetch(`${stack.settleHttp}/admin/login`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ actor: 'Alice Ops', token: reason }).toString(),
    });
    expect(login.status).toBe(413);
    expect(await login.text()).toContain('The form is larger than 16384 bytes');
  });

  it('pages the list with a cursor that only the filter it came from takes', async () => {
    // More OPEN entries than one page holds (50), with no order: the janitor leaves them alone.
    for (let i = 0; i < 51; i += 1) await recordedDeadLetter(stack, null);
    const older = (html: string) =>
      /href="(\/admin\/dead-letters\?[^"]*before=[^"]*)"/.exec(html)?.[1]?.replace(/&amp;/g, '&');
    const first = await adminFetch(stack, '/admin/dead-letters?state=OPEN');
    const next = older(first.html);
    expect(next).toBeDefined();
    const second = await adminFetch(stack, next ?? '');
    expect(second.status).toBe(200);
    expect(second.html).toContain('data-dead-letter=');
    // The same cursor under another filter would start that list in the middle, silently.
    const before = new URL(next ?? '', 'http://x').searchParams.get('before') ?? '';
    for (const state of ['ALL', 'DISCARDED']) {
      const elsewhere = await adminFetch(
        stack,
        `/admin/dead-letters?state=${state}&before=${encodeURIComponent(before)}`,
      );
      expect(elsewhere.status).toBe(400);
      expect(elsewhere.html).toContain('before: invalid or from a list with another filter');
    }
    // The state's default (OPEN) is the filter a cursor of the OPEN list was made under.
    const defaulted = await adminFetch(
      stack,
      `/admin/dead-letters?before=${encodeURIComponent(before)}`,
    );
    expect(defaulted.status).toBe(200);
  });

  it('refuses a cursor past int64 as one not its own, and flashes no id past int64', async () => {
    await recordedDeadLetter(stack, null);
    for (const id of ['9223372036854775808', '9999999999999999999']) {
      // Of the right list and filter: only the cursor does not fit the BIGINT it pages by.
      const before = encodePageToken('ListDeadLetters', id, { state: 'ALL' });
      const listed = await adminFetch(
        stack,
        `/admin/dead-letters?state=ALL&before=${encodeURIComponent(before)}`,
      );
      expect(listed.status, id).toBe(400);
      expect(listed.html).toContain('before: invalid or from a list with another filter');
      const done = await adminFetch(stack, `/admin/dead-letters?state=ALL&done=replayed&id=${id}`);
      expect(done.status).toBe(200);
      expect(done.html).not.toContain(`Dead letter ${id} replayed.`);
    }
    const atMax = await adminFetch(
      stack,
      `/admin/dead-letters?state=ALL&before=${encodeURIComponent(
        encodePageToken('ListDeadLetters', '9223372036854775807', { state: 'ALL' }),
      )}`,
    );
    expect(atMax.status).toBe(200);
  });

  it('refuses an audit page cursor that is no audit id, rather than showing the first page', async () => {
    for (const before of ['9223372036854775808', 'abc', '-1']) {
      const audit = await adminFetch(stack, `/admin/audit?before=${before}`);
      expect(audit.status, before).toBe(400);
      expect(audit.html).toContain('before: invalid paging cursor; start again');
    }
    expect((await adminFetch(stack, '/admin/audit?before=9223372036854775807')).status).toBe(200);
    expect((await adminFetch(stack, '/admin/audit')).status).toBe(200);
  });
});

describe('operations and reconciliation', () => {
  it('shows breaker, consumer lag, outbox, dead letters, actors and payments by state', async () => {
    const snapshot = await operationsSnapshot({
      db: stack.settle.db,
      jsm: await (await import('@nats-io/jetstream')).jetstreamManager(stack.settle.nc),
      names: stack.settle.names,
      consumerProgress: () => stack.settle.consumer.progress(),
      registry: stack.settle.registry,
      psp: stack.settle.psp,
      deadLetters: tableDeadLetters({
        db: stack.settle.db,
        wakeRelay: () => {},
        now: () => new Date(),
      }),
      probeTimeoutMs: 2_000,
      paymentCounts: new PaymentCounts(stack.settle.db, 0),
    });
    expect(snapshot.breaker).toBe('CLOSED');
    expect(snapshot.consumer.ok).toBe(true);
    // Every snapshot probes the command stream: the page and the gauges both show it.
    expect(snapshot.commandStream).toEqual({
      ok: true,
      value: expect.objectContaining({
        bytesMax: expect.any(Number),
        messages: expect.any(Number),
      }),
    });
    expect(snapshot.outbox).toEqual({ ok: true, value: { pending: 0, oldestAgeMs: 0 } });
    const stored = await stack.settle.db.selectFrom('dead_letter').select(['state']).execute();
    expect(snapshot.deadLetters).toEqual({
      ok: true,
      value: { open: stored.filter((r) => r.state === 'OPEN').length, total: stored.length },
    });
    expect(stored.length).toBeGreaterThan(0);

    const { html } = await adminFetch(stack, '/admin/operations');
    const text = html.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ');
    expect(text).toContain('PSP circuit breaker CLOSED');
    expect(text).toMatch(
      /Pending \(not delivered\) \d+ Delivered \(stream seq\) \d+, seen [\d.]+ s ago Ack pending on this node \d+ Redelivered on this node \d+ Pull open on this node (yes|no)/,
    );
    // The consumer's info only on request: the page says how to ask for it.
    expect(text).toContain("Derived without asking NATS. Read the consumer's info");
    expect(text).toMatch(/stream: \d+ messages, \d+ bytes, seq \d+–\d+/);
    expect(text).toContain(stack.settle.names.runtimeConsumer);
    expect(text).toMatch(/Outbox Rows waiting \d+ Oldest/);
    expect(text).toMatch(/Dead letters \S+ Open \d+ Kept \d+/);
    expect(text).toMatch(/Live \d+ Mailbox depth \d+/);
    expect(text).toContain('RETRY_BACKOFF_MS 100,100');
    expect(text).toContain('Reconciliation No day reconciled yet. Orders not settled yet 0');
  });

  it("shows reconciliation runs and the newest run's mismatches", async () => {
    const empty = await adminFetch(stack, '/admin/reconciliation');
    expect(empty.status).toBe(200);
    expect(empty.html).toContain('id="no-runs"');
    expect(empty.html).toContain('id="no-schedule"');

    // A day the nightly job found no file for, waiting to try again (as schedule.ts records it).
    const at = new Date('2024-06-03T02:00:00.000Z');
    await sql`INSERT INTO reconciliation_schedule
      (day, state, attempts, lease_owner, lease_until, next_attempt_at, run_id, error, created_at, updated_at)
      VALUES ('2024-06-02', 'NO_FILE', 2, NULL, ${at}, ${new Date('2024-06-03T03:00:00.000Z')},
        NULL, 'no settlement file for 2024-06-02', ${at}, ${at})`.execute(stack.settle.db);
    const scheduled = await adminFetch(stack, '/admin/reconciliation');
    const day = scheduled.html.slice(scheduled.html.indexOf('data-day="2024-06-02"'));
    expect(day).toMatch(/NO_FILE<\/span><\/td>\s*<td>2<\/td>\s*<td>2024-06-03T03:00:00.000Z<\/td>/);
    expect(day).toContain('no settlement file for 2024-06-02');

    const orderId = `ord_${'0'.repeat(20)}PANEL1`;
    await writeFile(
      path.join(settlementDir, 'settlement-2024-06-03.csv'),
      `${SETTLEMENT_HEADER}\n` +
        `psp_panel_1,${orderId},payment,USD,12.00,0.65,11.35,b,2024-06-03T09:00:00.000Z\n`,
    );
    const recon = new ReconciliationServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      const { report } = await call(recon.runReconciliation.bind(recon), {
        settlementDate: '2024-06-03',
        filePath: '',
      });
      const runId = report?.reportId ?? '';
      expect(runId).toMatch(/^rcn_/);
      const { html } = await adminFetch(stack, '/admin/reconciliation');
      expect(html).toContain(`data-run="${runId}"`);
      expect(html).toContain('settlement-2024-06-03.csv');
      const mismatches = html.slice(html.indexOf('id="recon-mismatches"'));
      expect(mismatches).toMatch(
        new RegExp(`MISSING_IN_LEDGER</td>\\s*<td>2</td>\\s*<td class="mono">${orderId}</td>`),
      );
      // The operations page says what the latest day's run found.
      const operations = await adminFetch(stack, '/admin/operations');
      const card = operations.html
        .slice(operations.html.indexOf('<h2>Reconciliation</h2>'))
        .replace(/<[^>]+>/g, ' ')
        .replace(/\s+/g, ' ');
      expect(card).toMatch(
        /^ Reconciliation Latest day 2024-06-03 Completed \S+Z Mismatches MISSING_IN_LEDGER 1 Internal checks ledger balanced, wallets equal to it, running sums equal to its entries Orders not settled yet 0 /,
      );
    } finally {
      recon.close();
    }
  });

  it('counts the currencies and pairs whose running sums differ, past the few it names', async () => {
    // More currencies than a report lists (100), and a few pairs: the card names five.
    const codes = await insertBogusCurrencySums(stack.settle.db, 105);
    const ghosts = await insertBogusAccountSums(stack.settle.db, 3);
    const recon = new ReconciliationServiceClient(
      `127.0.0.1:${stack.settle.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      await writeFile(
        path.join(settlementDir, 'settlement-2024-06-04.csv'),
        `${SETTLEMENT_HEADER}\n` +
          `psp_panel_2,ord_${'0'.repeat(20)}PANEL2,payment,USD,5.00,0.30,4.70,b,2024-06-04T09:00:00.000Z\n`,
      );
      const { report } = await call(recon.runReconciliation.bind(recon), {
        settlementDate: '2024-06-04',
        filePath: '',
      });
      expect(report?.internalCheck).toMatchObject({
        currencySumsNotMatching: 105n,
        ledgerSumsNotMatching: 3n,
      });
      expect(report?.internalCheck?.currencySumDifferences).toHaveLength(100);
      const operations = await adminFetch(stack, '/admin/operations');
      const card = operations.html
        .slice(operations.html.indexOf('<h2>Reconciliation</h2>'))
        .replace(/<[^>]+>/g, ' ')
        .replace(/\s+/g, ' ');
      expect(card).toContain('Latest day 2024-06-04');
      expect(card).toContain(
        'running sums differ from the ledger entries in 105 currencies and 3 (account, ' +
          `currency) pairs: ${codes.slice(0, 5).join(', ')} and more; mend them with ` +
          'settle ledger-sums repair --reason … ( --dry-run first)',
      );
    } finally {
      recon.close();
      await sql`DELETE FROM ledger_currency_sum WHERE currency IN (${sql.join(codes)})`.execute(
        stack.settle.db,
      );
      await sql`DELETE FROM ledger_account_sum WHERE account IN (${sql.join(ghosts)})`.execute(
        stack.settle.db,
      );
    }
  });
});
