/**
 * Where an order's create→terminal time goes, from Settle's own records: each transition's
 * history row carries the time the actor decided it, and the order row the time it was created,
 * so the gaps between them are the stages of the pipeline:
 *
 *   created → PspRegistered        the idempotency claim and the creation's commit (the order is
 *                                  born EXECUTING: its ExecuteOrder row carries the creation's
 *                                  time, when CreatePayment began), the send to the order's actor
 *                                  on the same node (or, for an order handed over, the outbox
 *                                  relay, JetStream, the consumer and the actor's load), and the
 *                                  PSP's RegisterPayment call
 *   PspRegistered → PspSucceeded   the token's commit, the PSP's decision and its signed webhook
 *   PspSucceeded → seen            the final commit (its time is the decision's), Settle's
 *                                  "payment changed" hint and the load generator's read that
 *                                  saw the payment final: from the last decision of any of the
 *                                  payment's orders to the time the load generator recorded
 *
 * Times have millisecond resolution. The decisions' come from the Settle node's clock, the
 * sightings from the load generator's: two processes on one machine, so one clock.
 */
import { createPool, type RowDataPacket } from 'mysql2/promise';
import { parseMysqlUrl, serverAddress } from '../src/storage/db.js';
import { quantile } from './load.js';

export type StageLatency = Readonly<{ stage: string; p50: number; p95: number; p99: number }>;

// ExecuteOrder is written with the creation (same time), so its gap is always 0: left out.
const STAGES = ['PspRegistered', 'PspSucceeded'] as const;
const SEEN = 'seen by the load generator';
const IDS_PER_QUERY = 1_000;
const PAYMENTS_MAX = 50_000;

/**
 * The stages of the orders of these payments (at most 50,000 payments are looked at). `seenAt`
 * gives, for the payments the load generator saw final, the time it saw them (epoch ms): they
 * add the last stage, from the payment's last decision to that sighting.
 */
export async function stageLatencies(
  mysqlUrl: string,
  paymentIds: readonly string[],
  seenAt: ReadonlyMap<string, number> = new Map(),
): Promise<StageLatency[]> {
  const target = parseMysqlUrl(mysqlUrl);
  const pool = createPool({
    ...serverAddress(target),
    database: target.database,
    connectionLimit: 1,
    connectTimeout: 5_000,
    timezone: 'Z',
  });
  const gaps = new Map<string, number[]>([...STAGES, SEEN].map((stage) => [stage, []]));
  /** Each payment's last decision, over all its orders. */
  const decidedLast = new Map<string, number>();
  try {
    const ids = paymentIds.slice(0, PAYMENTS_MAX);
    for (let start = 0; start < ids.length; start += IDS_PER_QUERY) {
      const [rows] = await pool.query<RowDataPacket[]>(
        `SELECT t.order_id, t.payment_id, t.event_type, t.created_at AS at, o.created_at AS created
           FROM payment_order_transition t JOIN payment_order o ON o.id = t.order_id
          WHERE t.payment_id IN (?) ORDER BY t.order_id, t.version`,
        [ids.slice(start, start + IDS_PER_QUERY)],
      );
      let order = '';
      let previous = 0;
      for (const row of rows) {
        if (row['order_id'] !== order) {
          order = String(row['order_id']);
          previous = new Date(row['created'] as Date).getTime();
        }
        const at = new Date(row['at'] as Date).getTime();
        gaps.get(String(row['event_type']))?.push(at - previous);
        previous = at;
        const payment = String(row['payment_id']);
        decidedLast.set(payment, Math.max(decidedLast.get(payment) ?? 0, at));
      }
    }
  } finally {
    await pool.end();
  }
  for (const [payment, decided] of decidedLast) {
    const seen = seenAt.get(payment);
    if (seen !== undefined) gaps.get(SEEN)?.push(seen - decided);
  }
  return [...STAGES, SEEN]
    .filter((stage) => (gaps.get(stage)?.length ?? 0) > 0)
    .map((stage) => {
      const values = gaps.get(stage) ?? [];
      return {
        stage: `→ ${stage}`,
        p50: quantile(values, 0.5),
        p95: quantile(values, 0.95),
        p99: quantile(values, 0.99),
      };
    });
}
