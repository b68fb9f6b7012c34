// Small helpers shared by the tests of limited and constrained links (issue #3): raw HTTP with timing,
// Prometheus text parsing, polling for a condition with a deadline, multipart/byteranges parsing.
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AccessEntry, Upstream } from './upstream.ts';

export interface TimedResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** Milliseconds from sending the request to its response headers, and to the end of its body. */
  headersMs: number;
  totalMs: number;
}

export interface RequestOptions {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  /** Called once, when the response headers arrive. */
  onHeaders?: (res: http.IncomingMessage) => void;
  /** Abort with an error after this long (default 120 s). */
  timeoutMs?: number;
}

/** One request on a fresh connection (no pooling between tests), the whole body collected. */
export function httpRequest(base: string, pathAndQuery: string, o: RequestOptions = {}): Promise<TimedResponse> {
  const u = new URL(base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: pathAndQuery, method: o.method ?? 'GET', headers: o.headers, agent: false }, (res) => {
      const headersMs = performance.now() - started;
      o.onHeaders?.(res);
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), headersMs, totalMs: performance.now() - started }));
      res.on('error', reject);
      res.on('aborted', () => reject(new Error(`response to ${pathAndQuery} aborted after ${Buffer.concat(chunks).length} bytes`)));
    });
    req.setTimeout(o.timeoutMs ?? 120_000, () => req.destroy(new Error(`no answer to ${o.method ?? 'GET'} ${pathAndQuery} in ${o.timeoutMs ?? 120_000} ms`)));
    req.on('error', reject);
    req.end();
  });
}

export function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

/** Polls `check` until it returns a value other than undefined/false, or throws after `timeoutMs`. */
export async function waitUntil<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 30_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Samples of one metric from Prometheus text format, with their labels. */
export function metricSamples(text: string, name: string): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}

/** The sum of a metric's samples whose labels include `match`. */
export async function metricValue(berthUrl: string, name: string, match: Record<string, string> = {}): Promise<number> {
  const res = await httpRequest(berthUrl, '/metrics');
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return metricSamples(res.body.toString('utf8'), name)
    .filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

/**
 * Everything the upstream logged since `mark`, once a request sent now has been logged too: the registry
 * writes a line after the body is out, so without the sentinel a late line could be missed.
 */
export async function upstreamTrafficSince(up: Upstream, mark: number): Promise<AccessEntry[]> {
  const sentinel = `/v2/?sentinel=${randomUUID()}`;
  const ca = up.caFile === undefined ? undefined : readFileSync(up.caFile, 'utf8');
  await new Promise<void>((resolve, reject) => {
    const u = new URL(up.url);
    const done = (res: http.IncomingMessage): void => {
      res.resume();
      res.on('end', () => resolve());
    };
    const req = u.protocol === 'https:' ? https.get(`${up.url}${sentinel}`, { ca, agent: false }, done) : http.get(`${up.url}${sentinel}`, { agent: false }, done);
    req.on('error', reject);
  });
  const entries = await up.waitForAccess((es) => es.some((e) => e.path === sentinel), { since: mark });
  return entries.filter((e) => e.path !== sentinel);
}

export interface BytePart {
  contentRange: string;
  start: number;
  end: number;
  size: number;
  body: Buffer;
}

/** Parses a multipart/byteranges body (RFC 9110 §14.6). */
export function parseByteranges(contentType: string, body: Buffer): BytePart[] {
  const b = /boundary=("?)([^";]+)\1/.exec(contentType)?.[2];
  if (!b) throw new Error(`no boundary in ${contentType}`);
  const delim = Buffer.from(`--${b}`);
  const parts: BytePart[] = [];
  let pos = body.indexOf(delim);
  while (pos >= 0) {
    const after = pos + delim.length;
    if (body.subarray(after, after + 2).toString() === '--') break;
    const headEnd = body.indexOf('\r\n\r\n', after);
    if (headEnd < 0) throw new Error('multipart part without header end');
    const head = body.subarray(after, headEnd).toString('latin1');
    const cr = /content-range:\s*bytes (\d+)-(\d+)\/(\d+)/i.exec(head);
    if (!cr) throw new Error(`part without Content-Range: ${head}`);
    const start = Number(cr[1]);
    const end = Number(cr[2]);
    const dataStart = headEnd + 4;
    const data = body.subarray(dataStart, dataStart + (end - start + 1));
    parts.push({ contentRange: cr[0], start, end, size: Number(cr[3]), body: Buffer.from(data) });
    pos = body.indexOf(delim, dataStart + data.length);
  }
  return parts;
}
