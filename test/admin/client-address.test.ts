/**
 * Goal: ClientResolver answers who sent a request by the standard rule, on every form an address
 * takes: only a trusted proxy's X-Forwarded-For is read (an IPv4-mapped peer is its IPv4), from
 * the right, trusted hops skipped, the leftmost entry when every one is trusted; entries may carry
 * a port or brackets; repeated headers (gRPC metadata values) are read in order as one list; an
 * entry that is no address, or a chain longer than FORWARDED_HOPS_MAX, puts the peer in the
 * client's place and is reported once. Method: the resolver alone, with fixed inputs (the node's
 * use of it over HTTP and gRPC is test/admin/trusted-proxies.test.ts).
 */
import { describe, expect, it } from 'vitest';
import {
  ClientResolver,
  FORWARDED_HOPS_MAX,
  addressOfPeer,
} from '../../src/admin/client-address.js';

function resolver() {
  const malformed: string[] = [];
  const clients = new ClientResolver({
    trustedProxies: ['127.0.0.1', '10.0.0.0/8', '2001:db8:aaaa::/48'],
    onMalformed: (surface) => malformed.push(surface),
  });
  return { clients, malformed };
}

describe('ClientResolver', () => {
  it('reads X-Forwarded-For only from a trusted peer, IPv4-mapped or not', () => {
    const { clients, malformed } = resolver();
    expect(clients.ofHttp('127.0.0.1', '203.0.113.7')).toEqual({
      key: '203.0.113.7',
      source: 'forwarded',
    });
    expect(clients.ofHttp('::ffff:127.0.0.1', '203.0.113.7').key).toBe('203.0.113.7');
    expect(clients.ofHttp('2001:db8:aaaa:1::9', '203.0.113.7').key).toBe('203.0.113.7');
    expect(clients.ofHttp('127.0.0.2', '203.0.113.7')).toEqual({
      key: '127.0.0.2',
      source: 'peer',
    });
    expect(clients.ofHttp('127.0.0.1', undefined)).toEqual({ key: '127.0.0.1', source: 'peer' });
    expect(clients.ofHttp(undefined, '203.0.113.7')).toEqual({ key: 'unknown', source: 'peer' });
    expect(malformed).toEqual([]);
  });

  it('walks from the right past trusted hops; the leftmost when all are trusted', () => {
    const { clients } = resolver();
    expect(clients.ofHttp('127.0.0.1', '198.51.100.1, 203.0.113.8, 10.1.2.3').key).toBe(
      '203.0.113.8',
    );
    expect(clients.ofHttp('127.0.0.1', 'garbage, 203.0.113.8').key).toBe('203.0.113.8');
    expect(clients.ofHttp('127.0.0.1', '10.9.9.9,10.1.2.3').key).toBe('10.9.9.9');
    // Node joins repeated headers with commas; gRPC metadata keeps them apart, in order.
    expect(clients.ofHttp('127.0.0.1', ['203.0.113.1', '10.1.2.3']).key).toBe('203.0.113.1');
    expect(clients.ofGrpc('127.0.0.1:50412', ['203.0.113.1', '10.1.2.3']).key).toBe('203.0.113.1');
    expect(clients.ofGrpc('::ffff:127.0.0.1:50412', ['203.0.113.2']).key).toBe('203.0.113.2');
    expect(clients.ofGrpc('127.0.0.2:50412', ['203.0.113.2']).key).toBe('127.0.0.2');
    expect(clients.ofGrpc('127.0.0.1:50412', [])).toEqual({ key: '127.0.0.1', source: 'peer' });
  });

  it('reads entries with a port or brackets, and groups IPv6 by /64', () => {
    const { clients } = resolver();
    expect(clients.ofHttp('127.0.0.1', '203.0.113.9:1234').key).toBe('203.0.113.9');
    expect(clients.ofHttp('127.0.0.1', '[2001:db8:1:2::a]:443').key).toBe('2001:db8:1:2::/64');
    expect(clients.ofHttp('127.0.0.1', '[2001:db8:1:2::b]').key).toBe('2001:db8:1:2::/64');
    expect(clients.ofHttp('127.0.0.1', ' 2001:db8:1:2:ffff::c ').key).toBe('2001:db8:1:2::/64');
    expect(clients.ofHttp('127.0.0.1', '::ffff:203.0.113.3').key).toBe('203.0.113.3');
  });

  it('puts the peer in the place of a client whose header cannot be read, and says so', () => {
    const { clients, malformed } = resolver();
    const chain = (hops: number) => ['203.0.113.9', ...Array<string>(hops).fill('10.1.2.3')];
    for (const header of [
      'unknown',
      '',
      '203.0.113.9,,10.1.2.3',
      '203.0.113.9, 10.1.2.3:99999',
      '_hidden, 10.1.2.3',
      chain(FORWARDED_HOPS_MAX).join(','),
    ]) {
      expect(clients.ofHttp('127.0.0.1', header), header).toEqual({
        key: '127.0.0.1',
        source: 'malformed',
      });
    }
    expect(clients.ofGrpc('127.0.0.1:50412', ['not an address'])).toEqual({
      key: '127.0.0.1',
      source: 'malformed',
    });
    expect(malformed).toEqual(['http', 'http', 'http', 'http', 'http', 'http', 'grpc']);
    // One hop fewer is read to its end.
    expect(clients.ofHttp('127.0.0.1', chain(FORWARDED_HOPS_MAX - 1).join(',')).key).toBe(
      '203.0.113.9',
    );
  });

  it('reads nothing without trusted proxies', () => {
    const clients = new ClientResolver();
    expect(clients.isTrusted('127.0.0.1')).toBe(false);
    expect(clients.ofHttp('127.0.0.1', '203.0.113.7')).toEqual({
      key: '127.0.0.1',
      source: 'peer',
    });
  });

  it("reads grpc-js's peers", () => {
    expect(addressOfPeer('127.0.0.2:50412')).toBe('127.0.0.2');
    expect(addressOfPeer('::1:50412')).toBe('::1');
    expect(addressOfPeer('[2001:db8::1]:443')).toBe('2001:db8::1');
    expect(addressOfPeer('fe80::1%eth0:443')).toBe('fe80::1');
    expect(addressOfPeer('::1')).toBe('::1');
    expect(addressOfPeer('unknown')).toBeUndefined();
  });
});
