/**
 * The mock's behaviour knobs: success rate, latency and injected faults. The initial values come
 * from the config; SetBehavior patches them at run time (an unset field keeps its value).
 */
import type { Config } from '../../config.js';
import { InvalidArgumentError } from '../../domain/errors.js';
import { parseCardNumber } from './card.js';

/** Bounds of the knobs, so a test driver cannot wedge the mock. */
export const LATENCY_MS_MAX = 60_000;
export const FAIL_NEXT_REGISTRATIONS_MAX = 1_000_000;

export type PspBehavior = Readonly<{
  /** Probability in [0, 1] that a card other than the test cards succeeds. */
  successRate: number;
  /** Added to every merchant API call, in milliseconds. */
  latencyMs: number;
  /** Probability in [0, 1] that a merchant API call fails with UNAVAILABLE. */
  errorRate: number;
  /** Probability in [0, 1] that a merchant API call is held until the client gives up. */
  hangRate: number;
  /** How many of the next RegisterPayment calls fail with UNAVAILABLE. */
  failNextRegistrations: number;
  /** When set, every newly registered payment is paid with this card right away. */
  autoPayCard: string | undefined;
}>;

/** A change to the behaviour; an absent field keeps its value. `autoPayCard: ''` or null switches auto-pay off. */
export type PspBehaviorPatch = Partial<{
  successRate: number;
  latencyMs: number;
  errorRate: number;
  hangRate: number;
  failNextRegistrations: number;
  autoPayCard: string | null;
}>;

export function initialBehavior(config: Config): PspBehavior {
  return Object.freeze({
    successRate: config.PSP_SUCCESS_RATE,
    latencyMs: config.PSP_LATENCY_MS,
    errorRate: config.PSP_ERROR_RATE,
    hangRate: 0,
    failNextRegistrations: 0,
    autoPayCard: undefined,
  });
}

/** Validates a patch and applies it; throws InvalidArgumentError naming the first bad field. */
export function applyBehaviorPatch(current: PspBehavior, patch: PspBehaviorPatch): PspBehavior {
  const next = { ...current };
  if (patch.successRate !== undefined) {
    next.successRate = probability('success_rate', patch.successRate);
  }
  if (patch.errorRate !== undefined) next.errorRate = probability('error_rate', patch.errorRate);
  if (patch.hangRate !== undefined) next.hangRate = probability('hang_rate', patch.hangRate);
  if (patch.latencyMs !== undefined) {
    next.latencyMs = boundedInt('latency_ms', patch.latencyMs, LATENCY_MS_MAX);
  }
  if (patch.failNextRegistrations !== undefined) {
    next.failNextRegistrations = boundedInt(
      'fail_next_registrations',
      patch.failNextRegistrations,
      FAIL_NEXT_REGISTRATIONS_MAX,
    );
  }
  if (patch.autoPayCard !== undefined) {
    next.autoPayCard =
      patch.autoPayCard === null || patch.autoPayCard === ''
        ? undefined
        : autoPayCard(patch.autoPayCard);
  }
  return Object.freeze(next);
}

function autoPayCard(value: string): string {
  try {
    return parseCardNumber(value);
  } catch (error) {
    if (error instanceof InvalidArgumentError) {
      throw new InvalidArgumentError('auto_pay_card', error.message.replace(/^card_number: /, ''));
    }
    throw error;
  }
}

function probability(field: string, value: number): number {
  if (!Number.isFinite(value) || value < 0 || value > 1) {
    throw new InvalidArgumentError(field, 'must be a number in [0, 1]');
  }
  return value;
}

function boundedInt(field: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new InvalidArgumentError(field, `must be an integer in [0, ${max}]`);
  }
  return value;
}

/**
 * The live behaviour of one mock instance. Reads are snapshots; the registration-failure counter
 * is taken one at a time (the event loop makes the decrement atomic).
 */
export class BehaviorStore {
  #current: PspBehavior;

  constructor(initial: PspBehavior) {
    this.#current = initial;
  }

  get(): PspBehavior {
    return this.#current;
  }

  /** Applies a patch; throws InvalidArgumentError and changes nothing if any field is bad. */
  patch(patch: PspBehaviorPatch): PspBehavior {
    this.#current = applyBehaviorPatch(this.#current, patch);
    return this.#current;
  }

  /** True (and one fewer left) if this registration is one of the next N that must fail. */
  takeRegistrationFailure(): boolean {
    if (this.#current.failNextRegistrations <= 0) return false;
    this.#current = Object.freeze({
      ...this.#current,
      failNextRegistrations: this.#current.failNextRegistrations - 1,
    });
    return true;
  }
}
