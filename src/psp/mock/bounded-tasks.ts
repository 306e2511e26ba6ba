/**
 * A small bounded work queue: at most `concurrencyMax` tasks run at once and at most
 * `queueMax` wait. Used for auto-pay, so a burst of registrations cannot open unbounded database
 * work. A task's failure is reported to `onError` and never rejects anything else.
 */
export class BoundedTasks {
  readonly #concurrencyMax: number;
  readonly #queueMax: number;
  readonly #onError: (error: unknown) => void;
  readonly #queue: Array<() => Promise<void>> = [];
  readonly #running = new Set<Promise<void>>();
  #closed = false;

  constructor(options: {
    concurrencyMax: number;
    queueMax: number;
    onError: (error: unknown) => void;
  }) {
    this.#concurrencyMax = options.concurrencyMax;
    this.#queueMax = options.queueMax;
    this.#onError = options.onError;
  }

  /** Queues a task; false (and the task is dropped) when closed or the queue is full. */
  push(task: () => Promise<void>): boolean {
    if (this.#closed || this.#queue.length >= this.#queueMax) return false;
    this.#queue.push(task);
    this.#pump();
    return true;
  }

  /** Drops the tasks still waiting and waits for the running ones. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#queue.length = 0;
    await Promise.allSettled([...this.#running]);
  }

  #pump(): void {
    while (this.#running.size < this.#concurrencyMax) {
      const task = this.#queue.shift();
      if (task === undefined) return;
      const running: Promise<void> = task()
        .catch(this.#onError)
        .finally(() => {
          this.#running.delete(running);
          this.#pump();
        });
      this.#running.add(running);
    }
  }
}
