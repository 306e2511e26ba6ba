/**
 * The payment-order actor: one per order, driven by its mailbox one message at a time. For each
 * event it loads the order (or uses its cached copy), asks the pure machine for the transition,
 * persists it in one transaction guarded by the version column (with the ledger and wallet
 * effects), and only after the commit runs the outside effects (PSP calls), whose results come
 * back as further events in the same turn. A stale version means another writer got there first:
 * the actor reloads and decides again.
 */
import { isBreakerOpen, isPspProtocolError } from '../../psp/client.js';
import type { Db } from '../../storage/db.js';
import { findPaymentOrder } from '../../storage/repositories/payment-order.repository.js';
import type { HandleOutcome } from '../../messaging/command-consumer.js';
import type { ActorLogic } from '../runtime/registry.js';
import {
  isTerminal,
  transition,
  type Effect,
  type OrderEvent,
  type PaymentOrder,
} from './machine.js';
import {
  describeError,
  eventFromPspStatus,
  isNotFound,
  isRetryable,
  type PspPort,
} from './effects.js';
import { persistAlone, type InboxReceipt, type PersistTransition } from './persistence.js';

export type OrderActorDeps = Readonly<{
  db: Db;
  /** Persists a transition (group commit across actors); one transaction each when unset. */
  persist?: PersistTransition;
  /** Loads the order (batched across actors); one query each when unset. */
  load?: (orderId: string) => Promise<PaymentOrder | undefined>;
  psp: PspPort;
  /** Where the PSP sends this order's webhooks. */
  notificationUrl: string;
  now: () => Date;
  /** Called after every committed transition (watch notifications, logs, metrics). */
  onTransition: (previous: PaymentOrder, next: PaymentOrder, event: OrderEvent) => void;
  onIllegal?: (order: PaymentOrder, event: OrderEvent, message: string) => void;
  onPspCall?: (call: {
    orderId: string;
    op: string;
    ok: boolean;
    ms: number;
    error?: string;
    /** Refused by the circuit breaker: the call never left this node. */
    notSent?: boolean;
  }) => void;
  /**
   * Events one message may cause in one turn, at most (EVENTS_PER_TURN_MAX when unset; tests
   * lower it to reach the bound with the machine's real chains, which are 4 events at most).
   */
  eventsPerTurnMax?: number;
  /**
   * A turn reached its bound with events left: they were not applied, and the message is handed
   * back for a retry (logged as an error: a chain that long is a bug of the machine).
   */
  onTurnCut?: (cut: { orderId: string; eventsMax: number; left: readonly string[] }) => void;
}>;

/**
 * A message for the actor. `receipt` marks an event that arrived from outside with its own id (a
 * PSP webhook): when the event changes the order, the receipt is written to the inbox in the same
 * transaction, and the outcome says so (`receiptStored`). `seed` is the order as its creator just
 * committed it: an actor with no copy of its own takes it instead of reading the row back. It is
 * only a cache: a write from it is version-checked like any other, and a stale one reloads.
 */
export type OrderMessage = Readonly<{
  event: OrderEvent;
  receipt?: InboxReceipt;
  seed?: PaymentOrder;
  /**
   * The outbox row (message id) of the command this message carries, held back from the relay
   * while this node runs it: it is deleted in the transaction of the transition that ends the
   * turn (one with no outside effect left to run), and the outcome says so (`outboxRowDeleted`).
   */
  outboxRow?: string;
}>;

/** Events one message may cause in one turn (the event plus the results of its effects). */
const EVENTS_PER_TURN_MAX = 8;
/** Reloads after a stale version before the message is handed back for a retry. */
const STALE_RELOADS_MAX = 3;

type Applied =
  | {
      kind: 'applied';
      effects: readonly Effect[];
      receiptStored: boolean;
      outboxRowDeleted: boolean;
    }
  | { kind: 'illegal'; message: string }
  | { kind: 'missing' }
  | { kind: 'contended' };

export class PaymentOrderActor implements ActorLogic<OrderMessage, HandleOutcome> {
  private cached: PaymentOrder | undefined;

  constructor(
    readonly orderId: string,
    private readonly deps: OrderActorDeps,
  ) {}

  /** A final order expects nothing more; a late event (a duplicate, a late charge) reloads it. */
  done(): boolean {
    return this.cached !== undefined && isTerminal(this.cached.state);
  }

  async handle(message: OrderMessage): Promise<HandleOutcome> {
    if (this.cached === undefined && message.seed?.id === this.orderId) this.cached = message.seed;
    const pending: OrderEvent[] = [message.event];
    let outcome: HandleOutcome = { kind: 'done' };
    let receiptStored = false;
    let outboxRowDeleted = false;
    const eventsMax = this.deps.eventsPerTurnMax ?? EVENTS_PER_TURN_MAX;
    for (let step = 0; step < eventsMax; step += 1) {
      const event = pending.shift();
      if (event === undefined) break;
      // Only the message's own event carries its receipt; the events its effects produce do not.
      const receipt = step === 0 ? message.receipt : undefined;
      // The command's row goes with the turn's last write, unless a retry is already asked for.
      const outboxRow = outboxRowDeleted || outcome.kind !== 'done' ? undefined : message.outboxRow;
      const applied = await this.apply(event, receipt, outboxRow);
      switch (applied.kind) {
        case 'missing':
          return { kind: 'reject', reason: missingReason(this.orderId, event) };
        case 'illegal':
          return { kind: 'reject', reason: applied.message };
        case 'contended':
          return { kind: 'retry', reason: 'the order kept changing under this actor' };
        case 'applied':
          if (applied.receiptStored) receiptStored = true;
          if (applied.outboxRowDeleted) outboxRowDeleted = true;
          break;
      }
      for (const effect of applied.effects) {
        const next = await this.runEffect(effect);
        if (next === 'retry') outcome = { kind: 'retry', reason: retryReason(effect) };
        else if (next !== undefined) pending.push(next);
      }
    }
    if (pending.length > 0) {
      // Never dropped: an event left here is an outside effect's result (a PSP registration, a
      // charge learnt) that nothing else would apply, and acking the message would lose it. The
      // turn's writes so far are committed; the retry starts again from there, and asks the PSP
      // again what the left events said (a registration is deduplicated by nonce).
      const left = pending.map((event) => event.type);
      this.deps.onTurnCut?.({ orderId: this.orderId, eventsMax, left });
      return {
        kind: 'retry',
        reason: `the turn reached its bound of ${eventsMax} events with ${left.join(', ')} left`,
      };
    }
    if (outcome.kind !== 'done') return outcome;
    return {
      kind: 'done',
      ...(receiptStored && { receiptStored }),
      ...(outboxRowDeleted && { outboxRowDeleted }),
    };
  }

  /** The current order as this actor knows it (for tests and debugging). */
  get snapshot(): PaymentOrder | undefined {
    return this.cached;
  }

  private async apply(
    event: OrderEvent,
    receipt: InboxReceipt | undefined,
    outboxRow: string | undefined,
  ): Promise<Applied> {
    for (let reload = 0; reload <= STALE_RELOADS_MAX; reload += 1) {
      const fromCache = this.cached !== undefined;
      const order =
        this.cached ??
        (await (this.deps.load?.(this.orderId) ?? findPaymentOrder(this.deps.db, this.orderId)));
      if (order === undefined) return { kind: 'missing' };
      const now = this.deps.now();
      const result = transition(order, event, now);
      if (!result.ok) {
        if (fromCache) {
          // The cache may be behind another node's writes: decide again on fresh data.
          this.cached = undefined;
          continue;
        }
        this.deps.onIllegal?.(order, event, result.error.message);
        return {
          kind: 'illegal',
          message: `${result.error.state} + ${event.type}: ${result.error.message}`,
        };
      }
      if (!result.changed) {
        this.cached = order;
        return {
          kind: 'applied',
          effects: result.effects,
          receiptStored: false,
          outboxRowDeleted: false,
        };
      }
      const endsTurn = outboxRow !== undefined && !result.effects.some(runsOutside);
      const write = {
        previous: order,
        next: result.order,
        event,
        effects: result.effects,
        now,
        ...(receipt !== undefined && { receipt }),
        ...(endsTurn && { outboxDone: outboxRow }),
      };
      const persisted = await (this.deps.persist?.(write) ?? persistAlone(this.deps.db, write));
      if (!persisted) {
        this.cached = undefined;
        continue;
      }
      const next: PaymentOrder = { ...result.order, version: order.version + 1n };
      this.cached = next;
      this.deps.onTransition(order, next, event);
      return {
        kind: 'applied',
        effects: result.effects,
        receiptStored: receipt !== undefined,
        outboxRowDeleted: endsTurn,
      };
    }
    return { kind: 'contended' };
  }

  /** Runs an effect that lives outside the transaction; returns the event it produced. */
  private async runEffect(effect: Effect): Promise<OrderEvent | 'retry' | undefined> {
    switch (effect.type) {
      case 'CreditSeller':
        return undefined; // persisted with the transition
      case 'RetryLater':
        return 'retry';
      case 'RegisterWithPsp': {
        const started = Date.now();
        try {
          const registered = await this.deps.psp.register({
            nonce: effect.orderId,
            amountMinor: effect.amountMinor,
            currency: effect.currency,
            notificationUrl: this.deps.notificationUrl,
          });
          this.deps.onPspCall?.({
            orderId: effect.orderId,
            op: 'register',
            ok: true,
            ms: Date.now() - started,
          });
          return {
            type: 'PspRegistered',
            token: registered.token,
            checkoutUrl: registered.checkoutUrl,
          };
        } catch (error) {
          this.deps.onPspCall?.({
            orderId: effect.orderId,
            op: 'register',
            ok: false,
            ms: Date.now() - started,
            error: describeError(error),
            ...(isBreakerOpen(error) && { notSent: true }),
          });
          // The PSP registered the payment but answered with a token or checkout URL Settle
          // cannot store. Not a refusal: failing the order would leave a registration nobody
          // links to. Thrown, so the command is dead-lettered at once for an operator; the order
          // stays EXECUTING, and its expiry cancels the registration at the PSP (or learns of a
          // charge) as for any unpaid order.
          if (isPspProtocolError(error)) throw error;
          return {
            type: 'PspRegistrationFailed',
            retryable: isRetryable(error),
            reason: describeError(error),
          };
        }
      }
      case 'CancelAtPsp':
        // NOT_FOUND to a cancel: the PSP has no such payment, so there is nothing to cancel and
        // no money can have moved. Answered as PspNotFound, the machine would register an
        // unregistered order first, creating a checkout URL for an order past its deadline. For
        // an order that had no token yet, the answer says so (`unregistered`): a registration
        // may still land after it, and the machine then cancels that one.
        return this.askPsp(
          effect.orderId,
          'cancel',
          async () => {
            const outcome = await this.deps.psp.cancel(effect.orderId);
            // Already decided at the PSP: learn the decision (with its reference and amount).
            return outcome === 'CANCELLED'
              ? { type: 'PspCancelled' }
              : eventFromPspStatus(effect.orderId, await this.deps.psp.getStatus(effect.orderId));
          },
          effect.registered
            ? { type: 'PspCancelled' }
            : { type: 'PspCancelled', unregistered: true },
        );
      case 'QueryPsp':
        return this.askPsp(effect.orderId, 'status', async () =>
          eventFromPspStatus(effect.orderId, await this.deps.psp.getStatus(effect.orderId)),
        );
    }
  }

  /**
   * Runs one PSP question; a retryable failure asks for a redelivery, NOT_FOUND is an answer
   * (`notFound`, PspNotFound unless the question says otherwise). Any other failure is thrown:
   * the consumer dead-letters a non-retryable one (`retryable: false`) at once. So is an answer
   * Settle cannot store (PspProtocolError): the order stays as it is, never dropped, for an
   * operator to compare with the PSP (a charge it reports is money moved but not booked).
   */
  private async askPsp(
    orderId: string,
    op: string,
    ask: () => Promise<OrderEvent>,
    notFound: OrderEvent = { type: 'PspNotFound' },
  ): Promise<OrderEvent | 'retry'> {
    const started = Date.now();
    try {
      const event = await ask();
      this.deps.onPspCall?.({ orderId, op, ok: true, ms: Date.now() - started });
      return event;
    } catch (error) {
      this.deps.onPspCall?.({
        orderId,
        op,
        ok: false,
        ms: Date.now() - started,
        error: describeError(error),
        ...(isBreakerOpen(error) && { notSent: true }),
      });
      if (isNotFound(error)) return notFound;
      if (isRetryable(error)) return 'retry';
      throw error;
    }
  }
}

/** Why a message for an order that does not exist is refused; a PSP result says what it was. */
function missingReason(orderId: string, event: OrderEvent): string {
  switch (event.type) {
    case 'PspSucceeded':
      return `the PSP reports a charge for payment order ${orderId}, which does not exist`;
    case 'PspDeclined':
      return `the PSP reports a decline for payment order ${orderId}, which does not exist`;
    default:
      return `payment order ${orderId} does not exist`;
  }
}

/** Whether an effect runs after the commit (so the turn goes on), rather than inside it. */
function runsOutside(effect: Effect): boolean {
  return effect.type !== 'CreditSeller';
}

function retryReason(effect: Effect): string {
  return effect.type === 'RetryLater' ? effect.reason : effect.type;
}
