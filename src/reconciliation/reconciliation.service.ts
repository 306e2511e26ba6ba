/**
 * Runs reconciliations: finds the settlement file in the folder, validates all of it before
 * anything is written (a malformed file is refused with the line, and leaves no trace), then
 * loads and classifies it in the background and keeps the report. One run per (day, file
 * SHA-256): the same file again joins or returns the same run and writes nothing.
 *
 * A run is owned by one node through a lease it renews every 10 s. If that node dies, the
 * next call for the same file takes the run over and starts it again from a clean slate; fees
 * are never booked twice because the ledger allows one PSP_FEE transaction per order.
 */
import { randomBytes } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  SettleError,
  UnavailableError,
} from '../domain/errors.js';
import { sleepUnlessAborted } from '../domain/deadline.js';
import { newId } from '../domain/ids.js';
import { isInt64Decimal } from '../domain/int64.js';
import { decodePageToken, encodePageToken } from '../domain/page-token.js';
import { addUtcDays, isUtcDay, utcDayOf, type UtcDay } from '../domain/utc-day.js';
import type { Db } from '../storage/db.js';
import { isDuplicateKey } from '../storage/errors.js';
import { ledgerSumsDrift } from '../storage/repositories/ledger-sums.repository.js';
import {
  trialBalanceByCurrency,
  walletsNotMatchingLedger,
} from '../storage/repositories/ledger.repository.js';
import type { ReconciliationClass } from './compare.js';
import {
  bookFees,
  claimRun,
  classifyChunk,
  classifyChunks,
  clearRunDataAsOwner,
  completeRun,
  countWallets,
  failRun,
  findRun,
  findRunByFile,
  insertFileRows,
  insertMissingInSettlement,
  insertRun,
  type InternalCheck,
  listMismatches,
  listRuns,
  markDuplicatesInFile,
  type Mismatch,
  purgeStagingRows,
  renewRunLease,
  resolveEarlierMismatches,
  type Run,
  settleLateBookings,
  SUM_DIFFERENCES_MAX,
  SUMS_UNCHECKED_REASON_LENGTH_MAX,
  summarizeRun,
  WALLET_DIFFERENCES_MAX,
  withClassificationLock,
} from './reconciliation.repository.js';
import { RUN_STATE } from './reconciliation.table.js';
import {
  MalformedSettlementFileError,
  readSettlementFile,
  scanSettlementFile,
  type SettlementFileScan,
  type SettlementRow,
} from './settlement-file.js';

/** How long a run's lease lasts without renewal. */
const LEASE_MS = 60_000;
/** How often a running run renews its lease (and records its progress). */
const HEARTBEAT_MS = 10_000;
/** How long stop() waits for runs to notice; a run still busy then is left to its lease. */
const STOP_WAIT_MS = 5_000;
/** How often a caller waiting for another node's run looks at it again. */
const POLL_MS = 200;
/** Consecutive fee batches that may collide with another run's bookings before giving up. */
const FEE_COLLISIONS_MAX = 3;
/** How long a run waits for another's classification before it fails ("run it again"). */
const CLASSIFICATION_LOCK_WAIT_MS = 30 * 60_000;
const PAGE_SIZE_DEFAULT = 100;
const PAGE_SIZE_MAX = 500;
const FILE_NAME_DAY = /^settlement-(\d{4}-\d{2}-\d{2})/;

export type RunSource = Readonly<{
  /** The UTC day, "YYYY-MM-DD": reads settlement-<day>.csv unless filePath is given. */
  settlementDate?: string;
  /** A file inside the folder (relative to it, or absolute). */
  filePath?: string;
}>;

export type ReconciliationEvent =
  /** A file read and validated whole before its run is created or joined (see start()). */
  | Readonly<{ type: 'validated'; file: string; rows: number; ms: number }>
  | Readonly<{ type: 'started'; runId: string; day: UtcDay; file: string; rows: number }>
  | Readonly<{ type: 'phase'; runId: string; phase: RunPhase; ms: number }>
  | Readonly<{ type: 'succeeded'; runId: string; day: UtcDay; ms: number }>
  | Readonly<{ type: 'failed'; runId: string; day: UtcDay; error: unknown }>
  | Readonly<{ type: 'lease-lost'; runId: string }>
  /**
   * The internal check could not compare the running sums with the entries (a full scan past its
   * deadline on a very large ledger, the database gone meanwhile): the run completes with the
   * sums unchecked (SUMS_UNCHECKED, with sumsUncheckedReason's words) rather than fail, since the
   * rest of its work stands. `error` itself goes only to the log.
   */
  | Readonly<{ type: 'sums-check-skipped'; runId: string; error: unknown }>;

/** The steps of a run, in order (reported with their duration). */
export type RunPhase = 'load' | 'classify' | 'fees' | 'missing' | 'report';

export type ReconciliationOptions = Readonly<{
  db: Db;
  /**
   * Where the classification lock is held (one connection per run that holds or waits for it):
   * a pool of its own, so runs waiting for the lock never take the connections the run holding
   * it works with. Default: `db`.
   */
  lockDb?: Db;
  /** The settlement folder (SETTLEMENT_DIR). */
  dir: string;
  nodeName: string;
  /** Rows per staging INSERT and per fee batch. */
  batchRows: number;
  /** The largest file accepted, in rows. */
  rowsMax: number;
  /** How long run() waits for the report before it answers RUNNING. */
  waitMs: number;
  /**
   * Runs this node works on at once; a call that would start one more is refused with
   * RESOURCE_EXHAUSTED (one that joins a run is not). Default 2.
   */
  runsMax?: number;
  /** A run's lease and how often it is renewed (tests shorten them). Default 60 s and 10 s. */
  leaseMs?: number;
  heartbeatMs?: number;
  /**
   * RECONCILIATION_KEEP_DAYS: a settlement day older than this is not reconciled again, because
   * the staging rows its checks compare with are purged (`purgeExpiredStaging`, run by the
   * node's housekeeping). Undefined: no limit.
   */
  keepDays?: number;
  now?: () => Date;
  onEvent?: (event: ReconciliationEvent) => void;
}>;

export type Page<T> = Readonly<{ items: T[]; nextPageToken: string }>;

/** Thrown inside a run that another node took over; the run is then theirs. */
class LeaseLostError extends Error {
  override readonly name = 'LeaseLostError';
}

export class ReconciliationService {
  readonly #options: ReconciliationOptions;
  /** Validations in progress, by file (path, size, mtime); see #validate. */
  readonly #validations = new Map<string, Promise<SettlementFileScan>>();
  get #leaseMs(): number {
    return this.#options.leaseMs ?? LEASE_MS;
  }
  get #heartbeatMs(): number {
    return this.#options.heartbeatMs ?? HEARTBEAT_MS;
  }
  readonly #owner: string;
  readonly #now: () => Date;
  readonly #inFlight = new Map<string, Promise<void>>();
  /**
   * Admissions in progress (a run being looked up, then created, claimed or joined), by day and
   * file SHA-256: calls for one file at the same time share one, so they share its run and
   * never take a second slot for it.
   */
  readonly #admissions = new Map<string, Promise<string>>();
  /** Slots taken by admissions whose run is not in #inFlight yet (see #reserveSlot). */
  #slotsReserved = 0;
  readonly #stop = new AbortController();

  constructor(options: ReconciliationOptions) {
    this.#options = options;
    this.#owner = `${options.nodeName}/${randomBytes(4).toString('hex')}`;
    this.#now = options.now ?? (() => new Date());
  }

  /**
   * Starts (or joins) the reconciliation of a file and returns its report after at most
   * `waitMs` (default: the configured wait): SUCCEEDED or FAILED when it ended in time, RUNNING
   * otherwise. Throws MalformedSettlementFileError (INVALID_ARGUMENT, naming the line) for a bad
   * file, and FailedPreconditionError for a day older than the retention window (`keepDays`),
   * before anything is written.
   */
  async run(source: RunSource, options: { waitMs?: number } = {}): Promise<Run> {
    const runId = await this.start(source);
    return this.#waitFor(runId, options.waitMs ?? this.#options.waitMs);
  }

  /**
   * Starts (or joins) a run and waits until it ends, at most `timeoutMs`. `onPoll` is called
   * while waiting (the scheduler renews its claim there); `signal` ends the wait (not the run).
   */
  async runToCompletion(
    source: RunSource,
    options: { timeoutMs: number; onPoll?: () => Promise<void>; signal?: AbortSignal },
  ): Promise<Run> {
    const runId = await this.start(source);
    const deadline = Date.now() + options.timeoutMs;
    for (;;) {
      const waitMs = Math.min(5_000, Math.max(0, deadline - Date.now()));
      const run = await this.#waitFor(runId, waitMs, options.signal);
      if (run.state !== RUN_STATE.running) return run;
      options.signal?.throwIfAborted();
      if (Date.now() >= deadline) {
        throw new UnavailableError(
          `reconciliation ${runId} did not finish in ${options.timeoutMs} ms`,
        );
      }
      await options.onPoll?.();
    }
  }

  /** Validates the file, then creates or joins its run; returns the run id. */
  async start(source: RunSource): Promise<string> {
    this.#throwIfStopping();
    // A day ahead is told as such, not as its missing file.
    const given = source.settlementDate ?? '';
    if (isUtcDay(given)) this.#checkNotAhead(given, this.#now());
    const file = await resolveSettlementFile(this.#options.dir, source);
    this.#checkNotAhead(file.day, this.#now());
    const scan = await this.#validate(file.path);
    // A stop() that began during the validation is not waiting for this call: it may not admit.
    // From here to the #admissions entry is one synchronous step, so stop() either came before
    // (refused here) or finds the admission and waits for it.
    this.#throwIfStopping();
    const key = `${file.day}\0${scan.sha256}`;
    const shared = this.#admissions.get(key);
    if (shared !== undefined) return shared;
    const admission = this.#admit(file, scan).finally(() => this.#admissions.delete(key));
    this.#admissions.set(key, admission);
    return admission;
  }

  /**
   * Creates, claims (when FAILED or its lease expired) or joins the run of a validated file.
   * Once stop() has begun it writes nothing more; a run it created or claimed while stop() began
   * is launched all the same, and the launch, seeing the stop, marks it FAILED ("interrupted")
   * before stop() returns, so the next call for its file starts it again at once.
   */
  async #admit(file: SettlementFileLocation, scan: SettlementFileScan): Promise<string> {
    const { db } = this.#options;
    const now = this.#now();
    let existing = await findRunByFile(db, file.day, scan.sha256);
    if (existing === undefined) {
      this.#checkRetention(file.day, now);
      this.#throwIfStopping();
      this.#reserveSlot();
      try {
        const id = newId('reconciliationRun', now.getTime());
        const created = await insertRun(db, {
          id,
          day: file.day,
          fileName: file.name,
          fileSha256: scan.sha256,
          rowsTotal: scan.rows,
          owner: this.#owner,
          leaseUntil: new Date(now.getTime() + this.#leaseMs),
          now,
        });
        if (created) {
          this.#launch({ id, day: file.day, path: file.path, scan });
          return id;
        }
      } finally {
        this.#slotsReserved -= 1;
      }
      // Another node created it between our look and our insert.
      existing = await findRunByFile(db, file.day, scan.sha256);
      if (existing === undefined)
        throw new Error(`run of ${file.name} vanished after a duplicate key`);
    }
    const expired = existing.state === RUN_STATE.running && existing.leaseUntil < now;
    if (existing.state === RUN_STATE.failed || expired) {
      this.#checkRetention(file.day, now);
      this.#throwIfStopping();
      this.#reserveSlot();
      try {
        const claimed = await claimRun(db, {
          id: existing.id,
          owner: this.#owner,
          leaseUntil: new Date(now.getTime() + this.#leaseMs),
          now,
        });
        if (claimed) this.#launch({ id: existing.id, day: file.day, path: file.path, scan });
      } finally {
        this.#slotsReserved -= 1;
      }
    }
    return existing.id;
  }

  async getReport(reportId: string): Promise<Run> {
    if (!/^rcn_[0-9A-Z]{26}$/.test(reportId)) {
      throw new InvalidArgumentError('report_id', 'must be a report id such as rcn_01J…');
    }
    const run = await findRun(this.#options.db, reportId);
    if (run === undefined) throw new NotFoundError('report', reportId);
    return run;
  }

  /** Reports, newest first (AIP-158 paging), optionally of one day. */
  async listReports(request: {
    pageSize: number;
    pageToken: string;
    settlementDate: string;
  }): Promise<Page<Run>> {
    const limit = pageSizeOf(request.pageSize);
    if (request.settlementDate !== '' && !isUtcDay(request.settlementDate)) {
      throw new InvalidArgumentError('settlement_date', 'must be a day as YYYY-MM-DD');
    }
    const filter = { settlementDate: request.settlementDate };
    const beforeId = decodePageToken(
      'ListReports',
      request.pageToken,
      filter,
      /^rcn_[0-9A-Z]{26}$/,
    );
    const runs = await listRuns(this.#options.db, {
      ...(request.settlementDate !== '' ? { day: request.settlementDate } : {}),
      ...(beforeId !== undefined ? { beforeId } : {}),
      limit: limit + 1,
    });
    const items = runs.slice(0, limit);
    const last = items[items.length - 1];
    return {
      items,
      nextPageToken:
        runs.length > limit && last ? encodePageToken('ListReports', last.id, filter) : '',
    };
  }

  /** One report's mismatches in the order they were found, optionally of one class. */
  async listMismatches(request: {
    reportId: string;
    class: ReconciliationClass | undefined;
    pageSize: number;
    pageToken: string;
  }): Promise<Page<Mismatch>> {
    const limit = pageSizeOf(request.pageSize);
    await this.getReport(request.reportId);
    const filter = { reportId: request.reportId, class: request.class };
    const afterId = decodePageToken('ListMismatches', request.pageToken, filter, isInt64Decimal);
    const mismatches = await listMismatches(this.#options.db, {
      runId: request.reportId,
      ...(request.class !== undefined ? { class: request.class } : {}),
      ...(afterId !== undefined ? { afterId: BigInt(afterId) } : {}),
      limit: limit + 1,
    });
    const items = mismatches.slice(0, limit);
    const last = items[items.length - 1];
    return {
      items,
      nextPageToken:
        mismatches.length > limit && last
          ? encodePageToken('ListMismatches', last.id.toString(), filter)
          : '',
    };
  }

  /**
   * Stops taking runs and aborts the ones in progress between two statements; each is marked
   * FAILED ("interrupted"), so the next call for its file starts it again at once. Admissions in
   * progress (a run being looked up, created or claimed) are waited for first: one that wrote
   * its run launches it, and that run is interrupted and waited for like the others, rather than
   * start after stop() returned (and the caller closed the pool). STOP_WAIT_MS bounds the whole
   * wait: a statement still running then is left behind; its run's lease expires and another
   * node can take it over.
   */
  async stop(): Promise<void> {
    this.#stop.abort(new UnavailableError('the node is stopping'));
    const waited = new AbortController();
    const deadline = sleepUnlessAborted(STOP_WAIT_MS, waited.signal);
    try {
      await Promise.race([Promise.allSettled([...this.#admissions.values()]), deadline]);
      await Promise.race([Promise.allSettled([...this.#inFlight.values()]), deadline]);
    } finally {
      // The timer must not keep the process alive once everything has ended.
      waited.abort();
    }
  }

  #throwIfStopping(): void {
    if (this.#stop.signal.aborted) throw new UnavailableError('the node is stopping');
  }

  /**
   * A day older than the retention window is refused before anything is written: its checks
   * across days (DUPLICATE, settled by another day's file) would compare with purged rows, and
   * its own rows would be purged by the next housekeeping pass. Its existing reports stay
   * readable.
   */
  #checkRetention(day: UtcDay, now: Date): void {
    const { keepDays } = this.#options;
    if (keepDays === undefined || day >= keepFrom(now, keepDays)) return;
    throw new FailedPreconditionError(
      `settlement day ${day} is older than the retention window ` +
        `(RECONCILIATION_KEEP_DAYS=${keepDays}, so days from ${keepFrom(now, keepDays)}): the ` +
        'staging rows of older days are purged and it could not be checked against them; ' +
        'raise RECONCILIATION_KEEP_DAYS to reconcile it',
    );
  }

  /**
   * Reads and validates the whole file (the SHA-256 that keys its run, the row count), once for
   * all the calls that ask for the same file at the same time: the same path, size and mtime.
   * A file of a million rows takes seconds to read; every concurrent caller used to read it.
   */
  async #validate(filePath: string): Promise<SettlementFileScan> {
    const info = await stat(filePath);
    const key = `${filePath}\0${info.size}\0${info.mtimeMs}`;
    const shared = this.#validations.get(key);
    if (shared !== undefined) return shared;
    const started = Date.now();
    const scan = scanSettlementFile(filePath, {
      rowsMax: this.#options.rowsMax,
      signal: this.#stop.signal,
    }).then((done) => {
      this.#options.onEvent?.({
        type: 'validated',
        file: path.basename(filePath),
        rows: done.rows,
        ms: Date.now() - started,
      });
      return done;
    });
    this.#validations.set(key, scan);
    try {
      return await scan;
    } finally {
      this.#validations.delete(key);
    }
  }

  /**
   * A day more than one day ahead of this node's UTC day has no settlement file yet, and its run
   * would stand as the latest reconciled day (metrics, alerts) until that day came. One day of
   * slack allows for a PSP whose day is cut at a local midnight ahead of UTC, and for clocks.
   */
  #checkNotAhead(day: UtcDay, now: Date): void {
    const latest = addUtcDays(utcDayOf(now), 1);
    if (day <= latest) return;
    throw new FailedPreconditionError(
      `settlement day ${day} has not begun (this node's UTC day is ${utcDayOf(now)}): no ` +
        `settlement file can exist for it yet; the latest day that can be reconciled is ${latest}`,
    );
  }

  /**
   * Takes one of the node's runsMax slots for a run about to be created or claimed, or refuses
   * with RESOURCE_EXHAUSTED. The check and the take are one synchronous step: when a run counted
   * only once launched, after its INSERT's await, calls for other files at the same moment all
   * passed the check, and the runs beyond runsMax queued for the lock pool's connections. The
   * caller gives the slot back once the run is in #inFlight (which counts it from then) or was
   * not launched.
   */
  #reserveSlot(): void {
    const runsMax = this.#options.runsMax ?? 2;
    const busy = this.#inFlight.size + this.#slotsReserved;
    if (busy >= runsMax) {
      throw new ResourceExhaustedError(
        `this node is already running ${busy} reconciliations, the most it runs at once; ` +
          'retry when one has ended',
      );
    }
    this.#slotsReserved += 1;
  }

  #launch(run: { id: string; day: UtcDay; path: string; scan: SettlementFileScan }): void {
    const work = this.#execute(run).finally(() => this.#inFlight.delete(run.id));
    this.#inFlight.set(run.id, work);
  }

  /** The run once it ended, or as it is after `waitMs` (or when `signal` aborts). */
  async #waitFor(runId: string, waitMs: number, signal?: AbortSignal): Promise<Run> {
    const { db } = this.#options;
    const deadline = Date.now() + waitMs;
    const local = this.#inFlight.get(runId);
    if (local !== undefined && waitMs > 0)
      await Promise.race([local, sleepUnlessAborted(waitMs, signal)]);
    for (;;) {
      const run = await findRun(db, runId);
      if (run === undefined) throw new NotFoundError('report', runId);
      if (run.state !== RUN_STATE.running || Date.now() >= deadline || signal?.aborted) return run;
      await sleepUnlessAborted(Math.min(POLL_MS, deadline - Date.now()), signal);
    }
  }

  async #execute(run: { id: string; day: UtcDay; path: string; scan: SettlementFileScan }) {
    const { db, batchRows, rowsMax, onEvent } = this.#options;
    const signal = this.#stop.signal;
    const started = Date.now();
    // The lease is renewed by a heartbeat, not per batch: one long statement (the internal check
    // of a large ledger) must not let another node take a healthy run over. The work checks
    // between statements whether the run was stopped or lost.
    let loaded = 0;
    let lost = false;
    let renewedAt = Date.now();
    const heartbeat = setInterval(() => {
      const now = this.#now();
      // The lease a renewal gives runs from when it was sent.
      const sentAt = Date.now();
      renewRunLease(db, {
        id: run.id,
        owner: this.#owner,
        leaseUntil: new Date(now.getTime() + this.#leaseMs),
        rowsLoaded: loaded,
        now,
      }).then(
        (ours) => {
          lost ||= !ours;
          if (ours) renewedAt = sentAt;
        },
        // A failed renewal is retried at the next beat; once the lease would end before the next
        // one, another node may soon hold the run: this one stops as if told so.
        () => (lost ||= Date.now() - renewedAt > this.#leaseMs - this.#heartbeatMs),
      );
    }, this.#heartbeatMs);
    const stillOurs = async () => {
      signal.throwIfAborted();
      if (lost) throw new LeaseLostError(`run ${run.id} was taken over`);
    };
    onEvent?.({
      type: 'started',
      runId: run.id,
      day: run.day,
      file: path.basename(run.path),
      rows: run.scan.rows,
    });
    let phaseStarted = Date.now();
    const phaseDone = (phase: RunPhase) => {
      const now = Date.now();
      onEvent?.({ type: 'phase', runId: run.id, phase, ms: now - phaseStarted });
      phaseStarted = now;
    };
    try {
      // What an earlier attempt of this run left; a run taken over meanwhile stops at the check.
      if (!(await clearRunDataAsOwner(db, { id: run.id, owner: this.#owner }))) {
        throw new LeaseLostError(`run ${run.id} was taken over`);
      }
      let second: SettlementFileScan | undefined;
      // One INSERT in flight while the next batch is parsed: memory stays at two batches.
      let batch: SettlementRow[] = [];
      let inFlight: Promise<void> = Promise.resolve();
      const flush = async () => {
        await inFlight;
        const rows = batch;
        batch = [];
        inFlight = insertFileRows(db, run.id, rows).then(() => {
          loaded += rows.length;
        });
        // Observed at the next flush; this keeps a failure from being an unhandled rejection.
        inFlight.catch(() => undefined);
        await stillOurs();
      };
      for await (const row of readSettlementFile(run.path, { rowsMax, signal }, (done) => {
        second = done;
      })) {
        batch.push(row);
        if (batch.length >= batchRows) await flush();
      }
      await flush();
      await inFlight;
      if (second?.sha256 !== run.scan.sha256) {
        throw new FailedPreconditionError(
          `${path.basename(run.path)} changed while it was read; run it again`,
        );
      }
      await renewRunLease(db, {
        id: run.id,
        owner: this.#owner,
        leaseUntil: new Date(this.#now().getTime() + this.#leaseMs),
        rowsLoaded: loaded,
        now: this.#now(),
      });
      await stillOurs();
      phaseDone('load');

      // From here to the report, one run at a time: its checks read the other runs' results.
      await withClassificationLock(
        this.#options.lockDb ?? db,
        { waitMsMax: CLASSIFICATION_LOCK_WAIT_MS, stillOurs },
        async (stillHeld) => {
          // Between statements: the run is still ours, and so is the lock.
          const stillOursLocked = async () => {
            await stillOurs();
            await stillHeld();
          };
          await markDuplicatesInFile(db, run.id);
          for (const chunk of classifyChunks(loaded)) {
            await classifyChunk(db, { runId: run.id, day: run.day, ...chunk, now: this.#now() });
            await stillOursLocked();
          }
          phaseDone('classify');
          await this.#bookFees(run.id, loaded, stillOursLocked);
          phaseDone('fees');
          await settleLateBookings(db, {
            runId: run.id,
            day: run.day,
            now: this.#now(),
            newLedgerId: () => newId('ledgerTransaction', this.#now().getTime()),
          });
          await insertMissingInSettlement(db, { runId: run.id, day: run.day, now: this.#now() });
          await resolveEarlierMismatches(db, run.id);
          await stillOursLocked();
          phaseDone('missing');
          const summary = await summarizeRun(db, run.id);
          const internalCheck = await this.#internalCheck(run.id);
          await stillOursLocked();
          const completed = await completeRun(db, {
            id: run.id,
            owner: this.#owner,
            summary,
            internalCheck,
            now: this.#now(),
          });
          if (!completed) throw new LeaseLostError(`run ${run.id} was taken over`);
          phaseDone('report');
        },
      );
      onEvent?.({ type: 'succeeded', runId: run.id, day: run.day, ms: Date.now() - started });
    } catch (error) {
      if (error instanceof LeaseLostError) {
        // Taken over: the new owner's, nothing to undo. Lost because renewals failed and nobody
        // took it: still ours in the database, so it is undone and failed like any failure, to
        // be run again at once rather than stay RUNNING under an expired lease. Both statements
        // check the owner, so they do nothing in the first case.
        await clearRunDataAsOwner(db, { id: run.id, owner: this.#owner }).catch(() => undefined);
        await failRun(db, {
          id: run.id,
          owner: this.#owner,
          error: 'its lease could not be renewed (the database did not answer); run it again',
          now: this.#now(),
        }).catch(() => undefined);
        onEvent?.({ type: 'lease-lost', runId: run.id });
        return;
      }
      const reason = failedRunReason(error, {
        fileName: path.basename(run.path),
        aborted: signal.aborted,
      });
      // A failed run's staging rows and mismatches would stay until the retention purge (a
      // changed file is a new run, and this one is never run again): they go now, best effort,
      // and only while the run is still this node's (another may have taken it over).
      await clearRunDataAsOwner(db, { id: run.id, owner: this.#owner }).catch(() => undefined);
      await failRun(db, { id: run.id, owner: this.#owner, error: reason, now: this.#now() }).catch(
        () => undefined,
      );
      onEvent?.({ type: 'failed', runId: run.id, day: run.day, error });
    } finally {
      clearInterval(heartbeat);
    }
  }

  /**
   * Books the PSP's fee of every settled row (see bookFees), a range of lines at a time, so
   * psp_receivable nets to what the PSP pays out.
   */
  async #bookFees(runId: string, rows: number, stillOurs: () => Promise<void>): Promise<void> {
    const { db } = this.#options;
    // Fresh per attempt: a run taken over never reuses the ids of the attempt before.
    const idPrefix = newId('ledgerTransaction', this.#now().getTime()).slice(0, 20);
    for (const chunk of classifyChunks(rows)) {
      for (let collisions = 0; ; collisions += 1) {
        try {
          await bookFees(db, { runId, ...chunk, idPrefix, now: this.#now() });
          break;
        } catch (error) {
          // Another run booked one of these orders' fees meanwhile: book the rest again.
          if (isDuplicateKey(error) && collisions < FEE_COLLISIONS_MAX) continue;
          throw error;
        }
      }
      await stillOurs();
    }
  }

  /**
   * The seed's internal check: the trial balance is zero, every wallet equals its ledger, and
   * the running sums GetTrialBalance reads equal the entries they count. The first two sum every
   * entry and never read the sums, so without the third, sums gone wrong (an entry changed by
   * hand below their checkpoint, a pass that added an entry twice) would have GetTrialBalance
   * answer wrong totals while every check passed. The third is the dry run of the sums' repair,
   * so the report names exactly the pairs `settle ledger-sums repair` mends; it reads a page of
   * accounts per statement, and stops between pages when the node stops.
   */
  async #internalCheck(runId: string): Promise<InternalCheck> {
    const { db, onEvent } = this.#options;
    const signal = this.#stop.signal;
    const totalList = await trialBalanceByCurrency(db);
    const differences = await walletsNotMatchingLedger(db);
    let unchecked: string | undefined;
    const drift = await ledgerSumsDrift(db, { listedMax: SUM_DIFFERENCES_MAX, signal }).catch(
      (error: unknown) => {
        // A node stopping fails the run as interrupted, to be run again, not as sums unchecked.
        if (signal.aborted) throw error;
        onEvent?.({ type: 'sums-check-skipped', runId, error });
        unchecked = sumsUncheckedReason(error);
        return undefined;
      },
    );
    return {
      ledgerBalanced: totalList.every((total) => total.balanceMinor === 0n),
      totals: totalList,
      walletsChecked: await countWallets(db),
      walletsMatchLedger: differences.length === 0,
      walletsNotMatching: BigInt(differences.length),
      // The stored and served shape has no currencies: a wallet in the wrong currency shows as
      // a difference with equal amounts.
      walletDifferences: differences
        .slice(0, WALLET_DIFFERENCES_MAX)
        .map(({ sellerId, walletMinor, ledgerMinor }) => ({ sellerId, walletMinor, ledgerMinor })),
      ledgerSumsMatch:
        drift === undefined
          ? undefined
          : drift.pairsDiffering === 0 && drift.currenciesDiffering === 0,
      ledgerSumsUnchecked: unchecked,
      ledgerSumsNotMatching: BigInt(drift?.pairsDiffering ?? 0),
      ledgerSumDifferences: drift?.accounts ?? [],
      currencySumsNotMatching: BigInt(drift?.currenciesDiffering ?? 0),
      // As few as the pairs, and as the repair lists: the count says how many more there are.
      currencySumDifferences: drift?.currencies ?? [],
    };
  }
}

/**
 * Why the running sums could not be compared, as a report stores and serves it: the kind of
 * failure (mysql2's code and errno, or the error's class), never its message, which can quote
 * the statement and the values in it. The whole error is in the node's log (sums-check-skipped).
 */
export function sumsUncheckedReason(error: unknown): string {
  // A wrapped driver error (UnavailableError's cause) says more than its wrapper.
  const chain: unknown[] = [error];
  for (let link = error; link instanceof Error && chain.length < 4;) {
    link = link.cause;
    if (link !== undefined) chain.push(link);
  }
  const codes = chain.map(codeOf).filter((code) => code !== undefined);
  if (codes.includes('PROTOCOL_SEQUENCE_TIMEOUT')) {
    return 'a statement ran past its deadline (MYSQL_BULK_STATEMENT_TIMEOUT_MS)';
  }
  const driver = chain.find(
    (link) => typeof (link as { errno?: unknown } | null)?.errno === 'number',
  );
  const errno = (driver as { errno?: number } | undefined)?.errno;
  const kind =
    codeOf(driver) ?? codes[0] ?? safeWord((error as { name?: unknown } | null)?.name) ?? 'unknown';
  const reason = `the comparison failed: ${kind}${errno === undefined ? '' : ` (errno ${errno})`}`;
  return reason.slice(0, SUMS_UNCHECKED_REASON_LENGTH_MAX);
}

/** An error's `code`, when it is a word such as ER_NO_SUCH_TABLE (a code could be anything). */
function codeOf(error: unknown): string | undefined {
  return safeWord((error as { code?: unknown } | null)?.code);
}

function safeWord(value: unknown): string | undefined {
  return typeof value === 'string' && /^[A-Za-z][A-Za-z0-9_]{0,63}$/.test(value)
    ? value
    : undefined;
}

/**
 * What a FAILED report says, to whoever reads it over gRPC: the message of an expected failure
 * (a SettleError, written for a person), or a fixed sentence for anything else (a bug, a
 * database error), whose raw message and stack go only to the log (the `failed` event).
 */
export function failedRunReason(
  error: unknown,
  context: Readonly<{ fileName: string; aborted: boolean }>,
): string {
  if (context.aborted) return 'interrupted: the node stopped; run it again';
  if (error instanceof MalformedSettlementFileError) {
    // The scan before the run read the same file whole without fault: it changed since.
    return `${context.fileName} changed while it was read (${error.message}); run it again`;
  }
  if (error instanceof SettleError) return error.message;
  return (
    'an internal error stopped the run (its cause is in the log of the node that ran it, ' +
    'under the report id); run it again, and report it if it fails the same way'
  );
}

export type SettlementFileLocation = Readonly<{ path: string; name: string; day: UtcDay }>;

/** The oldest settlement day the retention window keeps on `now`'s day. */
export function keepFrom(now: Date, keepDays: number): UtcDay {
  return addUtcDays(utcDayOf(now), -keepDays);
}

/**
 * Retention's housekeeping task: deletes (bounded, `purgeStagingRows`) the staging rows of the
 * settlement days that `keepDays` no longer keeps on `now`'s day; answers how many rows went.
 */
export function purgeExpiredStaging(
  db: Db,
  now: Date,
  keepDays: number,
  bounds?: Parameters<typeof purgeStagingRows>[2],
): Promise<number> {
  return purgeStagingRows(db, keepFrom(now, keepDays), bounds);
}

/**
 * The file a request names, which must be a regular file inside `dir` once symbolic links are
 * resolved, and the day it settles: settlement_date when given, else the day in its name.
 */
export async function resolveSettlementFile(
  dir: string,
  source: RunSource,
): Promise<SettlementFileLocation> {
  const date = source.settlementDate ?? '';
  const filePath = source.filePath ?? '';
  if (date === '' && filePath === '') {
    throw new InvalidArgumentError(
      'settlement_date',
      'give settlement_date (YYYY-MM-DD) or file_path',
    );
  }
  if (date !== '' && !isUtcDay(date)) {
    throw new InvalidArgumentError(
      'settlement_date',
      `must be a day as YYYY-MM-DD, got '${date.slice(0, 40)}'`,
    );
  }
  if (filePath.length > 1_024) {
    throw new InvalidArgumentError('file_path', 'must be a path of at most 1024 characters');
  }
  if (filePath.includes('\0')) {
    throw new InvalidArgumentError('file_path', 'must not contain a NUL character');
  }
  let folder: string;
  try {
    folder = await realpath(path.resolve(dir));
  } catch {
    throw new FailedPreconditionError('the settlement folder (SETTLEMENT_DIR) does not exist');
  }
  const wanted = filePath === '' ? `settlement-${date}.csv` : filePath;
  // A problem with the file is told against the field the caller gave: the path, or the day
  // (naming the file it stands for).
  const field = filePath === '' ? 'settlement_date' : 'file_path';
  const subject = filePath === '' ? `${wanted} ` : '';
  const candidate = path.resolve(folder, wanted);
  const inside = (file: string) => file.startsWith(folder + path.sep);
  if (!inside(candidate)) {
    throw new InvalidArgumentError(
      field,
      `${subject}must name a file inside the settlement folder (SETTLEMENT_DIR)`,
    );
  }
  let real: string;
  try {
    real = await realpath(candidate);
  } catch {
    throw new NotFoundError('settlement file', path.relative(folder, candidate));
  }
  if (!inside(real)) {
    throw new InvalidArgumentError(
      field,
      `${subject}leads outside the settlement folder (SETTLEMENT_DIR) through a link`,
    );
  }
  if (!(await stat(real)).isFile()) {
    throw new InvalidArgumentError(field, `${path.relative(folder, real)} is not a file`);
  }
  const name = path.basename(real);
  const named = FILE_NAME_DAY.exec(name)?.[1];
  // A file reconciled under another day than its own cannot be undone: its rows would settle
  // that day's orders, and the right day's run would find every row already settled.
  if (date !== '' && named !== undefined && named !== date) {
    throw new InvalidArgumentError(
      'settlement_date',
      `is ${date}, but ${name} is the file of ${named}; give settlement_date ${named} or leave it out`,
    );
  }
  const day = date !== '' ? date : named;
  if (day === undefined || !isUtcDay(day)) {
    throw new InvalidArgumentError(
      'settlement_date',
      `required: the file name ${name} does not start with settlement-YYYY-MM-DD`,
    );
  }
  return { path: real, name, day };
}

function pageSizeOf(pageSize: number): number {
  if (pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
  return Math.min(pageSize === 0 ? PAGE_SIZE_DEFAULT : pageSize, PAGE_SIZE_MAX);
}
