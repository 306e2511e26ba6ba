/**
 * The chaos run's customers: a seeded plan of payments (sellers, amounts, the card each order is
 * paid with, which node is asked first) and a driver that carries it out over gRPC while faults
 * happen. A payment is created with CreatePayment, retried with the SAME request id on another
 * node whenever the answer is lost or refused for a retryable reason (so a retry can never create
 * a second payment); each order is then paid on the PSP with PayWithCard once its checkout URL is
 * known, with the card the plan chose (most succeed, some are declined).
 *
 * Every wait ends at the run's deadline; concurrency is bounded.
 */
import { PaymentOrderState, type Payment } from '../client/index.js';
import { PaymentStatus } from '../grpc/generated/settle/psp/v1/psp.js';
import { TEST_CARD } from '../psp/mock/card.js';
import type { ChaosCluster, NodeHandle } from './cluster.js';
import { sleep } from './processes.js';
import type { Rng } from './random.js';
import { callUnary, isRetryableStatus, statusName } from './rpc.js';

/** Sellers the payments spread over; the first one is hot (many orders credit one wallet). */
const SELLERS = 12;
const HOT_SELLER_SHARE = 0.3;
const BUYERS = 20;

/** `card` undefined: the buyer never pays this order, so it must end EXPIRED. */
export type PlannedOrder = Readonly<{
  sellerId: string;
  amountMinor: bigint;
  card: string | undefined;
}>;

export type PlannedPayment = Readonly<{
  index: number;
  requestId: string;
  buyerId: string;
  orders: readonly PlannedOrder[];
  /** When the payment is started, from the run's start, in milliseconds. */
  startAtMs: number;
  /** The node asked first; retries go round the others. */
  firstNode: number;
}>;

export function planPayments(
  rng: Rng,
  options: {
    payments: number;
    durationMs: number;
    nodes: number;
    declineShare: number;
    abandonShare: number;
  },
): PlannedPayment[] {
  const runTag = rng.int(0, 0xffff).toString(16).padStart(4, '0');
  const spreadMs = Math.max(1, options.durationMs * 0.8);
  return Array.from({ length: options.payments }, (_, index) => {
    const orderCount = rng.pick([1, 1, 2, 2, 3]);
    const sellers = new Set<number>();
    while (sellers.size < orderCount) {
      sellers.add(rng.chance(HOT_SELLER_SHARE) ? 0 : rng.int(1, SELLERS - 1));
    }
    return {
      index,
      requestId: rng.uuid(),
      buyerId: `buyer-${runTag}-${rng.int(1, BUYERS)}`,
      orders: [...sellers].map((seller) => ({
        sellerId: `seller-${runTag}-${seller}`,
        amountMinor: BigInt(rng.int(100, 50_000)),
        card: rng.chance(options.abandonShare)
          ? undefined
          : rng.chance(options.declineShare)
            ? TEST_CARD.declined
            : TEST_CARD.success,
      })),
      startAtMs: Math.round((index / options.payments) * spreadMs + rng.next() * 200),
      firstNode: rng.int(0, options.nodes - 1),
    };
  });
}

export type PaidOrder = Readonly<{
  orderId: string;
  token: string;
  amountMinor: bigint;
  outcome: 'SUCCEEDED' | 'DECLINED';
  pspReference: string;
}>;

export type DriverStats = {
  requested: number;
  acknowledged: string[];
  /** The request of each acknowledged payment: its idempotency key and the answered id. */
  acknowledgedRequests: Array<{ buyerId: string; requestId: string; paymentId: string }>;
  createRetries: number;
  /** Why CreatePayment was retried: gRPC status name → count. */
  createRetryCodes: Record<string, number>;
  createErrors: string[];
  ordersPaid: number;
  /** Orders the plan never pays (they must expire). */
  ordersAbandoned: number;
  /** Their ids. */
  abandonedOrderIds: string[];
  /**
   * Orders the plan pays that were not paid: they ended, or had no checkout URL, before the
   * deadline, or PayWithCard failed.
   */
  ordersNeverPaid: number;
  payRetries: number;
  /** Payments whose task has ended (paid, given up, or failed). */
  finished: number;
};

const CALL_TIMEOUT_MS = 5_000;
const RETRY_PAUSE_MS = 200;
const POLL_MS = 300;
const POLL_MS_MAX = 2_000;

export class PaymentDriver {
  readonly stats: DriverStats = {
    requested: 0,
    acknowledged: [],
    acknowledgedRequests: [],
    createRetries: 0,
    createRetryCodes: {},
    createErrors: [],
    ordersPaid: 0,
    ordersAbandoned: 0,
    abandonedOrderIds: [],
    ordersNeverPaid: 0,
    payRetries: 0,
    finished: 0,
  };
  /** Orders paid at the PSP, for the webhook faults to pick from. */
  readonly paid: PaidOrder[] = [];
  #slots: number;
  #reads = 0;
  readonly #waiting: Array<() => void> = [];

  constructor(
    private readonly cluster: ChaosCluster,
    private readonly plan: readonly PlannedPayment[],
    private readonly options: { concurrencyMax: number; log: (line: string) => void },
  ) {
    this.#slots = options.concurrencyMax;
  }

  /** Runs every planned payment; resolves when all ended or the deadline passed. */
  async run(startedAt: number, deadline: number, signal: AbortSignal): Promise<void> {
    await Promise.all(
      this.plan.map(async (payment) => {
        await sleep(Math.max(0, startedAt + payment.startAtMs - Date.now()), signal);
        if (signal.aborted || Date.now() >= deadline) {
          this.stats.finished += 1;
          return;
        }
        try {
          await this.#runPayment(payment, deadline, signal);
        } catch (error) {
          this.stats.createErrors.push(`payment ${payment.index}: ${String(error)}`);
        } finally {
          this.stats.finished += 1;
        }
      }),
    );
  }

  async #runPayment(plan: PlannedPayment, deadline: number, signal: AbortSignal): Promise<void> {
    this.stats.requested += 1;
    const created = await this.#withSlot(() => this.#create(plan, deadline, signal));
    if (created === undefined) return;
    this.stats.acknowledged.push(created.paymentId);
    this.stats.acknowledgedRequests.push({
      buyerId: plan.buyerId,
      requestId: plan.requestId,
      paymentId: created.paymentId,
    });
    // Orders are paid as their checkout URLs appear, in any order: one order stuck in the DLQ
    // must not keep its siblings unpaid.
    const waiting = new Map<number, string>();
    for (const [seq, planned] of plan.orders.entries()) {
      if (planned.card === undefined) {
        this.stats.ordersAbandoned += 1;
        const orderId = created.orders[seq]?.orderId;
        if (orderId !== undefined) this.stats.abandonedOrderIds.push(orderId);
      } else {
        waiting.set(seq, planned.card);
      }
    }
    let payment = created;
    for (let round = 0; waiting.size > 0 && Date.now() < deadline && !signal.aborted; round += 1) {
      for (const [seq, card] of [...waiting]) {
        const order = payment.orders[seq];
        if (order === undefined || isTerminalOrder(order.state)) {
          // Ended before it could be paid (for example a registration the PSP refused).
          waiting.delete(seq);
          this.stats.ordersNeverPaid += 1;
          continue;
        }
        if (order.checkoutUrl === '') continue;
        waiting.delete(seq);
        const token = order.checkoutUrl.slice(order.checkoutUrl.lastIndexOf('/') + 1);
        const paid = await this.#withSlot(() => this.#pay(token, card, deadline, signal));
        if (paid === undefined) {
          this.stats.ordersNeverPaid += 1;
          continue;
        }
        this.stats.ordersPaid += 1;
        this.paid.push({
          orderId: order.orderId,
          token,
          amountMinor: order.amountMinor,
          outcome:
            paid.status === PaymentStatus.PAYMENT_STATUS_SUCCEEDED ? 'SUCCEEDED' : 'DECLINED',
          pspReference: paid.pspReference,
        });
      }
      if (waiting.size === 0) break;
      // Registration may wait on retries (PSP down, node killed): look less often as time passes.
      await sleep(Math.min(POLL_MS_MAX, POLL_MS * (1 + round)), signal);
      payment = (await this.#get(payment.paymentId)) ?? payment;
    }
    this.stats.ordersNeverPaid += waiting.size;
  }

  async #create(
    plan: PlannedPayment,
    deadline: number,
    signal: AbortSignal,
  ): Promise<Payment | undefined> {
    const request = {
      requestId: plan.requestId,
      buyerId: plan.buyerId,
      currencyCode: 'USD',
      orders: plan.orders.map((o) => ({ sellerId: o.sellerId, amountMinor: o.amountMinor })),
    };
    for (let attempt = 0; Date.now() < deadline && !signal.aborted; attempt += 1) {
      const client = this.#nodeFor(plan.firstNode + attempt)?.client;
      if (client === undefined) {
        await sleep(RETRY_PAUSE_MS, signal);
        continue;
      }
      try {
        const response = await client.payments.createPayment(request, {
          timeoutMs: CALL_TIMEOUT_MS,
        });
        if (response.payment === undefined) throw new Error('CreatePayment returned no payment');
        return response.payment;
      } catch (error) {
        if (!isRetryableStatus(error)) {
          this.stats.createErrors.push(
            `payment ${plan.index}: ${statusName(error)} ${String(error)}`,
          );
          return undefined;
        }
        this.stats.createRetries += 1;
        const code = statusName(error);
        this.stats.createRetryCodes[code] = (this.stats.createRetryCodes[code] ?? 0) + 1;
        await sleep(RETRY_PAUSE_MS, signal);
      }
    }
    return undefined;
  }

  async #get(paymentId: string): Promise<Payment | undefined> {
    const client = this.#nodeFor((this.#reads += 1))?.client;
    if (client === undefined) return undefined;
    try {
      return (await client.payments.getPayment({ paymentId }, { timeoutMs: CALL_TIMEOUT_MS }))
        .payment;
    } catch {
      return undefined;
    }
  }

  async #pay(token: string, card: string, deadline: number, signal: AbortSignal) {
    const psp = this.cluster.pspApi;
    while (Date.now() < deadline && !signal.aborted) {
      try {
        return await callUnary(
          psp.payWithCard.bind(psp),
          { token, cardNumber: card },
          CALL_TIMEOUT_MS,
        );
      } catch (error) {
        if (!isRetryableStatus(error)) {
          this.options.log(`PayWithCard ${token}: ${statusName(error)}`);
          return undefined;
        }
        this.stats.payRetries += 1;
        await sleep(RETRY_PAUSE_MS, signal);
      }
    }
    return undefined;
  }

  /** The node for an attempt number, skipping nodes that are not up. */
  #nodeFor(attempt: number): NodeHandle | undefined {
    const nodes = this.cluster.nodes;
    for (let i = 0; i < nodes.length; i += 1) {
      const node = nodes[(attempt + i) % nodes.length];
      if (node?.state === 'up') return node;
    }
    return undefined;
  }

  /** Runs one call while holding one of the concurrencyMax slots. */
  async #withSlot<T>(work: () => Promise<T>): Promise<T> {
    await this.#acquire();
    try {
      return await work();
    } finally {
      this.#release();
    }
  }

  async #acquire(): Promise<void> {
    if (this.#slots > 0) {
      this.#slots -= 1;
      return;
    }
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next();
    else this.#slots += 1;
  }
}

function isTerminalOrder(state: PaymentOrderState): boolean {
  return (
    state === PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED ||
    state === PaymentOrderState.PAYMENT_ORDER_STATE_FAILED ||
    state === PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED
  );
}
