/**
 * Names of every stream, subject and consumer, all prefixed by the namespace so that several
 * Settle instances (and test runs) share one NATS server without colliding.
 */
import { createHash } from 'node:crypto';

export type Names = Readonly<{
  namespace: string;
  commandStream: string;
  commandSubjectAll: string;
  commandSubject: (orderId: string) => string;
  runtimeConsumer: string;
  deadLetterStream: string;
  deadLetterSubject: string;
  paymentEventSubject: (paymentId: string) => string;
  paymentEventSubjectAll: string;
}>;

export function names(namespace: string, partitions: number): Names {
  const upper = namespace.toUpperCase();
  return {
    namespace,
    commandStream: `SETTLE_${upper}_CMD`,
    commandSubjectAll: `settle.${namespace}.cmd.>`,
    commandSubject: (orderId) => `settle.${namespace}.cmd.${partitionOf(orderId, partitions)}`,
    runtimeConsumer: `settle_${namespace}_runtime`,
    deadLetterStream: `SETTLE_${upper}_DLQ`,
    deadLetterSubject: `settle.${namespace}.dlq`,
    paymentEventSubject: (paymentId) => `settle.${namespace}.evt.payment.${paymentId}`,
    paymentEventSubjectAll: `settle.${namespace}.evt.payment.*`,
  };
}

/** Stable partition of an order id: the same order always lands on the same subject. */
export function partitionOf(orderId: string, partitions: number): number {
  return createHash('sha1').update(orderId).digest().readUInt32BE(0) % partitions;
}
