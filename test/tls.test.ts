/**
 * Goal: a node's TLS settings fail at start, never at the first handshake, and say which setting
 * and file is wrong: a certificate without its key (or the reverse), a client CA on a plaintext
 * port, a file that cannot be read, one that holds the wrong thing, a key that is not the
 * certificate's. A node whose port listens beyond loopback without TLS warns at start; one with
 * TLS says which ports serve it and whether they require client certificates, and warns of a
 * certificate expired or not valid yet by its clock.
 * Method: loadConfig and readServerTls on throwaway files made with openssl; src/main.ts as a
 * child process for the exit code and the one-line message; tlsStartupLines as a function.
 */
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, settlePublicUrl } from '../src/config.js';
import { isLoopbackHost, PLAINTEXT, readServerTls, tlsStartupLines } from '../src/tls.js';
import { makeTestCertificates, type TestCertificates } from './support/certificates.js';
import { startMain } from './support/main-process.js';

let certs: TestCertificates;
let garbage: string;

beforeAll(async () => {
  certs = await makeTestCertificates();
  garbage = path.join(certs.dir, 'garbage.pem');
  await writeFile(garbage, 'not a certificate\n');
});
afterAll(async () => {
  await certs?.remove();
});

/** The problems `read` throws as a ConfigError; [] when it does not throw. */
function problemsOf(read: () => unknown): readonly string[] {
  try {
    read();
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
}

describe('TLS settings', () => {
  it('refuses a certificate without its key, a key without its certificate, a lone client CA', () => {
    expect(problemsOf(() => loadConfig({ GRPC_TLS_CERT_FILE: '/etc/settle/grpc.pem' }))).toEqual([
      'GRPC_TLS_KEY_FILE: is unset while GRPC_TLS_CERT_FILE is set: the gRPC port serves TLS ' +
        'with both its certificate and its private key, or neither; set GRPC_TLS_KEY_FILE, or ' +
        'unset GRPC_TLS_CERT_FILE for plaintext',
    ]);
    expect(problemsOf(() => loadConfig({ HTTP_TLS_KEY_FILE: '/etc/settle/http.key' }))).toEqual([
      expect.stringMatching(/^HTTP_TLS_CERT_FILE: is unset while HTTP_TLS_KEY_FILE is set/),
    ]);
    expect(problemsOf(() => loadConfig({ GRPC_TLS_CLIENT_CA_FILE: '/etc/settle/ca.pem' }))).toEqual(
      [
        expect.stringMatching(
          /^GRPC_TLS_CLIENT_CA_FILE: is set while GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE are not/,
        ),
      ],
    );
  });

  it('is plaintext by default, and reads nothing', () => {
    expect(readServerTls(loadConfig({}))).toEqual(PLAINTEXT);
    expect(settlePublicUrl(loadConfig({}))).toBe('http://127.0.0.1:8080');
  });

  it('reads each port’s files, and derives an https webhook URL for an HTTPS port', () => {
    const config = loadConfig({
      GRPC_TLS_CERT_FILE: certs.serverCert,
      GRPC_TLS_KEY_FILE: certs.serverKey,
      GRPC_TLS_CLIENT_CA_FILE: certs.caCert,
      HTTP_TLS_CERT_FILE: certs.serverCert,
      HTTP_TLS_KEY_FILE: certs.serverKey,
    });
    const tls = readServerTls(config);
    expect(tls.grpc?.clientCa).toBeInstanceOf(Buffer);
    expect(tls.grpc?.subject).toBe('CN=localhost');
    expect(tls.http?.clientCa).toBeUndefined();
    expect(settlePublicUrl(config)).toBe('https://127.0.0.1:8080');
  });

  it('names the setting and the file of every file it cannot use, all at once', () => {
    const missing = path.join(certs.dir, 'missing.pem');
    const problems = problemsOf(() =>
      readServerTls(
        loadConfig({
          GRPC_TLS_CERT_FILE: missing,
          GRPC_TLS_KEY_FILE: certs.serverKey,
          GRPC_TLS_CLIENT_CA_FILE: garbage,
          HTTP_TLS_CERT_FILE: certs.serverKey,
          HTTP_TLS_KEY_FILE: certs.dir,
        }),
      ),
    );
    expect(problems).toEqual([
      `GRPC_TLS_CERT_FILE: cannot read ${missing} (no such file)`,
      `GRPC_TLS_CLIENT_CA_FILE: ${garbage} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
      `HTTP_TLS_KEY_FILE: cannot read ${certs.dir} (a folder, not a file)`,
    ]);
    expect(
      problemsOf(() =>
        readServerTls(
          loadConfig({ HTTP_TLS_CERT_FILE: certs.serverKey, HTTP_TLS_KEY_FILE: certs.serverCert }),
        ),
      ),
    ).toEqual([
      `HTTP_TLS_CERT_FILE (${certs.serverKey}): holds a private key, not a certificate ` +
        '(-----BEGIN CERTIFICATE-----)',
      `HTTP_TLS_KEY_FILE (${certs.serverCert}): holds a certificate, not a private key ` +
        '(-----BEGIN PRIVATE KEY-----)',
    ]);
  });

  it('refuses a pipe and an oversized file without reading them', async () => {
    // Read again every TLS_RELOAD_INTERVAL_S on the event loop: a pipe would block it for good.
    const pipe = path.join(certs.dir, 'pipe.pem');
    expect(spawnSync('mkfifo', [pipe]).status).toBe(0);
    const huge = path.join(certs.dir, 'huge.pem');
    await writeFile(huge, Buffer.alloc(5 * 1024 * 1024, 0x41));
    expect(
      problemsOf(() =>
        readServerTls(loadConfig({ GRPC_TLS_CERT_FILE: pipe, GRPC_TLS_KEY_FILE: huge })),
      ),
    ).toEqual([
      `GRPC_TLS_CERT_FILE: ${pipe} is not a regular file (a pipe, socket or device)`,
      `GRPC_TLS_KEY_FILE: ${huge} has 5242880 bytes, more than a PEM file needs`,
    ]);
  }, 10_000);

  it('refuses a key that is not the certificate’s', () => {
    expect(
      problemsOf(() =>
        readServerTls(
          loadConfig({ GRPC_TLS_CERT_FILE: certs.serverCert, GRPC_TLS_KEY_FILE: certs.clientKey }),
        ),
      ),
    ).toEqual([
      `GRPC_TLS_KEY_FILE (${certs.clientKey}): is not the private key of the first certificate ` +
        `in GRPC_TLS_CERT_FILE (${certs.serverCert}) (CN=localhost)`,
    ]);
  });

  it('keeps a TLS node that is still waiting for MySQL alive through a SIGHUP', async () => {
    const node = startMain({
      LOG_LEVEL: 'info',
      // Nothing listens there: the node waits, as it would for a database still booting.
      MYSQL_URL: 'mysql://root@127.0.0.1:1/settle',
      STARTUP_WAIT_MS: '60000',
      GRPC_TLS_CERT_FILE: certs.serverCert,
      GRPC_TLS_KEY_FILE: certs.serverKey,
    });
    try {
      await node.waitForLine(/waiting for MySQL at /, 20_000);
      node.child.kill('SIGHUP');
      await node.waitForLine(/SIGHUP received while starting: ignored/, 5_000);
      // Ended by the SIGHUP, it would show that signal here rather than exit 0 of the wait's; and
      // the wait's own line shows that the SIGTERM, not some exit 0 of the SIGHUP's, ended it.
      node.child.kill('SIGTERM');
      expect(await node.exited).toEqual({ code: 0, signal: null });
      expect(node.output()).toContain('SIGTERM received while waiting for MySQL and NATS: exiting');
    } finally {
      node.child.kill('SIGKILL');
    }
  });

  it('stops the node at start with exit 2 and one line per problem, never a stack trace', () => {
    const missing = path.join(certs.dir, 'missing.key');
    const result = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'src/main.ts', '--settle-only'],
      {
        env: {
          ...process.env,
          LOG_LEVEL: 'silent',
          PSP_WEBHOOK_SECRET: 'whsec_tls_test_0123456789',
          // Nothing may be waited for: the files are checked before MySQL and NATS.
          MYSQL_URL: 'mysql://root@127.0.0.1:1/settle',
          GRPC_TLS_CERT_FILE: certs.serverCert,
          GRPC_TLS_KEY_FILE: missing,
        },
        encoding: 'utf8',
        timeout: 30_000,
      },
    );
    expect(result.status).toBe(2);
    expect(result.stderr.trim()).toBe(
      `settle: invalid configuration:\n  - GRPC_TLS_KEY_FILE: cannot read ${missing} (no such file)`,
    );
  });
});

describe('the start-up lines on TLS', () => {
  const config = (grpcHost: string, httpHost: string) =>
    loadConfig({ SETTLE_GRPC_ADDR: `${grpcHost}:50051`, SETTLE_HTTP_ADDR: `${httpHost}:8080` });
  const ports = { grpc: 50051, http: 8080 };

  it('warns of a plaintext port beyond loopback, and of no port on loopback', () => {
    expect(tlsStartupLines(config('127.0.0.1', 'localhost'), PLAINTEXT, ports)).toEqual({
      info: [],
      warn: [],
    });
    const lines = tlsStartupLines(config('0.0.0.0', '127.0.0.2'), PLAINTEXT, ports);
    expect(lines.warn).toEqual([
      expect.stringMatching(
        /^gRPC port 0\.0\.0\.0:50051 \(SETTLE_GRPC_ADDR\) is reachable beyond this machine without TLS: .*set GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE/,
      ),
    ]);
  });

  it('says which ports serve TLS, whether they require client certificates, and an expiry', () => {
    const tls = readServerTls(
      loadConfig({
        GRPC_TLS_CERT_FILE: certs.serverCert,
        GRPC_TLS_KEY_FILE: certs.serverKey,
        GRPC_TLS_CLIENT_CA_FILE: certs.caCert,
        HTTP_TLS_CERT_FILE: certs.serverCert,
        HTTP_TLS_KEY_FILE: certs.serverKey,
      }),
    );
    const lines = tlsStartupLines(config('10.0.0.5', '10.0.0.5'), tls, ports);
    expect(lines.warn).toEqual([]);
    expect(lines.info).toEqual([
      expect.stringMatching(
        /^gRPC port 10\.0\.0\.5:50051 serves TLS \(certificate CN=localhost, valid until .*\); client certificates signed by GRPC_TLS_CLIENT_CA_FILE are required \(mTLS\)$/,
      ),
      expect.stringMatching(
        /^HTTP port 10\.0\.0\.5:8080 serves TLS .*; client certificates are not required/,
      ),
    ]);
    const later = new Date(Date.now() + 3 * 24 * 3_600_000);
    expect(tlsStartupLines(config('10.0.0.5', '10.0.0.5'), tls, ports, later).warn).toEqual([
      expect.stringMatching(
        /^gRPC port 10\.0\.0\.5:50051: the certificate in GRPC_TLS_CERT_FILE expired at/,
      ),
      expect.stringMatching(
        /^HTTP port 10\.0\.0\.5:8080: the certificate in HTTP_TLS_CERT_FILE expired at/,
      ),
    ]);
  });

  it('warns of a certificate not valid yet by more than 5 minutes, as a reload would refuse it', () => {
    const tls = readServerTls(
      loadConfig({
        GRPC_TLS_CERT_FILE: certs.serverCert,
        GRPC_TLS_KEY_FILE: certs.serverKey,
        HTTP_TLS_CERT_FILE: certs.serverCert,
        HTTP_TLS_KEY_FILE: certs.serverKey,
      }),
    );
    const validFrom = tls.http?.validFrom.getTime() ?? Number.NaN;
    // A clock an hour behind: the certificate is served, but clients that agree refuse it.
    const behind = new Date(Date.now() - 3_600_000);
    expect(tlsStartupLines(config('10.0.0.5', '10.0.0.5'), tls, ports, behind).warn).toEqual([
      expect.stringMatching(
        /^gRPC port 10\.0\.0\.5:50051: the certificate in GRPC_TLS_CERT_FILE is not valid before \S+, more than 5 minutes ahead of this node's clock .*set the clock right$/,
      ),
      expect.stringMatching(
        /^HTTP port 10\.0\.0\.5:8080: the certificate in HTTP_TLS_CERT_FILE is not valid before /,
      ),
    ]);
    // Within the leeway a reload allows (a CA's clock a little ahead), nothing to say.
    const slightlyBehind = new Date(validFrom - 4 * 60_000);
    expect(
      tlsStartupLines(config('10.0.0.5', '10.0.0.5'), tls, ports, slightlyBehind).warn,
    ).toEqual([]);
  });

  it('counts 127.0.0.0/8, ::1 and localhost as loopback, and nothing else', () => {
    for (const host of ['127.0.0.1', '127.0.0.2', '::1', '::ffff:127.0.0.1', 'localhost']) {
      expect(isLoopbackHost(host), host).toBe(true);
    }
    for (const host of ['0.0.0.0', '::', '10.0.0.5', 'settle.internal', '128.0.0.1']) {
      expect(isLoopbackHost(host), host).toBe(false);
    }
  });
});
