/**
 * Goal: `firstDuplicateKey` finds a key sent twice in one object at any depth, compares keys as
 * decoded, and names its path; keys repeated across different objects, and key-like text
 * inside strings, are not duplicates. Method: the function on literal JSON texts.
 */
import { describe, expect, it } from 'vitest';
import { firstDuplicateKey } from '../../src/http/strict-json.js';

describe('firstDuplicateKey', () => {
  it.each<[string, string, string | undefined]>([
    ['no duplicate', '{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}', undefined],
    ['a top-level key twice', '{"a":1,"b":2,"a":3}', 'a'],
    ['a key twice in a nested object', '{"a":{"x":1,"x":2}}', 'a.x'],
    ['a key twice in the second element of an array', '{"o":[{"k":1},{"k":1,"k":2}]}', 'o[1].k'],
    ['an escaped spelling of the same key', '{"amount":1,"\\u0061mount":2}', 'amount'],
    [
      'key-like text inside a string value',
      '{"a":"\\"a\\":1,","b":"{\\"a\\":2,\\"a\\":3}"}',
      undefined,
    ],
    ['the same key in sibling objects of a top-level array', '[{"a":1},{"a":2}]', undefined],
    ['an object inside nested arrays', '[[1,{"z":1}],[{"z":1,"y":[],"z":2}]]', '[1][0].z'],
    ['an empty key twice', '{"":1,"":2}', ''],
    ['a key with an escaped quote, twice', '{"a\\"b":1,"a\\u0022b":2}', 'a"b'],
    ['whitespace around the structure', ' { "a" : 1 ,\n "a" : 2 } ', 'a'],
  ])('%s', (_name, text, field) => {
    JSON.parse(text); // every case is valid JSON: the scan trusts its structure
    expect(firstDuplicateKey(text)?.field).toBe(field);
  });
});
