/**
 * The gRPC server's limits that the config's defaults name too, kept apart from server.ts so that
 * loading the config does not load grpc-js.
 */

/**
 * Open connections a node's gRPC server takes at once; past it a new one is closed as soon as it
 * is accepted. A gRPC client multiplexes its calls over one connection per channel (1,000 at once
 * each), so a node needs about one per client process, and 2 cores answer at most some 10,000
 * calls a second (an echo; payments far fewer): 5,000 clients is more than a node can give a
 * call each second. Idle, each costs about 22 KiB (measured: 3,000 raw HTTP/2 connections from
 * another process), so 5,000 hold some 110 MiB, and with the HTTP port's 10,000 they stay within
 * the 20,000 file descriptors a process gets on the machines we measured.
 */
export const GRPC_CONNECTIONS_MAX_DEFAULT = 5_000;
