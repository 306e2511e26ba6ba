/**
 * UTC calendar days as "YYYY-MM-DD" strings: the unit of settlement files and of the nightly
 * reconciliation. Pure; no clock is read here (callers pass `now`).
 */

/** A calendar day in UTC, "YYYY-MM-DD". */
export type UtcDay = string;

const DAY = /^(\d{4})-(\d{2})-(\d{2})$/;
const DAY_MS = 86_400_000;

/** True if `value` is a real calendar day ("2024-02-30" is not). */
export function isUtcDay(value: string): boolean {
  const match = DAY.exec(value);
  if (match === null) return false;
  const date = new Date(`${value}T00:00:00.000Z`);
  return !Number.isNaN(date.getTime()) && date.toISOString().slice(0, 10) === value;
}

/** The day that contains `instant`. */
export function utcDayOf(instant: Date): UtcDay {
  return instant.toISOString().slice(0, 10);
}

/** Midnight UTC at the start of `day`. */
export function startOfUtcDay(day: UtcDay): Date {
  return new Date(`${day}T00:00:00.000Z`);
}

/** `day` moved by `days` (negative for earlier days). */
export function addUtcDays(day: UtcDay, days: number): UtcDay {
  return utcDayOf(new Date(startOfUtcDay(day).getTime() + days * DAY_MS));
}

/** `day` at `minutes` after midnight UTC. */
export function utcDayAt(day: UtcDay, minutes: number): Date {
  return new Date(startOfUtcDay(day).getTime() + minutes * 60_000);
}

/**
 * The closed days whose daily job is due at `now`: day D is due once `now` has passed D + 1 at
 * `atMinutes` (UTC). At most `daysMax` days, oldest first, ending with the latest due day.
 */
export function dueUtcDays(now: Date, atMinutes: number, daysMax: number): UtcDay[] {
  const today = utcDayOf(now);
  const latest =
    now.getTime() >= utcDayAt(today, atMinutes).getTime()
      ? addUtcDays(today, -1)
      : addUtcDays(today, -2);
  const days: UtcDay[] = [];
  for (let back = daysMax - 1; back >= 0; back -= 1) days.push(addUtcDays(latest, -back));
  return days;
}
