/**
 * The janitor resolves orders whose outcome is unknown, by asking, never by guessing:
 * - an order unpaid past ORDER_EXPIRY_MS gets ExpireOrder (the actor cancels at the PSP first,
 *   and only the PSP's answer decides EXPIRED vs SUCCEEDED/FAILED);
 * - an unfinished order quiet for JANITOR_STUCK_MS gets CheckOrderStatus (the actor asks the PSP
 *   by nonce; a lost ExecuteOrder is restarted, a lost webhook is recovered).
 * Orders are claimed with a lease by one conditional UPDATE, so however many nodes run a janitor,
 * only one pass acts on an order per lease period. The commands go through the outbox like any
 * other.
 */
import { sql } from 'kysely';
import { randomUUID } from 'node:crypto';
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

export type JanitorPass = Readonly<{ expired: string[]; checked: string[] }>;

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
          if (pass.expired.length + pass.checked.length > 0) this.hooks.onPass?.(pass);
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
    const expired = await this.claimAndQueue(
      'ExpireOrder',
      now,
      sql`created_at < ${new Date(now.getTime() - this.options.orderExpiryMs)}`,
    );
    const checked = await this.claimAndQueue(
      'CheckOrderStatus',
      now,
      sql`updated_at < ${new Date(now.getTime() - this.options.stuckMs)}`,
    );
    if (expired.length + checked.length > 0) this.hooks.wakeRelay();
    return { expired, checked };
  }

  private async claimAndQueue(
    type: 'ExpireOrder' | 'CheckOrderStatus',
    now: Date,
    due: ReturnType<typeof sql>,
  ): Promise<string[]> {
    // Fits janitor_owner (64): 36 (uuid) + 1 + 13 (ms) + 2.
    const claim = `${this.owner}:${now.getTime()}:${type === 'ExpireOrder' ? 'x' : 'c'}`;
    const leaseUntil = new Date(now.getTime() + this.options.leaseMs);
    const claimable = sql`state IN ('NOT_STARTED', 'EXECUTING') AND ${due}
      AND (janitor_lease_until IS NULL OR janitor_lease_until < ${now})`;
    return inTransaction(this.db, async (trx) => {
      // Find first (a plain read, no locks), then claim by id: the UPDATE locks only the orders
      // it claims. One UPDATE ... ORDER BY created_at LIMIT n would lock every due order it walks
      // over until the commit, those leased by another pass too (MariaDB keeps them locked even
      // in READ COMMITTED), and stall their own transitions meanwhile. The UPDATE re-checks the
      // conditions on each row's latest version under its lock, so two passes that find the same
      // order still claim it once.
      const { rows: found } = await sql<{ id: string }>`
        SELECT id FROM payment_order WHERE ${claimable}
        ORDER BY created_at
        LIMIT ${this.options.batchMax}`.execute(trx);
      if (found.length === 0) return [];
      await sql`
        UPDATE payment_order
        SET janitor_lease_until = ${leaseUntil}, janitor_owner = ${claim}
        WHERE id IN (${sql.join(found.map((row) => row.id))}) AND ${claimable}`.execute(trx);
      const rows = await trx
        .selectFrom('payment_order')
        .select('id')
        .where('janitor_owner', '=', claim)
        .limit(this.options.batchMax)
        .execute();
      const ids = rows.map((row) => row.id);
      await enqueueOutbox(
        trx,
        ids.map((id) => janitorMessage(this.names, type, id, now.getTime())),
        now,
      );
      return ids;
    });
  }
}
