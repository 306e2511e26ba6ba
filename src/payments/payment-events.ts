/**
 * "Payment X changed" notifications across nodes: after a commit, the writer publishes the
 * payment id on core NATS; every node's hub fans it out to its local waiters (WatchPayment,
 * CreatePayment's short wait). Notifications are hints, never the truth: waiters re-read MySQL,
 * and also poll on a timer, so a lost notification only delays them.
 *
 * The writer's own waiters are told directly when the change is published, so the hub's
 * connection should be opened with `noEcho` (the app gives it one of its own): the server then
 * does not send every change back to the node that made it, which costs a message, a wake-up and
 * a parse per change. On a connection with echo, local waiters are told twice (harmless).
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Names } from '../messaging/subjects.js';

type Listener = () => void;

/** The last subject token of a message carrying several payment ids; never a payment id. */
const BATCH_TOKEN = 'batch';
/** Payment ids per message at most (~31 bytes each: well under NATS's 1 MiB payload limit). */
const BATCH_IDS_MAX = 1_000;

export class PaymentEvents {
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly pending = new Set<string>();
  private flushScheduled = false;
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
        const last = message.subject.slice(message.subject.lastIndexOf('.') + 1);
        if (last !== BATCH_TOKEN) {
          this.emitLocal(last);
          continue;
        }
        const ids = new TextDecoder().decode(message.data).split(' ');
        for (const paymentId of ids.slice(0, BATCH_IDS_MAX)) this.emitLocal(paymentId);
      }
    })();
  }

  stop(): void {
    this.subscription?.unsubscribe();
  }

  /**
   * Tells this node's waiters and every other node that the payment changed (fire and forget).
   * Changes in one turn of the event loop (a committed batch of transitions) go out as one
   * message: one id alone on its own subject, several as a space-separated list on
   * `<prefix>.batch`.
   */
  publish(paymentId: string): void {
    this.pending.add(paymentId);
    if (this.pending.size >= BATCH_IDS_MAX) {
      this.flush();
      return;
    }
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.pending.size === 0) return;
    const ids = [...this.pending];
    this.pending.clear();
    for (const paymentId of ids) this.emitLocal(paymentId);
    try {
      if (ids.length === 1) {
        this.nc.publish(this.names.paymentEventSubject(ids[0] as string));
      } else {
        this.nc.publish(this.names.paymentEventSubject(BATCH_TOKEN), ids.join(' '));
      }
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
