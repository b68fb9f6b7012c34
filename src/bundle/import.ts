import { createReadStream, existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { type Digest, isDigest } from '../oci/digest.ts';
import { type ImageReference, parseImageReference } from '../oci/image-reference.ts';
import { MAX_MANIFEST_BYTES, parseManifest } from '../oci/manifest.ts';
import { referrerFieldsOf } from '../oci/referrers.ts';
import { LOCAL_UPSTREAM, type LocalNames } from '../registry/local-names.ts';
import type { AsyncBlobIndex, AsyncManifestIndex, AsyncTagIndex } from '../store/async-index-roles.ts';
import { imageClosure } from '../store/pins.ts';
import { type BlobIngester, type BlobReader, DigestMismatchError, writeBlob } from '../store/roles.ts';
import { importSkopeoDirs } from './import-dirs.ts';
import { blobEntryName, CONTAINERD_NAME, digestOfEntry, LOCAL_MARK, REF_NAME, REFERRER_REPOSITORY } from './layout.ts';

export interface ImportResult {
  images: Array<{ name: string; digest: string }>;
  /** `incomplete`: the bundle names the image but lacks its manifest (the import failed for it). */
  skipped: Array<{ name: string; reason: string; incomplete?: true }>;
  blobs: number;
  added: number;
  bytes: number;
}

/** What an import writes through: the store's verified writes, the index, and the configured upstreams' names. */
export interface ImportDeps {
  store: BlobIngester & Pick<BlobReader, 'stat' | 'readBytes'>;
  index: Pick<AsyncBlobIndex, 'getBlob' | 'putBlob'> & Pick<AsyncManifestIndex, 'recordManifest' | 'childrenOf'> & Pick<AsyncTagIndex, 'putTag'>;
  /** Resolves a reference's registry to a configured upstream (its canonical host), as pulls do. */
  upstreams: { readonly defaultHost: string; get(host: string): { readonly host: string } | undefined; readonly local?: Pick<LocalNames, 'owns'> };
}

export interface IndexEntry {
  mediaType?: string;
  digest?: string;
  size?: number;
  annotations?: Record<string, string>;
}

/**
 * Loads an OCI image layout (a directory, or a tar of one as `berth export` and `skopeo copy
 * oci-archive:` write) into the cache. Every blob is verified against its digest on the way in and
 * committed on its own, so an interrupted import keeps what it completed and a repeated one adds nothing.
 * Each index entry whose name is a full reference (`registry.k8s.io/pause:3.9`) becomes a cached tag of
 * that upstream, served as if it had been pulled from there.
 */
export async function importBundle(ctx: ImportDeps, source: string, onBytes: (n: number) => void = () => {}): Promise<ImportResult> {
  const st = await stat(source);
  const counts = { blobs: 0, added: 0, bytes: 0 };
  let indexBytes: Buffer | undefined;
  if (st.isDirectory() && !existsSync(join(source, 'index.json'))) {
    // Not an OCI layout: per-image directories as `skopeo sync --dest dir` writes them.
    return importSkopeoDirs(ctx, source, counts, onBytes);
  }
  if (st.isDirectory()) {
    indexBytes = await readFile(join(source, 'index.json'));
    const entries = parseIndex(indexBytes);
    // Only what the index reaches is imported; each manifest is read after it was verified in.
    const pending: Digest[] = entries.map((e) => e.digest!).filter((d): d is Digest => isDigest(d));
    const done = new Set<string>();
    while (pending.length > 0) {
      const d = pending.shift()!;
      if (done.has(d)) continue;
      done.add(d);
      // A blob the layout lacks is not fatal to the others: register() names the images it leaves incomplete.
      if (!existsSync(join(source, blobEntryName(d)))) continue;
      const size = await putVerified(ctx, d, createReadStream(join(source, blobEntryName(d))), counts, onBytes);
      // Only what could be a manifest is read back whole: a layer is never held in memory.
      const bytes = size <= MAX_MANIFEST_BYTES ? await ctx.store.readBytes(d) : undefined;
      const m = bytes && tryManifest(bytes);
      if (m) pending.push(...m.manifests.map((c) => c.digest), ...m.blobs.map((c) => c.digest));
    }
  } else {
    const extract = tar.extract();
    const consumed = (async () => {
      for await (const entry of extract) {
        const name = entry.header.name;
        const d = digestOfEntry(name);
        if (d && isDigest(d)) await putVerified(ctx, d, entry as AsyncIterable<Buffer>, counts, onBytes);
        else if (name === 'index.json' || name === './index.json') indexBytes = await collect(entry as AsyncIterable<Buffer>);
        else entry.resume();
      }
    })().catch((err: Error) => {
      extract.destroy(err);
      throw err;
    });
    const read = pipeline(createReadStream(source), extract).catch((err: Error) => {
      throw new Error(`${source} is not a readable OCI layout tar: ${err.message}`);
    });
    const [r, c] = await Promise.allSettled([read, consumed]);
    if (c.status === 'rejected') throw c.reason;
    if (r.status === 'rejected') throw r.reason;
  }
  if (!indexBytes) throw new Error(`${source} has no index.json: not an OCI image layout`);
  const { images, skipped } = await register(ctx, parseIndex(indexBytes));
  return { images, skipped, ...counts };
}

function parseIndex(bytes: Buffer): IndexEntry[] {
  const j = JSON.parse(bytes.toString('utf8')) as { manifests?: IndexEntry[] };
  if (!Array.isArray(j.manifests)) throw new Error('index.json has no manifests');
  return j.manifests;
}

function tryManifest(bytes: Buffer) {
  try {
    return parseManifest(bytes);
  } catch {
    return undefined;
  }
}

async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}

/**
 * Streams one blob into the store's verified write; only a matching digest is committed, and a blob
 * already there is only counted. Resolves with the blob's size.
 */
export async function putVerified(ctx: ImportDeps, d: Digest, body: AsyncIterable<Buffer>, counts: { blobs: number; added: number; bytes: number }, onBytes: (n: number) => void): Promise<number> {
  counts.blobs++;
  const there = await ctx.store.stat(d);
  if (there !== undefined) {
    if (!(await ctx.index.getBlob(d))) await ctx.index.putBlob(d, there.size, null);
    for await (const c of body) onBytes(c.length);
    return there.size;
  }
  let size: number;
  try {
    ({ size } = await writeBlob(ctx.store, d, body, onBytes));
  } catch (err) {
    if (err instanceof DigestMismatchError) throw new Error(`blob ${d} in the bundle hashes to ${err.actual}: the bundle is damaged`);
    throw err;
  }
  await ctx.index.putBlob(d, size, null);
  counts.added++;
  counts.bytes += size;
  return size;
}

/** Indexes the manifests the layout names and records each named reference as a cached tag. */
export async function register(ctx: ImportDeps, entries: IndexEntry[]): Promise<{ images: ImportResult['images']; skipped: ImportResult['skipped'] }> {
  const images: ImportResult['images'] = [];
  const skipped: ImportResult['skipped'] = [];
  for (const e of entries) {
    // A referrer `berth export --with-referrers` wrote is named by digest in its repository: indexed and kept, never tagged.
    const referrerOf = e.annotations?.[REFERRER_REPOSITORY];
    const name = e.annotations?.[REF_NAME] ?? e.annotations?.[CONTAINERD_NAME] ?? (referrerOf && e.digest ? `${referrerOf}@${e.digest}` : undefined);
    if (!e.digest || !isDigest(e.digest)) {
      skipped.push({ name: name ?? '(unnamed)', reason: 'index entry has no valid digest' });
      continue;
    }
    const full = name && (name.includes('/') || name.includes('.')) ? name : e.annotations?.[CONTAINERD_NAME];
    if (!full) {
      skipped.push({ name: name ?? e.digest, reason: 'not named by a full reference (registry/repository:tag); blobs imported, no tag recorded' });
      continue;
    }
    let ref: ImageReference;
    // A local repository's image (issue #10): marked by berth's export, or named under this berth's local.prefixes.
    const local = e.annotations?.[LOCAL_MARK] === 'true' || ctx.upstreams.local?.owns(full.replace(/[:@].*$/, '')) === true;
    try {
      ref = parseImageReference(full, local ? LOCAL_UPSTREAM : ctx.upstreams.defaultHost);
      if (local && ref.host !== LOCAL_UPSTREAM) throw new Error(`a local image is named without a registry host, not as ${full}`);
    } catch (err) {
      skipped.push({ name: full, reason: (err as Error).message });
      continue;
    }
    const upstream = local ? LOCAL_UPSTREAM : (ctx.upstreams.get(ref.host)?.host ?? ref.host);
    const root = await indexManifest(ctx, e.digest, e.mediaType, upstream, ref.repository);
    if (!root) {
      skipped.push({ name: full, reason: `manifest ${e.digest} is missing from the bundle`, incomplete: true });
      continue;
    }
    const absent: Digest[] = [];
    for (const d of await imageClosure(ctx.index, e.digest)) if (!(await ctx.index.getBlob(d))) absent.push(d);
    if (absent.length > 0) {
      skipped.push({
        name: full,
        reason: `${absent.length} of its blobs are missing from the bundle (${absent.slice(0, 3).join(', ')}${absent.length > 3 ? ', …' : ''}): not tagged`,
        incomplete: true,
      });
      continue;
    }
    if (ref.tag) await ctx.index.putTag({ upstream, repository: ref.repository, tag: ref.tag, digest: e.digest, mediaType: root.mediaType, size: root.size, checkedAt: Date.now() });
    images.push({ name: full, digest: e.digest });
    if (local && !ctx.upstreams.local?.owns(ref.repository)) {
      skipped.push({ name: full, reason: `imported as a local image, but ${ref.repository} is not under this berth's local.prefixes: not served until it is` });
    } else if (!local && !ctx.upstreams.get(ref.host)) {
      skipped.push({ name: full, reason: `registry ${ref.host} is not a configured upstream: imported, but not routable until it is added` });
    }
  }
  return { images, skipped };
}

/** Marks a stored blob as a manifest (media type, children, references), recursing into index children. */
async function indexManifest(ctx: ImportDeps, d: Digest, declared: string | undefined, upstream: string, repository: string): Promise<{ mediaType: string; size: number } | undefined> {
  if (!(await ctx.index.getBlob(d))) return undefined;
  const bytes = await ctx.store.readBytes(d);
  if (!bytes) return undefined;
  const m = parseManifest(bytes, declared);
  await ctx.index.recordManifest({ upstream, repository, digest: d, size: bytes.length, mediaType: m.mediaType, children: [...m.manifests, ...m.blobs], ...referrerFieldsOf(m) });
  for (const c of m.manifests) await indexManifest(ctx, c.digest, c.mediaType, upstream, repository);
  return { mediaType: m.mediaType, size: bytes.length };
}
