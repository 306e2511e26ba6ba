/**
 * Queries on the PSP mock's payment and charge tables. Rows are turned into typed values here
 * (BIGINT strings become bigint). State changes are conditional UPDATEs (`WHERE status =
 * 'REGISTERED'`), so a payment is decided or cancelled at most once even when requests race: a
 * cancel learns from the returned boolean whether it won, a decision from the row-count guard that
 * follows its UPDATE in the same packet (payments.ts). The batch variants write many rows with one
 * statement each, for group commit; they keep the same conditions.
 */
import type { CompiledQuery, Kysely, Selectable, Transaction } from 'kysely';
import type { CurrencyCode } from '../../domain/money.js';
import { commitInOneTrip, resultRows } from '../../storage/one-trip.js';
import { caseOfId } from '../../storage/sql.js';
import {
  PSP_PAYMENT_STATE,
  type PspChargeTable,
  type PspDatabase,
  type PspPaymentState,
  type PspPaymentTable,
} from './schema.js';

export type PspDb = Kysely<PspDatabase>;
export type PspTrx = Transaction<PspDatabase>;

/**
 * A stored payment. Its currency is the row's as stored, as for PspCharge: the mock registers and
 * charges only in a currency it knows, but a row written otherwise must still be readable, or
 * GetPaymentStatus, the hosted page and a repeated RegisterPayment would fail on it with INTERNAL.
 * Paying such a payment is refused (payments.ts), since that would write a charge.
 */
export type PspPayment = Readonly<{
  id: string;
  nonce: string;
  token: string;
  amountMinor: bigint;
  currency: string;
  status: PspPaymentState;
  pspReference: string | undefined;
  declineCode: string | undefined;
  notificationUrl: string;
  createdAt: Date;
  updatedAt: Date;
}>;

/**
 * A stored charge. Its currency is the row's as stored, not narrowed to CurrencyCode: the mock
 * only charges in a currency it knows, but the table may hold a row written otherwise (a newer
 * mock sharing the database, a hand-written row), and ListCharges, a test driver that shows what
 * is stored, would otherwise fail on it with INTERNAL.
 */
export type PspCharge = Readonly<{
  pspReference: string;
  nonce: string;
  amountMinor: bigint;
  currency: string;
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

function registeredRow(payment: NewPspPayment) {
  return {
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
  };
}

/** A payment just inserted, as a read would return it. */
function storedPayment(id: string, payment: NewPspPayment): PspPayment {
  return toPayment({ id, ...registeredRow(payment), amount_minor: String(payment.amountMinor) });
}

/** Inserts a REGISTERED payment; returns it as stored. */
export async function insertPayment(db: PspDb, payment: NewPspPayment): Promise<PspPayment> {
  const result = await db
    .insertInto('psp_payment')
    .values(registeredRow(payment))
    .executeTakeFirstOrThrow();
  return storedPayment(String(result.insertId), payment);
}

/**
 * `insertPayment` for many rows in one statement; returns them as stored, in the order given. Any
 * duplicate nonce or token fails the whole statement (the caller then inserts one by one). A
 * multi-row INSERT reports only its first id, and ids are consecutive only under some
 * auto-increment lock modes: they are read back by the unique nonce, in the same packet
 * (storage/one-trip.ts), so the batch costs one round trip.
 */
export async function insertPayments(
  db: PspDb,
  payments: readonly NewPspPayment[],
): Promise<PspPayment[]> {
  const outcome = await commitInOneTrip(db, [
    db.insertInto('psp_payment').values(payments.map(registeredRow)).compile(),
    db
      .selectFrom('psp_payment')
      .select(['id', 'nonce'])
      .where(
        'nonce',
        'in',
        payments.map(({ nonce }) => nonce),
      )
      .compile(),
  ]);
  if (!outcome.committed) throw new Error('no guard was sent, none can trip');
  const rows = resultRows<{ id: string; nonce: string }>(outcome.results[1]);
  const ids = new Map(rows.map((row) => [row.nonce, String(row.id)]));
  return payments.map((payment) => {
    const id = ids.get(payment.nonce);
    if (id === undefined) {
      throw new Error(`psp payment ${payment.nonce} vanished right after its insert`);
    }
    return storedPayment(id, payment);
  });
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

/**
 * The UPDATE that records the outcome of several charges, for a one-packet transaction
 * (storage/one-trip.ts): it changes only payments still REGISTERED, so fewer changed rows than
 * decisions means some lost a race, which a row-count guard after it turns into a rollback.
 */
export function decidePaymentsStatement(
  db: PspDb,
  decisions: readonly PaymentDecision[],
): CompiledQuery {
  const byId = <V>(value: (decision: PaymentDecision) => V) =>
    caseOfId(decisions, (decision) => decision.id, value);
  return db
    .updateTable('psp_payment')
    .set({
      status: byId((decision) => decision.status),
      psp_reference: byId((decision) => decision.pspReference ?? null),
      decline_code: byId((decision) => decision.declineCode ?? null),
      updated_at: byId((decision) => decision.now),
    })
    .where(
      'id',
      'in',
      decisions.map(({ id }) => id),
    )
    .where('status', '=', PSP_PAYMENT_STATE.registered)
    .compile();
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

export type NewPspCharge = Readonly<
  Omit<PspCharge, 'createdAt' | 'currency'> & { currency: CurrencyCode; now: Date }
>;

function chargeRow(charge: NewPspCharge) {
  return {
    psp_reference: charge.pspReference,
    nonce: charge.nonce,
    amount_minor: charge.amountMinor,
    currency: charge.currency,
    created_at: charge.now,
  };
}

/** The INSERT of several charges (at least one), for a one-packet transaction. */
export function insertChargesStatement(db: PspDb, charges: readonly NewPspCharge[]): CompiledQuery {
  return db.insertInto('psp_charge').values(charges.map(chargeRow)).compile();
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
    currency: row.currency,
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
    currency: row.currency,
    createdAt: row.created_at,
  });
}
