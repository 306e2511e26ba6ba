/**
 * Reads a node's TLS files again while it runs, so a renewed certificate (cert-manager, ACME: a
 * few days to 90) is served without a restart. Every TLS_RELOAD_INTERVAL_S, and on SIGHUP, each
 * TLS port's files are read and hashed; files that differ from what the port serves pass the same
 * checks as at start (src/tls.ts: PEM that parses, a key that is the certificate's and is not
 * encrypted, a context OpenSSL accepts) plus two more, a certificate not already expired and one
 * already valid (give or take NOT_BEFORE_AHEAD_MS_MAX), and only then reach the port: new
 * handshakes use them, open connections keep their session.
 *
 * Files that fail a check are refused as a whole: the port keeps serving what it served, and a
 * warn line names the settings and the problems, once per change rather than once per read (the
 * hash of the refused files is kept), while a gauge says they are refused for as long as they
 * stay (an alert on the count would end with its window). Renewal tools write each file to a
 * temporary name and rename it, so a read never sees half a file, but a read between the renames
 * of the certificate and of its key sees a pair that does not match: refused once, then applied
 * at the next read.
 * Whether a port serves TLS, and whether it requires client certificates, is the configuration's
 * and does not change; the client CA's contents are read again like the rest.
 */
import type { Config } from './config.js';
import type { Logger } from './observability/logger.js';
import type { Metrics } from './observability/metrics.js';
import {
  NOT_BEFORE_AHEAD_MS_MAX,
  readPortTls,
  TLS_SETTINGS,
  type PortTls,
  type ServerTls,
  type TlsPort,
} from './tls.js';

/** What one read of a port's files came to. */
export const TLS_RELOAD_OUTCOME = {
  /** The files hold what the port serves, or what was refused already. */
  UNCHANGED: 'unchanged',
  APPLIED: 'applied',
  REFUSED: 'refused',
} as const;
export type TlsReloadOutcome = (typeof TLS_RELOAD_OUTCOME)[keyof typeof TLS_RELOAD_OUTCOME];

const PORT_LABELS: Readonly<Record<TlsPort, string>> = { grpc: 'gRPC', http: 'HTTP' };

export type TlsReloaderOptions = Readonly<{
  config: Config;
  /** What each port serves now, as read at start; a plaintext port is never read. */
  tls: ServerTls;
  /**
   * Serves checked files to a TLS port's new handshakes. A throw (TLS refusing them after all)
   * refuses them as a failed check does.
   */
  apply: Readonly<Record<TlsPort, ((tls: PortTls) => void) | undefined>>;
  logger: Pick<Logger, 'info' | 'warn'>;
  metrics: Pick<Metrics, 'tlsCertificate' | 'tlsFileChecks' | 'tlsReload' | 'tlsFilesRefused'>;
  now?: () => Date;
}>;

type PortState = {
  /** What the port serves. */
  serving: PortTls;
  /** The hash of the files as last read; undefined until the first read after start. */
  fingerprint: string | undefined;
  /**
   * When the files as last read, refused as not yet valid, come within NOT_BEFORE_AHEAD_MS_MAX
   * of their notBefore: from then on they are checked again, though unchanged.
   */
  recheckAt: Date | undefined;
};

export class TlsReloader {
  readonly #options: TlsReloaderOptions;
  readonly #ports = new Map<TlsPort, PortState>();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: TlsReloaderOptions) {
    this.#options = options;
    for (const port of Object.keys(TLS_SETTINGS) as TlsPort[]) {
      const serving = options.tls[port];
      if (serving === undefined) continue;
      this.#ports.set(port, { serving, fingerprint: undefined, recheckAt: undefined });
      options.metrics.tlsCertificate({ port, validTo: serving.validTo });
      // At start the files were read and served, or the node did not start.
      options.metrics.tlsFilesRefused({ port, refused: false });
      options.metrics.tlsFileChecks({ port, count: 0 });
      for (const outcome of [TLS_RELOAD_OUTCOME.APPLIED, TLS_RELOAD_OUTCOME.REFUSED]) {
        options.metrics.tlsReload({ port, outcome, count: 0 });
      }
    }
  }

  /** What each TLS port serves now. */
  serving(port: TlsPort): PortTls | undefined {
    return this.#ports.get(port)?.serving;
  }

  /** Reads every TLS port's files now, and applies or refuses what changed; never throws. */
  reload(): Partial<Record<TlsPort, TlsReloadOutcome>> {
    const outcomes: Partial<Record<TlsPort, TlsReloadOutcome>> = {};
    for (const [port, state] of this.#ports) outcomes[port] = this.#reloadPort(port, state);
    return outcomes;
  }

  /** Reads the files every `intervalMs` until stop(); the timer never keeps the process alive. */
  start(intervalMs: number): void {
    if (this.#timer !== undefined || this.#ports.size === 0) return;
    this.#timer = setInterval(() => this.reload(), intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #reloadPort(port: TlsPort, state: PortState): TlsReloadOutcome {
    const { config, apply, logger, metrics } = this.#options;
    const read = readPortTls(config, port);
    // Counted whatever the read finds: how often the files are read says the timer runs, and
    // at what interval.
    metrics.tlsFileChecks({ port, count: 1 });
    const now = (this.#options.now ?? (() => new Date()))();
    // The configuration names the files: a TLS port's read is never undefined.
    if (read === undefined) return TLS_RELOAD_OUTCOME.UNCHANGED;
    if (
      read.fingerprint === state.fingerprint &&
      (state.recheckAt === undefined || state.recheckAt.getTime() > now.getTime())
    ) {
      return TLS_RELOAD_OUTCOME.UNCHANGED;
    }
    state.fingerprint = read.fingerprint;
    state.recheckAt = undefined;
    if (read.tls !== undefined && sameFiles(read.tls, state.serving)) {
      // Refused files put back as they were: the port serves what is on disk again.
      metrics.tlsFilesRefused({ port, refused: false });
      return TLS_RELOAD_OUTCOME.UNCHANGED;
    }
    const problems = read.tls === undefined ? [...read.problems] : [];
    if (read.tls !== undefined && read.tls.validTo.getTime() <= now.getTime()) {
      problems.push(
        `${TLS_SETTINGS[port].cert}: the certificate expired at ${read.tls.validTo.toISOString()}`,
      );
    }
    if (
      read.tls !== undefined &&
      read.tls.validFrom.getTime() - NOT_BEFORE_AHEAD_MS_MAX > now.getTime()
    ) {
      // A later certificate waits for its time (NOT_BEFORE_AHEAD_MS_MAX): time alone makes it
      // valid, so unlike other refused files, these are checked again then.
      state.recheckAt = new Date(read.tls.validFrom.getTime() - NOT_BEFORE_AHEAD_MS_MAX);
      problems.push(
        `${TLS_SETTINGS[port].cert}: the certificate is not valid before ` +
          `${read.tls.validFrom.toISOString()}, more than 5 minutes ahead of this node's clock ` +
          `(${now.toISOString()}); if the clock is right, the files are checked again then`,
      );
    }
    if (read.tls !== undefined && problems.length === 0) {
      try {
        apply[port]?.(read.tls);
      } catch (error) {
        problems.push(
          `${TLS_SETTINGS[port].cert}, ${TLS_SETTINGS[port].key}: refused by TLS ` +
            `(${error instanceof Error ? error.message : String(error)})`,
        );
      }
    }
    const label = PORT_LABELS[port];
    if (read.tls === undefined || problems.length > 0) {
      metrics.tlsReload({ port, outcome: TLS_RELOAD_OUTCOME.REFUSED });
      metrics.tlsFilesRefused({ port, refused: true });
      logger.warn(
        { port, problems },
        `${label} port: its TLS files changed but are refused, so it goes on serving the ` +
          `certificate ${state.serving.subject} (valid until ` +
          `${state.serving.validTo.toISOString()}): ${problems.join('; ')}`,
      );
      return TLS_RELOAD_OUTCOME.REFUSED;
    }
    state.serving = read.tls;
    metrics.tlsReload({ port, outcome: TLS_RELOAD_OUTCOME.APPLIED });
    metrics.tlsFilesRefused({ port, refused: false });
    metrics.tlsCertificate({ port, validTo: read.tls.validTo });
    logger.info(
      { port },
      `${label} port: new TLS files applied; new connections get the certificate ` +
        `${read.tls.subject} (valid until ${read.tls.validTo.toISOString()})`,
    );
    return TLS_RELOAD_OUTCOME.APPLIED;
  }
}

function sameFiles(a: PortTls, b: PortTls): boolean {
  const sameCa =
    a.clientCa === undefined || b.clientCa === undefined
      ? a.clientCa === b.clientCa
      : a.clientCa.equals(b.clientCa);
  return sameCa && a.cert.equals(b.cert) && a.key.equals(b.key);
}
