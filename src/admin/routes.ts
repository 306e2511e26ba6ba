/**
 * The admin panel's routes under /admin on Settle's HTTP port: server-rendered HTML pages. Views
 * need the admin credential unless ADMIN_READONLY_OPEN is set; actions always do. Every action is
 * audited (src/admin/audit.ts; a failed one as FAILED), and a destructive one is confirmed twice:
 * a confirmation page with a required reason, then the browser's confirm dialog. Scripts use gRPC
 * AdminService (the same dead-letter functions, the same audit trail) instead of these pages.
 */
import { randomUUID } from 'node:crypto';
import {
  InvalidArgumentError,
  NotFoundError,
  SettleError,
  UnauthenticatedError,
} from '../domain/errors.js';
import { ORDER_ID_PATTERN, PARTY_ID_PATTERN, PAYMENT_ID_PATTERN } from '../domain/ids.js';
import { isInt64Decimal, parseInt64Decimal } from '../domain/int64.js';
import { decodePageToken, encodePageToken } from '../domain/page-token.js';
import { toHttpError } from '../grpc/http-status.js';
import type { ErrorLogger } from '../grpc/status.js';
import {
  BodyTooLargeError,
  ClientAbortedError,
  type HttpRequest,
  type HttpResponse,
  type Route,
} from '../http/router.js';
import type { Names } from '../messaging/subjects.js';
import {
  breakerStateOf,
  type ConsumerInfoReading,
  type OperationsSnapshot,
  type Probe,
} from '../observability/operations.js';
import type { Db } from '../storage/db.js';
import { listAudit } from '../storage/repositories/admin-audit.repository.js';
import {
  searchPayments,
  webhooksOfOrders,
} from '../storage/repositories/admin-search.repository.js';
import {
  trialBalancePage,
  trialBalanceTotals,
} from '../storage/repositories/ledger-sums.repository.js';
import {
  ACCOUNT,
  findWallet,
  listLedgerEntries,
  trialBalancePageAfter,
  trialBalancePageToken,
} from '../storage/repositories/ledger.repository.js';
import {
  findPaymentOrder,
  listTransitions,
} from '../storage/repositories/payment-order.repository.js';
import { findPayment } from '../storage/repositories/payment.repository.js';
import { toUnavailable } from '../storage/transaction.js';
import { listMismatches, listRuns, listScheduledDays } from '../reconciliation/index.js';
import { ADMIN_ACTION, audited, REASON_CHARS, requireReason, type AuditedAction } from './audit.js';
import {
  ACTOR_PATTERN,
  authenticate,
  clearedSessionCookie,
  isSameOrigin,
  sessionCookie,
  tokenMatches,
  CREDENTIAL_PATH,
  lockoutMessage,
  type LockoutScope,
  type WrongTokenLimit,
  type AdminAuthConfig,
  type Authentication,
  type Principal,
  type SessionCookieOptions,
} from './auth.js';
import type { ClientResolver } from './client-address.js';
import {
  DEAD_LETTER_STATE,
  type DeadLetterEntry,
  type DeadLetterSource,
  type DeadLetterState,
} from './dead-letter-source.js';
import { diagnose } from './diagnosis.js';
import { htmlResponse, redirect, type SafeHtml } from './html.js';
import {
  auditPage,
  confirmDeadLetterPage,
  deadLetterPage,
  deadLettersPage,
  DEAD_LETTER_FILTERS,
  layout,
  ledgerPage,
  loginPage,
  messagePage,
  operationsPage,
  orderTimeline,
  PAYMENT_STATES,
  paymentPage,
  paymentsPage,
  reconciliationPage,
  walletPage,
  type LayoutContext,
  type PaymentFilters,
} from './pages.js';
import { ADMIN_CSS, ADMIN_JS } from './static.js';

export type AdminAction = AuditedAction & Readonly<{ outcome: 'OK' | 'FAILED' }>;

export type AdminDeps = Readonly<{
  db: Db;
  names: Names;
  auth: AdminAuthConfig;
  /** How the login sets (and the logout drops) the session cookie. */
  cookie: SessionCookieOptions;
  deadLetters: DeadLetterSource;
  snapshot: () => Promise<OperationsSnapshot>;
  /**
   * The runtime consumer's info from the server, read only when the operations page is asked
   * for it (`?consumer_info=1`), and at most once a minute per node (ConsumerInfoReads).
   */
  consumerInfo: () => Promise<Probe<ConsumerInfoReading>>;
  /** Answers breakerState() when it is the real PSP client. */
  psp: object;
  nodeName: string;
  /** Settings shown on the operations page. */
  settings: ReadonlyArray<readonly [string, string]>;
  now: () => Date;
  /** Where errors that map to INTERNAL are logged. */
  log?: ErrorLogger;
  /** Called after every audited action (a log line). */
  onAction?: (action: AdminAction) => void;
  /**
   * The node's bound on wrong admin tokens, per client address and per node: one per node,
   * shared with AdminService, so guessing through one way counts against the others.
   */
  wrongTokens: WrongTokenLimit;
  /** Who sends a request (TRUSTED_PROXIES): one per node, shared with AdminService. */
  clients: ClientResolver;
}>;

const FORM_BYTES_MAX = 16 * 1024;
const PAGE_SIZE_DEFAULT = 50;
const PAGE_SIZE_MAX = 200;
const RECON_RUNS_SHOWN = 50;
const RECON_DAYS_SHOWN = 14;
/** Of the newest run; the CLI and ReconciliationService page through all of them. */
const RECON_MISMATCHES_SHOWN = 200;

type Handler = (request: HttpRequest, principal: Principal) => Promise<HttpResponse>;

export function adminRoutes(deps: AdminDeps): Route[] {
  const nowMs = () => deps.now().getTime();
  const context = (principal: Principal | undefined): LayoutContext => ({
    principal,
    canAct: principal !== undefined && principal.via !== 'open',
    nodeName: deps.nodeName,
    namespace: deps.names.namespace,
    now: deps.now(),
  });
  const page = (
    principal: Principal | undefined,
    title: string,
    active: string,
    body: SafeHtml,
    options: { status?: number; flash?: string | undefined } = {},
  ) =>
    htmlResponse(
      options.status ?? 200,
      layout(context(principal), { title, active, body, flash: options.flash }),
    );

  /**
   * An error as a page: operating errors show their message, bugs a request id. A form the
   * client aborted goes back to the router, which reports it apart (there is nobody to show).
   */
  const errorPage = (principal: Principal | undefined, error: unknown, path: string) => {
    if (error instanceof ClientAbortedError) throw error;
    // A form over FORM_BYTES_MAX is the caller's to fix, not a bug.
    if (error instanceof BodyTooLargeError) {
      return page(principal, 'Form too large', '', messagePage(FORM_TOO_LARGE), {
        status: error.httpStatus,
      });
    }
    const requestId = randomUUID();
    const answer = toHttpError(toUnavailable(error), requestId, { log: deps.log, path });
    return page(
      principal,
      answer.status === 404 ? 'Not found' : 'Error',
      '',
      messagePage(answer.body.error.message),
      {
        status: answer.status,
      },
    );
  };

  /**
   * The node's bound on wrong tokens, as it applies to the client that sent `request`: its peer,
   * or the client a trusted proxy forwarded it for.
   */
  const wrongTokensOf = (request: HttpRequest) =>
    deps.wrongTokens.forClient(
      deps.clients.ofHttp(request.remoteAddress, request.headers['x-forwarded-for']).key,
    );
  const authenticated = (request: HttpRequest): Authentication =>
    authenticate(deps.auth, wrongTokensOf(request), request.headers, nowMs());

  /** While the client's (or the node's) bound on wrong tokens is reached: 429, whatever the credential. */
  const tooManyWrongTokens = (limited: Readonly<{ waitMs: number; scope: LockoutScope }>) =>
    htmlResponse(
      429,
      layout(context(undefined), {
        title: 'Too many wrong tokens',
        active: '',
        body: messagePage(lockoutMessage(limited)),
        flash: undefined,
      }),
      { 'retry-after': String(Math.max(1, Math.ceil(limited.waitMs / 1_000))) },
    );

  // A cookie not signed with the token (one from before the token changed) counts as a wrong
  // token each time it comes back: the browser is told to drop it.
  const dropStaleSession = (auth: Authentication): Record<string, string> =>
    auth.outcome === 'wrong' && auth.via === 'session'
      ? { 'set-cookie': clearedSessionCookie(deps.cookie) }
      : {};

  const loginRedirect = (request: HttpRequest, auth: Authentication) => {
    if (deps.auth.token === undefined) {
      return htmlResponse(
        403,
        loginPage({ next: '/admin/payments', error: undefined, tokenConfigured: false }),
      );
    }
    const next = request.path + (request.query.size > 0 ? `?${request.query.toString()}` : '');
    return redirect(`/admin/login?next=${encodeURIComponent(next)}`, dropStaleSession(auth));
  };

  /** A page anyone with read access may see. */
  const view = (path: string, handler: Handler): Route => ({
    method: 'GET',
    path,
    handle: async (request) => {
      const auth = authenticated(request);
      // With reads open, a lockout must not leave an operator's session below anonymous: the
      // page is served as it would be to anyone, without checking the credential.
      if (auth.outcome === 'limited' && !deps.auth.readonlyOpen) {
        return tooManyWrongTokens(auth);
      }
      const principal: Principal | undefined =
        auth.outcome === 'ok'
          ? auth.principal
          : deps.auth.readonlyOpen
            ? { actor: 'anonymous', via: 'open' }
            : undefined;
      if (principal === undefined) return loginRedirect(request, auth);
      let response: HttpResponse;
      try {
        response = await handler(request, principal);
      } catch (error) {
        response = errorPage(principal, error, path);
      }
      // Read-only open: a stale cookie's holder reads as anyone, and still drops it.
      return { ...response, headers: { ...response.headers, ...dropStaleSession(auth) } };
    },
  });

  /**
   * Needs the token (bearer or session); a session POST must come from our own pages.
   * `onWrongToken` records a wrong credential's attempt (an action's audit row).
   */
  const actor = (
    method: 'GET' | 'POST',
    path: string,
    handler: Handler,
    onWrongToken?: (request: HttpRequest, attempt: Principal) => Promise<void>,
  ): Route => ({
    method,
    path,
    handle: async (request) => {
      const auth = authenticated(request);
      if (auth.outcome === 'limited') return tooManyWrongTokens(auth);
      if (auth.outcome === 'wrong') {
        await onWrongToken?.(request, { actor: auth.claimed, via: auth.via });
      }
      if (auth.outcome !== 'ok') return loginRedirect(request, auth);
      const principal = auth.principal;
      if (method === 'POST' && principal.via === 'session' && !isSameOrigin(request.headers)) {
        return page(principal, 'Refused', '', messagePage('cross-site form submission refused'), {
          status: 403,
        });
      }
      try {
        return await handler(request, principal);
      } catch (error) {
        return errorPage(principal, error, path);
      }
    },
  });

  const audit = (
    principal: Principal,
    what: { action: string; target: string; reason: string },
    work: () => Promise<Record<string, unknown>>,
  ) =>
    audited(
      { db: deps.db, now: deps.now, ...(deps.onAction ? { onAudited: deps.onAction } : {}) },
      { actor: principal.actor, via: principal.via, ...what },
      work,
      (detail) => detail,
    );

  const deadLetterAction = (
    principal: Principal,
    id: string,
    action: 'replay' | 'discard',
    reason: string,
  ) =>
    audit(
      principal,
      {
        action:
          action === 'replay' ? ADMIN_ACTION.replayDeadLetter : ADMIN_ACTION.discardDeadLetter,
        target: deps.deadLetters.auditTarget(id),
        reason,
      },
      async () => {
        const entry =
          action === 'replay'
            ? await deps.deadLetters.replay(id, principal.actor)
            : await deps.deadLetters.discard(id, reason, principal.actor);
        return { orderId: entry.orderId, state: entry.state };
      },
    );

  /**
   * A wrong credential on an action is audited like a failed action, under the name it came
   * with. Bounded: a wrong credential is only known as one while the bound is not reached.
   */
  const auditWrongToken =
    (action: 'replay' | 'discard') => async (request: HttpRequest, attempt: Principal) => {
      await audit(
        attempt,
        {
          action:
            action === 'replay' ? ADMIN_ACTION.replayDeadLetter : ADMIN_ACTION.discardDeadLetter,
          target: deps.deadLetters.auditTarget(request.params.id ?? ''),
          reason: 'wrong token',
        },
        () => Promise.reject(new UnauthenticatedError('wrong token')),
      ).catch(() => undefined);
    };

  const confirmRoutes = (action: 'replay' | 'discard'): Route[] => [
    actor('GET', `/admin/dead-letters/:id/${action}`, async (request, principal) => {
      const entry = await requireDeadLetter(deps.deadLetters, request.params.id ?? '');
      return page(
        principal,
        `${action === 'replay' ? 'Replay' : 'Discard'} dead letter ${entry.id}`,
        '/admin/dead-letters',
        confirmDeadLetterPage({ entry, action, error: undefined }),
      );
    }),
    actor(
      'POST',
      `/admin/dead-letters/:id/${action}`,
      async (request, principal) => {
        const entry = await requireDeadLetter(deps.deadLetters, request.params.id ?? '');
        const form = await readForm(request);
        let reason: string;
        try {
          reason = requireReason(form.get('reason'));
          // By the entry's own id: `0004` in the path is entry 4, and is audited as 4.
          await deadLetterAction(principal, entry.id, action, reason);
        } catch (error) {
          if (!(error instanceof SettleError)) throw error;
          const answer = toHttpError(error, randomUUID());
          return page(
            principal,
            `${action === 'replay' ? 'Replay' : 'Discard'} dead letter ${entry.id}`,
            '/admin/dead-letters',
            confirmDeadLetterPage({ entry, action, error: error.message }),
            { status: answer.status },
          );
        }
        return redirect(
          `/admin/dead-letters?state=ALL&done=${action === 'replay' ? 'replayed' : 'discarded'}&id=${encodeURIComponent(entry.id)}`,
        );
      },
      auditWrongToken(action),
    ),
  ];

  return [
    {
      method: 'GET',
      path: '/admin/static/admin.css',
      handle: async () => ({
        status: 200,
        headers: { 'content-type': 'text/css; charset=utf-8', 'cache-control': 'max-age=300' },
        body: ADMIN_CSS,
      }),
    },
    {
      method: 'GET',
      path: '/admin/static/admin.js',
      handle: async () => ({
        status: 200,
        headers: {
          'content-type': 'text/javascript; charset=utf-8',
          'cache-control': 'max-age=300',
        },
        body: ADMIN_JS,
      }),
    },
    { method: 'GET', path: '/admin', handle: async () => redirect('/admin/payments') },
    {
      method: 'GET',
      path: '/admin/login',
      handle: async (request) =>
        htmlResponse(
          200,
          loginPage({
            next: safeNext(request.query.get('next')),
            error: undefined,
            tokenConfigured: deps.auth.token !== undefined,
          }),
        ),
    },
    {
      method: 'POST',
      path: '/admin/login',
      handle: async (request) => {
        let form: URLSearchParams;
        try {
          form = await readForm(request);
        } catch (error) {
          if (!(error instanceof BodyTooLargeError)) throw error;
          return htmlResponse(
            error.httpStatus,
            loginPage({
              next: '/admin/payments',
              error: FORM_TOO_LARGE,
              tokenConfigured: deps.auth.token !== undefined,
            }),
          );
        }
        const next = safeNext(form.get('next'));
        const name = (form.get('actor') ?? '').trim();
        const fail = (status: number, error: string) =>
          htmlResponse(
            status,
            loginPage({ next, error, tokenConfigured: deps.auth.token !== undefined }),
          );
        if (deps.auth.token === undefined) return fail(403, 'the admin panel is disabled');
        if (!isSameOrigin(request.headers)) return fail(403, 'cross-site login refused');
        if (!ACTOR_PATTERN.test(name)) {
          return fail(400, 'name: 1-64 letters, digits, spaces and ._@- please');
        }
        const check = wrongTokensOf(request).check(CREDENTIAL_PATH.form, () =>
          tokenMatches(deps.auth, form.get('token') ?? '') ? true : undefined,
        );
        if (check.outcome === 'limited') {
          const seconds = Math.max(1, Math.ceil(check.waitMs / 1_000));
          const answer = fail(429, lockoutMessage(check));
          return { ...answer, headers: { ...answer.headers, 'retry-after': String(seconds) } };
        }
        if (check.outcome === 'wrong') {
          // Recorded like any failed action, so guessing shows in the audit trail.
          await audit(
            { actor: name, via: 'session' },
            { action: ADMIN_ACTION.login, target: 'session', reason: 'wrong token' },
            () => Promise.reject(new UnauthenticatedError('wrong token')),
          ).catch(() => undefined);
          return fail(401, 'wrong token');
        }
        await audit(
          { actor: name, via: 'session' },
          { action: ADMIN_ACTION.login, target: 'session', reason: 'login form' },
          async () => ({}),
        );
        return redirect(next, {
          'set-cookie': sessionCookie(deps.auth, name, nowMs(), deps.cookie),
        });
      },
    },
    {
      method: 'POST',
      path: '/admin/logout',
      handle: async (request) => {
        const auth = authenticated(request);
        if (
          auth.outcome === 'ok' &&
          auth.principal.via === 'session' &&
          isSameOrigin(request.headers)
        ) {
          await audit(
            auth.principal,
            { action: ADMIN_ACTION.logout, target: 'session', reason: 'logout' },
            async () => ({}),
          );
        }
        return redirect('/admin/login', { 'set-cookie': clearedSessionCookie(deps.cookie) });
      },
    },

    view('/admin/payments', async (request, principal) => {
      const filters = paymentFilters(request.query);
      let error: string | undefined;
      let found: Awaited<ReturnType<typeof searchPayments>> = [];
      const size = pageSize(filters.size);
      try {
        const search = paymentSearch(filters, request.query.get('before') ?? '');
        found = await searchPayments(deps.db, { ...search, limit: size + 1 });
      } catch (caught) {
        if (!(caught instanceof InvalidArgumentError)) throw caught;
        error = caught.message;
      }
      const payments = found.slice(0, size);
      return page(
        principal,
        'Payments',
        '/admin/payments',
        paymentsPage({
          filters,
          payments,
          nextBeforeId: found.length > size ? payments[payments.length - 1]?.id : undefined,
          isFirstPage: (request.query.get('before') ?? '') === '',
          error,
        }),
      );
    }),

    view('/admin/payments/:id', async (request, principal) => {
      const paymentId = request.params.id ?? '';
      if (!PAYMENT_ID_PATTERN.test(paymentId))
        throw new NotFoundError('payment', paymentId.slice(0, 40));
      const payment = await findPayment(deps.db, paymentId);
      if (payment === undefined) throw new NotFoundError('payment', paymentId);
      const orderIds = payment.orders.map((order) => order.id);
      const sellers = [...new Set(payment.orders.map((order) => order.sellerId))];
      const [transitions, webhooks, ledger, wallets, deadLetters] = await Promise.all([
        listTransitions(deps.db, paymentId),
        webhooksOfOrders(deps.db, orderIds),
        listLedgerEntries(deps.db, { orderIds, limit: 500 }),
        Promise.all(
          sellers.map(async (sellerId) => ({
            sellerId,
            wallet: await findWallet(deps.db, sellerId),
          })),
        ),
        deps.deadLetters.forOrders(orderIds).then(
          (entries) => ({ ok: true as const, entries }),
          (error: unknown) => ({
            ok: false as const,
            error: error instanceof Error ? error.message : String(error),
          }),
        ),
      ]);
      const letters: DeadLetterEntry[] = deadLetters.ok ? deadLetters.entries : [];
      const audit = await listAudit(deps.db, {
        targets: [...orderIds, ...letters.map((letter) => deps.deadLetters.auditTarget(letter.id))],
        limit: 200,
      });
      const auditByOrder = (orderId: string) =>
        audit.filter(
          (record) =>
            record.target === orderId ||
            letters.some(
              (l) => l.orderId === orderId && deps.deadLetters.auditTarget(l.id) === record.target,
            ),
        );
      const timelines = new Map(
        payment.orders.map((order) => [
          order.id,
          orderTimeline({
            transitions: transitions.filter((t) => t.orderId === order.id),
            webhooks: webhooks.filter((w) => w.orderId === order.id),
            deadLetters: letters.filter((l) => l.orderId === order.id),
            audit: auditByOrder(order.id),
          }),
        ]),
      );
      const lastTransitionAt = new Map<string, Date>();
      for (const t of transitions) lastTransitionAt.set(t.orderId, t.createdAt);
      const lastWebhookAt = new Map<string, Date>();
      for (const w of webhooks) lastWebhookAt.set(w.orderId, w.receivedAt);
      const findings = diagnose({
        orders: payment.orders,
        ordersWithLedger: new Set(ledger.map((entry) => entry.orderId)),
        lastWebhookAt,
        lastTransitionAt,
        openDeadLetters: letters.filter((l) => l.state === DEAD_LETTER_STATE.open),
        breaker: breakerStateOf(deps.psp),
        now: deps.now(),
      });
      return page(
        principal,
        `Payment ${payment.id}`,
        '/admin/payments',
        paymentPage({
          payment,
          findings,
          timelines,
          ledger,
          wallets,
          deadLetterNote: deadLetters.ok
            ? 'from the dead_letter table'
            : `could not be read (${deadLetters.error}).`,
        }),
      );
    }),

    view('/admin/orders/:id', async (request) => {
      const orderId = request.params.id ?? '';
      const order = ORDER_ID_PATTERN.test(orderId)
        ? await findPaymentOrder(deps.db, orderId)
        : undefined;
      if (order === undefined) throw new NotFoundError('payment order', orderId.slice(0, 40));
      return redirect(`/admin/payments/${order.paymentId}#${order.id}`);
    }),

    view('/admin/wallets/:sellerId', async (request, principal) => {
      const sellerId = request.params.sellerId ?? '';
      if (!PARTY_ID_PATTERN.test(sellerId))
        throw new NotFoundError('wallet of seller', sellerId.slice(0, 64));
      const [wallet, entries] = await Promise.all([
        findWallet(deps.db, sellerId),
        listLedgerEntries(deps.db, {
          account: ACCOUNT.sellerPayable(sellerId),
          limit: 100,
          newestFirst: true,
        }),
      ]);
      return page(
        principal,
        `Wallet of ${sellerId}`,
        '/admin/ledger',
        walletPage({ sellerId, wallet, entries }),
      );
    }),

    view('/admin/ledger', async (request, principal) => {
      const size = pageSize(request.query.get('size') ?? '');
      const pageToken = request.query.get('page_token') ?? '';
      const after = trialBalancePageAfter(pageToken);
      const [trial, totals] = await Promise.all([
        trialBalancePage(deps.db, { after, limit: size }),
        trialBalanceTotals(deps.db),
      ]);
      return page(
        principal,
        'Ledger: trial balance',
        '/admin/ledger',
        ledgerPage({
          accounts: trial.accounts,
          totals,
          size,
          isFirstPage: pageToken === '',
          nextPageToken: trialBalancePageToken(trial.next),
        }),
      );
    }),

    view('/admin/operations', async (request, principal) => {
      const asked = request.query.get('consumer_info') === '1';
      const [snapshot, consumerInfo] = await Promise.all([
        deps.snapshot(),
        asked ? deps.consumerInfo() : undefined,
      ]);
      return page(
        principal,
        'Operations',
        '/admin/operations',
        operationsPage({
          snapshot,
          consumerInfo,
          commandStream: deps.names.commandStream,
          consumer: deps.names.runtimeConsumer,
          deadLetterStream: deps.names.deadLetterStream,
          settings: deps.settings,
        }),
      );
    }),

    view('/admin/dead-letters', async (request, principal) => {
      const state = deadLetterFilter(request.query.get('state'));
      // A cursor names the filter it was made under, as AdminService's page tokens do: under
      // another, it would start that list in the middle without saying so.
      const filter = { state };
      const before = request.query.get('before') ?? '';
      const beforeId = decodePageToken('ListDeadLetters', before, filter, isInt64Decimal, 'before');
      const result = await deps.deadLetters.list({
        ...(state !== 'ALL' ? { state } : {}),
        ...(beforeId !== undefined ? { beforeId } : {}),
        limit: PAGE_SIZE_DEFAULT,
      });
      const done = request.query.get('done');
      const doneId = request.query.get('id') ?? '';
      const flash =
        (done === 'replayed' || done === 'discarded') && isInt64Decimal(doneId)
          ? `Dead letter ${doneId} ${done}.`
          : undefined;
      return page(
        principal,
        'Dead-letter queue',
        '/admin/dead-letters',
        deadLettersPage({
          page: result,
          state,
          canAct: context(principal).canAct,
          isFirstPage: beforeId === undefined,
          olderCursor:
            result.nextBeforeId !== undefined
              ? encodePageToken('ListDeadLetters', result.nextBeforeId, filter)
              : undefined,
        }),
        { flash },
      );
    }),

    view('/admin/dead-letters/:id', async (request, principal) => {
      const entry = await requireDeadLetter(deps.deadLetters, request.params.id ?? '');
      return page(
        principal,
        `Dead letter ${entry.id}`,
        '/admin/dead-letters',
        deadLetterPage({ entry, canAct: context(principal).canAct }),
      );
    }),
    ...confirmRoutes('replay'),
    ...confirmRoutes('discard'),

    view('/admin/reconciliation', async (_request, principal) => {
      const runs = await listRuns(deps.db, { limit: RECON_RUNS_SHOWN });
      const latest = runs[0];
      const latestMismatches =
        latest === undefined
          ? []
          : await listMismatches(deps.db, { runId: latest.id, limit: RECON_MISMATCHES_SHOWN });
      const schedule = await listScheduledDays(deps.db, RECON_DAYS_SHOWN);
      return page(
        principal,
        'Reconciliation',
        '/admin/reconciliation',
        reconciliationPage({ runs, latestMismatches, schedule }),
      );
    }),

    view('/admin/audit', async (request, principal) => {
      // A `before` that is no audit id (or does not fit its BIGINT) is refused, as the other
      // lists' cursors are: showing the first page would look like the page asked for.
      const before = request.query.get('before') ?? '';
      const beforeId = parseInt64Decimal(before);
      if (before !== '' && beforeId === undefined) {
        throw new InvalidArgumentError('before', 'invalid paging cursor; start again');
      }
      const records = await listAudit(deps.db, {
        ...(beforeId !== undefined ? { beforeId } : {}),
        limit: 101,
      });
      const shown = records.slice(0, 100);
      return page(
        principal,
        'Audit trail',
        '/admin/audit',
        auditPage({
          records: shown,
          nextBeforeId: records.length > 100 ? shown[shown.length - 1]?.id.toString() : undefined,
        }),
      );
    }),
  ];
}

async function requireDeadLetter(source: DeadLetterSource, id: string): Promise<DeadLetterEntry> {
  const entry = await source.get(id);
  if (entry === undefined) throw new NotFoundError('dead letter', id.slice(0, 40));
  return entry;
}

/** Rejects with the router's BodyTooLargeError (413) beyond FORM_BYTES_MAX. */
async function readForm(request: HttpRequest): Promise<URLSearchParams> {
  return new URLSearchParams((await request.body(FORM_BYTES_MAX)).toString('utf8'));
}

const FORM_TOO_LARGE =
  `The form is larger than ${FORM_BYTES_MAX} bytes, so nothing was done: shorten it ` +
  `(a reason takes at most ${REASON_CHARS.max} characters) and send it again.`;

/** Only our own pages: a path under /admin/, never another host (`//evil`) or a header break. */
function safeNext(value: string | null | undefined): string {
  return typeof value === 'string' &&
    /^\/admin(\/[A-Za-z0-9_\-./?=&%#:]*)?$/.test(value) &&
    !value.startsWith('//')
    ? value
    : '/admin/payments';
}

function deadLetterFilter(value: string | null): DeadLetterState | 'ALL' {
  const upper = (value ?? 'OPEN').toUpperCase();
  return (DEAD_LETTER_FILTERS as readonly string[]).includes(upper)
    ? (upper as DeadLetterState | 'ALL')
    : DEAD_LETTER_STATE.open;
}

function paymentFilters(query: URLSearchParams): PaymentFilters {
  const get = (key: string) => (query.get(key) ?? '').trim().slice(0, 100);
  return {
    q: get('q'),
    buyer: get('buyer'),
    seller: get('seller'),
    state: get('state'),
    from: get('from'),
    to: get('to'),
    size: get('size'),
  };
}

function pageSize(text: string): number {
  if (!/^\d{1,3}$/.test(text)) return PAGE_SIZE_DEFAULT;
  return Math.min(Math.max(Number(text), 1), PAGE_SIZE_MAX);
}

/** The filters as a search; InvalidArgumentError names the first bad one. */
function paymentSearch(filters: PaymentFilters, before: string) {
  let paymentId: string | undefined;
  let orderId: string | undefined;
  if (filters.q !== '') {
    if (PAYMENT_ID_PATTERN.test(filters.q)) paymentId = filters.q;
    else if (ORDER_ID_PATTERN.test(filters.q)) orderId = filters.q;
    else throw new InvalidArgumentError('id', 'give a payment id (pay_…) or an order id (ord_…)');
  }
  for (const [field, value] of [
    ['buyer', filters.buyer],
    ['seller', filters.seller],
  ] as const) {
    if (value !== '' && !PARTY_ID_PATTERN.test(value)) {
      throw new InvalidArgumentError(field, '1-64 letters, digits and _.:@-');
    }
  }
  if (filters.state !== '' && !(PAYMENT_STATES as readonly string[]).includes(filters.state)) {
    throw new InvalidArgumentError('state', `one of ${PAYMENT_STATES.join(', ')}`);
  }
  if (before !== '' && !PAYMENT_ID_PATTERN.test(before)) {
    throw new InvalidArgumentError('before', 'invalid paging cursor; start again');
  }
  return {
    paymentId,
    orderId,
    buyerId: filters.buyer || undefined,
    sellerId: filters.seller || undefined,
    state: filters.state || undefined,
    createdFrom: parseUtc('from', filters.from),
    createdTo: parseUtc('to', filters.to),
    beforeId: before || undefined,
  };
}

/** `2025-01-31T12:00` or `…:30` (a datetime-local field, read as UTC) or a full ISO time. */
function parseUtc(field: string, value: string): Date | undefined {
  if (value === '') return undefined;
  const local = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?$/.test(value);
  const date = new Date(local ? `${value}Z` : value);
  if (Number.isNaN(date.getTime())) {
    throw new InvalidArgumentError(field, 'a time such as 2025-01-31T12:00 (UTC)');
  }
  return date;
}
