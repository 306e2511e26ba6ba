/**
 * Goal: the bench reads how a process's event-loop thread was scheduled from /proc: its time on
 * a CPU grows by the CPU it burns, the counters only grow, and every sleep counts as a wake-up.
 * The sum over a process's threads counts at least what its main thread does. Method: this test's
 * own process, before and after ~60 ms of busy work on its main thread, and around five sleeps
 * of its main thread (Atomics.wait: a timer would not sleep at all on a machine so loaded that
 * the thread waits for a CPU past the timer's time, as a CI run once showed). Its read and write system calls count each one it makes (a file
 * written and read byte by byte).
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/** Puts the main thread to sleep `times` times for 5 ms each: a sleep and a wake-up each. */
function sleepMainThread(times: number): void {
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < times; i += 1) Atomics.wait(cell, 0, 0, 5);
}
import { sampleMainThread, sampleSwitches, sampleSyscalls } from '../../bench/proc.js';

describe('sampleMainThread', () => {
  it('counts the CPU time the main thread burns', () => {
    const before = sampleMainThread(process.pid);
    expect(before).toBeDefined();
    const cpuBefore = process.cpuUsage();
    const until = Date.now() + 60;
    let spins = 0;
    while (Date.now() < until) spins += 1;
    const burnedMs = (process.cpuUsage(cpuBefore).user + process.cpuUsage(cpuBefore).system) / 1000;
    const after = sampleMainThread(process.pid);
    expect(spins).toBeGreaterThan(0);
    if (before === undefined || after === undefined) throw new Error('no schedstat');
    // schedstat counts in ns what cpuUsage counts in µs (all threads, so at least as much).
    expect(after.runMs - before.runMs).toBeGreaterThan(burnedMs * 0.5);
    expect(after.runMs - before.runMs).toBeLessThan(burnedMs + 50);
    expect(after.waitMs).toBeGreaterThanOrEqual(before.waitMs);
    expect(after.preemptions).toBeGreaterThanOrEqual(before.preemptions);
  });

  it('counts the times the main thread slept and was woken', () => {
    const before = sampleMainThread(process.pid);
    sleepMainThread(5);
    const after = sampleMainThread(process.pid);
    if (before === undefined || after === undefined) throw new Error('no schedstat');
    // Each wait sleeps on a futex nobody wakes until its 5 ms are over.
    expect(after.wakeUps - before.wakeUps).toBeGreaterThanOrEqual(5);
  });

  it('answers undefined for a process that is gone', () => {
    expect(sampleMainThread(2 ** 22 + 12_345)).toBeUndefined();
  });
});

describe('sampleSwitches', () => {
  it('sums the sleeps of every thread of a process', () => {
    const before = sampleSwitches(process.pid);
    sleepMainThread(5);
    // The main thread first: its count only grows, so the sum read after it covers it.
    const main = sampleMainThread(process.pid);
    const after = sampleSwitches(process.pid);
    if (before === undefined || after === undefined) throw new Error('no /proc/<pid>/task');
    expect(after.wakeUps - before.wakeUps).toBeGreaterThanOrEqual(5);
    expect(after.preemptions).toBeGreaterThanOrEqual(before.preemptions);
    expect(after.wakeUps).toBeGreaterThanOrEqual(main?.wakeUps ?? Infinity);
  });

  it('answers undefined for a process that is gone', () => {
    expect(sampleSwitches(2 ** 22 + 12_345)).toBeUndefined();
  });
});

describe('sampleSyscalls', () => {
  it('counts the read and write system calls the process makes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'settle-syscalls-'));
    try {
      const file = join(dir, 'f');
      const before = sampleSyscalls(process.pid);
      const fd = openSync(file, 'w+');
      for (let i = 0; i < 20; i += 1) writeSync(fd, 'x');
      const buffer = Buffer.alloc(1);
      for (let i = 0; i < 30; i += 1) readSync(fd, buffer, 0, 1, i % 20);
      closeSync(fd);
      const after = sampleSyscalls(process.pid);
      if (before === undefined || after === undefined) throw new Error('no /proc/<pid>/io');
      // Other threads (V8's, libuv's) may add a few of their own, never fewer.
      expect(after.writes - before.writes).toBeGreaterThanOrEqual(20);
      expect(after.reads - before.reads).toBeGreaterThanOrEqual(30);
      expect(after.writes - before.writes).toBeLessThan(200);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('answers undefined for a process that is gone', () => {
    expect(sampleSyscalls(2 ** 22 + 12_345)).toBeUndefined();
  });
});
