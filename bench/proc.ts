/**
 * Reads CPU time and memory of processes from /proc (Linux), so the benchmark can say what each
 * process (Settle, the PSP mock, MariaDB, nats-server, the bench itself) cost, and how busy the
 * whole machine was: on a shared machine, CPU that none of those used is somebody else's load.
 */
import { readFileSync, readdirSync } from 'node:fs';

/** Linux reports utime/stime in clock ticks; 100 per second on every mainstream kernel. */
const CLOCK_TICKS_PER_S = 100;

export type ProcSample = Readonly<{ cpuMs: number; rssBytes: number; hwmBytes: number }>;

/** CPU time (user + system) and memory of one process; undefined when it is gone. */
export function sampleProcess(pid: number): ProcSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    return {
      cpuMs: ((utime + stime) * 1000) / CLOCK_TICKS_PER_S,
      rssBytes: kbField(status, 'VmRSS') * 1024,
      hwmBytes: kbField(status, 'VmHWM') * 1024,
    };
  } catch {
    return undefined;
  }
}

export type ThreadSchedule = Readonly<{
  /** Time on a CPU, and time runnable but waiting for one (schedstat), in ms. */
  runMs: number;
  waitMs: number;
  /** Times the scheduler took the CPU away while the thread could still run. */
  preemptions: number;
  /** Times the thread went to sleep (waiting for I/O or a timer) and was woken again. */
  wakeUps: number;
}>;

export type Switches = Readonly<{
  /** Times a thread went to sleep and was woken again (voluntary context switches). */
  wakeUps: number;
  /** Times a thread lost its CPU while it could still run (involuntary context switches). */
  preemptions: number;
}>;

/** The context switches in one thread's /proc status text; undefined when they are missing. */
function switchesOf(status: string): Switches | undefined {
  const sleeps = /^voluntary_ctxt_switches:\s+(\d+)/m.exec(status);
  const preemptions = /^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status);
  if (sleeps === null || preemptions === null) return undefined;
  return { wakeUps: Number(sleeps[1]), preemptions: Number(preemptions[1]) };
}

/**
 * How a process's main thread (the task whose id is the pid: Node's event loop) was scheduled,
 * from /proc/<pid>/task/<pid>/schedstat and status; undefined when the kernel does not keep
 * schedstat or the process is gone.
 */
export function sampleMainThread(pid: number): ThreadSchedule | undefined {
  try {
    const [runNs, waitNs] = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    const switches = switchesOf(readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8'));
    if (runNs === undefined || waitNs === undefined || switches === undefined) return undefined;
    return { runMs: runNs / 1e6, waitMs: waitNs / 1e6, ...switches };
  } catch {
    return undefined;
  }
}

/** Threads of one process read at most (MariaDB runs a few dozen). */
const TASKS_MAX = 1_000;

/**
 * Context switches of every thread of a process, summed (/proc/<pid>/task/<tid>/status);
 * undefined when the process is gone. Threads that ended before the read are not counted.
 */
export function sampleSwitches(pid: number): Switches | undefined {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`).slice(0, TASKS_MAX);
  } catch {
    return undefined;
  }
  let wakeUps = 0;
  let preemptions = 0;
  for (const task of tasks) {
    try {
      const switches = switchesOf(readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8'));
      wakeUps += switches?.wakeUps ?? 0;
      preemptions += switches?.preemptions ?? 0;
    } catch {
      // The thread ended while we looked.
    }
  }
  return { wakeUps, preemptions };
}

export type Syscalls = Readonly<{
  /** read-family system calls (read, readv, pread): a Node process reads a socket once a wake-up. */
  reads: number;
  /** write-family system calls (write, writev, pwrite): about one per packet a Node process sends. */
  writes: number;
}>;

/**
 * The read and write system calls a process made, all its threads, including those that ended
 * (/proc/<pid>/io: syscr, syscw); undefined when the process is gone. recv and send do not count,
 * so for MariaDB (which uses them on sockets) this says nothing about its network traffic.
 */
export function sampleSyscalls(pid: number): Syscalls | undefined {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    const reads = /^syscr:\s+(\d+)/m.exec(io);
    const writes = /^syscw:\s+(\d+)/m.exec(io);
    if (reads === null || writes === null) return undefined;
    return { reads: Number(reads[1]), writes: Number(writes[1]) };
  } catch {
    return undefined;
  }
}

function kbField(status: string, name: string): number {
  const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status);
  return match ? Number(match[1]) : 0;
}

/** Pids whose command name (comm) is `name`; at most 16 (only a few are ever expected). */
export function findPids(name: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === name) pids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
    if (pids.length >= 16) break;
  }
  return pids;
}

export type MachineSample = Readonly<{ busyMs: number; totalMs: number }>;

/** CPU time of the whole machine (all cores), busy and total, from /proc/stat. */
export function sampleMachine(): MachineSample {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] =
    values;
  const busy = user + nice + system + irq + softirq + steal;
  const toMs = (ticks: number) => (ticks * 1000) / CLOCK_TICKS_PER_S;
  return { busyMs: toMs(busy), totalMs: toMs(busy + idle + iowait) };
}
