// The systems compared, each started on 127.0.0.1 with an ephemeral port and a temp dir, stopped by PID:
// berth (child process, bench/berth-process.ts), docker-registry in pull-through proxy mode (the reference cache), and nginx
// (static files with sendfile: the limit for cached bytes).
import { stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, waitForHttp } from '../test/support/ports.ts';
import { descendantsOf, killPids, type ManagedProcess, startProcess } from '../test/support/process.ts';
import { makeTempDir, removeTempDir } from '../test/support/tmp.ts';
import { spawnBerth, writeBerthConfig } from './berth-process.ts';
import { guarded } from './cleanup.ts';
import { writeNginxConf } from './nginx.ts';
import type { Testbed } from './testbed.ts';

export type SystemName = 'berth' | 'registry' | 'nginx' | 'direct';

export const LABEL: Record<SystemName, string> = {
  berth: 'berth',
  registry: 'docker-registry',
  nginx: 'nginx',
  direct: 'direct',
};

export interface Server {
  name: SystemName;
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `127.0.0.1:PORT`, for image references. */
  host: string;
  /** The processes whose memory counts (nginx: master and workers). */
  pids(): number[];
  /** For caches: the blob is committed to this cache's own disk. */
  hasBlob(digest: string, size: number): Promise<boolean>;
  logFile: string;
  /** berth only: send `signal` to the process (SIGKILL for a crash), wait for its exit; the temp dir stays. */
  kill?(signal: NodeJS.Signals): Promise<void>;
  stop(): Promise<void>;
}

async function fileHasSize(file: string, size: number): Promise<boolean> {
  try {
    return (await stat(file)).size === size;
  } catch {
    return false;
  }
}

const hexOf = (digest: string): string => digest.replace(/^sha256:/, '');

/** Another storage section (the s3 driver) and how to tell a blob is committed there. */
export type BerthStorage = (storagePath: string) => { config: Record<string, unknown>; hasBlob: Server['hasBlob'] };

/** More configuration; a function when it depends on the port (cluster.advertise). */
export type BerthExtra = Record<string, unknown> | ((port: number) => Record<string, unknown>);

/** berth as a child process (`berth serve --config FILE`), `upstreamUrl` configured as docker.io. */
export async function startBerthServer(upstreamUrl: string, extraOf?: BerthExtra, storageOf?: BerthStorage): Promise<Server> {
  const dir = await makeTempDir('bench-berth');
  const storage = path.join(dir, 'storage');
  const custom = storageOf?.(storage);
  const logFile = path.join(dir, 'berth.log');
  let proc: ManagedProcess | undefined;
  const handle = guarded('berth', {
    async stop() {
      await proc?.stop();
      await removeTempDir(dir);
    },
  });
  const started = await startOnFreePort(
    async (port) => {
      const config = path.join(dir, 'berth.yaml');
      let extra = typeof extraOf === 'function' ? extraOf(port) : extraOf;
      if (custom) extra = { ...extra, storage: custom.config };
      await writeBerthConfig(config, { port, storage, upstreamUrl, ...(extra ? { extra } : {}) });
      return spawnBerth(config, logFile);
    },
    (p) => (proc = p),
    () => handle.stop(),
    60_000, // the machine may be busy
  );
  const p = started.proc;
  const port = started.port;
  return {
    name: 'berth',
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    pids: () => [p.pid],
    hasBlob: custom?.hasBlob ?? ((d, size) => fileHasSize(path.join(storage, 'blobs', 'sha256', hexOf(d).slice(0, 2), hexOf(d)), size)),
    logFile,
    kill: (signal) => p.stop(signal),
    stop: () => handle.stop(),
  };
}

/** docker-registry (distribution 2.8) in pull-through proxy mode, config as in lab/03-proxy-registry.sh. */
export async function startRegistryProxy(upstreamUrl: string): Promise<Server> {
  const dir = await makeTempDir('bench-proxyreg');
  const data = path.join(dir, 'data');
  const logFile = path.join(dir, 'registry.log');
  let proc: ManagedProcess | undefined;
  const handle = guarded('docker-registry proxy', {
    async stop() {
      await proc?.stop();
      await removeTempDir(dir);
    },
  });
  const started = await startOnFreePort(
    async (port) => {
      const config = path.join(dir, 'config.yml');
      await writeFile(config, proxyConfig(data, port, upstreamUrl));
      return startProcess('docker-registry-proxy', 'docker-registry', ['serve', config], { logFile });
    },
    (p) => (proc = p),
    () => handle.stop(),
  );
  const p = started.proc;
  const port = started.port;
  return {
    name: 'registry',
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    pids: () => [p.pid],
    hasBlob: (d, size) => fileHasSize(path.join(data, 'docker', 'registry', 'v2', 'blobs', 'sha256', hexOf(d).slice(0, 2), hexOf(d), 'data'), size),
    logFile,
    stop: () => handle.stop(),
  };
}

function proxyConfig(data: string, port: number, remote: string): string {
  return `version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: ${data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:${port}
  secret: berth-bench-secret
proxy:
  remoteurl: ${remote}
`;
}

/** nginx with a private nginx.conf serving the testbed's static tree. */
export async function startNginx(bed: Testbed): Promise<Server> {
  const dir = await makeTempDir('bench-nginx');
  const logFile = path.join(dir, 'nginx.log');
  let proc: ManagedProcess | undefined;
  let workers: number[] = [];
  const handle = guarded('nginx', {
    async stop() {
      await proc?.stop('SIGTERM'); // fast shutdown: the master stops its workers
      await killPids(workers); // any worker left behind, by the PID we saw
      await removeTempDir(dir);
    },
  });
  const started = await startOnFreePort(
    async (port) => {
      const conf = await writeNginxConf({ dir, www: bed.www, port, manifestType: bed.small.image.mediaType });
      return startProcess('nginx', 'nginx', ['-e', path.join(dir, 'error.log'), '-c', conf, '-g', 'daemon off;'], { logFile });
    },
    (p) => (proc = p),
    () => handle.stop(),
  );
  const port = started.port;
  const master = started.proc;
  workers = await descendantsOf([master.pid]);
  return {
    name: 'nginx',
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    pids: () => [master.pid, ...workers],
    hasBlob: async () => true,
    logFile,
    stop: () => handle.stop(),
  };
}

/**
 * Starts a server on a free port, up to 3 times: another process may take the port between freePort()
 * and the server's bind. `track` hands each process to the caller's stop handle as soon as it exists.
 */
async function startOnFreePort(
  spawn: (port: number) => Promise<ManagedProcess>,
  track: (proc: ManagedProcess) => void,
  giveUp: () => Promise<void>,
  timeoutMs?: number,
): Promise<{ proc: ManagedProcess; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = await spawn(port);
    track(proc);
    try {
      await waitUp(`http://127.0.0.1:${port}/v2/`, proc, timeoutMs);
      return { proc, port };
    } catch (err) {
      await proc.stop();
      if (attempt >= 3) {
        await giveUp();
        throw err;
      }
    }
  }
}

/** Waits for any HTTP answer; fails fast if the process exits first (port taken). */
async function waitUp(url: string, proc: ManagedProcess, timeoutMs = 15_000): Promise<void> {
  const died = proc.exited.then((code) => {
    throw new Error(`${proc.name} exited (${code}); see ${proc.logFile}`);
  });
  died.catch(() => undefined);
  await Promise.race([waitForHttp(url, { timeoutMs }), died]);
}
