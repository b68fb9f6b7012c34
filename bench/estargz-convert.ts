// The two converters on the same layer, measured the same way (GNU time): berth's own (its process of
// bench/estargz-convert-child.ts) and `ctr-remote images convert --estargz` (stargz-snapshotter's Go
// estargz package, converting in a containerd content store), both with a 4 MiB chunk and gzip level 6.
import path from 'node:path';
import type { Containerd } from '../test/support/containerd.ts';
import { DEAD_PROXY_ENV } from '../test/support/safety.ts';
import { timed } from './estargz-timed.ts';
import { cpuSeconds } from './rss.ts';

export const CHUNK_SIZE = 4 * 1024 * 1024;
/** berth's converter compresses at zlib level 6 (src/estargz/gzip-member.ts); ctr-remote's default is 9. */
export const GZIP_LEVEL = 6;

export interface Conversion {
  wallSeconds: number;
  cpuSeconds: number;
  maxRssBytes: number;
  /** Bytes of the eStargz result. */
  outBytes: number;
}

const CHILD = path.join(import.meta.dirname, 'estargz-convert-child.ts');

/** berth's converter on `layerFile`; also the baseline peak RSS of the same process converting nothing. */
export async function convertWithBerth(layerFile: string, scratch: string): Promise<Conversion & { baselineRssBytes: number }> {
  const node = (src: string, out: string) => timed(process.execPath, ['--import', 'tsx', CHILD, src, out, String(CHUNK_SIZE)], { scratch, env: { ...process.env, NODE_OPTIONS: '' } });
  const baseline = await node('-', '-');
  const r = await node(layerFile, path.join(scratch, 'berth-converted.tar.gz'));
  const result = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { size?: number };
  if (typeof result.size !== 'number') throw new Error(`berth's converter printed ${r.stdout}`);
  return { ...r, outBytes: result.size, baselineRssBytes: baseline.maxRssBytes };
}

/** What ctr-remote needs of a containerd: its socket, its PID (for its CPU time) and ctr. */
type ContentStore = Pick<Containerd, 'socket' | 'pid' | 'ctr'>;

/**
 * ctr-remote on `src` (fetched into the `convert` namespace first, not timed): its own CPU and RSS from GNU
 * time plus the CPU containerd spent meanwhile (it writes the converted blobs to its content store). Use a
 * containerd of its own: containerd shares content across namespaces, so a node's containerd holding these
 * blobs would later "pull" the original image without fetching it.
 */
export async function convertWithCtrRemote(c: ContentStore, src: string, dst: string, scratch: string): Promise<Conversion> {
  const ns = { namespace: 'convert', timeoutMs: 1_800_000 };
  await c.ctr(['content', 'fetch', '--plain-http', src], ns);
  const containerdBefore = cpuSeconds([c.pid]);
  const args = ['--address', c.socket, '--namespace', 'convert', 'images', 'convert', '--oci', '--estargz'];
  args.push('--estargz-compression-level', String(GZIP_LEVEL), '--estargz-chunk-size', String(CHUNK_SIZE), src, dst);
  const r = await timed('ctr-remote', args, { scratch, env: { ...process.env, ...DEAD_PROXY_ENV } });
  const containerdCpu = cpuSeconds([c.pid]) - containerdBefore;
  const { stdout } = await c.ctr(['images', 'ls'], ns);
  if (!stdout.includes(dst)) throw new Error(`ctr-remote did not create ${dst}`);
  const manifest = await convertedManifest(c, dst);
  return { ...r, cpuSeconds: r.cpuSeconds + containerdCpu, outBytes: manifest.layers.reduce((n, l) => n + l.size, 0) };
}

async function convertedManifest(c: ContentStore, ref: string): Promise<{ layers: Array<{ size: number; annotations?: Record<string, string> }> }> {
  const ns = { namespace: 'convert' };
  const { stdout: ls } = await c.ctr(['images', 'ls'], ns);
  const row = ls.split('\n').find((l) => l.startsWith(`${ref} `));
  const target = row?.trim().split(/\s+/)[2];
  if (target === undefined) throw new Error(`no image ${ref} in ctr images ls`);
  const { stdout } = await c.ctr(['content', 'get', target], ns);
  const m = JSON.parse(stdout) as { layers?: Array<{ size: number; annotations?: Record<string, string> }> };
  if (!m.layers?.every((l) => l.annotations?.['containerd.io/snapshot/stargz/toc.digest'])) throw new Error(`ctr-remote's ${ref} has layers without a TOC digest`);
  return { layers: m.layers };
}
