/**
 * Goal: a GrpcServer outlives its process running out of file descriptors. Connections past the
 * limit are shed and those it has go on; an accept failure reported on a listener ('error' on
 * the net.Server, which with no handler kills the process) is counted, logged at most once a
 * second with a count of those left out, and the listener keeps serving.
 * Method: a child process (accept-errors-child.ts, under tsx) runs the server under `ulimit -n
 * 128`; the test opens raw HTTP/2 connections until one is not taken, then closes them and calls
 * grpc.health.v1.Health/Check. For reported failures the child hands its listeners 10,000 EMFILE
 * accept failures where libuv would (Node 20 on Linux reports none of its own; see server.ts).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type * as http2 from 'node:http2';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { afterEach, describe, expect, it } from 'vitest';
import { ACCEPT_FAILED_MESSAGE } from '../../src/grpc/server.js';
import { openRawConnection, waitFor } from './harness.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/**
 * Low enough to run out after some 90 connections, high enough for node and tsx to start: Node's
 * ESM loader reads a module's imports at once, and at 64 one CI run ran out while loading zod's
 * locales, before the server listened.
 */
const FILE_DESCRIPTORS_MAX = 128;
/** More connections than the limit allows, so the test ends even if none is refused. */
const CONNECTIONS_TRIED_MAX = FILE_DESCRIPTORS_MAX;

type Message = Readonly<{ type?: string; msg?: string; [key: string]: unknown }>;

/** The child, what it printed so far, and a way to wait for one of its messages. */
type Child = Readonly<{
  process: ChildProcessWithoutNullStreams;
  messages: Message[];
  stderr: () => string;
  next: (type: string, timeoutMs?: number) => Promise<Message>;
  ask: (command: string, answer: string) => Promise<Message>;
}>;

let child: Child | undefined;

afterEach(() => {
  child?.process.kill('SIGKILL');
  child = undefined;
});

function startChild(): Child {
  const childProcess = spawn(
    'bash',
    [
      '-c',
      `ulimit -n ${FILE_DESCRIPTORS_MAX} && exec "$0" --import tsx test/grpc/accept-errors-child.ts`,
      process.execPath,
    ],
    { cwd: ROOT, stdio: 'pipe' },
  );
  const messages: Message[] = [];
  let stderr = '';
  childProcess.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  createInterface({ input: childProcess.stdout }).on('line', (line) => {
    try {
      messages.push(JSON.parse(line) as Message);
    } catch {
      messages.push({ type: 'text', text: line });
    }
  });
  const next = async (type: string, timeoutMs = 10_000): Promise<Message> => {
    const seen = messages.filter((message) => message.type === type).length;
    await waitFor(
      () =>
        messages.filter((message) => message.type === type).length > seen ||
        childProcess.exitCode !== null ||
        childProcess.signalCode !== null,
      `the child's "${type}"`,
      timeoutMs,
    );
    const found = messages.filter((message) => message.type === type)[seen];
    if (found === undefined) {
      throw new Error(`the child exited (${childProcess.exitCode}) before "${type}": ${stderr}`);
    }
    return found;
  };
  return {
    process: childProcess,
    messages,
    stderr: () => stderr,
    next,
    ask: async (command, answer) => {
      const reply = next(answer);
      childProcess.stdin.write(`${command}\n`);
      return await reply;
    },
  };
}

/** Starts the child and resolves with its port, waiting for `listening` on an empty stdout. */
async function listeningChild(): Promise<{ running: Child; port: number }> {
  const running = startChild();
  child = running;
  const listening = await running.next('listening', 20_000);
  return { running, port: listening.port as number };
}

function expectAlive(running: Child): void {
  expect(
    { exitCode: running.process.exitCode, signal: running.process.signalCode },
    running.stderr(),
  ).toEqual({ exitCode: null, signal: null });
}

type HealthClient = grpc.Client & {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { status: string }) => void,
  ): grpc.ClientUnaryCall;
};

/** grpc.health.v1.Health/Check for the whole server, on a channel of its own. */
function healthCheck(port: number): Promise<string> {
  const definition = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  const client = new loaded.grpc.health.v1.Health(
    `127.0.0.1:${port}`,
    grpc.credentials.createInsecure(),
    { 'grpc.use_local_subchannel_pool': 1 },
  ) as unknown as HealthClient;
  return new Promise<string>((resolve, reject) => {
    client.Check({ service: '' }, { deadline: Date.now() + 5_000 }, (error, response) => {
      client.close();
      if (error) reject(error);
      else resolve(response?.status ?? 'UNKNOWN');
    });
  });
}

describe('a gRPC server out of file descriptors', () => {
  it('sheds the connections past the limit, stays up, and serves once they close', async () => {
    const { running, port } = await listeningChild();
    const sessions: http2.ClientHttp2Session[] = [];
    try {
      let turnedAway: boolean | 'no answer' | undefined;
      while (sessions.length < CONNECTIONS_TRIED_MAX) {
        const opened = openRawConnection(port);
        sessions.push(opened.session);
        const accepted = await opened.accepted;
        if (accepted !== true) {
          turnedAway = accepted;
          break;
        }
      }
      // Closed at once by libuv's shedding; 'no answer' would mean it was left waiting.
      expect(turnedAway).toBe(false);
      expect(sessions.length).toBeGreaterThan(10);
      expect(sessions.length).toBeLessThan(FILE_DESCRIPTORS_MAX);
      expectAlive(running);
      const full = await running.ask('stats', 'stats');
      expect(full.open).toBe(sessions.length - 1);

      for (const session of sessions.splice(0)) session.destroy();
      await expect
        .poll(async () => (await running.ask('stats', 'stats')).open, { timeout: 5_000 })
        .toBe(0);
      expect(await healthCheck(port)).toBe('SERVING');
      expectAlive(running);
    } finally {
      for (const session of sessions) session.destroy();
    }
  });

  it('counts each reported accept failure, logs one line a second, and keeps serving', async () => {
    const { running, port } = await listeningChild();
    const failures = 10_000;
    expect((await running.ask(`fail-accepts ${failures}`, 'failed-accepts')).listeners).toBe(1);
    expectAlive(running);
    expect((await running.ask('stats', 'stats')).acceptFailed).toBe(failures);
    expect(await healthCheck(port)).toBe('SERVING');

    // The first failure is logged at once; the rest of that second only counted.
    const logged = () => running.messages.filter((line) => line.msg === ACCEPT_FAILED_MESSAGE);
    expect(logged()).toHaveLength(1);
    expect(logged()[0]).toMatchObject({
      level: 'warn',
      err: { code: 'EMFILE', syscall: 'accept' },
    });
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    await running.ask('fail-accepts 1', 'failed-accepts');
    expect(logged()).toHaveLength(2);
    expect(logged()[1]).toMatchObject({ leftOut: failures - 1 });
    expect((await running.ask('stats', 'stats')).acceptFailed).toBe(failures + 1);
    expect(await healthCheck(port)).toBe('SERVING');
    expectAlive(running);
  });
});
