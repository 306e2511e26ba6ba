/**
 * Every admin action, from the panel or from gRPC AdminService, goes through `audited`: it runs
 * the action, then records who did what to which target, why, and how it ended in admin_audit. A
 * failed action is recorded as FAILED and its error rethrown. The action and its audit row are
 * two statements (the dead-letter functions and the sums' repair own their transaction); the
 * dead_letter row itself names the actor too, so an action whose audit insert failed still leaves
 * a trace.
 */
import type { Metadata } from '@grpc/grpc-js';
import { InvalidArgumentError, SettleError } from '../domain/errors.js';
import type { Db } from '../storage/db.js';
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
    const message = error instanceof SettleError ? error.message : 'internal error';
    // The caller must see the action's own error, even when the database is what failed.
    await insertAudit(deps.db, {
      ...record,
      outcome: AUDIT_OUTCOME.failed,
      detail: { via, error: message },
      now: deps.now(),
    }).catch(() => undefined);
    deps.onAudited?.({ ...action, outcome: 'FAILED' });
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
