/**
 * Goal: the bench's profile summary (`npm run bench -- --profile`, not run by CI) says where the
 * time went: self time by area, idle left out, and the time inside socket writes charged to the
 * package or src/ function that wrote, through Node's internals. Method: a hand-built V8 CPU
 * profile with known sample times.
 */
import { describe, expect, it } from 'vitest';
import { summarizeProfile } from '../../bench/profile.js';

const frame = (id: number, functionName: string, url: string, children: number[] = []) => ({
  id,
  callFrame: { functionName, url, lineNumber: 0 },
  children,
});

// root ─┬─ (idle)
//       ├─ query (mysql2) ─ write (node:net) ─ writeBuffer (native)
//       ├─ publish (src/payments) ─ _send (@nats-io) ─ writev (native)
//       ├─ flush (node:internal/streams) ─ writeBuffer (native)      no package or src/ caller
//       └─ transitionStatements (src/storage/repositories)
const profile = {
  nodes: [
    frame(1, '(root)', '', [2, 3, 6, 9, 11]),
    frame(2, '(idle)', ''),
    frame(3, 'query', 'file:///app/node_modules/mysql2/lib/connection.js', [4]),
    frame(4, 'write', 'node:net', [5]),
    frame(5, 'writeBuffer', ''),
    frame(6, 'publish', 'file:///app/src/payments/payment-events.ts', [7]),
    frame(7, '_send', 'file:///app/node_modules/@nats-io/transport-node/lib/x.js', [8]),
    frame(8, 'writev', ''),
    frame(9, 'flush', 'node:internal/streams/writable', [10]),
    frame(10, 'writeBuffer', ''),
    frame(11, 'transitionStatements', 'file:///app/src/storage/repositories/payment-order.ts'),
  ],
  startTime: 0,
  endTime: 100_000,
  // One sample per entry; timeDeltas[i + 1] is the time of samples[i] (as V8 records them).
  samples: [2, 5, 5, 8, 10, 11, 2],
  timeDeltas: [0, 50_000, 4_000, 4_000, 2_000, 1_000, 9_000, 30_000],
};

describe('bench profile summary', () => {
  it('charges socket writes to the package or src/ function that wrote, idle left out', () => {
    const summary = summarizeProfile(profile);
    // 4 + 4 + 2 + 1 + 9 ms busy; the two idle samples (50 and 30 ms) are not.
    expect(summary.busyMs).toBe(20);
    expect(summary.writesMs).toBe(11);
    expect(summary.writes).toEqual([
      { caller: 'mysql2 query', ms: 8 },
      { caller: '@nats-io/transport-node _send', ms: 2 },
      { caller: 'node (no package or src/ caller)', ms: 1 },
    ]);
    expect(summary.areas.find((area) => area.area === 'src/storage/repositories')?.ms).toBe(9);
  });
});
