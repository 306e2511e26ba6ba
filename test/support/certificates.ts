/**
 * Throwaway certificates for the TLS tests, made with the openssl command into a temporary
 * folder: two CAs (the one a node trusts, and another), a server certificate for 127.0.0.1 and
 * localhost, and a client certificate from each CA. Keys are P-256, which openssl makes in
 * milliseconds; the certificates are valid for two days.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const OPENSSL = '/usr/bin/openssl';
const OPENSSL_MS_MAX = 20_000;
const run = promisify(execFile);

export type TestCertificates = Readonly<{
  dir: string;
  /** The CA that signed `server` and `client`: what clients trust and a node's client CA. */
  caCert: string;
  /** Another CA: a client trusting it refuses the node; the node refuses its `otherClient`. */
  otherCaCert: string;
  /** The node's certificate (SAN IP:127.0.0.1, DNS:localhost) and key. */
  serverCert: string;
  serverKey: string;
  /** A client certificate signed by `caCert`. */
  clientCert: string;
  clientKey: string;
  /** A client certificate signed by `otherCaCert`. */
  otherClientCert: string;
  otherClientKey: string;
  /** Deletes the folder. */
  remove: () => Promise<void>;
}>;

/** A new P-256 key, unencrypted, for `openssl req`. */
const NEW_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function openssl(args: readonly string[], cwd: string): Promise<void> {
  await run(OPENSSL, args, { cwd, timeout: OPENSSL_MS_MAX });
}

/** Makes the CAs, the server's and the clients' certificates in a fresh temporary folder. */
export async function makeTestCertificates(): Promise<TestCertificates> {
  const dir = await mkdtemp(path.join(tmpdir(), 'settle-tls-'));
  // -subj differs per CA so that their names differ as well as their keys.
  const makeCa = (name: string) =>
    openssl(
      [
        'req',
        '-x509',
        ...NEW_KEY,
        '-keyout',
        `${name}.key`,
        '-out',
        `${name}.pem`,
        '-days',
        '2',
        '-subj',
        `/CN=Settle test ${name}`,
      ],
      dir,
    );
  await Promise.all([makeCa('ca'), makeCa('other-ca')]);
  const leaf = (name: string, issuer: string, subject: string, extensions: string) =>
    signLeaf(dir, { name, issuer, subject, extensions, days: 2 });
  await Promise.all([
    leaf(
      'server',
      'ca',
      '/CN=localhost',
      'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n',
    ),
    leaf('client', 'ca', '/CN=settle-test-client', 'extendedKeyUsage=clientAuth\n'),
  ]);
  await leaf('other-client', 'other-ca', '/CN=other-client', 'extendedKeyUsage=clientAuth\n');
  const file = (name: string) => path.join(dir, name);
  return {
    dir,
    caCert: file('ca.pem'),
    otherCaCert: file('other-ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    clientCert: file('client.pem'),
    clientKey: file('client.key'),
    otherClientCert: file('other-client.pem'),
    otherClientKey: file('other-client.key'),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Makes `name`.key and a certificate `name`.pem for it in `dir`, signed by `issuer`.pem/.key. */
async function signLeaf(
  dir: string,
  leaf: Readonly<{
    name: string;
    issuer: string;
    subject: string;
    extensions: string;
    days: number;
  }>,
): Promise<void> {
  const { name, issuer } = leaf;
  await writeFile(path.join(dir, `${name}.ext`), leaf.extensions);
  await openssl(
    ['req', ...NEW_KEY, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', leaf.subject],
    dir,
  );
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${issuer}.pem`,
      '-CAkey',
      `${issuer}.key`,
      // A serial of its own, rather than -CAcreateserial's file the two leaves would race on.
      '-set_serial',
      `0x${randomBytes(8).toString('hex')}`,
      '-out',
      `${name}.pem`,
      '-days',
      String(leaf.days),
      '-extfile',
      `${name}.ext`,
    ],
    dir,
  );
}

/**
 * Another server certificate for 127.0.0.1 and localhost from `certs`' CA, with a key and serial
 * of its own and `days` of validity: a renewal, for the tests of reading TLS files again.
 */
export async function makeRenewedServerCertificate(
  certs: TestCertificates,
  options: Readonly<{ name: string; days: number }>,
): Promise<{ cert: string; key: string }> {
  await signLeaf(certs.dir, {
    name: options.name,
    issuer: 'ca',
    subject: '/CN=localhost',
    extensions: 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n',
    days: options.days,
  });
  return {
    cert: path.join(certs.dir, `${options.name}.pem`),
    key: path.join(certs.dir, `${options.name}.key`),
  };
}
