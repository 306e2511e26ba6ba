/**
 * `settle`: the command-line client of a Settle node, on the gRPC API through src/client (the
 * generated ts-proto stubs): payments, wallets and the ledger, and dead letters and the repair of
 * the trial balance's running sums through AdminService (with `authorization: Bearer
 * <ADMIN_TOKEN>`; replay, discard and a repair are audited with the caller's name, sent as
 * `x-admin-actor` metadata, and the request's reason), and
 * settlement-file reconciliation through ReconciliationService. Against a node with API_TOKENS,
 * every call but AdminService's carries `authorization: Bearer <SETTLE_API_TOKEN>`. Output is a
 * human-readable table by default and JSON with --json (proto3 JSON mapping: the response
 * message, except that `payment create`, `get` and `watch` print the Payment itself, and
 * `ledger --follow` a LedgerEntry a line; amounts are strings). Exit codes: 0 done, 1 the server
 * refused or failed or no node answered, 2 bad usage (nothing was sent). A node whose gRPC port
 * serves TLS is reached with --tls-ca (and --tls-cert, --tls-key where it requires client
 * certificates), or their SETTLE_TLS_* variables; the files are read and checked before anything
 * is sent, and a failed handshake is told as what failed and which option to give.
 *
 *   npm run settle -- payment create --buyer buyer-1 --order seller-a=1999 --order seller-b=500
 *   npm run settle -- payment watch pay_…
 *   npm run settle -- ledger --follow --account seller_payable:seller-a
 *   ADMIN_TOKEN=… npm run settle -- dlq list
 *   ADMIN_TOKEN=… npm run settle -- ledger-sums repair --reason "INC-42: entry edited" --dry-run
 *   npm run settle -- reconcile run --date 2024-05-01
 *
 * The entry point is src/cli/main.ts; this module only exports runCli, so tests can import it.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import {
  createSettleClient,
  TLS_FAILURE,
  TlsHandshakeError,
  type LedgerTail,
  type SettleClient,
  type SettleClientTls,
} from '../client/index.js';
import { ADMIN_TOKEN_CHARACTERS } from '../domain/api-token.js';
import { fileError, pemCertificates, pemKeyPair } from '../domain/pem.js';
import {
  Payment,
  PaymentOrderState,
  PaymentState,
  paymentOrderStateToJSON,
  paymentStateFromJSON,
  paymentStateToJSON,
} from '../grpc/generated/settle/v1/payment.js';
import {
  GetTrialBalanceResponse,
  GetWalletResponse,
  LedgerEntry as LedgerEntryMessage,
  ListEntriesResponse,
  type LedgerEntry,
} from '../grpc/generated/settle/v1/wallet.js';
import { parseInt64Decimal } from '../domain/int64.js';
import { formatMajor } from '../domain/money.js';
import { grpcCodeName } from '../grpc/http-status.js';
import {
  DeadLetterState,
  deadLetterStateFromJSON,
  deadLetterStateToJSON,
  DiscardDeadLetterResponse,
  GetPaymentTimelineResponse,
  ListDeadLettersResponse,
  RepairLedgerSumsResponse,
  ReplayDeadLetterResponse,
  type DeadLetter,
  type LedgerSumAmounts,
} from '../grpc/generated/settle/v1/admin.js';
import {
  ListMismatchesResponse,
  ListReportsResponse,
  MismatchClass,
  mismatchClassFromJSON,
  mismatchClassToJSON,
  Report as ReconciliationReport,
  ReportState,
  reportStateToJSON,
  type InternalCheck,
  type Mismatch,
  type Report,
} from '../grpc/generated/settle/v1/reconciliation.js';

const USAGE = `Usage: settle [options] <command> [arguments]

Commands:
  payment create --buyer <id> --order <seller>=<amount_minor> [--order …] [--currency USD]
                 [--request-id <uuid>]          create a payment (amounts in minor units: 1999 = 19.99)
  payment get <payment_id>                      one payment with its orders
  payment list [--state S] [--buyer B] [--page-size N] [--page-token T]
  payment watch <payment_id>                    print every change until the payment is terminal
                                                (exits 1 if the server or --timeout-ms ends it first)
  payment timeline <payment_id>                 every transition of its orders (needs the admin token)
  wallet <seller_id>                            a seller's wallet balance
  ledger [--account A] [--order O] [--page-size N] [--page-token T]
  ledger --follow [--account A] [--order O] [--resume-token T | --from-now] [--max-entries N]
                                                print entries as they settle, from the ledger's
                                                first (or T, or with --from-now only those that
                                                settle from now) on, until Ctrl-C, --timeout-ms
                                                or N entries; then the token to go on from (stderr)
  trial-balance [--page-size N] [--page-token T]
                                                debits and credits per account, a page at a time,
                                                and the whole ledger's totals; balanced or not
  dlq list [--state OPEN|REPLAYED|DISCARDED|RESOLVED|ALL] [--order O] [--page-size N] [--page-token T]
  dlq replay <id> --reason "<why>"              put a dead letter back on its normal path
  dlq discard <id> --reason "<why>"             record that nobody will replay it
  ledger-sums repair --reason "<why>" [--dry-run]
                                                sum the ledger again and mend the trial balance's
                                                running sums where they differ (--dry-run: only
                                                say where); a full scan: waits an hour, or
                                                --timeout-ms
  reconcile run (--date YYYY-MM-DD | --file F)  reconcile a settlement file (F: a path in the
                                                settlement folder; with --date too unless its name
                                                starts settlement-YYYY-MM-DD); waits for the report
                                                (6 hours, or --timeout-ms; then exits 1 while the
                                                run goes on: see it with reconcile report <id>)
  reconcile report <report_id>                  one report: counts per class, fees booked,
                                                internal check
  reconcile list [--date D] [--page-size N] [--page-token T]
  reconcile mismatches <report_id> [--class C] [--page-size N] [--page-token T]
                                                C: MISSING_IN_LEDGER, MISSING_IN_SETTLEMENT,
                                                AMOUNT_MISMATCH, DUPLICATE or TIMING

Options:
  --addr host:port    Settle gRPC address (env SETTLE_ADDR; default 127.0.0.1:50051)
  --api-token TOKEN   API token for every other command, when the node has API_TOKENS
                      (env SETTLE_API_TOKEN; prefer the env variable)
  --token TOKEN       admin token for dlq, timeline and ledger-sums (env ADMIN_TOKEN; prefer the
                      env variable)
  --actor NAME        your name in the audit trail (env SETTLE_ACTOR, else USER)
  --tls               call over TLS, trusting the system's CAs (env SETTLE_TLS=1); implied by
                      the --tls-* options below
  --tls-ca FILE       the CA certificate (PEM) that signed the node's (env SETTLE_TLS_CA)
  --tls-cert FILE     this client's certificate (PEM), for a node that requires one
                      (env SETTLE_TLS_CERT); with --tls-key
  --tls-key FILE      its private key (PEM, unencrypted) (env SETTLE_TLS_KEY)
  --tls-server-name NAME
                      the name the node's certificate must have, when it is not --addr's host
                      (env SETTLE_TLS_SERVER_NAME)
  --json              print JSON instead of tables
  --timeout-ms N      deadline of each call in ms (default 10000; of a watch, 3600000);
                      bounds the whole wait of reconcile run and of ledger --follow too
  -h, --help          this text
`;

const OPTIONS = {
  addr: { type: 'string' },
  token: { type: 'string' },
  'api-token': { type: 'string' },
  actor: { type: 'string' },
  tls: { type: 'boolean' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'tls-server-name': { type: 'string' },
  json: { type: 'boolean', default: false },
  'timeout-ms': { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
  buyer: { type: 'string' },
  order: { type: 'string', multiple: true },
  currency: { type: 'string' },
  'request-id': { type: 'string' },
  state: { type: 'string' },
  'page-size': { type: 'string' },
  'page-token': { type: 'string' },
  account: { type: 'string' },
  reason: { type: 'string' },
  date: { type: 'string' },
  file: { type: 'string' },
  class: { type: 'string' },
  // No default: checkArguments refuses any option given to a command that does not take it.
  follow: { type: 'boolean' },
  'resume-token': { type: 'string' },
  'from-now': { type: 'boolean' },
  'max-entries': { type: 'string' },
  'dry-run': { type: 'boolean' },
} as const;

type OptionName = keyof typeof OPTIONS;

/** Taken by every command: where and how to call, and how to print. */
const GLOBAL_OPTIONS: readonly OptionName[] = [
  'addr',
  'token',
  'api-token',
  'actor',
  'tls',
  'tls-ca',
  'tls-cert',
  'tls-key',
  'tls-server-name',
  'json',
  'timeout-ms',
  'help',
];

/**
 * What each command takes besides the global options: its own options and its arguments, by
 * name. Anything else is refused, since running on without it would do something other than what
 * was typed: `payment list --date D` would list every date, `payment create … oops` pay anyway.
 */
const COMMANDS: Readonly<
  Record<string, { options: readonly OptionName[]; args: readonly string[] }>
> = {
  'payment create': { options: ['buyer', 'order', 'currency', 'request-id'], args: [] },
  'payment get': { options: [], args: ['payment_id'] },
  'payment list': { options: ['state', 'buyer', 'page-size', 'page-token'], args: [] },
  'payment watch': { options: [], args: ['payment_id'] },
  'payment timeline': { options: [], args: ['payment_id'] },
  wallet: { options: [], args: ['seller_id'] },
  ledger: {
    options: [
      'account',
      'order',
      'page-size',
      'page-token',
      'follow',
      'resume-token',
      'from-now',
      'max-entries',
    ],
    args: [],
  },
  'trial-balance': { options: ['page-size', 'page-token'], args: [] },
  'dlq list': { options: ['state', 'order', 'page-size', 'page-token'], args: [] },
  'dlq replay': { options: ['reason'], args: ['id'] },
  'dlq discard': { options: ['reason'], args: ['id'] },
  'ledger-sums repair': { options: ['reason', 'dry-run'], args: [] },
  'reconcile run': { options: ['date', 'file'], args: [] },
  'reconcile report': { options: [], args: ['report_id'] },
  'reconcile list': { options: ['date', 'page-size', 'page-token'], args: [] },
  'reconcile mismatches': { options: ['class', 'page-size', 'page-token'], args: ['report_id'] },
};

const NOUN_ALIASES: Readonly<Record<string, string>> = {
  payments: 'payment',
  reconciliation: 'reconcile',
};

/**
 * Refuses options and arguments `positionals`' command does not take; an unknown command is left
 * to dispatch, which names the commands it knows.
 */
function checkArguments(positionals: readonly string[], values: Values): void {
  const [first = '', second = ''] = positionals;
  const noun = NOUN_ALIASES[first] ?? first;
  const name = COMMANDS[noun] !== undefined ? noun : `${noun} ${second}`;
  const command = COMMANDS[name];
  if (command === undefined) return;
  const args = positionals.slice(name.split(' ').length);
  for (const [option, value] of Object.entries(values)) {
    const key = option as OptionName;
    if (value === undefined || GLOBAL_OPTIONS.includes(key)) continue;
    if (!command.options.includes(key)) throw new UsageError(`${name} does not take --${option}`);
  }
  if (name !== 'payment create' && (values.order?.length ?? 0) > 1) {
    throw new UsageError(`${name} takes --order once`);
  }
  if (args.length !== command.args.length) {
    const wanted =
      command.args.length === 0 ? 'no arguments' : command.args.map((a) => `<${a}>`).join(' ');
    const extra =
      args.length > command.args.length ? ` (${args.map((a) => `'${a}'`).join(' ')})` : '';
    throw new UsageError(`${name} takes ${wanted}, not ${args.length}${extra}`);
  }
}

type Values = ReturnType<
  typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>
>['values'];

/** A mistake in the command line: printed with the usage hint, exit code 2. */
class UsageError extends Error {}
/** The server answered with an error: exit code 1. */
class ServerError extends Error {}

type Io = Readonly<{
  out: (text: string) => void;
  err: (text: string) => void;
  /**
   * Sets what to print on stderr if Ctrl-C ends the command from now on; undefined clears it. A
   * function is called when the interrupt comes, for a note that changes as the command runs.
   * Left out, nothing is printed.
   */
  onInterrupt?: (note: string | (() => string) | undefined) => void;
}>;

export async function runCli(
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  io: Io,
): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    io.err(`settle: ${error instanceof Error ? error.message : String(error)}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help || positionals.length === 0) {
    (values.help ? io.out : io.err)(USAGE);
    return values.help ? 0 : 2;
  }
  let timeoutMs: number;
  let addr: string;
  let tls: SettleClientTls | undefined;
  try {
    timeoutMs = intOption(values['timeout-ms'], 'timeout-ms', 10_000, 1, 3_600_000);
    // An empty SETTLE_ADDR counts as unset, as an empty ADMIN_TOKEN does.
    addr =
      values.addr !== undefined
        ? checkedAddr(values.addr, '--addr')
        : checkedAddr(env.SETTLE_ADDR || '127.0.0.1:50051', 'SETTLE_ADDR');
    tls = tlsSettings(values, env);
  } catch (error) {
    io.err(
      `settle: ${error instanceof Error ? error.message : String(error)}\n(settle --help lists the commands)\n`,
    );
    return 2;
  }
  const settings = {
    addr,
    tls: tls !== undefined,
    token: values.token ?? env.ADMIN_TOKEN,
    actor: values.actor ?? env.SETTLE_ACTOR ?? env.USER ?? 'cli',
    json: values.json,
    timeoutMs,
  };
  let client: SettleClient;
  try {
    client = createSettleClient(settings.addr, {
      defaultTimeoutMs: timeoutMs,
      // An empty SETTLE_API_TOKEN counts as unset too.
      apiToken: values['api-token'] ?? (env.SETTLE_API_TOKEN || undefined),
      tls,
    });
  } catch (error) {
    // The timeout, the address and the TLS files were checked above: the TLS server name and the
    // token are left to refuse, said in the CLI's own terms.
    const serverName = error instanceof Error && error.message.includes('tls.serverName');
    io.err(
      serverName
        ? 'settle: --tls-server-name (or SETTLE_TLS_SERVER_NAME) must be a host name or address\n'
        : 'settle: the API token (--api-token or SETTLE_API_TOKEN) must be printable ASCII ' +
            'without spaces, as API_TOKENS are\n',
    );
    return 2;
  }
  try {
    checkArguments(positionals, values);
    await dispatch(positionals, values, settings, client, io);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      io.err(`settle: ${error.message}\n(settle --help lists the commands)\n`);
      return 2;
    }
    if (error instanceof ServerError) {
      io.err(`settle: ${error.message}\n`);
      return 1;
    }
    if (isServiceError(error)) {
      io.err(
        `settle: ${grpcCodeName(error.code)}: ${error.details}\n${connectionHint(error, settings)}`,
      );
      return 1;
    }
    io.err(`settle: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  } finally {
    client.close();
  }
}

type Settings = Readonly<{
  addr: string;
  /** Whether calls go over TLS. */
  tls: boolean;
  token: string | undefined;
  actor: string;
  json: boolean;
  timeoutMs: number;
}>;

async function dispatch(
  positionals: readonly string[],
  values: Values,
  settings: Settings,
  client: SettleClient,
  io: Io,
): Promise<void> {
  const [noun, verb, ...rest] = positionals;
  const print = (value: unknown, table: () => string) =>
    io.out(settings.json ? `${JSON.stringify(value, null, 2)}\n` : table());
  switch (noun) {
    case 'payment':
    case 'payments':
      switch (verb) {
        case 'create': {
          const orders = (values.order ?? []).map(parseOrder);
          if (values.buyer === undefined) throw new UsageError('payment create needs --buyer');
          if (orders.length === 0)
            throw new UsageError('payment create needs at least one --order seller=amount_minor');
          const requestId = values['request-id'] ?? randomUUID();
          let payment;
          // Stopped while the call is out, the payment may exist all the same.
          io.onInterrupt?.(`settle: interrupted\n${retryAdvice(requestId)}\n`);
          try {
            ({ payment } = await client.payments.createPayment({
              requestId,
              buyerId: values.buyer,
              currencyCode: values.currency ?? 'USD',
              orders,
            }));
          } catch (error) {
            throw lostAnswerHint(error, requestId);
          } finally {
            io.onInterrupt?.(undefined);
          }
          return print(payment && Payment.toJSON(payment), () => paymentText(payment));
        }
        case 'get': {
          const { payment } = await client.payments.getPayment({
            paymentId: one(rest, 'payment_id'),
          });
          return print(payment && Payment.toJSON(payment), () => paymentText(payment));
        }
        case 'list': {
          const state =
            values.state === undefined
              ? PaymentState.PAYMENT_STATE_UNSPECIFIED
              : paymentStateOption(values.state);
          const response = await client.payments.listPayments({
            pageSize: intOption(values['page-size'], 'page-size', 20, 1, 100),
            pageToken: values['page-token'] ?? '',
            state,
            buyerId: values.buyer ?? '',
          });
          return print(
            {
              payments: response.payments.map((p) => Payment.toJSON(p)),
              nextPageToken: response.nextPageToken,
            },
            () =>
              table(
                ['PAYMENT', 'CREATED (UTC)', 'BUYER', 'STATE', 'AMOUNT', 'ORDERS'],
                response.payments.map((p) => [
                  p.paymentId,
                  time(p.createTime),
                  p.buyerId,
                  shortPaymentState(p.state),
                  money(p.amountMinor, p.currencyCode),
                  String(p.orders.length),
                ]),
              ) +
              (response.nextPageToken !== ''
                ? `next page: --page-token ${response.nextPageToken}\n`
                : ''),
          );
        }
        case 'watch': {
          const paymentId = one(rest, 'payment_id');
          // The 10 s default of other calls would cut a watch short; one the operator gave holds.
          const timeoutMs = values['timeout-ms'] === undefined ? 60 * 60_000 : settings.timeoutMs;
          const deadline = Date.now() + timeoutMs;
          let last: Payment | undefined;
          let printed = '';
          // The server caps a watch (an hour) and then ends it with OK, terminal or not: watch
          // again, within the operator's deadline, a bounded number of times (a server that
          // ended every watch at once must not make this loop spin).
          const again = `watch it again: settle payment watch ${paymentId}`;
          // What the call itself answers when the deadline falls during a watch, in words that
          // say what to do: the same whether the deadline ends a watch or falls between two.
          const atDeadline = () =>
            new ServerError(
              `DEADLINE_EXCEEDED: ${paymentId} was still ` +
                `${last === undefined ? 'unknown' : shortPaymentState(last.state)} at the ` +
                `deadline (--timeout-ms); ${again}`,
            );
          for (let watch = 1; ; watch += 1) {
            // At least 1 ms: the client refuses a deadline of 0 as no deadline at all.
            const remainingMs = Math.max(1, deadline - Date.now());
            const stream = client.payments.watchPayment(paymentId, { timeoutMs: remainingMs });
            try {
              for await (const { payment } of stream) {
                if (payment === undefined) continue;
                last = payment;
                const line = settings.json
                  ? `${JSON.stringify(Payment.toJSON(payment))}\n`
                  : `${time(payment.updateTime)}  ${shortPaymentState(payment.state)}  ` +
                    `${payment.orders.map((o) => `${o.sellerId}=${shortOrderState(o.state)}`).join(' ')}\n`;
                // A new watch starts with the state the last one ended on: printed once.
                if (line !== printed) io.out(line);
                printed = line;
              }
            } catch (error) {
              // The watch's only deadline is the operator's (the server ends its own cap with OK).
              if (isServiceError(error) && error.code === grpcStatus.DEADLINE_EXCEEDED) {
                // Final before the deadline, only the stream's OK came too late: nothing to watch.
                if (last !== undefined && TERMINAL_PAYMENT_STATES.has(last.state)) return;
                throw atDeadline();
              }
              throw error;
            }
            if (last !== undefined && TERMINAL_PAYMENT_STATES.has(last.state)) return;
            const state = last === undefined ? 'unknown' : shortPaymentState(last.state);
            if (watch >= WATCHES_MAX) {
              throw new ServerError(
                `the server ended ${watch} watches of ${paymentId} before it was terminal ` +
                  `(last ${state}); ${again}`,
              );
            }
            const pauseMs = Math.min(WATCH_AGAIN_PAUSE_MS, deadline - Date.now());
            if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
            if (Date.now() >= deadline) throw atDeadline();
          }
        }
        case 'timeline': {
          const response = await client.admin.getPaymentTimeline(
            { paymentId: one(rest, 'payment_id') },
            { metadata: adminMetadata(settings) },
          );
          return print(GetPaymentTimelineResponse.toJSON(response), () =>
            table(
              ['TIME (UTC)', 'ORDER', 'VERSION', 'FROM', 'TO', 'EVENT'],
              response.entries.map((e) => [
                time(e.createTime, true),
                e.orderId,
                e.version.toString(),
                e.fromState,
                e.toState,
                e.eventType,
              ]),
            ),
          );
        }
        default:
          throw new UsageError(
            `unknown payment command '${verb ?? ''}' (create, get, list, watch, timeline)`,
          );
      }
    case 'wallet': {
      const response = await client.wallets.getWallet({
        sellerId: one([verb, ...rest].filter(isString), 'seller_id'),
      });
      const wallet = response.wallet;
      return print(GetWalletResponse.toJSON(response), () =>
        table(
          ['SELLER', 'BALANCE', 'UPDATED (UTC)'],
          wallet === undefined
            ? []
            : [
                [
                  wallet.sellerId,
                  money(wallet.balanceMinor, wallet.currencyCode),
                  time(wallet.updateTime),
                ],
              ],
        ),
      );
    }
    case 'ledger': {
      if (values.follow === true) return followLedger(values, settings, client, io);
      for (const option of ['resume-token', 'from-now', 'max-entries'] as const) {
        if (values[option] !== undefined) throw new UsageError(`--${option} needs --follow`);
      }
      const response = await client.ledger.listEntries({
        account: values.account ?? '',
        orderId: values.order?.[0] ?? '',
        pageSize: intOption(values['page-size'], 'page-size', 100, 1, 500),
        pageToken: values['page-token'] ?? '',
      });
      return print(
        ListEntriesResponse.toJSON(response),
        () =>
          table(ENTRY_HEADERS, response.entries.map(entryCells)) +
          (response.nextPageToken !== ''
            ? `next page: --page-token ${response.nextPageToken}\n`
            : '') +
          // A page cut by the horizon has no next page yet, but more entries may follow.
          (response.stoppedAtHorizon
            ? 'stopped at the settled horizon (a booking below later entries is still open); ' +
              `later entries: --page-token ${response.resumePageToken}, or ledger --follow\n`
            : ''),
      );
    }
    case 'trial-balance': {
      const response = await client.ledger.getTrialBalance({
        pageSize: intOption(values['page-size'], 'page-size', 100, 1, 500),
        pageToken: values['page-token'] ?? '',
      });
      return print(
        GetTrialBalanceResponse.toJSON(response),
        () =>
          table(
            ['ACCOUNT', 'DEBITS', 'CREDITS', 'BALANCE'],
            [
              ...response.accounts,
              ...response.totals.map((t) => ({ ...t, account: `TOTAL ${t.currencyCode}` })),
            ].map((a) => [
              a.account,
              money(a.debitMinor, a.currencyCode),
              money(a.creditMinor, a.currencyCode),
              money(a.balanceMinor, a.currencyCode),
            ]),
          ) +
          (response.balanced ? 'balanced: yes\n' : 'balanced: NO\n') +
          (response.nextPageToken !== ''
            ? `next page: --page-token ${response.nextPageToken}\n`
            : ''),
      );
    }
    case 'dlq':
      return deadLetterCommand(verb, rest, values, settings, client, print);
    case 'ledger-sums':
      return ledgerSumsCommand(verb, values, settings, client, print);
    case 'reconcile':
    case 'reconciliation':
      return reconcileCommand(verb, rest, values, settings, client, print);
    default:
      throw new UsageError(`unknown command '${noun ?? ''}'`);
  }
}

/**
 * `addr` if grpc-js can call it as the address of a node: not empty (grpc-js throws from the
 * channel's constructor), not a URL, not a host without a port (grpc-js would call port 443) and
 * neither an empty host nor a port outside 1-65535.
 * A target with one of grpc-js's schemes (`dns:///host:port`, `unix:/path`) is left to grpc-js.
 */
function checkedAddr(addr: string, name: string): string {
  if (addr === '') {
    throw new UsageError(`${name} is empty: give the node's host:port, e.g. 127.0.0.1:50051`);
  }
  const url = /^https?:\/\/([^/]+)/i.exec(addr);
  if (url !== null) {
    throw new UsageError(`${name} '${addr}' is a URL: give host:port, e.g. ${url[1] ?? ''}`);
  }
  if (/^(dns|unix|unix-abstract|ipv4|ipv6):/.test(addr)) return addr;
  const hostPort = /^(.*):(\d{1,5})$/.exec(addr);
  if (hostPort === null) {
    throw new UsageError(`${name} '${addr}' has no port: e.g. ${addr}:50051`);
  }
  const [, host = '', port = ''] = hostPort;
  // grpc-js would wait out the deadline on an empty host (and Node warns of its URL parsing).
  if (host === '') {
    throw new UsageError(`${name} '${addr}' has no host: e.g. 127.0.0.1${addr}`);
  }
  if (Number(port) < 1 || Number(port) > 65_535) {
    throw new UsageError(`${name} '${addr}': the port must be from 1 to 65535`);
  }
  return addr;
}

/**
 * Whether grpc-js failed `error`'s call for want of a connection (it says so in the details of
 * its UNAVAILABLE), so no node saw the request.
 */
function neverSent(error: ServiceError): boolean {
  return (
    error.code === grpcStatus.UNAVAILABLE &&
    /No connection established|Name resolution failed|ECONNREFUSED/.test(error.details)
  );
}

/**
 * Whether `error` is a deadline that passed before grpc-js had a connection to send the call on
 * (its details say it was still waiting for name resolution, metadata filters or an LB pick), so
 * no node saw the request. Not a sign that no node answers: the deadline was only short.
 */
function deadlineBeforeSending(error: ServiceError): boolean {
  return (
    error.code === grpcStatus.DEADLINE_EXCEEDED &&
    /waiting for (name resolution|metadata filters|LB pick)/i.test(error.details)
  );
}

/**
 * What to do when no connection to the node could be made (grpc-js says so in the details of its
 * UNAVAILABLE), or no TLS connection; empty for an answer the node itself gave.
 */
function connectionHint(error: ServiceError, settings: Settings): string {
  if (error instanceof TlsHandshakeError) return tlsHint(error, settings.addr);
  return unreachableHint(error, settings.addr, settings.tls);
}

/**
 * What to do when no connection to `addr` could be made; empty for an answer the node itself
 * gave. A node serving TLS closes a plaintext client's connection before HTTP/2 begins, which
 * grpc-js words as "Failed to connect".
 */
function unreachableHint(error: ServiceError, addr: string, tls: boolean): string {
  if (!neverSent(error)) return '';
  if (!tls && error.details.includes('Failed to connect')) {
    return (
      `the node at ${addr} closed the connection before answering: if it serves TLS, give ` +
      'the CA that signed its certificate with --tls-ca (or SETTLE_TLS_CA), or --tls\n'
    );
  }
  return `no Settle node answers at ${addr}: start one, or give its address with --addr or SETTLE_ADDR\n`;
}

/** Which option to give after a failed TLS handshake; empty when none would help. */
function tlsHint(error: TlsHandshakeError, addr: string): string {
  switch (error.failure) {
    case TLS_FAILURE.serverNotTrusted:
      return "give the CA that signed the node's certificate with --tls-ca (or SETTLE_TLS_CA)\n";
    case TLS_FAILURE.serverNameMismatch:
      return (
        `connect by a name the node's certificate has (--addr), or give one with ` +
        '--tls-server-name (or SETTLE_TLS_SERVER_NAME)\n'
      );
    case TLS_FAILURE.clientCertificateRequired:
    case TLS_FAILURE.clientCertificateRefused:
      return (
        "give a certificate the node's client CA signed, and its key, with --tls-cert and " +
        '--tls-key (or SETTLE_TLS_CERT and SETTLE_TLS_KEY)\n'
      );
    case TLS_FAILURE.notTls:
      return (
        `the node at ${addr} does not serve TLS: leave out --tls and the --tls-* options ` +
        '(and SETTLE_TLS*)\n'
      );
    case TLS_FAILURE.serverCertificateExpired:
    case TLS_FAILURE.other:
      return '';
  }
}

/**
 * The TLS of the call from the --tls* options, each over its SETTLE_TLS* variable (an empty one
 * counts as unset), with the files read and checked: undefined for plaintext. A file that cannot
 * be read or does not hold what it should is a UsageError naming the option and the file.
 */
function tlsSettings(
  values: Values,
  env: Readonly<Record<string, string | undefined>>,
): SettleClientTls | undefined {
  const setting = (option: 'tls-ca' | 'tls-cert' | 'tls-key' | 'tls-server-name', name: string) => {
    const value = values[option];
    if (value !== undefined) return { value, name: `--${option}` };
    const fromEnv = env[name];
    return fromEnv === undefined || fromEnv === '' ? undefined : { value: fromEnv, name };
  };
  const ca = setting('tls-ca', 'SETTLE_TLS_CA');
  const cert = setting('tls-cert', 'SETTLE_TLS_CERT');
  const key = setting('tls-key', 'SETTLE_TLS_KEY');
  const serverName = setting('tls-server-name', 'SETTLE_TLS_SERVER_NAME');
  const flag = values.tls ?? tlsFlag(env.SETTLE_TLS);
  if (!flag && ca === undefined && cert === undefined && key === undefined) {
    if (serverName !== undefined) {
      throw new UsageError(`${serverName.name} applies to TLS only: give --tls or --tls-ca too`);
    }
    return undefined;
  }
  if ((cert === undefined) !== (key === undefined)) {
    const [given, missing] = cert === undefined ? [key, '--tls-cert'] : [cert, '--tls-key'];
    throw new UsageError(
      `${given?.name ?? ''} needs ${missing} too: a client certificate goes with its key`,
    );
  }
  const read = (file: { value: string; name: string }) => {
    try {
      return readFileSync(file.value, 'latin1');
    } catch (error) {
      throw new UsageError(`${file.name}: cannot read ${file.value} (${fileError(error)})`);
    }
  };
  const tls: { ca?: string; cert?: string; key?: string; serverName?: string } = {};
  if (ca !== undefined) {
    tls.ca = read(ca);
    const cas = pemCertificates(tls.ca);
    if (typeof cas === 'string') throw new UsageError(`${ca.name}: ${ca.value} ${cas}`);
  }
  if (cert !== undefined && key !== undefined) {
    tls.cert = read(cert);
    tls.key = read(key);
    const pair = pemKeyPair(
      { cert: tls.cert, key: tls.key },
      { cert: `${cert.name} (${cert.value})`, key: `${key.name} (${key.value})` },
    );
    if ('problems' in pair) throw new UsageError(pair.problems.join('; '));
  }
  if (serverName !== undefined) tls.serverName = serverName.value;
  return tls;
}

/** SETTLE_TLS as a switch: 1 or true turns TLS on; unset, empty, 0 or false leave it off. */
function tlsFlag(value: string | undefined): boolean {
  if (value === undefined || value === '' || value === '0' || value === 'false') return false;
  if (value === '1' || value === 'true') return true;
  throw new UsageError(`SETTLE_TLS '${value}' is not a switch: give 1 or true, 0 or false`);
}

/**
 * Bearer token and operator name, as AdminService metadata. A token no header can carry is a
 * UsageError that never quotes it (grpc-js would refuse it quoting the whole header value).
 */
function adminMetadata(settings: Settings): Record<string, string> {
  if (
    settings.token !== undefined &&
    settings.token !== '' &&
    !ADMIN_TOKEN_CHARACTERS.test(settings.token)
  ) {
    throw new UsageError(
      'the admin token (--token or ADMIN_TOKEN) must be printable ASCII, with no space at ' +
        'either end',
    );
  }
  return {
    ...(settings.token !== undefined && settings.token !== ''
      ? { authorization: `Bearer ${settings.token}` }
      : {}),
    'x-admin-actor': settings.actor.replace(/[^A-Za-z0-9 ._@-]/g, '_').slice(0, 64) || 'cli',
  };
}

async function deadLetterCommand(
  verb: string | undefined,
  rest: readonly string[],
  values: Values,
  settings: Settings,
  client: SettleClient,
  print: (value: unknown, table: () => string) => void,
): Promise<void> {
  const rows = (letters: readonly DeadLetter[]) =>
    table(
      ['ID', 'TIME (UTC)', 'STATE', 'ORDER', 'REASON', 'ATTEMPTS', 'LAST ERROR / RESOLUTION'],
      letters.map((d) => [
        d.id,
        time(d.createTime),
        deadLetterStateToJSON(d.state).replace(/^DEAD_LETTER_STATE_/, ''),
        d.orderId || '-',
        d.reason,
        String(d.attempts),
        (d.resolutionNote || d.lastError).slice(0, 70),
      ]),
    );
  switch (verb) {
    case 'list': {
      // As payment list --state: the short name or the proto's full one. UNSPECIFIED is the
      // proto's word for no filter, which is ALL here; taken as a state, it would list them all.
      const stateText = (values.state ?? 'OPEN').toUpperCase();
      const state =
        stateText === 'ALL'
          ? DeadLetterState.DEAD_LETTER_STATE_UNSPECIFIED
          : deadLetterStateFromJSON(
              stateText.startsWith('DEAD_LETTER_STATE_')
                ? stateText
                : `DEAD_LETTER_STATE_${stateText}`,
            );
      if (
        state === DeadLetterState.UNRECOGNIZED ||
        (state === DeadLetterState.DEAD_LETTER_STATE_UNSPECIFIED && stateText !== 'ALL')
      ) {
        throw new UsageError('--state must be OPEN, REPLAYED, DISCARDED, RESOLVED or ALL');
      }
      const response = await client.admin.listDeadLetters(
        {
          pageSize: intOption(values['page-size'], 'page-size', 20, 1, 100),
          pageToken: values['page-token'] ?? '',
          state,
          orderId: values.order?.[0] ?? '',
        },
        { metadata: adminMetadata(settings) },
      );
      return print(
        ListDeadLettersResponse.toJSON(response),
        () =>
          rows(response.deadLetters) +
          (response.nextPageToken !== '' ? `older: --page-token ${response.nextPageToken}\n` : ''),
      );
    }
    case 'replay':
    case 'discard': {
      const id = one(rest, 'dead letter id');
      if (values.reason === undefined || values.reason.trim() === '') {
        throw new UsageError(`dlq ${verb} needs --reason "<why>" (it goes into the audit trail)`);
      }
      const response =
        verb === 'replay'
          ? await client.admin.replayDeadLetter(
              { id, reason: values.reason },
              { metadata: adminMetadata(settings) },
            )
          : await client.admin.discardDeadLetter(
              { id, reason: values.reason },
              { metadata: adminMetadata(settings) },
            );
      return print(
        verb === 'replay'
          ? ReplayDeadLetterResponse.toJSON(response)
          : DiscardDeadLetterResponse.toJSON(response),
        () => (response.deadLetter === undefined ? '' : rows([response.deadLetter])),
      );
    }
    default:
      throw new UsageError(`unknown dlq command '${verb ?? ''}' (list, replay, discard)`);
  }
}

/**
 * The deadline of `ledger-sums repair` unless --timeout-ms says otherwise: it sums every entry of
 * the ledger again (the node's own bound is the bulk statement deadline, per statement).
 */
const REPAIR_TIMEOUT_MS_DEFAULT = 3_600_000;

/**
 * `ledger-sums repair`: the (account, currency) and currency sums that differed, before and after
 * (an amount past int64 is shown as such; '-' is a row that was missing or is deleted), and what
 * was done.
 */
async function ledgerSumsCommand(
  verb: string | undefined,
  values: Values,
  settings: Settings,
  client: SettleClient,
  print: (value: unknown, table: () => string) => void,
): Promise<void> {
  if (verb !== 'repair')
    throw new UsageError(`unknown ledger-sums command '${verb ?? ''}' (repair)`);
  if (values.reason === undefined || values.reason.trim() === '') {
    throw new UsageError(
      'ledger-sums repair needs --reason "<why>" (it goes into the audit trail)',
    );
  }
  const dryRun = values['dry-run'] === true;
  const response = await client.admin.repairLedgerSums(
    { reason: values.reason, dryRun },
    {
      metadata: adminMetadata(settings),
      timeoutMs:
        values['timeout-ms'] === undefined ? REPAIR_TIMEOUT_MS_DEFAULT : settings.timeoutMs,
    },
  );
  const amount = (
    sums: LedgerSumAmounts | undefined,
    side: 'debitMinor' | 'creditMinor',
    currency: string,
  ) => {
    if (sums === undefined) return '-';
    const value = sums[side];
    return value === undefined ? 'past int64' : money(value, currency);
  };
  const row = (
    account: string,
    currency: string,
    before?: LedgerSumAmounts,
    after?: LedgerSumAmounts,
  ) => [
    account,
    amount(before, 'debitMinor', currency),
    amount(before, 'creditMinor', currency),
    amount(after, 'debitMinor', currency),
    amount(after, 'creditMinor', currency),
  ];
  return print(RepairLedgerSumsResponse.toJSON(response), () => {
    const pairs = Number(response.accountSumsRepaired);
    // A server older than currency_sums_repaired answers 0 there and lists every currency.
    const currencies = Math.max(
      Number(response.currencySumsRepaired),
      response.currencySumRepairs.length,
    );
    const upTo = `the entries up to ${response.checkpointEntryId}`;
    const accounts = `${response.accountsChecked} accounts`;
    if (pairs === 0 && currencies === 0) {
      return `the running sums of ${accounts} equal ${upTo}: nothing to repair\n`;
    }
    const what =
      `${pairs} (account, currency) ${pairs === 1 ? 'sum' : 'sums'} of ${accounts} and ` +
      `${currencies} currency ${currencies === 1 ? 'sum' : 'sums'}`;
    const listed = response.accountSumRepairs.length;
    const currenciesListed = response.currencySumRepairs.length;
    return (
      table(
        ['ACCOUNT', 'DEBITS BEFORE', 'CREDITS BEFORE', 'DEBITS AFTER', 'CREDITS AFTER'],
        [
          ...response.accountSumRepairs.map((r) =>
            row(r.account, r.currencyCode, r.before, r.after),
          ),
          ...response.currencySumRepairs.map((r) =>
            row(`TOTAL ${r.currencyCode}`, r.currencyCode, r.before, r.after),
          ),
        ],
      ) +
      (listed < pairs
        ? `(the first ${listed} of ${pairs} (account, currency) sums listed)\n`
        : '') +
      (currenciesListed < currencies
        ? `(the first ${currenciesListed} of ${currencies} currency sums listed)\n`
        : '') +
      (response.dryRun
        ? `dry run, nothing written: ${what} differ from ${upTo}; run it again without ` +
          '--dry-run to repair them\n'
        : `repaired ${what}: they now equal ${upTo}\n`)
    );
  });
}

const ENTRY_HEADERS = ['ENTRY', 'TIME (UTC)', 'ACCOUNT', 'ORDER', 'KIND', 'DEBIT', 'CREDIT'];
/**
 * Column widths of `ledger --follow`, which prints rows before it knows the widest: ids up to 8
 * digits, seller ids up to 25 characters (the demo's are 17) and Settle's order ids line up; a
 * longer cell shifts its row only.
 */
const FOLLOW_WIDTHS = [8, 20, 40, 30, 18, 14, 14];

function entryCells(e: LedgerEntry): string[] {
  return [
    e.entryId,
    time(e.createTime),
    e.account,
    e.orderId,
    e.kind,
    e.debitMinor > 0n ? money(e.debitMinor, e.currencyCode) : '',
    e.creditMinor > 0n ? money(e.creditMinor, e.currencyCode) : '',
  ];
}

function followRow(cells: readonly string[]): string {
  return (
    cells
      .map((cell, i) => cell.padEnd(FOLLOW_WIDTHS[i] ?? 0))
      .join('  ')
      .trimEnd() + '\n'
  );
}

/** Deadline of each ListEntries call of `ledger --follow`, whose --timeout-ms bounds the whole. */
const FOLLOW_CALL_TIMEOUT_MS = 10_000;
/** Pause of `ledger --follow` at the head of the ledger before asking again. */
const FOLLOW_POLL_MS = 1_000;

/**
 * `ledger --follow`: prints every entry from --resume-token (or the ledger's first, or with
 * --from-now its settled head) on as it settles, in the listing's columns (a JSON line each with
 * --json), until Ctrl-C, --timeout-ms (exit 0: the follow did what was asked) or --max-entries.
 * On every way out, the token to go on from goes to stderr, after the entry printed last; on
 * Ctrl-C through the interrupt note.
 */
async function followLedger(
  values: Values,
  settings: Settings,
  client: SettleClient,
  io: Io,
): Promise<void> {
  if (values['page-token'] !== undefined) {
    throw new UsageError(
      'ledger --follow starts at --resume-token, which also takes a --page-token value',
    );
  }
  const fromNow = values['from-now'] === true;
  if (fromNow && values['resume-token'] !== undefined) {
    throw new UsageError(
      '--from-now and --resume-token both say where the follow starts: give one of them',
    );
  }
  const entriesMax =
    values['max-entries'] === undefined
      ? undefined
      : intOption(values['max-entries'], 'max-entries', 0, 1, 1_000_000_000);
  const pageSize = intOption(values['page-size'], 'page-size', 100, 1, 500);
  const abort = new AbortController();
  // The tail ends only when aborted: by the timer below, or by Ctrl-C, which ends the process.
  let ended = 'an abort';
  // Without --timeout-ms, a follow runs until Ctrl-C or --max-entries, as `tail -f` does.
  const timer =
    values['timeout-ms'] === undefined
      ? undefined
      : setTimeout(() => {
          ended = `--timeout-ms ${settings.timeoutMs}`;
          abort.abort();
        }, settings.timeoutMs);
  let tail: LedgerTail;
  try {
    tail = client.ledger.tailLedgerEntries({
      account: values.account ?? '',
      orderId: values.order?.[0] ?? '',
      resumeToken: values['resume-token'] ?? '',
      from: fromNow ? 'head' : 'first',
      pageSize,
      pollMs: FOLLOW_POLL_MS,
      timeoutMs: Math.min(settings.timeoutMs, FOLLOW_CALL_TIMEOUT_MS),
      signal: abort.signal,
      // The hint on where to find a node once, not on every retry.
      onRetry: (error, delayMs, attempt) =>
        io.err(
          `settle: ${grpcCodeName(error.code)}: ${error.details}; asking again in ` +
            `${Math.ceil(delayMs / 100) / 10} s\n` +
            (attempt === 1 ? connectionHint(error, settings) : ''),
        ),
    });
  } catch (error) {
    clearTimeout(timer);
    // Every other option was checked above: only the token is left to refuse.
    const why = error instanceof Error ? error.message.replace(/^tailLedgerEntries: /, '') : '';
    throw new UsageError(
      `--resume-token '${(values['resume-token'] ?? '').slice(0, 80)}' is refused: ${why}`,
      { cause: error },
    );
  }
  // Before a from-now follow has its head, there is no token yet: it starts from now again.
  const goOn = () =>
    tail.resumeToken !== ''
      ? `continue with --resume-token ${tail.resumeToken}`
      : fromNow
        ? 'nothing was read: start again with --from-now'
        : 'nothing was read: start again without --resume-token';
  // Read when Ctrl-C comes: a from-now follow has a token once it has read the head, printed
  // entry or not, and a note made earlier would send the operator back to a later head.
  io.onInterrupt?.(() => `settle: interrupted; ${goOn()}\n`);
  if (!settings.json) io.out(followRow(ENTRY_HEADERS));
  let printed = 0;
  try {
    for await (const entry of tail) {
      io.out(
        settings.json
          ? `${JSON.stringify(LedgerEntryMessage.toJSON(entry))}\n`
          : followRow(entryCells(entry)),
      );
      printed += 1;
      if (entriesMax !== undefined && printed >= entriesMax) {
        ended = `--max-entries ${entriesMax}`;
        break;
      }
    }
  } catch (error) {
    const given = values['resume-token'] ?? '';
    // The node refused the token itself: going on with it would be refused again.
    const tokenRefused =
      given !== '' &&
      tail.resumeToken === given &&
      (error as Partial<ServiceError>).code === grpcStatus.INVALID_ARGUMENT;
    io.err(
      tokenRefused
        ? 'settle: ledger --follow read nothing: the node refused --resume-token; start again ' +
            'without it, or with a token printed by a follow with the same --account or --order\n'
        : `settle: ledger --follow stopped after ${entries(printed)}; ${goOn()}\n`,
    );
    throw error;
  } finally {
    clearTimeout(timer);
    io.onInterrupt?.(undefined);
  }
  const failure = tail.retryingAfter;
  if (failure !== undefined) {
    // Ended while no node answered: not a follow that was up to date.
    throw new ServerError(
      `${grpcCodeName(failure.code)}: ${failure.details}\n${connectionHint(failure, settings)}` +
        `${ended} ended the follow after ${entries(printed)} while the node was not answering; ` +
        goOn(),
    );
  }
  io.err(`settle: ${ended} ended the follow after ${entries(printed)}; ${goOn()}\n`);
}

function entries(n: number): string {
  return n === 1 ? '1 entry' : `${n} entries`;
}

/** Watches of one payment the server may end early before `payment watch` gives up. */
const WATCHES_MAX = 1_000;
/** The pause before watching again, so a server that ends every watch at once is not hammered. */
const WATCH_AGAIN_PAUSE_MS = 1_000;

/**
 * How long `reconcile run` polls a RUNNING report, unless --timeout-ms says otherwise, before it
 * gives up (the run goes on).
 */
const RECONCILE_WAIT_MS_MAX = 6 * 3_600_000;
const RECONCILE_POLL_MS = 1_000;

async function reconcileCommand(
  verb: string | undefined,
  rest: readonly string[],
  values: Values,
  settings: Settings,
  client: SettleClient,
  print: (value: unknown, table: () => string) => void,
): Promise<void> {
  const reports = (list: readonly Report[]) =>
    table(
      [
        'REPORT',
        'DATE',
        'STATE',
        'ROWS',
        'MATCHED',
        'MISS_LEDGER',
        'MISS_SETTLE',
        'AMOUNT',
        'DUP',
        'TIMING',
        // The fees of the rows the ledger agrees on, booked as PSP_FEE: not the file's total.
        'FEES_BOOKED',
        'CHECK',
      ],
      list.map((r) => [
        r.reportId,
        r.settlementDate,
        reportStateToJSON(r.state).replace(/^REPORT_STATE_/, ''),
        `${r.rowsLoaded}/${r.rowsTotal}`,
        String(r.counts?.matched ?? ''),
        String(r.counts?.missingInLedger ?? ''),
        String(r.counts?.missingInSettlement ?? ''),
        String(r.counts?.amountMismatch ?? ''),
        String(r.counts?.duplicate ?? ''),
        String(r.counts?.timing ?? ''),
        money(r.settledFeeMinor, r.currencyCode),
        r.internalCheck === undefined ? r.error : internalCheckSummary(r.internalCheck),
      ]),
    ) + list.map(sumsUncheckedNote).join('');
  switch (verb) {
    case 'run': {
      if (values.date === undefined && values.file === undefined) {
        throw new UsageError(
          'reconcile run needs --date YYYY-MM-DD or --file <path in the folder>',
        );
      }
      // A --timeout-ms the operator gave bounds the whole wait, not only each call.
      const waitMs =
        values['timeout-ms'] === undefined ? RECONCILE_WAIT_MS_MAX : settings.timeoutMs;
      const deadline = Date.now() + waitMs;
      // The server answers after its own wait (RECONCILIATION_WAIT_MS, 2 s by default): a shorter
      // deadline cuts the call, not the run, which goes on without a report id to show.
      const started = await client.reconciliation
        .runReconciliation({ settlementDate: values.date ?? '', filePath: values.file ?? '' })
        .catch((error: unknown) => {
          if (!isServiceError(error) || error.code !== grpcStatus.DEADLINE_EXCEEDED) throw error;
          const list = `settle reconcile list${values.date === undefined ? '' : ` --date ${values.date}`}`;
          throw new ServerError(
            `RunReconciliation did not answer within ${settings.timeoutMs} ms; the run may go on ` +
              `without this command: see it with ${list} (the same file run again gets the same ` +
              'report)',
          );
        });
      const stillRunning = (reportId: string) =>
        new ServerError(
          `report ${reportId} is still RUNNING after ${waitMs} ms; the run goes on without ` +
            `this command: see it later with settle reconcile report ${reportId}`,
        );
      let report = started.report;
      while (report?.state === ReportState.REPORT_STATE_RUNNING) {
        const { reportId } = report;
        const leftMs = deadline - Date.now();
        if (leftMs <= 0) throw stillRunning(reportId);
        await new Promise((resolve) => setTimeout(resolve, Math.min(RECONCILE_POLL_MS, leftMs)));
        // The last read is cut at the deadline too: one it cuts finds the run still going.
        const response = await client.reconciliation
          .getReport(
            { reportId },
            { timeoutMs: Math.max(1, Math.min(settings.timeoutMs, deadline - Date.now())) },
          )
          .catch((error: unknown) => {
            const cut =
              isServiceError(error) &&
              error.code === grpcStatus.DEADLINE_EXCEEDED &&
              Date.now() >= deadline;
            throw cut ? stillRunning(reportId) : error;
          });
        report = response.report;
      }
      return print(report && ReconciliationReport.toJSON(report), () =>
        report === undefined ? 'no report\n' : reports([report]),
      );
    }
    case 'report': {
      const { report } = await client.reconciliation.getReport({
        reportId: one(rest, 'report_id'),
      });
      return print(report && ReconciliationReport.toJSON(report), () =>
        report === undefined ? 'no report\n' : reports([report]),
      );
    }
    case 'list': {
      const response = await client.reconciliation.listReports({
        pageSize: intOption(values['page-size'], 'page-size', 20, 1, 500),
        pageToken: values['page-token'] ?? '',
        settlementDate: values.date ?? '',
      });
      return print(
        ListReportsResponse.toJSON(response),
        () =>
          reports(response.reports) +
          (response.nextPageToken !== '' ? `older: --page-token ${response.nextPageToken}\n` : ''),
      );
    }
    case 'mismatches': {
      let mismatchClass = MismatchClass.MISMATCH_CLASS_UNSPECIFIED;
      if (values.class !== undefined) {
        const name = values.class.toUpperCase().replace(/^MISMATCH_CLASS_/, '');
        mismatchClass = mismatchClassFromJSON(`MISMATCH_CLASS_${name}`);
        if (
          mismatchClass === MismatchClass.UNRECOGNIZED ||
          mismatchClass === MismatchClass.MISMATCH_CLASS_UNSPECIFIED
        ) {
          throw new UsageError(
            '--class must be MISSING_IN_LEDGER, MISSING_IN_SETTLEMENT, AMOUNT_MISMATCH, DUPLICATE or TIMING',
          );
        }
      }
      const response = await client.reconciliation.listMismatches({
        reportId: one(rest, 'report_id'),
        mismatchClass,
        pageSize: intOption(values['page-size'], 'page-size', 50, 1, 500),
        pageToken: values['page-token'] ?? '',
      });
      return print(
        ListMismatchesResponse.toJSON(response),
        () =>
          table(
            ['ID', 'CLASS', 'LINE', 'ORDER', 'FILE', 'LEDGER', 'DETAIL'],
            response.mismatches.map((m: Mismatch) => [
              m.mismatchId,
              mismatchClassToJSON(m.mismatchClass).replace(/^MISMATCH_CLASS_/, ''),
              m.lineNumber === undefined ? '' : String(m.lineNumber),
              m.orderId,
              m.fileAmountMinor === undefined ? '' : formatMajor(m.fileAmountMinor),
              m.ledgerAmountMinor === undefined ? '' : formatMajor(m.ledgerAmountMinor),
              m.detail.slice(0, 80),
            ]),
          ) +
          (response.nextPageToken !== ''
            ? `next page: --page-token ${response.nextPageToken}\n`
            : ''),
      );
    }
    default:
      throw new UsageError(
        `unknown reconcile command '${verb ?? ''}' (run, report, list, mismatches)`,
      );
  }
}

// ---------------------------------------------------------------------------------------------
// Formatting and argument helpers

/** The CHECK column: ok, or which checks failed (the report's --json has the details). */
function internalCheckSummary(check: InternalCheck): string {
  const failures = [
    check.ledgerBalanced && check.walletsMatchLedger ? undefined : 'LEDGER/WALLETS DIFFER',
    // Unset: a report from before the running sums were checked, which is not a failure.
    check.ledgerSumsMatch === false ? 'SUMS DIFFER' : undefined,
    // A comparison that could not run: the sums may differ, so not ok either.
    check.ledgerSumsUnchecked === '' ? undefined : 'SUMS UNCHECKED',
  ].filter(isString);
  return failures.length === 0 ? 'ok' : failures.join(', ');
}

/** A line under the table for a report whose running sums could not be compared: why, what next. */
function sumsUncheckedNote(report: Report): string {
  const reason = report.internalCheck?.ledgerSumsUnchecked ?? '';
  if (reason === '') return '';
  return (
    `report ${report.reportId}: the running sums could not be compared with the ledger ` +
    `entries: ${reason}; run the reconciliation again, or ` +
    'settle ledger-sums repair --reason "<why>" --dry-run\n'
  );
}

function isString(value: string | undefined): value is string {
  return value !== undefined;
}

function one(args: readonly string[], what: string): string {
  if (args.length !== 1 || args[0] === undefined || args[0] === '') {
    throw new UsageError(`expected exactly one ${what}`);
  }
  return args[0];
}

function intOption(
  value: string | undefined,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!/^\d{1,9}$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(`--${name} must be a whole number from ${min} to ${max}`);
  }
  return Number(value);
}

function parseOrder(text: string): { sellerId: string; amountMinor: bigint } {
  const match = /^([^=\s]+)=(\d{1,19})$/.exec(text);
  if (match === null) {
    throw new UsageError(`--order '${text}' must look like seller-id=1999 (amount in minor units)`);
  }
  const amountMinor = parseInt64Decimal(match[2] ?? '');
  if (amountMinor === undefined) {
    throw new UsageError(`--order '${text}': the amount does not fit an int64 (minor units)`);
  }
  return { sellerId: match[1] ?? '', amountMinor };
}

function paymentStateOption(text: string): PaymentState {
  const name = text.toUpperCase();
  const state = paymentStateFromJSON(
    name.startsWith('PAYMENT_STATE_') ? name : `PAYMENT_STATE_${name}`,
  );
  if (state === PaymentState.UNRECOGNIZED || state === PaymentState.PAYMENT_STATE_UNSPECIFIED) {
    throw new UsageError(
      `--state must be NOT_STARTED, EXECUTING, SUCCEEDED, PARTIALLY_SUCCEEDED or FAILED`,
    );
  }
  return state;
}

function shortPaymentState(state: PaymentState): string {
  return paymentStateToJSON(state).replace(/^PAYMENT_STATE_/, '');
}

const TERMINAL_PAYMENT_STATES: ReadonlySet<PaymentState> = new Set([
  PaymentState.PAYMENT_STATE_SUCCEEDED,
  PaymentState.PAYMENT_STATE_PARTIALLY_SUCCEEDED,
  PaymentState.PAYMENT_STATE_FAILED,
]);

const ENDED_ORDER_STATES: ReadonlySet<PaymentOrderState> = new Set([
  PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED,
  PaymentOrderState.PAYMENT_ORDER_STATE_FAILED,
  PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED,
]);

function shortOrderState(state: Parameters<typeof paymentOrderStateToJSON>[0]): string {
  return paymentOrderStateToJSON(state).replace(/^PAYMENT_ORDER_STATE_/, '');
}

function money(amountMinor: bigint, currency: string): string {
  return `${formatMajor(amountMinor)} ${currency}`;
}

function time(date: Date | undefined, withMs = false): string {
  if (date === undefined) return '';
  const text = date.toISOString().replace('T', ' ');
  return withMs ? text : text.replace(/\.\d{3}Z$/, 'Z');
}

/** Columns padded to their widest cell; numbers are not right-aligned on purpose (copy-paste). */
function table(headers: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = headers.map((header, i) =>
    Math.max(header.length, ...rows.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) => cell.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function paymentText(payment: Payment | undefined): string {
  if (payment === undefined) return 'no payment\n';
  const head =
    `payment ${payment.paymentId}  ${shortPaymentState(payment.state)}  ` +
    `${money(payment.amountMinor, payment.currencyCode)}  buyer ${payment.buyerId}` +
    (payment.failureReason !== '' ? `  (${payment.failureReason})` : '') +
    `\ncreated ${time(payment.createTime)}, updated ${time(payment.updateTime)}, request id ${payment.requestId}\n\n`;
  return (
    head +
    table(
      ['ORDER', 'SELLER', 'AMOUNT', 'STATE', 'CHECKOUT'],
      payment.orders.map((o) => [
        o.orderId,
        o.sellerId,
        money(o.amountMinor, o.currencyCode),
        shortOrderState(o.state) +
          (o.failureReason !== '' ? ` (${o.failureReason})` : '') +
          // Charged after it ended: money taken and not booked, which a person must settle.
          (o.reviewReason !== ''
            ? `  REVIEW ${o.reviewReason}: charged ${o.pspReference}, not booked`
            : ''),
        // The hosted page of an order that ended takes no card: not a link to hand a buyer.
        ENDED_ORDER_STATES.has(o.state) ? '-' : o.checkoutUrl,
      ]),
    )
  );
}

/**
 * Codes after which a CreatePayment may have been done without its answer arriving: the deadline
 * passed, the connection broke, the node failed or asked for a retry. Run again with the same
 * request id, the command gets that payment; with a fresh one it would make a second.
 */
const MAYBE_DONE_CODES: ReadonlySet<number> = new Set([
  grpcStatus.DEADLINE_EXCEEDED,
  grpcStatus.UNAVAILABLE,
  grpcStatus.ABORTED,
  grpcStatus.CANCELLED,
  grpcStatus.UNKNOWN,
  grpcStatus.INTERNAL,
]);

/** `error`, with how to retry it safely when the payment may have been created anyway. */
function lostAnswerHint(error: unknown, requestId: string): unknown {
  if (
    !isServiceError(error) ||
    !MAYBE_DONE_CODES.has(error.code) ||
    neverSent(error) ||
    deadlineBeforeSending(error)
  ) {
    return error;
  }
  return new ServerError(
    `${grpcCodeName(error.code)}: ${error.details}\n${retryAdvice(requestId)}`,
  );
}

function retryAdvice(requestId: string): string {
  return (
    `the payment may have been created: run it again with --request-id ${requestId} ` +
    'to get that payment rather than make a second'
  );
}

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as { code?: unknown }).code === 'number' &&
    typeof (error as { details?: unknown }).details === 'string'
  );
}
