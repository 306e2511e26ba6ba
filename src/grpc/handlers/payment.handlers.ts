/**
 * settle.v1.PaymentService: thin adapters from proto requests to the PaymentService use cases.
 */
import type * as grpc from '@grpc/grpc-js';
import type { PaymentServiceServer } from '../generated/settle/v1/payment.js';
import type { PaymentService } from '../../payments/payment.service.js';
import { serverStream, unary, type AdapterOptions } from '../adapters.js';
import { paymentStateFromProto, paymentToProto } from './mappers.js';

export function paymentHandlers(
  payments: PaymentService,
  options: AdapterOptions,
): PaymentServiceServer {
  return {
    createPayment: unary(async (request, call) => {
      const waitMsMax = msBeforeDeadline(call.getDeadline(), Date.now());
      const payment = await payments.create(
        {
          requestId: request.requestId,
          buyerId: request.buyerId,
          currencyCode: request.currencyCode,
          orders: request.orders,
        },
        waitMsMax === undefined ? {} : { waitMsMax },
      );
      return { payment: paymentToProto(payment) };
    }, options),
    getPayment: unary(
      async (request) => ({
        payment: paymentToProto(await payments.get(request.paymentId)),
      }),
      options,
    ),
    listPayments: unary(async (request) => {
      const state = paymentStateFromProto(request.state);
      const page = await payments.list({
        pageSize: request.pageSize,
        pageToken: request.pageToken,
        ...(state !== undefined ? { state } : {}),
        ...(request.buyerId !== '' ? { buyerId: request.buyerId } : {}),
      });
      return { payments: page.payments.map(paymentToProto), nextPageToken: page.nextPageToken };
    }, options),
    watchPayment: serverStream(async (request, call, signal) => {
      await payments.watch(
        request.paymentId,
        (payment) => {
          if (!signal.aborted) call.write({ payment: paymentToProto(payment) });
        },
        signal,
      );
    }, options),
  };
}

/**
 * Kept free before a caller's deadline: one payment read (a few ms on a healthy pool) and the
 * answer's trip back, with room for a loaded node. With less, the answer could land after the
 * deadline, and the caller would see DEADLINE_EXCEEDED for a payment that was created.
 */
const DEADLINE_MARGIN_MS = 250;

/**
 * Left of a call's deadline for waiting, less DEADLINE_MARGIN_MS for the last read and the answer
 * to travel back; undefined when the call has no deadline. May be 0 or less: no wait at all.
 */
export function msBeforeDeadline(deadline: grpc.Deadline, nowMs: number): number | undefined {
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  if (!Number.isFinite(deadlineMs)) return undefined;
  return deadlineMs - nowMs - DEADLINE_MARGIN_MS;
}
