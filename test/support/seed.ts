// The standard set of images most test files push to their upstream, so every test speaks of the same
// `lab/small:1`, `library/small:1`, `lab/multi:1`… as the lab scripts do.
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { access, readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { Image, Index } from './blobs.ts';
import { buildImage, buildIndex } from './build.ts';
import type { LayerSpec, TarEntry } from './layer.ts';
import { type PushTarget, pushImage, pushIndex } from './push.ts';

const run = promisify(execFile);

export interface Seeded {
  /** 3-layer OCI image, linux/amd64: lab/small:1 and library/small:1 */
  small: Image;
  /** The same layers under Docker schema 2 media types: lab/small:v2s2 */
  v2s2: Image;
  /** OCI index, linux/amd64 + linux/arm64/v8: lab/multi:1, org/multi:1, quay.io/org/multi:1 */
  multi: Index;
  /** One random layer of `bigBytes`, OCI: lab/big:1 (only when bigBytes > 0) */
  big?: Image;
}

/** Where seedStandard puts each image (`repository:tag`). quay.io/org/multi serves override_path stand-ins. */
export const STANDARD_REFS = {
  small: ['lab/small:1', 'library/small:1'],
  v2s2: ['lab/small:v2s2'],
  multi: ['lab/multi:1', 'org/multi:1', 'quay.io/org/multi:1'],
  big: ['lab/big:1'],
} as const;

/**
 * Builds and pushes the standard set. Every call makes new content (a nonce in a layer and a fresh
 * random file), so digests never collide with another test's seed. `dir` holds big layer files.
 */
export async function seedStandard(up: PushTarget, dir: string, opts: { bigBytes?: number } = {}): Promise<Seeded> {
  const nonce = randomUUID();
  const base = await baseLayer();
  const smallLayers: LayerSpec[] = [base, { files: { 'app/hello.txt': `hello from layer 2 ${nonce}\n` } }, { files: dataFiles() }];
  const small = await buildImage({ format: 'oci', layers: smallLayers });
  const v2s2 = await buildImage({ format: 'docker', layers: smallLayers });
  const perArch = (arch: string): LayerSpec => ({ files: { 'arch/name': `${arch}\n`, 'arch/nonce': nonce } });
  const multi = buildIndex({
    format: 'oci',
    images: [await buildImage({ format: 'oci', layers: [base, perArch('amd64')], arch: 'amd64' }), await buildImage({ format: 'oci', layers: [base, perArch('arm64')], arch: 'arm64', variant: 'v8' })],
  });
  const bigBytes = opts.bigBytes ?? 0;
  const big = bigBytes > 0 ? await buildImage({ format: 'oci', layers: [{ randomBytes: bigBytes, dir }] }) : undefined;

  const pushes: Promise<void>[] = [];
  for (const ref of STANDARD_REFS.small) pushes.push(pushImage(up, ...split(ref), small));
  for (const ref of STANDARD_REFS.v2s2) pushes.push(pushImage(up, ...split(ref), v2s2));
  for (const ref of STANDARD_REFS.multi) pushes.push(pushIndex(up, ...split(ref), multi));
  if (big !== undefined) for (const ref of STANDARD_REFS.big) pushes.push(pushImage(up, ...split(ref), big));
  await Promise.all(pushes);
  return big === undefined ? { small, v2s2, multi } : { small, v2s2, multi, big };
}

function split(ref: string): [string, string] {
  const at = ref.lastIndexOf(':');
  return [ref.slice(0, at), ref.slice(at + 1)];
}

function dataFiles(): Record<string, TarEntry> {
  const files: Record<string, TarEntry> = { 'app/data/random-1m.bin': randomBytes(1 << 20) };
  for (let i = 1; i <= 50; i++) files[`app/data/f${i}.txt`] = `file ${i}\n`;
  return files;
}

let busybox: Promise<Buffer | undefined> | undefined;

/**
 * First layer of every standard image: /etc/passwd, /etc/group and, when this machine has a static
 * busybox, /bin/busybox with sh/ls/cat/echo/sleep links so `ctr run`/`docker run` can start it.
 */
export async function baseLayer(): Promise<LayerSpec> {
  busybox ??= findStaticBusybox();
  const files: Record<string, TarEntry> = {
    'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
    'etc/group': 'root:x:0:\nnogroup:x:65534:\n',
  };
  const bin = await busybox;
  if (bin !== undefined) {
    files['bin/busybox'] = { content: bin, mode: 0o755 };
    for (const applet of ['sh', 'ls', 'cat', 'echo', 'sleep']) files[`bin/${applet}`] = { linkTo: 'busybox' };
  }
  return { files };
}

/** True when baseLayer() includes a runnable busybox (tests that run containers skip otherwise). */
export async function imagesAreRunnable(): Promise<boolean> {
  busybox ??= findStaticBusybox();
  return (await busybox) !== undefined;
}

async function findStaticBusybox(): Promise<Buffer | undefined> {
  const dirs = ['/bin', '/usr/bin', '/sbin', '/usr/sbin', ...(process.env.PATH ?? '').split(':')];
  for (const d of dirs) {
    const file = `${d}/busybox`;
    try {
      await access(file);
      const { stdout } = await run('file', ['-L', file]);
      if (/statically linked|static-pie linked/.test(stdout)) return readFile(file);
    } catch {
      // not here, or `file` missing
    }
  }
  return undefined;
}
