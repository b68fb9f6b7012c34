// What every tag/manifest index (src/store/index-roles.ts) must do: a test file calls indexConformance()
// with a factory of fresh, empty indexes; each case runs on its own. SQLite runs it in
// test/store-conformance.test.ts; a PostgreSQL index (issue #12) runs the same cases. Every call is
// awaited, so an implementation whose methods return promises passes the same file.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { afterEach, describe, test } from 'node:test';
import type { Digest } from '../../../src/oci/digest.ts';
import type { AsyncRegistryIndex } from '../../../src/store/async-index-roles.ts';
import type { ChildDescriptor, ManifestRecord, RegistryIndex } from '../../../src/store/index-roles.ts';

/** The synchronous roles (SQLite) or the promised ones (PostgreSQL, asyncIndex()): every call below is awaited. */
type AnyIndex = RegistryIndex | AsyncRegistryIndex;

export interface IndexUnderTest {
  index: AnyIndex;
  /** Closes the index and opens the same one again (what a restart sees). */
  reopen(): Promise<AnyIndex>;
  cleanup(): Promise<void>;
}

/**
 * An index at the oldest schema this implementation migrates from, holding one tag `docker.io`
 * `library/old:latest` → `digest` (a manifest row of `size` bytes). Opening it must migrate it.
 */
export interface OldIndexUnderTest {
  index: AnyIndex;
  tag: { upstream: string; repository: string; tag: string; digest: Digest; size: number };
  cleanup(): Promise<void>;
}

export interface IndexConformanceOptions {
  /** Opens an index of an older schema (omit when the implementation has no older schema). */
  openOldSchema?: () => Promise<OldIndexUnderTest>;
}

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
const CONFIG = 'application/vnd.oci.image.config.v1+json';

let counter = 0;
/** A distinct digest per call (the index does not read bytes). */
export const someDigest = (what = 'x'): Digest => `sha256:${createHash('sha256').update(`${what}-${counter++}-${process.pid}`).digest('hex')}` as Digest;

function manifestWith(children: ChildDescriptor[], over: Partial<ManifestRecord> = {}): ManifestRecord {
  return { upstream: 'docker.io', repository: 'library/app', digest: someDigest('manifest'), size: 1234, mediaType: MANIFEST, children, ...over };
}

const byDigest = <T extends { digest: string }>(xs: T[]): T[] => [...xs].sort((a, b) => (a.digest < b.digest ? -1 : 1));

export function indexConformance(name: string, make: () => Promise<IndexUnderTest>, o: IndexConformanceOptions = {}): void {
  describe(`index conformance: ${name}`, () => {
    let current: IndexUnderTest | undefined;
    const fresh = async () => (current = await make());
    afterEach(async () => {
      await current?.cleanup();
      current = undefined;
    });

    test('a fresh index is empty and healthy', async () => {
      const { index } = await fresh();
      const d = someDigest();
      assert.equal(await index.getBlob(d), undefined);
      assert.deepEqual(await index.totals(), { total: 0, count: 0 });
      assert.deepEqual(await index.allTags(), []);
      assert.deepEqual(await index.allDigests(), []);
      assert.deepEqual(await index.childrenOf(d), []);
      assert.deepEqual(await index.refsOf(d), []);
      assert.equal(await index.isReferenced(d), false);
      assert.equal(await index.newest(), undefined);
      await index.probe();
      assert.ok((await index.schemaVersion()) >= 1, 'a fresh index is at the current schema');
    });

    test('recordManifest: the row, its children, references of the repository to it and to each child', async () => {
      const { index } = await fresh();
      const layer = { digest: someDigest('layer'), size: 5000, mediaType: LAYER };
      const config = { digest: someDigest('config'), size: 300, mediaType: CONFIG };
      // Extra descriptor fields (annotations, platform) are fine and not kept.
      const m = manifestWith([{ ...config, annotations: { a: 'b' } } as ChildDescriptor, layer]);
      await index.recordManifest(m);
      const row = await index.getBlob(m.digest);
      assert.equal(row?.size, m.size);
      assert.equal(row?.mediaType, MANIFEST);
      assert.deepEqual(byDigest(await index.childrenOf(m.digest)), byDigest([config, layer]));
      const repo = { upstream: 'docker.io', repository: 'library/app' };
      for (const d of [m.digest, layer.digest, config.digest]) assert.deepEqual(await index.refsOf(d), [repo], `refs of ${d}`);
      assert.equal(await index.descriptorSize(layer.digest, repo), 5000);
      assert.equal(await index.descriptorSize(layer.digest, { upstream: 'docker.io', repository: 'library/other' }), undefined, 'only its own repository’s manifests count');
      assert.equal(await index.isReferenced(layer.digest), true, 'a child of a recorded manifest is referenced');
      assert.equal(await index.isReferenced(m.digest), false, 'the manifest itself, untagged, is not');
      assert.equal(await index.getBlob(layer.digest), undefined, 'children get no blob row until their bytes are there');
    });

    test('recordManifest is idempotent: recording it again adds no row, child or reference', async () => {
      const { index } = await fresh();
      const m = manifestWith([{ digest: someDigest('layer'), size: 10, mediaType: LAYER }]);
      await index.recordManifest(m);
      await index.recordManifest(m);
      await index.recordManifest({ ...m });
      assert.deepEqual(await index.totals(), { total: m.size, count: 1 });
      assert.equal((await index.childrenOf(m.digest)).length, 1);
      assert.equal((await index.refsOf(m.children[0]!.digest)).length, 1);
      // The same manifest seen from a second repository adds that repository's references only.
      await index.recordManifest({ ...m, repository: 'library/fork' });
      assert.equal((await index.refsOf(m.digest)).length, 2);
      assert.deepEqual(await index.totals(), { total: m.size, count: 1 });
    });

    test('recordManifest is atomic: a child the index refuses leaves nothing of the manifest behind', async () => {
      const { index } = await fresh();
      const kept = manifestWith([{ digest: someDigest('layer'), size: 10, mediaType: LAYER }]);
      await index.recordManifest(kept);
      const good = { digest: someDigest('good-child'), size: 7, mediaType: LAYER };
      // A descriptor without a media type is refused, after the row and the first child were written
      // inside the transaction.
      const broken = manifestWith([good, { digest: someDigest('bad-child'), size: 1, mediaType: null as unknown as string }], { repository: 'library/broken' });
      await assert.rejects(async () => index.recordManifest(broken));
      assert.equal(await index.getBlob(broken.digest), undefined, 'no manifest row');
      assert.deepEqual(await index.childrenOf(broken.digest), [], 'no children');
      assert.deepEqual(await index.refsOf(broken.digest), [], 'no reference to the manifest');
      assert.deepEqual(await index.refsOf(good.digest), [], 'no reference to its first child');
      assert.deepEqual(await index.totals(), { total: kept.size, count: 1 }, 'what was there before is untouched');
      assert.equal((await index.childrenOf(kept.digest)).length, 1);
      // And the index still takes writes afterwards.
      await index.recordManifest({ ...broken, children: [good] });
      assert.equal((await index.getBlob(broken.digest))?.mediaType, MANIFEST);
    });

    test('an image index and its child manifests: children chain, deleteChildren cuts one edge set', async () => {
      const { index } = await fresh();
      const layer = { digest: someDigest('layer'), size: 99, mediaType: LAYER };
      const amd64 = manifestWith([layer]);
      const list = manifestWith([{ digest: amd64.digest, size: amd64.size, mediaType: MANIFEST }], { mediaType: INDEX });
      await index.recordManifest(list);
      await index.recordManifest(amd64);
      assert.deepEqual(await index.childrenOf(list.digest), [{ digest: amd64.digest, size: amd64.size, mediaType: MANIFEST }]);
      assert.equal(await index.isReferenced(amd64.digest), true);
      await index.deleteChildren(list.digest);
      assert.deepEqual(await index.childrenOf(list.digest), []);
      assert.equal(await index.isReferenced(amd64.digest), false);
      assert.equal(await index.isReferenced(layer.digest), true, 'the child manifest still names its layer');
    });

    test('tags are keyed by negotiation: each answer round-trips, getTag prefers the tag’s own content', async () => {
      const { index } = await fresh();
      const where = { upstream: 'docker.io', repository: 'library/app', tag: 'latest' };
      const own = { ...where, digest: someDigest('list'), mediaType: INDEX, size: 700, checkedAt: 1000 };
      const narrow = { ...where, accept: `${MANIFEST},application/vnd.docker.distribution.manifest.v2+json`, digest: someDigest('amd64'), mediaType: MANIFEST, size: 500, checkedAt: 2000 };
      await index.putTag(narrow);
      assert.deepEqual(await index.getTag(where.upstream, where.repository, where.tag), narrow, 'the only answer');
      await index.putTag(own);
      const rows = await index.tagRows(where.upstream, where.repository, where.tag);
      assert.deepEqual(
        [...rows].sort((a, b) => (a.accept < b.accept ? -1 : 1)),
        [{ ...own, accept: '*' }, narrow].sort((a, b) => (a.accept < b.accept ? -1 : 1)),
      );
      assert.deepEqual(await index.getTag(where.upstream, where.repository, where.tag), { ...own, accept: '*' }, 'no key is the tag’s own content');
      // Putting the same key again replaces that answer only.
      const moved = { ...narrow, digest: someDigest('amd64-v2'), checkedAt: 3000 };
      await index.putTag(moved);
      assert.equal((await index.tagRows(where.upstream, where.repository, where.tag)).length, 2);
      assert.ok((await index.tagRows(where.upstream, where.repository, where.tag)).some((r) => r.digest === moved.digest));
      assert.equal(await index.isReferenced(moved.digest), true, 'a tagged digest is referenced');
      await index.putTag({ ...where, tag: 'v1', digest: own.digest, mediaType: INDEX, size: 700, checkedAt: 1 });
      await index.putTag({ ...where, repository: 'library/other', digest: own.digest, mediaType: INDEX, size: 700, checkedAt: 1 });
      assert.deepEqual(await index.listTags(where.upstream, where.repository), ['latest', 'v1']);
      assert.equal((await index.allTags()).length, 4);
      await index.deleteTag(where.upstream, where.repository, 'latest');
      assert.deepEqual(await index.tagRows(where.upstream, where.repository, 'latest'), [], 'every negotiation of it goes');
      assert.deepEqual(await index.listTags(where.upstream, where.repository), ['v1']);
      assert.deepEqual(await index.listTags(where.upstream, 'library/other'), ['latest'], 'the same tag in another repository stays');
    });

    test('getTag without the tag’s own content answers the most recently checked negotiation', async () => {
      const { index } = await fresh();
      const where = { upstream: 'quay.io', repository: 'org/app', tag: '1' };
      const older = { ...where, accept: 'a', digest: someDigest(), mediaType: MANIFEST, size: 1, checkedAt: 10 };
      const newer = { ...where, accept: 'b', digest: someDigest(), mediaType: MANIFEST, size: 1, checkedAt: 20 };
      await index.putTag(newer);
      await index.putTag(older);
      assert.equal((await index.getTag(where.upstream, where.repository, where.tag))?.digest, newer.digest);
    });

    test('pins: held per reference, shared digests stay pinned until the last reference lets go', async () => {
      const { index } = await fresh();
      const [a, b, c] = [someDigest('a'), someDigest('b'), someDigest('c')];
      for (const d of [a, b, c]) await index.putBlob(d, 10, null);
      await index.pins.pin('registry.k8s.io/pause:3.9', [a, b]);
      await index.pins.pin('docker.io/library/app:1', [b, c]);
      assert.deepEqual([...(await index.pins.digests())].sort(), [a, b, c].sort());
      assert.deepEqual(await index.pins.references(), ['docker.io/library/app:1', 'registry.k8s.io/pause:3.9']);
      assert.deepEqual(await index.evictable(10), [], 'pinned blobs are not evictable');
      assert.equal(await index.pins.unpin('registry.k8s.io/pause:3.9'), 2);
      assert.equal(await index.pins.isPinned(a), false);
      assert.equal(await index.pins.isPinned(b), true, 'still held by the other reference');
      assert.deepEqual(
        (await index.evictable(10)).map((e) => e.digest),
        [a],
      );
      // Pinning a reference again replaces what it held.
      await index.pins.pin('docker.io/library/app:1', [c]);
      assert.equal(await index.pins.isPinned(b), false);
      assert.equal(await index.pins.unpin('never-pinned'), 0);
    });

    test('blob rows: totals, newest, least-recently-used order after touch and flushAccess, delete', async () => {
      const { index } = await fresh();
      const [a, b, c] = [someDigest('a'), someDigest('b'), someDigest('c')];
      await index.putBlob(a, 100, null, 1000);
      await index.putBlob(b, 200, null, 2000);
      await index.putBlob(c, 300, MANIFEST, 3000);
      assert.deepEqual(await index.totals(), { total: 600, count: 3 });
      assert.deepEqual(await index.newest(), { digest: c, size: 300 });
      assert.deepEqual(
        (await index.evictable(10)).map((e) => e.digest),
        [a, b, c],
      );
      assert.deepEqual(await index.evictable(1), [{ digest: a, size: 100 }]);
      await index.touch(a, 5000);
      await index.flushAccess();
      assert.deepEqual(
        (await index.evictable(10)).map((e) => e.digest),
        [b, c, a],
      );
      assert.equal((await index.getBlob(a))?.accessedAt, 5000);
      // A later put of a known blob keeps its media type when none is given (a manifest stays a manifest).
      await index.putBlob(c, 300, null);
      assert.equal((await index.getBlob(c))?.mediaType, MANIFEST);
      await index.deleteBlob(b);
      assert.equal(await index.getBlob(b), undefined);
      assert.deepEqual(await index.totals(), { total: 400, count: 2 });
      assert.deepEqual([...(await index.allDigests())].sort(), [a, c].sort());
    });

    test('what was written is there after the index is closed and opened again', async () => {
      const under = await fresh();
      const m = manifestWith([{ digest: someDigest('layer'), size: 10, mediaType: LAYER }]);
      await under.index.recordManifest(m);
      await under.index.putTag({ upstream: m.upstream, repository: m.repository, tag: 'v1', digest: m.digest, mediaType: MANIFEST, size: m.size, checkedAt: 42 });
      await under.index.pins.pin('docker.io/library/app:v1', [m.digest]);
      const readAt = Date.now() + 60_000;
      await under.index.touch(m.digest, readAt);
      const index = await under.reopen();
      assert.equal((await index.getBlob(m.digest))?.accessedAt, readAt, 'access times pending at close are written');
      assert.equal((await index.childrenOf(m.digest)).length, 1);
      assert.equal((await index.getTag(m.upstream, m.repository, 'v1'))?.digest, m.digest);
      assert.equal(await index.pins.isPinned(m.digest), true);
    });

    const SIG = 'application/vnd.dev.cosign.artifact.sig.v1+json';
    const SBOM = 'application/spdx+json';

    test('referrers: recordManifest of a manifest with a subject lists it for that repository and subject, once', async () => {
      const { index } = await fresh();
      const subject = someDigest('subject');
      const image = manifestWith([{ digest: someDigest('layer'), size: 10, mediaType: LAYER }], { digest: subject });
      const sig = manifestWith([{ digest: someDigest('sig-blob'), size: 5, mediaType: 'application/octet-stream' }], {
        subject,
        artifactType: SIG,
        annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' },
        size: 321,
      });
      const plain = manifestWith([], { digest: someDigest('plain') });
      for (const m of [image, sig, sig, plain]) await index.recordManifest(m);
      assert.deepEqual(await index.referrersOf(sig.upstream, sig.repository, subject), [
        { mediaType: MANIFEST, digest: sig.digest, size: 321, artifactType: SIG, annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' } },
      ]);
      assert.deepEqual(await index.referrersOf(sig.upstream, 'library/other', subject), [], 'another repository has no such referrer');
      assert.deepEqual(await index.referrersOf('@local', sig.repository, subject), [], 'nor another upstream');
      assert.deepEqual(await index.referrersOf(sig.upstream, sig.repository, someDigest('unknown')), []);
      assert.deepEqual(await index.referrerDigests(subject), [sig.digest]);
      assert.deepEqual(await index.referrerDigests(sig.digest), []);
      // The same referrer recorded in a second repository is listed there too.
      await index.recordManifest({ ...sig, upstream: '@local', repository: 'site/app' });
      assert.equal((await index.referrersOf('@local', 'site/app', subject)).length, 1);
      assert.deepEqual(await index.referrerDigests(subject), [sig.digest], 'one digest, however many repositories');
      assert.equal(await index.referrersCheckedAt(sig.upstream, sig.repository, subject), undefined, 'no upstream list was fetched');
    });

    test('referrers: an upstream list replaces the previous list, and stored referrers stay merged in', async () => {
      const { index } = await fresh();
      const subject = someDigest('subject');
      const stored = manifestWith([], { subject, artifactType: SIG });
      await index.recordManifest(stored);
      const listedA = { mediaType: MANIFEST, digest: someDigest('a'), size: 10, artifactType: SBOM, annotations: { k: 'v' } };
      const listedB = { mediaType: MANIFEST, digest: someDigest('b'), size: 11 };
      const sameAsStored = { mediaType: MANIFEST, digest: stored.digest, size: 99999, artifactType: 'application/x-wrong' };
      await index.putUpstreamReferrers(stored.upstream, stored.repository, subject, [listedA, listedB, sameAsStored], 1000);
      assert.equal(await index.referrersCheckedAt(stored.upstream, stored.repository, subject), 1000);
      const first = await index.referrersOf(stored.upstream, stored.repository, subject);
      assert.deepEqual(first, byDigest([{ mediaType: MANIFEST, digest: stored.digest, size: stored.size, artifactType: SIG }, listedA, listedB]), 'a stored referrer is listed with its own fields');
      await index.putUpstreamReferrers(stored.upstream, stored.repository, subject, [listedB], 2000);
      assert.equal(await index.referrersCheckedAt(stored.upstream, stored.repository, subject), 2000);
      assert.deepEqual(
        (await index.referrersOf(stored.upstream, stored.repository, subject)).map((r) => r.digest),
        [stored.digest, listedB.digest].sort(),
        'the next list drops what the upstream no longer lists, never a stored referrer',
      );
      await index.putUpstreamReferrers(stored.upstream, stored.repository, subject, [], 3000);
      assert.deepEqual(
        (await index.referrersOf(stored.upstream, stored.repository, subject)).map((r) => r.digest),
        [stored.digest],
      );
      // A listed referrer fetched later becomes a stored one.
      await index.putUpstreamReferrers(stored.upstream, stored.repository, subject, [listedA], 4000);
      await index.recordManifest(manifestWith([], { digest: listedA.digest, subject, artifactType: SBOM, size: 10 }));
      await index.putUpstreamReferrers(stored.upstream, stored.repository, subject, [], 5000);
      assert.deepEqual(
        (await index.referrersOf(stored.upstream, stored.repository, subject)).map((r) => r.digest),
        byDigest([stored, { digest: listedA.digest }]).map((r) => r.digest),
      );
    });

    test('referrers: forgetReferrer drops a removed manifest as a referrer and as a subject; rows survive a reopen', async () => {
      const under = await fresh();
      const { index } = under;
      const subject = someDigest('subject');
      const sig = manifestWith([], { subject, artifactType: SIG });
      const sigOfSig = manifestWith([], { subject: sig.digest, artifactType: SIG });
      await index.recordManifest(sig);
      await index.recordManifest(sigOfSig);
      await index.putUpstreamReferrers(sig.upstream, sig.repository, sig.digest, [{ mediaType: MANIFEST, digest: someDigest('listed'), size: 1 }], 7);
      const reopened = await under.reopen();
      assert.equal((await reopened.referrersOf(sig.upstream, sig.repository, subject)).length, 1);
      assert.equal((await reopened.referrersOf(sig.upstream, sig.repository, sig.digest)).length, 2);
      assert.equal(await reopened.referrersCheckedAt(sig.upstream, sig.repository, sig.digest), 7);
      await reopened.forgetReferrer(sig.digest);
      assert.deepEqual(await reopened.referrersOf(sig.upstream, sig.repository, subject), []);
      assert.deepEqual(await reopened.referrersOf(sig.upstream, sig.repository, sig.digest), [], 'its own referrers are forgotten with it');
      assert.equal(await reopened.referrersCheckedAt(sig.upstream, sig.repository, sig.digest), undefined);
      assert.deepEqual(await reopened.referrerDigests(subject), []);
    });

    test('estargz: conversions kept by (source, options), found by their digest; start-up sets replaced whole; all survive a reopen', async () => {
      const under = await fresh();
      const { index } = under;
      const source = someDigest('layer');
      const layer = { source, options: 'chunk=4194304;files=none', digest: someDigest('esgz'), size: 10, diffId: someDigest('diff'), tocDigest: someDigest('toc'), uncompressedSize: 20 };
      await index.estargz.putLayer(layer);
      assert.deepEqual(await index.estargz.layer(source, layer.options), layer);
      assert.equal(await index.estargz.layer(source, 'chunk=1;files=none'), undefined, 'other options are another conversion');
      const image = { source: someDigest('image'), options: 'o', digest: someDigest('converted'), upstream: 'docker.io', repository: 'lab/x', createdAt: 5 };
      await index.estargz.putImage(image);
      const files = [{ layer: source, name: 'etc/passwd' }];
      await index.estargz.putStartup({ source: image.source, files, bytes: 3, pulls: 1, learnedAt: null, updatedAt: 1 });
      await index.estargz.putStartup({ source: image.source, files, bytes: 3, pulls: 2, learnedAt: 9, updatedAt: 2 });
      const reopened = await under.reopen();
      assert.deepEqual(await reopened.estargz.layerOf(layer.digest), layer);
      assert.deepEqual(await reopened.estargz.image(image.source, 'o'), image);
      assert.deepEqual(await reopened.estargz.imageOf(image.digest), image);
      assert.deepEqual(await reopened.estargz.images(), [image]);
      assert.deepEqual(await reopened.estargz.startup(image.source), { source: image.source, files, bytes: 3, pulls: 2, learnedAt: 9, updatedAt: 2 });
      assert.equal(await reopened.estargz.startup(someDigest('none')), undefined);
    });

    if (o.openOldSchema) {
      const openOld = o.openOldSchema;
      test('an index of an older schema is migrated when opened: its tags are there, at the current version', async () => {
        const current = await make();
        const version = await current.index.schemaVersion();
        await current.cleanup();
        const old = await openOld();
        try {
          assert.equal(await old.index.schemaVersion(), version);
          const t = old.tag;
          const row = await old.index.getTag(t.upstream, t.repository, t.tag);
          assert.equal(row?.digest, t.digest);
          assert.equal(row?.accept, '*', 'a row from before negotiation keys is the tag’s own content');
          assert.equal(row?.checkedAt, 0, 'and is revalidated on first use');
          assert.equal((await old.index.getBlob(t.digest))?.size, t.size);
          // The migrated index takes the new kind of row.
          await old.index.putTag({ ...t, accept: MANIFEST, mediaType: MANIFEST, checkedAt: 1 });
          assert.equal((await old.index.tagRows(t.upstream, t.repository, t.tag)).length, 2);
          // And referrers (a later step).
          const sig = manifestWith([], { subject: t.digest, artifactType: SIG });
          await old.index.recordManifest(sig);
          assert.deepEqual(
            (await old.index.referrersOf(sig.upstream, sig.repository, t.digest)).map((r) => r.digest),
            [sig.digest],
          );
        } finally {
          await old.cleanup();
        }
      });
    }
  });
}
