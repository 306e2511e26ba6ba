/**
 * The child process of accept-errors.test.ts: a GrpcServer with the health service on
 * 127.0.0.1:0, its accept failures counted and logged as Settle logs them (at most one line a
 * second). It runs under a low file-descriptor limit set by the test. Protocol, one JSON object a
 * line: it prints {"type":"listening","port"} once bound, and pino's log lines; on stdin it takes
 * "stats" (answers {"type":"stats","open","acceptFailed"}) and "fail-accepts N", which hands each
 * listener N accept failures (EMFILE) the way libuv reports one (harness.ts failAccepts).
 */
import { createInterface } from 'node:readline';
import { createHealth } from '../../src/grpc/health.js';
import { ACCEPT_FAILED_MESSAGE, createGrpcServer, listen } from '../../src/grpc/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { repeatingFailureLog } from '../../src/observability/repeating-failure.js';
import { failAccepts } from './harness.js';

function send(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

const logger = createLogger(
  { level: 'info', name: 'accept-errors-child' },
  { write: (line: string) => process.stdout.write(line) },
);
const warnAcceptFailed = repeatingFailureLog(logger, ACCEPT_FAILED_MESSAGE, { everyMs: 1_000 });
let open = 0;
let acceptFailed = 0;
const server = createGrpcServer({
  maxMessageBytes: 64 * 1024,
  connectionsMax: 1_000,
  observer: {
    open: (now) => (open = now),
    acceptFailed: (error) => {
      acceptFailed += 1;
      warnAcceptFailed(error);
    },
  },
});
const health = createHealth([]);
health.addToServer(server);
health.setServing(true);
const port = await listen(server, '127.0.0.1', 0);
send({ type: 'listening', port });

for await (const line of createInterface({ input: process.stdin })) {
  const [command, argument] = line.trim().split(' ');
  if (command === 'stats') send({ type: 'stats', open, acceptFailed });
  else if (command === 'fail-accepts') {
    send({ type: 'failed-accepts', listeners: failAccepts(port, Number(argument)) });
  }
}
server.forceShutdown();
