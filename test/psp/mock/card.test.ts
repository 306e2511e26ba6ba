/**
 * Goal: card numbers are validated as the hosted page promises (12-19 digits, Luhn) and the test
 * cards have fixed outcomes whatever the success rate.
 * Method: pure unit tests of parseCardNumber and decideCard with a fixed random number.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../../src/domain/errors.js';
import { passesLuhn } from '../../../src/domain/luhn.js';
import { decideCard, parseCardNumber, TEST_CARD } from '../../../src/psp/mock/card.js';

describe('parseCardNumber', () => {
  it('accepts valid numbers and drops spaces and dashes', () => {
    expect(parseCardNumber('4242 4242 4242 4242')).toBe(TEST_CARD.success);
    expect(parseCardNumber('4000-0000-0000-0002')).toBe(TEST_CARD.declined);
    expect(parseCardNumber('378282246310005')).toBe('378282246310005');
  });

  it.each([
    '',
    '4242',
    '4242424242424241',
    '42424242424242424242',
    '4242x242424242424',
    '٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢',
  ])('rejects %j naming card_number', (input) => {
    expect(() => parseCardNumber(input)).toThrow(InvalidArgumentError);
    expect(() => parseCardNumber(input)).toThrow(/^card_number: /);
  });

  it('computes Luhn', () => {
    expect(passesLuhn('79927398713')).toBe(true);
    expect(passesLuhn('79927398710')).toBe(false);
  });
});

describe('decideCard', () => {
  it('always approves 4242… and always declines 4000…0002', () => {
    expect(decideCard(TEST_CARD.success, 0, 0.99)).toEqual({ approved: true });
    expect(decideCard(TEST_CARD.declined, 1, 0)).toEqual({
      approved: false,
      declineCode: 'card_declined',
    });
  });

  it('approves other cards with probability successRate', () => {
    expect(decideCard('5555555555554444', 0.5, 0.49)).toEqual({ approved: true });
    expect(decideCard('5555555555554444', 0.5, 0.5).approved).toBe(false);
    expect(decideCard('5555555555554444', 0, 0).approved).toBe(false);
    expect(decideCard('5555555555554444', 1, 0.999).approved).toBe(true);
  });
});
