/**
 * gRPC helpers of the chaos tooling: a promisified unary call with a deadline for the generated
 * clients, the retryable status codes, and a grpc.health.v1 Check client.
 */
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: grpc.Metadata,
  options: Partial<grpc.CallOptions>,
  callback: (error: grpc.ServiceError | null, response: Res) => void,
) => grpc.ClientUnaryCall;

/** One unary call of a ts-proto grpc-js client, with a deadline. */
export function callUnary<Req, Res>(
  method: UnaryMethod<Req, Res>,
  request: Req,
  timeoutMs: number,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method(request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** Codes after which the same request may be sent again (to this node or another). */
const RETRYABLE_CODES: ReadonlySet<number> = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.ABORTED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.CANCELLED,
]);

export function isRetryableStatus(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'number' && RETRYABLE_CODES.has(code);
}

export function statusName(error: unknown): string {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'number') return error instanceof Error ? error.message : String(error);
  return grpc.status[code] ?? String(code);
}

export type HealthState = 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'UNREACHABLE';

const HealthClient = grpc.makeClientConstructor(healthService, 'grpc.health.v1.Health');

/** grpc.health.v1.Health/Check of the whole server (""); UNREACHABLE when the call fails. */
export function checkHealth(address: string, timeoutMs: number): Promise<HealthState> {
  const client = new HealthClient(address, grpc.credentials.createInsecure());
  return new Promise<HealthState>((resolve) => {
    (
      client as unknown as {
        check: (
          request: { service: string },
          options: Partial<grpc.CallOptions>,
          callback: (error: grpc.ServiceError | null, response: { status?: string }) => void,
        ) => void;
      }
    ).check({ service: '' }, { deadline: Date.now() + timeoutMs }, (error, response) => {
      client.close();
      if (error) return resolve('UNREACHABLE');
      const status = response.status;
      resolve(status === 'SERVING' || status === 'NOT_SERVING' ? status : 'UNKNOWN');
    });
  });
}
