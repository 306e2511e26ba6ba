/**
 * Server-side HTML for the admin panel with escaping by construction: the `html` tag escapes every
 * interpolated value unless it is already SafeHtml (the output of another `html` call), so data
 * from the database, the PSP or a URL can never become markup. Links to outside URLs go through
 * `externalLink`, which only links http(s) URLs.
 */
import type { HttpResponse } from '../http/router.js';

export class SafeHtml {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

type Interpolation =
  | SafeHtml
  | string
  | number
  | bigint
  | boolean
  | null
  | undefined
  | Date
  | readonly Interpolation[];

const ESCAPES: Readonly<Record<string, string>> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
  '`': '&#96;',
};

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (character) => ESCAPES[character] ?? character);
}

function render(value: Interpolation): string {
  if (value instanceof SafeHtml) return value.value;
  if (value === null || value === undefined || value === false) return '';
  if (Array.isArray(value)) return value.map((item: Interpolation) => render(item)).join('');
  if (value instanceof Date) return escapeHtml(formatTime(value));
  return escapeHtml(String(value));
}

/** Tagged template: literal parts are trusted markup, every interpolation is escaped. */
export function html(strings: TemplateStringsArray, ...values: Interpolation[]): SafeHtml {
  let out = strings[0] ?? '';
  for (let i = 0; i < values.length; i += 1) {
    out += render(values[i]) + (strings[i + 1] ?? '');
  }
  return new SafeHtml(out);
}

/** `2025-01-31 12:34:56.789Z`: UTC with milliseconds, as the database stores it. */
export function formatTime(date: Date): string {
  return Number.isNaN(date.getTime()) ? 'invalid date' : date.toISOString().replace('T', ' ');
}

/** A link to an outside URL, or just its text when it is not http(s). */
export function externalLink(url: string | undefined, text?: string): SafeHtml {
  if (url === undefined || url === '') return html``;
  let safe = false;
  try {
    const parsed = new URL(url);
    safe = parsed.protocol === 'http:' || parsed.protocol === 'https:';
  } catch {
    safe = false;
  }
  return safe
    ? html`<a href="${url}" rel="noreferrer noopener" target="_blank">${text ?? url}</a>`
    : html`${text ?? url}`;
}

/** A query string from the defined, non-empty values, for links that keep the filters. */
export function queryString(params: Readonly<Record<string, string | undefined>>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== '') search.set(key, value);
  }
  const text = search.toString();
  return text === '' ? '' : `?${text}`;
}

/** Headers every admin page carries: no caching, no framing, scripts and styles only from us. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  // same-origin, not no-referrer: with no-referrer a form POST carries `Origin: null`.
  'referrer-policy': 'same-origin',
  'cache-control': 'no-store',
};

export function htmlResponse(
  status: number,
  body: SafeHtml,
  headers: Readonly<Record<string, string>> = {},
): HttpResponse {
  return {
    status,
    headers: { 'content-type': 'text/html; charset=utf-8', ...SECURITY_HEADERS, ...headers },
    body: `<!doctype html>\n${body.value}`,
  };
}

export function redirect(
  location: string,
  headers: Readonly<Record<string, string>> = {},
): HttpResponse {
  return { status: 303, headers: { location, 'cache-control': 'no-store', ...headers }, body: '' };
}
