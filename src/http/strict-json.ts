/**
 * JSON bodies whose objects name a key twice are refused rather than read. RFC 8259 leaves
 * their meaning open: JSON.parse keeps the last value, other parsers keep the first, so the
 * sender and Settle could each act on a different amount or event type. A money-moving request
 * that two readers could read two ways is not accepted.
 */

/** A key sent twice in one object, and its path from the top (`orders[1].amount`). */
export type DuplicateKey = Readonly<{ key: string; field: string }>;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;

type Frame =
  | { kind: 'object'; path: string; keys: Set<string>; expectingKey: boolean; lastKey: string }
  | { kind: 'array'; path: string; index: number };

/**
 * Finds the first object key sent twice in `text`, which must already be valid JSON (parse it
 * first: this scan trusts its structure). Keys are compared as decoded, so `"a"` and `"\u0061"`
 * are the same key. One pass over the text, no recursion: nesting depth costs a frame each.
 */
export function firstDuplicateKey(text: string): DuplicateKey | undefined {
  const stack: Frame[] = [];
  const childPath = (): string => {
    const top = stack[stack.length - 1];
    if (top === undefined) return '';
    return top.kind === 'object' ? fieldPath(top.path, top.lastKey) : `${top.path}[${top.index}]`;
  };
  for (let i = 0; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code === QUOTE) {
      const end = endOfString(text, i);
      const top = stack[stack.length - 1];
      if (top?.kind === 'object' && top.expectingKey) {
        // Decoded only when escaped: most keys are plain text between their quotes.
        const raw = text.slice(i + 1, end);
        const key = raw.includes('\\') ? (JSON.parse(`"${raw}"`) as string) : raw;
        if (top.keys.has(key)) return { key, field: fieldPath(top.path, key) };
        top.keys.add(key);
        top.lastKey = key;
        top.expectingKey = false;
      }
      i = end;
    } else if (code === OPEN_BRACE) {
      stack.push({
        kind: 'object',
        path: childPath(),
        keys: new Set(),
        expectingKey: true,
        lastKey: '',
      });
    } else if (code === OPEN_BRACKET) {
      stack.push({ kind: 'array', path: childPath(), index: 0 });
    } else if (code === CLOSE_BRACE || code === CLOSE_BRACKET) {
      stack.pop();
    } else if (code === COMMA) {
      const top = stack[stack.length - 1];
      if (top?.kind === 'object') top.expectingKey = true;
      else if (top?.kind === 'array') top.index += 1;
    }
  }
  return undefined;
}

function fieldPath(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

/** The index of the quote that closes the string opened at `start`. */
function endOfString(text: string, start: number): number {
  for (let i = start + 1; i < text.length; i += 1) {
    const code = text.charCodeAt(i);
    if (code === BACKSLASH) i += 1;
    else if (code === QUOTE) return i;
  }
  return text.length - 1;
}
