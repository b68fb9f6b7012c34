// Measuring primitives: curl downloads (C, so the client leaves CPU to the servers), many at once, warming
// a cache, and the bytes the upstream really sent (its access log).
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { blobBytesServed } from '../test/support/accesslog.ts';
import type { Upstream } from '../test/support/upstream.ts';
import type { Server } from './systems.ts';

export interface CurlResult {
  status: number;
  /** Body bytes received. */
  bytes: number;
  /** curl's time_total: request start to last byte. */
  seconds: number;
  exitCode: number;
  stderr: string;
}

export interface CurlOptions {
  headers?: Record<string, string>;
  maxTimeSec?: number;
  /** curl --limit-rate, bytes per second. */
  limitRate?: number;
  /** Where the body goes (default /dev/null). */
  output?: string;
}

export function curl(url: string, o: CurlOptions = {}): Promise<CurlResult> {
  const args = ['-sS', '--noproxy', '*', '-o', o.output ?? '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}\\n'];
  if (o.maxTimeSec !== undefined) args.push('--max-time', String(o.maxTimeSec));
  if (o.limitRate !== undefined) args.push('--limit-rate', String(Math.round(o.limitRate)));
  for (const [k, v] of Object.entries(o.headers ?? {})) args.push('-H', `${k}: ${v}`);
  args.push(url);
  return new Promise((resolve) => {
    const child = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const done = (code: number | null): void => {
      const [status, bytes, seconds] = out.trim().split(/\s+/).map(Number);
      resolve({ status: status ?? 0, bytes: bytes ?? 0, seconds: seconds ?? 0, exitCode: code ?? -1, stderr: err.trim() });
    };
    child.once('close', done);
    child.once('error', (e) => {
      err += String(e);
      done(-1);
    });
  });
}

export interface ManyResult {
  results: CurlResult[];
  /** From the first spawn to the last exit. */
  wallSeconds: number;
}

/** `n` clients fetching `url` at the same time. */
export async function curlMany(url: string, n: number, o: CurlOptions = {}): Promise<ManyResult> {
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: n }, () => curl(url, o)));
  return { results, wallSeconds: (performance.now() - t0) / 1000 };
}

/** Throws unless every client got `status` and `bytes`. */
export function expectComplete(what: string, results: readonly CurlResult[], status: number, bytes: number): void {
  const bad = results.filter((r) => r.status !== status || r.bytes !== bytes || r.exitCode !== 0);
  if (bad.length > 0) {
    const r = bad[0]!;
    throw new Error(`${what}: ${bad.length}/${results.length} clients incomplete (status ${r.status}, ${r.bytes}/${bytes} bytes, curl exit ${r.exitCode} ${r.stderr})`);
  }
}

export function blobUrl(s: Pick<Server, 'url'>, repository: string, digest: string): string {
  return `${s.url}/v2/${repository}/blobs/${digest}`;
}

/** Pulls the blob through the cache once, then waits until the cache has committed it to its own disk. */
export async function warmBlob(s: Server, repository: string, digest: string, size: number): Promise<void> {
  if (await s.hasBlob(digest, size)) return;
  const r = await curl(blobUrl(s, repository, digest), { maxTimeSec: 600 });
  expectComplete(`warming ${s.name}`, [r], 200, size);
  const deadline = Date.now() + 120_000;
  while (!(await s.hasBlob(digest, size))) {
    if (Date.now() > deadline) throw new Error(`${s.name} did not commit ${digest} within 120 s of serving it`);
    await sleep(100);
  }
}

/**
 * Body bytes the upstream sent for GETs of `digest` since `mark`. Waits until the figure stops changing
 * (the registry logs a request only once its body is out).
 */
export async function upstreamBlobBytes(up: Upstream, mark: number, digest: string, settleMs = 500): Promise<{ bytes: number; requests: number }> {
  let last = -1;
  let stableSince = Date.now();
  const deadline = Date.now() + 10_000;
  for (;;) {
    const entries = up.accessLogSince(mark);
    const bytes = blobBytesServed(entries, digest);
    if (bytes !== last) {
      last = bytes;
      stableSince = Date.now();
    }
    if (Date.now() - stableSince >= settleMs || Date.now() > deadline) {
      const requests = entries.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`)).length;
      return { bytes, requests };
    }
    await sleep(50);
  }
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
