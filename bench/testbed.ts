// The shared data every system serves: a docker-registry upstream on loopback seeded with the bench
// images, the rate-limited relay the caches reach it through for the cold figures, and a static tree of
// the same blob files for nginx.
import { copyFile, link, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buildImage, type Image, pushImage, seedStandard } from '../test/support/images.ts';
import { type Relay, startRelay } from '../test/support/relay.ts';
import { makeTempDir, removeTempDir } from '../test/support/tmp.ts';
import { startUpstream, type Upstream } from '../test/support/upstream.ts';
import { guarded } from './cleanup.ts';
import { sizeName } from './options.ts';

/** An image and where it lives on every registry (`repository`, tag `1`). */
export interface BenchImage {
  repository: string;
  tag: string;
  image: Image;
  /** "200 MB", "1 GiB": the size it was made with, for labels. */
  nominal: string;
  /** The image's one big layer (or, for the small image, its largest). */
  layer: { digest: string; size: number };
}

export interface Testbed {
  up: Upstream;
  relay: Relay;
  linkRate: number;
  dir: string;
  /** Static tree for nginx: <www>/v2/<name>/blobs/<digest>, <www>/v2/lab/small/manifests/1. */
  www: string;
  small: BenchImage;
  big: BenchImage;
  huge?: BenchImage;
  stop(): Promise<void>;
}

export interface TestbedOptions {
  bigBytes: number;
  /** Undefined: no 1 GiB image (no figure needs it). */
  hugeBytes: number | undefined;
  linkRate: number;
}

export async function startTestbed(o: TestbedOptions): Promise<Testbed> {
  const dir = await makeTempDir('bench');
  const bed = guarded('testbed dir', { stop: () => removeTempDir(dir) });
  const up = guarded('upstream', await startUpstream());
  const layers = path.join(dir, 'layers');
  const seeded = await seedStandard(up, layers, { bigBytes: o.bigBytes });
  let huge: BenchImage | undefined;
  if (o.hugeBytes !== undefined) {
    const image = await buildImage({ format: 'oci', layers: [{ randomBytes: o.hugeBytes, dir: layers }] });
    await pushImage(up, 'lab/huge', '1', image);
    huge = benchImage('lab/huge', image, sizeName(o.hugeBytes));
  }
  const relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: o.linkRate });
  const relayHandle = guarded('relay', { stop: () => relay.close() });

  const small = benchImage('lab/small', seeded.small, 'small');
  const big = benchImage('lab/big', seeded.big!, sizeName(o.bigBytes));
  const www = path.join(dir, 'www');
  for (const b of [small, big, ...(huge ? [huge] : [])]) await publishStatic(www, b);

  return {
    up,
    relay,
    linkRate: o.linkRate,
    dir,
    www,
    small,
    big,
    huge,
    async stop() {
      await relayHandle.stop();
      await up.stop();
      await bed.stop();
    },
  };
}

function benchImage(repository: string, image: Image, nominal: string): BenchImage {
  const largest = [...image.layers].sort((a, b) => b.size - a.size)[0]!;
  return { repository, tag: '1', nominal, image, layer: { digest: largest.digest, size: largest.size } };
}

/** The image's blobs (hard links to the very files that were pushed) and its manifest, for nginx. */
async function publishStatic(www: string, b: BenchImage): Promise<void> {
  const blobs = path.join(www, 'v2', b.repository, 'blobs');
  await mkdir(blobs, { recursive: true });
  for (const blob of [b.image.config, ...b.image.layers]) {
    const target = path.join(blobs, blob.digest);
    if (blob.bytes !== undefined) await writeFile(target, blob.bytes);
    else if (blob.path !== undefined) await link(blob.path, target).catch(() => copyFile(blob.path!, target));
  }
  const manifests = path.join(www, 'v2', b.repository, 'manifests');
  await mkdir(manifests, { recursive: true });
  await writeFile(path.join(manifests, b.tag), b.image.manifest);
}
