/**
 * Summarises a V8 CPU profile (`node --cpu-prof` output) into where the CPU went: self time per
 * area (a package in node_modules, a folder of src/, Node's internals, the garbage collector)
 * and the hottest functions. Idle time is left out of the percentages.
 */
import { readFileSync } from 'node:fs';

type ProfileNode = {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
};
type CpuProfile = {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
};

export type ProfileSummary = Readonly<{
  busyMs: number;
  areas: Array<{ area: string; ms: number; share: number }>;
  /** Self time of Node internals and natives charged to the nearest package or src/ caller. */
  callers: Array<{ area: string; ms: number; share: number }>;
  functions: Array<{ name: string; ms: number; share: number }>;
  /**
   * Time inside socket writes (libuv's try-write from the main thread), by the package or src/
   * function that wrote. On loopback a write runs the receiver's side of TCP and wakes it; when
   * the machine is busy, the woken process often runs on this vCPU first, and the writer's
   * sample stays in the write meanwhile. So this is mostly time waiting for a CPU, not CPU.
   */
  writesMs: number;
  writes: Array<{ caller: string; ms: number }>;
}>;

/** The natives through which Node writes to a socket (stream_base's `writeBuffer` and kin). */
const SOCKET_WRITES: ReadonlySet<string> = new Set([
  'writeBuffer',
  'writev',
  'writeUtf8String',
  'writeLatin1String',
  'writeAsciiString',
  'writeUcs2String',
]);

export function areaOf(url: string, functionName: string): string {
  if (url === '') {
    if (functionName === '(garbage collector)') return 'GC';
    if (functionName === '(idle)') return 'idle';
    if (functionName === '(program)') return 'V8/native (program)';
    return `native ${functionName}`.slice(0, 40);
  }
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (modules !== null) return modules[1] ?? 'node_modules';
  if (url.startsWith('node:')) {
    // node:internal/streams/writable → node streams; node:net → node net
    const parts = url.replace(/^node:(internal\/)?/, '').split('/');
    return `node ${parts.length > 1 ? parts[0] : (parts[0] ?? '').replace(/\.js$/, '')}`;
  }
  const src = /\/src\/(.+)\/[^/]+$/.exec(url);
  if (src !== null) return `src/${src[1]}`;
  const srcFile = /\/src\/([^/]+)$/.exec(url);
  if (srcFile !== null) return `src/${srcFile[1]}`;
  return url.replace(/^.*\//, '');
}

export function summarizeProfile(source: string | object, topN = 15): ProfileSummary {
  const profile = (
    typeof source === 'string' ? JSON.parse(readFileSync(source, 'utf8')) : source
  ) as CpuProfile;
  const selfUs = new Map<number, number>();
  if (profile.samples !== undefined && profile.timeDeltas !== undefined) {
    for (let i = 0; i < profile.samples.length; i += 1) {
      const id = profile.samples[i] ?? 0;
      selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
    }
  }
  const parent = new Map<number, ProfileNode>();
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  for (const node of profile.nodes) {
    for (const child of node.children ?? []) parent.set(child, node);
  }
  const isOwnCode = (area: string) => !area.startsWith('node ') && !area.startsWith('native ');
  const callerArea = (node: ProfileNode): string => {
    let current: ProfileNode | undefined = node;
    for (let depth = 0; current !== undefined && depth < 200; depth += 1) {
      const area = areaOf(current.callFrame.url, current.callFrame.functionName);
      if (isOwnCode(area) && current.callFrame.url !== '') return area;
      current = parent.get(current.id);
    }
    return areaOf(node.callFrame.url, node.callFrame.functionName);
  };
  const areas = new Map<string, number>();
  const callers = new Map<string, number>();
  const functions = new Map<string, number>();
  const writes = new Map<string, number>();
  let writesUs = 0;
  const writerOf = (node: ProfileNode): string => {
    let current = parent.get(node.id);
    for (let depth = 0; current !== undefined && depth < 200; depth += 1) {
      const area = areaOf(current.callFrame.url, current.callFrame.functionName);
      if (isOwnCode(area) && current.callFrame.url !== '') {
        return `${area} ${current.callFrame.functionName || '(anonymous)'}`;
      }
      current = parent.get(current.id);
    }
    return 'node (no package or src/ caller)';
  };
  let busyUs = 0;
  for (const node of profile.nodes) {
    const us = selfUs.get(node.id) ?? 0;
    if (us <= 0) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const area = areaOf(url, functionName);
    if (area === 'idle') continue;
    busyUs += us;
    areas.set(area, (areas.get(area) ?? 0) + us);
    const caller = callerArea(byId.get(node.id) ?? node);
    callers.set(caller, (callers.get(caller) ?? 0) + us);
    const name = `${functionName || '(anonymous)'} ${url.replace(/^.*\/(node_modules|src)\//, '$1/')}:${lineNumber + 1}`;
    functions.set(name, (functions.get(name) ?? 0) + us);
    if (url === '' && SOCKET_WRITES.has(functionName)) {
      writesUs += us;
      const writer = writerOf(node);
      writes.set(writer, (writes.get(writer) ?? 0) + us);
    }
  }
  const top = (map: Map<string, number>) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, topN)
      .map(([key, us]) => ({ key, ms: us / 1000, share: busyUs === 0 ? 0 : us / busyUs }));
  return {
    busyMs: busyUs / 1000,
    areas: top(areas).map(({ key, ms, share }) => ({ area: key, ms, share })),
    callers: top(callers).map(({ key, ms, share }) => ({ area: key, ms, share })),
    functions: top(functions).map(({ key, ms, share }) => ({ name: key, ms, share })),
    writesMs: writesUs / 1000,
    writes: top(writes).map(({ key, ms }) => ({ caller: key, ms })),
  };
}
