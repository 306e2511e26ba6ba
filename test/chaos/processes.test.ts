/**
 * Goal: ManagedProcess, which runs the chaos demo's, the crash tests' and the bench's children,
 * starts a child with node's own flags before `--import tsx`, counts its output lines, and stops it
 * gracefully: SIGTERM, then SIGKILL only if the child outlives the grace period.
 * Method: real `node --import tsx` children running a small script written to a temporary folder;
 * the script prints its ready line and node's flags, then exits on SIGTERM or, told to, ignores it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ManagedProcess } from '../../src/chaos/processes.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(path.join(tmpdir(), 'settle-processes-'));
const script = path.join(dir, 'child.ts');
writeFileSync(
  script,
  [
    "const ignoreTerm: boolean = process.env['IGNORE_TERM'] === 'true';",
    "process.on('SIGTERM', () => {",
    "  if (ignoreTerm) console.log('SIGTERM ignored');",
    '  else process.exit(0);',
    '});',
    "console.log('flags: ' + process.execArgv.filter((flag) => flag.startsWith('--max')).join(' '));",
    "console.log('child ready');",
    'setInterval(() => undefined, 1_000);',
    '',
  ].join('\n'),
);

const children: ManagedProcess[] = [];

function child(env: Record<string, string> = {}): ManagedProcess {
  const managed = new ManagedProcess({
    name: 'child',
    script,
    nodeArgs: ['--max-old-space-size=64'],
    cwd: REPO_ROOT,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env },
    readyPattern: /^child ready$/,
  });
  children.push(managed);
  return managed;
}

afterEach(async () => {
  for (const managed of children.splice(0)) await managed.dispose();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('ManagedProcess', () => {
  it('passes node flags before --import tsx and counts the lines the child wrote', async () => {
    const managed = child();
    await managed.start(20_000);
    expect(managed.running).toBe(true);
    expect(managed.tail()).toContain('flags: --max-old-space-size=64');
    expect(managed.lines).toBe(2);
  });

  it('stop(): a child that exits on SIGTERM ends gracefully, without SIGKILL', async () => {
    const managed = child();
    await managed.start(20_000);
    const started = Date.now();
    const exit = await managed.stop(10_000);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(managed.running).toBe(false);
  });

  it('stop(): a child that ignores SIGTERM is killed once the grace period is over', async () => {
    const managed = child({ IGNORE_TERM: 'true' });
    await managed.start(20_000);
    const started = Date.now();
    const exit = await managed.stop(1_000);
    expect(exit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(managed.tail()).toContain('SIGTERM ignored');
  });

  it('stop() on a child that is not running answers its last exit and sends nothing', async () => {
    const managed = child();
    expect(await managed.stop(1_000)).toBeUndefined();
    await managed.start(20_000);
    await managed.kill();
    expect(await managed.stop(1_000)).toEqual({ code: null, signal: 'SIGKILL' });
  });
});
