import { formatBytes } from '../config/units.ts';
import type { Digest } from '../oci/digest.ts';
import type { Platform } from '../oci/manifest.ts';
import type { AsyncPinIndex } from '../store/async-index-roles.ts';
import type { Quota } from '../store/quota.ts';
import type { BlobStatter } from '../store/roles.ts';
import type { Blobs } from './blobs.ts';
import type { ImageWalker, WalkedImage } from './image-walk.ts';
import type { ReferrerWalker } from './referrer-walk.ts';

export type PrewarmEvent =
  | { type: 'image'; ref: string; digest: string; bytes: number; blobs: number }
  | { type: 'progress'; ref: string; done: number; bytes: number }
  | { type: 'done'; ref: string; digest: string; bytes: number; fetched: number }
  | { type: 'error'; ref: string; message: string }
  | { type: 'summary'; ok: string[]; failed: Array<{ ref: string; message: string }>; bytes: number; fetched: number };

/** Blobs of one image fetched at once: enough to keep a link busy, few enough to finish layers early. */
const BLOB_CONCURRENCY = 3;

/**
 * Prewarm: fetches whole images into the cache at background priority (a client's bytes go first) and
 * pins them. Every reference is tried; one failure does not stop the others, and the summary names each.
 * An image in progress is held against the quota (its first layers must not be evicted to make room for
 * its last); one that cannot fit beside what is already pinned is refused before it is fetched; "ok" is
 * said only once every blob of the image was seen on disk.
 */
export class Prewarmer {
  constructor(
    private readonly walker: ImageWalker,
    private readonly blobs: Blobs,
    private readonly pins: AsyncPinIndex,
    private readonly quota: Quota,
    private readonly store: BlobStatter,
    /** `withReferrers`: also fetch (and pin) the referrers of each image (signatures, SBOMs). */
    private readonly referrerWalker?: ReferrerWalker,
    /** `estargz`: the image's eStargz form (issue #11), converted and walked (src/registry/estargz/images.ts). */
    private readonly estargz?: (image: WalkedImage, platforms: Platform[] | undefined) => Promise<WalkedImage>,
  ) {}

  async run(
    refs: string[],
    platforms: Platform[] | undefined,
    emit: (e: PrewarmEvent) => void,
    opts: { pin?: boolean; withReferrers?: boolean; estargz?: boolean } = {},
  ): Promise<PrewarmEvent & { type: 'summary' }> {
    const ok: string[] = [];
    const failed: Array<{ ref: string; message: string }> = [];
    let bytes = 0;
    let fetched = 0;
    for (const ref of refs) {
      try {
        const image = await this.withReferrers(await this.walker.walk(ref, platforms), opts.withReferrers === true);
        const digests = [...image.manifests.map((m) => m.digest), ...image.blobs.map((b) => b.digest)];
        const release = this.quota.protect(digests);
        let r: { bytes: number; fetched: number };
        try {
          await this.ensureRoom(image, new Set(digests));
          r = await this.warm(image, emit);
          await this.ensureComplete(image);
          if (opts.pin !== false) await this.pins.pin(image.name, digests);
        } finally {
          release();
        }
        ok.push(image.name);
        bytes += r.bytes;
        fetched += r.fetched;
        emit({ type: 'done', ref: image.name, digest: image.root.digest, bytes: r.bytes, fetched: r.fetched });
        if (opts.estargz) {
          // --estargz: the converted image too, pinned under its own (suffixed) name when pinning.
          if (!this.estargz) throw new Error('eStargz conversion is not available in this berth');
          const converted = await this.estargz(image, platforms);
          const size = converted.blobs.reduce((n, b) => n + Math.max(0, b.size), 0);
          if (opts.pin !== false) await this.pins.pin(converted.name, [...converted.manifests.map((m) => m.digest), ...converted.blobs.map((b) => b.digest)]);
          emit({ type: 'done', ref: converted.name, digest: converted.root.digest, bytes: size, fetched: 0 });
        }
      } catch (err) {
        const message = (err as Error).message;
        failed.push({ ref, message });
        emit({ type: 'error', ref, message });
      }
    }
    const summary = { type: 'summary' as const, ok, failed, bytes, fetched };
    emit(summary);
    return summary;
  }

  /** The image with its referrers' manifests and blobs added (`--with-referrers`), or as it is. */
  async withReferrers(image: WalkedImage, wanted: boolean): Promise<WalkedImage> {
    if (!wanted) return image;
    if (!this.referrerWalker) throw new Error('referrers are not available in this berth');
    return this.referrerWalker.expand(image);
  }

  /** Refuses an image that storage.maxSize cannot hold beside what is pinned or being prewarmed already. */
  private async ensureRoom(image: WalkedImage, own: Set<Digest>): Promise<void> {
    const room = await this.quota.room(own, await this.pins.digests());
    if (!room) return;
    const need = image.blobs.reduce((n, b) => n + Math.max(0, b.size), 0) + image.manifests.reduce((n, m) => n + m.size, 0);
    if (room.held + need <= room.limit) return;
    throw new Error(
      `does not fit: it needs ${formatBytes(need)} and storage.maxSize is ${formatBytes(room.limit)}, of which ${formatBytes(room.held)} is pinned or being prewarmed (raise maxSize or unpin images)`,
    );
  }

  /** The honest end of a prewarm: every blob of the image is on disk now. */
  private async ensureComplete(image: WalkedImage): Promise<void> {
    const missing: Digest[] = [];
    for (const b of image.blobs) if ((await this.store.stat(b.digest)) === undefined) missing.push(b.digest);
    if (missing.length > 0) {
      throw new Error(`${missing.length} of its ${image.blobs.length} blobs are not in the cache after fetching (evicted? storage.maxSize may be too small): ${missing.join(', ')}`);
    }
  }

  /** Fetches whatever of one resolved image is not cached yet, at background priority, reporting progress. */
  async warm(image: WalkedImage, emit: (e: PrewarmEvent) => void): Promise<{ bytes: number; fetched: number }> {
    const total = image.blobs.reduce((n, b) => n + Math.max(0, b.size), 0);
    emit({ type: 'image', ref: image.name, digest: image.root.digest, bytes: total, blobs: image.blobs.length });
    const onDisk = new Map<string, number>();
    let lastEmit = 0;
    const report = (force = false) => {
      const now = Date.now();
      if (!force && now - lastEmit < 250) return;
      lastEmit = now;
      emit({ type: 'progress', ref: image.name, done: [...onDisk.values()].reduce((a, b) => a + b, 0), bytes: total });
    };
    let fetched = 0;
    const queue = [...image.blobs];
    const worker = async () => {
      for (let b = queue.shift(); b; b = queue.shift()) {
        const blob = b;
        const r = await this.blobs.warm(image.route, blob.digest, (n) => {
          onDisk.set(blob.digest, n);
          report();
        });
        onDisk.set(blob.digest, r.size);
        if (r.fetched) fetched += r.size;
        report();
      }
    };
    await Promise.all(Array.from({ length: BLOB_CONCURRENCY }, worker));
    report(true);
    return { bytes: total, fetched };
  }
}
