/**
 * One structured log line and the metrics of every finished request: gRPC calls (fed by the
 * unary/serverStream adapters) and REST twin calls. Lines carry the request id, the caller (the
 * name of the call's API token, never the token; absent on a node without API_TOKENS) and, where
 * the call names them, the payment and order ids, so `grep pay_…` finds everything about one
 * payment and `grep '"caller":"dashboard"'` everything one caller did.
 * Failures a caller can fix log at info (a call over its caller's rate limit too), server-side
 * trouble (INTERNAL, UNAVAILABLE, ..., and load shedding) at warn, and a REST request its client aborted mid-body (499) at debug.
 */
import * as grpc from '@grpc/grpc-js';
import type { CallObservation } from '../grpc/adapters.js';
import type { ApiTokens } from '../grpc/api-auth.js';
import { apiMethodOfPath } from '../grpc/api-scopes.js';
import type { RestObservation } from '../http/payments.routes.js';
import { CLIENT_CLOSED_REQUEST_STATUS } from '../http/router.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

/**
 * The codes of calls Settle could not serve, logged at warn: failures (alerted on by
 * SettleGrpcErrors) and load shedding, RESOURCE_EXHAUSTED (SettleGrpcLoadShedding), which is no
 * bug but an operator should see it. The alert rules count exactly these codes
 * (test/observability/alerts.test.ts checks it). A RESOURCE_EXHAUSTED for a caller over its rate
 * limit is the exception: the caller's doing, logged at info, and taken off the alert's count
 * (settle_api_throttled_total{transport="grpc"}).
 */
export const SERVER_SIDE_CODES: ReadonlySet<grpc.status> = new Set([
  grpc.status.UNKNOWN,
  grpc.status.INTERNAL,
  grpc.status.UNAVAILABLE,
  grpc.status.DATA_LOSS,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/** `/settle.v1.PaymentService/GetPayment` → service and method; `unknown` when malformed. */
export function splitGrpcPath(path: string): { service: string; method: string } {
  const match = /^\/([^/]+)\/([^/]+)$/.exec(path);
  return match === null
    ? { service: 'unknown', method: 'unknown' }
    : { service: match[1] ?? 'unknown', method: match[2] ?? 'unknown' };
}

/**
 * The observer of gRPC calls. With `apiTokens`, the calls are to a service API_TOKENS guards
 * (whether or not any is set), and each is counted by caller in settle_api_requests_total too.
 */
export function grpcCallObserver(
  logger: Logger,
  metrics: Metrics,
  apiTokens?: ApiTokens,
): (call: CallObservation) => void {
  return (call) => {
    const { service, method } = splitGrpcPath(call.path);
    const code = grpc.status[call.code] ?? 'UNKNOWN';
    const ms = Math.round(call.ms * 10) / 10;
    metrics.grpcCall({ service, method, type: call.type, code, ms: call.ms });
    if (apiTokens !== undefined) {
      metrics.apiRequest({
        caller: apiTokens.callerLabel(call.caller),
        method: apiMethodOfPath(call.path).name,
        code,
      });
    }
    // A caller over its rate limit is RESOURCE_EXHAUSTED too, but it is the caller's doing: at
    // warn, a runaway client would write a line per refused call even at LOG_LEVEL=warn.
    const serverSide = SERVER_SIDE_CODES.has(call.code) && call.rateLimited !== true;
    // The line is built only if it is written (at LOG_LEVEL=warn most are not).
    if (!logger.isLevelEnabled(serverSide ? 'warn' : 'info')) return;
    const line = {
      grpcService: service,
      grpcMethod: method,
      grpcCode: code,
      ms,
      requestId: call.requestId,
      ...(call.caller !== undefined ? { caller: call.caller } : {}),
      ...(call.paymentId !== undefined ? { paymentId: call.paymentId } : {}),
      ...(call.orderId !== undefined ? { orderId: call.orderId } : {}),
    };
    const message = `grpc ${method} ${code} in ${ms} ms`;
    if (serverSide) logger.warn(line, message);
    else logger.info(line, message);
  };
}

/**
 * The observer of the REST twin's requests, all of which API_TOKENS guards: each is counted by
 * caller in settle_api_requests_total too.
 */
export function restCallObserver(
  logger: Logger,
  metrics: Metrics,
  apiTokens: ApiTokens,
): (request: RestObservation) => void {
  return (request) => {
    metrics.httpRequest({ method: request.method, route: request.route, status: request.status });
    metrics.apiRequest({
      caller: apiTokens.callerLabel(request.caller),
      method: `${request.method} ${request.route}`,
      code: String(request.status),
    });
    const level =
      request.status >= 500
        ? 'warn'
        : request.status === CLIENT_CLOSED_REQUEST_STATUS
          ? 'debug'
          : 'info';
    if (!logger.isLevelEnabled(level)) return;
    const line = {
      httpMethod: request.method,
      route: request.route,
      status: request.status,
      ms: request.ms,
      requestId: request.requestId,
      ...(request.caller !== undefined ? { caller: request.caller } : {}),
      ...(request.paymentId !== undefined ? { paymentId: request.paymentId } : {}),
    };
    const message = `http ${request.method} ${request.route} ${request.status} in ${request.ms} ms`;
    logger[level](line, message);
  };
}
