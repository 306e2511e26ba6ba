/**
 * The faults of a chaos run: a seeded schedule (`planFaults`) and the injector that carries it
 * out against a ChaosCluster. Every kind is injected several times, spread over the run:
 *
 * - kill -9 of a Settle node mid-flight, restarted after a pause;
 * - NATS cut: a node's (or every node's) NATS proxy goes down, then up;
 * - MySQL connection kill: live connections destroyed, or a short outage (proxy down, then up);
 * - PSP errors, timeouts (calls that hang past the client's deadline) and slow answers, through
 *   the mock's SetBehavior, long and strong enough to open the circuit breaker;
 * - duplicate webhooks: the PSP resends a stored event, and one event is posted to every node at
 *   the same instant (the inbox's unique key decides);
 * - late, out-of-order webhooks: a signed `payment.declined` for an order that already SUCCEEDED;
 * - forged webhooks: bad secret, tampered body, stale or missing signature (each must get 400).
 *
 * Faults with a duration heal themselves on a timer; `healAll()` ends every fault at once.
 */
import { randomBytes } from 'node:crypto';
import { encodePspWebhookEvent, signWebhook, type PspWebhookEvent } from '../psp/webhook.js';
import type { SetBehaviorRequest } from '../grpc/generated/settle/psp/v1/psp.js';
import type { ChaosCluster, NodeHandle } from './cluster.js';
import type { Rng } from './random.js';
import { callUnary } from './rpc.js';
import type { PaidOrder } from './workload.js';

export const FAULT_KINDS = [
  'kill-node',
  'nats-cut',
  'mysql-kill',
  'psp-errors',
  'psp-timeouts',
  'psp-slow',
  'webhook-duplicate',
  'webhook-late',
  'webhook-forged',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export const FAULT_LABEL: Readonly<Record<FaultKind, string>> = {
  'kill-node': 'kill -9 of a Settle node',
  'nats-cut': 'NATS connection cut',
  'mysql-kill': 'MySQL connections killed',
  'psp-errors': 'PSP errors (UNAVAILABLE)',
  'psp-timeouts': 'PSP timeouts (hung calls)',
  'psp-slow': 'PSP slow answers',
  'webhook-duplicate': 'duplicate webhooks',
  'webhook-late': 'late, out-of-order webhooks',
  'webhook-forged': 'forged webhooks',
};

export type PlannedFault = Readonly<{
  atMs: number;
  kind: FaultKind;
  /** The node it targets (another one if that one is down). */
  node: number;
  /** Every node at once (network faults). */
  allNodes: boolean;
  /** How long the fault lasts, in milliseconds. */
  holdMs: number;
  /** Error or hang rate of PSP faults. */
  rate: number;
  latencyMs: number;
  /** A kind-specific choice (MySQL: kill vs outage; forged: which forgery). */
  variant: number;
}>;

/** Faults of each kind in a run of `durationMs`: at least one, more in longer runs. */
export function faultsPerKind(durationMs: number): number {
  return Math.max(1, Math.min(10, Math.floor(durationMs / 20_000)));
}

export function planFaults(
  rng: Rng,
  options: { durationMs: number; nodes: number; perKind: number },
): PlannedFault[] {
  const kinds = rng.shuffle(
    FAULT_KINDS.flatMap((kind) => Array<FaultKind>(options.perKind).fill(kind)),
  );
  const startMs = Math.min(2_000, options.durationMs * 0.1);
  const slotMs = (options.durationMs * 0.9 - startMs) / kinds.length;
  return kinds.map((kind, i) => ({
    atMs: Math.round(startMs + i * slotMs + rng.next() * slotMs * 0.5),
    kind,
    node: rng.int(0, options.nodes - 1),
    allNodes: rng.chance(0.3),
    holdMs: holdMsFor(kind, rng),
    rate: kind === 'psp-errors' ? 0.8 + rng.next() * 0.2 : 0.3 + rng.next() * 0.4,
    latencyMs: rng.int(300, 1_200),
    variant: rng.int(0, 3),
  }));
}

function holdMsFor(kind: FaultKind, rng: Rng): number {
  switch (kind) {
    case 'kill-node':
      return rng.int(300, 2_000); // down time before the restart
    case 'nats-cut':
      return rng.int(1_500, 4_000);
    case 'mysql-kill':
      return rng.int(800, 2_000);
    case 'psp-errors':
    case 'psp-timeouts':
    case 'psp-slow':
      return rng.int(2_000, 5_000);
    case 'webhook-duplicate':
    case 'webhook-late':
    case 'webhook-forged':
      return 0;
  }
}

export type InjectorContext = Readonly<{
  cluster: ChaosCluster;
  /** Runtime choices (which paid order to hit), seeded. */
  rng: Rng;
  /** Orders paid so far, from the driver. */
  paid: () => readonly PaidOrder[];
  log: (line: string) => void;
}>;

type PspKnob = 'errorRate' | 'hangRate' | 'latencyMs';

const WEBHOOK_TIMEOUT_MS = 5_000;
const RESTART_ATTEMPTS_MAX = 10;

export class FaultInjector {
  readonly injected: Record<string, number> = {};
  readonly skipped: Record<string, number> = {};
  readonly webhooks = {
    forgedSent: 0,
    forgedAccepted: 0,
    duplicatesSent: 0,
    lateSent: 0,
    /** Answers to genuine (signed) webhooks other than 200/503: they should not happen. */
    unexpected: [] as string[],
  };
  /** Orders that got a late `payment.declined` after they SUCCEEDED: they must stay SUCCEEDED. */
  readonly lateDeclined = new Set<string>();
  readonly #pending = new Set<Promise<unknown>>();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #pspHolds: Record<PspKnob, number> = { errorRate: 0, hangRate: 0, latencyMs: 0 };
  readonly #proxyHolds = new Map<object, number>();

  constructor(private readonly context: InjectorContext) {}

  /** Injects one fault; returns a line describing it, or undefined if it had to be skipped. */
  async inject(fault: PlannedFault): Promise<string | undefined> {
    const line = await this.#inject(fault);
    const counter = line === undefined ? this.skipped : this.injected;
    counter[fault.kind] = (counter[fault.kind] ?? 0) + 1;
    return line;
  }

  async #inject(fault: PlannedFault): Promise<string | undefined> {
    const { cluster } = this.context;
    switch (fault.kind) {
      case 'kill-node': {
        const node = this.#pickUp(fault.node);
        if (node === undefined) return undefined;
        const pid = node.process.pid;
        await cluster.killNode(node.index);
        this.#later(fault.holdMs, () =>
          this.#track(
            cluster
              .startNode(node.index, { attemptsMax: RESTART_ATTEMPTS_MAX })
              .then(() => this.context.log(`${node.name} restarted (pid ${node.process.pid})`))
              .catch((error: unknown) =>
                this.context.log(`${node.name} failed to restart: ${String(error)}`),
              ),
          ),
        );
        return `kill -9 ${node.name} (pid ${pid}); restart in ${fault.holdMs} ms`;
      }
      case 'nats-cut': {
        const nodes = fault.allNodes ? cluster.nodes : [cluster.node(fault.node)];
        for (const node of nodes) this.#holdProxy(node.natsProxy, fault.holdMs);
        return `NATS cut for ${nodes.map((n) => n.name).join(', ')} for ${fault.holdMs} ms`;
      }
      case 'mysql-kill': {
        const nodes = fault.allNodes ? cluster.nodes : [cluster.node(fault.node)];
        if (fault.variant === 0) {
          for (const node of nodes) this.#holdProxy(node.mysqlProxy, fault.holdMs);
          return `MySQL outage for ${nodes.map((n) => n.name).join(', ')} for ${fault.holdMs} ms`;
        }
        let killed = 0;
        for (const node of nodes) killed += node.mysqlProxy.killConnections();
        return `MySQL connections killed for ${nodes.map((n) => n.name).join(', ')} (${killed} sockets)`;
      }
      case 'psp-errors':
        await this.#holdPsp('errorRate', fault.rate, fault.holdMs);
        return `PSP error_rate ${fault.rate.toFixed(2)} for ${fault.holdMs} ms`;
      case 'psp-timeouts':
        await this.#holdPsp('hangRate', fault.rate, fault.holdMs);
        return `PSP hang_rate ${fault.rate.toFixed(2)} for ${fault.holdMs} ms`;
      case 'psp-slow':
        await this.#holdPsp('latencyMs', fault.latencyMs, fault.holdMs);
        return `PSP latency ${fault.latencyMs} ms for ${fault.holdMs} ms`;
      case 'webhook-duplicate':
        return this.#duplicateWebhooks();
      case 'webhook-late':
        return this.#lateWebhook();
      case 'webhook-forged':
        return this.#forgedWebhooks(fault.variant);
    }
  }

  /** Ends every fault now: proxies up, PSP behaviour normal, dead nodes restarted. */
  async healAll(): Promise<void> {
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    this.context.cluster.healNetwork();
    this.#proxyHolds.clear();
    await this.#setPsp({ errorRate: 0, hangRate: 0, latencyMs: 0 });
    this.#pspHolds.errorRate = 0;
    this.#pspHolds.hangRate = 0;
    this.#pspHolds.latencyMs = 0;
    await Promise.all([...this.#pending]);
    const { cluster } = this.context;
    await Promise.all(
      cluster.nodes
        .filter((node) => node.state === 'down')
        .map((node) =>
          cluster
            .startNode(node.index, { attemptsMax: RESTART_ATTEMPTS_MAX })
            .catch((error: unknown) =>
              this.context.log(`${node.name} failed to restart: ${String(error)}`),
            ),
        ),
    );
  }

  #pickUp(preferred: number): NodeHandle | undefined {
    const nodes = this.context.cluster.nodes;
    for (let i = 0; i < nodes.length; i += 1) {
      const node = nodes[(preferred + i) % nodes.length];
      if (node?.state === 'up') return node;
    }
    return undefined;
  }

  #later(ms: number, action: () => void): void {
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      action();
    }, ms);
    this.#timers.add(timer);
  }

  #track(promise: Promise<unknown>): void {
    this.#pending.add(promise);
    void promise.finally(() => this.#pending.delete(promise));
  }

  /** Holds a proxy down for `ms`; overlapping holds end when the last one does. */
  #holdProxy(proxy: { down: () => void; up: () => void }, ms: number): void {
    this.#proxyHolds.set(proxy, (this.#proxyHolds.get(proxy) ?? 0) + 1);
    proxy.down();
    this.#later(ms, () => {
      const holds = (this.#proxyHolds.get(proxy) ?? 1) - 1;
      this.#proxyHolds.set(proxy, holds);
      if (holds <= 0) proxy.up();
    });
  }

  async #holdPsp(knob: PspKnob, value: number, ms: number): Promise<void> {
    this.#pspHolds[knob] += 1;
    await this.#setPsp({ [knob]: value });
    this.#later(ms, () => {
      this.#pspHolds[knob] -= 1;
      if (this.#pspHolds[knob] <= 0) {
        this.#pspHolds[knob] = 0;
        this.#track(this.#setPsp({ [knob]: 0 }));
      }
    });
  }

  async #setPsp(patch: Partial<SetBehaviorRequest>): Promise<void> {
    const psp = this.context.cluster.pspApi;
    try {
      await callUnary(psp.setBehavior.bind(psp), patch as SetBehaviorRequest, 5_000);
    } catch (error) {
      this.context.log(`SetBehavior ${JSON.stringify(patch)} failed: ${String(error)}`);
    }
  }

  async #duplicateWebhooks(): Promise<string | undefined> {
    const paid = this.context.paid();
    if (paid.length === 0) return undefined;
    const { cluster, rng } = this.context;
    const psp = cluster.pspApi;
    const resent: string[] = [];
    for (let i = 0; i < 3; i += 1) {
      const order = rng.pick(paid);
      try {
        await callUnary(psp.resendWebhook.bind(psp), { nonce: order.orderId }, 5_000);
        resent.push(order.orderId);
        this.webhooks.duplicatesSent += 1;
      } catch (error) {
        this.context.log(`ResendWebhook ${order.orderId}: ${String(error)}`);
      }
    }
    // The same event to every node at the same instant: only one may record it.
    const succeeded = paid.filter((order) => order.outcome === 'SUCCEEDED');
    let fanned = '';
    if (succeeded.length > 0) {
      const order = rng.pick(succeeded);
      const event = webhookEvent(order, 'payment.succeeded', eventId(rng));
      const nodes = cluster.upNodes();
      const statuses = await Promise.all(
        nodes.map((node) => this.#post(node, encodePspWebhookEvent(event), 'valid')),
      );
      this.webhooks.duplicatesSent += nodes.length;
      for (const status of statuses) this.#expectGenuine(status, `duplicate of ${order.orderId}`);
      fanned = `; one event to ${nodes.length} node(s) at once: HTTP ${statuses.join(', ')}`;
    }
    return `ResendWebhook x${resent.length}${fanned}`;
  }

  async #lateWebhook(): Promise<string | undefined> {
    const { cluster, rng } = this.context;
    const candidates = this.context.paid().filter((order) => order.outcome === 'SUCCEEDED');
    // Only orders Settle has already booked: the decline is then truly late.
    const booked = await cluster.db
      .selectFrom('payment_order')
      .select('id')
      .where(
        'id',
        'in',
        candidates.length > 0 ? candidates.slice(-200).map((order) => order.orderId) : [''],
      )
      .where('state', '=', 'SUCCEEDED')
      .execute()
      .catch(() => []);
    if (booked.length === 0) return undefined;
    const chosenId = rng.pick(booked).id;
    const order = candidates.find((candidate) => candidate.orderId === chosenId);
    const node = this.#pickUp(rng.int(0, cluster.nodes.length - 1));
    if (order === undefined || node === undefined) return undefined;
    const event = webhookEvent(order, 'payment.declined', eventId(rng));
    const status = await this.#post(node, encodePspWebhookEvent(event), 'valid');
    this.webhooks.lateSent += 1;
    this.#expectGenuine(status, `late decline of ${order.orderId}`);
    if (status === 200) this.lateDeclined.add(order.orderId);
    return `payment.declined after success for ${order.orderId} → ${node.name}: HTTP ${status}`;
  }

  async #forgedWebhooks(variant: number): Promise<string | undefined> {
    const { cluster, rng } = this.context;
    const node = this.#pickUp(rng.int(0, cluster.nodes.length - 1));
    const paid = this.context.paid();
    if (node === undefined || paid.length === 0) return undefined;
    // A forged success for a declined order would invent money if it were believed.
    const declined = paid.filter((order) => order.outcome === 'DECLINED');
    const target = rng.pick(declined.length > 0 ? declined : paid);
    const event = webhookEvent(
      { ...target, pspReference: `psp_forged${randomBytes(6).toString('hex')}` },
      'payment.succeeded',
      eventId(rng),
    );
    const forgeries = ['wrong-secret', 'tampered', 'stale', 'unsigned'] as const;
    const statuses: string[] = [];
    // Two forgeries per fault: the planned one and the next.
    for (const kind of [
      forgeries[variant % 4] ?? 'unsigned',
      forgeries[(variant + 1) % 4] ?? 'stale',
    ]) {
      const status = await this.#post(node, encodePspWebhookEvent(event), kind);
      if (status === 0) continue;
      this.webhooks.forgedSent += 1;
      if (status !== 400) this.webhooks.forgedAccepted += 1;
      statuses.push(`${kind} → ${status}`);
    }
    return `forged payment.succeeded for ${target.orderId} at ${node.name}: ${statuses.join(', ')}`;
  }

  #expectGenuine(status: number, what: string): void {
    // 503 means the node's database was unreachable at that moment (the PSP would retry).
    if (status !== 200 && status !== 503 && status !== 0) {
      this.webhooks.unexpected.push(`${what}: HTTP ${status}`);
    }
  }

  /** POSTs a body to a node's webhook endpoint; returns the HTTP status, 0 on a network error. */
  async #post(
    node: NodeHandle,
    body: string,
    signing: 'valid' | 'wrong-secret' | 'tampered' | 'stale' | 'unsigned',
  ): Promise<number> {
    const secret = this.context.cluster.webhookSecret;
    const nowS = Math.floor(Date.now() / 1000);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    let sent = body;
    switch (signing) {
      case 'valid':
        headers['psp-signature'] = signWebhook(secret, Buffer.from(body), nowS);
        break;
      case 'wrong-secret':
        headers['psp-signature'] = signWebhook(`${secret}-not-it`, Buffer.from(body), nowS);
        break;
      case 'tampered':
        headers['psp-signature'] = signWebhook(secret, Buffer.from(body), nowS);
        sent = body.replace(
          /"amount_minor":"(\d+)"/,
          (_m, amount: string) => `"amount_minor":"${amount}0"`,
        );
        break;
      case 'stale':
        headers['psp-signature'] = signWebhook(secret, Buffer.from(body), nowS - 3_600);
        break;
      case 'unsigned':
        break;
    }
    try {
      const response = await fetch(`${node.httpUrl}/webhooks/psp`, {
        method: 'POST',
        headers,
        body: sent,
        signal: AbortSignal.timeout(WEBHOOK_TIMEOUT_MS),
      });
      await response.arrayBuffer();
      return response.status;
    } catch {
      return 0;
    }
  }
}

function eventId(rng: Rng): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567';
  return `evt_chaos${Array.from({ length: 20 }, () => rng.pick([...alphabet])).join('')}`;
}

function webhookEvent(
  order: PaidOrder,
  type: 'payment.succeeded' | 'payment.declined',
  id: string,
): PspWebhookEvent {
  return {
    id,
    type,
    created: Math.floor(Date.now() / 1000),
    data: {
      nonce: order.orderId,
      token: order.token,
      psp_reference: type === 'payment.succeeded' ? order.pspReference : null,
      amount_minor: order.amountMinor,
      currency: 'USD',
      decline_code: type === 'payment.declined' ? 'card_declined' : null,
    },
  };
}
