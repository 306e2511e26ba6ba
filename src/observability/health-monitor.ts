/**
 * Watches the node's dependencies and drives gRPC health and /healthz: NOT_SERVING while MySQL
 * or NATS is unreachable, SERVING again once both answer. Each probe has a deadline; the loop
 * never overlaps itself.
 */
import { sql } from 'kysely';
import type { NatsConnection } from '@nats-io/transport-node';
import { withDeadline } from '../domain/deadline.js';
import type { Db } from '../storage/db.js';

export type DependencyStatus = Readonly<{
  mysql: boolean;
  nats: boolean;
  serving: boolean;
  checkedAt: Date;
}>;

export class HealthMonitor {
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private current: DependencyStatus = {
    mysql: true,
    nats: true,
    serving: true,
    checkedAt: new Date(0),
  };

  constructor(
    private readonly db: Db,
    private readonly nc: NatsConnection,
    private readonly options: { intervalMs: number; probeTimeoutMs: number },
    private readonly onChange: (status: DependencyStatus) => void,
  ) {}

  get status(): DependencyStatus {
    return this.current;
  }

  start(): void {
    this.timer = setInterval(() => void this.check(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  async check(): Promise<DependencyStatus> {
    if (this.checking) return this.current;
    this.checking = true;
    try {
      const [mysql, nats] = await Promise.all([
        withDeadline(sql`SELECT 1`.execute(this.db), this.options.probeTimeoutMs).then(
          () => true,
          () => false,
        ),
        this.nc.isClosed()
          ? Promise.resolve(false)
          : withDeadline(this.nc.flush(), this.options.probeTimeoutMs).then(
              () => true,
              () => false,
            ),
      ]);
      const next = { mysql, nats, serving: mysql && nats, checkedAt: new Date() };
      const changed = next.mysql !== this.current.mysql || next.nats !== this.current.nats;
      this.current = next;
      if (changed) this.onChange(next);
      return next;
    } finally {
      this.checking = false;
    }
  }
}
