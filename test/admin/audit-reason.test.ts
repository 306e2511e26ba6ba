/**
 * Goal: a reason for an admin action obeys one rule wherever it is given: the panel's form,
 * DiscardDeadLetter's field and ReplayDeadLetter's `x-admin-reason` metadata (optional there).
 * Method: the pure helpers of src/admin/audit.ts.
 */
import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  grpcAdminActor,
  grpcAdminReason,
  REASON_CHARS,
  requireReason,
} from '../../src/admin/audit.js';
import { InvalidArgumentError } from '../../src/domain/errors.js';

function metadata(values: Record<string, string>): Metadata {
  const result = new Metadata();
  for (const [key, value] of Object.entries(values)) result.set(key, value);
  return result;
}

describe('admin action reasons', () => {
  it(`takes ${REASON_CHARS.min}-${REASON_CHARS.max} characters, trimmed`, () => {
    expect(requireReason('  PSP is back  ')).toBe('PSP is back');
    expect(requireReason('x'.repeat(REASON_CHARS.max))).toHaveLength(REASON_CHARS.max);
    for (const bad of [undefined, '', '   ', 'ok', 'x'.repeat(REASON_CHARS.max + 1)]) {
      expect(() => requireReason(bad)).toThrow(InvalidArgumentError);
    }
  });

  it('reads the gRPC reason from metadata, optional but held to the same rule', () => {
    expect(grpcAdminReason(metadata({}))).toBe('(no reason given over gRPC)');
    expect(grpcAdminReason(metadata({ 'x-admin-reason': encodeURIComponent('INC-7 ✓') }))).toBe(
      'INC-7 ✓',
    );
    expect(() => grpcAdminReason(metadata({ 'x-admin-reason': 'no' }))).toThrow(
      InvalidArgumentError,
    );
  });

  it('names the gRPC actor only when the name is one the panel would accept', () => {
    expect(grpcAdminActor(metadata({ 'x-admin-actor': 'ops-bob' }))).toBe('grpc:ops-bob');
    expect(grpcAdminActor(metadata({ 'x-admin-actor': '<script>' }))).toBe('grpc');
    expect(grpcAdminActor(metadata({}))).toBe('grpc');
  });
});
