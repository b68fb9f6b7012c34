// One index per bucket prefix (issue #12, docs/decisions.md "One index per bucket prefix"): two berths with
// their own SQLite indexes on one bucket prefix would each gc and evict the other's blobs, so the first to
// write claims the prefix (`<prefix>berth-index.json`) and another index is refused at start, exit code 2,
// naming the prefix and the holder. Real Ceph RGW, real PostgreSQL, real `berth serve` and operator commands.
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { stringify } from 'yaml';
import { makeS3Client } from '../src/store/s3/client.ts';
import { tryServe } from './support/berth-child.ts';
import { describeRun, runBerth } from './support/berth-cli.ts';
import { type Ceph, startCeph } from './support/ceph.ts';
import { request } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { freePort } from './support/ports.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import type { ManagedProcess } from './support/process.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

describe('a bucket prefix belongs to one index', () => {
  let ceph: Ceph;
  let pg: Postgres;
  let pgUrl: string;
  let up: Upstream;
  let work: string;
  let client: S3Client;
  let img: Image;
  const running: ManagedProcess[] = [];

  const s3 = (prefix: string) => ({ endpoint: ceph.endpoint, bucket: ceph.bucket, prefix, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey });
  /** A working directory and config: SQLite in the directory, or the shared database. */
  const instance = async (name: string, prefix: string, index: 'sqlite' | 'postgres') => {
    const dir = path.join(work, name);
    await mkdir(dir, { recursive: true });
    const port = await freePort();
    const config = path.join(work, `${name}.yaml`);
    await writeFile(
      config,
      stringify({
        listen: `127.0.0.1:${port}`,
        storage: { path: dir, driver: 's3', s3: s3(prefix) },
        ...(index === 'postgres' ? { index: { driver: 'postgres', postgres: { url: pgUrl } } } : {}),
        upstreams: [{ host: 'docker.io', url: up.url }],
        log: { level: 'info' },
      }),
    );
    return { dir, config, url: `http://127.0.0.1:${port}`, logFile: path.join(work, `${name}.log`) };
  };
  const serve = async (i: { config: string; url: string; logFile: string }) => {
    const r = await tryServe(i.config, i.url, { logFile: i.logFile });
    if (r.kind === 'listening') running.push(r.process);
    return r;
  };
  const keys = async (prefix: string) => ((await client.send(new ListObjectsV2Command({ Bucket: ceph.bucket, Prefix: prefix }))).Contents ?? []).map((o) => o.Key!).sort();

  before(async () => {
    work = await makeTempDir('s3-prefix-claim');
    await Promise.all([
      // A port block of its own (see the list in test/shared-drivers-ops).
      startCeph({ port: 31650, sizeGb: 1 }).then((c) => (ceph = c)),
      startPostgres().then(async (p) => {
        pg = p;
        pgUrl = await p.createDatabase();
      }),
      startUpstream().then(async (u) => {
        up = u;
        img = await buildImage({ format: 'oci', layers: [{ files: { 'a.txt': `a ${work}\n` } }] });
        await pushImage(up, 'lab/a', '1', img);
      }),
    ]);
    client = makeS3Client({ ...s3(''), region: 'us-east-1', forcePathStyle: true });
  });

  after(async () => {
    for (const p of running) await p.stop().catch(() => undefined);
    client?.destroy();
    await up?.stop();
    await pg?.destroy();
    await ceph?.stop();
    if (work) await removeTempDir(work);
  });

  test('a second SQLite instance on the prefix exits 2 naming the prefix and the first; the first restarted, and its operator commands, are fine', async (t) => {
    const a = await instance('a', 'one/', 'sqlite');
    const b = await instance('b', 'one/', 'sqlite');
    const first = await serve(a);
    assert.equal(first.kind, 'listening', first.kind === 'exited' ? first.output : '');
    const pulled = await request(a.url, `/v2/lab/a/blobs/${img.layers[0]!.digest}`);
    assert.equal(pulled.status, 200);
    const marker = JSON.parse(await (await client.send(new GetObjectCommand({ Bucket: ceph.bucket, Key: 'one/berth-index.json' }))).Body!.transformToString());
    assert.deepEqual([marker.index, marker.path], ['sqlite', a.dir], 'the claim names the first instance’s working directory');

    const second = await serve(b);
    assert.equal(second.kind, 'exited');
    assert.equal(second.kind === 'exited' && second.code, 2, second.kind === 'exited' ? second.output : '');
    const said = second.kind === 'exited' ? second.output : '';
    assert.match(said, new RegExp(`s3://${ceph.bucket}/one/ is claimed by a berth with its own SQLite index \\(working directory ${a.dir}`));
    // The command that would have removed the first one's blobs as unindexed is refused the same way.
    const objects = await keys('one/blobs/');
    const gc = await runBerth(['gc', '--min-age', '0s', '--config', b.config]);
    assert.equal(gc.code, 2, describeRun(['gc'], gc));
    assert.match(gc.stderr, /is claimed by a berth with its own SQLite index/);
    assert.deepEqual(await keys('one/blobs/'), objects, 'the refused gc removed objects');
    assert.ok(objects.length > 0);

    // Read-only beside the running server, on its own directory: same instance.
    const ls = await runBerth(['ls', '--config', a.config]);
    assert.equal(ls.code, 0, describeRun(['ls'], ls));
    // Stopped, the same directory's gc and restart are the same instance.
    if (first.kind === 'listening') await first.process.stop();
    const ownGc = await runBerth(['gc', '--min-age', '0s', '--config', a.config]);
    assert.equal(ownGc.code, 0, describeRun(['gc', 'own'], ownGc));
    assert.match(ownGc.stdout, /0 unindexed files/);
    const again = await serve(a);
    assert.equal(again.kind, 'listening', again.kind === 'exited' ? again.output : '');
    assert.equal((await request(a.url, `/v2/lab/a/blobs/${img.layers[0]!.digest}`)).status, 200);

    // Whether this gateway honours a conditional PUT (If-None-Match: *), for the record: the claim works either way.
    const honoured = await client.send(new PutObjectCommand({ Bucket: ceph.bucket, Key: 'one/berth-index.json', Body: '{}', IfNoneMatch: '*' })).then(
      () => false,
      (err: { $metadata?: { httpStatusCode?: number } }) => err.$metadata?.httpStatusCode === 412,
    );
    t.diagnostic(`RGW honours If-None-Match on PUT: ${honoured}`);
    if (!honoured) await client.send(new PutObjectCommand({ Bucket: ceph.bucket, Key: 'one/berth-index.json', Body: JSON.stringify(marker) }));
  });

  test('a PostgreSQL-index berth is refused on a SQLite instance’s prefix, and the reverse; replicas of one database share theirs', async () => {
    const p = await instance('p', 'one/', 'postgres');
    const refused = await serve(p);
    assert.equal(refused.kind === 'exited' && refused.code, 2, refused.kind === 'exited' ? refused.output : 'it started');
    assert.match(refused.kind === 'exited' ? refused.output : '', /one\/ is claimed by a berth with its own SQLite index/);

    const p1 = await instance('p1', 'two/', 'postgres');
    const p2 = await instance('p2', 'two/', 'postgres');
    const s = await instance('s', 'two/', 'sqlite');
    for (const i of [p1, p2]) {
      const r = await serve(i);
      assert.equal(r.kind, 'listening', r.kind === 'exited' ? r.output : '');
    }
    const marker = JSON.parse(await (await client.send(new GetObjectCommand({ Bucket: ceph.bucket, Key: 'two/berth-index.json' }))).Body!.transformToString());
    assert.equal(marker.index, 'postgres');
    assert.equal(marker.database, `127.0.0.1:${pg.port}/${new URL(pgUrl).pathname.slice(1)}`);
    const r = await serve(s);
    assert.equal(r.kind === 'exited' && r.code, 2, r.kind === 'exited' ? r.output : 'it started');
    assert.match(r.kind === 'exited' ? r.output : '', /two\/ is claimed by berth on the PostgreSQL index 127\.0\.0\.1:\d+\/\w+/);
    // Another database on the same prefix is another index too.
    const other = await pg.createDatabase();
    const q = await instance('q', 'two/', 'postgres');
    await writeFile(q.config, (await readFile(q.config, 'utf8')).replace(pgUrl, other));
    const gc = await runBerth(['gc', '--config', q.config]);
    assert.equal(gc.code, 2, describeRun(['gc', 'other database'], gc));
    assert.match(gc.stderr, /claimed by berth on the PostgreSQL index/);
  });
});
