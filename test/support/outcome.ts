// What a client really got from one request, whatever it was: a status and a complete body, or a
// socket error part-way (with the bytes that had arrived). Never throws, so a test can assert on a cut
// response as precisely as on a clean one.
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';

export interface Outcome {
  /** Undefined when no response head arrived. */
  status?: number;
  headers?: http.IncomingHttpHeaders;
  /** Every body byte received (all of it when `complete`). */
  body: Buffer;
  /** The body ended normally (no reset, no abort, Content-Length honoured). */
  complete: boolean;
  /** The socket error or abort, when not complete. */
  error?: string;
  ms: number;
}

export interface OutcomeOptions {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  timeoutMs?: number;
  /** PEM: verify https against it. */
  ca?: string | Buffer;
}

export function fetchOutcome(base: string, pathAndQuery: string, o: OutcomeOptions = {}): Promise<Outcome> {
  const u = new URL(base);
  const started = performance.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let status: number | undefined;
    let headers: http.IncomingHttpHeaders | undefined;
    let settled = false;
    const settle = (complete: boolean, error?: string): void => {
      if (settled) return;
      settled = true;
      resolve({ status, headers, body: Buffer.concat(chunks), complete, ...(error !== undefined ? { error } : {}), ms: performance.now() - started });
    };
    const opts: https.RequestOptions = { host: u.hostname, port: u.port, path: pathAndQuery, method: o.method ?? 'GET', headers: o.headers, agent: false };
    const onResponse = (res: http.IncomingMessage): void => {
      status = res.statusCode;
      headers = res.headers;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => settle(true));
      res.on('aborted', () => settle(false, 'aborted'));
      res.on('error', (err) => settle(false, err.message));
      res.on('close', () => settle(res.complete, res.complete ? undefined : 'closed before the end of the body'));
    };
    const req = u.protocol === 'https:' ? https.request({ ...opts, ...(o.ca !== undefined ? { ca: o.ca } : {}) }, onResponse) : http.request(opts, onResponse);
    req.setTimeout(o.timeoutMs ?? 60_000, () => req.destroy(new Error(`no progress in ${o.timeoutMs ?? 60_000} ms`)));
    req.on('error', (err) => settle(false, err.message));
    req.end();
  });
}

export function sha256Of(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** One line for assertion messages. */
export function describeOutcome(r: Outcome): string {
  const head = r.status === undefined ? 'no response head' : `status ${r.status}`;
  const text = r.status !== undefined && r.status >= 400 ? ` ${r.body.subarray(0, 200).toString('utf8')}` : '';
  return `${head}, ${r.body.length} body bytes, ${r.complete ? 'complete' : `cut (${r.error ?? '?'})`}${text}`;
}
