import { rootCertificates } from 'node:tls';
import { Agent, request } from 'undici';
import type { Digest } from '../oci/digest.ts';
import { IntegrityError } from '../oci/integrity.ts';
import type { SourceBody } from '../registry/fill/fill.ts';
import { blobFromResponse } from '../upstream/blob-response.ts';
import { discard } from '../upstream/bodies.ts';
import { signPeerRequest } from './peer-auth.ts';

/** The internal endpoint's path for a blob (src/http/cluster.ts). */
export const CLUSTER_BLOB_PATH = '/_berth/cluster/blobs/';

/** Why a peer gave no body: it refused our secret, had nothing (no fill, no blob), or answered something else. */
export class PeerRefused extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Reads a blob, or a range of it, from the replica that owns its fill (or already has it). The answer is
 * checked as an upstream's is (blobFromResponse: a 206 held to its Content-Range), and a connection that
 * breaks is an UNAVAILABLE, so the fill resumes as after any broken transfer. A connection that cannot be
 * made or answers nothing in time says the owner is gone: the caller waits for its lease to go stale.
 */
export class PeerClient {
  private readonly agent: Agent;

  constructor(
    private readonly secret: string,
    timeoutMs: number,
    /** PEM of the CA that signed the peers' certificates (cluster.ca), trusted beside the system roots. */
    ca?: string,
  ) {
    // Headers within a lease timeout (a hung owner stops heartbeating about then); a body may pause while the
    // owner's own upstream is slow, so it gets longer before it counts as broken.
    const connect = { timeout: timeoutMs, ...(ca !== undefined ? { ca: [...rootCertificates, ca] } : {}) };
    this.agent = new Agent({ connect, headersTimeout: timeoutMs, bodyTimeout: timeoutMs * 3, keepAliveTimeout: 10_000 });
  }

  async open(peer: string, upstream: string, repository: string, d: Digest, range: { start: number; end?: number } | undefined, signal: AbortSignal): Promise<SourceBody> {
    const url = new URL(`${CLUSTER_BLOB_PATH}${d}`, peer);
    url.searchParams.set('upstream', upstream);
    url.searchParams.set('repository', repository);
    const rangeHeader = range ? `bytes=${range.start}-${range.end ?? ''}` : undefined;
    // Signed, never the secret itself: `peer` comes from a lease row, which may name a host that is no replica.
    const headers: Record<string, string> = { authorization: signPeerRequest(this.secret, 'GET', url, rangeHeader) };
    if (rangeHeader) headers.range = rangeHeader;
    const res = await request(url, { method: 'GET', headers, signal, dispatcher: this.agent });
    if (res.statusCode !== 200 && res.statusCode !== 206) {
      discard(res.body);
      throw new PeerRefused(res.statusCode, `berth peer ${peer} answered ${res.statusCode} for ${d}`);
    }
    const blob = blobFromResponse({ status: res.statusCode, headers: res.headers, body: res.body }, `berth peer ${peer}`, d, signal);
    // A peer is berth: it answers a Range with exactly that range and a whole GET with the whole blob. Anything
    // else is a peer that lies (the fill would write it at the wrong place or retry it for ever).
    const end = /^bytes \d+-(\d+)\//.exec(String(res.headers['content-range'] ?? ''))?.[1];
    if (range ? !blob.partial || blob.start !== range.start || (range.end !== undefined && Number(end) !== range.end) : blob.partial) {
      blob.cancel();
      throw new IntegrityError(
        `berth peer ${peer} answered ${res.statusCode}${end === undefined ? '' : ` (${String(res.headers['content-range'])})`} to a GET of ${d} ${range ? `bytes=${range.start}-${range.end ?? ''}` : 'whole'}`,
      );
    }
    return { partial: blob.partial, start: blob.start, size: blob.size, body: Object.assign(blob.body, { destroy: blob.cancel }) };
  }

  close(): Promise<void> {
    return this.agent.close();
  }
}
