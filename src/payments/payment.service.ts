/**
 * The payments use cases behind both the gRPC API and the REST twin: create (idempotent), get,
 * list and watch. CreatePayment validates first, so bad input writes nothing; then it writes the
 * idempotency key (COMPLETED), the payment, its orders (born EXECUTING) and one ExecuteOrder
 * outbox message per order in ONE transaction. A duplicate request fails on the key's primary
 * key and is answered with the payment the key names.
 */
import type { CompiledQuery } from 'kysely';
import {
  AbortedError,
  AlreadyExistsError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../domain/errors.js';
import { newId, PARTY_ID_PATTERN, PAYMENT_ID_EXAMPLE, PAYMENT_ID_PATTERN } from '../domain/ids.js';
import { executeOrderMessage } from '../messaging/commands.js';
import type { Names } from '../messaging/subjects.js';
import type { Db } from '../storage/db.js';
import { outboxInsert } from '../storage/repositories/outbox.repository.js';
import { historyRow } from '../storage/repositories/payment-order.repository.js';
import { commitInOneTrip } from '../storage/one-trip.js';
import { isConnectionError, isDuplicateKey, isPoolQueueFull } from '../storage/errors.js';
import {
  createdPayment,
  deleteAbandonedKey,
  findIdempotencyKey,
  findPayment,
  idempotencyKeyInserts,
  listPayments,
  paymentInserts,
  PAYMENT_STATE,
  TERMINAL_PAYMENT_STATES,
  type NewPayment,
  type Payment,
} from '../storage/repositories/payment.repository.js';
import { GroupCommit } from '../storage/group-commit.js';
import { inTransaction, toUnavailable, type Trx } from '../storage/transaction.js';
import {
  ORDER_STATE,
  type OrderEvent,
  type PaymentOrder,
} from '../actors/payment-order/machine.js';
import { evaluateRisk, type RiskDecision, type RiskRules } from './risk.js';
import { nextChange, type PaymentEvents } from './payment-events.js';
import type { LocalExecutor } from '../actors/payment-order/local-execute.js';
import { parseCreatePayment, requireId, type CreatePaymentInput } from './validation.js';
import { InvalidArgumentError } from '../domain/errors.js';
import { decodePageToken, encodePageToken } from '../domain/page-token.js';

export const RISK_REJECTED = 'RISK_REJECTED';
const EXECUTE_ORDER: OrderEvent = { type: 'ExecuteOrder' };
const WATCH_POLL_MS = 1_000;
const WATCH_DURATION_MS_MAX = 60 * 60_000;
/** Open WatchPayment streams per node at most, by default. */
export const WATCHES_MAX = 10_000;
/** Open WatchPayment streams per payment per node at most, by default. */
export const WATCHES_PER_PAYMENT_MAX = 100;

export type PaymentServiceDeps = Readonly<{
  db: Db;
  /**
   * Where creations are written, in one packet each batch: a pool that allows several statements
   * per packet (storage/db.ts `multipleStatements`). Reads go through `db`.
   */
  oneTripDb: Db;
  names: Names;
  risk: RiskRules;
  events: PaymentEvents;
  /** Called after a commit that wrote outbox rows due at once. */
  wakeRelay: () => void;
  /**
   * Runs new orders' ExecuteOrder on this node (actors/payment-order/local-execute.ts); every
   * order goes through the relay and JetStream when unset or when it has no room.
   */
  local?: Pick<LocalExecutor, 'reserve' | 'unreserve' | 'run'>;
  /**
   * Told of every order born EXECUTING, after its commit (metrics and logs, as for the actor's;
   * not published as a payment event: nobody can be waiting for a payment just created).
   */
  onTransition?: (previous: PaymentOrder, next: PaymentOrder, event: OrderEvent) => void;
  /** How long create waits for checkout URLs before answering. */
  createWaitMs: number;
  now: () => Date;
  /** Writes concurrent creations together (group commit); each alone when unset. */
  groupCommit?: Readonly<{ creations: GroupCommitSettings }>;
  /**
   * Open watches at most, on this node and per payment (WATCHES_MAX and WATCHES_PER_PAYMENT_MAX
   * by default). A watch counts from admission to its end, whether it is waiting for a hint,
   * re-reading the payment or polling; `events` should have room for more listeners than
   * `watches.max`, or watchers could leave none to CreatePayment's short wait.
   */
  watches?: Readonly<{ max: number; perPaymentMax: number }>;
  /**
   * How long one watch runs at most before the server ends it, in ms (WATCH_DURATION_MS_MAX, an
   * hour, by default; tests shorten it).
   */
  watchDurationMsMax?: number;
}>;

type GroupCommitSettings = Readonly<{
  batchMax: number;
  inFlightMax: number;
  queueMax: number;
  onBatch?: (batch: { size: number; ms: number; ok: boolean }) => void;
}>;

type Creation = Readonly<{
  payment: NewPayment;
  /** The request's fingerprint, stored with its idempotency key. */
  requestHash: string;
  decision: RiskDecision;
  now: Date;
  /** The orders' ExecuteOrder rows are held back from the relay until then (run here first). */
  heldUntil: Date | undefined;
}>;

/**
 * Writes new payments: the idempotency keys (first: a duplicate stops the transaction before
 * anything else is written), the rows, the orders' born transitions and one ExecuteOrder outbox
 * message per approved order, all in the caller's transaction. A duplicate key fails it with
 * MySQL's duplicate-entry error; in a batch, that sends every creation through alone, so only
 * the duplicate fails.
 */
async function writeCreations(
  trx: Trx,
  creations: readonly Creation[],
  names: Names,
): Promise<void> {
  for (const statement of creationStatements(trx, creations, names)) {
    await trx.executeQuery(statement);
  }
}

/**
 * `writeCreations` in one transaction of one round trip (see storage/one-trip.ts). Throws a
 * duplicate as it came (the caller looks the key up); undefined when another statement failed (a
 * deadlock, say): the statement-by-statement way then finds out.
 */
async function writeCreationsInOneTrip(
  db: Db,
  creations: readonly Creation[],
  names: Names,
): Promise<true | undefined> {
  try {
    await commitInOneTrip(db, creationStatements(db, creations, names));
    return true;
  } catch (error) {
    if (isConnectionError(error) || isPoolQueueFull(error)) throw toUnavailable(error);
    if (isDuplicateKey(error)) throw error;
    return undefined;
  }
}

async function writeCreationsEitherWay(
  db: Db,
  creations: readonly Creation[],
  names: Names,
): Promise<void> {
  if ((await writeCreationsInOneTrip(db, creations, names)) === undefined) {
    await inTransaction(db, (trx) => writeCreations(trx, creations, names));
  }
}

/** The statements of `writeCreations`, built but not run; the idempotency keys come first. */
function creationStatements(
  db: Db | Trx,
  creations: readonly Creation[],
  names: Names,
): CompiledQuery[] {
  const statements = [
    idempotencyKeyInserts(
      db,
      creations.map(({ payment, requestHash, now }) => ({
        buyerId: payment.buyerId,
        requestId: payment.requestId,
        requestHash,
        paymentId: payment.id,
        now,
      })),
    ),
    ...paymentInserts(db, creations),
  ];
  // Every order is born past NOT_STARTED, and its history says so at version 0: an approved
  // order as EXECUTING (the intent to call the PSP, recorded before any call, as the actor's
  // ExecuteOrder transition would), a rejected one as FAILED.
  const history = creations.flatMap(({ payment, decision, now }) =>
    payment.orders.map((order) =>
      historyRow(
        { id: order.id, paymentId: payment.id },
        {
          version: 0n,
          fromState: ORDER_STATE.notStarted,
          toState: order.state,
          eventType: decision.approved ? 'ExecuteOrder' : 'RiskRejected',
          detail: JSON.stringify(
            decision.approved ? EXECUTE_ORDER : { rule: decision.rule, message: decision.message },
          ),
          at: now,
        },
      ),
    ),
  );
  if (history.length > 0) {
    statements.push(db.insertInto('payment_order_transition').values(history).compile());
  }
  const commands = creations.flatMap(({ payment, decision, heldUntil }) =>
    decision.approved
      ? payment.orders.map((order) => executeOrderMessage(names, order.id, heldUntil))
      : [],
  );
  if (commands.length > 0) {
    statements.push(
      outboxInsert(db, commands, new Date(Math.max(...creations.map(({ now }) => now.getTime())))),
    );
  }
  return statements;
}

export class PaymentService {
  /** Group commit of creations; unset writes each in its own transaction. */
  private readonly creations: GroupCommit<Creation, void> | undefined;
  private readonly watchesMax: number;
  private readonly watchesPerPaymentMax: number;
  /**
   * Open watches per payment id; an id leaves with its last watch, so the map holds at most
   * `watchesMax` entries.
   */
  private readonly watchesByPayment = new Map<string, number>();
  /** One per open watch, which ends its wait: their number is the node's open watches. */
  private readonly watchStops = new Set<AbortController>();
  /** Set by endWatches: open watches end, new ones are refused. */
  private watchesEnded = false;

  constructor(private readonly deps: PaymentServiceDeps) {
    this.watchesMax = deps.watches?.max ?? WATCHES_MAX;
    this.watchesPerPaymentMax = deps.watches?.perPaymentMax ?? WATCHES_PER_PAYMENT_MAX;
    const group = deps.groupCommit;
    this.creations =
      group === undefined
        ? undefined
        : new GroupCommit<Creation, void>({
            name: 'payment creations',
            ...group.creations,
            writeOne: (creation) => writeCreationsEitherWay(deps.oneTripDb, [creation], deps.names),
            writeBatch: async (creations) => {
              await writeCreationsEitherWay(deps.oneTripDb, creations, deps.names);
              return creations.map(() => undefined);
            },
          });
  }

  /**
   * Ends every open watch with UNAVAILABLE and refuses new ones, at once: a watch may last an
   * hour, and the gRPC server's graceful shutdown waits for every open call. Call it before
   * that shutdown, or the watches spend the whole grace period the later steps need.
   */
  endWatches(): void {
    this.watchesEnded = true;
    for (const stop of this.watchStops) stop.abort();
  }

  /** Waits (bounded) for creations already taken to be written. */
  async stop(timeoutMs: number): Promise<void> {
    await this.creations?.stop(timeoutMs);
  }

  /**
   * Creates a payment (see the module comment), then waits for its checkout URLs for at most
   * CREATE_WAIT_MS, or `waitMsMax` when that is shorter: the caller's deadline, less the time the
   * answer needs to get back, so the wait never turns a created payment into DEADLINE_EXCEEDED.
   */
  async create(
    raw: Parameters<typeof parseCreatePayment>[0],
    options: Readonly<{ waitMsMax?: number }> = {},
  ): Promise<Payment> {
    const input = parseCreatePayment(raw);
    const now = this.deps.now();
    // From the call's arrival: the creation's write (a queue, a lock wait) spends it too.
    const waitUntilMs = Date.now() + Math.max(0, options.waitMsMax ?? Infinity);
    // Twice at most: a second time only after an abandoned key was deleted (or the key vanished).
    for (let attempt = 1; ; attempt += 1) {
      const creation = this.prepare(input, now);
      const held = creation.heldUntil === undefined ? 0 : creation.payment.orders.length;
      try {
        await (this.creations?.submit(creation) ??
          writeCreationsEitherWay(this.deps.oneTripDb, [creation], this.deps.names));
      } catch (error) {
        if (held > 0) this.deps.local?.unreserve(held);
        if (!isDuplicateKey(error)) throw toUnavailable(error);
        const answer = await this.answerRepeat(input, now);
        if (answer !== 'create again') return answer;
        if (attempt >= 2) {
          throw new AbortedError(
            `request_id ${input.requestId} collided twice with another attempt; retry`,
            { retryDelayMs: 200 },
          );
        }
        continue;
      }
      // What was just committed is the answer unless the caller waits for checkout URLs.
      const created = createdPayment(creation.payment, now);
      if (creation.decision.approved) {
        for (const order of created.orders) {
          this.deps.onTransition?.(
            { ...order, state: ORDER_STATE.notStarted, attempts: 0 },
            order,
            EXECUTE_ORDER,
          );
        }
      }
      if (held > 0) this.deps.local?.run(created.orders);
      else if (creation.decision.approved) this.deps.wakeRelay();
      return this.waitForCheckout(
        created,
        Math.min(this.deps.createWaitMs, Math.max(0, waitUntilMs - Date.now())),
      );
    }
  }

  /**
   * The answer to a request whose key exists: the payment it created, ALREADY_EXISTS for other
   * parameters, ABORTED while an earlier version's claim is alive, or 'create again' when there is
   * no key after all (purged meanwhile, or the duplicate was another row: new ids will do) or an
   * abandoned one was just deleted.
   */
  private async answerRepeat(
    input: CreatePaymentInput,
    now: Date,
  ): Promise<Payment | 'create again'> {
    const key = await findIdempotencyKey(this.deps.db, input).catch((error: unknown) => {
      throw toUnavailable(error);
    });
    if (key === undefined) return 'create again';
    if (key.requestHash !== input.requestHash) {
      throw new AlreadyExistsError(
        `request_id ${input.requestId} was already used by buyer ${input.buyerId} with other ` +
          'parameters; use a new request_id for a new payment',
      );
    }
    if (key.state === 'COMPLETED' && key.paymentId !== undefined) return this.get(key.paymentId);
    // IN_FLIGHT: claimed by a node of an earlier version, which completes it with its payment.
    if (key.leaseUntil.getTime() >= now.getTime()) {
      throw new AbortedError(
        `a request with request_id ${input.requestId} is still in flight; retry shortly`,
        { retryDelayMs: 200 },
      );
    }
    await deleteAbandonedKey(this.deps.db, input, now).catch((error: unknown) => {
      throw toUnavailable(error);
    });
    return 'create again';
  }

  private prepare(input: CreatePaymentInput, now: Date): Creation {
    const decision = evaluateRisk(this.deps.risk, input);
    const heldUntil = decision.approved
      ? this.deps.local?.reserve(input.orders.length, now)
      : undefined;
    const paymentId = newId('payment', now.getTime());
    // An approved order is born EXECUTING, its first attempt recorded: the ExecuteOrder that
    // follows (here or from JetStream) registers it at the PSP without writing first.
    const orders = input.orders.map((order) => ({
      id: newId('order', now.getTime()),
      sellerId: order.sellerId,
      amountMinor: order.amountMinor,
      state: decision.approved ? ORDER_STATE.executing : ORDER_STATE.failed,
      failureReason: decision.approved ? undefined : RISK_REJECTED,
      attempts: decision.approved ? 1 : 0,
    }));
    return {
      requestHash: input.requestHash,
      payment: {
        id: paymentId,
        buyerId: input.buyerId,
        requestId: input.requestId,
        currency: input.currency,
        amountMinor: input.amountMinor,
        state: decision.approved ? PAYMENT_STATE.executing : PAYMENT_STATE.failed,
        failureReason: decision.approved ? undefined : RISK_REJECTED,
        orders,
      },
      decision,
      now,
      heldUntil,
    };
  }

  /** Returns once every live order has a checkout URL, or when `waitMs` is spent. */
  private async waitForCheckout(created: Payment, waitMs: number): Promise<Payment> {
    const deadline = Date.now() + waitMs;
    let payment = created;
    for (;;) {
      const waiting = payment.orders.some(
        (order) => order.checkoutUrl === undefined && !TERMINAL_ORDER.has(order.state),
      );
      const remainingMs = deadline - Date.now();
      if (!waiting || remainingMs <= 0) return payment;
      await nextChange(this.deps.events, payment.id, Math.min(remainingMs, 100));
      payment = await this.get(payment.id);
    }
  }

  async get(paymentId: string): Promise<Payment> {
    requireId('payment_id', paymentId, PAYMENT_ID_PATTERN, PAYMENT_ID_EXAMPLE);
    // One statement: the payment and its orders from the same snapshot, in one round trip.
    const payment = await findPayment(this.deps.db, paymentId).catch((error: unknown) => {
      throw toUnavailable(error);
    });
    if (payment === undefined) throw new NotFoundError('payment', paymentId);
    return payment;
  }

  async list(request: {
    pageSize: number;
    pageToken: string;
    state?: string;
    buyerId?: string;
  }): Promise<{ payments: Payment[]; nextPageToken: string }> {
    if (request.pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
    // A buyer id CreatePayment would refuse can match no payment: say so rather than list none.
    if (request.buyerId !== undefined && !PARTY_ID_PATTERN.test(request.buyerId)) {
      throw new InvalidArgumentError(
        'buyer_id',
        'must be 1-64 characters of letters, digits and _.:@- (no spaces), or empty for every buyer',
      );
    }
    const limit = Math.min(request.pageSize === 0 ? 20 : request.pageSize, 100);
    const filter = { state: request.state, buyerId: request.buyerId };
    const beforeId = decodePageToken('ListPayments', request.pageToken, filter, PAYMENT_ID_PATTERN);
    const rows = await listPayments(this.deps.db, {
      ...(filter.state !== undefined ? { state: filter.state } : {}),
      ...(filter.buyerId !== undefined ? { buyerId: filter.buyerId } : {}),
      ...(beforeId !== undefined ? { beforeId } : {}),
      limit: limit + 1,
    }).catch((error: unknown) => {
      throw toUnavailable(error);
    });
    const payments = rows.slice(0, limit);
    const last = payments[payments.length - 1];
    const nextPageToken =
      rows.length > limit && last !== undefined
        ? encodePageToken('ListPayments', last.id, filter)
        : '';
    return { payments, nextPageToken };
  }

  /**
   * Calls `send` with the payment now and after every change, until the payment is terminal, the
   * signal aborts or the watch has run for `watchDurationMsMax` (an hour by default). Refuses with RESOURCE_EXHAUSTED when this
   * node already has `watches.max` open watches, or `watches.perPaymentMax` on this payment;
   * ends, or refuses, with UNAVAILABLE once endWatches is called (the node is stopping).
   */
  async watch(
    paymentId: string,
    send: (payment: Payment) => void,
    signal: AbortSignal,
  ): Promise<void> {
    if (this.watchesEnded) throw watchesEndedError();
    let payment = await this.get(paymentId);
    const { stop, release } = this.admitWatch(paymentId);
    // Aborted by the caller's signal or by endWatches, whichever comes first.
    const abort = () => stop.abort();
    signal.addEventListener('abort', abort, { once: true });
    try {
      if (this.watchesEnded) throw watchesEndedError();
      let fingerprint = fingerprintOf(payment);
      send(payment);
      const deadline = Date.now() + (this.deps.watchDurationMsMax ?? WATCH_DURATION_MS_MAX);
      while (
        !TERMINAL_PAYMENT_STATES.has(payment.state) &&
        !stop.signal.aborted &&
        Date.now() < deadline
      ) {
        await nextChange(this.deps.events, paymentId, WATCH_POLL_MS, stop.signal);
        if (stop.signal.aborted) break;
        payment = await this.get(paymentId);
        const next = fingerprintOf(payment);
        if (next !== fingerprint) {
          fingerprint = next;
          send(payment);
        }
      }
      if (stop.signal.aborted && !signal.aborted) throw watchesEndedError();
    } finally {
      signal.removeEventListener('abort', abort);
      release();
    }
  }

  /**
   * Counts a new watch of `paymentId` in, or refuses it; returns the controller that ends its
   * wait and the function that counts it out. The count covers the watch's whole life: a
   * listener count would not, since a watcher leaves the listener table while it re-reads the
   * payment.
   */
  private admitWatch(paymentId: string): { stop: AbortController; release: () => void } {
    if (this.watchStops.size >= this.watchesMax) {
      throw new ResourceExhaustedError(
        `this node has ${this.watchesMax} open watches, its limit; ` +
          'retry later, on another node, or poll GetPayment instead',
        { retryDelayMs: WATCH_POLL_MS },
      );
    }
    const forPayment = this.watchesByPayment.get(paymentId) ?? 0;
    if (forPayment >= this.watchesPerPaymentMax) {
      throw new ResourceExhaustedError(
        `payment '${paymentId}' has ${this.watchesPerPaymentMax} open watches on this node, ` +
          'its limit; share one watch among your readers, or poll GetPayment instead',
        { retryDelayMs: WATCH_POLL_MS },
      );
    }
    const stop = new AbortController();
    this.watchStops.add(stop);
    this.watchesByPayment.set(paymentId, forPayment + 1);
    const release = () => {
      this.watchStops.delete(stop);
      const left = (this.watchesByPayment.get(paymentId) ?? 1) - 1;
      if (left === 0) this.watchesByPayment.delete(paymentId);
      else this.watchesByPayment.set(paymentId, left);
    };
    return { stop, release };
  }
}

const TERMINAL_ORDER: ReadonlySet<string> = new Set([
  ORDER_STATE.succeeded,
  ORDER_STATE.failed,
  ORDER_STATE.expired,
]);

/** Why a watch ended or was refused while the node stops: the client should watch again. */
function watchesEndedError(): UnavailableError {
  return new UnavailableError('this node is shutting down; watch again');
}

function fingerprintOf(payment: Payment): string {
  return [payment.version, ...payment.orders.map((order) => order.version)].join(':');
}
