/**
 * Goal: TlsReloader applies changed TLS files only when they pass every check, and refuses the
 * rest once per change: a certificate already expired or not yet valid (more than 5 minutes
 * ahead, checked again when it is), files TLS refuses when applied, and a file that cannot be
 * read (gone mid-renewal) keep the certificate served, with one warning each and one count, and
 * are reported refused for as long as they stay on disk (what SettleTlsReloadRefused watches); a
 * plaintext port is never read, and every read of a TLS port's files is counted.
 * test/e2e/tls-reload.test.ts shows the ports themselves serving what it applies.
 * Method: loadConfig and a TlsReloader over throwaway files made with openssl, with a clock set
 * ahead or behind, a logger writing to memory, and recording stand-ins for the port and the
 * metrics.
 */
import { copyFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/observability/logger.js';
import { readServerTls, type PortTls } from '../src/tls.js';
import { TlsReloader } from '../src/tls-reload.js';
import {
  makeRenewedServerCertificate,
  makeTestCertificates,
  type TestCertificates,
} from './support/certificates.js';

let certs: TestCertificates;
let renewed: { cert: string; key: string };
let renewedAgain: { cert: string; key: string };

beforeAll(async () => {
  certs = await makeTestCertificates();
  renewed = await makeRenewedServerCertificate(certs, { name: 'renewed', days: 30 });
  renewedAgain = await makeRenewedServerCertificate(certs, { name: 'renewed-again', days: 30 });
});
afterAll(async () => {
  await certs?.remove();
});

function replaceFile(target: string, source: string): void {
  copyFileSync(source, `${target}.tmp`);
  renameSync(`${target}.tmp`, target);
}

/** A reloader of the HTTP port's files (`name`.pem, `name`.key), which start as `renewed`'s. */
function reloaderOf(name: string, options: { now: Date; applyThrows?: boolean }) {
  const live = {
    cert: path.join(certs.dir, `${name}.pem`),
    key: path.join(certs.dir, `${name}.key`),
  };
  copyFileSync(renewed.cert, live.cert);
  copyFileSync(renewed.key, live.key);
  const config = loadConfig({ HTTP_TLS_CERT_FILE: live.cert, HTTP_TLS_KEY_FILE: live.key });
  const applied: PortTls[] = [];
  const warnings: string[] = [];
  const logger = createLogger(
    { level: 'info', name: 'settle' },
    {
      write: (line) => {
        const entry = JSON.parse(line) as { level: string; msg: string };
        if (entry.level === 'warn') warnings.push(entry.msg);
      },
    },
  );
  const reloads: string[] = [];
  // settle_tls_files_refused, as the metrics would export it.
  const filesRefused: Record<string, boolean> = {};
  // settle_tls_file_checks_total, as the metrics would export it.
  const fileChecks: Record<string, number> = {};
  const reloader = new TlsReloader({
    config,
    tls: readServerTls(config),
    apply: {
      grpc: undefined,
      http: (tls) => {
        if (options.applyThrows === true) throw new Error('no suitable signature algorithm');
        applied.push(tls);
      },
    },
    logger,
    metrics: {
      tlsCertificate: () => undefined,
      tlsFileChecks: ({ port, count }) => {
        fileChecks[port] = (fileChecks[port] ?? 0) + count;
      },
      tlsReload: ({ port, outcome, count }) => {
        if (count !== 0) reloads.push(`${port} ${outcome}`);
      },
      tlsFilesRefused: ({ port, refused }) => {
        filesRefused[port] = refused;
      },
    },
    now: () => options.now,
  });
  return { live, reloader, applied, warnings, reloads, filesRefused, fileChecks };
}

const DAY_MS = 86_400_000;

describe('TlsReloader', () => {
  it('refuses a certificate that has already expired, once, and keeps the one it serves', () => {
    // Three days on, the test certificates (two days) have expired; the renewed one (30) has not.
    const { live, reloader, applied, warnings, reloads } = reloaderOf('expired', {
      now: new Date(Date.now() + 3 * DAY_MS),
    });
    replaceFile(live.cert, certs.serverCert);
    replaceFile(live.key, certs.serverKey);
    expect(reloader.reload()).toEqual({ http: 'refused' });
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(applied).toEqual([]);
    expect(reloads).toEqual(['http refused']);
    expect(warnings).toEqual([
      expect.stringMatching(
        /^HTTP port: its TLS files changed but are refused, so it goes on serving the certificate CN=localhost \(valid until .+\): HTTP_TLS_CERT_FILE: the certificate expired at /,
      ),
    ]);
  });

  it('refuses a certificate not valid for more than 5 minutes yet, and applies it when it is', () => {
    // Made just now, the test certificates are valid from now: an hour ahead of this clock.
    const clock = { now: new Date(Date.now() - 3_600_000) };
    const { live, reloader, applied, warnings, reloads, filesRefused } = reloaderOf(
      'not-yet',
      clock,
    );
    replaceFile(live.cert, certs.serverCert);
    replaceFile(live.key, certs.serverKey);
    expect(reloader.reload()).toEqual({ http: 'refused' });
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(applied).toEqual([]);
    expect(filesRefused).toEqual({ http: true });
    expect(warnings).toEqual([
      expect.stringMatching(
        /: HTTP_TLS_CERT_FILE: the certificate is not valid before \S+, more than 5 minutes ahead of this node's clock \(\S+\); if the clock is right, the files are checked again then$/,
      ),
    ]);
    // Within 5 minutes of its notBefore (a node's clock a little behind its CA's), unchanged
    // files are checked again and applied.
    clock.now = new Date(Date.now() - 120_000);
    expect(reloader.reload()).toEqual({ http: 'applied' });
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(applied.map((tls) => tls.subject)).toEqual(['CN=localhost']);
    expect(reloads).toEqual(['http refused', 'http applied']);
    expect(filesRefused).toEqual({ http: false });
    expect(warnings).toHaveLength(1);
  });

  it('refuses files TLS refuses when applied, and a file gone mid-renewal, each once', () => {
    const { live, reloader, warnings, reloads } = reloaderOf('throws', {
      now: new Date(),
      applyThrows: true,
    });
    replaceFile(live.cert, certs.serverCert);
    replaceFile(live.key, certs.serverKey);
    expect(reloader.reload()).toEqual({ http: 'refused' });
    expect(warnings.at(-1)).toContain(
      'HTTP_TLS_CERT_FILE, HTTP_TLS_KEY_FILE: refused by TLS (no suitable signature algorithm)',
    );
    rmSync(live.key);
    expect(reloader.reload()).toEqual({ http: 'refused' });
    expect(warnings.at(-1)).toContain(`HTTP_TLS_KEY_FILE: cannot read ${live.key} (no such file)`);
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(reloads).toEqual(['http refused', 'http refused']);
    expect(reloader.serving('http')?.cert).toEqual(
      readServerTls(
        loadConfig({ HTTP_TLS_CERT_FILE: renewed.cert, HTTP_TLS_KEY_FILE: renewed.key }),
      ).http?.cert,
    );
    expect(reloader.serving('grpc')).toBeUndefined();
  });

  it('says the files are refused for as long as they stay on disk, not once per change', () => {
    const { live, reloader, filesRefused } = reloaderOf('refused-gauge', {
      now: new Date(Date.now() + 3 * DAY_MS),
    });
    expect(filesRefused).toEqual({ http: false });
    const served = { cert: `${live.cert}.served`, key: `${live.key}.served` };
    copyFileSync(live.cert, served.cert);
    copyFileSync(live.key, served.key);
    replaceFile(live.cert, certs.serverCert);
    replaceFile(live.key, certs.serverKey);
    expect(reloader.reload()).toEqual({ http: 'refused' });
    // Read again unchanged: no second warning or count, but still refused.
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(filesRefused).toEqual({ http: true });
    // Put back as served: nothing to apply, and nothing refused any more.
    replaceFile(live.cert, served.cert);
    replaceFile(live.key, served.key);
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(filesRefused).toEqual({ http: false });
    // Refused again, then renewed properly: applied, and nothing refused.
    replaceFile(live.cert, certs.serverCert);
    replaceFile(live.key, certs.serverKey);
    expect(reloader.reload()).toEqual({ http: 'refused' });
    expect(filesRefused).toEqual({ http: true });
    replaceFile(live.cert, renewedAgain.cert);
    replaceFile(live.key, renewedAgain.key);
    expect(reloader.reload()).toEqual({ http: 'applied' });
    expect(filesRefused).toEqual({ http: false });
  });

  it('applies valid changed files, and nothing when they are the same; counts every read', () => {
    const { live, reloader, applied, reloads, filesRefused, fileChecks } = reloaderOf('valid', {
      now: new Date(),
    });
    // From 0 at start, for the TLS port only.
    expect(fileChecks).toEqual({ http: 0 });
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    replaceFile(live.cert, certs.serverCert);
    replaceFile(live.key, certs.serverKey);
    expect(reloader.reload()).toEqual({ http: 'applied' });
    expect(reloader.reload()).toEqual({ http: 'unchanged' });
    expect(applied.map((tls) => tls.subject)).toEqual(['CN=localhost']);
    expect(reloads).toEqual(['http applied']);
    expect(filesRefused).toEqual({ http: false });
    expect(fileChecks).toEqual({ http: 3 });
  });
});
