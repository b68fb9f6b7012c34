// Red team (issue #12): the per-replica cache in front of PostgreSQL (src/store/pg/caching-index.ts) on a real
// PostgreSQL 15. A replica that has looked up many declared sizes (every blob read of a busy cache) must not
// freeze when it records a manifest: dropping a child's sizes was a scan of the whole size cache per child
// (30k sizes x 151 digests blocked the event loop for seconds). A failed query is never kept as "absent".
import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';
import { CachingIndex } from '../src/store/pg/caching-index.ts';
import { PgIndex } from '../src/store/pg/pg-index.ts';
import { someDigest } from './support/conformance/index.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const INDEX = 'application/vnd.oci.image.index.v1+json';
const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

let server: Postgres;
let url: string;
let index: CachingIndex;

before(async () => {
  server = await startPostgres();
  url = await server.createDatabase();
  index = new CachingIndex(await PgIndex.open({ url, poolSize: 6 }));
});

after(async () => {
  await index?.close();
  await server?.destroy();
});

describe('CachingIndex under attack', () => {
  test('recording a manifest beside 30k cached declared sizes does not block the event loop', async () => {
    // One manifest of 300 layers, referenced from 100 repositories: 30k (digest, repository) sizes to look up.
    const children = Array.from({ length: 300 }, (_, i) => ({ digest: someDigest('layer'), size: 1000 + i, mediaType: LAYER }));
    const parent = { upstream: 'docker.io', repository: 'r0', digest: someDigest('manifest'), size: 1, mediaType: MANIFEST, children };
    await index.recordManifest(parent);
    const repos = Array.from({ length: 100 }, (_, i) => `r${i}`);
    for (const repo of repos) await index.addRefs('docker.io', repo, [parent.digest]);
    for (const repo of repos) {
      const sizes = await Promise.all(children.map((c) => index.descriptorSize(c.digest, { upstream: 'docker.io', repository: repo })));
      assert.deepEqual(
        sizes,
        children.map((c) => c.size),
      );
    }
    // A manifest of 150 new layers: each child's cached sizes are dropped.
    const next = { ...parent, repository: 'other', digest: someDigest('manifest'), children: children.slice(0, 150).map((c) => ({ ...c, digest: someDigest('layer') })) };
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    const t0 = performance.now();
    await index.recordManifest(next);
    const took = performance.now() - t0;
    // The histogram records a delay when its timer fires after it.
    await new Promise((resolve) => setTimeout(resolve, 30));
    delay.disable();
    const worst = delay.max / 1e6;
    console.log(`recordManifest beside 30k cached sizes: ${Math.round(took)} ms, worst event-loop delay ${Math.round(worst)} ms`);
    assert.ok(worst < 200, `the event loop was blocked for ${Math.round(worst)} ms`);
    // The sizes are still right afterwards (from memory or the database).
    assert.equal(await index.descriptorSize(children[7]!.digest, { upstream: 'docker.io', repository: 'r42' }), children[7]!.size);
    assert.equal(await index.descriptorSize(next.children[3]!.digest, { upstream: 'docker.io', repository: 'other' }), next.children[3]!.size);
  });

  test('a manifest recorded here is seen at once by descriptorSize, even over a cached answer', async () => {
    const layer = { digest: someDigest('layer'), size: 77, mediaType: LAYER };
    const m = { upstream: 'docker.io', repository: 'seen', digest: someDigest('manifest'), size: 1, mediaType: MANIFEST, children: [layer] };
    assert.equal(await index.descriptorSize(layer.digest, { upstream: 'docker.io', repository: 'seen' }), undefined);
    await index.recordManifest(m);
    assert.equal(await index.descriptorSize(layer.digest, { upstream: 'docker.io', repository: 'seen' }), 77);
  });

  test('many large index manifests read back: the children cache stays bounded by descriptors, not by lists', async () => {
    // A bound of its own so that overflowing it takes seconds of inserts, not a minute (the default is 200k).
    const small = new CachingIndex(await PgIndex.open({ url, poolSize: 2 }), { childrenMax: 10_000 });
    const lists = 5;
    const per = 4000;
    for (let i = 0; i < lists; i++) {
      const children = Array.from({ length: per }, () => ({ digest: someDigest('child'), size: 1, mediaType: MANIFEST }));
      const m = { upstream: 'docker.io', repository: 'huge', digest: someDigest('index'), size: 1, mediaType: INDEX, children };
      await small.recordManifest(m);
      assert.equal((await small.childrenOf(m.digest)).length, per);
    }
    // White-box: the LRU's own count of what it holds (lru-cache's calculatedSize, or its entry count).
    const cache = (small as unknown as { children: { size: number; calculatedSize: number } }).children;
    const held = cache.calculatedSize || cache.size * per;
    console.log(`children cache after ${lists} lists of ${per}: ${cache.size} lists, ${held} descriptors`);
    const lists2 = cache.size;
    await small.close();
    assert.ok(held <= 10_000, `${held} descriptors held in memory`);
    assert.ok(lists2 >= 1, 'the latest lists are still kept');
  });

  // Last: it stops the file's server.
  test('a query that failed while PostgreSQL was down is not remembered as absent once it is back', async () => {
    const layer = { digest: someDigest('layer'), size: 5, mediaType: LAYER };
    const m = { upstream: 'docker.io', repository: 'down', digest: someDigest('manifest'), size: 1, mediaType: MANIFEST, children: [layer] };
    await index.recordManifest(m);
    await index.putBlob(layer.digest, 5, null);
    await index.putTag({ upstream: 'docker.io', repository: 'down', tag: '1', digest: m.digest, mediaType: MANIFEST, size: 1, checkedAt: 1 });
    // A fresh cache over the same database: nothing of these rows in memory yet.
    const cold = new CachingIndex(await PgIndex.open({ url, poolSize: 2 }));
    try {
      await server.stop();
      const where = { upstream: 'docker.io', repository: 'down' };
      for (const call of [
        () => cold.getBlob(layer.digest),
        () => cold.tagRows('docker.io', 'down', '1'),
        () => cold.refsOf(layer.digest),
        () => cold.descriptorSize(layer.digest, where),
        () => cold.childrenOf(m.digest),
      ]) {
        await assert.rejects(call(), (err: Error & { unavailable?: boolean }) => err.unavailable === true);
      }
      await server.start();
      assert.equal((await cold.getBlob(layer.digest))?.size, 5);
      assert.equal((await cold.tagRows('docker.io', 'down', '1'))[0]?.digest, m.digest);
      assert.deepEqual(await cold.refsOf(layer.digest), [where]);
      assert.equal(await cold.descriptorSize(layer.digest, where), 5);
      assert.equal((await cold.childrenOf(m.digest)).length, 1);
    } finally {
      await cold.close();
    }
  });
});
