/**
 * How a payment-order actor persists a transition: the order's new state (fenced by its
 * version), its history row, the payment aggregate and the in-transaction effects (ledger and
 * wallet), all committed together or not at all. `persistAlone` does it in one transaction per
 * transition. `TransitionBatcher` is group commit: transitions that arrive while earlier
 * transactions are running are written together in one transaction, with a handful of
 * statements for the whole batch, so MySQL round trips and commits are shared by many orders.
 * It sends them as one packet and commits in a second (`persistInOneTrip`); a batch that does not
 * go through that way cleanly takes the statement-by-statement way, which sorts out stale writes.
 *
 * What batching must not change, and does not:
 * - every transition is still version-checked: a stale one is answered `false` alone (the actor
 *   reloads and decides again) while the rest of its batch commits;
 * - an actor hears `true` only after the commit (ack after commit);
 * - a write that fails for its own reason (say a constraint) does not fail its batch mates: the
 *   batch is rolled back and each of its writes is retried alone, so only that one fails.
 * At low load a transition finds no transaction running and goes out at once, alone.
 */
import type { CompiledQuery } from 'kysely';
import type { Db } from '../../storage/db.js';
import { isConnectionError, isLockWaitTimeout, isPoolQueueFull } from '../../storage/errors.js';
import { GroupCommit } from '../../storage/group-commit.js';
import { commitInOneTrip, rowCountGuard } from '../../storage/one-trip.js';
import {
  ledgerPosting,
  walletCredits,
  walletCurrencyMismatch,
  type StoredSum,
  type WalletCredit,
} from '../../storage/repositories/ledger.repository.js';
import {
  inboxAppliedStatement,
  outboxDeleteByMsgId,
  type InboxRow,
} from '../../storage/repositories/outbox.repository.js';
import {
  findPaymentOrder,
  findPaymentOrdersById,
  persistTransition,
  persistTransitions,
  transitionStatements,
} from '../../storage/repositories/payment-order.repository.js';
import { inTransaction, toUnavailable, type Trx } from '../../storage/transaction.js';
import { sellerCredits } from './effects.js';
import type { Effect, OrderEvent, PaymentOrder } from './machine.js';

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
  /** The message id of a held outbox row this transition completes: deleted with it. */
  outboxDone?: string;
}>;

/** Persists one transition; false when the order's version moved (stale), true once committed. */
export type PersistTransition = (write: TransitionWrite) => Promise<boolean>;

/** One transaction for one transition. */
export async function persistAlone(db: Db, write: TransitionWrite): Promise<boolean> {
  return inTransaction(db, async (trx) => {
    const written = await persistTransition(trx, write);
    if (written === 'stale') return false;
    await writeAlongside(trx, [write]);
    return true;
  });
}

/**
 * Everything persisted transitions write besides the order rows and their history: the inbox
 * receipts, the held outbox rows they complete, the ledger (then its stored sums, to check) and
 * the wallets, last, so that their rows (a hot seller's above all) stay locked the shortest.
 * Both ways of writing send exactly this list: in one packet (`persistInOneTrip`, where the
 * stored sums are checked by a guard in the packet) or statement by statement (`writeAlongside`,
 * where they are read back and checked here, which names the unbalanced transactions).
 */
function alongside(
  db: Db | Trx,
  writes: readonly TransitionWrite[],
  way: 'packet' | 'statements',
): {
  statements: CompiledQuery[];
  /** Where the ledger's stored sums are read (statement by statement), -1 if not. */
  storedSumsAt: number;
  /** Throws unless the stored sums balance (the transaction must then not commit). */
  checkStored: (rows: readonly StoredSum[]) => void;
  /** Where the wallets are credited, -1 if not. */
  walletsAt: number;
  /** The wallet credits, to explain a failure of their statement. */
  credits: readonly WalletCredit[];
} {
  const receipts = receiptRows(writes);
  const done = outboxDone(writes);
  const { ledger, credits } = sellerCredits(writes);
  const posting = ledgerPosting(db, ledger);
  const wallets = walletCredits(db, credits);
  const storedSums = way === 'statements' ? posting?.storedSums() : undefined;
  const check =
    posting === undefined ? [] : storedSums === undefined ? posting.balancedGuard() : [storedSums];
  const statements = [
    ...(receipts.length > 0 ? [inboxAppliedStatement(db, receipts)] : []),
    ...(done.length > 0 ? [outboxDeleteByMsgId(db, done)] : []),
    ...(posting === undefined ? [] : [...posting.inserts, ...check]),
    ...(wallets === undefined ? [] : [wallets]),
  ];
  return {
    statements,
    storedSumsAt: storedSums === undefined ? -1 : statements.indexOf(storedSums),
    checkStored: (rows: readonly StoredSum[]) => posting?.checkStored(rows),
    walletsAt: wallets === undefined ? -1 : statements.indexOf(wallets),
    credits,
  };
}

/**
 * The statement-by-statement way. A failed wallet credit that was its currency guard becomes a
 * WalletCurrencyMismatchError naming the wallet (not retryable), instead of MySQL's "BIGINT
 * UNSIGNED value is out of range": a batch that fails so is replayed unit by unit, and the unit
 * that fails alone carries that error to its command's dead letter.
 */
async function writeAlongside(trx: Trx, writes: readonly TransitionWrite[]): Promise<void> {
  const { statements, storedSumsAt, checkStored, walletsAt, credits } = alongside(
    trx,
    writes,
    'statements',
  );
  for (const [i, statement] of statements.entries()) {
    let result;
    try {
      result = await trx.executeQuery(statement);
    } catch (error) {
      if (i !== walletsAt) throw error;
      throw (await walletCurrencyMismatch(trx, credits, error)) ?? error;
    }
    if (i === storedSumsAt) checkStored(result.rows as StoredSum[]);
  }
}

function outboxDone(writes: readonly TransitionWrite[]): string[] {
  return writes.flatMap((write) => (write.outboxDone === undefined ? [] : [write.outboxDone]));
}

function receiptRows(writes: readonly TransitionWrite[]): InboxRow[] {
  const rows: InboxRow[] = [];
  for (const write of writes) {
    if (write.receipt === undefined) continue;
    rows.push({ ...write.receipt, orderId: write.previous.id, now: write.now });
  }
  return rows;
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

/**
 * Writes transitions of distinct orders in one transaction of one round trip (one-trip.ts): the
 * version-checked UPDATE and a guard that it moved every order, the history rows, the payments,
 * the inbox receipts, the ledger (and a guard that it balances as stored) and the wallets last,
 * then COMMIT, all in one packet. A tripped guard or a failed statement stops the packet before
 * the COMMIT, and the transaction is rolled back; it then answers undefined and the caller takes
 * the statement-by-statement way, which tells each stale write apart. Undefined also for a batch
 * holding an order twice. A write alone that moved nothing is stale, and answered so (`[false]`)
 * at once: its UPDATE found the version gone.
 */
export async function persistInOneTrip(
  db: Db,
  writes: readonly TransitionWrite[],
): Promise<boolean[] | undefined> {
  if (new Set(writes.map((write) => write.previous.id)).size !== writes.length) return undefined;
  const transitions = transitionStatements(db, writes);
  const statements = [
    transitions.update,
    rowCountGuard(writes.length),
    ...transitions.rest,
    ...alongside(db, writes, 'packet').statements,
  ];
  try {
    const outcome = await commitInOneTrip(db, statements);
    if (outcome.committed) return writes.map(() => true);
    return writes.length === 1 && outcome.tripped === 'rowCount' ? [false] : undefined;
  } catch (error) {
    if (isConnectionError(error) || isPoolQueueFull(error)) throw toUnavailable(error);
    // A row locked elsewhere for the whole wait: the batch's statement-by-statement way would
    // wait for it again, up to twice, and hold every batch mate meanwhile. Each unit alone
    // (the group commit's replay) lets the mates that do not touch that row through at once.
    if (isLockWaitTimeout(error) && writes.length > 1) throw error;
    // A deadlock or a broken constraint: the statement-by-statement way tells which write it
    // was, and retries deadlocks.
    return undefined;
  }
}

/** Group commit of transitions across actors (see src/storage/group-commit.ts). */
export class TransitionBatcher {
  private readonly group: GroupCommit<TransitionWrite, boolean>;

  constructor(db: Db, options: TransitionBatcherOptions) {
    this.group = new GroupCommit({
      name: 'transitions',
      ...options,
      writeOne: async (write) => {
        const fast = await persistInOneTrip(db, [write]);
        return fast?.[0] ?? persistAlone(db, write);
      },
      writeBatch: async (writes) =>
        (await persistInOneTrip(db, writes)) ??
        inTransaction(db, async (trx) => {
          const written = await persistTransitions(trx, writes);
          await writeAlongside(
            trx,
            writes.filter((_, i) => written[i] === 'persisted'),
          );
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
