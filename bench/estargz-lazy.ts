// Time to the first byte of a file of an image, on a node: lazily through the real stargz-snapshotter
// (`ctr-remote i rpull` of the `-esgz` tag, then `ctr run --snapshotter stargz … cat FILE`) against the
// ordinary way (`ctr images pull` of the original tag, every layer fetched and unpacked, then `ctr run`).
// Both from the same warm berth, so the figure is what lazy pulling saves, not what a link costs.
import { mirrorHostsToml } from '../test/support/containerd.ts';
import { type Stargz, startStargz } from '../test/support/stargz.ts';
import { guarded } from './cleanup.ts';

export interface NodeRead {
  seconds: number;
  output: string;
}

export interface Node {
  /** rpull of `ref` (an eStargz image) and `cat file` in a container on the stargz snapshotter. */
  lazy(ref: string, file: string): Promise<NodeRead>;
  /** Full pull of `ref` and `cat file` in a container on overlayfs. */
  full(ref: string, file: string): Promise<NodeRead>;
  /** How many FUSE-mounted layers the snapshotter serves right now. */
  fuseMounts(): Promise<number>;
  sgz: Stargz;
  stop(): Promise<void>;
}

/** containerd + stargz-snapshotter whose registry `docker.io` is berth at `berthHost` (plain http, loopback). */
export async function startNode(berthHost: string): Promise<Node> {
  const sgz = guarded('stargz-snapshotter', await startStargz({ mirrors: { 'docker.io': berthHost } }));
  await sgz.writeHosts('docker.io', mirrorHostsToml(`http://${berthHost}`));
  let n = 0;
  const containerId = (): string => `bench-${process.pid}-${++n}`;
  const LONG = { timeoutMs: 1_800_000 };
  return {
    sgz,
    async lazy(ref, file) {
      const opts = { ...LONG, namespace: 'lazy' };
      const t0 = performance.now();
      await sgz.rpull(ref, opts);
      const { stdout } = await sgz.ctr(['run', '--rm', '--snapshotter', 'stargz', ref, containerId(), 'cat', `/${file}`], opts);
      return { seconds: (performance.now() - t0) / 1000, output: stdout };
    },
    async full(ref, file) {
      const opts = { ...LONG, namespace: 'full' };
      const t0 = performance.now();
      await sgz.ctr(['images', 'pull', '--hosts-dir', sgz.hostsDir, ref], opts);
      const { stdout } = await sgz.ctr(['run', '--rm', ref, containerId(), 'cat', `/${file}`], opts);
      return { seconds: (performance.now() - t0) / 1000, output: stdout };
    },
    fuseMounts: async () => (await sgz.fuseMounts()).length,
    stop: () => sgz.stop(),
  };
}
