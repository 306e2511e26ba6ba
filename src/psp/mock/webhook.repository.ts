/**
 * The webhook outbox. A row is pending while neither delivered_at nor given_up_at is set. An
 * attempt first claims its row with a conditional UPDATE that bumps `attempts` and pushes
 * next_attempt_at to the end of a lease: a second sender (or a second loop turn) cannot take the
 * same row, and a sender that dies mid-attempt leaves a row that becomes due again when the lease
 * ends. A new row can also be inserted already claimed for its first attempt (the decision's own
 * transaction sets the lease), which spares the claim.
 */
import type { CompiledQuery, Selectable } from 'kysely';
import type { PspDb, PspTrx } from './payment.repository.js';
import type { PspWebhookTable } from './schema.js';

export type PspWebhookDelivery = Readonly<{
  id: string;
  eventId: string;
  delivery: number;
  nonce: string;
  url: string;
  body: string;
  attempts: number;
  nextAttemptAt: Date;
  deliveredAt: Date | undefined;
  givenUpAt: Date | undefined;
  lastError: string | undefined;
}>;

/** last_error is VARCHAR(512). */
const LAST_ERROR_LENGTH_MAX = 512;

export type NewPspWebhook = Readonly<{
  eventId: string;
  delivery: number;
  nonce: string;
  url: string;
  body: string;
  now: Date;
  /**
   * When set, the row is inserted already claimed for its first attempt until this time
   * (attempts 1, next_attempt_at = leaseUntil), so the process that inserted it can POST it at
   * once without a claim; no one else takes it before the lease ends. When unset, the row is
   * due now and the sender's poll claims it.
   */
  leaseUntil: Date | undefined;
}>;

/** Inserts a delivery; returns it as stored. */
export async function insertWebhook(
  trx: PspTrx,
  webhook: NewPspWebhook,
): Promise<PspWebhookDelivery> {
  const result = await trx
    .insertInto('psp_webhook')
    .values(webhookRow(webhook))
    .executeTakeFirstOrThrow();
  return storedDelivery(String(result.insertId), webhook);
}

/** The row of a new webhook: due now, or already leased to this process (its first attempt). */
function webhookRow(webhook: NewPspWebhook) {
  return {
    event_id: webhook.eventId,
    delivery: webhook.delivery,
    nonce: webhook.nonce,
    url: webhook.url,
    body: webhook.body,
    attempts: webhook.leaseUntil === undefined ? 0 : 1,
    next_attempt_at: webhook.leaseUntil ?? webhook.now,
    delivered_at: null,
    given_up_at: null,
    last_error: null,
    created_at: webhook.now,
  };
}

/** A row just inserted, as the sender sees it. */
function storedDelivery(id: string, webhook: NewPspWebhook): PspWebhookDelivery {
  return toDelivery({ id, ...webhookRow(webhook) });
}

/** The id and unique key of a webhook row, as `insertWebhooksStatements`' SELECT reads them. */
export type WebhookIdRow = Readonly<{ id: string; event_id: string; delivery: number }>;

/**
 * `insertWebhook` for many rows, as statements for a one-packet transaction (storage/one-trip.ts):
 * one multi-row INSERT, then a SELECT of their ids by the unique (event_id, delivery), since a
 * multi-row INSERT reports only its first id and ids are consecutive only under some
 * auto-increment lock modes. `stored` turns the SELECT's rows into the rows as stored, in the
 * order given.
 */
export function insertWebhooksStatements(
  db: PspDb,
  webhooks: readonly NewPspWebhook[],
): Readonly<{
  insert: CompiledQuery;
  readIds: CompiledQuery;
  stored: (rows: readonly WebhookIdRow[]) => PspWebhookDelivery[];
}> {
  return {
    insert: db.insertInto('psp_webhook').values(webhooks.map(webhookRow)).compile(),
    readIds: db
      .selectFrom('psp_webhook')
      .select(['id', 'event_id', 'delivery'])
      .where(
        'event_id',
        'in',
        webhooks.map(({ eventId }) => eventId),
      )
      .compile(),
    stored: (rows) => {
      const ids = new Map(rows.map((row) => [`${row.delivery}:${row.event_id}`, String(row.id)]));
      return webhooks.map((webhook) => {
        const id = ids.get(`${webhook.delivery}:${webhook.eventId}`);
        if (id === undefined)
          throw new Error(`psp webhook ${webhook.eventId} missing after insert`);
        return storedDelivery(id, webhook);
      });
    },
  };
}

/** The newest delivery of the newest event for a nonce. */
export async function findLatestWebhook(
  db: PspDb,
  nonce: string,
): Promise<PspWebhookDelivery | undefined> {
  const row = await db
    .selectFrom('psp_webhook')
    .selectAll()
    .where('nonce', '=', nonce)
    .orderBy('id', 'desc')
    .limit(1)
    .executeTakeFirst();
  return row === undefined ? undefined : toDelivery(row);
}

/** Pending rows that are due, oldest due first. */
export async function findDueWebhooks(
  db: PspDb,
  options: { now: Date; limit: number },
): Promise<PspWebhookDelivery[]> {
  const rows = await db
    .selectFrom('psp_webhook')
    .selectAll()
    .where('delivered_at', 'is', null)
    .where('given_up_at', 'is', null)
    .where('next_attempt_at', '<=', options.now)
    .orderBy('next_attempt_at')
    .limit(options.limit)
    .execute();
  return rows.map(toDelivery);
}

/**
 * Claims a due row for one attempt until `leaseUntil`; returns the row with its new attempt
 * count, or undefined if another sender claimed it first or it is no longer pending.
 */
export async function claimWebhook(
  db: PspDb,
  row: PspWebhookDelivery,
  leaseUntil: Date,
): Promise<PspWebhookDelivery | undefined> {
  const result = await db
    .updateTable('psp_webhook')
    .set((eb) => ({ attempts: eb('attempts', '+', 1), next_attempt_at: leaseUntil }))
    .where('id', '=', row.id)
    .where('attempts', '=', row.attempts)
    .where('delivered_at', 'is', null)
    .where('given_up_at', 'is', null)
    .executeTakeFirst();
  if (result.numUpdatedRows !== 1n) return undefined;
  return Object.freeze({ ...row, attempts: row.attempts + 1, nextAttemptAt: leaseUntil });
}

/**
 * Gives back leases that were never used (rows handed to a sender that stopped, or whose lease
 * ran short, before POSTing them): each row whose attempt count is still the one its lease set
 * is due again now, and that attempt is not counted. A row someone claimed since is left alone.
 */
export async function releaseWebhookLeases(
  db: PspDb,
  rows: ReadonlyArray<Pick<PspWebhookDelivery, 'id' | 'attempts'>>,
  now: Date,
): Promise<void> {
  if (rows.length === 0) return;
  await db
    .updateTable('psp_webhook')
    .set((eb) => ({ attempts: eb('attempts', '-', 1), next_attempt_at: now }))
    .where((eb) =>
      eb.or(rows.map((row) => eb.and([eb('id', '=', row.id), eb('attempts', '=', row.attempts)]))),
    )
    .where('delivered_at', 'is', null)
    .where('given_up_at', 'is', null)
    .execute();
}

export async function markWebhookDelivered(db: PspDb, id: string, now: Date): Promise<void> {
  await db
    .updateTable('psp_webhook')
    .set({ delivered_at: now, last_error: null })
    .where('id', '=', id)
    .execute();
}

/** `markWebhookDelivered` for many rows in one statement, all stamped `now`. */
export async function markWebhooksDelivered(
  db: PspDb,
  ids: readonly string[],
  now: Date,
): Promise<void> {
  if (ids.length === 0) return;
  await db
    .updateTable('psp_webhook')
    .set({ delivered_at: now, last_error: null })
    .where('id', 'in', ids)
    .execute();
}

export async function markWebhookFailed(
  db: PspDb,
  id: string,
  options: { error: string; nextAttemptAt: Date },
): Promise<void> {
  await db
    .updateTable('psp_webhook')
    .set({ next_attempt_at: options.nextAttemptAt, last_error: truncate(options.error) })
    .where('id', '=', id)
    .execute();
}

export async function markWebhookGivenUp(
  db: PspDb,
  id: string,
  options: { error: string; now: Date },
): Promise<void> {
  await db
    .updateTable('psp_webhook')
    .set({ given_up_at: options.now, last_error: truncate(options.error) })
    .where('id', '=', id)
    .execute();
}

function truncate(text: string): string {
  return text.length <= LAST_ERROR_LENGTH_MAX
    ? text
    : `${text.slice(0, LAST_ERROR_LENGTH_MAX - 1)}…`;
}

function toDelivery(row: Selectable<PspWebhookTable>): PspWebhookDelivery {
  return Object.freeze({
    id: row.id,
    eventId: row.event_id,
    delivery: row.delivery,
    nonce: row.nonce,
    url: row.url,
    body: row.body,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    deliveredAt: row.delivered_at ?? undefined,
    givenUpAt: row.given_up_at ?? undefined,
    lastError: row.last_error ?? undefined,
  });
}
