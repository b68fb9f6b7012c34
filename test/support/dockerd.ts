// A private Docker engine (dockerd 20.10) with a registry mirror, as lab/05-docker.sh: vfs storage,
// no bridge or iptables, everything (data-root, exec-root, socket, pidfile) in a temp dir.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { unmountUnder } from './mounts.ts';
import { descendantsOf, killPids, pidsMentioning, startProcess } from './process.ts';
import { DEAD_PROXY_ENV, isLoopback } from './safety.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

export interface DockerdOptions {
  /** `--registry-mirror`, e.g. berth's `http://127.0.0.1:PORT`. dockerd uses it for Docker Hub names only. */
  mirror: string;
  /** `--insecure-registry` entries (127.0.0.0/8 is already insecure by default in dockerd). */
  insecureRegistries?: string[];
  storageDriver?: 'vfs' | 'overlay2';
}

export interface Dockerd {
  dir: string;
  socket: string;
  logFile: string;
  pid: number;
  /** Runs the docker CLI against this engine only (own DOCKER_HOST and DOCKER_CONFIG). */
  docker(args: string[], opts?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

// The CLI that matches the 20.10 engine; any newer `docker` on PATH negotiates down as well.
const DOCKER_CLI = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';

export async function startDockerd(opts: DockerdOptions): Promise<Dockerd> {
  // dockerd falls back to registry-1.docker.io when the mirror fails; the mirror itself must be local.
  if (!isLoopback(opts.mirror)) throw new Error(`startDockerd: mirror must be loopback, got ${opts.mirror}`);
  const dir = await makeTempDir('dockerd');
  const socket = path.join(dir, 'docker.sock');
  const config = path.join(dir, 'daemon.json');
  const cliConfig = path.join(dir, 'cli');
  await Promise.all([mkdir(path.join(dir, 'data')), mkdir(path.join(dir, 'exec')), mkdir(cliConfig)]);
  await writeFile(config, '{}\n'); // never /etc/docker/daemon.json
  const args = [
    '--config-file',
    config,
    '--data-root',
    path.join(dir, 'data'),
    '--exec-root',
    path.join(dir, 'exec'),
    '--pidfile',
    path.join(dir, 'docker.pid'),
    '--host',
    `unix://${socket}`,
    '--bridge=none',
    '--iptables=false',
    '--ip6tables=false',
    '--ip-masq=false',
    `--storage-driver=${opts.storageDriver ?? 'vfs'}`,
    `--registry-mirror=${opts.mirror}`,
    // On SIGTERM dockerd gives running containers this long (default 15 s) before killing them.
    '--shutdown-timeout=1',
    ...(opts.insecureRegistries ?? []).map((r) => `--insecure-registry=${r}`),
  ];
  const logFile = path.join(dir, 'dockerd.log');
  // The proxy env makes the registry-1.docker.io fallback fail locally (Go never proxies loopback).
  const env = { ...process.env, ...DEAD_PROXY_ENV };
  const proc = startProcess('dockerd', 'dockerd', args, { logFile, env });
  try {
    await waitPing(socket, proc.exited, logFile);
  } catch (err) {
    await stopAll();
    throw err;
  }

  // dockerd starts its own containerd (its command line names our exec-root) and that starts shims:
  // all of them mention `dir`. Kill what they run, then dockerd, then anything left, then unmount.
  async function stopAll(): Promise<void> {
    const helpers = await pidsMentioning(dir);
    const shims = helpers.filter((pid) => pid !== proc.pid);
    const containers = (await descendantsOf(shims)).filter((pid) => !helpers.includes(pid));
    await killPids(containers);
    await proc.stop();
    await killPids(await pidsMentioning(dir));
    await unmountUnder(dir);
    await removeTempDir(dir);
  }

  return {
    dir,
    socket,
    logFile,
    pid: proc.pid,
    docker: (cliArgs, o = {}) => exec(DOCKER_CLI, cliArgs, { ...env, DOCKER_HOST: `unix://${socket}`, DOCKER_CONFIG: cliConfig }, o.timeoutMs ?? 120_000),
    stop: stopAll,
  };
}

/** Polls GET /_ping on the engine's socket (cheaper than spawning the CLI). */
async function waitPing(socket: string, exited: Promise<number | null>, logFile: string): Promise<void> {
  let dead = false;
  void exited.then(() => (dead = true));
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (await ping(socket)) return;
    if (dead) throw new Error(`dockerd exited during start-up; see ${logFile}`);
    if (Date.now() > deadline) throw new Error(`dockerd not ready in 30 s; see ${logFile}`);
    await sleep(50);
  }
}

function ping(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get({ socketPath, path: '/_ping', timeout: 1_000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

function exec(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`docker ${args.join(' ')} failed: ${err.message.split('\n')[0]}\n${stderr}${stdout}`));
      else resolve({ stdout, stderr });
    });
  });
}
