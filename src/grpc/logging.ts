/**
 * grpc-js writes its own log lines to console.error, unstructured and beside ours. A process
 * hands them to its own log instead. The one error it logs before failing to bind ("No address
 * added out of total N resolved") is left out: the start-up failure that follows names the
 * address and the setting to change.
 */
import * as grpc from '@grpc/grpc-js';

export type GrpcLogLevel = 'debug' | 'info' | 'error';

const REPORTED_BY_US = /^No address added out of total \d+ resolved/;

export function routeGrpcLogs(write: (level: GrpcLogLevel, message: string) => void): void {
  const to =
    (level: GrpcLogLevel) =>
    (...args: unknown[]) => {
      const message = args.map(String).join(' ');
      if (!REPORTED_BY_US.test(message)) write(level, message);
    };
  grpc.setLogger({ debug: to('debug'), info: to('info'), error: to('error') });
}
