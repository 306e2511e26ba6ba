/** Small helpers for tests that call a node's gRPC services with and without credentials. */
import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';

/** Metadata carrying `authorization: Bearer <token>`. */
export function bearer(token: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  return metadata;
}

/** The error a call failed with; fails the test if the call was answered. */
export async function refusal(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error('expected the call to be refused');
}

/** A fresh CreatePayment request of one order of 19.99 USD to `sellerId`, by a random buyer. */
export function createPaymentRequest(sellerId: string) {
  return {
    requestId: randomUUID(),
    buyerId: `buyer-${randomUUID().slice(0, 8)}`,
    currencyCode: 'USD',
    orders: [{ sellerId, amountMinor: 1999n }],
  };
}
