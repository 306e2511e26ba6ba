/**
 * The risk check that runs before any order is executed: a small set of rules from config. A
 * rejected payment is still recorded (FAILED, RISK_REJECTED); it never reaches the PSP.
 */
export type RiskRules = Readonly<{
  maxPaymentAmountMinor: bigint;
  blockedBuyerIds: ReadonlySet<string>;
}>;

export type RiskDecision =
  | Readonly<{ approved: true }>
  | Readonly<{ approved: false; rule: 'MAX_PAYMENT_AMOUNT' | 'BLOCKED_BUYER'; message: string }>;

export function evaluateRisk(
  rules: RiskRules,
  payment: { buyerId: string; amountMinor: bigint },
): RiskDecision {
  if (rules.blockedBuyerIds.has(payment.buyerId)) {
    return {
      approved: false,
      rule: 'BLOCKED_BUYER',
      message: `buyer ${payment.buyerId} is blocked`,
    };
  }
  if (payment.amountMinor > rules.maxPaymentAmountMinor) {
    return {
      approved: false,
      rule: 'MAX_PAYMENT_AMOUNT',
      message: `amount ${payment.amountMinor} exceeds the limit ${rules.maxPaymentAmountMinor}`,
    };
  }
  return { approved: true };
}
