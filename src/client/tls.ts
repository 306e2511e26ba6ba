/**
 * The client's side of a node that serves TLS (GRPC_TLS_*): the channel credentials built from
 * the `tls` option, checked before anything is sent, and the handshake failures told as what
 * failed. grpc-js reports a failed handshake as UNAVAILABLE with OpenSSL's own words deep in its
 * details ("No connection established. Last error: 80BC…:error:0A00045C:SSL
 * routines:ssl3_read_bytes:tlsv13 alert certificate required:../deps/openssl/…"); the client
 * answers a TlsHandshakeError instead: still UNAVAILABLE, with a `failure` to switch on and
 * details that say which side refused and what to give.
 */
import * as grpc from '@grpc/grpc-js';
import { pemCertificates, pemKeyPair } from '../domain/pem.js';

/**
 * TLS to a node whose gRPC port serves it. `ca`: the PEM of the CA (or CAs) that signed the
 * node's certificate; left out, the system's CAs are trusted. `cert` and `key`: this client's
 * certificate chain and private key (PEM, both or neither), for a node that requires client
 * certificates (GRPC_TLS_CLIENT_CA_FILE). `serverName`: the name the node's certificate must
 * have, when it is not the address's host (an address by IP to a certificate for a DNS name).
 */
export type SettleClientTls = Readonly<{
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  serverName?: string;
}>;

/**
 * The channel credentials and options of `tls`, or a TypeError naming the option that is wrong
 * (a PEM that does not parse, a key that is not the certificate's, a certificate without a key).
 */
export function tlsChannel(tls: SettleClientTls): {
  credentials: grpc.ChannelCredentials;
  options: grpc.ChannelOptions;
} {
  const text = (pem: string | Buffer) => (typeof pem === 'string' ? pem : pem.toString('latin1'));
  if (tls.ca !== undefined) {
    const cas = pemCertificates(text(tls.ca));
    if (typeof cas === 'string') throw new TypeError(`createSettleClient: tls.ca ${cas}`);
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError(
      'createSettleClient: tls.cert and tls.key go together (a client certificate and its key)',
    );
  }
  if (tls.cert !== undefined && tls.key !== undefined) {
    const pair = pemKeyPair(
      { cert: text(tls.cert), key: text(tls.key) },
      { cert: 'tls.cert', key: 'tls.key' },
    );
    if ('problems' in pair) {
      throw new TypeError(`createSettleClient: ${pair.problems.join('; ')}`);
    }
  }
  if (tls.serverName !== undefined && !/^[A-Za-z0-9.:_-]{1,253}$/.test(tls.serverName)) {
    throw new TypeError('createSettleClient: tls.serverName must be a host name or address');
  }
  const bytes = (pem: string | Buffer | undefined) =>
    pem === undefined ? null : Buffer.isBuffer(pem) ? pem : Buffer.from(pem);
  return {
    credentials: grpc.credentials.createSsl(bytes(tls.ca), bytes(tls.key), bytes(tls.cert)),
    options:
      tls.serverName === undefined ? {} : { 'grpc.ssl_target_name_override': tls.serverName },
  };
}

/** What failed in a TLS handshake, as far as the client can tell. */
export const TLS_FAILURE = {
  /** The node's certificate is not signed by a CA the client trusts. */
  serverNotTrusted: 'SERVER_NOT_TRUSTED',
  /** The node's certificate is not for the name the client checks. */
  serverNameMismatch: 'SERVER_NAME_MISMATCH',
  /** The node's certificate has expired, or is not valid yet. */
  serverCertificateExpired: 'SERVER_CERTIFICATE_EXPIRED',
  /** The node requires a client certificate and the client gave none. */
  clientCertificateRequired: 'CLIENT_CERTIFICATE_REQUIRED',
  /** The node refused the client's certificate. */
  clientCertificateRefused: 'CLIENT_CERTIFICATE_REFUSED',
  /** The node's port does not speak TLS (plaintext). */
  notTls: 'NOT_TLS',
  /** Another handshake failure; the details quote it. */
  other: 'OTHER',
} as const;
export type TlsFailure = (typeof TLS_FAILURE)[keyof typeof TLS_FAILURE];

/**
 * A call that failed because no TLS connection could be made: UNAVAILABLE, as grpc-js answered,
 * with the details told as what failed. `cause` is grpc-js's own error.
 */
export class TlsHandshakeError extends Error implements grpc.ServiceError {
  override readonly name = 'TlsHandshakeError';
  readonly code = grpc.status.UNAVAILABLE;
  readonly details: string;
  readonly metadata: grpc.Metadata;
  constructor(
    readonly failure: TlsFailure,
    details: string,
    original: grpc.ServiceError,
  ) {
    super(`${grpc.status.UNAVAILABLE} UNAVAILABLE: ${details}`, { cause: original });
    this.details = details;
    this.metadata = original.metadata;
  }
}

const SENTENCES: Readonly<Record<TlsFailure, string>> = {
  SERVER_NOT_TRUSTED:
    "the node's certificate is not signed by a CA this client trusts: trust the CA that signed it",
  SERVER_NAME_MISMATCH:
    "the node's certificate is not for the name this client checks (the address's host, or the " +
    'server name given): connect by a name the certificate has, or give one as the server name',
  SERVER_CERTIFICATE_EXPIRED: "the node's certificate has expired (or is not valid yet)",
  CLIENT_CERTIFICATE_REQUIRED:
    'the node requires a client certificate and this client gave none: give one signed by the ' +
    "node's client CA, with its key",
  CLIENT_CERTIFICATE_REFUSED:
    "the node refused this client's certificate: give one signed by the node's client CA",
  NOT_TLS: 'the node does not serve TLS at this address: connect without TLS, or to its TLS port',
  OTHER: 'the handshake failed',
};

/** Which failure a handshake error's text names; undefined when it names none. */
function failureOf(reason: string): TlsFailure | undefined {
  const text = reason.toLowerCase();
  if (text.includes('alert certificate required')) return TLS_FAILURE.clientCertificateRequired;
  if (
    /alert (unknown ca|bad certificate|certificate unknown|certificate expired|certificate revoked|unsupported certificate|access denied)/.test(
      text,
    )
  ) {
    return TLS_FAILURE.clientCertificateRefused;
  }
  if (text.includes('altnames') || text.includes('err_tls_cert_altname_invalid')) {
    return TLS_FAILURE.serverNameMismatch;
  }
  if (/certificate has expired|certificate is not yet valid/.test(text)) {
    return TLS_FAILURE.serverCertificateExpired;
  }
  if (
    /self[- ]signed certificate|unable to verify|unable to get (local )?issuer|certificate signature failure/.test(
      text,
    )
  ) {
    return TLS_FAILURE.serverNotTrusted;
  }
  if (/wrong version number|packet length too long|unknown protocol|http request/.test(text)) {
    return TLS_FAILURE.notTls;
  }
  if (/ssl routines|tls|certificate/.test(text)) return TLS_FAILURE.other;
  return undefined;
}

/** grpc-js's "Last error" of a failed connection, without OpenSSL's codes and file names. */
function lastError(details: string): string | undefined {
  const found = /Last error: ([\s\S]*?)\s*(\(\d{4}-\d\d-\d\dT[^)]*\))?\.?\s*Resolution note:/.exec(
    details,
  );
  if (found === null) return undefined;
  const error = found[1] ?? '';
  const openSsl = /SSL routines:[^:]*:([^:]+)/.exec(error);
  if (openSsl !== null) return openSsl[1];
  return error.replace(/^Error( \[[A-Z_0-9]+\])?: /, '');
}

/**
 * `error` as a TlsHandshakeError when grpc-js failed its call for want of a TLS connection to
 * `address`; any other error as it is. `clientCertificate` says whether the client gave one: a
 * node that refuses it under TLS 1.3 closes the connection after the handshake without a word
 * that reaches grpc-js ("Failed to connect"), which is then its most likely cause.
 */
export function explainTlsFailure(
  error: unknown,
  address: string,
  clientCertificate: boolean,
): unknown {
  const serviceError = error as Partial<grpc.ServiceError>;
  if (
    !(error instanceof Error) ||
    error instanceof TlsHandshakeError ||
    serviceError.code !== grpc.status.UNAVAILABLE ||
    typeof serviceError.details !== 'string' ||
    !serviceError.details.startsWith('No connection established')
  ) {
    return error;
  }
  const reason = lastError(serviceError.details);
  if (reason === undefined) return error;
  let failure = failureOf(reason);
  let sentence = failure === undefined ? undefined : SENTENCES[failure];
  if (failure === undefined && clientCertificate && reason === 'Failed to connect') {
    failure = TLS_FAILURE.clientCertificateRefused;
    sentence =
      'the node closed the connection right after the handshake, as it does when it refuses ' +
      "this client's certificate: give one signed by the node's client CA";
  }
  if (failure === undefined || sentence === undefined) return error;
  return new TlsHandshakeError(
    failure,
    `No connection established: the TLS handshake with ${address} failed: ${sentence} (${reason})`,
    error as grpc.ServiceError,
  );
}
