// Request-rate runs with wrk (C, epoll: leaves the CPU to the servers). A Lua script sets the method and
// headers and prints the summary as JSON (latency percentiles in microseconds).
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** What a request-rate run measured (wrk or ab). */
export interface LoadResult {
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx/3xx answers plus socket errors (connect, read, write, timeout). */
  errors: number;
}

export interface WrkOptions {
  method: 'GET';
  headers?: Record<string, string>;
  connections: number;
  threads: number;
  seconds: number;
  /** Where the Lua script is written. */
  dir: string;
}

const luaString = (s: string): string => JSON.stringify(s); // a JSON string literal is a valid Lua one here

function script(o: WrkOptions): string {
  const headers = Object.entries(o.headers ?? {})
    .map(([k, v]) => `wrk.headers[${luaString(k)}] = ${luaString(v)}`)
    .join('\n');
  return `wrk.method = ${luaString(o.method)}
${headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"status":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status, e.connect, e.read, e.write, e.timeout))
end
`;
}

export async function wrk(url: string, o: WrkOptions): Promise<LoadResult> {
  const file = path.join(o.dir, `wrk-${o.method.toLowerCase()}.lua`);
  await writeFile(file, script(o));
  const { stdout } = await run('wrk', ['-t', String(o.threads), '-c', String(o.connections), '-d', `${o.seconds}s`, '--timeout', '5s', '-s', file, url], {
    timeout: (o.seconds + 30) * 1000,
    maxBuffer: 1 << 20,
  });
  const line = stdout.split('\n').find((l) => l.startsWith('WRKJSON '));
  if (line === undefined) throw new Error(`wrk printed no summary:\n${stdout}`);
  const j = JSON.parse(line.slice('WRKJSON '.length)) as Record<string, number>;
  const seconds = j.duration_us! / 1e6;
  return {
    requests: j.requests!,
    seconds,
    rps: j.requests! / seconds,
    p50Ms: j.p50_us! / 1000,
    p99Ms: j.p99_us! / 1000,
    errors: j.status! + j.connect! + j.read! + j.write! + j.timeout!,
  };
}
