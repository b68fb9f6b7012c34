import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { type Dispatcher, EnvHttpProxyAgent } from 'undici';
import type { UpstreamConfig } from '../config/schema.ts';

/**
 * One undici dispatcher per upstream. It reaches the registry, its token realm and the CDN hosts
 * its redirects point to, all through the same outbound proxy rules: the upstream's own `proxy`,
 * else HTTP_PROXY / HTTPS_PROXY / NO_PROXY from the environment (EnvHttpProxyAgent reads both cases).
 * Plain-HTTP targets are forwarded in absolute form, HTTPS ones tunnelled with CONNECT.
 */
export function createDispatcher(u: UpstreamConfig): Dispatcher {
  // A configured CA is added to the system roots: CDN redirects still need the public ones.
  const ca = u.ca ? [...rootCertificates, readFileSync(u.ca, 'utf8')] : undefined;
  const tls = { ...(ca ? { ca } : {}), rejectUnauthorized: !u.insecureSkipVerify };
  return new EnvHttpProxyAgent({
    ...(u.proxy ? { httpProxy: u.proxy, httpsProxy: u.proxy } : {}),
    connect: { ...tls, timeout: u.timeouts.connect },
    // Through a proxy, undici 8 takes the connect timeout from here (`connect` is the tunnel's own).
    connectTimeout: u.timeouts.connect,
    requestTls: tls,
    proxyTunnel: false,
    // undici 8 would negotiate HTTP/2 with TLS upstreams that offer it (ALPN); berth stays on HTTP/1.1,
    // what it was built and measured on: `connections` bounds concurrent upstream transfers, and each
    // fill's backpressure holds its own TCP connection rather than one stream of a shared one.
    allowH2: false,
    headersTimeout: u.timeouts.header,
    bodyTimeout: u.timeouts.idle,
    keepAliveTimeout: 30_000,
    connections: 16,
  });
}
