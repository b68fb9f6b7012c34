// The upstream client in registry terms (src/upstream/client.ts): blob() → {size, start, partial, body},
// headBlob() → {size}, headManifest() → descriptor, manifest() → {digest, mediaType, bytes}, tags() →
// {tags, next}. Against a real docker-registry for what a good upstream answers; through the test relay for
// a link that stalls or breaks; and against a stand-in origin for answers no real registry can be told to
// give: 206s that contradict themselves, missing lengths, oversize or mislabelled manifests, unreadable tag
// lists, Link pagination. Every failure must be a RegistryError naming the upstream (or an IntegrityError
// for bytes that are wrong), checked before the caller sees a byte.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { UpstreamSchema } from '../src/config/schema.ts';
import type { Digest } from '../src/oci/digest.ts';
import { type ErrorCode, RegistryError } from '../src/oci/errors.ts';
import { IntegrityError } from '../src/oci/integrity.ts';
import { isRetryable } from '../src/registry/failures.ts';
import { UpstreamClient, type UpstreamClientOptions } from '../src/upstream/client.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, baseLayer, buildImage, digestOf, type Image, MediaTypes, pushImage } from './support/images.ts';
import { httpRequest, waitUntil } from './support/links.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { type Reply, respond, type StandInOrigin, startStandInOrigin } from './support/stand-in-origin.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const REPO = 'test/client';
const ORIGIN_HOST = 'origin.test';

let up: Upstream;
let image: Image;
let origin: StandInOrigin;
/** What the stand-in origin does, by request path (without the query). */
const routes = new Map<string, (reply: Reply, method: string) => void>();
const clients: UpstreamClient[] = [];
const cleanups: Array<() => Promise<unknown>> = [];

function client(host: string, url: string, o: UpstreamClientOptions = {}): UpstreamClient {
  const c = new UpstreamClient(UpstreamSchema.parse({ host, url, timeouts: { connect: '2s', header: '5s', idle: '5s' } }), o);
  clients.push(c);
  return c;
}

async function drain(body: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(c);
  return Buffer.concat(chunks);
}

/** Asserts a RegistryError with `code` whose message names `host` and matches `message`. */
async function rejectsWith(p: Promise<unknown>, code: ErrorCode, host: string, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof RegistryError, `expected a RegistryError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.includes(`upstream ${host}`), `names the upstream: ${err.message}`);
    assert.match(err.message, message);
    return true;
  });
}

async function rejectsIntegrity(p: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof IntegrityError, `expected an IntegrityError, got ${String(err)}`);
    assert.ok(err.message.includes(`upstream ${ORIGIN_HOST}`), `names the upstream: ${err.message}`);
    assert.match(err.message, message);
    return true;
  });
}

const fakeDigest = (c: string) => `sha256:${c.repeat(64)}` as Digest;

before(async () => {
  up = await startUpstream();
  cleanups.push(() => up.stop());
  image = await buildImage({ format: 'oci', layers: [await baseLayer(), { files: { 'client.txt': `${Math.random()}\n` } }, { files: { 'random.bin': randomBytes(256 * 1024) } }] });
  await pushImage(up, REPO, '1', image);
  await pushImage(up, REPO, '2', image);
  origin = await startStandInOrigin((req, reply) => {
    const path = req.path.split('?')[0]!;
    const handle = routes.get(path);
    if (handle) return handle(reply, req.method);
    respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NOT_FOUND","message":"no such thing here"}]}');
  });
  cleanups.push(() => origin.close());
});

after(async () => {
  for (const c of clients) await c.close().catch(() => undefined);
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
});

describe('against a real registry', () => {
  let c: UpstreamClient;
  before(() => {
    c = client(up.host, up.url);
  });

  test('blob(): the whole blob, then a range of it, with its size and where the body starts', async () => {
    const layer = image.layers[1]!;
    const whole = await c.blob(REPO, layer.digest as Digest);
    assert.equal(whole.partial, false);
    assert.equal(whole.start, 0);
    assert.equal(whole.size, layer.size);
    assert.equal(digestOf(await drain(whole.body)), layer.digest, 'the body is the blob');

    const part = await c.blob(REPO, layer.digest as Digest, { range: { start: 10, end: 19 } });
    assert.equal(part.partial, true);
    assert.equal(part.start, 10);
    assert.equal(part.size, layer.size, 'size is the whole blob, not the part');
    assert.deepEqual(await drain(part.body), layer.bytes!.subarray(10, 20));

    const tail = await c.blob(REPO, layer.digest as Digest, { range: { start: layer.size - 5 } });
    assert.equal(tail.start, layer.size - 5);
    assert.deepEqual(await drain(tail.body), layer.bytes!.subarray(layer.size - 5));
  });

  test('headBlob(): the size, no bytes', async () => {
    const mark = up.logLineCount();
    assert.deepEqual(await c.headBlob(REPO, image.config.digest as Digest), { size: image.config.size });
    await up.waitForAccess((e) => e.some((x) => x.method === 'HEAD' && x.path.includes(image.config.digest)), { since: mark });
  });

  test("headManifest() and manifest(): the digest, the manifest's own media type, the exact bytes", async () => {
    const d = await c.headManifest(REPO, '1', ACCEPT_ALL_MANIFESTS);
    assert.equal(d.digest, image.manifestDigest);
    assert.equal(d.mediaType, MediaTypes.oci.manifest);
    assert.equal(d.size, image.manifest.length);

    const byTag = await c.manifest(REPO, '1', ACCEPT_ALL_MANIFESTS);
    assert.equal(byTag.digest, image.manifestDigest);
    assert.equal(byTag.mediaType, MediaTypes.oci.manifest);
    assert.deepEqual(byTag.bytes, image.manifest);

    const byDigest = await c.manifest(REPO, image.manifestDigest, ACCEPT_ALL_MANIFESTS, { expected: image.manifestDigest as Digest });
    assert.deepEqual(byDigest.bytes, image.manifest);
  });

  test('not found is BLOB_UNKNOWN / MANIFEST_UNKNOWN / NAME_UNKNOWN naming the upstream', async () => {
    await rejectsWith(c.blob(REPO, fakeDigest('0')), 'BLOB_UNKNOWN', up.host, /not found/);
    await rejectsWith(c.headBlob(REPO, fakeDigest('0')), 'BLOB_UNKNOWN', up.host, /not found/);
    await rejectsWith(c.headManifest(REPO, 'nope', ACCEPT_ALL_MANIFESTS), 'MANIFEST_UNKNOWN', up.host, /not found/);
    await rejectsWith(c.manifest(REPO, 'nope', ACCEPT_ALL_MANIFESTS), 'MANIFEST_UNKNOWN', up.host, /not found/);
    await rejectsWith(c.tags('test/none'), 'NAME_UNKNOWN', up.host, /not found/);
  });

  test("tags(): the list, paged by berth's caller when the upstream sends no Link", async () => {
    const page = await c.tags(REPO);
    assert.deepEqual([...page.tags].sort(), ['1', '2']);
    assert.equal(page.next, undefined);
  });
});

describe('through a relay that stalls or breaks', () => {
  let relay: Relay;
  let c: UpstreamClient;
  before(async () => {
    relay = await startRelay({ target: { host: '127.0.0.1', port: up.port } });
    cleanups.push(() => relay.close());
    c = client('relayed.test', relay.url(), { manifestTimeoutMs: 700 });
  });

  test('a manifest request that stalls fails at manifestTimeout as UNAVAILABLE, and counts against the breaker', async () => {
    relay.setPlan({ all: { stallAfterBytes: 200 } });
    try {
      const started = Date.now();
      await rejectsWith(c.manifest(REPO, '1', ACCEPT_ALL_MANIFESTS), 'UNAVAILABLE', 'relayed.test', /did not send manifest test\/client:1 within 0\.7 s/);
      const took = Date.now() - started;
      assert.ok(took >= 650 && took < 5_000, `failed at the deadline (${took} ms)`);
      // Five stalls in a row (the breaker's threshold) mark the upstream down: the next call makes no request.
      for (let i = 0; i < 4; i++) await rejectsWith(c.headManifest(REPO, '1', ACCEPT_ALL_MANIFESTS), 'UNAVAILABLE', 'relayed.test', /within 0\.7 s/);
      assert.equal(c.health.down, true, 'the stalls opened the breaker');
      const connections = relay.connections;
      await rejectsWith(c.headManifest(REPO, '1', ACCEPT_ALL_MANIFESTS), 'UNAVAILABLE', 'relayed.test', /marked down after repeated failures/);
      assert.equal(relay.connections, connections, 'no connection was made while down');
    } finally {
      relay.setPlan({});
    }
  });

  test('a blob cut mid-body: the headers were fine, the body fails as UNAVAILABLE naming the upstream (retryable)', async () => {
    const layer = image.layers[2]!;
    const cut = client('cut.test', relay.url());
    relay.setPlan({ all: { cutAfterBytes: 20_000 } });
    try {
      const res = await cut.blob(REPO, layer.digest as Digest);
      assert.equal(res.size, layer.size);
      await rejectsWith(drain(res.body), 'UNAVAILABLE', 'cut.test', /broke off blob sha256:[0-9a-f]{64}: connection closed/);
      assert.equal(isRetryable(await drain((await cut.blob(REPO, layer.digest as Digest)).body).catch((e: unknown) => e)), true, 'the fill resumes after it');
    } finally {
      relay.setPlan({});
    }
  });
});

describe('against an origin that answers wrongly', () => {
  let c: UpstreamClient;
  const bytes = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
  const d = digestOf(bytes) as Digest;
  const blobPath = (name: string) => `/v2/bad/${name}/blobs/${d}`;
  before(() => {
    c = client(ORIGIN_HOST, origin.url);
  });

  /** Serves `head` (and `body`) at a fresh blob path; returns the repository to ask for. */
  function serveBlob(name: string, status: number, head: Record<string, string | number>, body?: Buffer): string {
    routes.set(blobPath(name), (reply, method) => {
      reply.head(status, head);
      reply.end(method === 'HEAD' ? undefined : body);
    });
    return `bad/${name}`;
  }

  test('a 206 without a Content-Range is UPSTREAM_ERROR', async () => {
    const repo = serveBlob('norange', 206, { 'Content-Length': 10 }, bytes.subarray(0, 10));
    await rejectsWith(c.blob(repo, d, { range: { start: 0, end: 9 } }), 'UPSTREAM_ERROR', ORIGIN_HOST, /206 without a usable Content-Range/);
  });

  test('a 206 whose Content-Length contradicts its Content-Range is wrong bytes (IntegrityError)', async () => {
    const repo = serveBlob('mismatch', 206, { 'Content-Range': `bytes 0-9/${bytes.length}`, 'Content-Length': 20 }, bytes.subarray(0, 20));
    await rejectsIntegrity(c.blob(repo, d, { range: { start: 0, end: 9 } }), /Content-Range 0-9\/36 and Content-Length 20/);
  });

  test('a 206 whose range ends past the blob is wrong bytes', async () => {
    const repo = serveBlob('pastend', 206, { 'Content-Range': `bytes 30-36/${bytes.length}`, 'Content-Length': 7 }, Buffer.alloc(7));
    await rejectsIntegrity(c.blob(repo, d, { range: { start: 30 } }), /Content-Range 30-36\/36/);
  });

  test('a 206 body longer than its claim fails before a byte past the claim is yielded', async () => {
    // No Content-Length: the body runs to the connection's close, 20 bytes for a claim of 10.
    const repo = serveBlob('longbody', 206, { 'Content-Range': `bytes 0-9/${bytes.length}` }, bytes.subarray(0, 20));
    const res = await c.blob(repo, d, { range: { start: 0, end: 9 } });
    assert.equal(res.partial, true);
    const got: Buffer[] = [];
    await rejectsIntegrity(
      (async () => {
        for await (const chunk of res.body) got.push(chunk);
      })(),
      /runs past the 10 bytes its Content-Range claims/,
    );
    assert.ok(Buffer.concat(got).length <= 10, `at most the claim was yielded (${Buffer.concat(got).length} bytes)`);
  });

  test('a 200 without a Content-Length is UPSTREAM_ERROR: the size is unknown', async () => {
    const repo = serveBlob('nolength', 200, {}, bytes);
    await rejectsWith(c.blob(repo, d), 'UPSTREAM_ERROR', ORIGIN_HOST, /sent no Content-Length for blob/);
  });

  test('a HEAD without a Content-Length is UPSTREAM_ERROR: no size', async () => {
    const repo = serveBlob('headnolength', 200, {});
    await rejectsWith(c.headBlob(repo, d), 'UPSTREAM_ERROR', ORIGIN_HOST, /sent no size for blob/);
  });

  test('a good 206 from the origin: start and whole size from its Content-Range', async () => {
    const repo = serveBlob('good', 206, { 'Content-Range': `bytes 5-9/${bytes.length}`, 'Content-Length': 5 }, bytes.subarray(5, 10));
    const res = await c.blob(repo, d, { range: { start: 5, end: 9 } });
    assert.deepEqual({ partial: res.partial, start: res.start, size: res.size }, { partial: true, start: 5, size: bytes.length });
    assert.deepEqual(await drain(res.body), bytes.subarray(5, 10));
  });

  const config = { mediaType: MediaTypes.oci.config, digest: `sha256:${'1'.repeat(64)}`, size: 2 };
  const good = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, config, layers: [] }));

  function serveManifest(name: string, head: Record<string, string | number>, body: Buffer): string {
    routes.set(`/v2/bad/${name}/manifests/1`, (reply, method) => {
      reply.head(200, head);
      reply.end(method === 'HEAD' ? undefined : body);
    });
    return `bad/${name}`;
  }

  test('a manifest declared bigger than the limit is refused before its body is read', async () => {
    const repo = serveManifest('huge', { 'Content-Length': 5 * 1024 * 1024, 'Content-Type': MediaTypes.oci.manifest }, Buffer.alloc(0));
    await rejectsWith(c.manifest(repo, '1', ACCEPT_ALL_MANIFESTS), 'UPSTREAM_ERROR', ORIGIN_HOST, /sent a manifest of 5242880 bytes for bad\/huge:1; the limit is 4194304/);
  });

  test('a manifest body that runs past the limit without a declared length is cut', async () => {
    const repo = serveManifest('endless', { 'Content-Type': MediaTypes.oci.manifest }, Buffer.alloc(4 * 1024 * 1024 + 1, 0x20));
    await rejectsWith(c.manifest(repo, '1', ACCEPT_ALL_MANIFESTS), 'UPSTREAM_ERROR', ORIGIN_HOST, /sent more than 4194304 bytes of manifest for bad\/endless:1/);
  });

  test('a manifest asked for by digest must hash to it', async () => {
    const wanted = fakeDigest('a');
    routes.set(`/v2/bad/wrongdigest/manifests/${wanted}`, (reply) => respond(reply, 200, { 'Content-Type': MediaTypes.oci.manifest }, good));
    await rejectsWith(c.manifest('bad/wrongdigest', wanted, ACCEPT_ALL_MANIFESTS, { expected: wanted }), 'UPSTREAM_ERROR', ORIGIN_HOST, new RegExp(`hashing to ${digestOf(good)} for ${wanted}`));
  });

  test("a manifest by tag must hash to the upstream's own Docker-Content-Digest label", async () => {
    const repo = serveManifest('mislabelled', { 'Content-Length': good.length, 'Content-Type': MediaTypes.oci.manifest, 'Docker-Content-Digest': fakeDigest('b') }, good);
    await rejectsWith(c.manifest(repo, '1', ACCEPT_ALL_MANIFESTS), 'UPSTREAM_ERROR', ORIGIN_HOST, /but labelled sha256:b{64}/);
  });

  test('an invalid manifest is UPSTREAM_ERROR; a valid one gets its own media type, not the Content-Type', async () => {
    const junk = Buffer.from('<html>not a manifest</html>');
    const bad = serveManifest('junk', { 'Content-Length': junk.length, 'Content-Type': MediaTypes.oci.manifest }, junk);
    await rejectsWith(c.manifest(bad, '1', ACCEPT_ALL_MANIFESTS), 'UPSTREAM_ERROR', ORIGIN_HOST, /sent an invalid manifest for bad\/junk:1/);
    const labelled = serveManifest('html', { 'Content-Length': good.length, 'Content-Type': 'text/html', 'Docker-Content-Digest': digestOf(good) }, good);
    const m = await c.manifest(labelled, '1', ACCEPT_ALL_MANIFESTS);
    assert.equal(m.mediaType, MediaTypes.oci.manifest);
    assert.equal(m.digest, digestOf(good));
    assert.equal(createHash('sha256').update(m.bytes).digest('hex'), digestOf(good).slice(7));
  });

  test('headManifest() without a Docker-Content-Digest says so (digest undefined), and ignores a non-manifest Content-Type', async () => {
    const repo = serveManifest('nodigest', { 'Content-Length': good.length, 'Content-Type': 'text/html' }, good);
    const desc = await c.headManifest(repo, '1', ACCEPT_ALL_MANIFESTS);
    assert.deepEqual(desc, { digest: undefined, size: good.length });
  });

  function serveTags(name: string, head: Record<string, string | number>, body: string): string {
    routes.set(`/v2/bad/${name}/tags/list`, (reply) => respond(reply, 200, { 'Content-Type': 'application/json', ...head }, body));
    return `bad/${name}`;
  }

  test('an unreadable tag list is UPSTREAM_ERROR: not JSON, or tags not an array', async () => {
    await rejectsWith(c.tags(serveTags('notjson', {}, '<html>')), 'UPSTREAM_ERROR', ORIGIN_HOST, /unreadable tag list/);
    await rejectsWith(c.tags(serveTags('notarray', {}, '{"name":"x","tags":"latest"}')), 'UPSTREAM_ERROR', ORIGIN_HOST, /unreadable tag list/);
    const empty = await c.tags(serveTags('null', {}, '{"name":"x","tags":null}'));
    assert.deepEqual(empty, { tags: [] }, 'null tags are an empty list (distribution sends that)');
  });

  test('tags(): n and last go upstream; the next page comes from the Link header; non-strings are dropped', async () => {
    const repo = serveTags('paged', { Link: '</v2/bad/paged/tags/list?n=2&last=b>; rel="next"' }, JSON.stringify({ name: 'bad/paged', tags: ['a', 'b', 7] }));
    const before = origin.requests.length;
    const page = await c.tags(repo, { n: 2, last: '0' });
    assert.deepEqual(page, { tags: ['a', 'b'], next: 'n=2&last=b' });
    const sent = origin.requests.slice(before).find((r) => r.path.startsWith('/v2/bad/paged/tags/list'));
    assert.equal(sent?.path, '/v2/bad/paged/tags/list?n=2&last=0');
  });
});

describe('through berth: a bad answer is a 502 naming the upstream, never a crash', () => {
  // Dropping an unread undici body emits 'error' on it; before discard() (src/upstream/bodies.ts) nothing
  // listened, and one such answer from an upstream ended the berth process (node:test reports it here as
  // an uncaughtException, which fails this file).
  let b: InProcessBerth;
  const bytes = randomBytes(64);
  const d = digestOf(bytes) as Digest;
  before(async () => {
    b = await startBerth({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: ORIGIN_HOST, url: origin.url },
      ],
    });
    cleanups.push(() => b.stop());
  });

  for (const c of [
    { name: 'a 206 without a Content-Range', repo: 'crash/norange', status: 206, head: { 'Content-Length': 10 } as Record<string, string | number>, range: 'bytes=0-9', body: bytes.subarray(0, 10) },
    { name: 'a 206 whose lengths disagree', repo: 'crash/mismatch', status: 206, head: { 'Content-Range': 'bytes 0-9/64', 'Content-Length': 20 }, range: 'bytes=0-9', body: bytes.subarray(0, 20) },
    { name: 'a 200 without a Content-Length', repo: 'crash/nolength', status: 200, head: {}, range: undefined, body: bytes },
  ]) {
    test(c.name, async () => {
      routes.set(`/v2/${c.repo}/blobs/${d}`, (reply, method) => {
        if (method === 'HEAD') return respond(reply, 200, { 'Content-Length': bytes.length }, '');
        reply.head(c.status, c.head);
        reply.end(c.body);
      });
      const r = await httpRequest(b.url, `/v2/${ORIGIN_HOST}/${c.repo}/blobs/${d}`, { headers: c.range ? { range: c.range } : {} });
      assert.equal(r.status, 502, r.body.toString());
      assert.match(r.body.toString(), new RegExp(`upstream ${ORIGIN_HOST.replace('.', '\\.')}`));
      // The process is still there and serving.
      assert.equal((await httpRequest(b.url, '/v2/')).status, 200);
    });
  }

  for (const kind of ['blob', 'manifest'] as const) {
    test(`a ${kind} whose connection breaks after the headers is a 503 naming the upstream, not a 500`, async () => {
      const repo = `crash/cut-${kind}`;
      const ref = kind === 'blob' ? d : '1';
      routes.set(`/v2/${repo}/${kind}s/${ref}`, (reply, method) => {
        if (method === 'HEAD') return respond(reply, 200, { 'Content-Length': bytes.length }, '');
        reply.head(200, { 'Content-Length': 4096, 'Content-Type': MediaTypes.oci.manifest });
        // A manifest is read whole before berth answers: some of it arrives. A blob's first byte would
        // send berth's headers (and then a cut is all that is left): none of it arrives.
        void reply.write(Buffer.from(kind === 'manifest' ? '{"schemaVersion"' : '')).then(() => setTimeout(() => reply.destroy(), 50));
      });
      const r = await httpRequest(b.url, `/v2/${ORIGIN_HOST}/${repo}/${kind}s/${ref}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(r.status, 503, r.body.toString());
      assert.match(r.body.toString(), new RegExp(`upstream ${ORIGIN_HOST.replace('.', '\\.')}`));
    });
  }

  test('a Range the upstream ignores (a 200 of the whole blob) is dropped, not left holding its connection', async () => {
    // Big enough that the unread body cannot sit whole in socket buffers: an unread one keeps its
    // connection (and, at shutdown, the dispatcher's close) waiting for good.
    const big = randomBytes(8 * 1024 * 1024);
    const bd = digestOf(big) as Digest;
    let opened = 0;
    let closed = 0;
    routes.set(`/v2/crash/norange-support/blobs/${bd}`, (reply, method) => {
      if (method === 'HEAD') return respond(reply, 200, { 'Content-Length': big.length }, '');
      opened++;
      reply.socket.once('close', () => closed++);
      reply.head(200, { 'Content-Length': big.length });
      void (async () => {
        for (let off = 0; off < big.length && !reply.socket.destroyed; off += 64 * 1024) await reply.write(big.subarray(off, off + 64 * 1024));
        reply.end();
      })();
    });
    const r = await httpRequest(b.url, `/v2/${ORIGIN_HOST}/crash/norange-support/blobs/${bd}`, { headers: { range: 'bytes=0-99' } });
    assert.equal(r.status, 206, r.body.toString());
    assert.deepEqual(r.body, big.subarray(0, 100));
    await waitUntil('the blob to be committed', () => b.berth.fills.all().length === 0, 20_000);
    assert.ok(opened >= 2, `the lazy fetch and the whole-blob fill each asked (${opened})`);
    await waitUntil(`every upstream connection to close (${closed} of ${opened})`, () => closed === opened, 5_000);
  });
});
