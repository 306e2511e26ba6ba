/**
 * Watches the node's dependencies and drives gRPC health and /healthz (readiness): NOT_SERVING
 * while MySQL or NATS is unreachable, SERVING again once both answer. Each probe has a deadline;
 * the loop never overlaps itself. A dependency is taken for down only after `failuresMax` probes
 * in a row failed, so one late answer (a pause of the event loop past the deadline, a long GC)
 * does not take the node out of its load balancer; one answer in time brings it back.
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

/** Failed probes in a row before a dependency is reported down, unless told otherwise. */
export const HEALTH_FAILURES_MAX = 3;

export type HealthMonitorOptions = Readonly<{
  intervalMs: number;
  probeTimeoutMs: number;
  /** Failed probes in a row before a dependency is reported down (HEALTH_FAILURES_MAX). */
  failuresMax?: number;
}>;

export class HealthMonitor {
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private failures = { mysql: 0, nats: 0 };
  private current: DependencyStatus = {
    mysql: true,
    nats: true,
    serving: true,
    checkedAt: new Date(0),
  };

  constructor(
    private readonly db: Db,
    private readonly nc: NatsConnection,
    private readonly options: HealthMonitorOptions,
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
      const failuresMax = Math.max(1, this.options.failuresMax ?? HEALTH_FAILURES_MAX);
      this.failures = {
        mysql: mysql ? 0 : this.failures.mysql + 1,
        nats: nats ? 0 : this.failures.nats + 1,
      };
      const mysqlUp = this.failures.mysql < failuresMax;
      const natsUp = this.failures.nats < failuresMax;
      const next = {
        mysql: mysqlUp,
        nats: natsUp,
        serving: mysqlUp && natsUp,
        checkedAt: new Date(),
      };
      const changed = next.mysql !== this.current.mysql || next.nats !== this.current.nats;
      this.current = next;
      if (changed) this.onChange(next);
      return next;
    } finally {
      this.checking = false;
    }
  }
}
