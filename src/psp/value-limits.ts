/**
 * The longest values from the PSP that Settle stores, each the size of its column in
 * src/storage/migrations/0001-initial.ts. The webhook schema (webhook.ts) and the PSP client
 * (client.ts) both check against these, so that a longer value is refused where it comes in, with
 * its field named, rather than failing a MySQL write ("Data too long") that every retry repeats.
 * Lengths count characters (code points), as a utf8mb4 VARCHAR does.
 */
export const PSP_VALUE_LENGTH_MAX = {
  /** payment_order.psp_token VARCHAR(128). */
  token: 128,
  /** payment_order.checkout_url VARCHAR(512). */
  checkoutUrl: 512,
  /** payment_order.psp_reference VARCHAR(64). */
  pspReference: 64,
  /**
   * payment_order.failure_reason VARCHAR(64), where a decline code goes: a webhook's longer one
   * is refused; a status answer's is cut to fit by the machine (failureReasonOf).
   */
  declineCode: 64,
} as const;
export type PspValueField = keyof typeof PSP_VALUE_LENGTH_MAX;

/**
 * Whether `value` fits the column of `field`. Counted in characters (code points), as a utf8mb4
 * VARCHAR counts; a string no longer in UTF-16 units than the limit fits without counting.
 */
export function fitsColumn(field: PspValueField, value: string): boolean {
  const max = PSP_VALUE_LENGTH_MAX[field];
  return value.length <= max || Array.from(value).length <= max;
}
