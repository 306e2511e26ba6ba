/**
 * Goal: a node that serves TLS picks up renewed certificate files without a restart: after a
 * reload, new connections to both ports get the new certificate while an open one keeps its
 * session; files that fail the start's checks (a key that is not the certificate's) are refused,
 * the port goes on serving the certificate it had, one warning says why, the refused counter
 * goes up once and `settle_tls_files_refused` is 1 until fixed files are applied;
 * `settle_tls_certificate_expiry_timestamp_seconds` follows the served certificate.
 * A node reads the files by itself every TLS_RELOAD_INTERVAL_S, about that often and not much
 * more (settle_tls_file_checks_total), and a running src/main.ts on SIGHUP too, after which it
 * goes on serving (Node's default for SIGHUP is to exit).
 * Method: throwaway certificates from test/support/certificates.ts, copied to files the node is
 * configured with and replaced as renewal tools do (write a temporary file, rename it over);
 * `reloadTls()` stands for the timer and SIGHUP, which run the same code, except in the last two
 * tests: a second node on the stack with TLS_RELOAD_INTERVAL_S=1 and no call, and src/main.ts as
 * a child process sent SIGHUP. The certificate a port serves is read with node:tls (ALPN h2 on
 * the gRPC port, as gRPC clients connect), and a gRPC health check over the new certificate shows
 * the port still answers calls.
 */
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, renameSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startSettle } from '../../src/app.js';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/observability/logger.js';
import {
  makeRenewedServerCertificate,
  makeTestCertificates,
  type TestCertificates,
} from '../support/certificates.js';
import { freePort, metricSample, startStack, waitFor, type Stack } from '../support/harness.js';
import { startMain } from '../support/main-process.js';

const HANDSHAKE_MS_MAX = 5_000;

let certs: TestCertificates;
let renewed: { cert: string; key: string };
/** The files the node is configured with; the tests replace them. */
let live: { cert: string; key: string; clientCa: string };
let stack: Stack;
const lines: string[] = [];

beforeAll(async () => {
  certs = await makeTestCertificates();
  renewed = await makeRenewedServerCertificate(certs, { name: 'renewed', days: 30 });
  live = { ...copyOfServerFiles('live'), clientCa: path.join(certs.dir, 'live-clients-ca.pem') };
  copyFileSync(certs.caCert, live.clientCa);
  stack = await startStack({
    env: {
      GRPC_TLS_CERT_FILE: live.cert,
      GRPC_TLS_KEY_FILE: live.key,
      // mTLS on the gRPC port only: node:tls and grpc-js clients present a certificate there.
      GRPC_TLS_CLIENT_CA_FILE: live.clientCa,
      HTTP_TLS_CERT_FILE: live.cert,
      HTTP_TLS_KEY_FILE: live.key,
      // The tests read the files again themselves; the timer must not do it between two steps.
      TLS_RELOAD_INTERVAL_S: '86400',
    },
    overrides: {
      logger: createLogger(
        { level: 'info', name: 'settle' },
        { write: (line) => lines.push(line) },
      ),
    },
  });
});
/**
 * Nodes started as child processes, killed after each test: vitest runs afterEach when a test
 * times out, before afterAll drops the database and streams they share, while the test's own
 * `finally` runs only once what it awaits settles.
 */
const children = new Set<ReturnType<typeof startMain>>();
afterEach(async () => {
  for (const node of children) {
    node.child.kill('SIGKILL');
    await node.exited;
  }
  children.clear();
});
afterAll(async () => {
  await stack?.stop();
  await certs?.remove();
});

/** Replaces `target` with a copy of `source` as renewal tools do: a whole file, renamed over. */
function replaceFile(target: string, source: string): void {
  copyFileSync(source, `${target}.tmp`);
  renameSync(`${target}.tmp`, target);
}

/** Copies of the server certificate and key, `name`.pem and `name`.key, for a node to serve. */
function copyOfServerFiles(name: string): { cert: string; key: string } {
  const files = {
    cert: path.join(certs.dir, `${name}.pem`),
    key: path.join(certs.dir, `${name}.key`),
  };
  copyFileSync(certs.serverCert, files.cert);
  copyFileSync(certs.serverKey, files.key);
  return files;
}

/** Replaces a node's certificate and key with the renewed ones, the key first as tools do. */
function renew(files: { cert: string; key: string }): void {
  replaceFile(files.key, renewed.key);
  replaceFile(files.cert, renewed.cert);
}

function certificate(file: string): X509Certificate {
  return new X509Certificate(readFileSync(file));
}

/**
 * Opens a TLS connection that trusts the test CA, with the client certificate the test CA signed
 * (the gRPC port requires one); resolves once the handshake is done.
 */
function connectTls(port: number, alpn: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      servername: 'localhost',
      ca: readFileSync(certs.caCert),
      cert: readFileSync(certs.clientCert),
      key: readFileSync(certs.clientKey),
      ALPNProtocols: [alpn],
      timeout: HANDSHAKE_MS_MAX,
    });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('timeout', () => socket.destroy(new Error('TLS handshake timed out')));
    socket.once('error', reject);
  });
}

type NodePorts = Readonly<{ grpcPort: number; httpPort: number }>;

/** The serial number of the certificate a new connection to `port` of `node` is served. */
async function servedSerial(
  port: 'grpc' | 'http',
  node: NodePorts = stack.settle,
): Promise<string> {
  const socket =
    port === 'grpc'
      ? await connectTls(node.grpcPort, 'h2')
      : await connectTls(node.httpPort, 'http/1.1');
  try {
    return socket.getPeerCertificate().serialNumber;
  } finally {
    socket.destroy();
  }
}

/**
 * Sends `GET path` on an open HTTP/1.1 connection and resolves with the whole response; fails
 * after 5 s of silence.
 */
function getOver(socket: tls.TLSSocket, requestPath: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    let text = '';
    socket.setTimeout(5_000, () => socket.destroy(new Error(`no answer to GET ${requestPath}`)));
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.once('end', () => resolve(text));
    socket.once('error', reject);
    socket.write(`GET ${requestPath} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n`);
  });
}

/**
 * Waits until a gRPC client that trusts the test CA, with the client certificate `client` (the one
 * the test CA signed by default), has a connection to the node's gRPC port; rejects after `ms`.
 */
function grpcReady(
  client: { cert: string; key: string } = { cert: certs.clientCert, key: certs.clientKey },
  ms = HANDSHAKE_MS_MAX,
): Promise<void> {
  const channel = new grpc.Client(
    `127.0.0.1:${stack.settle.grpcPort}`,
    grpc.credentials.createSsl(
      readFileSync(certs.caCert),
      readFileSync(client.key),
      readFileSync(client.cert),
    ),
    { 'grpc.ssl_target_name_override': 'localhost' },
  );
  return new Promise<void>((resolve, reject) =>
    channel.waitForReady(Date.now() + ms, (error) => {
      channel.close();
      if (error) reject(error);
      else resolve();
    }),
  );
}

async function sample(name: string, labels: Record<string, string>): Promise<number | undefined> {
  const { body } = await stack.settle.metrics.render();
  return metricSample(body, name, labels);
}

const EXPIRY = 'settle_tls_certificate_expiry_timestamp_seconds';
const RELOADS = 'settle_tls_reloads_total';
const FILES_REFUSED = 'settle_tls_files_refused';
const FILE_CHECKS = 'settle_tls_file_checks_total';
/** How long the timer's reads are counted over, at least. */
const CHECK_WINDOW_MS = 3_000;
const notAfterSeconds = (file: string) =>
  Math.floor(new Date(certificate(file).validTo).getTime() / 1000);
/** Serial numbers as node:tls prints them: upper-case hex. */
const serialOf = (file: string) => certificate(file).serialNumber.toUpperCase();

describe('reading the TLS files again', () => {
  it('serves the certificate it started with, and exports its expiry per port', async () => {
    expect(await servedSerial('grpc')).toBe(serialOf(certs.serverCert));
    expect(await servedSerial('http')).toBe(serialOf(certs.serverCert));
    for (const port of ['grpc', 'http']) {
      expect(await sample(EXPIRY, { port })).toBe(notAfterSeconds(certs.serverCert));
    }
    // Nothing changed: nothing is applied or refused.
    expect(stack.settle.reloadTls()).toEqual({ grpc: 'unchanged', http: 'unchanged' });
    expect(await sample(RELOADS, { port: 'grpc', outcome: 'applied' })).toBe(0);
  });

  it('serves renewed files to new connections, while an open connection keeps its session', async () => {
    const open = await connectTls(stack.settle.httpPort, 'http/1.1');
    try {
      renew(live);
      expect(stack.settle.reloadTls()).toEqual({ grpc: 'applied', http: 'applied' });

      expect(await servedSerial('grpc')).toBe(serialOf(renewed.cert));
      expect(await servedSerial('http')).toBe(serialOf(renewed.cert));
      await grpcReady();
      for (const port of ['grpc', 'http']) {
        expect(await sample(EXPIRY, { port })).toBe(notAfterSeconds(renewed.cert));
        expect(await sample(RELOADS, { port, outcome: 'applied' })).toBe(1);
      }
      expect(notAfterSeconds(renewed.cert)).not.toBe(notAfterSeconds(certs.serverCert));

      // The connection opened before the reload still has the old certificate and is answered.
      expect(open.getPeerCertificate().serialNumber).toBe(serialOf(certs.serverCert));
      expect(await getOver(open, '/healthz')).toMatch(/^HTTP\/1\.1 200 /);
      expect(lines.some((line) => line.includes('gRPC port: new TLS files applied'))).toBe(true);
    } finally {
      open.destroy();
    }
  });

  it("refuses a key that is not the certificate's: the old certificate stays, warned and counted once", async () => {
    replaceFile(live.key, certs.clientKey);
    expect(stack.settle.reloadTls()).toEqual({ grpc: 'refused', http: 'refused' });

    expect(await servedSerial('grpc')).toBe(serialOf(renewed.cert));
    expect(await servedSerial('http')).toBe(serialOf(renewed.cert));
    await grpcReady();
    const warnings = () =>
      lines.filter((line) => line.includes('TLS files changed but are refused'));
    expect(warnings()).toHaveLength(2);
    const grpcWarning = warnings().find((line) => line.includes('gRPC port'));
    expect(grpcWarning).toContain(
      `GRPC_TLS_KEY_FILE (${live.key}): is not the private key of the first certificate in ` +
        `GRPC_TLS_CERT_FILE (${live.cert})`,
    );
    expect(grpcWarning).toContain('"level":"warn"');
    for (const port of ['grpc', 'http']) {
      expect(await sample(RELOADS, { port, outcome: 'refused' })).toBe(1);
      expect(await sample(EXPIRY, { port })).toBe(notAfterSeconds(renewed.cert));
      expect(await sample(FILES_REFUSED, { port })).toBe(1);
    }

    // The same refused files, read again: no second warning, no second count, still refused.
    expect(stack.settle.reloadTls()).toEqual({ grpc: 'unchanged', http: 'unchanged' });
    expect(warnings()).toHaveLength(2);
    expect(await sample(RELOADS, { port: 'grpc', outcome: 'refused' })).toBe(1);
    expect(await sample(FILES_REFUSED, { port: 'grpc' })).toBe(1);

    // Fixed files are applied at the next read.
    replaceFile(live.key, certs.serverKey);
    replaceFile(live.cert, certs.serverCert);
    expect(stack.settle.reloadTls()).toEqual({ grpc: 'applied', http: 'applied' });
    expect(await servedSerial('grpc')).toBe(serialOf(certs.serverCert));
    expect(await sample(RELOADS, { port: 'http', outcome: 'applied' })).toBe(2);
    for (const port of ['grpc', 'http']) expect(await sample(FILES_REFUSED, { port })).toBe(0);
  });

  it('serves a replaced client CA to new handshakes: clients of the new CA in, of the old out', async () => {
    const otherClient = { cert: certs.otherClientCert, key: certs.otherClientKey };
    await grpcReady();
    await expect(grpcReady(otherClient, 1_000)).rejects.toThrow();

    replaceFile(live.clientCa, certs.otherCaCert);
    expect(stack.settle.reloadTls()).toEqual({ grpc: 'applied', http: 'unchanged' });
    await grpcReady(otherClient);
    await expect(grpcReady(undefined, 1_000)).rejects.toThrow();

    replaceFile(live.clientCa, certs.caCert);
    expect(stack.settle.reloadTls()).toEqual({ grpc: 'applied', http: 'unchanged' });
    await grpcReady();
  });
});

/**
 * A second node on the stack (its database and streams) serving copies of the server's files,
 * `name`.pem and `name`.key, on ports of its own, with `env` on top.
 */
async function secondNode(name: string, env: Record<string, string>) {
  const files = copyOfServerFiles(name);
  const [grpcPort, httpPort] = await Promise.all([freePort(), freePort()]);
  return {
    files,
    ports: { grpcPort, httpPort },
    env: {
      ...stack.env,
      SETTLE_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      SETTLE_HTTP_ADDR: `127.0.0.1:${httpPort}`,
      GRPC_TLS_CERT_FILE: files.cert,
      GRPC_TLS_KEY_FILE: files.key,
      // The original, never replaced: the tests above replace live.clientCa.
      GRPC_TLS_CLIENT_CA_FILE: certs.caCert,
      HTTP_TLS_CERT_FILE: files.cert,
      HTTP_TLS_KEY_FILE: files.key,
      ...env,
    },
  };
}

describe('reading the TLS files again on its timer and on SIGHUP', () => {
  it('applies renewed files every TLS_RELOAD_INTERVAL_S by itself', async () => {
    const { files, env } = await secondNode('timer', { TLS_RELOAD_INTERVAL_S: '1' });
    const node = await startSettle(loadConfig(env), { nodeName: 'test-node-timer' });
    const checks = async () => {
      const body = (await node.metrics.render()).body;
      const read = (port: 'grpc' | 'http') => {
        const checked = metricSample(body, FILE_CHECKS, { port });
        if (checked === undefined) throw new Error(`no ${FILE_CHECKS} sample for the ${port} port`);
        return checked;
      };
      return { grpc: read('grpc'), http: read('http') };
    };
    try {
      const checksAtStart = await checks();
      const startedMs = performance.now();
      // Both TLS ports' reload series exist from 0.
      const body = (await node.metrics.render()).body;
      for (const port of ['grpc', 'http'] as const) {
        for (const outcome of ['applied', 'refused'] as const) {
          expect(metricSample(body, RELOADS, { port, outcome }), `${port} ${outcome}`).toBe(0);
        }
      }
      expect(await servedSerial('grpc', node)).toBe(serialOf(certs.serverCert));
      renew(files);
      // A read between the two renames sees a pair that does not match: refused, then applied at
      // the next read, so two intervals and some slack.
      for (const port of ['grpc', 'http'] as const) {
        await waitFor(async () => (await servedSerial(port, node)) === serialOf(renewed.cert), {
          timeoutMs: 5_000,
          intervalMs: 100,
          what: `the renewed certificate on the ${port} port`,
        });
      }
      // About one read a second of each port's files, not more: an interval taken in the wrong
      // unit (ms) reads them a thousand times a second, half of it twice a second, and both still
      // serve the renewed files above. Over at least 3 s, at most one read per started second
      // and one more, which a node under load does not pass (a late timer reads less often,
      // never more: setInterval does not catch up).
      await sleep(Math.max(0, CHECK_WINDOW_MS - (performance.now() - startedMs)));
      const now = await checks();
      const seconds = (performance.now() - startedMs) / 1_000;
      for (const port of ['grpc', 'http'] as const) {
        const checked = now[port] - checksAtStart[port];
        const what = `${checked} reads of the ${port} port's files in ${seconds.toFixed(1)} s`;
        expect(checked, what).toBeGreaterThanOrEqual(1);
        expect(checked, what).toBeLessThanOrEqual(Math.ceil(seconds) + 1);
      }
    } finally {
      await node.stop();
    }
  });

  it('applies renewed files on SIGHUP to src/main.ts, which goes on serving', async () => {
    const { files, ports, env } = await secondNode('hangup', {
      // Only the signal may read the files again here.
      TLS_RELOAD_INTERVAL_S: '86400',
      LOG_LEVEL: 'info',
    });
    const node = startMain(env);
    children.add(node);
    try {
      await node.waitForLine(/^Settle is up: /);
      expect(await servedSerial('grpc', ports)).toBe(serialOf(certs.serverCert));
      renew(files);
      node.child.kill('SIGHUP');
      // Each fails at once, with the node's output, should the signal end the node.
      await node.waitForLine(/"msg":"SIGHUP received: reading the TLS files again"/, 5_000);
      await node.waitForLine(/"msg":"HTTP port: new TLS files applied/, 5_000);
      expect(await servedSerial('grpc', ports)).toBe(serialOf(renewed.cert));
      expect(await servedSerial('http', ports)).toBe(serialOf(renewed.cert));

      const socket = await connectTls(ports.httpPort, 'http/1.1');
      try {
        expect(await getOver(socket, '/healthz')).toMatch(/^HTTP\/1\.1 200 /);
      } finally {
        socket.destroy();
      }
      expect(node.child.exitCode).toBeNull();
      node.child.kill('SIGTERM');
      expect(await node.exited).toEqual({ code: 0, signal: null });
    } finally {
      node.child.kill('SIGKILL');
      // The stack drops the database and streams the node shares once it is gone.
      await node.exited;
    }
    // Its own waits: 25 s for the start, 5 s for each line and connection, the stop's grace.
  }, 90_000);
});
