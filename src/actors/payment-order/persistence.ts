/**
 * How a payment-order actor persists a transition: the order's new state (fenced by its
 * version), its history row, the payment aggregate and the in-transaction effects (ledger and
 * wallet), all committed together or not at all. `persistAlone` does it in one transaction per
 * transition. `TransitionBatcher` is group commit: transitions that arrive while earlier
 * transactions are running are written together in one transaction, with a handful of
 * statements for the whole batch, so MySQL round trips and commits are shared by many orders.
 *
 * What batching must not change, and does not:
 * - every transition is still version-checked: a stale one is answered `false` alone (the actor
 *   reloads and decides again) while the rest of its batch commits;
 * - an actor hears `true` only after the commit (ack after commit);
 * - a write that fails for its own reason (say a constraint) does not fail its batch mates: the
 *   batch is rolled back and each of its writes is retried alone, so only that one fails.
 * At low load a transition finds no transaction running and goes out at once, alone.
 */
import type { Db } from '../../storage/db.js';
import { GroupCommit } from '../../storage/group-commit.js';
import {
  findPaymentOrder,
  findPaymentOrdersById,
  persistTransition,
  persistTransitions,
} from '../../storage/repositories/payment-order.repository.js';
import { recordInboxApplied } from '../../storage/repositories/outbox.repository.js';
import { inTransaction, type Trx } from '../../storage/transaction.js';
import type { Effect, OrderEvent, PaymentOrder } from './machine.js';
import { persistEffects, persistEffectsBatch } from './effects.js';

/** An outside input's id (a webhook's event id), recorded in the inbox with its transition. */
export type InboxReceipt = Readonly<{ source: string; eventId: string }>;

export type TransitionWrite = Readonly<{
  previous: PaymentOrder;
  next: PaymentOrder;
  event: OrderEvent;
  /** The transition's effects; those that live in the transaction are persisted with it. */
  effects: readonly Effect[];
  now: Date;
  /** Written to the inbox in the same transaction when the transition commits. */
  receipt?: InboxReceipt;
}>;

/** Persists one transition; false when the order's version moved (stale), true once committed. */
export type PersistTransition = (write: TransitionWrite) => Promise<boolean>;

/** One transaction for one transition. */
export async function persistAlone(db: Db, write: TransitionWrite): Promise<boolean> {
  return inTransaction(db, async (trx) => {
    const written = await persistTransition(trx, write);
    if (written === 'stale') return false;
    await recordReceipts(trx, [write]);
    await persistEffects(trx, write.effects, write.now);
    return true;
  });
}

async function recordReceipts(trx: Trx, writes: readonly TransitionWrite[]): Promise<void> {
  const rows = [];
  for (const write of writes) {
    if (write.receipt === undefined) continue;
    rows.push({ ...write.receipt, orderId: write.previous.id, now: write.now });
  }
  await recordInboxApplied(trx, rows);
}

export type TransitionBatcherOptions = Readonly<{
  /** Transitions per transaction at most. */
  batchMax: number;
  /** Batch transactions running at once at most (each holds one pooled connection). */
  inFlightMax: number;
  /** Transitions waiting at most; beyond it persist() fails at once with RESOURCE_EXHAUSTED. */
  queueMax: number;
  /** Called after every batch, with its size and duration (metrics, the bench). */
  onBatch?: (batch: { size: number; ms: number; ok: boolean }) => void;
}>;

/** Group commit of transitions across actors (see src/storage/group-commit.ts). */
export class TransitionBatcher {
  private readonly group: GroupCommit<TransitionWrite, boolean>;

  constructor(db: Db, options: TransitionBatcherOptions) {
    this.group = new GroupCommit({
      name: 'transitions',
      ...options,
      writeOne: (write) => persistAlone(db, write),
      writeBatch: (writes) =>
        inTransaction(db, async (trx) => {
          const written = await persistTransitions(trx, writes);
          const persisted = writes.filter((_, i) => written[i] === 'persisted');
          await recordReceipts(trx, persisted);
          // Last: the wallet rows (a hot seller's above all) stay locked the shortest.
          await persistEffectsBatch(trx, persisted);
          return written.map((result) => result === 'persisted');
        }),
    });
  }

  readonly persist: PersistTransition = (write) => this.group.submit(write);

  /** Refuses new transitions and waits (bounded) for those already taken. */
  stop(timeoutMs: number): Promise<void> {
    return this.group.stop(timeoutMs);
  }
}

/**
 * Loads orders for actors that start (or reload): loads that arrive together become one query.
 * A burst of new orders (a busy node) then costs a few round trips instead of one per order.
 */
export class OrderLoader {
  private readonly group: GroupCommit<string, PaymentOrder | undefined>;

  constructor(
    db: Db,
    options: Readonly<{ batchMax: number; inFlightMax: number; queueMax: number }>,
  ) {
    this.group = new GroupCommit({
      name: 'order loads',
      ...options,
      writeOne: (orderId) => findPaymentOrder(db, orderId),
      writeBatch: async (orderIds) => {
        const found = await findPaymentOrdersById(db, orderIds);
        return orderIds.map((orderId) => found.get(orderId));
      },
    });
  }

  readonly load = (orderId: string): Promise<PaymentOrder | undefined> =>
    this.group.submit(orderId);

  stop(timeoutMs: number): Promise<void> {
    return this.group.stop(timeoutMs);
  }
}
