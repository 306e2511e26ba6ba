/**
 * Tails the ledger through ListEntries: pages in entry-id order, the server's `resume_page_token`
 * once caught up, and a pause whenever a page was the last one or stopped at the settled horizon.
 * Every entry comes once, in order, also one whose booking commits late (the server ends each
 * page before the horizon, see README "Tailing the ledger").
 *
 * A position (`resumeToken`) is exact to the entry: the server's token of the page being given
 * out, plus the id of the last entry already given from it (`<page token>.<entry id>`). Resumed
 * there, the tail asks for that page again and skips the ids up to that entry. That is exact
 * because a page ends before the horizon: no entry can still appear at or below its ids, so the
 * page read again holds the same entries up to that id. The id is the highest given so far, kept
 * across pages, so a page read again shorter (another pageSize, a node with a longer settle
 * window) skips nothing twice. Before the first page there is no server token, which is what
 * binds a position to its filters (the server refuses a token under other filters); such a
 * position carries the filters itself (`@<filters>.<entry id>`), checked on resume. A page token
 * alone (ListEntries' `next_page_token` or `resume_page_token`) is a position too.
 *
 * A tail `from: 'head'` asks for the settled head first (ListEntries' `from_head`), a server
 * token like any other: entries settled before it are not given, those that commit later are,
 * each once, also one whose booking was open when the head was read.
 */
import type * as grpc from '@grpc/grpc-js';
import { status as grpcStatus } from '@grpc/grpc-js';
import type { LedgerEntry, ListEntriesResponse } from '../grpc/generated/settle/v1/wallet.js';
import { sleepUnlessAborted } from '../domain/deadline.js';
import { parseInt64Decimal } from '../domain/int64.js';

/** The least pause between polls at the head of the ledger, in ms. */
export const TAIL_POLL_MS_MIN = 100;
const TAIL_POLL_MS_DEFAULT = 1_000;
/** Backoff after a transient failure: doubled from the first to the last, ±20 % jitter. */
const TAIL_BACKOFF_MS_INITIAL = 250;
const TAIL_BACKOFF_MS_MAX = 10_000;
const TAIL_BACKOFF_JITTER = 0.2;
/** Failed calls in a row before the tail gives up: about 4 minutes of backoff. */
const TAIL_RETRIES_MAX_DEFAULT = 30;

/**
 * Codes after which the same call may well succeed later: the node is down, slow, stopping or
 * shedding load (RESOURCE_EXHAUSTED: its database queue full; `settle-retry-delay-ms` says when).
 */
const TRANSIENT_CODES: ReadonlySet<number> = new Set([
  grpcStatus.UNAVAILABLE,
  grpcStatus.DEADLINE_EXCEEDED,
  grpcStatus.RESOURCE_EXHAUSTED,
]);
/** The trailer in which Settle says how long to wait before trying again, in ms. */
const RETRY_DELAY_KEY = 'settle-retry-delay-ms';

export type TailLedgerEntriesOptions = Readonly<{
  /** Only this account's entries, as ListEntries' `account`. */
  account?: string;
  /** Only this payment order's entries, as ListEntries' `order_id`. */
  orderId?: string;
  /**
   * Where to start: a tail's `resumeToken`, or a ListEntries page token made with the same
   * filters. Left out (or ''), the tail starts where `from` says.
   */
  resumeToken?: string;
  /**
   * Where to start without a `resumeToken`: at the ledger's first entry ('first', the default),
   * or at its settled head ('head': the first call asks ListEntries for `from_head`, and the
   * entries settled before it are not given; those committed above a booking still open then
   * come too, after that booking's own). With a `resumeToken` too it is a TypeError: the token
   * says where to start. Until the head is read, the tail's `resumeToken` is '', and a tail
   * resumed from it must say `from: 'head'` again.
   */
  from?: TailStart;
  /** Entries asked for per call, 1 to 500 (100). */
  pageSize?: number;
  /**
   * Pause in ms before asking again after a page that was the last one or stopped at the
   * horizon (1,000; at least TAIL_POLL_MS_MIN).
   */
  pollMs?: number;
  /** Deadline of each ListEntries call in ms; the client's default when left out. */
  timeoutMs?: number;
  /**
   * Failed calls in a row (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) retried before the
   * last failure is thrown (30, with backoff from 250 ms doubling to 10 s: about 4 minutes of
   * pauses, plus each call's deadline when calls time out).
   */
  retriesMax?: number;
  /** Ends the tail: the call in flight is cancelled, a pause cut short, and the iterator ends. */
  signal?: AbortSignal;
  /** Told of each transient failure before its backoff, e.g. to log it. */
  onRetry?: (error: grpc.ServiceError, delayMs: number, attempt: number) => void;
}>;

/** Where a tail without a resume token starts: the ledger's first entry, or its settled head. */
export const TAIL_START = { first: 'first', head: 'head' } as const;
export type TailStart = (typeof TAIL_START)[keyof typeof TAIL_START];

/**
 * The entries, as an async iterable that can be read once, and the position after the entry it
 * gave last. Breaking out of a `for await` ends it as an abort does.
 */
export type LedgerTail = AsyncIterable<LedgerEntry> & {
  /**
   * Where a new tail with the same filters picks up: after the entry given last (or where this
   * tail started, before the first). Persist it after handling an entry to restart exactly there.
   */
  readonly resumeToken: string;
  /**
   * The failure of the latest call while the tail retries it (UNAVAILABLE, DEADLINE_EXCEEDED,
   * RESOURCE_EXHAUSTED);
   * undefined once a call succeeded. Tells a tail that an abort ended while the node was not
   * answering from one that was up to date.
   */
  readonly retryingAfter: grpc.ServiceError | undefined;
};

/** One ListEntries call; `signal` cancels it. */
export type ListEntriesCall = (
  request: Readonly<{
    account: string;
    orderId: string;
    pageSize: number;
    pageToken: string;
    fromHead: boolean;
  }>,
  options: Readonly<{ timeoutMs: number; signal: AbortSignal | undefined }>,
) => Promise<ListEntriesResponse>;

type Position = Readonly<{ pageToken: string; afterEntryId: bigint | undefined }>;
type Filter = Readonly<{ account: string; orderId: string }>;

/** Starts the filters of a position taken before the first server token ('@' is not base64url). */
const FILTER_MARK = '@';

function filterTag(filter: Filter): string {
  return Buffer.from(JSON.stringify([filter.account, filter.orderId])).toString('base64url');
}

function encodePosition(position: Position, filter: Filter): string {
  if (position.afterEntryId === undefined) return position.pageToken;
  const page = position.pageToken === '' ? FILTER_MARK + filterTag(filter) : position.pageToken;
  return `${page}.${position.afterEntryId}`;
}

/** A page token holds no '.' (base64url), so a '.' starts the entry id of a tail's position. */
function decodePosition(token: string, filter: Filter): Position {
  const dot = token.lastIndexOf('.');
  if (dot === -1) return { pageToken: token, afterEntryId: undefined };
  // An entry id is a BIGINT: one past it is no id the node gave out.
  const afterEntryId = parseInt64Decimal(token.slice(dot + 1));
  if (afterEntryId === undefined) {
    throw new TypeError(
      'tailLedgerEntries: resumeToken is neither a tail position nor a ListEntries page token',
    );
  }
  let pageToken = token.slice(0, dot);
  if (pageToken.startsWith(FILTER_MARK)) {
    if (pageToken.slice(FILTER_MARK.length) !== filterTag(filter)) {
      throw new TypeError(
        'tailLedgerEntries: resumeToken was taken with other filters (account, orderId); ' +
          'resume with the filters it was taken with, or start again without it',
      );
    }
    pageToken = '';
  }
  return { pageToken, afterEntryId };
}

/** ListEntries answered without resume_page_token: the node is older than tailing. */
export class NoResumeTokenError extends Error {
  override name = 'NoResumeTokenError';
  constructor() {
    super(
      'tailLedgerEntries: the node answered ListEntries without resume_page_token (a version ' +
        'before the ledger could be tailed); upgrade it to tail the ledger',
    );
  }
}

/**
 * ListEntries answered `from_head` with entries: the node is older than `from_head`, ignored it
 * and gave the ledger's first page. Going on would give the whole ledger instead of what is new.
 */
export class NoHeadError extends Error {
  override name = 'NoHeadError';
  constructor() {
    super(
      'tailLedgerEntries: the node answered from_head with entries (a version before a tail could ' +
        "start at the head); upgrade it to start at the head, or start without from: 'head'",
    );
  }
}

function checkedWhole(value: number, name: string, min: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new TypeError(
      `tailLedgerEntries: ${name} ${value} is not a whole number from ${min} to ${max}`,
    );
  }
  return value;
}

function isServiceError(error: unknown): error is grpc.ServiceError {
  return error instanceof Error && typeof (error as { code?: unknown }).code === 'number';
}

/** The backoff after `attempt` failures, or the node's own retry delay when it is longer. */
function backoffMs(attempt: number, error: grpc.ServiceError): number {
  const base = Math.min(TAIL_BACKOFF_MS_MAX, TAIL_BACKOFF_MS_INITIAL * 2 ** (attempt - 1));
  const jittered = Math.round(base * (1 + TAIL_BACKOFF_JITTER * (2 * Math.random() - 1)));
  const asked = Number(error.metadata?.get(RETRY_DELAY_KEY)[0]);
  return Number.isSafeInteger(asked) && asked > jittered
    ? Math.min(asked, TAIL_BACKOFF_MS_MAX)
    : jittered;
}

/**
 * Tails the ledger with `listEntries` (see the module comment). Options are checked here, before
 * any call: a bad one is a TypeError. A failure other than UNAVAILABLE, DEADLINE_EXCEEDED or
 * RESOURCE_EXHAUSTED, or one of those past `retriesMax` in a row, is thrown from the iteration;
 * `resumeToken` still says where to pick up.
 */
export function tailLedgerEntries(
  listEntries: ListEntriesCall,
  defaultTimeoutMs: number,
  options: TailLedgerEntriesOptions = {},
): LedgerTail {
  const pageSize = checkedWhole(options.pageSize ?? 100, 'pageSize', 1, 500);
  const pollMs = checkedWhole(
    options.pollMs ?? TAIL_POLL_MS_DEFAULT,
    'pollMs',
    TAIL_POLL_MS_MIN,
    3_600_000,
  );
  const timeoutMs = checkedWhole(
    options.timeoutMs ?? defaultTimeoutMs,
    'timeoutMs',
    1,
    2_147_483_647,
  );
  const retriesMax = checkedWhole(
    options.retriesMax ?? TAIL_RETRIES_MAX_DEFAULT,
    'retriesMax',
    0,
    1_000,
  );
  const { signal, onRetry } = options;
  const from = options.from ?? TAIL_START.first;
  if (from !== TAIL_START.first && from !== TAIL_START.head) {
    throw new TypeError(`tailLedgerEntries: from ${String(from)} is neither 'first' nor 'head'`);
  }
  if (from === TAIL_START.head && (options.resumeToken ?? '') !== '') {
    throw new TypeError(
      "tailLedgerEntries: from: 'head' and a resumeToken both say where to start; give one",
    );
  }
  const filter = { account: options.account ?? '', orderId: options.orderId ?? '' };
  let position = decodePosition(options.resumeToken ?? '', filter);
  // Until the node has said where the head is: the next call asks for it, not for a page.
  let headPending = from === TAIL_START.head;
  let started = false;
  let retryingAfter: grpc.ServiceError | undefined;

  async function* entries(): AsyncGenerator<LedgerEntry> {
    let failures = 0;
    while (!signal?.aborted) {
      let page: ListEntriesResponse;
      try {
        page = await listEntries(
          { ...filter, pageSize, pageToken: position.pageToken, fromHead: headPending },
          { timeoutMs, signal },
        );
      } catch (error) {
        // A cancelled call is the abort's doing, not a failure to report.
        if (signal?.aborted) return;
        if (!isServiceError(error) || !TRANSIENT_CODES.has(error.code)) throw error;
        retryingAfter = error;
        if (failures >= retriesMax) throw error;
        failures += 1;
        const delayMs = backoffMs(failures, error);
        onRetry?.(error, delayMs, failures);
        await sleepUnlessAborted(delayMs, signal);
        continue;
      }
      failures = 0;
      retryingAfter = undefined;
      if (headPending) {
        if (page.entries.length > 0) throw new NoHeadError();
        if (page.resumePageToken === '') throw new NoResumeTokenError();
        headPending = false;
        // The first page after the head is asked for at once: what committed since is due.
        position = { pageToken: page.resumePageToken, afterEntryId: undefined };
        continue;
      }
      for (const entry of page.entries) {
        const id = BigInt(entry.entryId);
        // Given out before this tail was resumed here.
        if (position.afterEntryId !== undefined && id <= position.afterEntryId) continue;
        position = { pageToken: position.pageToken, afterEntryId: id };
        yield entry;
        if (signal?.aborted) return;
      }
      // A node from before tailing gives no resume token: going on from '' would give the whole
      // ledger again, so such a tail stops once it has no token left to go on from.
      const next = page.resumePageToken || page.nextPageToken;
      if (next === '') throw new NoResumeTokenError();
      // The highest id given stays: a resume that reads this page shorter skips nothing twice.
      position = { pageToken: next, afterEntryId: position.afterEntryId };
      // Caught up, or held at the horizon: ask again later. A page with nothing in it pauses
      // too, so a server answering empty pages with a next token cannot make this loop spin.
      if (page.nextPageToken === '' || page.stoppedAtHorizon || page.entries.length === 0) {
        await sleepUnlessAborted(pollMs, signal);
      }
    }
  }

  return {
    get resumeToken() {
      return encodePosition(position, filter);
    },
    get retryingAfter() {
      return retryingAfter;
    },
    [Symbol.asyncIterator]() {
      if (started) throw new TypeError('tailLedgerEntries: a tail can be read once; start another');
      started = true;
      return entries();
    },
  };
}
