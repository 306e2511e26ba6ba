/**
 * Every admin action, from the panel or from gRPC AdminService, goes through `audited` or
 * `auditedInTransaction`: it runs the action, then records who did what to which target, why, and
 * how it ended in admin_audit. A failed action is recorded as FAILED and its error rethrown. With
 * `audited` the action and its audit row are two statements (the dead-letter functions own their
 * transaction); the dead_letter row itself names the actor too, so an action whose audit insert
 * failed still leaves a trace. An action that writes what it overwrote nowhere else (the sums'
 * repair) uses `auditedInTransaction`, whose OK row commits with the action.
 */
import type { Metadata } from '@grpc/grpc-js';
import { InvalidArgumentError, SettleError, UnavailableError } from '../domain/errors.js';
import type { Db } from '../storage/db.js';
import { toUnavailable, type Trx } from '../storage/transaction.js';
import { ACTOR_PATTERN } from './auth.js';
import { AUDIT_OUTCOME, insertAudit } from '../storage/repositories/admin-audit.repository.js';

export const ADMIN_ACTION = {
  login: 'LOGIN',
  logout: 'LOGOUT',
  replayDeadLetter: 'REPLAY_DEAD_LETTER',
  discardDeadLetter: 'DISCARD_DEAD_LETTER',
  repairLedgerSums: 'REPAIR_LEDGER_SUMS',
} as const;

export type AuditedAction = Readonly<{
  actor: string;
  action: string;
  target: string;
  reason: string;
  /** How the actor authenticated: session, bearer, grpc. */
  via: string;
}>;

export type AuditDeps = Readonly<{
  db: Db;
  now: () => Date;
  /** Called after the audit row is written (a log line). */
  onAudited?: (action: AuditedAction & { outcome: 'OK' | 'FAILED' }) => void;
}>;

export async function audited<T>(
  deps: AuditDeps,
  action: AuditedAction,
  work: () => Promise<T>,
  detailOf: (result: T) => Record<string, unknown> = () => ({}),
): Promise<{ result: T; auditId: bigint }> {
  const { via, ...record } = action;
  let result: T;
  try {
    result = await work();
  } catch (error) {
    await auditFailed(deps, action, error);
    throw error;
  }
  const auditId = await insertAudit(deps.db, {
    ...record,
    outcome: AUDIT_OUTCOME.ok,
    detail: { via, ...detailOf(result) },
    now: deps.now(),
  });
  deps.onAudited?.({ ...action, outcome: 'OK' });
  return { result, auditId };
}

/**
 * Writes the OK row of an action in the action's transaction `trx`, with `result`'s detail; to be
 * called last before the commit.
 */
export type AuditOk<T> = (trx: Trx, result: T) => Promise<void>;

/**
 * As `audited`, for an action that commits a transaction of its own: `work` is handed an AuditOk
 * to call with that transaction just before the commit, so that the action and its OK row commit
 * together or not at all. After `audited`'s separate insert failed, the action stood with no row
 * to tell what it overwrote, and its caller got an error for a change that was made. Here a row
 * that cannot be written rolls the action back: UnavailableError (nothing was done, so a retry is
 * safe), and a FAILED row as for any failed action. A caller left not knowing whether the commit
 * happened (its deadline passed during it, the connection was lost) reads it in the trail: the
 * OK row is there exactly when the action committed (a lost connection also writes a FAILED row).
 */
export async function auditedInTransaction<T>(
  deps: AuditDeps,
  action: AuditedAction,
  work: (auditOk: AuditOk<T>) => Promise<T>,
  detailOf: (result: T) => Record<string, unknown> = () => ({}),
): Promise<{ result: T; auditId: bigint }> {
  const { via, ...record } = action;
  // The row of the last call: a transaction run again calls auditOk again, and only one commits.
  let auditId: bigint | undefined;
  const auditOk: AuditOk<T> = async (trx, result) => {
    try {
      auditId = await insertAudit(trx, {
        ...record,
        outcome: AUDIT_OUTCOME.ok,
        detail: { via, ...detailOf(result) },
        now: deps.now(),
      });
    } catch (error) {
      // The transaction's own trouble (a lock, the connection, the pool), mapped or retried as
      // its other statements' is: whatever toUnavailable maps.
      if (toUnavailable(error) !== error) throw error;
      throw new UnavailableError(
        `the audit row of ${action.action} could not be written, so the action was rolled back ` +
          'and nothing of it was done; retry later',
        { cause: error },
      );
    }
  };
  let result: T;
  try {
    result = await work(auditOk);
  } catch (error) {
    await auditFailed(deps, action, error);
    throw error;
  }
  if (auditId === undefined) {
    throw new Error(`${action.action} committed without writing its audit row (auditOk)`);
  }
  deps.onAudited?.({ ...action, outcome: 'OK' });
  return { result, auditId };
}

/** Records `action` as FAILED with `error`'s message, never throwing. */
async function auditFailed(deps: AuditDeps, action: AuditedAction, error: unknown): Promise<void> {
  const { via, ...record } = action;
  const message = error instanceof SettleError ? error.message : 'internal error';
  // The caller must see the action's own error, even when the database is what failed.
  await insertAudit(deps.db, {
    ...record,
    outcome: AUDIT_OUTCOME.failed,
    detail: { via, error: message },
    now: deps.now(),
  }).catch(() => undefined);
  deps.onAudited?.({ ...action, outcome: 'FAILED' });
}

/** Why an operator acted: required wherever it is asked for, and short enough to read back. */
export const REASON_CHARS = { min: 3, max: 500 } as const;

/** The trimmed reason, or InvalidArgumentError: the panel and AdminService accept the same ones. */
export function requireReason(value: unknown): string {
  const reason = typeof value === 'string' ? value.trim() : '';
  if (reason.length < REASON_CHARS.min || reason.length > REASON_CHARS.max) {
    throw new InvalidArgumentError(
      'reason',
      `say why in ${REASON_CHARS.min}-${REASON_CHARS.max} characters; it goes into the audit trail`,
    );
  }
  return reason;
}

/** The operator named by gRPC metadata `x-admin-actor`, prefixed `grpc:`; optional. */
export function grpcAdminActor(metadata: Metadata): string {
  const [actor] = metadata.get('x-admin-actor');
  return typeof actor === 'string' && ACTOR_PATTERN.test(actor) ? `grpc:${actor}` : 'grpc';
}

/**
 * The reason from gRPC metadata `x-admin-reason`, percent-encoded because metadata values are
 * ASCII: how ReplayDeadLetter took a reason before its request had a field for it, still read
 * when that field is empty. Optional, but held to the panel's rules when given.
 */
export function grpcAdminReason(metadata: Metadata): string {
  const [reason] = metadata.get('x-admin-reason');
  if (typeof reason !== 'string' || reason.trim() === '') return '(no reason given over gRPC)';
  return requireReason(decodeReason(reason.trim()));
}

function decodeReason(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
