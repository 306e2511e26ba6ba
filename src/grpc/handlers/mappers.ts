/**
 * Domain values to proto messages (ts-proto types). The only place that knows both shapes.
 */
import type { Payment } from '../../storage/repositories/payment.repository.js';
import type { PaymentOrder as DomainOrder } from '../../actors/payment-order/machine.js';
import {
  PaymentOrderState,
  PaymentState,
  type Payment as PaymentMessage,
  type PaymentOrder as PaymentOrderMessage,
} from '../generated/settle/v1/payment.js';
import { InvalidArgumentError } from '../../domain/errors.js';

const PAYMENT_STATE_TO_PROTO: Record<string, PaymentState> = {
  NOT_STARTED: PaymentState.PAYMENT_STATE_NOT_STARTED,
  EXECUTING: PaymentState.PAYMENT_STATE_EXECUTING,
  SUCCEEDED: PaymentState.PAYMENT_STATE_SUCCEEDED,
  PARTIALLY_SUCCEEDED: PaymentState.PAYMENT_STATE_PARTIALLY_SUCCEEDED,
  FAILED: PaymentState.PAYMENT_STATE_FAILED,
};

const ORDER_STATE_TO_PROTO: Record<string, PaymentOrderState> = {
  NOT_STARTED: PaymentOrderState.PAYMENT_ORDER_STATE_NOT_STARTED,
  EXECUTING: PaymentOrderState.PAYMENT_ORDER_STATE_EXECUTING,
  SUCCEEDED: PaymentOrderState.PAYMENT_ORDER_STATE_SUCCEEDED,
  FAILED: PaymentOrderState.PAYMENT_ORDER_STATE_FAILED,
  EXPIRED: PaymentOrderState.PAYMENT_ORDER_STATE_EXPIRED,
};

export function paymentToProto(payment: Payment): PaymentMessage {
  return {
    paymentId: payment.id,
    buyerId: payment.buyerId,
    requestId: payment.requestId,
    currencyCode: payment.currency,
    state: PAYMENT_STATE_TO_PROTO[payment.state] ?? PaymentState.PAYMENT_STATE_UNSPECIFIED,
    amountMinor: payment.amountMinor,
    orders: payment.orders.map(orderToProto),
    failureReason: payment.failureReason ?? '',
    createTime: payment.createdAt,
    updateTime: payment.updatedAt,
  };
}

export function orderToProto(order: DomainOrder): PaymentOrderMessage {
  return {
    orderId: order.id,
    paymentId: order.paymentId,
    sellerId: order.sellerId,
    amountMinor: order.amountMinor,
    currencyCode: order.currency,
    state: ORDER_STATE_TO_PROTO[order.state] ?? PaymentOrderState.PAYMENT_ORDER_STATE_UNSPECIFIED,
    checkoutUrl: order.checkoutUrl ?? '',
    pspToken: order.pspToken ?? '',
    failureReason: order.failureReason ?? '',
    version: order.version,
    createTime: order.createdAt,
    updateTime: order.updatedAt,
    pspReference: order.pspReference ?? '',
    reviewReason: order.reviewReason ?? '',
  };
}

/** The storage name of a payment state filter; undefined for UNSPECIFIED (no filter). */
export function paymentStateFromProto(state: PaymentState): string | undefined {
  if (state === PaymentState.PAYMENT_STATE_UNSPECIFIED) return undefined;
  const entry = Object.entries(PAYMENT_STATE_TO_PROTO).find(([, value]) => value === state);
  if (entry === undefined)
    throw new InvalidArgumentError('state', `unknown payment state ${state}`);
  return entry[0];
}
