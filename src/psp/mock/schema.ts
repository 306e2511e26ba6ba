/**
 * The Kysely view of the PSP mock's own tables (prefix `psp_`). The mock is "someone else's
 * system": it never reads Settle's tables, and Settle never reads these. BIGINT columns arrive as
 * decimal strings (mysql2 bigNumberStrings); times are DATETIME(3) in UTC.
 */
import type { ColumnType, Generated } from 'kysely';

/** BIGINT: read as a decimal string, written as bigint or string. */
export type BigIntColumn = ColumnType<string, bigint | string, bigint | string>;
export type Timestamp = ColumnType<Date, Date, Date>;

/** The mock's one-packet guard table (migration 0003; storage/one-trip.ts). */
export const PSP_GUARD_TABLE = 'psp_one_trip_guard';

/** The lifecycle of a payment at the PSP; every state but REGISTERED is final. */
export const PSP_PAYMENT_STATE = {
  registered: 'REGISTERED',
  succeeded: 'SUCCEEDED',
  declined: 'DECLINED',
  cancelled: 'CANCELLED',
} as const;
export type PspPaymentState = (typeof PSP_PAYMENT_STATE)[keyof typeof PSP_PAYMENT_STATE];

export interface PspPaymentTable {
  id: Generated<string>;
  /** The merchant's id for the payment; registration is idempotent by it. */
  nonce: string;
  /** The secret in the hosted page's URL. */
  token: string;
  amount_minor: BigIntColumn;
  currency: string;
  status: PspPaymentState;
  /** Set when charged. */
  psp_reference: string | null;
  /** Set when declined. */
  decline_code: string | null;
  notification_url: string;
  created_at: Timestamp;
  updated_at: Timestamp;
}

/** One row per money movement actually made; the source of settlement files. */
export interface PspChargeTable {
  id: Generated<string>;
  psp_reference: string;
  nonce: string;
  amount_minor: BigIntColumn;
  currency: string;
  created_at: Timestamp;
}

/**
 * The webhook outbox: one row per delivery. A resend is a new row (delivery 2, 3, ...) carrying
 * the same event id and body, which is why (event_id, delivery) is the unique key.
 */
export interface PspWebhookTable {
  id: Generated<string>;
  event_id: string;
  delivery: number;
  nonce: string;
  url: string;
  /** The JSON body, exactly as it is signed and sent. */
  body: string;
  attempts: Generated<number>;
  /** When the next attempt is due; while an attempt runs, the end of its lease. */
  next_attempt_at: Timestamp;
  delivered_at: Timestamp | null;
  /** Set when the attempts ran out; the row is never tried again. */
  given_up_at: Timestamp | null;
  last_error: string | null;
  created_at: Timestamp;
}

/** Discrepancies the settlement-file writer injects on purpose (test driver). */
export const SETTLEMENT_ADJUSTMENT = {
  /** The charge is left out of every file. */
  unsettled: 'UNSETTLED',
  /** The charge's row shows amount_minor as its gross. */
  amount: 'AMOUNT',
  /** The charge's row appears twice. */
  duplicate: 'DUPLICATE',
  /** The charge's row appears in the next day's file instead of its own. */
  late: 'LATE',
} as const;
export type SettlementAdjustmentKind =
  (typeof SETTLEMENT_ADJUSTMENT)[keyof typeof SETTLEMENT_ADJUSTMENT];

export interface PspSettlementAdjustmentTable {
  id: Generated<string>;
  psp_reference: string;
  kind: SettlementAdjustmentKind;
  amount_minor: BigIntColumn | null;
  created_at: Timestamp;
}

export interface PspDatabase {
  psp_payment: PspPaymentTable;
  psp_charge: PspChargeTable;
  psp_webhook: PspWebhookTable;
  psp_settlement_adjustment: PspSettlementAdjustmentTable;
}
