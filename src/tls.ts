/**
 * The TLS of a node's two ports: the files GRPC_TLS_* and HTTP_TLS_* name, read once at start and
 * checked before the node waits for MySQL and NATS, so a wrong path or a key that is not the
 * certificate's stops it at once (exit 2) with one line per problem naming the setting and the
 * file, never later at the first handshake. Each port is plaintext unless its certificate and key
 * are set; with a client CA as well, it requires a client certificate signed by that CA (mTLS)
 * and refuses the handshake of a client without one. Any certificate that CA signed is let in:
 * TLS says who may connect, and API_TOKENS and ADMIN_TOKEN still say who may call what.
 *
 * While the node runs, src/tls-reload.ts reads the files again (every TLS_RELOAD_INTERVAL_S, and
 * on SIGHUP) through readPortTls, so a renewed certificate passes the same checks as at start.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import * as net from 'node:net';
import { createSecureContext, type TLSSocket } from 'node:tls';
import { ConfigError, type Config } from './config.js';
import { fileError, pemCertificates, pemKeyPair } from './domain/pem.js';

/** The most bytes a certificate, key or CA file may have: a bundle of a thousand CAs fits. */
const TLS_FILE_BYTES_MAX = 4 * 1024 * 1024;

/**
 * How long a client has to finish its TLS handshake on either port, in ms. Node's default is
 * 120 s, for which a client that connects and sends nothing would hold one of the port's bounded
 * connections (GRPC_CONNECTIONS_MAX; the HTTP port's 10,000) for two minutes.
 */
export const TLS_HANDSHAKE_MS_MAX = 10_000;

/**
 * How far ahead of the node's clock a certificate's notBefore may be without a word, in ms: at
 * start (a warning) and on reload (refused). A CA stamps notBefore with its own clock as it
 * issues (few backdate, as Let's Encrypt does), so a node whose clock is a minute or two behind
 * the CA's sees a fresh certificate as not yet valid, though clients with the right time accept
 * it: a warning there would be about a normal renewal. Past 5 minutes the certificate is staged
 * for later, or a clock is well off, and clients whose clock agrees with the node's refuse the
 * handshake.
 */
export const NOT_BEFORE_AHEAD_MS_MAX = 5 * 60_000;

/**
 * Why a client's TLS handshake failed, as counted per port (settle_tls_handshake_failures_total):
 * a closed set, from the codes Node gives, so a scanner's variety cannot grow the series.
 */
export const TLS_HANDSHAKE_FAILURE = {
  /** Not finished within TLS_HANDSHAKE_MS_MAX: a client that connected and stalled. */
  TIMEOUT: 'timeout',
  /** The port requires a client certificate (mTLS) and the client sent none. */
  NO_CLIENT_CERTIFICATE: 'no_client_certificate',
  /** The client's certificate is not one the client CA signed, or has expired. */
  CLIENT_CERTIFICATE_REFUSED: 'client_certificate_refused',
  /**
   * The client refused the port's certificate with an alert: not signed by a CA it trusts,
   * expired or not yet valid by its clock. What OpenSSL's (curl), Go's and Java's clients send.
   */
  SERVER_CERTIFICATE_REFUSED: 'server_certificate_refused',
  /** Not TLS the port speaks: plaintext, an old protocol version, no shared cipher, garbage. */
  PROTOCOL: 'protocol',
  /**
   * The client closed the connection before the handshake ended: what Node's clients do when
   * they do not trust the port's certificate (they send no alert), but also a TCP health check.
   */
  CLOSED: 'closed',
  OTHER: 'other',
} as const;
export type TlsHandshakeFailure =
  (typeof TLS_HANDSHAKE_FAILURE)[keyof typeof TLS_HANDSHAKE_FAILURE];

/**
 * The alerts a client sends when it refuses the port's certificate (RFC 8446, section 6.2), as
 * Node names them: OpenSSL 3 sends unknown_ca for a CA it does not trust, certificate_expired
 * for an expired certificate, bad_certificate for one not yet valid (and for another name, where
 * the client has OpenSSL check it; curl checks it after the handshake, which then succeeded);
 * Java sends certificate_unknown. Left out: decrypt_error, which also means a Finished message or
 * a PSK binder that did not verify, and access_denied, which is about the client's rights, not
 * our certificate.
 */
const SERVER_CERTIFICATE_ALERTS: ReadonlySet<string> = new Set([
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
  'ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED',
  'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN',
]);

/**
 * Why the handshake of `socket` failed, from the error of a TLS server's 'tlsClientError'.
 * A certificate the client CA did not sign fails after OpenSSL's handshake, in Node, which then
 * closes the socket: the error is a bare ECONNRESET, and `authorizationError` says why.
 */
export function tlsHandshakeFailure(
  error: NodeJS.ErrnoException,
  socket: Pick<TLSSocket, 'authorizationError'>,
): TlsHandshakeFailure {
  const code = error.code ?? '';
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return TLS_HANDSHAKE_FAILURE.TIMEOUT;
  // A string code (UNABLE_TO_VERIFY_LEAF_SIGNATURE, CERT_HAS_EXPIRED), though typed as an Error.
  if (socket.authorizationError) return TLS_HANDSHAKE_FAILURE.CLIENT_CERTIFICATE_REFUSED;
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') {
    return TLS_HANDSHAKE_FAILURE.NO_CLIENT_CERTIFICATE;
  }
  // Before the catch-all below: these are OpenSSL errors too (an alert received).
  if (SERVER_CERTIFICATE_ALERTS.has(code)) return TLS_HANDSHAKE_FAILURE.SERVER_CERTIFICATE_REFUSED;
  if (code.startsWith('ERR_SSL_')) return TLS_HANDSHAKE_FAILURE.PROTOCOL;
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ECONNABORTED') {
    return TLS_HANDSHAKE_FAILURE.CLOSED;
  }
  return TLS_HANDSHAKE_FAILURE.OTHER;
}

/** What a port's TLS context is made of: what the gRPC and HTTP servers take. */
export type TlsFiles = Readonly<{
  /** The certificate chain, PEM: the port's own certificate first. */
  cert: Buffer;
  key: Buffer;
  /** The CAs whose client certificates the port requires; undefined: none is asked for. */
  clientCa: Buffer | undefined;
}>;

/** One port's TLS, as read from its files. */
export type PortTls = TlsFiles &
  Readonly<{
    /** The port's certificate's subject and validity, for the start-up log and reloads. */
    subject: string;
    validFrom: Date;
    validTo: Date;
  }>;

/** Each port's TLS; undefined where the port is plaintext. */
export type ServerTls = Readonly<{ grpc: PortTls | undefined; http: PortTls | undefined }>;

export const PLAINTEXT: ServerTls = Object.freeze({ grpc: undefined, http: undefined });

/** The settings that name each port's TLS files. */
export const TLS_SETTINGS = {
  grpc: {
    cert: 'GRPC_TLS_CERT_FILE',
    key: 'GRPC_TLS_KEY_FILE',
    clientCa: 'GRPC_TLS_CLIENT_CA_FILE',
  },
  http: {
    cert: 'HTTP_TLS_CERT_FILE',
    key: 'HTTP_TLS_KEY_FILE',
    clientCa: 'HTTP_TLS_CLIENT_CA_FILE',
  },
} as const;
const PORTS = TLS_SETTINGS;

/** A port that may serve TLS. */
export type TlsPort = keyof typeof TLS_SETTINGS;

/**
 * One port's TLS files as read now: `tls` when they pass every check, else the problems, each
 * naming its setting and file. `fingerprint` is a hash of what was read (bytes, or the error of a
 * file that could not be), so a reload can tell files it has already applied or refused from new
 * ones, whatever their mtime.
 */
export type PortTlsRead = Readonly<{ fingerprint: string }> &
  ({ tls: PortTls; problems?: never } | { tls?: never; problems: readonly string[] });

/**
 * Reads and checks one port's TLS files, as at start; undefined for a plaintext port (its
 * certificate or key setting unset).
 */
export function readPortTls(config: Config, port: TlsPort): PortTlsRead | undefined {
  const names = PORTS[port];
  const files = { cert: config[names.cert], key: config[names.key] };
  if (files.cert === undefined || files.key === undefined) return undefined;
  const problems: string[] = [];
  const clientCaFile = config[names.clientCa];
  const cert = readPem(names.cert, files.cert, problems);
  const key = readPem(names.key, files.key, problems);
  const clientCa =
    clientCaFile === undefined ? undefined : readPem(names.clientCa, clientCaFile, problems);
  const hash = createHash('sha256');
  for (const part of [cert, key, clientCa]) hash.update(part ?? '-').update('\0');
  for (const problem of problems) hash.update(problem).update('\0');
  const fingerprint = hash.digest('hex');
  if (clientCa !== undefined) {
    const cas = pemCertificates(clientCa.toString('latin1'));
    if (typeof cas === 'string') problems.push(`${names.clientCa}: ${clientCaFile} ${cas}`);
  }
  if (cert === undefined || key === undefined) return { fingerprint, problems };
  const pair = pemKeyPair(
    { cert: cert.toString('latin1'), key: key.toString('latin1') },
    { cert: `${names.cert} (${files.cert})`, key: `${names.key} (${files.key})` },
  );
  if ('problems' in pair) return { fingerprint, problems: [...problems, ...pair.problems] };
  try {
    // What the port's handshakes will use: refused here (a key too weak for OpenSSL's security
    // level, say), it is refused at start rather than on every connection.
    createSecureContext({ cert, key, ...(clientCa !== undefined && { ca: clientCa }) });
  } catch (error) {
    problems.push(
      `${names.cert}, ${names.key}: ${files.cert} and ${files.key} are refused by TLS ` +
        `(${error instanceof Error ? error.message : String(error)})`,
    );
  }
  if (problems.length > 0) return { fingerprint, problems };
  return {
    fingerprint,
    tls: {
      cert,
      key,
      clientCa,
      subject: pair.leaf.subject.replace(/\n/g, ', '),
      validFrom: new Date(pair.leaf.validFrom),
      validTo: new Date(pair.leaf.validTo),
    },
  };
}

/**
 * Reads and checks the files of both ports' TLS settings (loadConfig has checked that they come
 * in pairs); throws ConfigError listing every problem, each naming its setting and file.
 */
export function readServerTls(config: Config): ServerTls {
  const grpc = readPortTls(config, 'grpc');
  const http = readPortTls(config, 'http');
  const problems = [...(grpc?.problems ?? []), ...(http?.problems ?? [])];
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({ grpc: grpc?.tls, http: http?.tls });
}

/** The bytes of `file`, or undefined with a problem naming `variable` and the file. */
function readPem(variable: string, file: string, problems: string[]): Buffer | undefined {
  // Looked at before it is read, as it is read again every TLS_RELOAD_INTERVAL_S on the event
  // loop: a FIFO would block it, and a huge file be read whole before being refused.
  try {
    const stat = statSync(file);
    if (stat.isDirectory()) {
      problems.push(`${variable}: cannot read ${file} (a folder, not a file)`);
      return undefined;
    }
    if (!stat.isFile()) {
      problems.push(`${variable}: ${file} is not a regular file (a pipe, socket or device)`);
      return undefined;
    }
    if (stat.size > TLS_FILE_BYTES_MAX) {
      problems.push(`${variable}: ${file} has ${stat.size} bytes, more than a PEM file needs`);
      return undefined;
    }
  } catch (error) {
    problems.push(`${variable}: cannot read ${file} (${fileError(error)})`);
    return undefined;
  }
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (error) {
    problems.push(`${variable}: cannot read ${file} (${fileError(error)})`);
    return undefined;
  }
  if (bytes.length > TLS_FILE_BYTES_MAX) {
    problems.push(`${variable}: ${file} has ${bytes.length} bytes, more than a PEM file needs`);
    return undefined;
  }
  return bytes;
}

/** Whether `host` (a listen address) is reachable from this machine only. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) {
    const lower = host.toLowerCase();
    return lower === '::1' || lower.startsWith('::ffff:127.');
  }
  return false;
}

/**
 * The log lines a node starts with about its ports' TLS: which serve it and whether they require
 * client certificates (info); which serve a certificate expired or not yet valid by `now`, and
 * which listen beyond this machine in plaintext (warn), where API tokens, ADMIN_TOKEN and payment
 * data would cross the network readable by anyone on the path.
 */
export function tlsStartupLines(
  config: Pick<Config, 'SETTLE_GRPC_ADDR' | 'SETTLE_HTTP_ADDR'>,
  tls: ServerTls,
  ports: Readonly<{ grpc: number; http: number }>,
  now: Date = new Date(),
): { info: string[]; warn: string[] } {
  const info: string[] = [];
  const warn: string[] = [];
  const entries = [
    ['gRPC', config.SETTLE_GRPC_ADDR.host, ports.grpc, tls.grpc, PORTS.grpc, 'SETTLE_GRPC_ADDR'],
    ['HTTP', config.SETTLE_HTTP_ADDR.host, ports.http, tls.http, PORTS.http, 'SETTLE_HTTP_ADDR'],
  ] as const;
  for (const [label, host, port, portTls, names, addressName] of entries) {
    const address = `${host}:${port}`;
    if (portTls !== undefined) {
      info.push(
        `${label} port ${address} serves TLS (certificate ${portTls.subject}, valid until ` +
          `${portTls.validTo.toISOString()}); ` +
          (portTls.clientCa === undefined
            ? `client certificates are not required (set ${names.clientCa} to require them)`
            : `client certificates signed by ${names.clientCa} are required (mTLS)`),
      );
      if (portTls.validTo.getTime() <= now.getTime()) {
        warn.push(
          `${label} port ${address}: the certificate in ${names.cert} expired at ` +
            `${portTls.validTo.toISOString()}, so every client refuses the handshake; renew it ` +
            '(the node reads it again within TLS_RELOAD_INTERVAL_S, or at once on SIGHUP)',
        );
      }
      // Served all the same, as refusing to start over a clock off by an hour would take the
      // node down with the port; a reload would refuse these files, and nothing else says so.
      if (portTls.validFrom.getTime() - NOT_BEFORE_AHEAD_MS_MAX > now.getTime()) {
        warn.push(
          `${label} port ${address}: the certificate in ${names.cert} is not valid before ` +
            `${portTls.validFrom.toISOString()}, more than 5 minutes ahead of this node's clock ` +
            `(${now.toISOString()}), so clients whose clock agrees refuse the handshake until ` +
            'then; if the clock is right, put back a certificate valid now (the node reads it ' +
            'again within TLS_RELOAD_INTERVAL_S, or at once on SIGHUP), else set the clock right',
        );
      }
      continue;
    }
    if (isLoopbackHost(host)) continue;
    warn.push(
      `${label} port ${address} (${addressName}) is reachable beyond this machine without TLS: ` +
        'API tokens, ADMIN_TOKEN and payment data cross the network in plaintext; set ' +
        `${names.cert} and ${names.key} (and ${names.clientCa} for mTLS), or keep the port where ` +
        'only a gateway that serves TLS reaches it',
    );
  }
  return { info, warn };
}
