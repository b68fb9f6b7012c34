// eStargz on demand (issue #11), operator side: `berth prewarm --estargz` converts and pins, `berth ls --json`
// names what each converted image was converted from, and `berth export --estargz` carries the -esgz tag
// to an isolated berth that serves it offline after `berth import`.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { request } from 'undici';
import { startBerth } from './support/berth.ts';
import { describeRun, lsJson, runBerth, writeCliConfig } from './support/berth-cli.ts';
import { ACCEPT_ALL_MANIFESTS, type Seeded, seedStandard } from './support/images.ts';
import { httpRequest, sha256 } from './support/links.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

type EstargzLs = { estargz?: { source: string; learned: boolean; startupFiles: number; startupBytes: number } };

describe('prewarm, ls, export and import of -esgz images', () => {
  let up: Upstream;
  let seeded: Seeded;
  let work: string;
  let connected: string;

  before(async () => {
    work = await makeTempDir('esgz-cli');
    up = await startUpstream();
    seeded = await seedStandard(up, work);
    connected = await writeCliConfig(path.join(work, 'connected.yaml'), { storage: path.join(work, 'connected'), upstreams: [{ host: 'docker.io', url: up.url }] });
  });

  after(async () => {
    await up?.stop();
    await removeTempDir(work);
  });

  test('prewarm --estargz converts and pins the -esgz image; ls --json names its source', async () => {
    const args = ['prewarm', '--estargz', 'docker.io/lab/small:1', '--config', connected];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    const rows = (await lsJson(connected)) as Array<Awaited<ReturnType<typeof lsJson>>[number] & EstargzLs>;
    const esgz = rows.find((row) => row.reference === 'docker.io/lab/small:1-esgz');
    assert.ok(esgz, `ls lists the converted tag: ${rows.map((row) => row.reference).join(', ')}`);
    assert.equal(esgz.pinned, true);
    assert.equal(esgz.complete, true);
    assert.deepEqual(esgz.estargz, { source: seeded.small.manifestDigest, learned: false, startupFiles: 0, startupBytes: 0 });
    const plain = rows.find((row) => row.reference === 'docker.io/lab/small:1');
    assert.equal(plain?.estargz, undefined);
  });

  test('POST /_berth/prewarm with "estargz": true converts through the running berth and pins the -esgz image', async () => {
    const b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }] });
    try {
      const r = await request(`${b.url}/_berth/prewarm`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ references: ['docker.io/lab/small:v2s2'], estargz: true }),
      });
      assert.equal(r.statusCode, 200);
      const events = (await r.body.text())
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { type: string; ref?: string; digest?: string; failed?: unknown[] });
      const done = events.filter((e) => e.type === 'done').map((e) => e.ref);
      assert.deepEqual(done, ['docker.io/lab/small:v2s2', 'docker.io/lab/small:v2s2-esgz'], JSON.stringify(events));
      assert.deepEqual(events.at(-1)?.failed, []);
      assert.ok((await b.berth.pins.references()).includes('docker.io/lab/small:v2s2-esgz'));
      const head = await httpRequest(b.url, '/v2/lab/small/manifests/v2s2-esgz', { method: 'HEAD', headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(head.status, 200);
      assert.equal(events.find((e) => e.ref === 'docker.io/lab/small:v2s2-esgz')?.digest, head.headers['docker-content-digest']);
    } finally {
      await b.stop();
    }
  });

  test('export --estargz, import into an offline berth: the -esgz index and its layers are served with no upstream', async () => {
    const bundle = path.join(work, 'bundle.tar');
    const args = ['export', '--estargz', 'docker.io/lab/multi:1', '-o', bundle, '--config', connected];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    const storage = path.join(work, 'isolated');
    const dead = [{ host: 'docker.io', url: `http://${DEAD_ENDPOINT}` }];
    const isolated = await writeCliConfig(path.join(work, 'isolated.yaml'), { storage, upstreams: dead, offline: true });
    const imp = ['import', bundle, '--config', isolated];
    const ri = await runBerth(imp);
    assert.equal(ri.code, 0, describeRun(imp, ri));
    const refs = (await lsJson(isolated)).map((row) => row.reference);
    assert.ok(refs.includes('docker.io/lab/multi:1-esgz'), refs.join(', '));
    // The connected side's answer, for the digest to expect.
    const online = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], storage: path.join(work, 'connected') });
    let expected: string;
    try {
      const a = await httpRequest(online.url, '/v2/lab/multi/manifests/1-esgz', { method: 'HEAD', headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(a.status, 200);
      expected = a.headers['docker-content-digest'] as string;
    } finally {
      await online.stop();
    }
    const offline = await startBerth({ upstreams: dead, storage, offline: true });
    try {
      const index = await httpRequest(offline.url, '/v2/lab/multi/manifests/1-esgz', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(index.status, 200, index.body.toString());
      assert.equal(index.headers['docker-content-digest'], expected);
      const children = (JSON.parse(index.body.toString('utf8')) as { manifests: Array<{ digest: string }> }).manifests;
      assert.equal(children.length, seeded.multi.images.length);
      for (const c of children) {
        const m = await httpRequest(offline.url, `/v2/lab/multi/manifests/${c.digest}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
        assert.equal(m.status, 200);
        for (const l of (JSON.parse(m.body.toString('utf8')) as { layers: Array<{ digest: string }> }).layers) {
          const blob = await httpRequest(offline.url, `/v2/lab/multi/blobs/${l.digest}`);
          assert.equal(blob.status, 200);
          assert.equal(sha256(blob.body), l.digest);
        }
      }
    } finally {
      await offline.stop();
    }
  });
});
