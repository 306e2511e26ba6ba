/**
 * The Kysely view of Settle's tables (one interface per table, one Database interface). Columns
 * holding money are BIGINT and arrive as decimal strings (mysql2 bigNumberStrings); repositories
 * turn them into bigint. Times are DATETIME(3) in UTC.
 */
import type { ColumnType, Generated, GeneratedAlways, Insertable, Selectable } from 'kysely';

/** BIGINT: read as a decimal string, written as bigint or string. */
export type BigIntColumn = ColumnType<string, bigint | string, bigint | string>;
export type Timestamp = ColumnType<Date, Date, Date>;

export interface IdempotencyKeyTable {
  buyer_id: string;
  request_id: string;
  request_hash: string;
  /** IN_FLIGHT while the first request runs, COMPLETED once its payment is committed. */
  state: 'IN_FLIGHT' | 'COMPLETED';
  payment_id: string | null;
  /** An IN_FLIGHT key whose owner died may be taken over after this time. */
  lease_until: Timestamp;
  created_at: Timestamp;
}

export interface PaymentTable {
  id: string;
  buyer_id: string;
  request_id: string;
  currency: string;
  amount_minor: BigIntColumn;
  state: string;
  failure_reason: string | null;
  orders_total: number;
  orders_succeeded: number;
  orders_failed: number;
  version: BigIntColumn;
  created_at: Timestamp;
  updated_at: Timestamp;
}

export interface PaymentOrderTable {
  id: string;
  payment_id: string;
  seq: number;
  seller_id: string;
  amount_minor: BigIntColumn;
  currency: string;
  state: string;
  version: BigIntColumn;
  psp_token: string | null;
  checkout_url: string | null;
  psp_reference: string | null;
  failure_reason: string | null;
  attempts: number;
  /** Set when the order needs an operator: for example a charge that arrived after expiry. */
  review_reason: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
  /** The janitor's claim: no other janitor pass acts on the order before this time. */
  janitor_lease_until: ColumnType<Date | null, Date | null | undefined, Date | null>;
  janitor_owner: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface PaymentOrderTransitionTable {
  id: Generated<string>;
  order_id: string;
  payment_id: string;
  version: BigIntColumn;
  from_state: string;
  to_state: string;
  event_type: string;
  /** JSON text; amounts inside are strings. */
  detail: string;
  created_at: Timestamp;
}

export interface LedgerTransactionTable {
  id: string;
  order_id: string;
  kind: string;
  currency: string;
  amount_minor: BigIntColumn;
  created_at: Timestamp;
}

export interface LedgerEntryTable {
  id: Generated<string>;
  transaction_id: string;
  account: string;
  order_id: string;
  kind: string;
  currency: string;
  debit_minor: BigIntColumn;
  credit_minor: BigIntColumn;
  created_at: Timestamp;
}

export interface WalletTable {
  seller_id: string;
  currency: string;
  balance_minor: BigIntColumn;
  version: BigIntColumn;
  updated_at: Timestamp;
}

export interface OutboxTable {
  id: Generated<string>;
  subject: string;
  /** The JetStream Nats-Msg-Id: relaying the same row twice is deduplicated by the stream. */
  msg_id: string;
  payload: string;
  created_at: Timestamp;
  /**
   * The relay publishes the row from this time on (later than created_at while held, and while
   * parked after JetStream refused it).
   */
  available_at: Timestamp;
  /** How many times JetStream refused the row; its parking backoff doubles with each. */
  refusals: Generated<number>;
  /** While parked (or once parked): when the row first became due, for the outbox-age metric. */
  due_since: Timestamp | null;
}

export interface InboxTable {
  source: string;
  event_id: string;
  order_id: string;
  received_at: Timestamp;
}

export interface DeadLetterTable {
  id: Generated<string>;
  /**
   * One row per dead-lettered stream message, whoever records it first:
   * `stream:sequence@streamCreatedAt` (messaging deadLetterKey), since a recreated stream reuses
   * sequences; `…#digest` for a different message that met a row under that key; rows written
   * before the creation time was part of it are `stream:sequence`.
   */
  dedupe_key: string;
  stream_sequence: BigIntColumn;
  order_id: string | null;
  subject: string;
  reason: string;
  attempts: number;
  last_error: string;
  payload: string;
  state: 'OPEN' | 'REPLAYED' | 'DISCARDED' | 'RESOLVED';
  resolution_note: string | null;
  created_at: Timestamp;
  updated_at: Timestamp;
  /**
   * Generated: the payload's SHA-256, and 1 while the entry is OPEN (NULL once closed). With
   * order_id and reason they key `dead_letter_open_once`: one OPEN entry per order, reason and
   * command (migration 0009).
   */
  payload_sha256: GeneratedAlways<Buffer>;
  open_flag: GeneratedAlways<number | null>;
}

export interface AdminAuditTable {
  id: Generated<string>;
  /** The operator's name as given at login, or `api` for bearer calls without X-Admin-Actor. */
  actor: string;
  action: string;
  /** What the action touched, e.g. `dead-letter:42` or `session`. */
  target: string;
  reason: string;
  outcome: 'OK' | 'FAILED';
  /** JSON text with the action's particulars. */
  detail: string;
  created_at: Timestamp;
}

export interface Database {
  idempotency_key: IdempotencyKeyTable;
  payment: PaymentTable;
  payment_order: PaymentOrderTable;
  payment_order_transition: PaymentOrderTransitionTable;
  ledger_transaction: LedgerTransactionTable;
  ledger_entry: LedgerEntryTable;
  wallet: WalletTable;
  outbox: OutboxTable;
  inbox: InboxTable;
  dead_letter: DeadLetterTable;
  admin_audit: AdminAuditTable;
}

export type PaymentRow = Selectable<PaymentTable>;
export type PaymentOrderRow = Selectable<PaymentOrderTable>;
export type NewPaymentOrder = Insertable<PaymentOrderTable>;
export type LedgerEntryRow = Selectable<LedgerEntryTable>;
export type WalletRow = Selectable<WalletTable>;
