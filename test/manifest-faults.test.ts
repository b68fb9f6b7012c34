// Manifests an upstream gets wrong (issue #8 items 11 and 13). A manifest's type is the registry media type
// its own bytes declare, never a Content-Type the upstream chose: `text/html`, a CR/LF, or another
// upstream's label for the same bytes change nothing that berth serves; an invalid manifest is the
// upstream's fault (502 naming it) and nothing of it is stored; every response says `nosniff`. And a slow
// upstream: the HEAD of an expired tag answers with a new digest, then the manifest crawls through a
// rate-limited relay; within manifestTimeout every waiting client gets the cached tag (stale-if-error
// covers slow, not only down), and a tag that is not cached is a fast 503.
// The hostile manifests come from a stand-in origin (docker-registry refuses to store them); everything
// else is a real docker-registry, reached directly or through the test relay.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Digest } from '../src/oci/digest.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, baseLayer, buildImage, digestOf, type Image, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest, type TimedResponse } from './support/links.ts';
import { fetchOutcome, type Outcome } from './support/outcome.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { respond, type StandInOrigin, startStandInOrigin } from './support/stand-in-origin.ts';
import { committed } from './support/storage.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const FULL = `${ACCEPT_ALL_MANIFESTS}, */*`;
const EVIL = 'evil.test';

let up: Upstream;
let origin: StandInOrigin;
let image: Image;
const cleanups: Array<() => Promise<unknown>> = [];
/** What the stand-in origin serves, by `repository:reference`. */
const served = new Map<string, { bytes: Buffer; contentType: string }>();

async function smallImage(tag: string, config: Record<string, unknown> = {}): Promise<Image> {
  return buildImage({ format: 'oci', layers: [await baseLayer(), { files: { 'tag.txt': `${tag} ${Math.random()}\n` } }], config });
}

/** `image` with a manifest padded by an annotation to about `bytes`: slow to send through a slow link. */
function padded(img: Image, bytes: number): Image {
  const json = JSON.parse(img.manifest.toString()) as Record<string, unknown>;
  const manifest = Buffer.from(JSON.stringify({ ...json, annotations: { 'test.berth/padding': 'x'.repeat(bytes) } }));
  return { ...img, manifest, manifestDigest: digestOf(manifest) };
}

function serve(repoRef: string, body: Buffer | string, contentType: string): Buffer {
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body);
  served.set(repoRef, { bytes, contentType });
  served.set(`${repoRef.slice(0, repoRef.lastIndexOf(':'))}:${digestOf(bytes)}`, { bytes, contentType });
  return bytes;
}

function errorCode(r: { body: Buffer }): string | undefined {
  try {
    return (JSON.parse(r.body.toString()) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

before(async () => {
  up = await startUpstream();
  cleanups.push(() => up.stop());
  image = await smallImage('small');
  await pushImage(up, 'library/small', '1', image);
  origin = await startStandInOrigin(
    (req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/v2/' || p === '/v2') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
      const m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(p);
      const hit = m ? served.get(`${m[1]}:${m[2]}`) : undefined;
      if (!hit) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}');
      reply.head(200, { 'Content-Type': hit.contentType, 'Content-Length': hit.bytes.length, 'Docker-Content-Digest': digestOf(hit.bytes) });
      reply.end(req.method === 'HEAD' ? undefined : hit.bytes);
    },
    { keepAlive: true },
  );
  cleanups.push(() => origin.close());
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

describe('manifest types come from the manifest, not from the upstream', () => {
  let b: InProcessBerth;
  before(async () => {
    b = await startBerth({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: EVIL, url: origin.url },
      ],
    });
    cleanups.push(() => b.stop());
  });

  const config = { mediaType: MediaTypes.oci.config, digest: `sha256:${'1'.repeat(64)}`, size: 2 };
  const cases: Array<{ name: string; repo: string; body: string; contentType: string }> = [
    {
      name: 'a manifest that declares itself text/html',
      repo: 'evil/html',
      body: JSON.stringify({ schemaVersion: 2, mediaType: 'text/html', config, layers: [], annotations: { x: '<script>alert(document.domain)</script>' } }),
      contentType: 'text/html',
    },
    {
      name: 'a media type with a CR/LF in it',
      repo: 'evil/crlf',
      body: JSON.stringify({ schemaVersion: 2, mediaType: `${MediaTypes.oci.manifest}\r\nSet-Cookie: berth=owned`, config, layers: [] }),
      contentType: 'application/octet-stream',
    },
    { name: 'bytes that are not JSON', repo: 'evil/junk', body: '<html>not a manifest</html>', contentType: MediaTypes.oci.manifest },
    {
      name: 'a manifest with an invalid descriptor',
      repo: 'evil/descriptor',
      body: JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, config: { digest: 'sha256:nope', size: -1 }, layers: [] }),
      contentType: MediaTypes.oci.manifest,
    },
  ];
  for (const c of cases) {
    test(`${c.name}: 502 naming the upstream, every time, and nothing stored`, async () => {
      const bytes = serve(`${c.repo}:1`, c.body, c.contentType);
      for (const path of [`/v2/${EVIL}/${c.repo}/manifests/1`, `/v2/${EVIL}/${c.repo}/manifests/1`, `/v2/${c.repo}/manifests/1?ns=${EVIL}`]) {
        for (const method of ['GET', 'HEAD']) {
          const r = await httpRequest(b.url, path, { method, headers: { accept: FULL } });
          assert.equal(r.status, 502, `${method} ${path}: ${r.status} ${r.headers['content-type']} ${r.body.toString().slice(0, 200)}`);
          assert.equal(r.headers['content-type'], 'application/json; charset=utf-8');
          assert.equal(r.headers['x-content-type-options'], 'nosniff');
          assert.equal(r.headers['set-cookie'], undefined);
          if (method === 'GET') {
            assert.equal(errorCode(r), 'UPSTREAM_ERROR');
            assert.match(r.body.toString(), new RegExp(`upstream ${EVIL.replace('.', '\\.')}`));
          }
        }
      }
      assert.equal(committed(b, digestOf(bytes)), false, 'the invalid manifest is not stored');
      assert.equal(await b.berth.index.getBlob(digestOf(bytes) as Digest), undefined, 'nor indexed');
      assert.deepEqual(await b.berth.index.listTags(EVIL, c.repo), [], 'nor tagged');
    });
  }

  test("another upstream's label for the same bytes does not change their Content-Type", async () => {
    const first = await httpRequest(b.url, '/v2/library/small/manifests/1', { headers: { accept: FULL } });
    assert.equal(first.status, 200);
    assert.equal(first.headers['content-type'], MediaTypes.oci.manifest);
    assert.equal(first.headers['x-content-type-options'], 'nosniff');
    serve('evil/copy:1', image.manifest, MediaTypes.docker.manifest);
    serve('evil/html-copy:1', image.manifest, 'text/html');
    for (const repo of ['evil/copy', 'evil/html-copy']) {
      const r = await httpRequest(b.url, `/v2/${EVIL}/${repo}/manifests/1`, { headers: { accept: FULL } });
      assert.equal(r.status, 200, `${repo}: ${r.body.toString().slice(0, 200)}`);
      assert.equal(r.headers['docker-content-digest'], image.manifestDigest);
      assert.equal(r.headers['content-type'], MediaTypes.oci.manifest, `${repo}: the bytes say OCI`);
    }
    for (const path of ['/v2/library/small/manifests/1', `/v2/library/small/manifests/${image.manifestDigest}`]) {
      const again = await httpRequest(b.url, path, { headers: { accept: FULL } });
      assert.equal(again.headers['content-type'], MediaTypes.oci.manifest, `${path} after the other upstream`);
    }
  });

  test('blobs and errors say nosniff too', async () => {
    const blob = await httpRequest(b.url, `/v2/library/small/blobs/${image.config.digest}`);
    assert.equal(blob.status, 200);
    assert.equal(blob.headers['x-content-type-options'], 'nosniff');
    const missing = await httpRequest(b.url, `/v2/library/small/manifests/nope`, { headers: { accept: FULL } });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers['x-content-type-options'], 'nosniff');
  });
});

describe('an upstream that answers manifests slowly', () => {
  const TIMEOUT_MS = 1000;
  let relay: Relay;
  let b: InProcessBerth;
  let cached: Image;
  let moved: Image;

  before(async () => {
    relay = await startRelay({ target: { host: '127.0.0.1', port: up.port } });
    cleanups.push(() => relay.close());
    cached = await smallImage('cached');
    // ~200 KB of manifest: at 2,000 bytes/s it would take 100 s to arrive.
    moved = padded(await smallImage('moved'), 200_000);
    await pushImage(up, 'lab/slow', '1', cached);
    await pushImage(up, 'lab/never-cached', '1', moved);
    b = await startBerth({ upstreams: [{ host: 'slow.test', url: relay.url() }], tagTtl: '1ms', manifestTimeout: `${TIMEOUT_MS}ms` });
    cleanups.push(() => b.stop());
    const first = await httpRequest(b.url, '/v2/slow.test/lab/slow/manifests/1', { headers: { accept: FULL } });
    assert.equal(first.headers['docker-content-digest'], cached.manifestDigest);
    // The tag moves upstream; from now on the link crawls. The HEAD (a few hundred bytes) still gets
    // through in time and names the new digest; the GET of the new manifest does not.
    await pushImage(up, 'lab/slow', '1', moved);
    relay.setRate(2000);
  });

  after(() => relay?.setRate(undefined));

  test('clients of a cached tag get it stale within the deadline, not when the manifest has crawled in', async () => {
    const mark = up.logLineCount();
    const started = performance.now();
    const rs: Outcome[] = await Promise.all([1, 2, 3].map(() => fetchOutcome(b.url, '/v2/slow.test/lab/slow/manifests/1', { headers: { accept: FULL }, timeoutMs: 15_000 })));
    const ms = performance.now() - started;
    for (const r of rs) {
      assert.equal(r.status, 200, `${r.status} ${r.error ?? ''} ${r.body.toString().slice(0, 200)}`);
      assert.equal(r.headers?.['docker-content-digest'], cached.manifestDigest, 'the cached digest');
      assert.match(String(r.headers?.warning), /stale/i);
    }
    assert.ok(ms < 3 * TIMEOUT_MS + 2000, `answered after ${Math.round(ms)} ms; manifestTimeout is ${TIMEOUT_MS} ms`);
    // The case of the issue: the upstream did answer the revalidating HEAD (with the new digest), once for
    // all three clients, and berth then went for the new manifest.
    const seen = await up.waitForAccess((es) => es.some((e) => e.method === 'GET' && e.path === `/v2/lab/slow/manifests/1`), { since: mark, timeoutMs: 10_000 });
    assert.equal(seen.filter((e) => e.method === 'HEAD' && e.path === '/v2/lab/slow/manifests/1').length, 1, 'one revalidating HEAD');
  });

  test('a tag that is not cached is a fast 503 naming the upstream', async () => {
    const started = performance.now();
    const r = await fetchOutcome(b.url, '/v2/slow.test/lab/never-cached/manifests/1', { headers: { accept: FULL }, timeoutMs: 15_000 });
    const ms = performance.now() - started;
    assert.equal(r.status, 503, `${r.status} ${r.error ?? ''} ${r.body.toString().slice(0, 200)}`);
    assert.match(r.body.toString(), /upstream slow\.test/);
    assert.ok(ms < 2 * TIMEOUT_MS + 2000, `answered after ${Math.round(ms)} ms`);
  });

  test('a frozen upstream (no answer to the HEAD at all) is served stale within the deadline too', async () => {
    relay.setRate(undefined);
    up.freeze();
    try {
      const started = performance.now();
      const r: TimedResponse = await httpRequest(b.url, '/v2/slow.test/lab/slow/manifests/1', { headers: { accept: FULL }, timeoutMs: 15_000 });
      assert.equal(r.status, 200);
      assert.equal(r.headers['docker-content-digest'], cached.manifestDigest);
      assert.ok(performance.now() - started < 2 * TIMEOUT_MS + 2000);
    } finally {
      up.thaw();
    }
  });
});
