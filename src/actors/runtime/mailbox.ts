/**
 * A bounded, single-threaded mailbox: messages are handled strictly one at a time, in arrival
 * order, each awaited before the next starts. A full mailbox refuses new messages at once
 * (ResourceExhaustedError) instead of queueing without bound. A handler that throws fails only its
 * own message.
 */
import { ResourceExhaustedError } from '../../domain/errors.js';

type Envelope<M, R> = {
  message: M;
  resolve: (result: R) => void;
  reject: (error: unknown) => void;
};

export class Mailbox<M, R> {
  private readonly queue: Envelope<M, R>[] = [];
  private running = false;
  private lastActivityMs: number;

  constructor(
    private readonly handler: (message: M) => Promise<R>,
    private readonly options: {
      capacityMax: number;
      name: string;
      nowMs?: () => number;
      /** Called each time the last waiting message has been handled. */
      onIdle?: () => void;
    },
  ) {
    this.lastActivityMs = this.now();
  }

  /** Number of messages waiting or being handled. */
  get depth(): number {
    return this.queue.length + (this.running ? 1 : 0);
  }

  get idle(): boolean {
    return !this.running && this.queue.length === 0;
  }

  /** Milliseconds since the mailbox last finished or received a message. */
  idleForMs(): number {
    return this.idle ? this.now() - this.lastActivityMs : 0;
  }

  post(message: M): Promise<R> {
    if (this.depth >= this.options.capacityMax) {
      return Promise.reject(
        new ResourceExhaustedError(
          `mailbox of ${this.options.name} is full (${this.options.capacityMax} messages); retry later`,
        ),
      );
    }
    this.lastActivityMs = this.now();
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ message, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      for (let envelope = this.queue.shift(); envelope; envelope = this.queue.shift()) {
        try {
          envelope.resolve(await this.handler(envelope.message));
        } catch (error) {
          envelope.reject(error);
        }
      }
    } finally {
      this.running = false;
      this.lastActivityMs = this.now();
    }
    this.options.onIdle?.();
  }

  private now(): number {
    return this.options.nowMs?.() ?? Date.now();
  }
}
