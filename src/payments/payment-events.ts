/**
 * "Payment X changed" notifications across nodes: after a commit, the writer publishes the
 * payment id on core NATS; every node's hub fans it out to its local waiters (WatchPayment,
 * CreatePayment's short wait). Notifications are hints, never the truth: waiters re-read MySQL,
 * and also poll on a timer, so a lost notification only delays them.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Names } from '../messaging/subjects.js';

type Listener = () => void;

export class PaymentEvents {
  private readonly listeners = new Map<string, Set<Listener>>();
  private subscription: Subscription | undefined;
  private listenerCount = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly names: Names,
    private readonly listenersMax: number,
  ) {}

  start(): void {
    const subscription = this.nc.subscribe(this.names.paymentEventSubjectAll);
    this.subscription = subscription;
    void (async () => {
      for await (const message of subscription) {
        const paymentId = message.subject.slice(message.subject.lastIndexOf('.') + 1);
        this.emitLocal(paymentId);
      }
    })();
  }

  stop(): void {
    this.subscription?.unsubscribe();
  }

  /** Tells every node that the payment changed (fire and forget). */
  publish(paymentId: string): void {
    try {
      this.nc.publish(this.names.paymentEventSubject(paymentId));
    } catch {
      // Disconnected: waiters fall back to polling.
    }
  }

  get size(): number {
    return this.listenerCount;
  }

  /** Registers a listener; returns undefined when the node has too many already. */
  listen(paymentId: string, listener: Listener): (() => void) | undefined {
    if (this.listenerCount >= this.listenersMax) return undefined;
    let set = this.listeners.get(paymentId);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(paymentId, set);
    }
    set.add(listener);
    this.listenerCount += 1;
    return () => {
      if (set.delete(listener)) this.listenerCount -= 1;
      if (set.size === 0) this.listeners.delete(paymentId);
    };
  }

  private emitLocal(paymentId: string): void {
    for (const listener of this.listeners.get(paymentId) ?? []) listener();
  }
}

/**
 * Resolves when notified, after `pollMs`, or when the signal aborts: whichever comes first.
 */
export function nextChange(
  events: PaymentEvents,
  paymentId: string,
  pollMs: number,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      stopListening?.();
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, pollMs);
    const stopListening = events.listen(paymentId, done);
    signal?.addEventListener('abort', done, { once: true });
  });
}
