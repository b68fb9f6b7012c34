// Clients of the cluster figure: curl piped into `openssl dgst -sha256` (C, so the client leaves CPU to the
// servers; every body verified; coreutils' sha256sum has no SHA-NI here and cost 2.3 s of CPU per GB, so 24
// clients of a 200 MB blob took 22 s of the two cores, as much as the three replicas), and one watching client in this process that records when its bytes arrive, to
// see how long the readers of a survivor wait after the owner is killed.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';

export interface HashedResult {
  status: number;
  bytes: number;
  /** `sha256:<hex>` of the body. */
  digest: string;
  /** curl's time_starttransfer: request start to the first response byte, seconds. */
  firstByte: number;
  seconds: number;
  error?: string;
}

// The write-out goes to stderr (`%{stderr}`), so stdout is the body alone, into openssl (`-r`: "<hex> *stdin").
const SCRIPT = 'curl -sS --noproxy "*" --max-time "$2" -o - -w "%{stderr}%{http_code} %{size_download} %{time_starttransfer} %{time_total}\\n" "$1" | openssl dgst -sha256 -r';

/** GET `url` with curl, hashing the body on the way (`sh -c 'curl … | openssl dgst -sha256 -r'`). */
export function hashedCurl(url: string, maxTimeSec = 900): Promise<HashedResult> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', SCRIPT, 'sh', url, String(maxTimeSec)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('close', () => {
      const m = /^(\d{3}) (\d+) ([\d.]+) ([\d.]+)$/m.exec(err);
      const other = err.replace(/^\d{3} \d+ [\d.]+ [\d.]+$/m, '').trim();
      resolve({
        status: Number(m?.[1] ?? 0),
        bytes: Number(m?.[2] ?? 0),
        firstByte: Number(m?.[3] ?? Number.NaN),
        seconds: Number(m?.[4] ?? Number.NaN),
        digest: `sha256:${out.trim().split(/\s+/)[0] ?? ''}`,
        ...(other ? { error: other } : {}),
      });
    });
  });
}

export interface WatchedResult extends HashedResult {
  /** performance.now() of every chunk's arrival. */
  arrivals: number[];
}

/** GET `url` in this process, hashing it and noting when each chunk arrives. Never rejects. */
export function watchedGet(url: string): Promise<WatchedResult> {
  const t0 = performance.now();
  const arrivals: number[] = [];
  const hash = createHash('sha256');
  let bytes = 0;
  let status = 0;
  let firstByte = Number.NaN;
  const result = (error?: string): WatchedResult => ({
    status,
    bytes,
    firstByte,
    seconds: (performance.now() - t0) / 1000,
    digest: `sha256:${hash.digest('hex')}`,
    arrivals,
    ...(error ? { error } : {}),
  });
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false }, (res) => {
      status = res.statusCode ?? 0;
      firstByte = (performance.now() - t0) / 1000;
      res.on('data', (c: Buffer) => {
        arrivals.push(performance.now());
        bytes += c.length;
        hash.update(c);
      });
      res.once('end', () => resolve(result(res.complete ? undefined : 'response ended early')));
      res.once('error', (e) => resolve(result(String(e))));
    });
    req.once('error', (e) => resolve(result(String(e))));
  });
}

/**
 * After `at` (performance.now()), the longest pause between two arrivals (or from `at` to the first):
 * when it ended, ms after `at`, and how long it was. undefined: no byte arrived after `at`.
 */
export function pauseAfter(arrivals: readonly number[], at: number): { resumedAfterMs: number; pauseMs: number } | undefined {
  let best: { resumedAfterMs: number; pauseMs: number } | undefined;
  let prev = at;
  for (const t of arrivals) {
    if (t < at) {
      continue;
    }
    const gap = t - Math.max(prev, at);
    if (best === undefined || gap > best.pauseMs) best = { resumedAfterMs: t - at, pauseMs: gap };
    prev = t;
  }
  return best;
}
