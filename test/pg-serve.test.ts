// `index.driver: postgres` end to end (issue #12): berth serve and the operator commands on a real PostgreSQL 15
// (test/support/postgres.ts) in front of a real docker-registry upstream, pulled with skopeo. The index lives
// in PostgreSQL only (no berth.db under storage.path); a second berth with its own storage directory sees the
// tags but has none of the bytes; PostgreSQL unreachable at start-up is exit code 2 naming it (never the
// password); PostgreSQL stopped while serving costs no 500s, cached blobs are still served, misses are quick
// 503s, and the same process serves again once PostgreSQL is back.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import type { UpstreamSpec } from './support/berth.ts';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { blobFiles, describeRun, type LsRow, lsJson, runBerth } from './support/berth-cli.ts';
import { request } from './support/http.ts';
import { buildImage, digestOfFile, type Image, pushImage } from './support/images.ts';
import { freePort } from './support/ports.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

/** The manifest and every blob of `image`, byte for byte, in a skopeo `dir:` layout. */
async function assertPulled(dir: string, image: Image): Promise<void> {
  const blobs: string[] = [];
  for (const name of await readdir(dir)) {
    if (name === 'manifest.json' || name === 'version') continue;
    const d = await digestOfFile(path.join(dir, name));
    assert.equal(d, `sha256:${name}`, `${name} does not hash to its name`);
    blobs.push(d);
  }
  assert.ok((await readFile(path.join(dir, 'manifest.json'))).equals(image.manifest), 'manifest.json is not the pushed manifest');
  assert.deepEqual(blobs.sort(), [image.config, ...image.layers].map((b) => b.digest).sort());
}

describe('index.driver: postgres', () => {
  let pg: Postgres;
  let up: Upstream;
  let work: string;
  let dbUrl: string;
  let app: Image;
  let other: Image;
  let upstreams: UpstreamSpec[];
  const children: BerthChild[] = [];
  const index = () => ({ driver: 'postgres' as const, postgres: { url: dbUrl } });

  /** An operator command's config: this storage directory, the PostgreSQL index. */
  const cliConfig = async (name: string, storage: string): Promise<string> => {
    const file = path.join(work, `${name}.yaml`);
    await writeFile(file, stringify({ storage: { path: storage }, upstreams, index: index(), retries: { attempts: 2, backoff: '50ms' }, log: { level: 'warn' } }));
    return file;
  };
  const serve = async (storage: string, extra: Record<string, unknown> = {}): Promise<BerthChild> => {
    const b = await startBerthChild({ upstreams, storage, index: index(), ...extra });
    children.push(b);
    return b;
  };
  const cli = async (args: string[]) => {
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    return r;
  };

  before(async () => {
    work = await makeTempDir('pg-serve');
    await Promise.all([startPostgres().then((p) => (pg = p)), startUpstream().then((u) => (up = u))]);
    dbUrl = await pg.createDatabase();
    upstreams = [{ host: 'docker.io', url: up.url }];
    app = await buildImage({ format: 'oci', layers: [{ files: { 'app.txt': `app ${work}\n` } }, { randomBytes: 3 * 1024 * 1024, dir: work }] });
    other = await buildImage({ format: 'docker', layers: [{ files: { 'other.txt': `other ${work}\n` } }] });
    await pushImage(up, 'lab/app', '1', app);
    await pushImage(up, 'lab/other', '1', other);
  });

  after(async () => {
    for (const b of children) await b.stop().catch(() => undefined);
    await up?.stop();
    await pg?.destroy();
    await removeTempDir(work);
  });

  test('berth serve pulls an image byte for byte, and after a restart serves it offline by tag with no SQLite file', async () => {
    const storage = path.join(work, 'one');
    const b = await serve(storage);
    const first = path.join(work, 'pull-1');
    await skopeoCopy(`docker://${b.host}/lab/app:1`, `dir:${first}`, { srcTlsVerify: false });
    await assertPulled(first, app);
    await b.kill('SIGTERM');
    assert.equal(existsSync(path.join(storage, 'berth.db')), false, 'the index is in PostgreSQL, not in the storage directory');

    const mark = up.logLineCount();
    const offline = await serve(storage, { offline: true });
    const again = path.join(work, 'pull-2');
    await skopeoCopy(`docker://${offline.host}/lab/app:1`, `dir:${again}`, { srcTlsVerify: false });
    await assertPulled(again, app);
    assert.deepEqual(up.accessLogSince(mark), [], 'offline: nothing asked of the upstream');
    assert.equal(existsSync(path.join(storage, 'berth.db')), false);
    await offline.kill('SIGTERM');
  });

  test('the operator commands run against PostgreSQL; a second storage directory sees the tags but not the bytes', async () => {
    const storage = path.join(work, 'two');
    await mkdir(storage, { recursive: true });
    const config = await cliConfig('two', storage);
    // The tag berth serve cached above is in the shared index; none of its bytes are here.
    const seen = await lsJson(config);
    assert.ok(
      seen.some((r) => r.reference === 'docker.io/lab/app:1' && r.digest === app.manifestDigest),
      `ls: ${JSON.stringify(seen.map((r) => r.reference))}`,
    );
    assert.deepEqual(await blobFiles(storage), [], 'a second storage directory has none of the blobs');

    await cli(['prewarm', 'docker.io/lab/other:1', '--config', config]);
    const here = new Set((await blobFiles(storage)).map((f) => f.digest));
    for (const d of [other.manifestDigest, other.config.digest, ...other.layers.map((l) => l.digest)]) assert.ok(here.has(d), `${d} was not prewarmed`);
    const row = (rows: LsRow[]) => rows.find((r) => r.reference === 'docker.io/lab/other:1');
    assert.equal(row(await lsJson(config))?.pinned, true, 'prewarm pins');

    const bundle = path.join(work, 'other.tar');
    await cli(['export', 'docker.io/lab/other:1', '-o', bundle, '--config', config]);
    const rm = await runBerth(['rm', 'docker.io/lab/other:1', '--config', config]);
    assert.equal(rm.code, 1, describeRun(['rm'], rm));
    assert.match(rm.stderr, /is pinned/);
    await cli(['rm', '--force', 'docker.io/lab/other:1', '--config', config]);
    assert.equal(row(await lsJson(config)), undefined, 'rm removed the tag from the shared index');
    assert.equal((await blobFiles(storage)).length, 0, 'rm removed the blobs nothing else uses');

    await cli(['import', bundle, '--config', config]);
    assert.equal(row(await lsJson(config))?.complete, true);
    await cli(['unpin', 'docker.io/lab/other:1', '--config', config]);
    assert.equal(row(await lsJson(config))?.pinned, false);
    await cli(['pin', 'docker.io/lab/other:1', '--config', config]);
    assert.equal(row(await lsJson(config))?.pinned, true);
    const gc = await cli(['gc', '--min-age', '0s', '--config', config]);
    assert.match(gc.stdout, /removed 0 partial downloads, 0 unreferenced blobs, 0 unindexed files/);
    // The SQLite rebuild has nothing to do with a PostgreSQL index: refused, nothing written.
    const rebuild = await runBerth(['index', 'rebuild', '--config', config]);
    assert.equal(rebuild.code, 1, describeRun(['index', 'rebuild'], rebuild));
    assert.match(rebuild.stderr, /index\.driver is postgres/);
    assert.equal(existsSync(path.join(storage, 'berth.db')), false);
  });

  test('PostgreSQL unreachable at start-up: exit code 2, naming PostgreSQL and where, never the password', async () => {
    const port = await freePort();
    const file = path.join(work, 'unreachable.yaml');
    const password = 'never-print-me-7f3a';
    const storage = path.join(work, 'three');
    await writeFile(
      file,
      stringify({
        listen: `127.0.0.1:${await freePort()}`,
        storage: { path: storage },
        upstreams,
        index: { driver: 'postgres', postgres: { url: `postgres://berth:${password}@127.0.0.1:${port}/berth` } },
      }),
    );
    const r = await runBerth(['serve', '--config', file], { timeoutMs: 60_000 });
    assert.equal(r.code, 2, describeRun(['serve'], r));
    const said = r.stdout + r.stderr;
    assert.match(said, new RegExp(`PostgreSQL at 127\\.0\\.0\\.1:${port} \\(database berth, user berth\\)`));
    assert.ok(!said.includes(password), 'the password was printed');
  });

  test('PostgreSQL stopped while serving: cached blobs are served, misses are quick 503s, never a 500; back without a restart', async () => {
    const b = await serve(path.join(work, 'one'));
    const blob = (d: string) => request(b.url, `/v2/lab/app/blobs/${d}`, { timeoutMs: 30_000 });
    const byTag = () => request(b.url, '/v2/lab/app/manifests/1', { headers: { Accept: app.mediaType }, timeoutMs: 30_000 });
    // Warm this process's own cache of the rows.
    assert.equal((await byTag()).status, 200);
    for (const l of [app.config, ...app.layers]) assert.equal((await blob(l.digest)).status, 200);

    await pg.stop();
    try {
      for (const l of [app.config, ...app.layers]) {
        const r = await blob(l.digest);
        assert.equal(r.status, 200, `cached blob ${l.digest} while PostgreSQL is down: ${r.body.toString('utf8').slice(0, 300)}`);
        assert.equal(`sha256:${createHash('sha256').update(r.body).digest('hex')}`, l.digest, 'the bytes are the blob');
      }
      // A blob this berth never had: its row is the database's, which is down.
      const started = Date.now();
      const miss = await request(b.url, `/v2/lab/other/blobs/${other.layers[0]!.digest}`, { timeoutMs: 30_000 });
      assert.equal(miss.status, 503, miss.body.toString('utf8'));
      assert.ok(Date.now() - started < 5000, `the miss took ${Date.now() - started} ms`);
      // The tag's answer is cached for about a second (served meanwhile); then it needs the database.
      const down = Date.now();
      let tag = await byTag();
      while (tag.status === 200 && Date.now() - down < 5000) tag = await byTag();
      assert.equal(tag.status, 503, `manifest by tag with PostgreSQL down: ${tag.status} ${tag.body.toString('utf8').slice(0, 300)}`);
      const ready = await request(b.url, '/readyz', { timeoutMs: 30_000 });
      assert.equal(ready.status, 503);
      assert.match(ready.body.toString('utf8'), /PostgreSQL/);
    } finally {
      await pg.start();
    }
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await byTag();
      if (r.status === 200) break;
      assert.notEqual(r.status, 500);
      assert.ok(Date.now() < deadline, `not serving again 30 s after PostgreSQL came back: ${r.status}`);
      await new Promise((res) => setTimeout(res, 200));
    }
    const miss = await request(b.url, `/v2/lab/other/blobs/${other.layers[0]!.digest}`, { timeoutMs: 30_000 });
    assert.equal(miss.status, 200, 'the miss is filled once PostgreSQL is back');
    assert.equal((await request(b.url, '/readyz')).status, 200);
    assert.doesNotMatch(b.log(), /"statusCode":500|internal error/);
  });
});
