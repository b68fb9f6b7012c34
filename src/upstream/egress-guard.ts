import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import { RegistryError } from '../oci/errors.ts';

/**
 * berth is not an open proxy, and an upstream must not be able to point it at the site's own network:
 * a token realm or a redirect (the only URLs an upstream chooses) may not go to a private, loopback or
 * link-local address, unless that origin is itself a configured upstream.
 */
const PRIVATE = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
] as const)
  PRIVATE.addSubnet(net, bits, 'ipv4');
// IPv4-mapped (::ffff:0:0/96), IPv4-compatible (::/96) and NAT64 (64:ff9b::/96) addresses can carry any IPv4
// address, private ones included: none of them is a registry's address, so all are refused.
for (const [net, bits] of [
  ['::', 96],
  ['::ffff:0:0', 96],
  ['64:ff9b::', 96],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
] as const) {
  PRIVATE.addSubnet(net, bits, 'ipv6');
}

export function isPrivateAddress(ip: string): boolean {
  const v = isIP(ip);
  if (v === 0) return false;
  return PRIVATE.check(ip, v === 4 ? 'ipv4' : 'ipv6');
}

export class EgressGuard {
  constructor(private readonly allowedOrigins: ReadonlySet<string>) {}

  /** Throws when `url` (chosen by an upstream, for `purpose`) targets an address berth must not reach. */
  async check(url: URL, purpose: string): Promise<void> {
    if (this.allowedOrigins.has(url.origin)) return;
    const host = url.hostname.replace(/^\[|\]$/g, '');
    let addresses: string[];
    if (isIP(host)) addresses = [host];
    else if (host === 'localhost' || host.endsWith('.localhost')) addresses = ['127.0.0.1'];
    else {
      // Unresolvable here (behind a proxy, say): the proxy decides; nothing private is reached from berth itself.
      addresses = (await lookup(host, { all: true }).catch(() => [])).map((a) => a.address);
    }
    const bad = addresses.find(isPrivateAddress);
    if (bad) {
      throw new RegistryError('UPSTREAM_ERROR', `refused ${purpose} to ${url.origin}: it resolves to the private address ${bad}, which is not a configured upstream`);
    }
  }
}
