// The real stargz-snapshotter (containerd-stargz-grpc, ../shared/tools/README.md) beside a private containerd
// that uses it as the proxy snapshotter `stargz`: everything (roots, state, sockets, FUSE mounts, container
// rootfs) lives under one temp dir, all registry traffic goes to loopback mirrors, and stop() removes every
// mount under that dir and ends every process it started, by PID.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { assertLoopbackHostsToml } from './hosts-toml.ts';
import { descendantsOf, killPids, type ManagedProcess, pidsMentioning, startProcess } from './process.ts';
import { DEAD_PROXY_ENV, isLoopback } from './safety.ts';
import { stargzDaemonPath } from './stargz-daemon.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

const run = promisify(execFile);

export interface StargzOptions {
  /** Registry host in image references (`docker.io`) → the loopback `host:port` the snapshotter fetches from. */
  mirrors: Record<string, string>;
}

export interface Mount {
  point: string;
  fstype: string;
}

export interface Stargz {
  dir: string;
  /** The snapshotter's root: its FUSE layer mounts are below it. */
  snapshotterRoot: string;
  socket: string;
  namespace: string;
  hostsDir: string;
  logFiles: { containerd: string; snapshotter: string };
  ctr(args: string[], opts?: ExecOptions): Promise<Output>;
  /** `ctr-remote ARGS` against this containerd (`images convert --estargz`, `images optimize`). */
  ctrRemote(args: string[], opts?: ExecOptions): Promise<Output>;
  /** `ctr-remote images rpull --snapshotter stargz --hosts-dir …`: manifests through containerd, layers mounted lazily. */
  rpull(ref: string, opts?: ExecOptions): Promise<Output>;
  /** `ctr run --rm --snapshotter stargz REF ID CMD…`: the container's stdout. */
  run(ref: string, cmd: string[], opts?: ExecOptions): Promise<string>;
  /** `<hostsDir>/<registryHost>/hosts.toml` for containerd's own resolver, refused unless loopback only. */
  writeHosts(registryHost: string, toml: string): Promise<void>;
  /** Mounts at or below the snapshotter root whose type is fuse (the lazily served layers). */
  fuseMounts(): Promise<Mount[]>;
  stop(): Promise<void>;
}

export interface ExecOptions {
  namespace?: string;
  timeoutMs?: number;
}

type Output = { stdout: string; stderr: string };

export async function startStargz(o: StargzOptions): Promise<Stargz> {
  for (const [host, mirror] of Object.entries(o.mirrors)) {
    if (!isLoopback(mirror)) throw new Error(`stargz mirror for ${host} must be loopback, got ${mirror}`);
  }
  const dir = await makeTempDir('stargz');
  // Debian ships only ctr-remote: the daemon comes from ../shared/tools or the copy kept in test/tools.
  const daemon = await stargzDaemonPath(dir);
  const snapshotterRoot = path.join(dir, 'sgz');
  const sgzSocket = path.join(dir, 'sgz.sock');
  const socket = path.join(dir, 'containerd.sock');
  const hostsDir = path.join(dir, 'certs.d');
  const tmp = path.join(dir, 'tmp');
  await Promise.all([mkdir(snapshotterRoot), mkdir(hostsDir), mkdir(tmp)]);
  await writeFile(path.join(dir, 'sgz.toml'), snapshotterConfig(o.mirrors));
  await writeFile(path.join(dir, 'containerd.toml'), containerdConfig(dir, socket, sgzSocket));
  // Go clients never proxy loopback, so the dead proxy catches only what would leave the machine.
  const env = { ...process.env, ...DEAD_PROXY_ENV, TMPDIR: tmp };
  const logFiles = { containerd: path.join(dir, 'containerd.log'), snapshotter: path.join(dir, 'snapshotter.log') };
  const procs: ManagedProcess[] = [];
  const namespace = 'berth-stargz';

  const exec = (cmd: string, args: string[], timeoutMs = 120_000): Promise<Output> =>
    run(cmd, args, { env, timeout: timeoutMs, maxBuffer: 16 << 20 }).catch((err: Error & Partial<Output>) => {
      throw new Error(`${cmd} ${args.join(' ')} failed: ${err.message.split('\n')[0]}\n${err.stderr ?? ''}${err.stdout ?? ''}`);
    });
  const ctr = (args: string[], opts: ExecOptions = {}): Promise<Output> => {
    // `ctr run` would put its IO fifos and runc state under /run/containerd: keep them in dir too.
    const own = args[0] === 'run' ? ['run', '--fifo-dir', path.join(dir, 'fifo'), '--runc-root', path.join(dir, 'runc'), ...args.slice(1)] : args;
    return exec('ctr', ['--address', socket, '--namespace', opts.namespace ?? namespace, ...own], opts.timeoutMs);
  };

  const ctrRemote = (args: string[], opts: ExecOptions = {}): Promise<Output> => exec('ctr-remote', ['--address', socket, '--namespace', opts.namespace ?? namespace, ...args], opts.timeoutMs);

  const stop = async (): Promise<void> => {
    if (procs[1]?.running === true) await deleteTasks(ctr).catch(() => undefined);
    // Shims outlive containerd by design and container processes outlive their shims: their command lines
    // name this instance's socket. Then containerd, then the snapshotter.
    const shims = await pidsMentioning(socket);
    await killPids([...(await descendantsOf(shims)), ...shims]);
    for (const p of [...procs].reverse()) await p.stop();
    await unmountAll(dir);
    await removeTempDir(dir);
  };

  try {
    const sgzArgs = ['-root', snapshotterRoot, '-address', sgzSocket, '-config', path.join(dir, 'sgz.toml'), '-log-level', 'debug'];
    procs.push(startProcess('containerd-stargz-grpc', daemon, sgzArgs, { logFile: logFiles.snapshotter, env }));
    await waitFor('the snapshotter socket', () => existsSync(sgzSocket), procs[0]!, 30_000);
    procs.push(startProcess('containerd', 'containerd', ['--config', path.join(dir, 'containerd.toml')], { logFile: logFiles.containerd, env }));
    await waitFor('containerd', () => ctr(['plugins', 'ls'], { timeoutMs: 5_000 }).then((r) => /stargz\s+\S+\s+ok/.test(r.stdout)), procs[1]!, 30_000);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    dir,
    snapshotterRoot,
    socket,
    namespace,
    hostsDir,
    logFiles,
    ctr,
    ctrRemote,
    rpull: (ref, opts = {}) => ctrRemote(['images', 'rpull', '--snapshotter', 'stargz', '--hosts-dir', hostsDir, ref], opts),
    async run(ref, cmd, opts = {}) {
      const id = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
      return (await ctr(['run', '--rm', '--snapshotter', 'stargz', ref, id, ...cmd], opts)).stdout;
    },
    async writeHosts(registryHost, toml) {
      assertLoopbackHostsToml(toml);
      await mkdir(path.join(hostsDir, registryHost), { recursive: true });
      await writeFile(path.join(hostsDir, registryHost, 'hosts.toml'), toml);
    },
    fuseMounts: async () => (await mountsUnder(snapshotterRoot)).filter((m) => m.fstype.startsWith('fuse')),
    stop,
  };
}

/** The snapshotter's config: one plain-http mirror per registry host, and no background fetch (reads stay lazy). */
function snapshotterConfig(mirrors: Record<string, string>): string {
  const lines = ['no_background_fetch = true', ''];
  for (const [host, mirror] of Object.entries(mirrors)) {
    lines.push(`[[resolver.host."${host}".mirrors]]`, `  host = "${mirror}"`, '  insecure = true', '');
  }
  return lines.join('\n');
}

function containerdConfig(dir: string, socket: string, sgzSocket: string): string {
  return `version = 2
root = "${path.join(dir, 'root')}"
state = "${path.join(dir, 'state')}"
# No CRI here; snapshotters that cannot work here only slow start-up down with probing.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "${socket}"
[ttrpc]
  address = "${socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "${path.join(dir, 'opt')}"
[proxy_plugins.stargz]
  type = "snapshot"
  address = "${sgzSocket}"
`;
}

/** Mount points at or below `dir` with their filesystem type, from this process's mountinfo. */
export async function mountsUnder(dir: string): Promise<Mount[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const prefix = `${dir.replace(/\/$/, '')}/`;
  const found: Mount[] = [];
  for (const line of info.split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    if (fields.length < 5 || sep < 0) continue;
    // mountinfo escapes space, tab, newline and backslash as octal
    const point = fields[4]!.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    if (point === dir || point.startsWith(prefix)) found.push({ point, fstype: fields[sep + 1] ?? '' });
  }
  return found;
}

/**
 * Unmounts everything under `dir`: container rootfs overlays first (their lower dirs are the FUSE layers),
 * then the FUSE layers, deepest first within each; a busy mount is detached lazily. Stacked mounts on one
 * point are removed one by one until none is left.
 */
async function unmountAll(dir: string): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const mounts = await mountsUnder(dir);
    if (mounts.length === 0) return;
    const fuseLast = (m: Mount): number => (m.fstype.startsWith('fuse') ? 1 : 0);
    mounts.sort((a, b) => fuseLast(a) - fuseLast(b) || b.point.length - a.point.length);
    for (const m of mounts) {
      await run('umount', [m.point]).catch(() => run('umount', ['-l', m.point]).catch(() => undefined));
    }
  }
}

async function deleteTasks(ctr: Stargz['ctr']): Promise<void> {
  const { stdout } = await ctr(['namespaces', 'ls', '--quiet'], { timeoutMs: 5_000 });
  for (const ns of stdout.split('\n').filter(Boolean)) {
    const tasks = await ctr(['tasks', 'ls', '--quiet'], { namespace: ns, timeoutMs: 5_000 });
    for (const id of tasks.stdout.split('\n').filter(Boolean)) {
      await ctr(['tasks', 'delete', '--force', id], { namespace: ns, timeoutMs: 10_000 }).catch(() => undefined);
    }
  }
}

async function waitFor(what: string, ready: () => boolean | Promise<boolean>, proc: ManagedProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    if (!proc.running) throw new Error(`${proc.name} exited while waiting for ${what}; see ${proc.logFile}`);
    try {
      if (await ready()) return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready in ${timeoutMs / 1000} s (${String(last ?? 'not yet')}); see ${proc.logFile}`);
    await sleep(100);
  }
}
