/**
 * Bounding a wait: every probe, health check and hand-off that waits on another system goes
 * through here, so none can hang; and the bounded pause of a polling loop that others can cut
 * short. Pure apart from the timer; it lives in domain because every layer may use it.
 */

/**
 * The promise's outcome, or a rejection `no answer within <ms> ms` once `ms` passed first. The
 * promise itself is not cancelled: it runs on, and its late outcome is ignored.
 */
export function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/**
 * A polling loop's pause that another part can cut short (a commit that has work for it, or
 * stop()). `wake()` during `sleep(ms)` ends the sleep at once. A wake that comes while the loop
 * is not asleep (it is working) is kept, and the next `sleep` returns at once, so a wake between
 * a pass and its pause is never lost. `forget()` drops a kept wake, for a loop that must back
 * off whatever it was asked.
 */
export class WakeUp {
  #kept = false;
  #end: (() => void) | undefined;

  wake(): void {
    if (this.#end === undefined) this.#kept = true;
    else this.#end();
  }

  forget(): void {
    this.#kept = false;
  }

  sleep(ms: number): Promise<void> {
    if (this.#kept) {
      this.#kept = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const end = () => {
        clearTimeout(timer);
        this.#end = undefined;
        resolve();
      };
      const timer = setTimeout(end, ms);
      this.#end = end;
    });
  }
}

/** Resolves after `ms`, or at once when `signal` aborts; never rejects. */
export function sleepUnlessAborted(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
