// The /v2 route table (src/http/v2.ts, on @koa/router): repository names with slashes, and with segments
// that read like the table's own (`manifests`, `blobs`, `tags`), reach the right route with the right name;
// paths the table does not have stay 404 and other methods 405, as before the router (issue #9 §5).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, pushImage, type Seeded, seedStandard } from './support/images.ts';
import { metricValue } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

describe('the /v2 route table', () => {
  let up: Upstream;
  let b: InProcessBerth;
  let seeded: Seeded;
  let seedDir: string;

  before(async () => {
    seedDir = await makeTempDir('seed-routes');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir);
    // Names whose segments are the table's own words: the wildcard is greedy, the last segments decide.
    for (const name of ['lab/manifests/small', 'lab/blobs/small', 'lab/tags/small', 'manifests/manifests']) await pushImage(up, name, '1', seeded.small);
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }] });
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
    if (seedDir) await removeTempDir(seedDir);
  });

  const error = (body: Buffer): string => (JSON.parse(body.toString('utf8')) as { errors: Array<{ code: string }> }).errors[0]!.code;

  test('/v2 and /v2/ answer {} with the API version header', async () => {
    for (const p of ['/v2', '/v2/']) {
      const res = await request(b.url, p);
      assert.equal(res.status, 200, p);
      assert.equal(res.body.toString(), '{}');
      assert.equal(res.headers['docker-distribution-api-version'], 'registry/2.0');
    }
  });

  test('a name with a manifests segment is a name: the last /manifests/ is the route', async () => {
    for (const name of ['lab/manifests/small', 'manifests/manifests']) {
      const res = await request(b.url, `/v2/${name}/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(res.status, 200, `${name}: ${res.body.toString()}`);
      assert.equal(res.headers['docker-content-digest'], seeded.small.manifestDigest);
      const head = await request(b.url, `/v2/${name}/manifests/1`, { method: 'HEAD', headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(head.status, 200);
      assert.equal(head.body.length, 0);
      assert.equal(head.headers['content-length'], String(seeded.small.manifest.length));
    }
  });

  test('a name with a blobs segment reaches the blob route, with HEAD and GET', async () => {
    const layer = seeded.small.layers[1]!;
    const res = await request(b.url, `/v2/lab/blobs/small/blobs/${layer.digest}`);
    assert.equal(res.status, 200, res.body.toString());
    assert.equal(res.body.length, layer.size);
    const head = await request(b.url, `/v2/lab/manifests/small/blobs/${layer.digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-length'], String(layer.size));
  });

  test('a name with a tags segment lists its own tags', async () => {
    const res = await request(b.url, '/v2/lab/tags/small/tags/list');
    assert.equal(res.status, 200, res.body.toString());
    assert.deepEqual(JSON.parse(res.body.toString()), { name: 'lab/tags/small', tags: ['1'] });
  });

  test('paths the table does not have are 404 NOT_FOUND; other methods 405 UNSUPPORTED', async () => {
    const notFound = [
      '/v2/lab/small/tags/list/',
      '/v2/lab/small/MANIFESTS/1',
      '/v2/lab/small/manifests/',
      '/v2/lab/small/blobs/uploads/',
      '/v2/lab/small/manifests/1/',
      '/v2/lab/small',
      '/v2//manifests/1',
      '/v2/_catalog/',
    ];
    for (const p of notFound) {
      const res = await request(b.url, p);
      assert.equal(res.status, 404, `${p}: ${res.body.toString()}`);
      assert.equal(error(res.body), 'NOT_FOUND', p);
      assert.equal(res.headers['docker-distribution-api-version'], 'registry/2.0');
    }
    for (const [method, p] of [
      ['POST', '/v2/lab/small/blobs/uploads/'],
      ['PUT', '/v2/lab/small/manifests/1'],
      ['DELETE', `/v2/lab/small/blobs/sha256:${'a'.repeat(64)}`],
      ['PATCH', '/v2/nothing/here'],
      ['OPTIONS', '/v2/'],
    ] as const) {
      const res = await request(b.url, p, { method });
      assert.equal(res.status, 405, `${method} ${p}`);
      assert.equal(error(res.body), 'UNSUPPORTED');
    }
  });

  test('each route counts under its own label in berth_http_requests_total', async () => {
    const before = {
      manifest: await metricValue(b.url, 'berth_http_requests_total', { route: 'manifest' }),
      blob: await metricValue(b.url, 'berth_http_requests_total', { route: 'blob' }),
      tags: await metricValue(b.url, 'berth_http_requests_total', { route: 'tags' }),
      base: await metricValue(b.url, 'berth_http_requests_total', { route: 'base' }),
      other: await metricValue(b.url, 'berth_http_requests_total', { route: 'other' }),
    };
    await request(b.url, '/v2/lab/small/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    await request(b.url, `/v2/lab/small/blobs/${seeded.small.config.digest}`);
    await request(b.url, '/v2/lab/small/tags/list');
    await request(b.url, '/v2/');
    await request(b.url, '/v2/lab/small/nothing');
    for (const route of ['manifest', 'blob', 'tags', 'base', 'other'] as const) {
      assert.equal(await metricValue(b.url, 'berth_http_requests_total', { route }), before[route] + 1, route);
    }
  });
});
