/**
 * The Luhn check digit test that every card number passes: the PSP mock refuses a typed card that
 * fails it, and the logger masks only digit runs that pass it (so amounts and timestamps stay).
 */
export function passesLuhn(digits: string): boolean {
  let total = 0;
  for (let i = 0; i < digits.length; i += 1) {
    let digit = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      digit *= 2;
      if (digit > 9) digit -= 9;
    }
    total += digit;
  }
  return total % 10 === 0;
}
