/**
 * The janitor resolves orders whose outcome is unknown, by asking, never by guessing:
 * - an order unpaid past ORDER_EXPIRY_MS gets ExpireOrder (the actor cancels at the PSP first,
 *   and only the PSP's answer decides EXPIRED vs SUCCEEDED/FAILED);
 * - an unfinished order quiet for JANITOR_STUCK_MS gets CheckOrderStatus (the actor asks the PSP
 *   by nonce; a lost ExecuteOrder is restarted, a lost webhook is recovered), unless it is past
 *   its expiry, and the lease of a check ends at the order's deadline at the latest;
 * - an OPEN dead letter whose order has reached a final state since is RESOLVED.
 * Orders are claimed with a lease by one conditional UPDATE, so however many nodes run a janitor,
 * only one pass acts on an order per lease period. The commands go through the outbox like any
 * other.
 */
import { sql } from 'kysely';
import { randomUUID } from 'node:crypto';
import { resolveFinishedDeadLetters } from '../admin/dead-letters.js';
import { ORDER_STATE } from '../domain/payment-order.js';
import { janitorMessage } from '../messaging/commands.js';
import type { Names } from '../messaging/subjects.js';
import type { Db } from '../storage/db.js';
import { enqueueOutbox } from '../storage/repositories/outbox.repository.js';
import { inTransaction } from '../storage/transaction.js';

export type JanitorOptions = Readonly<{
  orderExpiryMs: number;
  stuckMs: number;
  intervalMs: number;
  batchMax: number;
  leaseMs: number;
}>;

export type JanitorPass = Readonly<{
  expired: string[];
  checked: string[];
  /** Dead letters closed because their order reached a final state. */
  resolvedDeadLetters: string[];
}>;

/** The states in which an order can still need the janitor. */
const UNFINISHED_STATES = [ORDER_STATE.notStarted, ORDER_STATE.executing] as const;

export class Janitor {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private readonly owner = randomUUID();

  constructor(
    private readonly db: Db,
    private readonly names: Names,
    private readonly options: JanitorOptions,
    private readonly hooks: {
      now: () => Date;
      wakeRelay: () => void;
      onPass?: (pass: JanitorPass) => void;
      onError?: (error: unknown) => void;
    },
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.running !== undefined) return; // never overlap passes
      this.running = this.runOnce()
        .then((pass) => {
          const acted = pass.expired.length + pass.checked.length + pass.resolvedDeadLetters.length;
          if (acted > 0) this.hooks.onPass?.(pass);
        })
        .catch((error: unknown) => this.hooks.onError?.(error))
        .finally(() => (this.running = undefined));
    }, this.options.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** One pass: claims due orders and queues their commands. Returns the order ids acted on. */
  async runOnce(): Promise<JanitorPass> {
    const now = this.hooks.now();
    const expiryBefore = new Date(now.getTime() - this.options.orderExpiryMs);
    const first = await this.claimAndQueue('ExpireOrder', now, 'created_at', expiryBefore);
    const second = await this.claimAndQueue(
      'CheckOrderStatus',
      now,
      'updated_at',
      new Date(now.getTime() - this.options.stuckMs),
    );
    const expired = [...first.expired, ...second.expired];
    const checked = second.checked;
    if (expired.length + checked.length > 0) this.hooks.wakeRelay();
    const resolvedDeadLetters = await resolveFinishedDeadLetters(
      this.db,
      now,
      this.options.batchMax,
    );
    return { expired, checked, resolvedDeadLetters };
  }

  /**
   * Claims at most batchMax unfinished orders whose `column` is before `before` (oldest first)
   * and not leased, and queues a `type` command for each, in one transaction. An order that is
   * past its expiry gets ExpireOrder whatever `type` says: a status check would register one
   * that never reached the PSP, handing out a checkout for an order past its deadline. The
   * expiry's own claim takes batchMax orders a pass, so after a PSP outage the status check's
   * claim finds such orders too.
   */
  private async claimAndQueue(
    type: 'ExpireOrder' | 'CheckOrderStatus',
    now: Date,
    column: 'created_at' | 'updated_at',
    before: Date,
  ): Promise<{ expired: string[]; checked: string[] }> {
    const expiryBefore = now.getTime() - this.options.orderExpiryMs;
    // Fits janitor_owner (64): 36 (uuid) + 1 + 13 (ms) + 2.
    const claim = `${this.owner}:${now.getTime()}:${type === 'ExpireOrder' ? 'x' : 'c'}`;
    const leaseUntil = new Date(now.getTime() + this.options.leaseMs);
    // A status check's lease ends at the order's deadline at the latest, so that the expiry
    // never waits for it: an unpaid order is checked every JANITOR_STUCK_MS, and a check's whole
    // lease would put its expiry (the cancel that makes it unpayable) off by up to
    // JANITOR_LEASE_MS. An order already past its deadline is expired by this claim (below) and
    // keeps the whole lease, or the next pass would expire it again.
    const expiryMs = this.options.orderExpiryMs;
    const lease =
      type === 'ExpireOrder'
        ? sql`${leaseUntil}`
        : sql`CASE
            WHEN created_at < ${new Date(expiryBefore)} THEN ${leaseUntil}
            WHEN created_at < ${new Date(leaseUntil.getTime() - expiryMs)}
              THEN created_at + INTERVAL ${expiryMs * 1_000} MICROSECOND
            ELSE ${leaseUntil} END`;
    const due = sql`${sql.ref(column)} < ${before}
      AND (janitor_lease_until IS NULL OR janitor_lease_until < ${now})`;
    const claimable = sql`state IN (${sql.join(UNFINISHED_STATES)}) AND ${due}`;
    return inTransaction(this.db, async (trx) => {
      // Find first (a plain read, no locks), then claim by id: the UPDATE locks only the orders
      // it claims. One UPDATE ... ORDER BY created_at LIMIT n would lock every due order it walks
      // over until the commit, those leased by another pass too (MariaDB keeps them locked even
      // in READ COMMITTED), and stall their own transitions meanwhile. The UPDATE re-checks the
      // conditions on each row's latest version under its lock, so two passes that find the same
      // order still claim it once.
      //
      // One read per state: with the state fixed, its (state, column) index hands the due orders
      // over oldest first and the read stops after batchMax (plus the leased ones it skips). A
      // read of both states at once sorts every due order of both before the LIMIT, every pass:
      // at 100,000 stuck orders that read alone took 228–249 ms, and a whole pass this way
      // 25–34 ms (`npm run bench:janitor`).
      const candidates: Array<{ id: string; at: Date; created_at: Date }> = [];
      for (const state of UNFINISHED_STATES) {
        const { rows } = await sql<{ id: string; at: Date; created_at: Date }>`
          SELECT id, ${sql.ref(column)} AS at, created_at FROM payment_order
          WHERE state = ${state} AND ${due}
          ORDER BY ${sql.ref(column)}
          LIMIT ${this.options.batchMax}`.execute(trx);
        candidates.push(...rows);
      }
      const found = candidates
        .sort((a, b) => a.at.getTime() - b.at.getTime())
        .slice(0, this.options.batchMax);
      if (found.length === 0) return { expired: [], checked: [] };
      const foundIds = found.map((row) => row.id);
      const claimed = await sql`
        UPDATE payment_order
        SET janitor_lease_until = ${lease}, janitor_owner = ${claim}
        WHERE id IN (${sql.join(foundIds)}) AND ${claimable}`.execute(trx);
      // Usually every order found is claimed. When another pass took some in between, the ones
      // this UPDATE claimed are those of the found ids that now carry this pass's claim.
      const ids =
        Number(claimed.numAffectedRows ?? -1) === found.length
          ? foundIds
          : (
              await trx
                .selectFrom('payment_order')
                .select('id')
                .where('id', 'in', foundIds)
                .where('janitor_owner', '=', claim)
                .execute()
            ).map((row) => row.id);
      const pastExpiry = new Set(
        found.filter((row) => row.created_at.getTime() < expiryBefore).map((row) => row.id),
      );
      const expired = ids.filter((id) => type === 'ExpireOrder' || pastExpiry.has(id));
      const checked = ids.filter((id) => type === 'CheckOrderStatus' && !pastExpiry.has(id));
      await enqueueOutbox(
        trx,
        [
          ...expired.map((id) => janitorMessage(this.names, 'ExpireOrder', id, now.getTime())),
          ...checked.map((id) => janitorMessage(this.names, 'CheckOrderStatus', id, now.getTime())),
        ],
        now,
      );
      return { expired, checked };
    });
  }
}
