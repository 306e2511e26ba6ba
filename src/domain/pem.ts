/**
 * Reads PEM certificates and private keys, written once for the node (GRPC_TLS_*, HTTP_TLS_*: see
 * src/tls.ts) and the TypeScript client (its `tls` option). Both check what they are given before
 * any connection: Node's `tls.createSecureContext` takes a CA file of garbage without a word (the
 * peer is then refused at every handshake, for a reason that names no file), and reports a bad
 * certificate or key as an OpenSSL code ("PEM routines::no start line"). A problem comes back as
 * a sentence, for the caller to prefix with the setting's name; nothing here throws.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** The most certificates one PEM text may hold: a chain, or a bundle of CAs, is far shorter. */
const PEM_CERTIFICATES_MAX = 1_000;

/**
 * The certificates of `pem` (a chain or a bundle of CAs), in order, or what is wrong with it:
 * no certificate in it, one that does not parse, or more than PEM_CERTIFICATES_MAX.
 */
export function pemCertificates(pem: string): X509Certificate[] | string {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    return pem.includes('PRIVATE KEY-----')
      ? 'holds a private key, not a certificate (-----BEGIN CERTIFICATE-----)'
      : 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)';
  }
  if (blocks.length > PEM_CERTIFICATES_MAX) {
    return `holds ${blocks.length} certificates, more than the ${PEM_CERTIFICATES_MAX} accepted`;
  }
  const certificates: X509Certificate[] = [];
  for (const [index, block] of blocks.entries()) {
    try {
      certificates.push(new X509Certificate(block));
    } catch (error) {
      return `certificate ${index + 1} of ${blocks.length} does not parse (${reason(error)})`;
    }
  }
  return certificates;
}

/** The private key of `pem`, or what is wrong with it (none, or one encrypted with a passphrase). */
function pemPrivateKey(pem: string): KeyObject | string {
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) {
    return pem.includes('-----BEGIN CERTIFICATE-----')
      ? 'holds a certificate, not a private key (-----BEGIN PRIVATE KEY-----)'
      : 'holds no PEM private key (-----BEGIN PRIVATE KEY-----)';
  }
  if (pem.includes('ENCRYPTED')) {
    return (
      'holds a private key encrypted with a passphrase, which is not supported; decrypt it ' +
      '(openssl pkey -in <file> -out <new file>) and keep the file readable only by Settle'
    );
  }
  try {
    return createPrivateKey(pem);
  } catch (error) {
    return `holds a private key that does not parse (${reason(error)})`;
  }
}

/**
 * The certificate chain and private key of one TLS endpoint, checked together: each parses, and
 * the key is the first certificate's. `names` are the settings (or options) they came from, named
 * in the problems. Answers the chain's first certificate, or every problem found.
 */
export function pemKeyPair(
  pem: Readonly<{ cert: string; key: string }>,
  names: Readonly<{ cert: string; key: string }>,
): { leaf: X509Certificate } | { problems: string[] } {
  const chain = pemCertificates(pem.cert);
  const key = pemPrivateKey(pem.key);
  const problems: string[] = [];
  if (typeof chain === 'string') problems.push(`${names.cert}: ${chain}`);
  if (typeof key === 'string') problems.push(`${names.key}: ${key}`);
  if (typeof chain === 'string' || typeof key === 'string') return { problems };
  const [leaf] = chain;
  if (leaf === undefined) return { problems: [`${names.cert}: holds no certificate`] };
  if (key.type !== 'private' || !leaf.checkPrivateKey(key)) {
    return {
      problems: [
        `${names.key}: is not the private key of the first certificate in ${names.cert} ` +
          `(${leaf.subject.replace(/\n/g, ', ')})`,
      ],
    };
  }
  return { leaf };
}

/** An OpenSSL error without its code: "no start line" of "error:0480006C:PEM routines::no start line". */
function reason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^error:[0-9A-F]+:/, '').replace(/^[^:]*routines::/, '');
}

/** Why a PEM file could not be read, in words (the node's start and the CLI say it alike). */
export function fileError(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
      return 'no such file';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'a folder, not a file';
    default:
      return error instanceof Error ? error.message : String(error);
  }
}
