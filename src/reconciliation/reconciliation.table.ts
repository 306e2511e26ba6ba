/**
 * The Kysely view of reconciliation's tables (migration 0003). Kept beside the module rather than
 * in src/storage/schema.ts; `reconDb(db)` widens Settle's Database with them (Kysely's
 * withTables), so the rest of Settle never sees these tables.
 */
import type { ColumnType, Generated, Kysely } from 'kysely';
import type { Db } from '../storage/db.js';
import type { BigIntColumn, Database, Timestamp } from '../storage/schema.js';

/** DATE: read as a Date at midnight UTC (the pool runs in UTC), written as "YYYY-MM-DD". */
export type DateColumn = ColumnType<Date, string, string>;
/** A BIGINT with a column default: optional on insert. */
export type BigIntDefault = ColumnType<string, bigint | string | undefined, bigint | string>;
/** An INT with a column default: optional on insert. */
export type IntDefault = ColumnType<number, number | undefined, number>;

export const RUN_STATE = { running: 'RUNNING', succeeded: 'SUCCEEDED', failed: 'FAILED' } as const;
export type RunState = (typeof RUN_STATE)[keyof typeof RUN_STATE];

export const SCHEDULE_STATE = {
  running: 'RUNNING',
  succeeded: 'SUCCEEDED',
  failed: 'FAILED',
  noFile: 'NO_FILE',
} as const;
export type ScheduleState = (typeof SCHEDULE_STATE)[keyof typeof SCHEDULE_STATE];

export type ReconRunTable = {
  id: string;
  settlement_date: DateColumn;
  file_name: string;
  file_sha256: string;
  state: RunState;
  rows_total: BigIntColumn;
  rows_loaded: BigIntDefault;
  matched_count: BigIntDefault;
  missing_in_ledger_count: BigIntDefault;
  missing_in_settlement_count: BigIntDefault;
  amount_mismatch_count: BigIntDefault;
  duplicate_count: BigIntDefault;
  timing_count: BigIntDefault;
  currency: ColumnType<string, string | undefined, string>;
  gross_minor: BigIntDefault;
  fee_minor: BigIntDefault;
  net_minor: BigIntDefault;
  settled_gross_minor: BigIntDefault;
  settled_fee_minor: BigIntDefault;
  settled_net_minor: BigIntDefault;
  /** JSON text (InternalCheck); amounts inside are strings. */
  internal_check: ColumnType<string | null, string | null | undefined, string | null>;
  error: ColumnType<string | null, string | null | undefined, string | null>;
  attempts: IntDefault;
  /** The node running it; with lease_until, lets another node take over a run whose node died. */
  lease_owner: string | null;
  lease_until: Timestamp;
  created_at: Timestamp;
  updated_at: Timestamp;
  completed_at: ColumnType<Date | null, Date | null | undefined, Date | null>;
};

export type ReconFileRowTable = {
  run_id: string;
  line_no: number;
  psp_reference: string;
  merchant_reference: string;
  type: string;
  currency: string;
  gross_minor: BigIntColumn;
  fee_minor: BigIntColumn;
  net_minor: BigIntColumn;
  batch_id: string;
  created_utc: Timestamp;
  /** Null until classified. */
  class: string | null;
  ledger_amount_minor: BigIntColumn | null;
  /** For DUPLICATE: where the row appeared first ("line 12" or "rcn_… line 7"). */
  duplicate_of: string | null;
};

export type ReconMismatchTable = {
  id: Generated<string>;
  run_id: string;
  class: string;
  line_no: number | null;
  order_id: string;
  psp_reference: string | null;
  file_amount_minor: BigIntColumn | null;
  ledger_amount_minor: BigIntColumn | null;
  order_state: string | null;
  /** JSON text of the file row as parsed; null for MISSING_IN_SETTLEMENT. */
  file_row: string | null;
  /** JSON text: an array of the order's ledger entries. */
  ledger_entries: string;
  detail: string;
  resolved_by_run_id: string | null;
  created_at: Timestamp;
};

export type ReconciliationScheduleTable = {
  day: DateColumn;
  state: ScheduleState;
  attempts: number;
  lease_owner: string | null;
  lease_until: Timestamp;
  next_attempt_at: Timestamp | null;
  run_id: string | null;
  error: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
};

export type ReconciliationTables = {
  recon_run: ReconRunTable;
  recon_file_row: ReconFileRowTable;
  recon_mismatch: ReconMismatchTable;
  reconciliation_schedule: ReconciliationScheduleTable;
};

export type ReconDb = Kysely<Database & ReconciliationTables>;

export function reconDb(db: Db): ReconDb {
  return db.withTables<ReconciliationTables>();
}
