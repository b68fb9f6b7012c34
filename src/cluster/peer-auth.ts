import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * How far a peer request's time may be from ours. Replicas of one site keep time by NTP; a request seen
 * by someone else can be replayed this long at most, and only to the origin it was signed for.
 */
const SKEW_MS = 5 * 60_000;
const FORMAT = /^BerthPeer t=(\d{1,16}), sig=([0-9a-f]{64})$/;

/**
 * What a peer request signs: method, the origin it is sent to, path and query, Range and time. The origin
 * matters: peer URLs come from lease rows in the shared database, so a replica may be sent to a host that
 * is no replica. That host learns no secret, and what it got is good for its own origin only.
 */
function canonical(method: string, url: URL, range: string | undefined, t: string): string {
  return [method.toUpperCase(), url.origin, `${url.pathname}${url.search}`, range ?? '', t].join('\n');
}

const mac = (secret: string, text: string) => createHmac('sha256', secret).update(text).digest();

/**
 * The Authorization header of a request to a peer's internal endpoint (src/http/cluster.ts): an HMAC with
 * `cluster.secret` of the request, never the secret itself.
 */
export function signPeerRequest(secret: string, method: string, url: URL, range: string | undefined, now = Date.now()): string {
  const t = String(now);
  return `BerthPeer t=${t}, sig=${mac(secret, canonical(method, url, range, t)).toString('hex')}`;
}

/** Why a peer request is refused, or undefined when it was signed with our secret for this very request. */
export function refusePeerRequest(secret: string, header: string, method: string, url: URL, range: string | undefined, now = Date.now()): string | undefined {
  const m = FORMAT.exec(header);
  if (!m) return header ? 'not a BerthPeer signature' : 'no Authorization';
  const off = now - Number(m[1]);
  if (Math.abs(off) > SKEW_MS) return `signed ${Math.round(off / 1000)} s from our clock (at most ${SKEW_MS / 1000} s)`;
  if (!timingSafeEqual(mac(secret, canonical(method, url, range, m[1]!)), Buffer.from(m[2]!, 'hex')))
    return 'signature does not match (cluster.secret differs, or the request was made for another host)';
  return undefined;
}
