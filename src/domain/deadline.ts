/**
 * Bounding a wait: every probe, health check and hand-off that waits on another system goes
 * through here, so none can hang. Pure apart from the timer; it lives in domain because every
 * layer may use it.
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
