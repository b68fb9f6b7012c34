// HEAD request rates with ApacheBench (`ab -k -i`, Debian apache2-utils). wrk 4.1 (Debian) cannot do HEAD:
// its parser waits for a body the response never has, so every connection stalls at 0 requests.
// ab is C too (one thread); its -e CSV gives the latency percentiles in fractional milliseconds.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { LoadResult } from './wrk.ts';

const run = promisify(execFile);

export interface AbOptions {
  connections: number;
  seconds: number;
  /** Where the percentile CSV is written. */
  dir: string;
  headers?: Record<string, string>;
}

export async function abHead(url: string, o: AbOptions): Promise<LoadResult> {
  const csv = path.join(o.dir, `ab-${Date.now()}.csv`);
  const args = ['-k', '-i', '-q', '-c', String(o.connections), '-t', String(o.seconds), '-n', '100000000', '-s', '5', '-e', csv];
  for (const [k, v] of Object.entries(o.headers ?? {})) args.push('-H', `${k}: ${v}`);
  args.push(url);
  const { stdout } = await run('ab', args, { timeout: (o.seconds + 30) * 1000, maxBuffer: 1 << 20 });
  const field = (re: RegExp): number => {
    const m = re.exec(stdout);
    return m ? Number(m[1]) : 0;
  };
  const requests = field(/^Complete requests:\s+(\d+)/m);
  const seconds = field(/^Time taken for tests:\s+([\d.]+)/m);
  const failed = field(/^Failed requests:\s+(\d+)/m);
  const non2xx = field(/^Non-2xx responses:\s+(\d+)/m);
  const pct = new Map<number, number>();
  for (const line of (await readFile(csv, 'utf8')).split('\n').slice(1)) {
    const [p, ms] = line.split(',').map(Number);
    if (p !== undefined && ms !== undefined && Number.isFinite(p) && Number.isFinite(ms)) pct.set(p, ms);
  }
  return { requests, seconds, rps: requests / seconds, p50Ms: pct.get(50) ?? Number.NaN, p99Ms: pct.get(99) ?? Number.NaN, errors: failed + non2xx };
}
