import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Config } from '../../config/schema.ts';
import type { Digest } from '../../oci/digest.ts';
import { RegistryError } from '../../oci/errors.ts';
import { DEFAULT_MANIFEST_ACCEPT } from '../../oci/media-types.ts';
import { choose, storageKey } from '../../oci/negotiation.ts';
import { parsePlatforms } from '../../oci/platform.ts';
import { isTag } from '../../oci/reference.ts';
import { SingleFlight } from '../../single-flight.ts';
import type { AsyncRegistryIndex } from '../../store/async-index-roles.ts';
import type { ChildDescriptor } from '../../store/index-roles.ts';
import type { BlobIngester, BlobReader } from '../../store/roles.ts';
import type { WalkedImage } from '../image-walk.ts';
import { LOCAL_UPSTREAM } from '../local-names.ts';
import type { DerivedTags, ManifestResult, Manifests } from '../manifests.ts';
import type { Route } from '../upstreams.ts';
import { convertImage } from './convert-image.ts';
import type { LayerConversions } from './layer-conversions.ts';
import { StartupLearner } from './learning.ts';
import { type Plan, planOf } from './options.ts';
import { sourceOf } from './rewrite.ts';

/** How long a failed conversion answers with its error before it is tried again (a client retrying in a loop). */
const FAILURE_MEMO_MS = 30_000;

/** A manifest the conversion wrote: recorded under every repository that asks for the conversion. */
export interface WrittenManifest {
  digest: Digest;
  size: number;
  mediaType: string;
  children: ChildDescriptor[];
}

/** A converted image: its root (manifest or index) and everything the conversion wrote. */
export interface ConvertedImage {
  source: Digest;
  options: string;
  root: WrittenManifest;
  manifests: WrittenManifest[];
}

/** One request's conversion: where, which tags, and the source image as resolved for it. */
interface Job {
  route: Route;
  sourceTag: string;
  /** The suffixed tag. */
  tag: string;
  accept: string;
  source: Digest;
  mediaType: string;
  bytes: Buffer;
}

export interface EstargzImagesOptions {
  config: Config['estargz'];
  manifests: Pick<Manifests, 'source'>;
  layers: LayerConversions;
  store: BlobReader & BlobIngester;
  index: AsyncRegistryIndex;
  blobs: { warm(route: Route, d: Digest): Promise<unknown> };
  log: Logger;
  /** berth is offline: a converted tag whose source tag is not cached is served as stored (an import of the -esgz tag alone). */
  offline: (upstream: string) => boolean;
  /** The upstream is a parent berth: it converts `-esgz` tags itself, so they are asked of it as tags (Upstreams.isParent). */
  parent?: (upstream: string) => boolean;
  /** Called once per image actually converted. */
  onConverted?: (image: ConvertedImage) => void;
}

/**
 * `<tag><suffix>` (estargz.suffix, `-esgz`) is the eStargz form of `<tag>` (issue #11). The source tag is
 * resolved as any client's would be (cache, tagTtl, revalidation, offline), so a tag that moved upstream
 * converts its new image; the conversion is then found in the index by (source digest, options) or made,
 * once for all requesters (SingleFlight by source digest and options). A request waits up to
 * estargz.waitFor; after that it is a 404 saying the conversion is under way, and the conversion goes on.
 * The result is stored like pulled content: manifests recorded under the requesting repository, the
 * suffixed tag in the tag index, so digests, offline mode, `ls`, export and gc see an ordinary image.
 */
export class EstargzImages implements DerivedTags {
  private readonly flights = new SingleFlight<ConvertedImage>();
  private readonly failures = new LRUCache<string, RegistryError>({ max: 1000, ttl: FAILURE_MEMO_MS });
  private readonly platforms;
  /** Learning the start-up set (estargz.learnAfter > 0). */
  readonly learner: StartupLearner | undefined;

  constructor(private readonly o: EstargzImagesOptions) {
    this.platforms = parsePlatforms(o.config.platforms.join(',') || undefined);
    this.learner =
      o.config.learnAfter > 0
        ? new StartupLearner({
            store: o.store,
            index: o.index,
            log: o.log,
            learnAfter: o.config.learnAfter,
            window: o.config.learnWindow,
            relearn: async (image) => {
              await this.convertTag(image.route, image.sourceTag, image.accept, Number.POSITIVE_INFINITY);
            },
          })
        : undefined;
  }

  close(): void {
    this.learner?.close();
  }

  /** The tag a suffixed tag converts, or undefined when `tag` is no conversion request. */
  sourceTagOf(tag: string): string | undefined {
    const { enabled, suffix } = this.o.config;
    if (!enabled || !tag.endsWith(suffix)) return undefined;
    const source = tag.slice(0, -suffix.length);
    return source !== '' && isTag(source) ? source : undefined;
  }

  answer(route: Route, tag: string, accept: string, method: 'GET' | 'HEAD'): Promise<ManifestResult> | undefined {
    const sourceTag = this.sourceTagOf(tag);
    if (sourceTag === undefined || this.o.parent?.(route.upstream)) return undefined;
    if (sourceTag.endsWith(this.o.config.suffix)) {
      // The source would be berth's own converted tag (cached under that name): an image is converted once.
      return Promise.reject(new RegistryError('MANIFEST_UNKNOWN', `${route.repository}:${tag}: a converted image (${sourceTag}) is not converted again`));
    }
    return (async () => {
      const converted = await this.convertTag(route, sourceTag, accept, this.o.config.waitFor);
      return this.o.manifests.source(route, { kind: 'digest', digest: converted.digest }, accept, method);
    })();
  }

  /**
   * Prewarm and export: the eStargz form of a walked image, converted now if need be (however long that
   * takes: no waitFor), then walked like any image (`walk` of its suffixed name).
   */
  async convertWalked(image: WalkedImage, walk: (name: string) => Promise<WalkedImage>): Promise<WalkedImage> {
    const tag = image.reference.tag;
    if (!this.o.config.enabled) throw new Error('eStargz conversion is off (estargz.enabled: false)');
    if (tag === undefined || image.reference.digest !== undefined) throw new Error(`${image.name}: converting to eStargz needs a tag (the converted image is <tag>${this.o.config.suffix})`);
    if (!this.o.parent?.(image.route.upstream)) await this.convertTag(image.route, tag, DEFAULT_MANIFEST_ACCEPT, Number.POSITIVE_INFINITY);
    return walk(`${image.name}${this.o.config.suffix}`);
  }

  /**
   * Resolves `sourceTag`, converts its image (or finds the conversion) and tags it; waits up to `waitMs`.
   * With a learned start-up set the conversion with those files first is the one wanted; while it runs,
   * the plain conversion (if there is one) is served and the tag moves when the learned one is done.
   */
  async convertTag(route: Route, sourceTag: string, accept: string, waitMs: number): Promise<{ source: Digest; digest: Digest }> {
    const tag = `${sourceTag}${this.o.config.suffix}`;
    let source: ManifestResult;
    try {
      source = await this.o.manifests.source(route, { kind: 'tag', tag: sourceTag as never }, accept, 'GET');
    } catch (err) {
      // The source cannot be resolved (offline, and only the converted tag was imported): the converted tag as stored.
      const row = choose(await this.o.index.tagRows(route.upstream, route.repository, tag), accept);
      // Online, a source tag the upstream does not have (any more) is a 404 for its conversion too.
      if (this.o.offline(route.upstream) && row && err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN' && (await this.o.store.stat(row.digest)))
        return { source: row.digest, digest: row.digest };
      throw err;
    }
    if (!source.bytes) throw new RegistryError('INTERNAL', `manifest ${source.digest} came without its bytes`);
    const job: Job = { route, sourceTag, tag, accept, source: source.digest, mediaType: source.mediaType, bytes: source.bytes };
    const startup = await this.o.index.estargz.startup(source.digest);
    const learned = startup?.learnedAt != null && startup.files.length > 0 ? startup.files : undefined;
    const plan = planOf(this.o.config, learned);
    const known = await this.known(job, plan.options, !learned);
    if (known) {
      await this.done(job, known);
      return { source: source.digest, digest: known.digest };
    }
    if (learned) {
      const plain = await this.known(job, planOf(this.o.config, undefined).options, true);
      if (plain) {
        this.start(job, plan).catch(() => undefined);
        await this.done(job, plain);
        return { source: source.digest, digest: plain.digest };
      }
    }
    const image = await within(this.start(job, plan), waitMs);
    if (!image) {
      throw new RegistryError('MANIFEST_UNKNOWN', `${route.repository}:${tag} is being converted to eStargz from ${sourceTag} (${source.digest}); the conversion is under way, ask again shortly`);
    }
    return { source: source.digest, digest: image.root.digest };
  }

  /** The one conversion of (source, options), recorded and tagged for this job whether or not its request still waits. */
  private start(job: Job, plan: Plan): Promise<ConvertedImage> {
    const key = `${job.source} ${plan.options}`;
    const failed = this.failures.get(key);
    if (failed) return Promise.reject(failed);
    const work = this.flights.run(key, () => this.convert(job, plan, key));
    const recorded = work.then(async (image) => {
      await this.record(job.route, image);
      await this.done(job, image.root);
      return image;
    });
    recorded.catch(() => undefined);
    return recorded;
  }

  /** The tag names `root` now, and reads of its layers are watched (learning). */
  private async done(job: Job, root: Pick<WrittenManifest, 'digest' | 'size' | 'mediaType'>): Promise<void> {
    await this.tag(job.route, job.tag, job.accept, root);
    await this.learner?.watch(job, root.digest);
  }

  /** A conversion of `source` that is complete on disk: from the index, or an imported converted tag naming it. */
  private async known(job: Job, options: string, byTag: boolean): Promise<WrittenManifest | undefined> {
    const { index, store } = this.o;
    const { route, source, tag, accept } = job;
    let digest = (await index.estargz.image(source, options))?.digest;
    if (!digest) {
      const row = byTag ? choose(await index.tagRows(route.upstream, route.repository, tag), accept) : undefined;
      const bytes = row && (await store.readBytes(row.digest));
      if (!row || !bytes || sourceOf(bytes) !== source) return undefined;
      digest = row.digest;
      // A local repository's tag is what a client pushed, trusted for that repository alone: recorded as
      // the conversion of `source` it would be served for every repository whose tag names that source.
      if (route.upstream !== LOCAL_UPSTREAM) await index.estargz.putImage({ source, options, digest, upstream: route.upstream, repository: route.repository, createdAt: Date.now() });
    }
    // Converted layers exist nowhere upstream: one evicted means the image is converted again (its other layers are found).
    if (!(await this.complete(digest))) return undefined;
    const blob = await index.getBlob(digest);
    if (!blob?.mediaType) return undefined;
    await this.adopt(route, digest);
    return { digest, size: blob.size, mediaType: blob.mediaType, children: [] };
  }

  /**
   * A conversion made for another repository (or deleted from this local one) recorded as this
   * repository's content too, manifests children first, as record() does for a new one: the tag is
   * answered by digest through this repository, and a local repository serves only what it references.
   */
  private async adopt(route: Route, root: Digest): Promise<void> {
    const { index } = this.o;
    if ((await index.refsOf(root)).some((r) => r.upstream === route.upstream && r.repository === route.repository)) return;
    const order: Array<{ d: Digest; children: ChildDescriptor[] }> = [];
    const visit = async (d: Digest, depth: number): Promise<void> => {
      const children = await index.childrenOf(d);
      if (children.length === 0 || depth > 4) return;
      for (const c of children) await visit(c.digest, depth + 1);
      order.push({ d, children });
    };
    await visit(root, 0);
    for (const { d, children } of order) {
      const blob = await index.getBlob(d);
      if (blob?.mediaType) await index.recordManifest({ upstream: route.upstream, repository: route.repository, digest: d, size: blob.size, mediaType: blob.mediaType, children });
    }
  }

  private async complete(root: Digest): Promise<boolean> {
    const seen = new Set<Digest>();
    const queue = [root];
    for (let d = queue.pop(); d; d = queue.pop()) {
      if (seen.has(d)) continue;
      seen.add(d);
      if (!(await this.o.store.stat(d))) return false;
      for (const c of await this.o.index.childrenOf(d)) queue.push(c.digest);
    }
    return true;
  }

  private async convert(job: Job, plan: Plan, key: string): Promise<ConvertedImage> {
    const { route, source } = job;
    const started = Date.now();
    try {
      const image = await convertImage({ ...this.o, route, source, mediaType: job.mediaType, bytes: job.bytes, plan, platforms: this.platforms });
      await this.o.index.estargz.putImage({ source, options: plan.options, digest: image.root.digest, upstream: route.upstream, repository: route.repository, createdAt: Date.now() });
      this.o.log.info({ upstream: route.upstream, repository: route.repository, source, digest: image.root.digest, learned: plan.learned, ms: Date.now() - started }, 'converted image to eStargz');
      this.o.onConverted?.(image);
      return image;
    } catch (err) {
      const e = err instanceof RegistryError ? err : new RegistryError('UNAVAILABLE', `eStargz conversion of ${source} failed: ${(err as Error).message}`);
      this.o.log.error({ upstream: route.upstream, repository: route.repository, source, reason: e.message }, 'eStargz conversion failed');
      // What the source is (a bad layer, not an image) is remembered; a busy or unreachable upstream is not.
      if (e.code !== 'UNAVAILABLE') this.failures.set(key, e);
      throw e;
    }
  }

  /** The conversion's manifests as content of this repository (references, children), children first. */
  private async record(route: Route, image: ConvertedImage): Promise<void> {
    for (const m of image.manifests) await this.o.index.recordManifest({ upstream: route.upstream, repository: route.repository, ...m });
  }

  private async tag(route: Route, tag: string, accept: string, root: Pick<WrittenManifest, 'digest' | 'size' | 'mediaType'>): Promise<void> {
    const { index } = this.o;
    const key = storageKey(accept, root.mediaType);
    const row = (await index.tagRows(route.upstream, route.repository, tag)).find((r) => r.accept === key);
    if (row?.digest === root.digest) return;
    await index.putTag({ upstream: route.upstream, repository: route.repository, tag, digest: root.digest, mediaType: root.mediaType, size: root.size, accept: key, checkedAt: Date.now() });
  }
}

/** The promise's value, or undefined once `ms` passed first. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  // setTimeout takes at most 2^31-1 ms (a larger delay fires at once).
  if (!Number.isFinite(ms) || ms > 2 ** 31 - 1) return p;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<undefined>((ok) => (timer = setTimeout(() => ok(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
