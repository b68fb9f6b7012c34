// containerd as on a Kubernetes node, but private: own root, state, sockets and certs.d in a temp dir,
// registry config_path for the CRI plugin, proxies pointing at a dead port. As lab/04-containerd.sh.
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { assertLoopbackHostsToml } from './hosts-toml.ts';
import { unmountUnder } from './mounts.ts';
import { descendantsOf, killPids, pidsMentioning, startProcess } from './process.ts';
import { DEAD_PROXY_ENV } from './safety.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

export { type MirrorHostsOptions, mirrorHostsToml } from './hosts-toml.ts';

export interface CtrOptions {
  namespace?: string;
  timeoutMs?: number;
}

export interface CtrPullOptions {
  allPlatforms?: boolean;
  platform?: string;
  snapshotter?: string;
  /** The reference's registry is itself a plain-http loopback registry (no hosts.toml involved). */
  plainHttp?: boolean;
  timeoutMs?: number;
}

export interface Containerd {
  dir: string;
  socket: string;
  /** certs.d root: `<hostsDir>/<registry host>/hosts.toml`. Used by the CRI plugin and by pull(). */
  hostsDir: string;
  /** The ctr namespace of this instance. */
  namespace: string;
  logFile: string;
  pid: number;
  ctr(args: string[], opts?: CtrOptions): Promise<{ stdout: string; stderr: string }>;
  /** `ctr images pull --hosts-dir <hostsDir> …`: pull and unpack, the resolver running in ctr itself. */
  pull(ref: string, opts?: CtrPullOptions): Promise<{ stdout: string; stderr: string }>;
  /** CRI PullImage (the kubelet's path: containerd itself resolves via config_path), namespace k8s.io. */
  criPull(image: string): Promise<string>;
  /** Writes `<hostsDir>/<registryHost>/hosts.toml`, refusing any non-loopback server or host. */
  writeHosts(registryHost: string, toml: string): Promise<void>;
  stop(): Promise<void>;
}

/** `ctr images ls` rows: reference -> target digest. */
export async function imageTargets(c: Containerd): Promise<Map<string, string>> {
  const { stdout } = await c.ctr(['images', 'ls']);
  const rows = new Map<string, string>();
  for (const line of stdout.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 3) rows.set(cols[0]!, cols[2]!);
  }
  return rows;
}

const CRI_PULL = path.join(path.dirname(fileURLToPath(import.meta.url)), 'cri_pull.py');

export async function startContainerd(): Promise<Containerd> {
  const dir = await makeTempDir('containerd');
  const socket = path.join(dir, 'containerd.sock');
  const hostsDir = path.join(dir, 'certs.d');
  const tmp = path.join(dir, 'tmp');
  await Promise.all([mkdir(hostsDir), mkdir(tmp)]);
  const config = path.join(dir, 'config.toml');
  await writeFile(config, containerdConfig(dir, socket, hostsDir));
  const logFile = path.join(dir, 'containerd.log');
  // TMPDIR: containerd's temporary mounts while unpacking land under dir, where stop() unmounts.
  const env = { ...process.env, ...DEAD_PROXY_ENV, TMPDIR: tmp };
  const proc = startProcess('containerd', 'containerd', ['--config', config], { logFile, env });
  const namespace = 'berth-test';

  const ctr = async (args: string[], opts: CtrOptions = {}): Promise<{ stdout: string; stderr: string }> => {
    // `ctr run` would put its IO fifos and runc state under /run/containerd: keep them in dir too.
    const own = args[0] === 'run' ? ['run', '--fifo-dir', path.join(dir, 'fifo'), '--runc-root', path.join(dir, 'runc'), ...args.slice(1)] : args;
    return exec('ctr', ['--address', socket, '--namespace', opts.namespace ?? namespace, ...own], env, opts.timeoutMs);
  };

  await waitReady(() => ctr(['version'], { timeoutMs: 2_000 }), proc.exited, logFile);

  const stop = async (): Promise<void> => {
    // Tasks deleted through containerd take their shim, its socket (/run/containerd/s/…) and runc state along.
    if (proc.running) await deleteTasks(ctr).catch(() => undefined);
    // Whatever is left: shims outlive containerd by design and container processes outlive their shims.
    // Kill the processes this instance started (their command lines name its socket), then containerd.
    const shims = await pidsMentioning(socket);
    const containers = await descendantsOf(shims);
    await killPids([...containers, ...shims]);
    await proc.stop();
    await killPids(await pidsMentioning(socket)); // a shim started while we were stopping
    await unmountUnder(dir);
    await removeTempDir(dir);
  };

  return {
    dir,
    socket,
    hostsDir,
    namespace,
    logFile,
    pid: proc.pid,
    ctr,
    pull(ref, o = {}) {
      const args = ['images', 'pull', '--hosts-dir', hostsDir];
      if (o.allPlatforms === true) args.push('--all-platforms');
      if (o.platform !== undefined) args.push('--platform', o.platform);
      if (o.snapshotter !== undefined) args.push('--snapshotter', o.snapshotter);
      if (o.plainHttp === true) args.push('--plain-http');
      return ctr([...args, ref], { timeoutMs: o.timeoutMs ?? 120_000 });
    },
    async criPull(image) {
      const { stdout } = await exec('/usr/bin/python3', [CRI_PULL, socket, image], env, 120_000);
      return stdout.trim();
    },
    async writeHosts(registryHost, toml) {
      assertLoopbackHostsToml(toml);
      await mkdir(path.join(hostsDir, registryHost), { recursive: true });
      await writeFile(path.join(hostsDir, registryHost, 'hosts.toml'), toml);
    },
    stop,
  };
}

async function deleteTasks(ctr: Containerd['ctr']): Promise<void> {
  const { stdout } = await ctr(['namespaces', 'ls', '--quiet'], { timeoutMs: 5_000 });
  for (const ns of stdout.split('\n').filter(Boolean)) {
    const tasks = await ctr(['tasks', 'ls', '--quiet'], { namespace: ns, timeoutMs: 5_000 });
    for (const id of tasks.stdout.split('\n').filter(Boolean)) {
      await ctr(['tasks', 'delete', '--force', id], { namespace: ns, timeoutMs: 10_000 }).catch(() => undefined);
    }
  }
}

function containerdConfig(dir: string, socket: string, hostsDir: string): string {
  return `version = 2
root = "${path.join(dir, 'root')}"
state = "${path.join(dir, 'state')}"
# Snapshotters that cannot work here only slow start-up down with probing.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "${socket}"
[ttrpc]
  address = "${socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "${path.join(dir, 'opt')}"
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "${hostsDir}"
`;
}

async function waitReady(probe: () => Promise<unknown>, exited: Promise<number | null>, logFile: string): Promise<void> {
  let dead = false;
  void exited.then(() => (dead = true));
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      await probe();
      return;
    } catch (err) {
      if (dead) throw new Error(`containerd exited during start-up; see ${logFile}`);
      if (Date.now() > deadline) throw new Error(`containerd not ready in 20 s (${String(err)}); see ${logFile}`);
      await sleep(50);
    }
  }
}

function exec(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { env, timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message.split('\n')[0]}\n${stderr}${stdout}`));
      else resolve({ stdout, stderr });
    });
  });
}
