/** Small helpers for tests that call a node's gRPC services with and without credentials. */
import * as grpc from '@grpc/grpc-js';

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
