/**
 * The admin panel's pages as pure functions from data to HTML (SafeHtml). No I/O here: routes.ts
 * loads the data and checks the credential. Every value goes through the escaping `html` tag.
 */
import { assertNever } from '../domain/errors.js';
import { formatMajor } from '../domain/money.js';
import type { PaymentOrder } from '../domain/payment-order.js';
import type { Payment } from '../storage/repositories/payment.repository.js';
import type { TransitionRecord } from '../storage/repositories/payment-order.repository.js';
import type {
  AccountBalance,
  CurrencyBalance,
  LedgerEntry,
  Wallet,
} from '../storage/repositories/ledger.repository.js';
import type { AuditRecord } from '../storage/repositories/admin-audit.repository.js';
import type {
  PaymentSummary,
  ReceivedWebhook,
} from '../storage/repositories/admin-search.repository.js';
import type {
  ConsumerInfoReading,
  OperationsSnapshot,
  Probe,
  ReconciliationStatus,
} from '../observability/operations.js';
import {
  failedInternalChecks,
  RECONCILIATION_CLASS,
  type InternalCheck,
  type Mismatch,
  type Run,
  type ScheduledDay,
} from '../reconciliation/index.js';
import type { Principal } from './auth.js';
import type { DeadLetterEntry, DeadLetterPage, DeadLetterState } from './dead-letter-source.js';
import type { Finding } from './diagnosis.js';
import { externalLink, formatTime, html, queryString, type SafeHtml } from './html.js';

export type LayoutContext = Readonly<{
  principal: Principal | undefined;
  /** Whether this principal may act (replay, discard): it presented the token. */
  canAct: boolean;
  nodeName: string;
  namespace: string;
  now: Date;
}>;

/** Currencies and pairs named on the operations page when the running sums differ. */
const SUM_DIFFERENCES_SHOWN_MAX = 5;

const NAV: ReadonlyArray<readonly [href: string, label: string]> = [
  ['/admin/payments', 'Payments'],
  ['/admin/operations', 'Operations'],
  ['/admin/dead-letters', 'Dead letters'],
  ['/admin/reconciliation', 'Reconciliation'],
  ['/admin/ledger', 'Ledger'],
  ['/admin/audit', 'Audit'],
];

export function layout(
  context: LayoutContext,
  page: { title: string; active: string; body: SafeHtml; flash?: string | undefined },
): SafeHtml {
  const who =
    context.principal === undefined
      ? html`<a href="/admin/login">Log in</a>`
      : context.principal.via === 'open'
        ? html`<span class="muted">read-only (ADMIN_READONLY_OPEN)</span>
            <a href="/admin/login">Log in to act</a>`
        : html`<span>${context.principal.actor}</span>
            <form method="post" action="/admin/logout" class="inline">
              <button type="submit" class="link">Log out</button>
            </form>`;
  return html`<html lang="en">
    <head>
      <meta charset="utf-8" />
      <meta name="viewport" content="width=device-width, initial-scale=1" />
      <title>${page.title} · Settle admin</title>
      <link rel="stylesheet" href="/admin/static/admin.css" />
      <script src="/admin/static/admin.js" defer></script>
    </head>
    <body>
      <header>
        <a class="brand" href="/admin/payments">Settle admin</a>
        <nav>
          ${NAV.map(
            ([href, label]) =>
              html`<a href="${href}" class="${href === page.active ? 'active' : ''}">${label}</a>`,
          )}
        </nav>
        <div class="who">${who}</div>
      </header>
      <main>
        <h1>${page.title}</h1>
        ${page.flash !== undefined ? html`<p class="flash" role="status">${page.flash}</p>` : ''}
        ${page.body}
      </main>
      <footer>
        node ${context.nodeName} · namespace ${context.namespace} · rendered
        ${formatTime(context.now)}
      </footer>
    </body>
  </html>`;
}

function minor(amountMinor: bigint, currency: string): string {
  return `${formatMajor(amountMinor)} ${currency}`;
}

function stateBadge(state: string): SafeHtml {
  return html`<span class="state state-${state.toLowerCase()}">${state}</span>`;
}

function paymentLink(id: string): SafeHtml {
  return html`<a href="/admin/payments/${encodeURIComponent(id)}" class="mono">${id}</a>`;
}

function probeOf<T>(probe: Probe<T>, show: (value: T) => SafeHtml): SafeHtml {
  return probe.ok ? show(probe.value) : html`<span class="bad">unavailable: ${probe.error}</span>`;
}

// ---------------------------------------------------------------------------------------------
// Login

export function loginPage(input: {
  next: string;
  error: string | undefined;
  tokenConfigured: boolean;
}): SafeHtml {
  return html`<html lang="en">
    <head>
      <meta charset="utf-8" />
      <title>Log in · Settle admin</title>
      <link rel="stylesheet" href="/admin/static/admin.css" />
    </head>
    <body class="login">
      <main>
        <h1>Settle admin</h1>
        ${
          input.tokenConfigured
            ? html`<form method="post" action="/admin/login">
                <input type="hidden" name="next" value="${input.next}" />
                <label
                  >Your name (recorded in the audit trail)
                  <input
                    name="actor"
                    required
                    maxlength="64"
                    pattern="[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}"
                    autocomplete="username"
                  />
                </label>
                <label
                  >Admin token
                  <input name="token" type="password" required autocomplete="current-password" />
                </label>
                ${input.error !== undefined ? html`<p class="bad">${input.error}</p>` : ''}
                <button type="submit">Log in</button>
              </form>`
            : html`<p class="bad">
                The admin panel is disabled: this node has no ADMIN_TOKEN. Start it with ADMIN_TOKEN
                set (16+ characters), or with ADMIN_READONLY_OPEN=true for read-only local use.
              </p>`
        }
      </main>
    </body>
  </html>`;
}

// ---------------------------------------------------------------------------------------------
// Payments

export type PaymentFilters = Readonly<{
  q: string;
  buyer: string;
  seller: string;
  state: string;
  from: string;
  to: string;
  size: string;
}>;

export const PAYMENT_STATES = [
  'NOT_STARTED',
  'EXECUTING',
  'SUCCEEDED',
  'PARTIALLY_SUCCEEDED',
  'FAILED',
] as const;

export function paymentsPage(input: {
  filters: PaymentFilters;
  payments: readonly PaymentSummary[];
  nextBeforeId: string | undefined;
  isFirstPage: boolean;
  error: string | undefined;
}): SafeHtml {
  const f = input.filters;
  const keep = {
    q: f.q,
    buyer: f.buyer,
    seller: f.seller,
    state: f.state,
    from: f.from,
    to: f.to,
    size: f.size,
  };
  return html` <form method="get" action="/admin/payments" class="filters">
      <label
        >Payment or order id
        <input name="q" value="${f.q}" placeholder="pay_… or ord_…" class="mono"
      /></label>
      <label>Buyer <input name="buyer" value="${f.buyer}" /></label>
      <label>Seller <input name="seller" value="${f.seller}" /></label>
      <label
        >State
        <select name="state">
          <option value="">any</option>
          ${PAYMENT_STATES.map(
            (state) =>
              html`<option value="${state}" ${state === f.state ? html`selected` : ''}>
                ${state}
              </option>`,
          )}
        </select>
      </label>
      <label
        >Created from (UTC) <input name="from" type="datetime-local" step="1" value="${f.from}"
      /></label>
      <label>to (UTC) <input name="to" type="datetime-local" step="1" value="${f.to}" /></label>
      <label
        >Per page <input name="size" type="number" min="1" max="200" value="${f.size}"
      /></label>
      <button type="submit">Search</button>
      <a href="/admin/payments">Clear</a>
    </form>
    ${input.error !== undefined ? html`<p class="bad">${input.error}</p>` : ''}
    <table class="list" id="payments">
      <thead>
        <tr>
          <th>Payment</th>
          <th>Created (UTC)</th>
          <th>Buyer</th>
          <th>State</th>
          <th class="num">Amount</th>
          <th>Orders (ok / failed / total)</th>
          <th>Updated (UTC)</th>
        </tr>
      </thead>
      <tbody>
        ${
          input.payments.length === 0
            ? html`<tr>
                <td colspan="7" class="muted">No payment matches.</td>
              </tr>`
            : input.payments.map(
                (p) =>
                  html`<tr>
                    <td>${paymentLink(p.id)}</td>
                    <td class="time">${p.createdAt}</td>
                    <td>${p.buyerId}</td>
                    <td>
                      ${stateBadge(p.state)}${p.failureReason !== undefined ? html` <span class="muted">${p.failureReason}</span>` : ''}
                    </td>
                    <td class="num">${minor(p.amountMinor, p.currency)}</td>
                    <td>${p.ordersSucceeded} / ${p.ordersFailed} / ${p.ordersTotal}</td>
                    <td class="time">${p.updatedAt}</td>
                  </tr>`,
              )
        }
      </tbody>
    </table>
    <p class="pager">
      ${input.isFirstPage ? '' : html`<a href="/admin/payments${queryString(keep)}">« Newest</a>`}
      ${
        input.nextBeforeId !== undefined
          ? html`<a
              href="/admin/payments${queryString({ ...keep, before: input.nextBeforeId })}"
              rel="next"
              >Older »</a
            >`
          : html`<span class="muted">End of results.</span>`
      }
    </p>`;
}

export type TimelineItem = Readonly<{
  at: Date;
  kind: 'transition' | 'psp' | 'webhook' | 'dead-letter' | 'admin';
  title: SafeHtml;
  detail: string;
}>;

/** One order's history: transitions (with the PSP results they record), webhooks, dead letters. */
export function orderTimeline(input: {
  transitions: readonly TransitionRecord[];
  webhooks: readonly ReceivedWebhook[];
  deadLetters: readonly DeadLetterEntry[];
  audit: readonly AuditRecord[];
}): TimelineItem[] {
  const items: TimelineItem[] = [];
  // Webhooks first: one applied at once shares its transition's timestamp, and the stable sort
  // below then shows it before the transition it caused.
  for (const w of input.webhooks) {
    items.push({
      at: w.receivedAt,
      kind: 'webhook',
      title: html`webhook received from ${w.source}: event <span class="mono">${w.eventId}</span>`,
      detail: '',
    });
  }
  for (const t of input.transitions) {
    const psp = PSP_EVENTS[t.eventType];
    items.push({
      at: t.createdAt,
      kind: psp === undefined ? 'transition' : 'psp',
      title: html`v${t.version}: ${stateBadge(t.fromState)} → ${stateBadge(t.toState)} on
        <strong>${t.eventType}</strong
        >${psp !== undefined ? html` <span class="muted">(${psp})</span>` : ''}`,
      detail: prettyJson(t.detail),
    });
  }
  for (const d of input.deadLetters) {
    items.push({
      at: d.createdAt,
      kind: 'dead-letter',
      title: html`dead-lettered after ${d.attempts} attempt(s): <strong>${d.reason}</strong> —
        <a href="/admin/dead-letters/${encodeURIComponent(d.id)}">dead letter ${d.id}</a>
        ${stateBadge(d.state)}`,
      detail: d.lastError,
    });
  }
  for (const a of input.audit) {
    items.push({
      at: a.createdAt,
      kind: 'admin',
      title: html`admin ${a.action} by ${a.actor} (${a.outcome})`,
      detail: a.reason,
    });
  }
  return items.sort((a, b) => a.at.getTime() - b.at.getTime());
}

/** Events that carry a PSP call's or a webhook's result. */
const PSP_EVENTS: Readonly<Record<string, string>> = {
  PspRegistered: 'PSP RegisterPayment succeeded',
  PspRegistrationFailed: 'PSP RegisterPayment failed',
  PspSucceeded: 'PSP webhook: charge succeeded',
  PspDeclined: 'PSP webhook: declined',
};

function prettyJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 1);
  } catch {
    return text;
  }
}

export function paymentPage(input: {
  payment: Payment;
  findings: readonly Finding[];
  timelines: ReadonlyMap<string, readonly TimelineItem[]>;
  ledger: readonly LedgerEntry[];
  wallets: ReadonlyArray<Readonly<{ sellerId: string; wallet: Wallet | undefined }>>;
  deadLetterNote: string;
}): SafeHtml {
  const p = input.payment;
  return html` <section class="summary">
      <dl>
        <dt>Payment</dt>
        <dd class="mono" id="payment-id">${p.id}</dd>
        <dt>State</dt>
        <dd id="payment-state">${stateBadge(p.state)} ${p.failureReason ?? ''}</dd>
        <dt>Buyer</dt>
        <dd>${p.buyerId}</dd>
        <dt>Amount</dt>
        <dd>${minor(p.amountMinor, p.currency)}</dd>
        <dt>Request id (idempotency key)</dt>
        <dd class="mono">${p.requestId}</dd>
        <dt>Created / updated (UTC)</dt>
        <dd>${p.createdAt} / ${p.updatedAt} (version ${p.version})</dd>
      </dl>
    </section>
    <section>
      <h2>Diagnosis</h2>
      <ul class="findings" id="diagnosis">
        ${input.findings.map(
          (f) =>
            html`<li class="finding-${f.severity}">
              <strong>${f.severity.toUpperCase()}</strong>
              ${f.orderId !== undefined ? html`<a href="#${f.orderId}" class="mono">${f.orderId}</a>:` : ''}
              ${f.text}
            </li>`,
        )}
      </ul>
    </section>
    <section>
      <h2>Orders</h2>
      <table class="list" id="orders">
        <thead>
          <tr>
            <th>Order</th>
            <th>Seller</th>
            <th class="num">Amount</th>
            <th>State</th>
            <th>Version</th>
            <th>PSP attempts</th>
            <th>Checkout</th>
            <th>PSP reference</th>
            <th>Failure / review</th>
          </tr>
        </thead>
        <tbody>
          ${p.orders.map(
            (o: PaymentOrder) =>
              html`<tr>
                <td><a href="#${o.id}" class="mono">${o.id}</a></td>
                <td>
                  <a href="/admin/wallets/${encodeURIComponent(o.sellerId)}">${o.sellerId}</a>
                </td>
                <td class="num">${minor(o.amountMinor, o.currency)}</td>
                <td>${stateBadge(o.state)}</td>
                <td>${o.version}</td>
                <td>${o.attempts}</td>
                <td>${externalLink(o.checkoutUrl, 'hosted page')}</td>
                <td class="mono">${o.pspReference ?? ''}</td>
                <td>
                  ${o.failureReason ?? ''}
                  ${o.reviewReason !== undefined ? html`<span class="bad">review: ${o.reviewReason}</span>` : ''}
                </td>
              </tr>`,
          )}
        </tbody>
      </table>
    </section>
    ${p.orders.map(
      (o) =>
        html`<section class="order" id="${o.id}">
          <h2>Timeline of order <span class="mono">${o.id}</span> (${o.sellerId})</h2>
          <table class="list timeline">
            <thead>
              <tr>
                <th>Time (UTC)</th>
                <th>What</th>
                <th>Detail</th>
              </tr>
            </thead>
            <tbody>
              <tr class="kind-transition">
                <td>${o.createdAt}</td>
                <td>created in ${stateBadge('NOT_STARTED')}</td>
                <td></td>
              </tr>
              ${(input.timelines.get(o.id) ?? []).map(
                (item) =>
                  html`<tr class="kind-${item.kind}">
                    <td>${item.at}</td>
                    <td>${item.title}</td>
                    <td>${item.detail !== '' ? html`<pre>${item.detail}</pre>` : ''}</td>
                  </tr>`,
              )}
            </tbody>
          </table>
        </section>`,
    )}
    <p class="muted">
      PSP calls appear through the transitions they caused (PspRegistered, PspRegistrationFailed); a
      retried call that changed nothing is counted in the metrics and logs only. Dead letters:
      ${input.deadLetterNote}
    </p>
    <section>
      <h2>Ledger entries</h2>
      <table class="list" id="ledger">
        <thead>
          <tr>
            <th>Time (UTC)</th>
            <th>Transaction</th>
            <th>Order</th>
            <th>Account</th>
            <th>Kind</th>
            <th class="num">Debit</th>
            <th class="num">Credit</th>
          </tr>
        </thead>
        <tbody>
          ${
            input.ledger.length === 0
              ? html`<tr>
                  <td colspan="7" class="muted">No ledger entries (nothing succeeded yet).</td>
                </tr>`
              : input.ledger.map(
                  (e) =>
                    html`<tr>
                      <td>${e.createdAt}</td>
                      <td class="mono">${e.transactionId}</td>
                      <td class="mono">${e.orderId}</td>
                      <td>${e.account}</td>
                      <td>${e.kind}</td>
                      <td class="num">
                        ${e.debitMinor > 0n ? minor(e.debitMinor, e.currency) : ''}
                      </td>
                      <td class="num">
                        ${e.creditMinor > 0n ? minor(e.creditMinor, e.currency) : ''}
                      </td>
                    </tr>`,
                )
          }
        </tbody>
      </table>
    </section>
    <section>
      <h2>Wallets of the sellers</h2>
      <table class="list" id="wallets">
        <thead>
          <tr>
            <th>Seller</th>
            <th class="num">Balance</th>
            <th>Updated (UTC)</th>
          </tr>
        </thead>
        <tbody>
          ${input.wallets.map(
            ({ sellerId, wallet }) =>
              html`<tr>
                <td><a href="/admin/wallets/${encodeURIComponent(sellerId)}">${sellerId}</a></td>
                <td class="num">
                  ${wallet === undefined ? html`<span class="muted">no wallet yet</span>` : minor(wallet.balanceMinor, wallet.currency)}
                </td>
                <td>${wallet?.updatedAt}</td>
              </tr>`,
          )}
        </tbody>
      </table>
    </section>`;
}

// ---------------------------------------------------------------------------------------------
// Operations

/** The latest settlement day's run, as the /metrics gauges report it. */
function reconciliationStatus(status: ReconciliationStatus): SafeHtml {
  const run = status.lastRun;
  const unsettled = html`<dt>Orders not settled yet</dt>
    <dd>${status.unsettledOrders}</dd>`;
  if (run === undefined) {
    return html`<p class="muted">No day reconciled yet.</p>
      <dl>${unsettled}</dl>`;
  }
  const mismatches = Object.entries(run.counts)
    .filter(([mismatchClass, n]) => mismatchClass !== 'MATCHED' && n > 0n)
    .map(([mismatchClass, n]) => `${mismatchClass} ${n}`);
  const check = run.internalCheck;
  return html`<dl>
    <dt>Latest day</dt>
    <dd>${run.day}</dd>
    <dt>Completed</dt>
    <dd>${run.completedAt?.toISOString() ?? ''}</dd>
    <dt>Mismatches</dt>
    <dd>
      ${mismatches.length === 0 ? 'none' : html`<span class="bad">${mismatches.join(', ')}</span>`}
    </dd>
    <dt>Internal checks</dt>
    <dd>${check === undefined ? '' : internalCheckStatus(check)}</dd>
    ${unsettled}
  </dl>`;
}

/** What a run's internal check found, failures first. */
function internalCheckStatus(check: InternalCheck): SafeHtml {
  const failures = failedInternalChecks(check).map((failure) => {
    switch (failure) {
      case 'LEDGER_NOT_BALANCED':
        return html`ledger NOT balanced`;
      case 'WALLETS_DIFFER':
        return html`${check.walletsNotMatching} wallets differ from the ledger`;
      case 'SUMS_DIFFER':
        return runningSumsDiffer(check);
      case 'SUMS_UNCHECKED':
        // Not a pass: the sums may differ, and nothing else compares them on its own.
        return html`the running sums could not be compared with the ledger entries:
          ${check.ledgerSumsUnchecked ?? ''}; run the reconciliation again, or
          <code>settle ledger-sums repair --reason … --dry-run</code>`;
      default:
        return assertNever(failure, 'internal check');
    }
  });
  if (failures.length > 0) {
    const joined = failures.map((failure, i) => (i === 0 ? failure : html`; ${failure}`));
    return html`<span class="bad">${joined}</span>`;
  }
  const holding = ['ledger balanced', 'wallets equal to it'];
  // Undefined: a run from before the running sums were checked, which says nothing of them.
  if (check.ledgerSumsMatch === true) holding.push('running sums equal to its entries');
  return html`${holding.join(', ')}`;
}

/**
 * Where the running sums differ: how many currencies and (account, currency) pairs, as the report
 * counts them all, then the first of them by name, currencies first, so a card stays a card
 * however many differ (the report over gRPC lists the first 100 of each); and the command that
 * mends them, as the alert SettleLedgerSumsDiffer names it, since the panel cannot run it (a
 * repair is for ADMIN_TOKEN over gRPC, with a reason, dry run first).
 */
function runningSumsDiffer(check: InternalCheck): SafeHtml {
  const named = [
    ...check.currencySumDifferences,
    ...check.ledgerSumDifferences.map(({ account, currency }) => `${account}/${currency}`),
  ];
  const shown = named.slice(0, SUM_DIFFERENCES_SHOWN_MAX).join(', ');
  const counted = check.currencySumsNotMatching + check.ledgerSumsNotMatching;
  const rest =
    named.length > SUM_DIFFERENCES_SHOWN_MAX || counted > BigInt(named.length) ? ' and more' : '';
  const counts = [
    countOf(check.currencySumsNotMatching, 'currency', 'currencies'),
    countOf(check.ledgerSumsNotMatching, '(account, currency) pair', '(account, currency) pairs'),
  ].filter((count) => count !== undefined);
  const where = counts.length === 0 ? '' : ` in ${counts.join(' and ')}`;
  return html`running sums differ from the ledger entries${where}: ${shown}${rest}; mend them with
    <code>settle ledger-sums repair --reason …</code> (<code>--dry-run</code> first)`;
}

/** "1 currency", "105 currencies"; undefined for none. */
function countOf(n: bigint, one: string, many: string): string | undefined {
  if (n === 0n) return undefined;
  return `${n} ${n === 1n ? one : many}`;
}

export function operationsPage(input: {
  snapshot: OperationsSnapshot;
  /** The consumer's info from the server, when the operator asked for it. */
  consumerInfo: Probe<ConsumerInfoReading> | undefined;
  commandStream: string;
  consumer: string;
  deadLetterStream: string;
  settings: ReadonlyArray<readonly [string, string]>;
}): SafeHtml {
  const s = input.snapshot;
  return html` <div class="cards">
      <section class="card" id="breaker">
        <h2>PSP circuit breaker</h2>
        <p>
          ${s.breaker === undefined ? html`<span class="muted">not applicable (PSP port without breaker)</span>` : stateBadge(s.breaker)}
        </p>
      </section>
      <section class="card" id="consumer">
        <h2>JetStream consumer</h2>
        <p class="muted mono">${input.commandStream} / ${input.consumer}</p>
        ${probeOf(
          s.consumer,
          (c) =>
            html`<dl>
              <dt>Pending (not delivered)</dt>
              <dd>${c.pending}</dd>
              <dt>Delivered (stream seq)</dt>
              <dd>${c.deliveredStreamSeq}, seen ${(c.seenAgoMs / 1000).toFixed(1)} s ago</dd>
              <dt>Ack pending on this node</dt>
              <dd>${c.ackPending}</dd>
              <dt>Redelivered on this node</dt>
              <dd>${c.redelivered}</dd>
              <dt>Pull open on this node</dt>
              <dd>${c.pullOpen ? 'yes' : 'no'}</dd>
            </dl>`,
        )}
        ${
          input.consumerInfo === undefined
            ? html`<p class="muted">
                Derived without asking NATS.
                <a href="/admin/operations?consumer_info=1#consumer">Read the consumer's info</a>
                (every node's figures; slows the consumer's deliveries for seconds under a backlog;
                read at most once a minute per node).
              </p>`
            : probeOf(
                input.consumerInfo,
                (i) =>
                  html`<p class="muted">Consumer info read at ${i.readAt.toISOString()}:</p>
                    <dl id="consumer-info">
                      <dt>Pending</dt>
                      <dd>${i.pending}</dd>
                      <dt>Ack pending</dt>
                      <dd>${i.ackPending}</dd>
                      <dt>Redelivered</dt>
                      <dd>${i.redelivered}</dd>
                      <dt>Waiting pulls</dt>
                      <dd>${i.waiting}</dd>
                      <dt>Delivered / ack floor (stream seq)</dt>
                      <dd>${i.deliveredStreamSeq} / ${i.ackFloorStreamSeq}</dd>
                    </dl>`,
              )
        }
        ${probeOf(
          s.commandStream,
          (st) =>
            html`<p class="muted">
              stream: ${st.messages} messages, ${st.bytes} bytes, seq ${st.firstSeq}–${st.lastSeq}
            </p>`,
        )}
      </section>
      <section class="card" id="outbox">
        <h2>Outbox</h2>
        ${probeOf(
          s.outbox,
          (o) =>
            html`<dl>
              <dt>Rows waiting</dt>
              <dd>${o.pending}</dd>
              <dt>Oldest</dt>
              <dd>${(o.oldestAgeMs / 1000).toFixed(1)} s</dd>
            </dl>`,
        )}
      </section>
      <section class="card" id="dead-letters">
        <h2>Dead letters</h2>
        <p class="muted mono">${input.deadLetterStream}</p>
        ${probeOf(
          s.deadLetters,
          (d) =>
            html`<dl>
                <dt>Open</dt>
                <dd>${d.open}</dd>
                <dt>Kept</dt>
                <dd>${d.total}</dd>
              </dl>
              <p><a href="/admin/dead-letters">Open the dead-letter queue »</a></p>`,
        )}
      </section>
      <section class="card" id="actors">
        <h2>Actors (this node)</h2>
        <dl>
          <dt>Live</dt>
          <dd>${s.actors.live}</dd>
          <dt>Mailbox depth</dt>
          <dd>${s.actors.mailboxDepth}</dd>
          <dt>Passivated since start</dt>
          <dd>${s.actors.passivated}</dd>
        </dl>
      </section>
      <section class="card" id="payments-by-state">
        <h2>Payments by state</h2>
        ${probeOf(
          s.payments,
          (rows) =>
            html`<dl>
              ${rows.map(
                (row) =>
                  html`<dt><a href="/admin/payments?state=${row.state}">${row.state}</a></dt>
                    <dd>${row.count}</dd>`,
              )}
            </dl>`,
        )}
      </section>
      <section class="card" id="reconciliation-card">
        <h2>Reconciliation</h2>
        ${probeOf(s.reconciliation, reconciliationStatus)}
        <p><a href="/admin/reconciliation">Reports and mismatches »</a></p>
      </section>
    </div>
    <section>
      <h2>Settings that shape failure handling</h2>
      <table class="list">
        <tbody>
          ${input.settings.map(
            ([key, value]) =>
              html`<tr>
                <th>${key}</th>
                <td class="mono">${value}</td>
              </tr>`,
          )}
        </tbody>
      </table>
    </section>
    <p class="muted">Snapshot taken ${s.takenAt}. The same numbers are exported at /metrics.</p>`;
}

// ---------------------------------------------------------------------------------------------
// Dead letters

export const DEAD_LETTER_FILTERS = ['OPEN', 'REPLAYED', 'DISCARDED', 'RESOLVED', 'ALL'] as const;

function deadLetterActions(entry: DeadLetterEntry, canAct: boolean): SafeHtml {
  if (entry.state !== 'OPEN') {
    return html`<span class="muted"
      >${entry.resolutionNote ?? ''} (${formatTime(entry.updatedAt)})</span
    >`;
  }
  if (!canAct) return html`<span class="muted">log in to act</span>`;
  const id = encodeURIComponent(entry.id);
  return html`<a class="button" href="/admin/dead-letters/${id}/replay">Replay…</a>
    <a class="button danger" href="/admin/dead-letters/${id}/discard">Discard…</a>`;
}

export function deadLettersPage(input: {
  page: DeadLetterPage;
  state: DeadLetterState | 'ALL';
  canAct: boolean;
  isFirstPage: boolean;
  /** The `before` of the next (older) page, tied to `state`; undefined on the last page. */
  olderCursor: string | undefined;
}): SafeHtml {
  return html`<p class="tabs">
      ${DEAD_LETTER_FILTERS.map(
        (state) =>
          html`<a
            href="/admin/dead-letters?state=${state}"
            class="${state === input.state ? 'active' : ''}"
            >${state}</a
          >`,
      )}
    </p>
    <table class="list" id="dead-letter-list">
      <thead>
        <tr>
          <th>Id</th>
          <th>Dead-lettered (UTC)</th>
          <th>Order</th>
          <th>Reason</th>
          <th>Attempts</th>
          <th>Last error</th>
          <th>State</th>
          <th>Action</th>
        </tr>
      </thead>
      <tbody>
        ${
          input.page.entries.length === 0
            ? html`<tr>
                <td colspan="8" class="muted">No dead letters in this view.</td>
              </tr>`
            : input.page.entries.map(
                (entry) =>
                  html`<tr data-dead-letter="${entry.id}">
                    <td>
                      <a href="/admin/dead-letters/${encodeURIComponent(entry.id)}">${entry.id}</a>
                    </td>
                    <td class="time">${entry.createdAt}</td>
                    <td>
                      ${entry.orderId !== undefined ? html`<a href="/admin/orders/${encodeURIComponent(entry.orderId)}" class="mono">${entry.orderId}</a>` : html`<span class="muted">none</span>`}
                    </td>
                    <td>${entry.reason}</td>
                    <td>${entry.attempts}</td>
                    <td class="error-text">${entry.lastError}</td>
                    <td>${stateBadge(entry.state)}</td>
                    <td class="actions">${deadLetterActions(entry, input.canAct)}</td>
                  </tr>`,
              )
        }
      </tbody>
    </table>
    <p class="pager">
      ${!input.isFirstPage ? html`<a href="/admin/dead-letters?state=${input.state}">« Newest</a>` : ''}
      ${
        input.olderCursor !== undefined
          ? html`<a
              href="/admin/dead-letters${queryString({ state: input.state, before: input.olderCursor })}"
              >Older »</a
            >`
          : ''
      }
    </p>`;
}

export function deadLetterPage(input: { entry: DeadLetterEntry; canAct: boolean }): SafeHtml {
  const e = input.entry;
  return html` <dl class="summary">
      <dt>State</dt>
      <dd>
        ${stateBadge(e.state)}
        ${e.resolutionNote !== undefined ? html`${e.resolutionNote} (${e.updatedAt})` : ''}
      </dd>
      <dt>Order</dt>
      <dd>
        ${e.orderId !== undefined ? html`<a href="/admin/orders/${encodeURIComponent(e.orderId)}" class="mono">${e.orderId}</a>` : 'none'}
      </dd>
      <dt>Reason</dt>
      <dd>${e.reason}</dd>
      <dt>Attempts</dt>
      <dd>${e.attempts}</dd>
      <dt>Last error</dt>
      <dd class="error-text">${e.lastError}</dd>
      <dt>Subject / command stream seq</dt>
      <dd class="mono">${e.subject} / ${e.streamSequence}</dd>
      <dt>Dead-lettered</dt>
      <dd>${e.createdAt}</dd>
      <dt>Command</dt>
      <dd><pre>${prettyJson(e.payload)}</pre></dd>
    </dl>
    <p>${deadLetterActions(e, input.canAct)}</p>`;
}

export function confirmDeadLetterPage(input: {
  entry: DeadLetterEntry;
  action: 'replay' | 'discard';
  error: string | undefined;
}): SafeHtml {
  const e = input.entry;
  const replay = input.action === 'replay';
  return html` <p>
      ${
        replay
          ? 'Replaying puts this command back on its normal path (outbox → JetStream → the order’s actor). A command for an order that has moved on is a no-op.'
          : 'Discarding records that nobody will replay this command. The order stays as it is.'
      }
    </p>
    <dl class="summary">
      <dt>Dead letter</dt>
      <dd>${e.id} (${e.reason}, ${e.attempts} attempt(s))</dd>
      <dt>Order</dt>
      <dd class="mono">${e.orderId ?? 'none'}</dd>
      <dt>Last error</dt>
      <dd class="error-text">${e.lastError}</dd>
    </dl>
    ${input.error !== undefined ? html`<p class="bad" role="alert">${input.error}</p>` : ''}
    <form
      method="post"
      action="/admin/dead-letters/${encodeURIComponent(e.id)}/${input.action}"
      data-confirm="${replay ? `Replay dead letter ${e.id}?` : `Discard dead letter ${e.id}? This cannot be undone.`}"
    >
      <label
        >Reason (recorded in the audit trail)
        <textarea name="reason" required minlength="3" maxlength="500" rows="3"></textarea>
      </label>
      <button type="submit" class="${replay ? '' : 'danger'}" id="confirm-${input.action}">
        ${replay ? 'Confirm replay' : 'Confirm discard'}
      </button>
      <a href="/admin/dead-letters/${encodeURIComponent(e.id)}">Cancel</a>
    </form>`;
}

// ---------------------------------------------------------------------------------------------
// Reconciliation, ledger, wallets, audit

/** Runs newest first, and the mismatches of the newest one (the first `mismatches.length`). */
export function reconciliationPage(input: {
  runs: readonly Run[];
  latestMismatches: readonly Mismatch[];
  schedule: readonly ScheduledDay[];
}): SafeHtml {
  const schedule = scheduleSection(input.schedule);
  if (input.runs.length === 0) {
    return html`<p class="muted" id="no-runs">
        No reconciliation has run yet: the schedule runs each day's settlement file, or run one with
        <span class="mono">settle reconcile run --date YYYY-MM-DD</span>.
      </p>
      ${schedule}`;
  }
  const latest = input.runs[0];
  return html`${schedule}
    <section>
      <h2>Runs</h2>
      <div class="scroll">
        <table class="list" id="recon-runs">
          <thead>
            <tr>
              <th>Run</th>
              <th>Day</th>
              <th>File</th>
              <th>State</th>
              <th>Rows</th>
              ${RECONCILIATION_CLASSES.map((c) => html`<th>${c}</th>`)}
              <th>Gross / fee / net in file</th>
              <th>Started (UTC)</th>
              <th>Finished (UTC)</th>
            </tr>
          </thead>
          <tbody>
            ${input.runs.map(
              (r) =>
                html`<tr data-run="${r.id}">
                  <td class="mono">${r.id}</td>
                  <td>${r.day}</td>
                  <td class="mono">${r.fileName}</td>
                  <td>
                    ${stateBadge(r.state)}
                    ${r.error !== undefined ? html`<span class="bad">${r.error}</span>` : ''}
                  </td>
                  <td>${r.rowsLoaded}/${r.rowsTotal}</td>
                  ${RECONCILIATION_CLASSES.map((c) => html`<td>${r.counts[c]}</td>`)}
                  <td>
                    ${minor(r.grossMinor, r.currency)} / ${minor(r.feeMinor, r.currency)} /
                    ${minor(r.netMinor, r.currency)}
                  </td>
                  <td>${r.createdAt}</td>
                  <td>${r.completedAt ?? ''}</td>
                </tr>`,
            )}
          </tbody>
        </table>
      </div>
    </section>
    <section>
      <h2>Mismatches of run <span class="mono">${latest?.id ?? ''}</span></h2>
      ${
        input.latestMismatches.length === 0
          ? html`<p class="muted">none</p>`
          : html`<div class="scroll">
              <table class="list" id="recon-mismatches">
                <thead>
                  <tr>
                    <th>Class</th>
                    <th>Line</th>
                    <th>Order</th>
                    <th>PSP reference</th>
                    <th>In file</th>
                    <th>In ledger</th>
                    <th>Order state</th>
                    <th>Detail</th>
                  </tr>
                </thead>
                <tbody>
                  ${input.latestMismatches.map(
                    (m) =>
                      html`<tr data-mismatch="${m.id}">
                        <td>${m.class}</td>
                        <td>${m.lineNumber ?? ''}</td>
                        <td class="mono">${m.orderId}</td>
                        <td class="mono">${m.pspReference ?? ''}</td>
                        <td>${amountOf(m.fileAmountMinor, latest?.currency ?? '')}</td>
                        <td>${amountOf(m.ledgerAmountMinor, latest?.currency ?? '')}</td>
                        <td>${m.orderState ?? ''}</td>
                        <td>${m.detail}</td>
                      </tr>`,
                  )}
                </tbody>
              </table>
            </div>`
      }
    </section>`;
}

/** The nightly job's days: whether it ran, is retrying (and when), or gave up, and why. */
function scheduleSection(days: readonly ScheduledDay[]): SafeHtml {
  return html`<section>
    <h2>Nightly schedule</h2>
    ${
      days.length === 0
        ? html`<p class="muted" id="no-schedule">
            No day claimed yet (RECONCILIATION_AT sets the time; "off" turns the job off).
          </p>`
        : html`<div class="scroll">
            <table class="list" id="recon-schedule">
              <thead>
                <tr>
                  <th>Day</th>
                  <th>State</th>
                  <th>Attempts</th>
                  <th>Next attempt (UTC)</th>
                  <th>Run</th>
                  <th>Error</th>
                  <th>Updated (UTC)</th>
                </tr>
              </thead>
              <tbody>
                ${days.map(
                  (d) =>
                    html`<tr data-day="${d.day}">
                      <td>${d.day}</td>
                      <td>${stateBadge(d.state)}</td>
                      <td>${d.attempts}</td>
                      <td>${d.nextAttemptAt?.toISOString() ?? ''}</td>
                      <td class="mono">${d.runId ?? ''}</td>
                      <td>${d.error ?? ''}</td>
                      <td>${d.updatedAt.toISOString()}</td>
                    </tr>`,
                )}
              </tbody>
            </table>
          </div>`
    }
  </section>`;
}

const RECONCILIATION_CLASSES = Object.values(RECONCILIATION_CLASS);

function amountOf(amountMinor: bigint | undefined, currency: string): string {
  return amountMinor === undefined ? '' : minor(amountMinor, currency);
}

/**
 * One page of the trial balance, with the whole ledger's totals per currency in the footer on
 * every page (they are what tells whether the ledger balances), and a link to the next page.
 */
export function ledgerPage(input: {
  accounts: readonly AccountBalance[];
  totals: readonly CurrencyBalance[];
  size: number;
  isFirstPage: boolean;
  nextPageToken: string;
}): SafeHtml {
  const size = String(input.size);
  return html` <table class="list" id="trial-balance">
      <thead>
        <tr>
          <th>Account</th>
          <th class="num">Debits</th>
          <th class="num">Credits</th>
          <th class="num">Balance (debit − credit)</th>
        </tr>
      </thead>
      <tbody>
        ${
          input.accounts.length === 0
            ? html`<tr>
                <td colspan="4" class="muted">No ledger entries yet.</td>
              </tr>`
            : input.accounts.map(
                (a) =>
                  html`<tr>
                    <td>${a.account}</td>
                    <td class="num">${minor(a.debitMinor, a.currency)}</td>
                    <td class="num">${minor(a.creditMinor, a.currency)}</td>
                    <td class="num">${minor(a.balanceMinor, a.currency)}</td>
                  </tr>`,
              )
        }
      </tbody>
      <tfoot>
        ${input.totals.map(
          (t) =>
            html`<tr>
              <th>Total ${t.currency} (whole ledger)</th>
              <td class="num">${minor(t.debitMinor, t.currency)}</td>
              <td class="num">${minor(t.creditMinor, t.currency)}</td>
              <td class="num ${t.balanceMinor === 0n ? 'good' : 'bad'}">
                ${minor(t.balanceMinor, t.currency)}
                ${t.balanceMinor === 0n ? '(balanced)' : '(NOT BALANCED)'}
              </td>
            </tr>`,
        )}
      </tfoot>
    </table>
    <p class="pager">
      ${input.isFirstPage ? '' : html`<a href="/admin/ledger${queryString({ size })}">« First</a>`}
      ${
        input.nextPageToken !== ''
          ? html`<a
              href="/admin/ledger${queryString({ size, page_token: input.nextPageToken })}"
              rel="next"
              >Next »</a
            >`
          : html`<span class="muted">End of the ledger.</span>`
      }
    </p>`;
}

export function walletPage(input: {
  sellerId: string;
  wallet: Wallet | undefined;
  entries: readonly LedgerEntry[];
}): SafeHtml {
  return html` <dl class="summary">
      <dt>Seller</dt>
      <dd>${input.sellerId}</dd>
      <dt>Balance</dt>
      <dd>
        ${input.wallet === undefined ? 'no wallet yet' : minor(input.wallet.balanceMinor, input.wallet.currency)}
      </dd>
      <dt>Updated</dt>
      <dd>${input.wallet?.updatedAt}</dd>
    </dl>
    <h2>Latest entries of seller_payable:${input.sellerId}</h2>
    <table class="list">
      <thead>
        <tr>
          <th>Time (UTC)</th>
          <th>Order</th>
          <th>Kind</th>
          <th class="num">Debit</th>
          <th class="num">Credit</th>
        </tr>
      </thead>
      <tbody>
        ${input.entries.map(
          (e) =>
            html`<tr>
              <td>${e.createdAt}</td>
              <td>
                <a href="/admin/orders/${encodeURIComponent(e.orderId)}" class="mono"
                  >${e.orderId}</a
                >
              </td>
              <td>${e.kind}</td>
              <td class="num">${e.debitMinor > 0n ? minor(e.debitMinor, e.currency) : ''}</td>
              <td class="num">${e.creditMinor > 0n ? minor(e.creditMinor, e.currency) : ''}</td>
            </tr>`,
        )}
      </tbody>
    </table>`;
}

export function auditPage(input: {
  records: readonly AuditRecord[];
  nextBeforeId: string | undefined;
}): SafeHtml {
  return html` <table class="list" id="audit">
      <thead>
        <tr>
          <th>#</th>
          <th>Time (UTC)</th>
          <th>Actor</th>
          <th>Action</th>
          <th>Target</th>
          <th>Reason</th>
          <th>Outcome</th>
          <th>Detail</th>
        </tr>
      </thead>
      <tbody>
        ${input.records.map(
          (r) =>
            html`<tr>
              <td>${r.id}</td>
              <td>${r.createdAt}</td>
              <td>${r.actor}</td>
              <td>${r.action}</td>
              <td class="mono">${r.target}</td>
              <td>${r.reason}</td>
              <td>${stateBadge(r.outcome)}</td>
              <td class="mono small">${r.detail}</td>
            </tr>`,
        )}
      </tbody>
    </table>
    <p class="pager">
      ${input.nextBeforeId !== undefined ? html`<a href="/admin/audit?before=${input.nextBeforeId}">Older »</a>` : ''}
    </p>`;
}

export function messagePage(text: string): SafeHtml {
  return html`<p class="bad">${text}</p>`;
}
