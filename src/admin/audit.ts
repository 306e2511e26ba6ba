/**
 * Every admin action, from the panel or from gRPC AdminService, goes through `audited`: it runs
 * the action, then records who did what to which target, why, and how it ended in admin_audit. A
 * failed action is recorded as FAILED and its error rethrown. The action and its audit row are
 * two statements (the dead-letter functions own their transaction); the dead_letter row itself
 * names the actor too, so an action whose audit insert failed still leaves a trace.
 */
import type { Metadata } from '@grpc/grpc-js';
import { SettleError } from '../domain/errors.js';
import type { Db } from '../storage/db.js';
import { AUDIT_OUTCOME, insertAudit } from '../storage/repositories/admin-audit.repository.js';

export const ADMIN_ACTION = {
  login: 'LOGIN',
  logout: 'LOGOUT',
  replayDeadLetter: 'REPLAY_DEAD_LETTER',
  discardDeadLetter: 'DISCARD_DEAD_LETTER',
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

const ACTOR = /^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$/;

/**
 * The operator named by gRPC metadata `x-admin-actor` (sanitised), prefixed `grpc:`, and the
 * reason from `x-admin-reason` (ReplayDeadLetter has no reason field), percent-encoded because
 * metadata values are ASCII. Both are optional.
 */
export function grpcAdminCaller(metadata: Metadata): { actor: string; reason: string } {
  const [actor] = metadata.get('x-admin-actor');
  const [reason] = metadata.get('x-admin-reason');
  return {
    actor: typeof actor === 'string' && ACTOR.test(actor) ? `grpc:${actor}` : 'grpc',
    reason:
      typeof reason === 'string' && reason.trim() !== ''
        ? decodeReason(reason.trim()).slice(0, 500)
        : '(no reason given over gRPC)',
  };
}

function decodeReason(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
