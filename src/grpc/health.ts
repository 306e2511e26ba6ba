/**
 * The standard grpc.health.v1.Health service (grpc-health-check's implementation), reporting one
 * status for the whole server ("") and for each named service. Everything starts NOT_SERVING: the
 * composition root calls setServing(true) once its dependencies are up, and setServing(false)
 * when it starts draining, so load balancers stop routing before the server stops.
 */
import type * as grpc from '@grpc/grpc-js';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';

/** The health service's fully-qualified name, for reflection's list of services. */
export const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health';

export type Health = Readonly<{
  /** Registers grpc.health.v1.Health (Check, Watch, List) on the server. */
  addToServer(server: grpc.Server): void;
  /** Sets "" and every named service to SERVING or NOT_SERVING; Watch callers are notified. */
  setServing(serving: boolean): void;
}>;

/** Creates the health service for `serviceNames` (fully qualified, e.g. settle.v1.PaymentService). */
export function createHealth(serviceNames: readonly string[]): Health {
  const names = [...new Set(['', ...serviceNames])];
  const notServing: ServingStatus = 'NOT_SERVING';
  const implementation = new HealthImplementation(
    Object.fromEntries(names.map((name) => [name, notServing])),
  );
  return {
    addToServer: (server) => implementation.addToServer(server),
    setServing(serving) {
      const status: ServingStatus = serving ? 'SERVING' : 'NOT_SERVING';
      for (const name of names) implementation.setStatus(name, status);
    },
  };
}
