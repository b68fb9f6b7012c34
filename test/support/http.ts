// Raw HTTP from the client side: node's http.request sends the path exactly as given (no `..` resolution,
// no re-encoding) and repeated header lines as arrays, which is what tests of the wire format need.
import { createHash } from 'node:crypto';
import http from 'node:http';

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface RawRequestOptions {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  /** A keep-alive agent to send on; by default a fresh connection (no pooling between requests). */
  agent?: http.Agent;
  /** Fail when the connection makes no progress for this long; by default no limit. */
  timeoutMs?: number;
}

/** One request to `base` (only its host and port are used) for `pathAndQuery` as given, the whole body collected. */
export function request(base: string, pathAndQuery: string, o: RawRequestOptions = {}): Promise<RawResponse> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: pathAndQuery, method: o.method ?? 'GET', headers: o.headers, agent: o.agent ?? false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (res.complete ? resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }) : reject(new Error('incomplete body'))));
      res.on('error', reject);
    });
    const timeoutMs = o.timeoutMs;
    if (timeoutMs !== undefined) req.setTimeout(timeoutMs, () => req.destroy(new Error(`no progress for ${timeoutMs / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

export interface HashedGet {
  status: number;
  contentLength: string | undefined;
  digest: string;
  bytes: number;
  /** performance.now() when the response headers arrived, and when the body ended. */
  headersAt: number;
  doneAt: number;
}

/** GET on a fresh connection that hashes the body as it streams (never holds it) and notes when headers and end arrived. */
export function hashedGet(url: string): Promise<HashedGet> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      const headersAt = performance.now();
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        hash.update(c);
        bytes += c.length;
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          contentLength: res.headers['content-length'],
          digest: `sha256:${hash.digest('hex')}`,
          bytes,
          headersAt,
          doneAt: performance.now(),
        }),
      );
      res.on('error', reject);
      res.on('aborted', () => reject(new Error(`${url}: response aborted after ${bytes} bytes`)));
    });
    req.on('error', reject);
  });
}
