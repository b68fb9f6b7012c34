// berth as its own process (`berth serve --config FILE`) with a chosen environment: failpoints
// (BERTH_FAILPOINTS), TLS (probed over https), restart with a different environment, signals (SIGHUP),
// its resident memory from /proc, and start-up failures reported with the process's own output.
// Loopback upstreams only, like support/berth.ts.
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import type { BerthOptions } from './berth.ts';
import { freePort, waitForHttp } from './ports.ts';
import { type ManagedProcess, startProcess } from './process.ts';
import { isLoopback } from './safety.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');

export interface ChildStartOptions {
  /** Added to the child's environment (BERTH_* from this process never leak in). */
  env?: Record<string, string>;
  /** How long to wait for the listener (default 20 s). */
  readyTimeoutMs?: number;
}

export interface BerthChild {
  /** `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` when `tls` is configured. */
  url: string;
  host: string;
  port: number;
  storage: string;
  dir: string;
  configFile: string;
  logFile: string;
  process: ManagedProcess;
  /** Starts a fresh process on the same port, storage and config, optionally with another environment. */
  restart(o?: ChildStartOptions): Promise<void>;
  /** Sends a signal and waits for the exit (SIGKILL by default). */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Sends a signal without waiting (SIGHUP). */
  signal(signal: NodeJS.Signals): void;
  /** Resident set size of the process now, in bytes (from /proc/PID/status). */
  rss(): number;
  log(): string;
  stop(): Promise<void>;
}

/** berth serve exited before it listened: its exit code and everything it printed. */
export class BerthExited extends Error {
  constructor(
    readonly code: number | null,
    readonly output: string,
  ) {
    super(`berth serve exited (${String(code)}) before listening:\n${output.slice(-3000)}`);
    this.name = 'BerthExited';
  }
}

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BERTH_')));
  return { ...base, HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '', ...extra };
}

export function berthConfig(o: BerthOptions, storage: string, listen: string): Record<string, unknown> {
  for (const u of o.upstreams) {
    if (!isLoopback(u.url)) throw new Error(`test berth must use loopback upstreams only, got ${u.url}`);
  }
  const { upstreams, storage: _s, maxSize, s3, ...rest } = o;
  return {
    log: { level: 'info' },
    retries: { attempts: 5, backoff: '50ms' },
    ...rest,
    listen,
    storage: { path: storage, ...(maxSize ? { maxSize } : {}), ...(s3 ? { driver: 's3', s3 } : {}) },
    upstreams,
  };
}

export function readRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1];
  if (kb === undefined) throw new Error(`no VmRSS for ${pid}`);
  return Number(kb) * 1024;
}

export async function startBerthChild(o: BerthOptions, start: ChildStartOptions = {}): Promise<BerthChild> {
  const dir = await makeTempDir('berth-child');
  const storage = o.storage ?? path.join(dir, 'storage');
  const configFile = path.join(dir, 'berth.yaml');
  const logFile = path.join(dir, 'berth.log');
  const scheme = o.tls ? 'https' : 'http';
  let port = 0;

  const spawnIt = async (s: ChildStartOptions): Promise<ManagedProcess> => {
    const p = startProcess('berth', process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'serve', '--config', configFile], {
      logFile,
      cwd: ROOT,
      env: childEnv(s.env),
    });
    const died = p.exited.then((code) => {
      throw new BerthExited(code, existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
    });
    died.catch(() => undefined);
    try {
      await Promise.race([waitForHttp(`${scheme}://127.0.0.1:${port}/v2/`, { timeoutMs: s.readyTimeoutMs ?? 20_000 }), died]);
    } catch (err) {
      await p.stop('SIGKILL');
      throw err;
    }
    return p;
  };

  let proc: ManagedProcess | undefined;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    await writeFile(configFile, stringify(berthConfig(o, storage, `127.0.0.1:${port}`)));
    try {
      proc = await spawnIt(start);
      break;
    } catch (err) {
      // A port taken in freePort's window shows as EADDRINUSE in the log: try another one.
      if (!(err instanceof BerthExited) || !/EADDRINUSE/.test(err.output) || attempt >= 3) {
        await removeTempDir(dir);
        throw err;
      }
    }
  }

  const child: BerthChild = {
    url: `${scheme}://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    port,
    storage,
    dir,
    configFile,
    logFile,
    process: proc,
    async restart(s = {}) {
      await child.process.stop();
      child.process = await spawnIt(s);
    },
    async kill(signal = 'SIGKILL') {
      await child.process.stop(signal);
    },
    signal(signal) {
      if (child.process.running) process.kill(child.process.pid, signal);
    },
    rss() {
      return readRss(child.process.pid);
    },
    log() {
      return existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    },
    async stop() {
      await child.process.stop();
      await removeTempDir(dir);
    },
  };
  return child;
}

/**
 * Runs `berth serve` on an existing config and reports whether it came up or exited. Used for start-up
 * failures (damaged or locked index): `exited` with the code and output, or `listening` with a handle to stop.
 */
export async function tryServe(
  configFile: string,
  url: string,
  o: { logFile: string; env?: Record<string, string>; timeoutMs?: number; wrap?: string[] },
): Promise<{ kind: 'exited'; code: number | null; output: string } | { kind: 'listening'; process: ManagedProcess; output: () => string }> {
  // `wrap` runs it under another command (`unshare … --`: berth in a container of its own).
  const argv = [process.execPath, '--import', 'tsx', path.join(ROOT, 'src/main.ts'), 'serve', '--config', configFile];
  const [cmd, ...args] = [...(o.wrap ?? []), ...argv] as [string, ...string[]];
  const p = startProcess('berth', cmd, args, {
    logFile: o.logFile,
    cwd: ROOT,
    env: childEnv(o.env),
  });
  const output = () => (existsSync(o.logFile) ? readFileSync(o.logFile, 'utf8') : '');
  const exited = p.exited.then((code) => ({ kind: 'exited' as const, code }));
  const ready = waitForHttp(`${url}/v2/`, { timeoutMs: o.timeoutMs ?? 30_000 }).then(
    () => ({ kind: 'listening' as const }),
    () => ({ kind: 'timeout' as const }),
  );
  const first = await Promise.race([exited, ready]);
  if (first.kind === 'exited') return { kind: 'exited', code: first.code, output: output() };
  if (first.kind === 'timeout') {
    await p.stop('SIGKILL');
    throw new Error(`berth serve neither listened nor exited in time:\n${output().slice(-3000)}`);
  }
  return { kind: 'listening', process: p, output };
}
