/**
 * The payments use cases behind both the gRPC API and the REST twin: create (idempotent), get,
 * list and watch. CreatePayment validates first, so bad input writes nothing; then it claims the
 * idempotency key and creates the payment, its orders and one ExecuteOrder outbox message per
 * order in ONE transaction.
 */
import {
  AbortedError,
  AlreadyExistsError,
  NotFoundError,
  ResourceExhaustedError,
} from '../domain/errors.js';
import { newId, PAYMENT_ID_PATTERN } from '../domain/ids.js';
import { executeOrderMessage } from '../messaging/commands.js';
import type { Names } from '../messaging/subjects.js';
import type { Db } from '../storage/db.js';
import { outboxInsert } from '../storage/repositories/outbox.repository.js';
import { commitInOneTrip, rowCountGuard } from '../storage/one-trip.js';
import { isConnectionError } from '../storage/errors.js';
import {
  claimIdempotencyKey,
  createdPayment,
  idempotencyKeysCompletion,
  findPayment,
  insertIdempotencyKeys,
  listPayments,
  paymentInserts,
  PAYMENT_STATE,
  releaseIdempotencyKey,
  TERMINAL_PAYMENT_STATES,
  type IdempotencyClaim,
  type NewIdempotencyKey,
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

export const RISK_REJECTED = 'RISK_REJECTED';
const EXECUTE_ORDER: OrderEvent = { type: 'ExecuteOrder' };
const PAYMENT_ID_EXAMPLE = 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G';
const WATCH_POLL_MS = 1_000;
const WATCH_DURATION_MS_MAX = 60 * 60_000;

export type PaymentServiceDeps = Readonly<{
  db: Db;
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
  /** Told of every order born EXECUTING, after its commit (metrics and logs, as for the actor's). */
  onTransition?: (previous: PaymentOrder, next: PaymentOrder, event: OrderEvent) => void;
  /** How long create waits for checkout URLs before answering. */
  createWaitMs: number;
  /**
   * An IN_FLIGHT key whose owner died can be taken over after this long. Only availability
   * depends on it: the key is completed in the payment's own transaction, conditionally, so two
   * owners can never both commit a payment.
   */
  idempotencyLeaseMs: number;
  now: () => Date;
  /**
   * Writes concurrent idempotency claims and creations together (group commit, one group each,
   * so each reports its own batches); each alone when unset.
   */
  groupCommit?: Readonly<{ claims: GroupCommitSettings; creations: GroupCommitSettings }>;
}>;

type GroupCommitSettings = Readonly<{
  batchMax: number;
  inFlightMax: number;
  queueMax: number;
  onBatch?: (batch: { size: number; ms: number; ok: boolean }) => void;
}>;

type Creation = Readonly<{
  payment: NewPayment;
  decision: RiskDecision;
  now: Date;
  /** The orders' ExecuteOrder rows are held back from the relay until then (run here first). */
  heldUntil: Date | undefined;
}>;

/**
 * Writes new payments: the rows, the transitions of risk-rejected orders, one ExecuteOrder
 * outbox message per approved order, and the idempotency keys marked COMPLETED, all in the
 * caller's transaction. Throws AbortedError when a key is no longer this request's (taken over
 * after its lease ran out); in a batch that sends every creation through alone, so only the one
 * that lost its key fails.
 */
async function writeCreations(
  trx: Trx,
  creations: readonly Creation[],
  names: Names,
): Promise<void> {
  const built = creationStatements(trx, creations, names);
  for (const statement of built.statements) await trx.executeQuery(statement);
  const completed = await trx.executeQuery(built.keysCompletion);
  checkKeysCompleted(creations, Number(completed.numAffectedRows ?? 0n));
}

/**
 * `writeCreations` in one transaction of one round trip (see storage/one-trip.ts): a guard after
 * the keys' completion stops the packet before the COMMIT unless every key was still this
 * request's. Undefined when a statement failed (a duplicate, a deadlock): the
 * statement-by-statement way then finds out.
 */
async function writeCreationsInOneTrip(
  db: Db,
  creations: readonly Creation[],
  names: Names,
): Promise<true | undefined> {
  const built = creationStatements(db, creations, names);
  let outcome;
  try {
    outcome = await commitInOneTrip(db, [
      ...built.statements,
      built.keysCompletion,
      rowCountGuard(creations.length),
    ]);
  } catch (error) {
    if (isConnectionError(error)) throw toUnavailable(error);
    return undefined;
  }
  // Rolled back: a key was taken over; fail exactly as the other way does.
  if (!outcome.committed) checkKeysCompleted(creations, -1);
  return true;
}

/** The statements of `writeCreations`, built but not run; the keys' completion comes last. */
function creationStatements(db: Db | Trx, creations: readonly Creation[], names: Names) {
  const statements = paymentInserts(db, creations);
  // Every order is born past NOT_STARTED, and its history says so at version 0: an approved
  // order as EXECUTING (the intent to call the PSP, recorded before any call, as the actor's
  // ExecuteOrder transition would), a rejected one as FAILED.
  const history = creations.flatMap(({ payment, decision, now }) =>
    payment.orders.map((order) => ({
      order_id: order.id,
      payment_id: payment.id,
      version: '0',
      from_state: ORDER_STATE.notStarted,
      to_state: order.state,
      event_type: decision.approved ? 'ExecuteOrder' : 'RiskRejected',
      detail: JSON.stringify(
        decision.approved ? EXECUTE_ORDER : { rule: decision.rule, message: decision.message },
      ),
      created_at: now,
    })),
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
  const keysCompletion = idempotencyKeysCompletion(
    db,
    creations.map(({ payment }) => ({
      buyerId: payment.buyerId,
      requestId: payment.requestId,
      paymentId: payment.id,
    })),
  );
  return { statements, keysCompletion };
}

/** Throws AbortedError unless every creation's key was still this request's (`completed`). */
function checkKeysCompleted(creations: readonly Creation[], completed: number): void {
  if (completed === creations.length) return;
  const only = creations.length === 1 ? creations[0]?.payment.requestId : undefined;
  throw new AbortedError(
    only === undefined
      ? 'an idempotency key of this batch was taken over; each request goes through alone'
      : `request_id ${only} was taken over by another attempt; retry`,
  );
}

export class PaymentService {
  /** Group commit of creations; unset writes each in its own transaction. */
  private readonly creations: GroupCommit<Creation, void> | undefined;
  /** Idempotency claims that arrive together, inserted with one autocommit statement. */
  private readonly claims: GroupCommit<NewIdempotencyKey, IdempotencyClaim> | undefined;

  constructor(private readonly deps: PaymentServiceDeps) {
    const group = deps.groupCommit;
    this.claims =
      group === undefined
        ? undefined
        : new GroupCommit<NewIdempotencyKey, IdempotencyClaim>({
            name: 'idempotency claims',
            ...group.claims,
            writeOne: (key) => claimIdempotencyKey(deps.db, key),
            writeBatch: async (keys) => {
              await insertIdempotencyKeys(deps.db, keys);
              return keys.map((): IdempotencyClaim => ({ kind: 'claimed' }));
            },
          });
    this.creations =
      group === undefined
        ? undefined
        : new GroupCommit<Creation, void>({
            name: 'payment creations',
            ...group.creations,
            writeOne: async (creation) => {
              if ((await writeCreationsInOneTrip(deps.db, [creation], deps.names)) === undefined)
                await inTransaction(deps.db, (trx) => writeCreations(trx, [creation], deps.names));
            },
            writeBatch: async (creations) => {
              if ((await writeCreationsInOneTrip(deps.db, creations, deps.names)) === undefined)
                await inTransaction(deps.db, (trx) => writeCreations(trx, creations, deps.names));
              return creations.map(() => undefined);
            },
          });
  }

  /** Waits (bounded) for creations already taken to be written. */
  async stop(timeoutMs: number): Promise<void> {
    await this.claims?.stop(timeoutMs);
    await this.creations?.stop(timeoutMs);
  }

  async create(raw: Parameters<typeof parseCreatePayment>[0]): Promise<Payment> {
    const input = parseCreatePayment(raw);
    const { db } = this.deps;
    const now = this.deps.now();
    const key = {
      buyerId: input.buyerId,
      requestId: input.requestId,
      requestHash: input.requestHash,
      now,
      leaseMs: this.deps.idempotencyLeaseMs,
    };
    const claim = await (this.claims?.submit(key) ?? claimIdempotencyKey(db, key)).catch(
      (error: unknown) => {
        throw toUnavailable(error);
      },
    );
    if (claim.kind !== 'claimed') {
      if (claim.requestHash !== input.requestHash) {
        throw new AlreadyExistsError(
          `request_id ${input.requestId} was already used by buyer ${input.buyerId} with other ` +
            'parameters; use a new request_id for a new payment',
        );
      }
      if (claim.kind === 'in-flight') {
        throw new AbortedError(
          `a request with request_id ${input.requestId} is still in flight; retry shortly`,
          { retryDelayMs: 200 },
        );
      }
      return this.get(claim.paymentId);
    }
    const creation = this.prepare(input, now);
    const held = creation.heldUntil === undefined ? 0 : creation.payment.orders.length;
    try {
      await (this.creations?.submit(creation) ??
        inTransaction(db, (trx) => writeCreations(trx, [creation], this.deps.names)));
    } catch (error) {
      if (held > 0) this.deps.local?.unreserve(held);
      await releaseIdempotencyKey(db, input).catch(() => undefined);
      throw toUnavailable(error);
    }
    // What was just committed is the answer unless the caller waits for checkout URLs: no read.
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
    return this.waitForCheckout(created);
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

  /** Returns once every live order has a checkout URL, or when the wait budget is spent. */
  private async waitForCheckout(created: Payment): Promise<Payment> {
    const deadline = Date.now() + this.deps.createWaitMs;
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
    const limit = Math.min(request.pageSize === 0 ? 20 : request.pageSize, 100);
    const filter = { state: request.state, buyerId: request.buyerId };
    let beforeId: string | undefined;
    if (request.pageToken !== '') {
      const token = decodePageToken(request.pageToken);
      if (token === undefined || token.filter !== JSON.stringify(filter)) {
        throw new InvalidArgumentError(
          'page_token',
          'invalid or from a request with other filters; start again without page_token',
        );
      }
      beforeId = token.beforeId;
    }
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
        ? encodePageToken({ beforeId: last.id, filter: JSON.stringify(filter) })
        : '';
    return { payments, nextPageToken };
  }

  /**
   * Calls `send` with the payment now and after every change, until the payment is terminal, the
   * signal aborts or the watch has run for an hour.
   */
  async watch(
    paymentId: string,
    send: (payment: Payment) => void,
    signal: AbortSignal,
  ): Promise<void> {
    let payment = await this.get(paymentId);
    if (this.deps.events.size >= 10_000) {
      throw new ResourceExhaustedError('too many watchers on this node; retry later');
    }
    let fingerprint = fingerprintOf(payment);
    send(payment);
    const deadline = Date.now() + WATCH_DURATION_MS_MAX;
    while (
      !TERMINAL_PAYMENT_STATES.has(payment.state) &&
      !signal.aborted &&
      Date.now() < deadline
    ) {
      await nextChange(this.deps.events, paymentId, WATCH_POLL_MS, signal);
      if (signal.aborted) return;
      payment = await this.get(paymentId);
      const next = fingerprintOf(payment);
      if (next !== fingerprint) {
        fingerprint = next;
        send(payment);
      }
    }
  }
}

const TERMINAL_ORDER: ReadonlySet<string> = new Set([
  ORDER_STATE.succeeded,
  ORDER_STATE.failed,
  ORDER_STATE.expired,
]);

function fingerprintOf(payment: Payment): string {
  return [payment.version, ...payment.orders.map((order) => order.version)].join(':');
}

function encodePageToken(token: { beforeId: string; filter: string }): string {
  return Buffer.from(JSON.stringify(token)).toString('base64url');
}

function decodePageToken(value: string): { beforeId: string; filter: string } | undefined {
  try {
    const parsed = JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as unknown;
    if (
      typeof parsed === 'object' &&
      parsed !== null &&
      typeof (parsed as { beforeId?: unknown }).beforeId === 'string' &&
      PAYMENT_ID_PATTERN.test((parsed as { beforeId: string }).beforeId) &&
      typeof (parsed as { filter?: unknown }).filter === 'string'
    ) {
      return parsed as { beforeId: string; filter: string };
    }
  } catch {
    return undefined;
  }
  return undefined;
}
