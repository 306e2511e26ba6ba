/**
 * Goal: the actor runtime serialises one actor's messages, runs different actors in parallel,
 * bounds its mailboxes and its number of live actors, and passivates idle actors. Method: real
 * Mailbox/ActorRegistry with handlers that record overlap; no database needed.
 */
import { describe, expect, it } from 'vitest';
import { Mailbox } from '../../../src/actors/runtime/mailbox.js';
import { ActorRegistry } from '../../../src/actors/runtime/registry.js';
import { ResourceExhaustedError } from '../../../src/domain/errors.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('Mailbox', () => {
  it('handles one message at a time, in order', async () => {
    let active = 0;
    let maxActive = 0;
    const seen: number[] = [];
    const mailbox = new Mailbox<number, number>(
      async (n) => {
        active += 1;
        maxActive = Math.max(maxActive, active);
        await sleep(2);
        seen.push(n);
        active -= 1;
        return n * 2;
      },
      { capacityMax: 100, name: 'test' },
    );
    const results = await Promise.all([1, 2, 3, 4, 5].map((n) => mailbox.post(n)));
    expect(results).toEqual([2, 4, 6, 8, 10]);
    expect(seen).toEqual([1, 2, 3, 4, 5]);
    expect(maxActive).toBe(1);
  });

  it('refuses messages beyond its capacity with RESOURCE_EXHAUSTED', async () => {
    const mailbox = new Mailbox<number, void>(() => sleep(20), { capacityMax: 2, name: 'small' });
    const accepted = [mailbox.post(1), mailbox.post(2)];
    await expect(mailbox.post(3)).rejects.toBeInstanceOf(ResourceExhaustedError);
    await Promise.all(accepted);
    await expect(mailbox.post(4)).resolves.toBeUndefined();
  });

  it('fails only the message whose handler throws', async () => {
    const mailbox = new Mailbox<number, number>(
      async (n) => {
        if (n === 2) throw new Error('boom');
        return n;
      },
      { capacityMax: 10, name: 'test' },
    );
    const results = await Promise.allSettled([1, 2, 3].map((n) => mailbox.post(n)));
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
  });
});

describe('ActorRegistry', () => {
  it('runs different actors in parallel and one actor serially', async () => {
    const activeById = new Map<string, number>();
    let overlapSameId = false;
    let activeTotal = 0;
    let maxActiveTotal = 0;
    const registry = new ActorRegistry<string, void>(
      'test',
      (id) => ({
        handle: async () => {
          const active = (activeById.get(id) ?? 0) + 1;
          if (active > 1) overlapSameId = true;
          activeById.set(id, active);
          activeTotal += 1;
          maxActiveTotal = Math.max(maxActiveTotal, activeTotal);
          await sleep(10);
          activeById.set(id, (activeById.get(id) ?? 1) - 1);
          activeTotal -= 1;
        },
      }),
      { mailboxCapacity: 10, idleMsMax: 60_000, actorsMax: 100 },
    );
    await Promise.all(['a', 'b', 'c', 'a', 'b', 'c'].map((id) => registry.send(id, 'x')));
    registry.stop();
    expect(overlapSameId).toBe(false);
    expect(maxActiveTotal).toBe(3);
  });

  it('keeps one live actor per id and passivates idle ones', async () => {
    let created = 0;
    const registry = new ActorRegistry<string, void>(
      'test',
      () => {
        created += 1;
        return { handle: async () => undefined };
      },
      { mailboxCapacity: 10, idleMsMax: 30, actorsMax: 100, sweepMs: 10 },
    );
    await registry.send('a', 'x');
    await registry.send('a', 'y');
    expect(created).toBe(1);
    expect(registry.size).toBe(1);
    const deadline = Date.now() + 2_000;
    while (registry.size > 0 && Date.now() < deadline) await sleep(10);
    expect(registry.size).toBe(0);
    expect(registry.passivated).toBe(1);
    await registry.send('a', 'z');
    expect(created).toBe(2);
    registry.stop();
  });

  it('drops a finished actor once its mailbox is empty, not before, and reloads it for a late message', async () => {
    let created = 0;
    const registry = new ActorRegistry<string, void>(
      'test',
      () => {
        created += 1;
        let finished = false;
        return {
          handle: async (message) => {
            await sleep(5);
            if (message === 'final') finished = true;
          },
          done: () => finished,
        };
      },
      { mailboxCapacity: 10, idleMsMax: 60_000, actorsMax: 100 },
    );
    await registry.send('a', 'x');
    expect(registry.size).toBe(1);
    // The message queued behind the final one still finds the same actor.
    await Promise.all([registry.send('a', 'final'), registry.send('a', 'late but queued')]);
    expect(created).toBe(1);
    expect(registry.size).toBe(0);
    expect(registry.passivated).toBe(1);
    await registry.send('a', 'after');
    expect(created).toBe(2);
    registry.stop();
  });

  it('refuses a new actor when the live-actor bound is reached and none is idle', async () => {
    const registry = new ActorRegistry<string, void>('test', () => ({ handle: () => sleep(50) }), {
      mailboxCapacity: 10,
      idleMsMax: 60_000,
      actorsMax: 2,
    });
    const busy = [registry.send('a', 'x'), registry.send('b', 'x')];
    await expect(registry.send('c', 'x')).rejects.toBeInstanceOf(ResourceExhaustedError);
    await Promise.all(busy);
    // Now a and b are idle: a new actor evicts one of them instead of failing.
    await expect(registry.send('c', 'x')).resolves.toBeUndefined();
    registry.stop();
  });
});
