/**
 * What the PSP mock does, independent of how it is called: the gRPC handlers and the hosted page
 * both come here, so paying through PayWithCard and through the form is one code path.
 *
 * Invariants: one payment per nonce (registration is idempotent, a different amount or currency
 * is ALREADY_EXISTS); a payment is decided at most once, by a conditional UPDATE, and the
 * decision, its charge (on success) and its webhook row commit in one transaction. Registrations
 * and decisions that arrive together share statements and transactions (group commit); each
 * still gets its own answer after its commit, and a batch that fails is retried unit by unit.
 */
import { randomFillSync } from 'node:crypto';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
  assertNever,
} from '../../domain/errors.js';
import {
  CURRENCIES,
  ORDER_AMOUNT_MINOR_MAX,
  isCurrencyCode,
  type CurrencyCode,
} from '../../domain/money.js';
import { isDuplicateKey, isTransientLockError } from '../../storage/errors.js';
import {
  GroupCommit,
  type GroupCommitBatch,
  type GroupCommitLimits,
} from '../../storage/group-commit.js';
import { commitInOneTrip, resultRows, rowCountGuard } from '../../storage/one-trip.js';
import { toUnavailable } from '../../storage/transaction.js';
import { encodePspWebhookEvent, PSP_WEBHOOK_EVENT_TYPE, type PspWebhookEvent } from '../webhook.js';
import type { BehaviorStore } from './behavior.js';
import { decideCard, parseCardNumber } from './card.js';
import {
  cancelRegisteredPayment,
  decidePaymentsStatement,
  findPaymentByNonce,
  findPaymentByToken,
  insertChargesStatement,
  insertPayment,
  insertPayments,
  listCharges,
  lockPaymentByNonce,
  type NewPspCharge,
  type NewPspPayment,
  type PaymentDecision,
  type PspCharge,
  type PspDb,
  type PspPayment,
  type PspTrx,
} from './payment.repository.js';
import { PSP_GUARD_TABLE, PSP_PAYMENT_STATE, type PspPaymentState } from './schema.js';
import {
  findLatestWebhook,
  insertWebhook,
  insertWebhooksStatements,
  type NewPspWebhook,
  type PspWebhookDelivery,
  type WebhookIdRow,
} from './webhook.repository.js';

/** Longest accepted notification URL (the column is VARCHAR(2048)). */
const NOTIFICATION_URL_LENGTH_MAX = 2_048;
/** ListCharges has no paging in the proto; beyond this many rows it asks for a nonce filter. */
export const LIST_CHARGES_MAX = 20_000;
/** Registrations or decisions waiting for a group commit; beyond it RESOURCE_EXHAUSTED (retryable). */
const GROUP_COMMIT_QUEUE_MAX = 10_000;
/** Attempts of one transaction that hits a deadlock or a lock wait timeout. */
const TRANSACTION_ATTEMPTS_MAX = 4;

const NONCE = /^[\x21-\x7e]{1,64}$/;
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
const TOKEN = /^tok_[a-z2-7]{24}$/;

/** The hosted page of a payment; `publicUrl` is the base URL of the PSP's HTTP side. */
export function checkoutUrl(publicUrl: string, token: string): string {
  return `${publicUrl.replace(/\/+$/, '')}/pay/${token}`;
}

/** True if `value` has the shape of a token; checked before any database lookup. */
export function isPaymentToken(value: string): boolean {
  return TOKEN.test(value);
}

/** Bytes of one id; the pool below is refilled once per RANDOM_POOL_IDS ids. */
const ID_BYTES = 15;
const RANDOM_POOL_IDS = 256;
const randomPool = Buffer.alloc(ID_BYTES * RANDOM_POOL_IDS);
let randomPoolOffset = randomPool.length;

/** Fresh CSPRNG bytes for one id, drawn from a pool so most ids cost no randomFillSync call. */
function idBytes(): Buffer {
  if (randomPoolOffset + ID_BYTES > randomPool.length) {
    randomFillSync(randomPool);
    randomPoolOffset = 0;
  }
  const bytes = randomPool.subarray(randomPoolOffset, randomPoolOffset + ID_BYTES);
  randomPoolOffset += ID_BYTES;
  return bytes;
}

/** 24 random base32 characters (120 bits) after a prefix; URL-safe. */
function randomId(prefix: 'tok_' | 'psp_' | 'evt_'): string {
  const bytes = idBytes();
  let bits = 0;
  let value = 0;
  let out = prefix;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return out;
}

export type RegisterInput = Readonly<{
  nonce: string;
  amountMinor: bigint;
  currencyCode: string;
  /** Empty for the PSP's default endpoint. */
  notificationUrl: string;
}>;

export type RegisterResult = Readonly<{
  payment: PspPayment;
  /** False when the nonce was already registered (an idempotent repeat). */
  created: boolean;
}>;

export type PayResult = Readonly<{
  payment: PspPayment;
  /** True if this call made the decision; false if the payment had been decided before. */
  decidedNow: boolean;
}>;

/** What the payments need of the webhook sender (WebhookSender). */
export type WebhookOutlet = Readonly<{
  /** The end of the lease of an attempt that starts at `now` (the decision's write). */
  leaseUntil: (now: Date) => Date;
  /** Takes a committed row inserted with that lease, to POST it at once. */
  deliver: (row: PspWebhookDelivery) => void;
  /** Makes the sender poll now (a row due now was inserted). */
  wake: () => void;
}>;

export type PspPaymentsOptions = Readonly<{
  db: PspDb;
  behavior: BehaviorStore;
  /** Where webhooks go when a registration names no notification_url. */
  defaultNotificationUrl: string;
  /** Gets every new webhook row after its commit. */
  webhooks: WebhookOutlet;
  /** A number in [0, 1); Math.random unless a test fixes it. */
  random?: () => number;
  /**
   * Group commit of registrations and of decisions: rows per statement (1 turns batching off),
   * batches in flight (each holds one pooled connection).
   */
  groupCommit: GroupCommitLimits;
  /** Told of every group-commit batch, named by what it writes (tests, metrics). */
  onBatch?: (name: string, batch: GroupCommitBatch) => void;
}>;

export class PspPayments {
  readonly #db: PspDb;
  readonly #behavior: BehaviorStore;
  readonly #defaultNotificationUrl: string;
  readonly #webhooks: WebhookOutlet;
  readonly #random: () => number;
  /** Registrations that arrive together are inserted with one statement. */
  readonly #registrations: GroupCommit<NewPspPayment, PspPayment>;
  /**
   * Decisions made together commit in one transaction; each answers its webhook row, or
   * undefined if the payment was decided (or cancelled) elsewhere first.
   */
  readonly #decisions: GroupCommit<DecisionWrite, PspWebhookDelivery | undefined>;

  constructor(options: PspPaymentsOptions) {
    this.#db = options.db;
    this.#behavior = options.behavior;
    this.#defaultNotificationUrl = options.defaultNotificationUrl;
    this.#webhooks = options.webhooks;
    this.#random = options.random ?? Math.random;
    const db = options.db;
    const onBatch = options.onBatch;
    this.#registrations = new GroupCommit({
      name: 'psp registrations',
      ...options.groupCommit,
      queueMax: GROUP_COMMIT_QUEUE_MAX,
      onBatch: onBatch && ((batch) => onBatch('psp registrations', batch)),
      writeOne: (payment) => insertPayment(db, payment),
      writeBatch: async (payments) => {
        try {
          return await insertPayments(db, payments);
        } catch (error) {
          // Unavailable answers the whole batch; anything else is retried one by one.
          throw toUnavailable(error);
        }
      },
    });
    this.#decisions = new GroupCommit({
      name: 'psp decisions',
      ...options.groupCommit,
      queueMax: GROUP_COMMIT_QUEUE_MAX,
      onBatch: onBatch && ((batch) => onBatch('psp decisions', batch)),
      writeOne: async (write) =>
        (await this.#lockRetried(() => writeDecisions(db, [write], options.webhooks)))?.[0],
      writeBatch: async (writes) => {
        const written = await this.#lockRetried(() => writeDecisions(db, writes, options.webhooks));
        if (written === undefined) {
          // Which one is unknown: GroupCommit writes each alone.
          throw new Error(`some of ${writes.length} payments were decided elsewhere`);
        }
        return written;
      },
    });
  }

  /** Registers a payment, or returns the existing one for the same nonce and amount. */
  async register(input: RegisterInput): Promise<RegisterResult> {
    const nonce = validNonce(input.nonce);
    const amountMinor = validAmount(input.amountMinor);
    const currency = validCurrency(input.currencyCode);
    const notificationUrl = this.#validNotificationUrl(input.notificationUrl);
    // The insert comes first, since new nonces are the common case: one statement (shared with
    // the registrations that arrive at the same time), and the row it wrote is known without
    // reading it back. A duplicate nonce (a repeat, or a concurrent
    // registration) fails on the unique key, after which the stored row is there to compare
    // against. Two rounds at most: the row can only be missing again if it was deleted.
    for (let round = 1; round <= 2; round += 1) {
      const token = randomId('tok_');
      const now = new Date();
      try {
        const payment = await this.#run(() =>
          this.#registrations.submit({
            nonce,
            token,
            amountMinor,
            currency,
            notificationUrl,
            now,
          }),
        );
        return { payment, created: true };
      } catch (error) {
        if (!isDuplicateKey(error)) throw error;
      }
      const existing = await this.#run(() => findPaymentByNonce(this.#db, nonce));
      if (existing !== undefined) {
        if (existing.amountMinor !== amountMinor || existing.currency !== currency) {
          throw new AlreadyExistsError(
            `nonce '${nonce}' is already registered with amount_minor ${existing.amountMinor} ` +
              `${existing.currency}, not ${amountMinor} ${currency}`,
          );
        }
        return { payment: existing, created: false };
      }
    }
    throw new UnavailableError(`registration of nonce '${nonce}' kept colliding; retry`);
  }

  /** The payment registered under a nonce; NotFoundError if there is none. */
  async getByNonce(nonceInput: string): Promise<PspPayment> {
    const nonce = validNonce(nonceInput);
    const payment = await this.#run(() => findPaymentByNonce(this.#db, nonce));
    if (payment === undefined) throw new NotFoundError('payment', nonce);
    return payment;
  }

  /** The payment behind a hosted-page token, or undefined (also for a malformed token). */
  async findByToken(token: string): Promise<PspPayment | undefined> {
    if (!isPaymentToken(token)) return undefined;
    return this.#run(() => findPaymentByToken(this.#db, token));
  }

  /**
   * Cancels a registered payment. Cancelling a cancelled payment is a no-op; a decided one fails
   * with FailedPreconditionError. Returns the final state (always CANCELLED).
   */
  async cancel(nonceInput: string): Promise<PspPaymentState> {
    const nonce = validNonce(nonceInput);
    // A REGISTERED payment can change under us only once (decided or cancelled), so a second
    // look always sees a final state.
    for (let round = 1; round <= 2; round += 1) {
      const payment = await this.#run(() => findPaymentByNonce(this.#db, nonce));
      if (payment === undefined) throw new NotFoundError('payment', nonce);
      switch (payment.status) {
        case PSP_PAYMENT_STATE.registered: {
          const now = new Date();
          const cancelled = await this.#run(() =>
            cancelRegisteredPayment(this.#db, payment.id, now),
          );
          if (cancelled) return PSP_PAYMENT_STATE.cancelled;
          continue;
        }
        case PSP_PAYMENT_STATE.cancelled:
          return PSP_PAYMENT_STATE.cancelled;
        case PSP_PAYMENT_STATE.succeeded:
        case PSP_PAYMENT_STATE.declined:
          throw new FailedPreconditionError(
            `payment '${nonce}' is already ${payment.status} and cannot be cancelled`,
          );
        default:
          return assertNever(payment.status, 'psp payment status');
      }
    }
    throw new Error(`payment ${nonce} stayed REGISTERED after a failed conditional cancel`);
  }

  /**
   * Pays with a card, as the hosted page's form does. The first call decides; later calls return
   * that decision without charging again, whatever card they give. NotFoundError for an unknown
   * token, FailedPreconditionError for a cancelled payment, InvalidArgumentError for a bad card
   * number (only while the payment can still be paid: the page must not offer its form again).
   */
  async pay(token: string, cardNumberInput: string): Promise<PayResult> {
    if (token === '') throw new InvalidArgumentError('token', 'is required');
    if (!isPaymentToken(token)) throw new NotFoundError('payment token', token);
    const payment = await this.#run(() => findPaymentByToken(this.#db, token));
    if (payment === undefined) throw new NotFoundError('payment token', token);
    if (payment.status !== PSP_PAYMENT_STATE.registered) return settled(payment);
    return this.#decide(payment, parseCardNumber(cardNumberInput));
  }

  /**
   * `pay` for a payment this process has just registered (auto-pay): the row is known, so it is
   * not read again. The conditional UPDATE still decides whether this call wins.
   */
  async payRegistered(payment: PspPayment, cardNumberInput: string): Promise<PayResult> {
    return this.#decide(payment, parseCardNumber(cardNumberInput));
  }

  async #decide(payment: PspPayment, cardNumber: string): Promise<PayResult> {
    if (payment.status !== PSP_PAYMENT_STATE.registered) return settled(payment);
    // A stored row keeps whatever currency it was written with; a charge is a new write, so it is
    // made only in a currency the mock registers payments in.
    const currency = payment.currency;
    if (!isCurrencyCode(currency)) {
      throw new FailedPreconditionError(
        `payment '${payment.nonce}' is in ${currency}, which this mock does not charge ` +
          `(it charges in ${CURRENCIES.join(', ')}); cancel it instead`,
      );
    }
    const decision = decideCard(cardNumber, this.#behavior.get().successRate, this.#random());
    const now = new Date();
    const status = decision.approved ? PSP_PAYMENT_STATE.succeeded : PSP_PAYMENT_STATE.declined;
    const decided: PspPayment = Object.freeze({
      ...payment,
      status,
      pspReference: decision.approved ? randomId('psp_') : undefined,
      declineCode: decision.approved ? undefined : decision.declineCode,
      updatedAt: now,
    });
    const event: PspWebhookEvent = {
      id: randomId('evt_'),
      type: decision.approved
        ? PSP_WEBHOOK_EVENT_TYPE.paymentSucceeded
        : PSP_WEBHOOK_EVENT_TYPE.paymentDeclined,
      created: Math.floor(now.getTime() / 1000),
      data: {
        nonce: payment.nonce,
        token: payment.token,
        psp_reference: decided.pspReference ?? null,
        amount_minor: payment.amountMinor,
        currency: payment.currency,
        decline_code: decided.declineCode ?? null,
      },
    };
    const won = await this.#run(() =>
      this.#decisions.submit({
        decision: {
          id: payment.id,
          status,
          pspReference: decided.pspReference,
          declineCode: decided.declineCode,
          now,
        },
        charge:
          decided.pspReference === undefined
            ? undefined
            : {
                pspReference: decided.pspReference,
                nonce: payment.nonce,
                amountMinor: payment.amountMinor,
                currency,
                now,
              },
        webhook: {
          eventId: event.id,
          delivery: 1,
          nonce: payment.nonce,
          url: payment.notificationUrl,
          body: encodePspWebhookEvent(event),
          now,
        },
      }),
    );
    if (won === undefined) {
      // Someone else decided (or cancelled) between our read and our update.
      const current = await this.#run(() => findPaymentByToken(this.#db, payment.token));
      if (current === undefined) throw new NotFoundError('payment token', payment.token);
      return settled(current);
    }
    this.#webhooks.deliver(won);
    return { payment: decided, decidedNow: true };
  }

  /**
   * Queues the latest event of a nonce for delivery again: a new outbox row with the same event
   * id and body, so the receiver sees a true duplicate. Returns the event id.
   */
  async resendWebhook(nonceInput: string): Promise<string> {
    const nonce = validNonce(nonceInput);
    const eventId = await this.#transaction(async (trx) => {
      // The payment lock serialises resends of one nonce, so delivery numbers do not collide.
      const payment = await lockPaymentByNonce(trx, nonce);
      if (payment === undefined) throw new NotFoundError('payment', nonce);
      const latest = await findLatestWebhook(trx, nonce);
      if (latest === undefined) {
        throw new FailedPreconditionError(
          `payment '${nonce}' is ${payment.status} and has no webhook event to resend`,
        );
      }
      const last = await trx
        .selectFrom('psp_webhook')
        .select((eb) => eb.fn.max('delivery').as('delivery'))
        .where('event_id', '=', latest.eventId)
        .executeTakeFirstOrThrow();
      await insertWebhook(trx, {
        eventId: latest.eventId,
        delivery: Number(last.delivery ?? latest.delivery) + 1,
        nonce,
        url: latest.url,
        body: latest.body,
        now: new Date(),
        leaseUntil: undefined,
      });
      return latest.eventId;
    });
    this.#webhooks.wake();
    return eventId;
  }

  /** The charges made, oldest first; FailedPreconditionError beyond LIST_CHARGES_MAX rows. */
  async listCharges(nonceFilter: string): Promise<PspCharge[]> {
    const nonce = nonceFilter === '' ? undefined : validNonce(nonceFilter);
    const charges = await this.#run(() =>
      listCharges(this.#db, { nonce, limit: LIST_CHARGES_MAX + 1 }),
    );
    if (charges.length > LIST_CHARGES_MAX) {
      throw new FailedPreconditionError(
        `more than ${LIST_CHARGES_MAX} charges; filter by nonce (ListCharges has no paging)`,
      );
    }
    return charges;
  }

  #validNotificationUrl(input: string): string {
    if (input === '') return this.#defaultNotificationUrl;
    if (input.length > NOTIFICATION_URL_LENGTH_MAX) {
      throw new InvalidArgumentError('notification_url', `must be at most 2048 characters`);
    }
    let url: URL;
    try {
      url = new URL(input);
    } catch {
      throw new InvalidArgumentError('notification_url', 'must be an absolute http(s) URL');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new InvalidArgumentError('notification_url', 'must be an absolute http(s) URL');
    }
    return input;
  }

  /** Runs one query; connection failures become UnavailableError. */
  async #run<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (error) {
      throw toUnavailable(error);
    }
  }

  /** One transaction, retried whole on deadlock or lock wait timeout (bounded). */
  #transaction<T>(work: (trx: PspTrx) => Promise<T>): Promise<T> {
    return this.#lockRetried(() => this.#db.transaction().execute(work));
  }

  /** Runs `transaction` again on deadlock or lock wait timeout (bounded). */
  async #lockRetried<T>(transaction: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await transaction();
      } catch (error) {
        if (isTransientLockError(error) && attempt < TRANSACTION_ATTEMPTS_MAX) {
          await new Promise((resolve) => setTimeout(resolve, 5 * attempt + Math.random() * 10));
          continue;
        }
        throw toUnavailable(error);
      }
    }
  }
}

/**
 * One decision's writes: the conditional UPDATE, its charge (approved only), its webhook row. The
 * row's lease is set when it is written, not here: a decision may wait in the group-commit queue,
 * and a lease started before that wait could be too short to POST by the time of the commit.
 */
type DecisionWrite = Readonly<{
  decision: PaymentDecision;
  charge: NewPspCharge | undefined;
  webhook: Omit<NewPspWebhook, 'leaseUntil'>;
}>;

/**
 * Writes decisions in one transaction of one round trip (storage/one-trip.ts): one statement per
 * table, the webhook rows' ids read back in the same packet. Answers undefined, with nothing
 * written, if any payment was no longer REGISTERED (the UPDATE's row-count guard trips): alone,
 * that one was decided elsewhere first; in a batch, which one is unknown.
 */
async function writeDecisions(
  db: PspDb,
  writes: readonly DecisionWrite[],
  webhooks: Pick<WebhookOutlet, 'leaseUntil'>,
): Promise<PspWebhookDelivery[] | undefined> {
  const charges = writes.flatMap(({ charge }) => (charge === undefined ? [] : [charge]));
  const leaseUntil = webhooks.leaseUntil(new Date());
  const rows = insertWebhooksStatements(
    db,
    writes.map(({ webhook }) => ({ ...webhook, leaseUntil })),
  );
  const outcome = await commitInOneTrip(db, [
    decidePaymentsStatement(
      db,
      writes.map(({ decision }) => decision),
    ),
    rowCountGuard(writes.length, PSP_GUARD_TABLE),
    ...(charges.length > 0 ? [insertChargesStatement(db, charges)] : []),
    rows.insert,
    rows.readIds,
  ]);
  if (!outcome.committed) return undefined;
  return rows.stored(resultRows<WebhookIdRow>(outcome.results.at(-1)));
}

/** The result of a payment that was decided before; a cancelled one cannot be paid. */
function settled(payment: PspPayment): PayResult {
  if (payment.status === PSP_PAYMENT_STATE.cancelled) {
    throw new FailedPreconditionError(
      `payment '${payment.nonce}' was cancelled and cannot be paid`,
    );
  }
  return { payment, decidedNow: false };
}

function validNonce(nonce: string): string {
  if (!NONCE.test(nonce)) {
    throw new InvalidArgumentError('nonce', 'must be 1 to 64 visible ASCII characters');
  }
  return nonce;
}

function validAmount(amountMinor: bigint): bigint {
  if (amountMinor < 1n || amountMinor > ORDER_AMOUNT_MINOR_MAX) {
    throw new InvalidArgumentError('amount_minor', 'must be between 1 and 10^12 minor units');
  }
  return amountMinor;
}

function validCurrency(currencyCode: string): CurrencyCode {
  if (!isCurrencyCode(currencyCode)) {
    throw new InvalidArgumentError('currency_code', `must be USD, got '${currencyCode}'`);
  }
  return currencyCode;
}
