import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { type FileExtent, fileExtents, filesInExtents, readToc } from '../../estargz/toc.ts';
import type { Digest } from '../../oci/digest.ts';
import type { ByteRange } from '../../oci/range.ts';
import type { AsyncRegistryIndex } from '../../store/async-index-roles.ts';
import type { StartupFile } from '../../store/index-roles.ts';
import type { BlobReader } from '../../store/roles.ts';
import type { Route } from '../upstreams.ts';
import { readRange } from './read-range.ts';

/** A converted layer berth watches reads of: which image it belongs to, and which source layer it came from. */
export interface TrackedLayer {
  route: Route;
  sourceTag: string;
  accept: string;
  /** The source image (root manifest or index) the conversion was made from: the start-up set's key. */
  source: Digest;
  sourceLayer: Digest;
  size: number;
}

/** A layer's TOC as the learner uses it: file extents for mapping reads, file sizes for the set's bytes. */
interface LayerFiles {
  extents: FileExtent[];
  sizes: Map<string, number>;
}

/** Range reads kept per pull: a start-up reads far fewer; past this a client is not a lazy puller. */
const MAX_READS_PER_PULL = 20_000;
/** Pulls watched at once (client address × image): each holds its reads until its window ends. */
const MAX_PULLS = 1024;

interface Pull {
  layers: Map<Digest, TrackedLayer>;
  /** Range reads in arrival order ([start, end) blob offsets), by converted layer. */
  reads: Array<{ digest: Digest; ranges: Array<[number, number]> }>;
}

export interface StartupLearnerOptions {
  store: BlobReader;
  index: AsyncRegistryIndex;
  log: Logger;
  /** Pulls observed before the image is converted again with its start-up files first; 0: never. */
  learnAfter: number;
  /** How long after its first Range read a pull's reads count as start-up (ms). */
  window: number;
  /** Converts the image again with the learned set (EstargzImages). */
  relearn: (layer: TrackedLayer) => Promise<void>;
}

/**
 * Learns an image's start-up set from the Range requests berth serves for its converted layers (issue
 * #11). A "pull" is the reads of one client address for one converted image that begin within `window` of
 * that client's first Range read of it: stargz-snapshotter reads the footer, the TOC and then the chunks
 * the container opens during start-up in that time; reads after it (its background fetch, later work) are
 * not start-up. Reads covering more than half a layer are a whole-layer fetch, not a lazy read, and are
 * ignored. Each layer's TOC is read once from the store. When a pull ends with files read, the files (in
 * the order first read, per source layer) join the image's set; once `learnAfter` pulls were observed the
 * set is learned, persisted, and the image converted again with those files first; the set is not changed
 * after that (a learned image stays stable).
 */
export class StartupLearner {
  private readonly layers = new Map<Digest, TrackedLayer>();
  private readonly watched = new Set<Digest>();
  private readonly tocs = new LRUCache<Digest, Promise<LayerFiles>>({ max: 256 });
  private readonly pulls = new Map<string, Pull>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly o: StartupLearnerOptions) {}

  /** Watches reads of the converted layers of `root` (once per image and process). */
  async watch(image: Omit<TrackedLayer, 'sourceLayer' | 'size'>, root: Digest): Promise<void> {
    if (this.watched.has(root)) return;
    this.watched.add(root);
    const queue = [root];
    for (let d = queue.pop(); d; d = queue.pop()) {
      const children = await this.o.index.childrenOf(d);
      for (const c of children) queue.push(c.digest);
      if (children.length > 0) continue;
      const row = await this.o.index.estargz.layerOf(d);
      if (row) this.layers.set(d, { ...image, sourceLayer: row.source, size: row.size });
    }
  }

  /** The blob route's hook, for every blob GET: a Map lookup unless the digest is a tracked converted layer. */
  observe(digest: Digest, ranges: readonly ByteRange[] | undefined, client: string | undefined): void {
    const layer = this.layers.get(digest);
    if (!layer || !ranges || ranges.length === 0) return;
    const spans = ranges.map((r): [number, number] => [r.start, r.end + 1]);
    if (spans.reduce((n, [s, e]) => n + (e - s), 0) > layer.size / 2) return;
    const key = `${client ?? '?'} ${layer.source}`;
    let pull = this.pulls.get(key);
    if (pull && pull.reads.length >= MAX_READS_PER_PULL) return;
    if (!pull) {
      if (this.pulls.size >= MAX_PULLS) return;
      pull = { layers: new Map(), reads: [] };
      this.pulls.set(key, pull);
      const done = pull;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        this.pulls.delete(key);
        void this.ended(done).catch((err: Error) => this.o.log.warn({ source: layer.source, err: err.message }, 'could not learn the start-up set'));
      }, this.o.window);
      timer.unref();
      this.timers.add(timer);
    }
    pull.layers.set(digest, layer);
    pull.reads.push({ digest, ranges: spans });
  }

  private async ended(pull: Pull): Promise<void> {
    const files: StartupFile[] = [];
    const seen = new Set<string>();
    let bytes = 0;
    let any: TrackedLayer | undefined;
    for (const read of pull.reads) {
      const layer = pull.layers.get(read.digest)!;
      const toc = await this.toc(read.digest, layer.size);
      for (const name of filesInExtents(toc.extents, read.ranges)) {
        const key = `${layer.sourceLayer} ${name}`;
        if (seen.has(key)) continue;
        seen.add(key);
        files.push({ layer: layer.sourceLayer, name });
        bytes += toc.sizes.get(name) ?? 0;
        any = layer;
      }
    }
    if (!any) return;
    const { index } = this.o;
    const row = await index.estargz.startup(any.source);
    if (row?.learnedAt != null) return;
    const merged = [...(row?.files ?? [])];
    const have = new Set(merged.map((f) => `${f.layer} ${f.name}`));
    for (const f of files) if (!have.has(`${f.layer} ${f.name}`)) merged.push(f);
    const pulls = (row?.pulls ?? 0) + 1;
    const learned = pulls >= this.o.learnAfter;
    await index.estargz.putStartup({ source: any.source, files: merged, bytes: (row?.bytes ?? 0) + bytes, pulls, learnedAt: learned ? Date.now() : null, updatedAt: Date.now() });
    this.o.log.info({ source: any.source, files: merged.length, pulls, learned }, 'observed a lazy pull of a converted image');
    if (learned) await this.o.relearn(any);
  }

  private toc(digest: Digest, size: number): Promise<LayerFiles> {
    const cached = this.tocs.get(digest);
    if (cached) return cached;
    const p = readToc((start: number, end: number) => readRange(this.o.store, digest, start, end), size).then(({ entries, tocOffset }): LayerFiles => {
      const sizes = new Map<string, number>();
      for (const e of entries) if (e.type === 'reg' && !sizes.has(e.name)) sizes.set(e.name, e.size ?? 0);
      return { extents: fileExtents(entries, tocOffset), sizes };
    });
    this.tocs.set(digest, p);
    p.catch(() => this.tocs.delete(digest));
    return p;
  }

  close(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
