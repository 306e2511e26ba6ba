/**
 * The TypeScript client of Settle: the generated ts-proto stubs and a small promise-based wrapper.
 *
 *   import { createSettleClient } from 'settle/client';
 *   const settle = createSettleClient('127.0.0.1:50051');
 *   const { payment } = await settle.payments.createPayment({ requestId, buyerId, currencyCode: 'USD', orders });
 *
 * Requests are partial: a field left out is sent as its proto3 default ('' , 0, empty list), as
 * any gRPC client does. Amounts are int64 minor units, answered as bigint; a request may give one
 * as a bigint, a decimal string or a safe-integer number. A request that cannot be encoded is
 * refused here with a TypeError, before anything is sent. Errors from the server are grpc-js
 * ServiceErrors with `code` and `details`.
 *
 * A node with API_TOKENS wants one of them on every call but AdminService's: give it once as
 * `createSettleClient(address, { apiToken })` and it goes out as `authorization: Bearer <token>`.
 * AdminService calls carry the admin token in their own `metadata` instead.
 *
 * A node whose gRPC port serves TLS (GRPC_TLS_*) is reached with `{ tls: { ca } }`, and one that
 * requires client certificates with `{ tls: { ca, cert, key } }` (PEM text or bytes); a failed
 * handshake rejects with a TlsHandshakeError (UNAVAILABLE) that says what failed (src/client/tls.ts).
 */
import * as grpc from '@grpc/grpc-js';
import { API_TOKEN_CHARACTERS } from '../domain/api-token.js';
import { INT64_MAX, INT64_MIN } from '../domain/money.js';
import { explainTlsFailure, tlsChannel, type SettleClientTls } from './tls.js';
import {
  tailLedgerEntries,
  type LedgerTail,
  type TailLedgerEntriesOptions,
} from './ledger-tail.js';
import {
  CreatePaymentRequest,
  GetPaymentRequest,
  ListPaymentsRequest,
  PaymentServiceClient,
  type DeepPartial,
  type MessageFns,
  type CreatePaymentResponse,
  type GetPaymentResponse,
  type ListPaymentsResponse,
  type WatchPaymentResponse,
} from '../grpc/generated/settle/v1/payment.js';
import {
  GetTrialBalanceRequest,
  GetWalletRequest,
  LedgerServiceClient,
  ListEntriesRequest,
  WalletServiceClient,
  type GetTrialBalanceResponse,
  type GetWalletResponse,
  type ListEntriesResponse,
} from '../grpc/generated/settle/v1/wallet.js';
import {
  AdminServiceClient as AdminClient,
  DiscardDeadLetterRequest,
  GetPaymentTimelineRequest,
  ListDeadLettersRequest,
  RepairLedgerSumsRequest,
  ReplayDeadLetterRequest,
  type DiscardDeadLetterResponse,
  type GetPaymentTimelineResponse,
  type ListDeadLettersResponse,
  type RepairLedgerSumsResponse,
  type ReplayDeadLetterResponse,
} from '../grpc/generated/settle/v1/admin.js';
import {
  GetReportRequest,
  ListMismatchesRequest,
  ListReportsRequest,
  ReconciliationServiceClient,
  RunReconciliationRequest,
  type GetReportResponse,
  type ListMismatchesResponse,
  type ListReportsResponse,
  type RunReconciliationResponse,
} from '../grpc/generated/settle/v1/reconciliation.js';

export {
  PaymentState,
  PaymentOrderState,
  type Payment,
  type PaymentOrder,
  type OrderRequest,
  type CreatePaymentRequest,
  type CreatePaymentResponse,
  type ListPaymentsRequest,
  type ListPaymentsResponse,
  type WatchPaymentResponse,
  PaymentServiceClient,
} from '../grpc/generated/settle/v1/payment.js';
export {
  type Wallet,
  type LedgerEntry,
  type AccountBalance,
  type GetTrialBalanceResponse,
  WalletServiceClient,
  LedgerServiceClient,
} from '../grpc/generated/settle/v1/wallet.js';

export { TLS_FAILURE, TlsHandshakeError, type SettleClientTls, type TlsFailure } from './tls.js';

export {
  NoHeadError,
  NoResumeTokenError,
  TAIL_POLL_MS_MIN,
  TAIL_START,
  type LedgerTail,
  type TailLedgerEntriesOptions,
  type TailStart,
} from './ledger-tail.js';

export {
  AdminServiceClient,
  DeadLetterState,
  type DeadLetter,
  type LedgerSumRepair,
  type RepairLedgerSumsResponse,
  type TimelineEntry,
} from '../grpc/generated/settle/v1/admin.js';

export {
  ReconciliationServiceClient,
  MismatchClass,
  ReportState,
  type Mismatch,
  type Report,
} from '../grpc/generated/settle/v1/reconciliation.js';

/**
 * Per call: `timeoutMs`, the call's deadline in ms from now (a whole number from 1 to
 * 2147483647; the client's default when left out), `metadata` to send with it (at most
 * CALL_METADATA_BYTES_MAX), and `signal`, whose abort cancels the call (it fails CANCELLED).
 */
export type CallOptions = Readonly<{
  timeoutMs?: number;
  metadata?: Record<string, string>;
  signal?: AbortSignal | undefined;
}>;

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

/**
 * A request as callers write it: every field optional, int64 fields as bigint, decimal string or
 * number (ts-proto's DeepPartial).
 */
export type PartialRequest<Req> = DeepPartial<Req>;

/**
 * Builds the full message with ts-proto's `fromPartial`, so a field left out takes its proto3
 * default instead of reaching `encode` as `undefined` (sent as the text "undefined", or failing
 * as INTERNAL on the way out). A number that is not a safe integer is refused: every numeric
 * field of a Settle request is an integer, and above 2^53 a number has already lost digits, so
 * sending it would move a different amount than the caller wrote.
 */
export function buildRequest<Req>(type: MessageFns<Req>, name: string, request: unknown): Req {
  assertSafeIntegers(request, name);
  let built: Req;
  try {
    built = type.fromPartial(request as never);
  } catch (error) {
    // BigInt() of a bad string or a fraction: say which request, not only "Cannot convert".
    throw new TypeError(`${name}: ${String((error as Error).message)}`, { cause: error });
  }
  assertDecimalStrings(request, built, name);
  return built;
}

const DECIMAL_INT64 = /^-?\d{1,19}$/;

/**
 * An int64 given as a string must be written in decimal: BigInt() also reads '0x7D0' (2000),
 * '0b1', '0o7' and surrounding spaces, which no caller means as an amount.
 */
function assertDecimalStrings(source: unknown, built: unknown, path: string): void {
  if (typeof built === 'bigint') {
    if (typeof source === 'string' && !DECIMAL_INT64.test(source)) {
      throw new TypeError(`${path}: '${source.slice(0, 40)}' is not a decimal integer`);
    }
    if (built > INT64_MAX || built < INT64_MIN) {
      throw new TypeError(`${path}: ${built} does not fit an int64`);
    }
  } else if (Array.isArray(source) && Array.isArray(built)) {
    source.forEach((item, index) => assertDecimalStrings(item, built[index], `${path}[${index}]`));
  } else if (
    source !== null &&
    typeof source === 'object' &&
    built !== null &&
    typeof built === 'object' &&
    !(source instanceof Date)
  ) {
    for (const [key, field] of Object.entries(source)) {
      assertDecimalStrings(field, (built as Record<string, unknown>)[key], `${path}.${key}`);
    }
  }
}

function assertSafeIntegers(value: unknown, path: string): void {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) {
      throw new TypeError(
        `${path}: ${value} is not a safe integer; pass an int64 amount as a bigint or a string`,
      );
    }
  } else if (Array.isArray(value)) {
    value.forEach((item, index) => assertSafeIntegers(item, `${path}[${index}]`));
  } else if (value !== null && typeof value === 'object' && !(value instanceof Date)) {
    for (const [key, field] of Object.entries(value)) assertSafeIntegers(field, `${path}.${key}`);
  }
}

/**
 * Largest deadline a call may have, in ms from now (almost 25 days): the longest timer Node sets.
 * Past it grpc-js treats the deadline as none, and past 10^8 hours it throws from inside the
 * channel, where no caller can catch it: the call never settles and the process dies.
 */
const TIMEOUT_MS_MAX = 2_147_483_647;

/** `timeoutMs`, or a TypeError naming `name` when it is no deadline a call can have. */
function checkedTimeoutMs(timeoutMs: number, name: string): number {
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > TIMEOUT_MS_MAX) {
    throw new TypeError(
      `${name} ${timeoutMs} is not a whole number of milliseconds from 1 to ${TIMEOUT_MS_MAX}`,
    );
  }
  return timeoutMs;
}

/**
 * The most request metadata a call may carry, in bytes counted as HTTP/2 counts a header list
 * (each entry's name and value plus 32, RFC 7541 §4.1). gRPC's C-core servers refuse request
 * headers past 8 KiB (some calls) and 16 KiB (all) by default, pseudo-headers included. A
 * Node server (grpc-js, which has no metadata limit of its own) fails a single header past
 * 64 KiB (HPACK COMPRESSION_ERROR) and, here, a list of 150 KB by closing the connection: that
 * call and every other call of this client in flight on it get INTERNAL ("Received RST_STREAM
 * with code 9" or "code 2"), and the server never sees the call to answer anything clearer. Settle reads only `authorization` and `x-request-id`, far below this.
 */
export const CALL_METADATA_BYTES_MAX = 8 * 1024;

/** A string metadata value gRPC can carry: printable ASCII (HTTP/2 header value rules). */
const METADATA_VALUE = /^[\x20-\x7E]*$/;

/**
 * `metadata` as grpc.Metadata, or a TypeError naming `name` when it is over the bound or a value
 * no header can carry (naming the key, never quoting the value: it may be a token).
 */
function checkedMetadata(metadata: Readonly<Record<string, string>>, name: string): grpc.Metadata {
  let bytes = 0;
  for (const [key, value] of Object.entries(metadata)) {
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value) + 32;
  }
  if (bytes > CALL_METADATA_BYTES_MAX) {
    throw new TypeError(
      `${name}: metadata of ${bytes} bytes is over the ${CALL_METADATA_BYTES_MAX} a call may ` +
        'carry (names and values, plus 32 per entry); gRPC servers refuse larger request ' +
        'headers, and this one would fail as INTERNAL without reaching the server',
    );
  }
  const built = new grpc.Metadata();
  for (const [key, value] of Object.entries(metadata)) {
    // grpc-js refuses such a value deep in the call, quoting it whole in its error: an
    // `authorization` token with a stray newline would end up in the caller's logs. Said here
    // by its key alone. A `-bin` key's value is bytes, which grpc-js checks itself.
    if (!key.endsWith('-bin') && !METADATA_VALUE.test(value)) {
      throw new TypeError(`${name}: the value of metadata '${key}' must be printable ASCII`);
    }
    built.set(key, value);
  }
  return built;
}

function unary<Req, Res>(
  type: MessageFns<Req>,
  name: string,
  method: UnaryMethod<Req, Res>,
  defaultTimeoutMs: number,
  /** Sent with every call unless the call's own `metadata` has the same key (the API token). */
  defaultMetadata: Readonly<Record<string, string>> = {},
) {
  return (request: PartialRequest<Req>, options: CallOptions = {}): Promise<Res> =>
    new Promise((resolve, reject) => {
      // Thrown in here, a refused request rejects the promise like any other failed call.
      const message = buildRequest(type, name, request);
      const timeoutMs = checkedTimeoutMs(
        options.timeoutMs ?? defaultTimeoutMs,
        `${name}: timeoutMs`,
      );
      const metadata = checkedMetadata({ ...defaultMetadata, ...options.metadata }, name);
      const { signal } = options;
      const cancel = () => call.cancel();
      const call = method(
        message,
        metadata,
        { deadline: Date.now() + timeoutMs },
        (error, response) => {
          signal?.removeEventListener('abort', cancel);
          if (error) reject(error);
          else resolve(response);
        },
      );
      if (signal?.aborted) cancel();
      else signal?.addEventListener('abort', cancel, { once: true });
    });
}

export type SettleClient = ReturnType<typeof createSettleClient>;

export type SettleClientOptions = Readonly<{
  /** Deadline of a call that gives no `timeoutMs`, in ms (10 s). */
  defaultTimeoutMs?: number;
  /**
   * Plaintext unless given (e.g. grpc.credentials.createSsl()); `tls` builds them for a Settle
   * node, and the two do not go together.
   */
  credentials?: grpc.ChannelCredentials;
  /**
   * TLS to a node that serves it (GRPC_TLS_*): `ca` to trust (else the system's CAs), `cert` and
   * `key` for a node that requires client certificates, `serverName` to check the node's
   * certificate against when the address's host is not one of its names. PEM, text or bytes;
   * checked here (a TypeError names the option). `{}` is TLS trusting the system's CAs.
   */
  tls?: SettleClientTls | undefined;
  /**
   * One of the node's API_TOKENS, sent as `authorization: Bearer <apiToken>` on every call but
   * AdminService's; left out (or ''), none is sent, as a node without API_TOKENS needs.
   */
  apiToken?: string | undefined;
}>;

/** The metadata that carries `apiToken`, or a TypeError that does not quote it. */
function apiTokenMetadata(apiToken: string | undefined): Record<string, string> {
  if (apiToken === undefined || apiToken === '') return {};
  // grpc-js would refuse such a value deep in the call, quoting it in its error. A short token is
  // only a wrong one, the node's to refuse (UNAUTHENTICATED); the CLI words this error as one of
  // the characters alone.
  if (!API_TOKEN_CHARACTERS.test(apiToken)) {
    throw new TypeError(
      'createSettleClient: apiToken must be printable ASCII without spaces, as API_TOKENS are',
    );
  }
  return { authorization: `Bearer ${apiToken}` };
}

/**
 * Connects to a Settle node (plaintext unless `tls` or `credentials` say otherwise, e.g.
 * "127.0.0.1:50051"). Every call has a deadline: `defaultTimeoutMs` (10 s) unless the call gives
 * its own `timeoutMs`; a watch's is 60 minutes. A timeout that is no deadline (0, negative, not an
 * integer, past 2147483647 ms) is a TypeError, and so is an `apiToken` no header can carry, and
 * a `tls` whose PEM does not parse.
 */
export function createSettleClient(address: string, options: SettleClientOptions = {}) {
  if (options.tls !== undefined && options.credentials !== undefined) {
    throw new TypeError('createSettleClient: give tls or credentials, not both');
  }
  const channel =
    options.tls === undefined
      ? {
          credentials: options.credentials ?? grpc.credentials.createInsecure(),
          options: {},
        }
      : tlsChannel(options.tls);
  const { credentials } = channel;
  const tls = options.tls;
  // Only a TLS client's failures are told as handshake failures.
  const explain =
    tls === undefined
      ? (error: unknown) => error
      : (error: unknown) => explainTlsFailure(error, address, tls.cert !== undefined);
  const explained = <Req, Res>(method: UnaryMethod<Req, Res>): UnaryMethod<Req, Res> =>
    tls === undefined
      ? method
      : (request, metadata, callOptions, callback) =>
          method(request, metadata, callOptions, (error, response) =>
            callback(error === null ? null : (explain(error) as grpc.ServiceError), response),
          );
  const timeoutMs = checkedTimeoutMs(
    options.defaultTimeoutMs ?? 10_000,
    'createSettleClient: defaultTimeoutMs',
  );
  const api = apiTokenMetadata(options.apiToken);
  const payments = new PaymentServiceClient(address, credentials, channel.options);
  const wallets = new WalletServiceClient(address, credentials, channel.options);
  const ledger = new LedgerServiceClient(address, credentials, channel.options);
  const admin = new AdminClient(address, credentials, channel.options);
  const reconciliation = new ReconciliationServiceClient(address, credentials, channel.options);
  const listEntries = unary<ListEntriesRequest, ListEntriesResponse>(
    ListEntriesRequest,
    'ListEntriesRequest',
    explained(ledger.listEntries.bind(ledger)),
    timeoutMs,
    api,
  );
  return {
    payments: {
      createPayment: unary<CreatePaymentRequest, CreatePaymentResponse>(
        CreatePaymentRequest,
        'CreatePaymentRequest',
        explained(payments.createPayment.bind(payments)),
        timeoutMs,
        api,
      ),
      getPayment: unary<GetPaymentRequest, GetPaymentResponse>(
        GetPaymentRequest,
        'GetPaymentRequest',
        explained(payments.getPayment.bind(payments)),
        timeoutMs,
        api,
      ),
      listPayments: unary<ListPaymentsRequest, ListPaymentsResponse>(
        ListPaymentsRequest,
        'ListPaymentsRequest',
        explained(payments.listPayments.bind(payments)),
        timeoutMs,
        api,
      ),
      /**
       * Yields the payment now and after each change until it is terminal. The server ends a
       * watch after 60 minutes even if it is not: check the last state and watch again.
       */
      async *watchPayment(
        paymentId: string,
        options: { timeoutMs?: number } = {},
      ): AsyncGenerator<WatchPaymentResponse> {
        const timeoutMs = checkedTimeoutMs(
          options.timeoutMs ?? 60 * 60_000,
          'WatchPayment: timeoutMs',
        );
        const metadata = checkedMetadata(api, 'WatchPayment');
        const stream = payments.watchPayment({ paymentId }, metadata, {
          deadline: Date.now() + timeoutMs,
        });
        try {
          for await (const message of stream as AsyncIterable<WatchPaymentResponse>) yield message;
        } catch (error) {
          throw explain(error);
        } finally {
          stream.cancel();
        }
      },
    },
    wallets: {
      getWallet: unary<GetWalletRequest, GetWalletResponse>(
        GetWalletRequest,
        'GetWalletRequest',
        explained(wallets.getWallet.bind(wallets)),
        timeoutMs,
        api,
      ),
    },
    ledger: {
      listEntries,
      /**
       * Every entry from `resumeToken` on (without one, from the ledger's first, or from its
       * settled head with `from: 'head'`: only what settles from then on), once and in id order,
       * waiting at the head of the ledger for new ones, until `signal` aborts or the loop breaks;
       * `resumeToken` on the result says where to pick up. Each call has a deadline; UNAVAILABLE
       * and DEADLINE_EXCEEDED are retried with backoff up to `retriesMax` times in a row, other
       * failures thrown. See src/client/ledger-tail.ts.
       */
      tailLedgerEntries(options: TailLedgerEntriesOptions = {}): LedgerTail {
        return tailLedgerEntries(
          (request, { timeoutMs: callTimeoutMs, signal }) =>
            listEntries(request, { timeoutMs: callTimeoutMs, signal }),
          timeoutMs,
          options,
        );
      },
      getTrialBalance: unary<GetTrialBalanceRequest, GetTrialBalanceResponse>(
        GetTrialBalanceRequest,
        'GetTrialBalanceRequest',
        explained(ledger.getTrialBalance.bind(ledger)),
        timeoutMs,
        api,
      ),
    },
    /**
     * AdminService; pass `metadata: { authorization: 'Bearer <ADMIN_TOKEN>' }` (a server without
     * ADMIN_TOKEN refuses).
     */
    admin: {
      listDeadLetters: unary<ListDeadLettersRequest, ListDeadLettersResponse>(
        ListDeadLettersRequest,
        'ListDeadLettersRequest',
        explained(admin.listDeadLetters.bind(admin)),
        timeoutMs,
      ),
      replayDeadLetter: unary<ReplayDeadLetterRequest, ReplayDeadLetterResponse>(
        ReplayDeadLetterRequest,
        'ReplayDeadLetterRequest',
        explained(admin.replayDeadLetter.bind(admin)),
        timeoutMs,
      ),
      discardDeadLetter: unary<DiscardDeadLetterRequest, DiscardDeadLetterResponse>(
        DiscardDeadLetterRequest,
        'DiscardDeadLetterRequest',
        explained(admin.discardDeadLetter.bind(admin)),
        timeoutMs,
      ),
      getPaymentTimeline: unary<GetPaymentTimelineRequest, GetPaymentTimelineResponse>(
        GetPaymentTimelineRequest,
        'GetPaymentTimelineRequest',
        explained(admin.getPaymentTimeline.bind(admin)),
        timeoutMs,
      ),
      /**
       * A full scan of the ledger: give it a `timeoutMs` longer than the default; a repair cut by
       * its deadline before it commits writes nothing.
       */
      repairLedgerSums: unary<RepairLedgerSumsRequest, RepairLedgerSumsResponse>(
        RepairLedgerSumsRequest,
        'RepairLedgerSumsRequest',
        explained(admin.repairLedgerSums.bind(admin)),
        timeoutMs,
      ),
    },
    /** ReconciliationService; a RUNNING report is polled with getReport. */
    reconciliation: {
      runReconciliation: unary<RunReconciliationRequest, RunReconciliationResponse>(
        RunReconciliationRequest,
        'RunReconciliationRequest',
        explained(reconciliation.runReconciliation.bind(reconciliation)),
        timeoutMs,
        api,
      ),
      getReport: unary<GetReportRequest, GetReportResponse>(
        GetReportRequest,
        'GetReportRequest',
        explained(reconciliation.getReport.bind(reconciliation)),
        timeoutMs,
        api,
      ),
      listReports: unary<ListReportsRequest, ListReportsResponse>(
        ListReportsRequest,
        'ListReportsRequest',
        explained(reconciliation.listReports.bind(reconciliation)),
        timeoutMs,
        api,
      ),
      listMismatches: unary<ListMismatchesRequest, ListMismatchesResponse>(
        ListMismatchesRequest,
        'ListMismatchesRequest',
        explained(reconciliation.listMismatches.bind(reconciliation)),
        timeoutMs,
        api,
      ),
    },
    close(): void {
      reconciliation.close();
      admin.close();
      payments.close();
      wallets.close();
      ledger.close();
    },
  };
}
