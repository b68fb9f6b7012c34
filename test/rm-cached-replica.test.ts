// `berth rm` through one working directory while a running replica has the image in its local disk cache
// (issue #12: storage.s3.localCache in front of the shared bucket, tags and rows in the shared PostgreSQL
// index). The replica is offline, so what it answers after the rm is only what it still holds: the tag is a
// 404 once the replica's 1 s tag cache has passed (tags are read from the shared index; until then it may
// still answer the manifest it had, its own bytes), and a blob or manifest asked by digest is either
// bytes that hash to that digest (its local copy, verified as it is read) or a 404, never a 500 and never
// other bytes. docs/decisions.md "Cluster fills", rm beside a replica's local cache. Real Ceph RGW,
// PostgreSQL 15, docker-registry and berth processes.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { describeRun, runBerth } from './support/berth-cli.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { query, type Replica, startReplica } from './support/cluster.ts';
import { request } from './support/http.ts';
import { buildImage, digestOf, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const PREFIX = 'rm/';

describe('berth rm elsewhere while a replica holds the image in its local cache', () => {
  let ceph: Ceph;
  let pg: Postgres;
  let pgUrl: string;
  let up: Upstream;
  let work: string;
  let img: Image;
  let ops: string;
  let replica: Replica;
  let cacheDir: string;

  const s3 = () => ({ endpoint: ceph.endpoint, bucket: ceph.bucket, prefix: PREFIX, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey });
  const localCopy = (d: string) => path.join(cacheDir, 'blobs', 'sha256', d.slice(7, 9), d.slice(7));

  before(async () => {
    work = await makeTempDir('rm-cached-replica');
    await Promise.all([
      // A port block of its own (see the list in test/shared-drivers-ops).
      startCeph({ port: 31670, sizeGb: 1 }).then((c) => (ceph = c)),
      startPostgres().then(async (p) => {
        pg = p;
        pgUrl = await p.createDatabase();
      }),
      startUpstream().then(async (u) => {
        up = u;
        img = await buildImage({ format: 'oci', layers: [{ randomBytes: 2 * 1024 * 1024, dir: work }, { files: { 'b.txt': `b ${work}\n` } }] });
        await pushImage(up, 'lab/app', '1', img);
      }),
    ]);
    const dir = path.join(work, 'ops');
    await mkdir(dir, { recursive: true });
    ops = path.join(work, 'ops.yaml');
    await writeFile(
      ops,
      stringify({ storage: { path: dir, driver: 's3', s3: s3() }, index: { driver: 'postgres', postgres: { url: pgUrl } }, upstreams: [{ host: 'docker.io', url: up.url }], log: { level: 'warn' } }),
    );
    const prewarm = await runBerth(['prewarm', 'docker.io/lab/app:1', '--config', ops]);
    assert.equal(prewarm.code, 0, describeRun(['prewarm'], prewarm));
    cacheDir = path.join(work, 'replica-cache');
    // Offline: it answers from what it holds, so nothing it serves after the rm can be a refetch.
    replica = await startReplica('r', { pgUrl, offline: true, upstreams: [{ host: 'docker.io', url: up.url }], s3: { ...s3(), localCache: { path: cacheDir, maxSize: '100MiB' } } });
  });

  after(async () => {
    await replica?.stop();
    await up?.stop();
    await pg?.destroy();
    await ceph?.stop();
    if (work) await removeTempDir(work);
  });

  test('the tag is a 404 within the 1 s tag cache; blobs and the manifest by digest are their own bytes or a 404, never a 500', async () => {
    const manifest = (ref: string) => request(replica.url, `/v2/lab/app/manifests/${ref}`, { headers: { Accept: img.mediaType }, timeoutMs: 30_000 });
    const blob = (d: string) => request(replica.url, `/v2/lab/app/blobs/${d}`, { timeoutMs: 30_000 });
    const byTag = await manifest('1');
    assert.equal(byTag.status, 200);
    assert.ok(byTag.body.equals(img.manifest));
    for (const b of [img.config, ...img.layers]) {
      const r = await blob(b.digest);
      assert.equal(r.status, 200);
      assert.equal(digestOf(r.body), b.digest);
    }
    await waitUntil('the local copies', () => [img.config, ...img.layers].every((b) => existsSync(localCopy(b.digest))), 30_000, 50);

    const rm = await runBerth(['rm', '--force', 'docker.io/lab/app:1', '--config', ops]);
    assert.equal(rm.code, 0, describeRun(['rm'], rm));
    assert.deepEqual(await query(pgUrl, 'SELECT digest FROM blobs'), [], 'rm left rows in the shared index');

    // The CachingIndex keeps an upstream tag's rows for 1 s (docs/decisions.md): until then the tag may still
    // answer the manifest it had, byte for byte; after it, a 404 and never the manifest again.
    const rmDone = Date.now();
    const gone = await waitUntil(
      'the removed tag to be a 404',
      async () => {
        const r = await manifest('1');
        assert.ok(r.status === 404 || (r.status === 200 && r.body.equals(img.manifest)), `the removed tag: ${r.status} ${r.body.toString('utf8').slice(0, 200)}`);
        return r.status === 404 ? Date.now() - rmDone : undefined;
      },
      10_000,
      50,
    );
    assert.ok(gone < 5_000, `the tag answered for ${gone} ms after the rm (its cache is 1 s)`);
    const seen = new Map<string, Set<number>>();
    // Asked again and again while the replica's memory of rows (up to minutes) and its local copies last.
    for (let round = 0; round < 5; round++) {
      const answers: Array<[string, { status: number; body: Buffer }, string]> = [[img.manifestDigest, await manifest(img.manifestDigest), img.manifestDigest]];
      for (const b of [img.config, ...img.layers]) answers.push([b.digest, await blob(b.digest), b.digest]);
      for (const [what, r, d] of answers) {
        assert.ok(r.status === 200 || r.status === 404, `${what}: ${r.status} ${r.body.toString('utf8').slice(0, 300)}`);
        if (r.status === 200) assert.equal(digestOf(r.body), d, `${what}: other bytes`);
        seen.set(what, (seen.get(what) ?? new Set()).add(r.status));
      }
      assert.equal((await manifest('1')).status, 404);
    }
    console.log(`after rm: ${[...seen].map(([d, s]) => `${d.slice(7, 19)} ${[...s].join('/')}`).join(', ')}`);
    assert.doesNotMatch(replica.log(), /"statusCode":500|internal error/);
  });
});
