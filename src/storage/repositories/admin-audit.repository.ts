/**
 * The admin audit trail: one row per admin action (login, dead-letter replay or discard, ...),
 * with who did it, to what, why, when and how it ended. Rows are only ever inserted.
 */
import type { Db } from '../db.js';
import type { Trx } from '../transaction.js';

export const AUDIT_OUTCOME = { ok: 'OK', failed: 'FAILED' } as const;
export type AuditOutcome = (typeof AUDIT_OUTCOME)[keyof typeof AUDIT_OUTCOME];

export type NewAuditRecord = Readonly<{
  actor: string;
  action: string;
  target: string;
  reason: string;
  outcome: AuditOutcome;
  /** Serialised as JSON; bigints become strings. */
  detail: Readonly<Record<string, unknown>>;
  now: Date;
}>;

export type AuditRecord = Readonly<{
  id: bigint;
  actor: string;
  action: string;
  target: string;
  reason: string;
  outcome: AuditOutcome;
  detail: string;
  createdAt: Date;
}>;

const REASON_CHARS_MAX = 500;
const DETAIL_CHARS_MAX = 16 * 1024;

export async function insertAudit(db: Db | Trx, record: NewAuditRecord): Promise<bigint> {
  const detail = JSON.stringify(record.detail, (_key, value: unknown) =>
    typeof value === 'bigint' ? value.toString() : value,
  );
  const result = await db
    .insertInto('admin_audit')
    .values({
      actor: record.actor.slice(0, 64),
      action: record.action.slice(0, 40),
      target: record.target.slice(0, 128),
      reason: record.reason.slice(0, REASON_CHARS_MAX),
      outcome: record.outcome,
      detail: detail.length <= DETAIL_CHARS_MAX ? detail : JSON.stringify({ truncated: true }),
      created_at: record.now,
    })
    .executeTakeFirstOrThrow();
  return BigInt(result.insertId ?? 0n);
}

export async function listAudit(
  db: Db,
  filter: { targets?: readonly string[]; beforeId?: bigint; limit: number },
): Promise<AuditRecord[]> {
  let query = db.selectFrom('admin_audit').selectAll().orderBy('id', 'desc').limit(filter.limit);
  if (filter.targets !== undefined) {
    if (filter.targets.length === 0) return [];
    query = query.where('target', 'in', filter.targets);
  }
  if (filter.beforeId !== undefined) query = query.where('id', '<', filter.beforeId.toString());
  const rows = await query.execute();
  return rows.map((row) => ({
    id: BigInt(row.id),
    actor: row.actor,
    action: row.action,
    target: row.target,
    reason: row.reason,
    outcome: row.outcome,
    detail: row.detail,
    createdAt: row.created_at,
  }));
}
