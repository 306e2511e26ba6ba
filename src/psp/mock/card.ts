/**
 * Card numbers on the hosted page: validation (12-19 digits, Luhn) and the test cards whose
 * outcome is fixed. Everything here is pure.
 */
import { InvalidArgumentError } from '../../domain/errors.js';
import { passesLuhn } from '../../domain/luhn.js';

/** Test cards with a fixed outcome, as PSPs document them. */
export const TEST_CARD = {
  /** Always succeeds. */
  success: '4242424242424242',
  /** Always declines with `card_declined`. */
  declined: '4000000000000002',
} as const;

export const DECLINE_CODE = { cardDeclined: 'card_declined' } as const;

const CARD_DIGITS = /^\d{12,19}$/;

/**
 * Normalises a card number as typed by a buyer (spaces and dashes are dropped) and validates it.
 * Throws InvalidArgumentError naming `card_number`.
 */
export function parseCardNumber(input: string): string {
  if (input.length > 64) throw new InvalidArgumentError('card_number', 'is too long');
  const digits = input.replace(/[\s-]/g, '');
  if (!CARD_DIGITS.test(digits)) {
    throw new InvalidArgumentError('card_number', 'must be 12 to 19 digits');
  }
  if (!passesLuhn(digits)) {
    throw new InvalidArgumentError('card_number', 'is not a valid card number (Luhn check failed)');
  }
  return digits;
}

export type CardDecision = { approved: true } | { approved: false; declineCode: string };

/**
 * Decides a charge: the test cards have a fixed outcome, any other valid card succeeds with
 * probability successRate. `random` is a number in [0, 1), passed in so tests can fix it.
 */
export function decideCard(cardNumber: string, successRate: number, random: number): CardDecision {
  if (cardNumber === TEST_CARD.success) return { approved: true };
  if (cardNumber === TEST_CARD.declined) {
    return { approved: false, declineCode: DECLINE_CODE.cardDeclined };
  }
  return random < successRate
    ? { approved: true }
    : { approved: false, declineCode: DECLINE_CODE.cardDeclined };
}
