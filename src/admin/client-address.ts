/**
 * Who sends a request, for the admin credential's bound on wrong tokens (auth.ts, WrongTokenLimit)
 * and its log lines: the one place that answers it, for the panel (HTTP) and AdminService (gRPC)
 * alike. By default the client is the TCP peer, the address the node's socket sees. With
 * TRUSTED_PROXIES, a peer that is one of those proxies is taken at its word: the client is read
 * from the `X-Forwarded-For` it sends (HTTP header or gRPC metadata), walked from the right and
 * skipping the trusted proxies' own entries, the rule nginx's real_ip_recursive and Express's
 * proxy-addr follow. Entries left of the first untrusted one are never read: the client wrote them
 * and could pick any address. A peer that is no trusted proxy is never asked, whatever it sends.
 */
import { BlockList, isIP, isIPv4, isIPv6 } from 'node:net';

/**
 * Who a wrong credential is counted against: the client's address, from clientOfAddress (as
 * ClientResolver resolves it, or as a socket sees it). An IPv4 address (an IPv4-mapped IPv6 one
 * too: `::ffff:1.2.3.4` is 1.2.3.4), an IPv6 /64 (`2001:db8:0:7::/64`: one host chooses freely
 * among the 2^64 addresses of its network, SLAAC privacy addresses rotate within it, so counting
 * per address would let it rotate past the bound), or `unknown` for a socket without an IP
 * address (all such share one).
 */
export type ClientKey = string & { readonly clientKeyBrand: never };

const UNKNOWN_CLIENT = 'unknown' as ClientKey;

/** The client of an address (Node writes a socket's IPv6 without brackets or port). */
export function clientOfAddress(address: string | undefined): ClientKey {
  // A link-local address's zone (`fe80::1%eth0`) names our interface, not the client.
  const bare = address?.replace(/%.*$/, '') ?? '';
  if (isIPv4(bare)) return bare as ClientKey;
  if (!isIPv6(bare)) return UNKNOWN_CLIENT;
  const groups = ipv6Groups(bare);
  const [, , , , , mapped = 0, high = 0, low = 0] = groups;
  if (groups.slice(0, 5).every((group) => group === 0) && mapped === 0xffff) {
    return `${high >> 8}.${high & 0xff}.${low >> 8}.${low & 0xff}` as ClientKey;
  }
  return `${groups
    .slice(0, 4)
    .map((group) => group.toString(16))
    .join(':')}::/64` as ClientKey;
}

/** The client behind a gRPC call's `getPeer()` (addressOfPeer), forwarded headers unread. */
export function clientOfPeer(peer: string): ClientKey {
  return clientOfAddress(addressOfPeer(peer));
}

/** The eight 16-bit groups of a valid IPv6 address, `::` and a dotted IPv4 tail expanded. */
function ipv6Groups(address: string): number[] {
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(address);
  const text =
    dotted === null
      ? address
      : address.slice(0, dotted.index) +
        [(Number(dotted[1]) << 8) | Number(dotted[2]), (Number(dotted[3]) << 8) | Number(dotted[4])]
          .map((group) => group.toString(16))
          .join(':');
  const parse = (part: string) =>
    part === '' ? [] : part.split(':').map((group) => Number.parseInt(group, 16));
  const [head = '', tail] = text.split('::');
  if (tail === undefined) return parse(head);
  const [before, after] = [parse(head), parse(tail)];
  return [...before, ...Array<number>(8 - before.length - after.length).fill(0), ...after];
}

/** Entries TRUSTED_PROXIES may list (addresses and CIDR ranges). */
export const TRUSTED_PROXIES_MAX = 64;
/**
 * Entries of `X-Forwarded-For` read from its right end at most: the trusted proxies a request
 * may have passed one behind the other, plus its client. A longer walk is taken as malformed.
 */
export const FORWARDED_HOPS_MAX = 16;

/** How a client was resolved: its peer, an X-Forwarded-For entry, or its peer after a bad one. */
export const CLIENT_SOURCE = {
  /** The TCP peer: not a trusted proxy, or one that sent no X-Forwarded-For. */
  peer: 'peer',
  /** An X-Forwarded-For entry, sent by a trusted proxy. */
  forwarded: 'forwarded',
  /** The TCP peer, a trusted proxy whose X-Forwarded-For could not be read (counted). */
  malformed: 'malformed',
} as const;
export type ClientSource = (typeof CLIENT_SOURCE)[keyof typeof CLIENT_SOURCE];

export type ResolvedClient = Readonly<{
  /** Who the bound counts against: an IPv4 address or an IPv6 /64 (clientOfAddress). */
  key: ClientKey;
  source: ClientSource;
}>;

/** Where the request came in, for the count of malformed headers. */
export type ClientSurface = 'http' | 'grpc';

type Range = Readonly<{ address: string; prefix: number; family: 'ipv4' | 'ipv6' }>;

/**
 * A TRUSTED_PROXIES entry as a range, or why it is not one: an IPv4 or IPv6 address, or a CIDR
 * range of either (`10.0.0.0/8`, `2001:db8::/32`). A range of everything (`/0`) is refused: every
 * client would then be trusted to name its own address.
 */
export function trustedProxyRange(entry: string): Range | string {
  const slash = entry.indexOf('/');
  const address = slash < 0 ? entry : entry.slice(0, slash);
  const prefixText = slash < 0 ? undefined : entry.slice(slash + 1);
  const version = isIP(address);
  if (version === 0 || address.includes('%')) {
    return (
      `"${entry}" is not an IP address or CIDR range ` +
      '(for example 10.0.0.7, 10.0.0.0/8 or 2001:db8::/32)'
    );
  }
  const bits = version === 4 ? 32 : 128;
  if (prefixText === undefined) {
    return { address, prefix: bits, family: version === 4 ? 'ipv4' : 'ipv6' };
  }
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > bits) {
    return `"${entry}": the prefix length must be 1-${bits} for an IPv${version} range`;
  }
  if (Number(prefixText) === 0) {
    return (
      `"${entry}" trusts every address, so any client could pick its own by sending ` +
      'X-Forwarded-For; list only your proxies'
    );
  }
  return { address, prefix: Number(prefixText), family: version === 4 ? 'ipv4' : 'ipv6' };
}

/**
 * An address in a form a peer or a forwarded entry may take, bare: IPv4, IPv6, `[IPv6]`, with a
 * port after IPv4 or `[IPv6]` (some proxies add the client's port). A zone (`%eth0`) names an
 * interface of the machine that wrote it, not the client, and is dropped. Undefined if none.
 */
function bareAddress(text: string): string | undefined {
  const withPort =
    /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text) ?? /^(\d+\.\d+\.\d+\.\d+):(\d{1,5})$/.exec(text);
  if (withPort !== null && Number(withPort[2] ?? 0) > 65_535) return undefined;
  const address = (withPort?.[1] ?? text).replace(/%.*$/, '');
  return isIP(address) === 0 ? undefined : address;
}

/**
 * The address behind a gRPC call's `getPeer()`: grpc-js (1.14) answers `<remoteAddress>:<port>`
 * with IPv6 unbracketed (`::1:50412`), or `unknown`; `[::1]:50412` is read too. The port is
 * dropped only when what remains is an address. Undefined for a peer without one.
 */
export function addressOfPeer(peer: string): string | undefined {
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(peer);
  if (bracketed !== null) return bareAddress(`[${bracketed[1] ?? ''}]`);
  const withPort = /^(.+):\d+$/.exec(peer)?.[1];
  if (withPort !== undefined && isIP(withPort.replace(/%.*$/, '')) !== 0) {
    return withPort.replace(/%.*$/, '');
  }
  return bareAddress(peer);
}

export type ClientResolverOptions = Readonly<{
  /** TRUSTED_PROXIES: addresses and CIDR ranges, each valid for trustedProxyRange. */
  trustedProxies?: readonly string[];
  /** Told of every X-Forwarded-For from a trusted proxy that could not be read (a metric). */
  onMalformed?: (surface: ClientSurface) => void;
}>;

/**
 * The node's one answer to "who sent this request?" (module comment). Without trusted proxies it
 * answers the peer, as the node always did; headers are then not even looked at.
 */
export class ClientResolver {
  readonly #trusted = new BlockList();
  readonly #enabled: boolean;
  readonly #onMalformed: (surface: ClientSurface) => void;

  constructor(options: ClientResolverOptions = {}) {
    const entries = options.trustedProxies ?? [];
    if (entries.length > TRUSTED_PROXIES_MAX) {
      throw new Error(`at most ${TRUSTED_PROXIES_MAX} trusted proxies, not ${entries.length}`);
    }
    for (const entry of entries) {
      const range = trustedProxyRange(entry);
      if (typeof range === 'string') throw new Error(`trusted proxy ${range}`);
      this.#trusted.addSubnet(range.address, range.prefix, range.family);
    }
    this.#enabled = entries.length > 0;
    this.#onMalformed = options.onMalformed ?? (() => {});
  }

  /** Whether `address` (bare) is a trusted proxy; an IPv4-mapped IPv6 address is its IPv4. */
  isTrusted(address: string): boolean {
    if (!this.#enabled) return false;
    return this.#trusted.check(address, isIPv4(address) ? 'ipv4' : 'ipv6');
  }

  /**
   * The client of an HTTP request: `socketAddress` is `req.socket.remoteAddress`, `forwardedFor`
   * the request's `x-forwarded-for` header (Node joins repeated ones with commas).
   */
  ofHttp(
    socketAddress: string | undefined,
    forwardedFor: string | readonly string[] | undefined,
  ): ResolvedClient {
    return this.#resolve(bareAddress(socketAddress ?? ''), forwardedFor, 'http');
  }

  /**
   * The client of a gRPC call: `peer` is `call.getPeer()`, `forwardedFor` the values of its
   * `x-forwarded-for` metadata (`metadata.get('x-forwarded-for')`), in the order they came.
   */
  ofGrpc(peer: string, forwardedFor: ReadonlyArray<string | Buffer>): ResolvedClient {
    const values = forwardedFor.filter((value): value is string => typeof value === 'string');
    return this.#resolve(addressOfPeer(peer), values.length === 0 ? undefined : values, 'grpc');
  }

  #resolve(
    peer: string | undefined,
    forwardedFor: string | readonly string[] | undefined,
    surface: ClientSurface,
  ): ResolvedClient {
    const asPeer = (source: ClientSource) => ({ key: clientOfAddress(peer), source });
    if (peer === undefined || forwardedFor === undefined || !this.isTrusted(peer)) {
      return asPeer(CLIENT_SOURCE.peer);
    }
    const header = typeof forwardedFor === 'string' ? forwardedFor : forwardedFor.join(',');
    const client = this.#rightmostUntrusted(header);
    if (client === undefined) {
      this.#onMalformed(surface);
      return asPeer(CLIENT_SOURCE.malformed);
    }
    return { key: clientOfAddress(client), source: CLIENT_SOURCE.forwarded };
  }

  /**
   * The rightmost entry of `header` that is no trusted proxy; the leftmost entry if all of them
   * are (a request from a trusted host itself). Undefined when an entry read on the way is no
   * address, or the walk passes FORWARDED_HOPS_MAX entries: the peer then stands for the client.
   */
  #rightmostUntrusted(header: string): string | undefined {
    const entries = header.split(',');
    let last: string | undefined;
    for (let hop = 0; hop < FORWARDED_HOPS_MAX && hop < entries.length; hop += 1) {
      const address = bareAddress((entries[entries.length - 1 - hop] ?? '').trim());
      if (address === undefined) return undefined;
      if (!this.isTrusted(address)) return address;
      last = address;
    }
    return entries.length <= FORWARDED_HOPS_MAX ? last : undefined;
  }
}
