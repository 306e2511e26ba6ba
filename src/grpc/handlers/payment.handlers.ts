/**
 * settle.v1.PaymentService: thin adapters from proto requests to the PaymentService use cases.
 */
import type { PaymentServiceServer } from '../generated/settle/v1/payment.js';
import type { PaymentService } from '../../payments/payment.service.js';
import { serverStream, unary, type AdapterOptions } from '../adapters.js';
import { paymentStateFromProto, paymentToProto } from './mappers.js';

export function paymentHandlers(
  payments: PaymentService,
  options: AdapterOptions,
): PaymentServiceServer {
  return {
    createPayment: unary(async (request) => {
      const payment = await payments.create({
        requestId: request.requestId,
        buyerId: request.buyerId,
        currencyCode: request.currencyCode,
        orders: request.orders,
      });
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
