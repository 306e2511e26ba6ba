/**
 * JSON bodies whose objects name a key twice are refused rather than read. RFC 8259 leaves
 * their meaning open: JSON.parse keeps the last value, other parsers keep the first, so the
 * sender and Settle could each act on a different amount or event type. A money-moving request
 * that two readers could read two ways is not accepted.
 */

/** A key sent twice in one object, and its path from the top (`orders[1].amount`). */
export type DuplicateKey = Readonly<{ key: string; field: string }>;

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
    const char = text[i];
    if (char === '"') {
      const end = endOfString(text, i);
      const top = stack[stack.length - 1];
      if (top?.kind === 'object' && top.expectingKey) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (top.keys.has(key)) return { key, field: fieldPath(top.path, key) };
        top.keys.add(key);
        top.lastKey = key;
        top.expectingKey = false;
      }
      i = end;
    } else if (char === '{') {
      stack.push({
        kind: 'object',
        path: childPath(),
        keys: new Set(),
        expectingKey: true,
        lastKey: '',
      });
    } else if (char === '[') {
      stack.push({ kind: 'array', path: childPath(), index: 0 });
    } else if (char === '}' || char === ']') {
      stack.pop();
    } else if (char === ',') {
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
    const char = text[i];
    if (char === '\\') i += 1;
    else if (char === '"') return i;
  }
  return text.length - 1;
}
