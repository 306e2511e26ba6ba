/**
 * Identifiers: a prefix naming the kind and 26 characters of a ULID (48 bits of milliseconds and
 * 80 random bits, Crockford base32), so ids sort by creation time and are safe to expose.
 */
import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

export const ID_PREFIX = {
  payment: 'pay_',
  order: 'ord_',
  ledgerTransaction: 'ltx_',
  reconciliationRun: 'rcn_',
} as const;
export type IdKind = keyof typeof ID_PREFIX;

/** A ULID's 26 characters: Crockford base32, which leaves out I, L, O and U (see ALPHABET). */
const ULID_CHARS = '[0-9A-HJKMNP-TV-Z]{26}';
export const PAYMENT_ID_PATTERN = new RegExp(`^${ID_PREFIX.payment}${ULID_CHARS}$`);
/** A payment id to show in a message about a malformed one. */
export const PAYMENT_ID_EXAMPLE = 'pay_01JD2Q7Z8X9Y0A1B2C3D4E5F6G';
export const ORDER_ID_PATTERN = new RegExp(`^${ID_PREFIX.order}${ULID_CHARS}$`);
/** An order id to show in a message about a malformed one. */
export const ORDER_ID_EXAMPLE = 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G';
/** The length of every order id, and the size of the columns that hold one (CHAR(30)). */
export const ORDER_ID_LENGTH = ID_PREFIX.order.length + 26;
/** Buyer and seller ids: chosen by the caller, so only a safe shape is asked for. */
export const PARTY_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$/;

function encodeTime(nowMs: number): string {
  let time = '';
  let ms = nowMs;
  for (let i = 0; i < 10; i += 1) {
    time = ALPHABET[ms % 32] + time;
    ms = Math.floor(ms / 32);
  }
  return time;
}

/**
 * Random bytes for 256 ids at a time: one call into the CSPRNG per 256 ids instead of one each
 * (a call per id was ~2 % of Settle's CPU at full load). Each byte gives one character (its low
 * 5 bits, uniform since 256 is a multiple of 32); a byte is never used twice.
 */
const RANDOM_POOL = Buffer.alloc(16 * 256);
let randomOffset = RANDOM_POOL.length;

export function ulid(nowMs: number = Date.now()): string {
  const time = encodeTime(nowMs);
  if (randomOffset + 16 > RANDOM_POOL.length) {
    randomFillSync(RANDOM_POOL);
    randomOffset = 0;
  }
  let random = '';
  for (let i = 0; i < 16; i += 1) random += ALPHABET[(RANDOM_POOL[randomOffset + i] ?? 0) % 32];
  randomOffset += 16;
  return time + random;
}

export function newId(kind: IdKind, nowMs?: number): string {
  return ID_PREFIX[kind] + ulid(nowMs);
}

/**
 * The smallest id of `kind` created at `ms`: ids sort by creation time, so `id >= idAt(kind, t)`
 * selects what was created at or after t, on the primary key.
 */
export function idAt(kind: IdKind, ms: number): string {
  return ID_PREFIX[kind] + encodeTime(Math.max(0, Math.floor(ms))) + '0'.repeat(16);
}
