/**
 * Queries on the PSP mock's payment and charge tables. Rows are turned into typed values here
 * (BIGINT strings become bigint). State changes are conditional UPDATEs (`WHERE status =
 * 'REGISTERED'`), so a payment is decided or cancelled at most once even when requests race; the
 * caller learns from the returned boolean whether it won.
 */
import type { Kysely, Selectable, Transaction } from 'kysely';
import { isCurrencyCode, type CurrencyCode } from '../../domain/money.js';
import {
  PSP_PAYMENT_STATE,
  type PspChargeTable,
  type PspDatabase,
  type PspPaymentState,
  type PspPaymentTable,
} from './schema.js';

export type PspDb = Kysely<PspDatabase>;
export type PspTrx = Transaction<PspDatabase>;

export type PspPayment = Readonly<{
  id: string;
  nonce: string;
  token: string;
  amountMinor: bigint;
  currency: CurrencyCode;
  status: PspPaymentState;
  pspReference: string | undefined;
  declineCode: string | undefined;
  notificationUrl: string;
  createdAt: Date;
  updatedAt: Date;
}>;

export type PspCharge = Readonly<{
  pspReference: string;
  nonce: string;
  amountMinor: bigint;
  currency: CurrencyCode;
  createdAt: Date;
}>;

export type NewPspPayment = Readonly<{
  nonce: string;
  token: string;
  amountMinor: bigint;
  currency: CurrencyCode;
  notificationUrl: string;
  now: Date;
}>;

/** Inserts a REGISTERED payment; returns its id. */
export async function insertPayment(db: PspDb, payment: NewPspPayment): Promise<string> {
  const result = await db
    .insertInto('psp_payment')
    .values({
      nonce: payment.nonce,
      token: payment.token,
      amount_minor: payment.amountMinor,
      currency: payment.currency,
      status: PSP_PAYMENT_STATE.registered,
      psp_reference: null,
      decline_code: null,
      notification_url: payment.notificationUrl,
      created_at: payment.now,
      updated_at: payment.now,
    })
    .executeTakeFirstOrThrow();
  return String(result.insertId);
}

export async function findPaymentByNonce(
  db: PspDb,
  nonce: string,
): Promise<PspPayment | undefined> {
  const row = await db
    .selectFrom('psp_payment')
    .selectAll()
    .where('nonce', '=', nonce)
    .executeTakeFirst();
  return row === undefined ? undefined : toPayment(row);
}

export async function findPaymentByToken(
  db: PspDb,
  token: string,
): Promise<PspPayment | undefined> {
  const row = await db
    .selectFrom('psp_payment')
    .selectAll()
    .where('token', '=', token)
    .executeTakeFirst();
  return row === undefined ? undefined : toPayment(row);
}

/** Locks the payment row until the transaction ends. */
export async function lockPaymentByNonce(
  trx: PspTrx,
  nonce: string,
): Promise<PspPayment | undefined> {
  const row = await trx
    .selectFrom('psp_payment')
    .selectAll()
    .where('nonce', '=', nonce)
    .forUpdate()
    .executeTakeFirst();
  return row === undefined ? undefined : toPayment(row);
}

export type PaymentDecision = Readonly<{
  id: string;
  status: typeof PSP_PAYMENT_STATE.succeeded | typeof PSP_PAYMENT_STATE.declined;
  pspReference: string | undefined;
  declineCode: string | undefined;
  now: Date;
}>;

/** Records the outcome of a charge; false if the payment was no longer REGISTERED. */
export async function decidePayment(trx: PspTrx, decision: PaymentDecision): Promise<boolean> {
  const result = await trx
    .updateTable('psp_payment')
    .set({
      status: decision.status,
      psp_reference: decision.pspReference ?? null,
      decline_code: decision.declineCode ?? null,
      updated_at: decision.now,
    })
    .where('id', '=', decision.id)
    .where('status', '=', PSP_PAYMENT_STATE.registered)
    .executeTakeFirst();
  return result.numUpdatedRows === 1n;
}

/** Cancels a registered payment; false if it was no longer REGISTERED. */
export async function cancelRegisteredPayment(db: PspDb, id: string, now: Date): Promise<boolean> {
  const result = await db
    .updateTable('psp_payment')
    .set({ status: PSP_PAYMENT_STATE.cancelled, updated_at: now })
    .where('id', '=', id)
    .where('status', '=', PSP_PAYMENT_STATE.registered)
    .executeTakeFirst();
  return result.numUpdatedRows === 1n;
}

export async function insertCharge(
  trx: PspTrx,
  charge: Omit<PspCharge, 'createdAt'> & { now: Date },
): Promise<void> {
  await trx
    .insertInto('psp_charge')
    .values({
      psp_reference: charge.pspReference,
      nonce: charge.nonce,
      amount_minor: charge.amountMinor,
      currency: charge.currency,
      created_at: charge.now,
    })
    .execute();
}

/** Charges in the order they were made, optionally for one nonce; at most `limit` rows. */
export async function listCharges(
  db: PspDb,
  options: { nonce: string | undefined; limit: number },
): Promise<PspCharge[]> {
  let query = db.selectFrom('psp_charge').selectAll().orderBy('id').limit(options.limit);
  if (options.nonce !== undefined) query = query.where('nonce', '=', options.nonce);
  const rows = await query.execute();
  return rows.map(toCharge);
}

function toPayment(row: Selectable<PspPaymentTable>): PspPayment {
  return Object.freeze({
    id: row.id,
    nonce: row.nonce,
    token: row.token,
    amountMinor: BigInt(row.amount_minor),
    currency: currencyOf(row.currency),
    status: row.status,
    pspReference: row.psp_reference ?? undefined,
    declineCode: row.decline_code ?? undefined,
    notificationUrl: row.notification_url,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  });
}

function toCharge(row: Selectable<PspChargeTable>): PspCharge {
  return Object.freeze({
    pspReference: row.psp_reference,
    nonce: row.nonce,
    amountMinor: BigInt(row.amount_minor),
    currency: currencyOf(row.currency),
    createdAt: row.created_at,
  });
}

function currencyOf(value: string): CurrencyCode {
  if (!isCurrencyCode(value)) throw new Error(`psp row has an unknown currency: ${value}`);
  return value;
}
