/**
 * The nightly reconciliation: at `atMinutes` after midnight UTC, each node looks at the last
 * `catchUpDays` closed days and reconciles the ones not done yet, oldest first, so a restart
 * after downtime catches up. A day is claimed with a row in reconciliation_schedule (its primary
 * key is the day), so with several nodes exactly one of them runs it. The claim has a lease: a
 * node that dies mid-run leaves a claim that another node takes over once the lease expires. A
 * day whose file is missing or whose run failed is tried again after `retryMs`, at most
 * ATTEMPTS_MAX times.
 *
 * (The staging rows of days past RECONCILIATION_KEEP_DAYS are purged by the node's housekeeping,
 * jobs/housekeeping.ts, which runs even with the nightly job off.)
 *
 * The timer sleeps at most `checkMsMax` between checks; stop() cancels it and waits for the check
 * in progress (the run itself is aborted by ReconciliationService.stop()).
 */
import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import { NotFoundError } from '../domain/errors.js';
import { addUtcDays, dueUtcDays, utcDayAt, utcDayOf, type UtcDay } from '../domain/utc-day.js';
import type { Db } from '../storage/db.js';
import { isDuplicateKey } from '../storage/errors.js';
import { RUN_STATE, SCHEDULE_STATE, reconDb, type ScheduleState } from './reconciliation.table.js';
import type { ReconciliationService } from './reconciliation.service.js';

/** Tries of one day before the schedule gives up on it (a day of hourly retries). */
export const ATTEMPTS_MAX = 24;
/** How long a claim lasts without renewal; renewed while the run is waited for. */
const CLAIM_LEASE_MS = 60_000;
/** The longest one scheduled run is waited for. */
const RUN_TIMEOUT_MS = 6 * 3_600_000;

export type ScheduleOutcome = Readonly<{
  day: UtcDay;
  state: ScheduleState;
  runId?: string;
  error?: string;
}>;

export type ReconciliationScheduleOptions = Readonly<{
  db: Db;
  reconciliation: ReconciliationService;
  nodeName: string;
  /** Minutes after midnight UTC at which yesterday is reconciled. */
  atMinutes: number;
  catchUpDays: number;
  /** Delay before a day with no file or a failed run is tried again, in milliseconds. */
  retryMs: number;
  /** The longest sleep between two checks, in milliseconds. Default 60 s. */
  checkMsMax?: number;
  now?: () => Date;
  onOutcome?: (outcome: ScheduleOutcome) => void;
  onError?: (error: unknown) => void;
}>;

export type ScheduledDay = Readonly<{
  day: string;
  state: ScheduleState;
  attempts: number;
  nextAttemptAt: Date | undefined;
  runId: string | undefined;
  error: string | undefined;
  updatedAt: Date;
}>;

/** The nightly job's newest days (claimed, done, failed, waiting to retry), for operators. */
export async function listScheduledDays(db: Db, limit: number): Promise<ScheduledDay[]> {
  const rows = await reconDb(db)
    .selectFrom('reconciliation_schedule')
    .selectAll()
    .orderBy('day', 'desc')
    .limit(limit)
    .execute();
  return rows.map((row) => ({
    day: row.day.toISOString().slice(0, 10),
    state: row.state,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at ?? undefined,
    runId: row.run_id ?? undefined,
    error: row.error ?? undefined,
    updatedAt: row.updated_at,
  }));
}

export class ReconciliationSchedule {
  readonly #options: ReconciliationScheduleOptions;
  readonly #now: () => Date;
  /** This scheduler's name in claims: the node name plus a random suffix. */
  readonly #owner: string;
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<unknown> | undefined;
  #stopped = false;
  readonly #stopController = new AbortController();

  constructor(options: ReconciliationScheduleOptions) {
    this.#options = options;
    this.#now = options.now ?? (() => new Date());
    this.#owner = `${options.nodeName}/${randomBytes(4).toString('hex')}`;
  }

  /** Checks at once (catch-up), then at each due time. */
  start(): void {
    this.#schedule(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stopController.abort();
    clearTimeout(this.#timer);
    await this.#tick;
  }

  /**
   * Reconciles every due day this node can claim, oldest first; returns what happened to each
   * day it claimed. Days claimed by other nodes, or done, are skipped.
   */
  async runDue(): Promise<ScheduleOutcome[]> {
    const { atMinutes, catchUpDays } = this.#options;
    const outcomes: ScheduleOutcome[] = [];
    for (const day of dueUtcDays(this.#now(), atMinutes, catchUpDays)) {
      if (this.#stopped) break;
      if (!(await this.#claim(day))) continue;
      const outcome = await this.#runDay(day);
      outcomes.push(outcome);
      this.#options.onOutcome?.(outcome);
    }
    return outcomes;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#tick = this.runDue()
        .catch((error: unknown) => this.#options.onError?.(error))
        .finally(() => {
          this.#tick = undefined;
          this.#schedule(this.#nextDelayMs());
        });
    }, delayMs);
    this.#timer.unref();
  }

  #nextDelayMs(): number {
    const now = this.#now();
    const today = utcDayOf(now);
    let next = utcDayAt(today, this.#options.atMinutes).getTime();
    if (next <= now.getTime())
      next = utcDayAt(addUtcDays(today, 1), this.#options.atMinutes).getTime();
    // Wake at least every checkMsMax: retries come due and clocks jump.
    return Math.max(100, Math.min(this.#options.checkMsMax ?? 60_000, next - now.getTime()));
  }

  /** Claims a day: a new row, or a retry that is due, or a claim whose lease expired. */
  async #claim(day: UtcDay): Promise<boolean> {
    const { db } = this.#options;
    const nodeName = this.#owner;
    const now = this.#now();
    const leaseUntil = new Date(now.getTime() + CLAIM_LEASE_MS);
    try {
      await reconDb(db)
        .insertInto('reconciliation_schedule')
        .values({
          day,
          state: SCHEDULE_STATE.running,
          attempts: 1,
          lease_owner: nodeName,
          lease_until: leaseUntil,
          next_attempt_at: null,
          run_id: null,
          error: null,
          created_at: now,
          updated_at: now,
        })
        .execute();
      return true;
    } catch (error) {
      if (!isDuplicateKey(error)) throw error;
    }
    const result = await sql`
      UPDATE reconciliation_schedule
      SET state = ${SCHEDULE_STATE.running}, attempts = attempts + 1, lease_owner = ${nodeName},
          lease_until = ${leaseUntil}, updated_at = ${now}
      WHERE day = ${day}
        AND ((state IN (${SCHEDULE_STATE.failed}, ${SCHEDULE_STATE.noFile})
              AND next_attempt_at <= ${now} AND attempts < ${ATTEMPTS_MAX})
             OR (state = ${SCHEDULE_STATE.running} AND lease_until < ${now}))`.execute(db);
    return result.numAffectedRows === 1n;
  }

  async #runDay(day: UtcDay): Promise<ScheduleOutcome> {
    const { reconciliation } = this.#options;
    let outcome: ScheduleOutcome;
    try {
      const run = await reconciliation.runToCompletion(
        { settlementDate: day },
        {
          timeoutMs: RUN_TIMEOUT_MS,
          onPoll: () => this.#renew(day),
          signal: this.#stopController.signal,
        },
      );
      outcome =
        run.state === RUN_STATE.succeeded
          ? { day, state: SCHEDULE_STATE.succeeded, runId: run.id }
          : { day, state: SCHEDULE_STATE.failed, runId: run.id, error: run.error ?? 'failed' };
    } catch (error) {
      if (this.#stopped) {
        // Leave the claim to expire: the node that runs next takes the day over.
        return { day, state: SCHEDULE_STATE.running, error: 'interrupted: the node stopped' };
      }
      const message = error instanceof Error ? error.message : String(error);
      outcome =
        error instanceof NotFoundError
          ? { day, state: SCHEDULE_STATE.noFile, error: message }
          : { day, state: SCHEDULE_STATE.failed, error: message };
    }
    await this.#record(outcome);
    return outcome;
  }

  async #renew(day: UtcDay): Promise<void> {
    const now = this.#now();
    await sql`
      UPDATE reconciliation_schedule
      SET lease_until = ${new Date(now.getTime() + CLAIM_LEASE_MS)}, updated_at = ${now}
      WHERE day = ${day} AND lease_owner = ${this.#owner}`.execute(this.#options.db);
  }

  async #record(outcome: ScheduleOutcome): Promise<void> {
    const now = this.#now();
    const retryAt =
      outcome.state === SCHEDULE_STATE.succeeded
        ? null
        : new Date(now.getTime() + this.#options.retryMs);
    await sql`
      UPDATE reconciliation_schedule
      SET state = ${outcome.state}, run_id = ${outcome.runId ?? null},
          error = ${outcome.error?.slice(0, 1_000) ?? null}, next_attempt_at = ${retryAt},
          lease_owner = NULL, updated_at = ${now}
      WHERE day = ${outcome.day} AND lease_owner = ${this.#owner}`.execute(this.#options.db);
  }
}
