/**
 * Keeps at most one live actor per id in this process and passivates idle ones, and finished
 * ones (`done()`) as soon as their mailbox is empty. Passivation is safe because MySQL holds the
 * truth: the next message for a passivated id creates a fresh actor that reloads its state.
 * Across processes, the version column is the fence, not this registry.
 */
import { ResourceExhaustedError } from '../../domain/errors.js';
import { Mailbox } from './mailbox.js';

/** What the runtime needs from an actor: a handler for one message at a time. */
export interface ActorLogic<M, R> {
  handle(message: M): Promise<R>;
  /**
   * True once nothing more is expected for this actor (a payment order in a final state): the
   * registry drops it when its mailbox empties instead of after idleMsMax, so it dies young, in
   * V8's young generation, rather than lingering into the old one. A late message reloads it.
   */
  done?(): boolean;
}

export type RegistryOptions = Readonly<{
  /** Messages waiting per actor before RESOURCE_EXHAUSTED. */
  mailboxCapacity: number;
  /** An actor idle this long is dropped from memory. */
  idleMsMax: number;
  /** Live actors in this process at most. */
  actorsMax: number;
  /** How often the passivation sweep runs; defaults to a quarter of idleMsMax. */
  sweepMs?: number;
}>;

type Entry<M, R> = { logic: ActorLogic<M, R>; mailbox: Mailbox<M, R> };

export class ActorRegistry<M, R> {
  private readonly actors = new Map<string, Entry<M, R>>();
  private readonly sweeper: NodeJS.Timeout;
  private passivatedTotal = 0;

  constructor(
    private readonly kind: string,
    private readonly create: (id: string) => ActorLogic<M, R>,
    private readonly options: RegistryOptions,
  ) {
    const sweepMs = options.sweepMs ?? Math.max(50, Math.floor(options.idleMsMax / 4));
    this.sweeper = setInterval(() => this.passivateIdle(), sweepMs);
    this.sweeper.unref();
  }

  /** Delivers a message to the actor for id, creating the actor if it is not live. */
  send(id: string, message: M): Promise<R> {
    let entry = this.actors.get(id);
    if (entry === undefined) {
      if (this.actors.size >= this.options.actorsMax) {
        this.passivateIdle(0);
        if (this.actors.size >= this.options.actorsMax) {
          return Promise.reject(
            new ResourceExhaustedError(
              `too many live ${this.kind} actors (${this.options.actorsMax}); retry later`,
            ),
          );
        }
      }
      const logic = this.create(id);
      const created: Entry<M, R> = {
        logic,
        mailbox: new Mailbox<M, R>((m) => logic.handle(m), {
          capacityMax: this.options.mailboxCapacity,
          name: `${this.kind} ${id}`,
          ...(logic.done !== undefined && { onIdle: () => this.dropIfDone(id, created) }),
        }),
      };
      entry = created;
      this.actors.set(id, entry);
    }
    return entry.mailbox.post(message);
  }

  get size(): number {
    return this.actors.size;
  }

  get passivated(): number {
    return this.passivatedTotal;
  }

  /** Sum of all mailboxes' depths. */
  mailboxDepth(): number {
    let depth = 0;
    for (const entry of this.actors.values()) depth += entry.mailbox.depth;
    return depth;
  }

  /** Drops every actor idle for at least idleMsMax (or the given age). */
  passivateIdle(idleMsMin: number = this.options.idleMsMax): number {
    let dropped = 0;
    for (const [id, entry] of this.actors) {
      if (entry.mailbox.idle && entry.mailbox.idleForMs() >= idleMsMin) {
        this.actors.delete(id);
        dropped += 1;
      }
    }
    this.passivatedTotal += dropped;
    return dropped;
  }

  private dropIfDone(id: string, entry: Entry<M, R>): void {
    if (this.actors.get(id) === entry && entry.mailbox.idle && entry.logic.done?.() === true) {
      this.actors.delete(id);
      this.passivatedTotal += 1;
    }
  }

  /** Waits (bounded) until every mailbox is empty; used by graceful shutdown. */
  async drain(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.mailboxDepth() === 0) return true;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return this.mailboxDepth() === 0;
  }

  stop(): void {
    clearInterval(this.sweeper);
  }
}
