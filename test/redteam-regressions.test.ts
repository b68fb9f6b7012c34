// Found by red-teaming the issue #8 fixes: each case failed before its fix.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { httpRequest, metricValue, waitUntil } from './support/links.ts';
import { respond, startStandInOrigin } from './support/stand-in-origin.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

let up: Upstream;
let work: string;
const images: Image[] = [];
const berths: InProcessBerth[] = [];

before(async () => {
  work = await makeTempDir('redteam');
  up = await startUpstream();
  for (let i = 0; i < 3; i++) {
    const img = await buildImage({ format: 'oci', layers: [{ randomBytes: 100_000, dir: work }] });
    await pushImage(up, `lab/rt${i}`, '1', img);
    images.push(img);
  }
});

after(async () => {
  for (const b of berths) await b.stop().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

test('lazyFill on-demand: a 416 on a cold blob does not hold a fill slot (and an fd, and an ingest file) for good', async () => {
  const b = await startBerth({ upstreams: [{ host: 'up.example', url: up.url }], lazyFill: 'on-demand', fills: { maxConcurrent: 64, maxPerClient: 1, abandonGrace: '200ms' } });
  berths.push(b);
  const [a, c] = [images[0]!.layers[0]!, images[1]!.layers[0]!];
  const r = await httpRequest(b.url, `/v2/lab/rt0/blobs/${a.digest}`, { headers: { Range: 'bytes=99999999-' } });
  assert.equal(r.status, 416);
  // The fill the 416 acquired is let go after the grace: this client may start another, and nothing stays in ingest/.
  const ok = await waitUntil(
    'a new fill for the same client',
    async () => {
      const res = await httpRequest(b.url, `/v2/lab/rt1/blobs/${c.digest}`);
      return res.status === 200 ? res : undefined;
    },
    5000,
    100,
  );
  assert.equal(ok.body.length, c.size);
  await waitUntil('ingest/ emptied', () => readdirSync(`${b.storage}/ingest`).length === 0, 5000);
  assert.equal(b.berth.fills.active, 0);
});

test('error, token and tag-list bodies from an upstream are read only up to a bound, not into memory whole', async () => {
  const MB = 1 << 20;
  const total = 256 * MB;
  const chunk = Buffer.alloc(MB, 'x');
  const written: Record<string, number> = {};
  const origin = await startStandInOrigin(async (req, reply) => {
    const kind = req.path.startsWith('/token') ? 'token' : req.path.includes('/tags/') ? 'tags' : req.path.includes('/blobs/') ? 'error' : 'other';
    if (kind === 'other' || (kind === 'tags' && !req.headers.authorization)) {
      // Every repository asks for a bearer token from this origin's /token.
      respond(reply, 401, { 'WWW-Authenticate': `Bearer realm="http://${req.headers.host}/token",service="x"` });
      return;
    }
    if (kind === 'token' && req.path.includes('x%2Ft')) {
      respond(reply, 200, { 'Content-Type': 'application/json' }, '{"token":"t","expires_in":300}');
      return;
    }
    if (kind === 'error' && !req.headers.authorization) {
      reply.head(404, { 'Content-Length': total, 'Content-Type': 'text/plain' });
    } else {
      reply.head(200, { 'Content-Length': total, 'Content-Type': 'application/json' });
    }
    written[kind] = 0;
    try {
      for (let n = 0; n < total; n += MB) {
        await reply.write(chunk);
        written[kind]! += MB;
      }
      reply.end();
    } catch {
      // berth hung up: what we want
    }
  });
  try {
    const b = await startBerth({ upstreams: [{ host: 'hostile.example', url: origin.url }] });
    berths.push(b);
    const blob = await httpRequest(b.url, `/v2/x/y/blobs/sha256:${'ab'.repeat(32)}`, { timeoutMs: 60_000 });
    assert.equal(blob.status, 404);
    // x/y's token answer is huge; x/t gets a token, then a huge tag list.
    const token = await httpRequest(b.url, '/v2/x/y/tags/list', { timeoutMs: 60_000 });
    assert.equal(token.status, 502, String(token.body));
    const tags = await httpRequest(b.url, '/v2/x/t/tags/list', { timeoutMs: 60_000 });
    assert.equal(tags.status, 502, String(tags.body));
    for (const kind of ['error', 'token', 'tags']) {
      assert.ok(written[kind] !== undefined, `the origin was asked for a ${kind} body`);
      assert.ok(written[kind]! < 64 * MB, `berth read ${written[kind]! / MB} MB of a ${kind} body`);
    }
  } finally {
    await origin.close();
  }
});

test('an upstream error body sent one byte every 20 s does not hold the request: berth answers within seconds', async () => {
  let trickling = 0;
  const origin = await startStandInOrigin(async (req, reply) => {
    if (!req.path.includes('/blobs/')) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    reply.head(404, { 'Content-Length': 1000, 'Content-Type': 'application/json' });
    trickling++;
    try {
      for (let i = 0; i < 1000; i++) {
        await reply.write(Buffer.from(' '));
        await new Promise((ok) => setTimeout(ok, 20_000).unref());
        if (reply.socket.destroyed) return;
      }
      reply.end();
    } catch {
      // berth hung up: what we want
    }
  });
  const b = await startBerth({ upstreams: [{ host: origin.host, url: origin.url }] });
  berths.push(b);
  try {
    const digest = images[0]!.layers[0]!.digest;
    const started = performance.now();
    const r = await httpRequest(b.url, `/v2/lab/rt0/blobs/${digest}`, { timeoutMs: 20_000 });
    const ms = performance.now() - started;
    assert.equal(r.status, 404);
    assert.equal(trickling, 1);
    assert.ok(ms < 10_000, `the 404 took ${Math.round(ms)} ms`);
    await waitUntil('the fill to be released', () => b.berth.fills.active === 0, 5_000);
  } finally {
    await origin.close();
  }
});

test('a 206 whose body runs past the Content-Range it claims is a 502 naming the upstream, and nothing past the claim is written', async () => {
  const MB = 1 << 20;
  const origin = await startStandInOrigin(async (req, reply) => {
    if (!req.path.includes('/blobs/')) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    // rt0: a Content-Length of 5 MiB; rt1: chunked (the stand-in writes raw bytes, so chunks are framed here).
    const chunked = req.path.includes('/rt1/');
    const framing: Record<string, string | number> = chunked ? { 'Transfer-Encoding': 'chunked' } : { 'Content-Length': 5 * MB };
    reply.head(206, { 'Content-Type': 'application/octet-stream', 'Content-Range': 'bytes 0-99/100000', ...framing });
    try {
      for (let i = 0; i < 5; i++) await reply.write(chunked ? Buffer.concat([Buffer.from(`${MB.toString(16)}\r\n`), Buffer.alloc(MB, 1), Buffer.from('\r\n')]) : Buffer.alloc(MB, 1));
      reply.end(chunked ? '0\r\n\r\n' : undefined);
    } catch {
      // berth hung up
    }
  });
  const b = await startBerth({ upstreams: [{ host: origin.host, url: origin.url }] });
  berths.push(b);
  try {
    for (const i of [0, 1]) {
      const r = await httpRequest(b.url, `/v2/lab/rt${i}/blobs/${images[i]!.layers[0]!.digest}`, { timeoutMs: 20_000 });
      assert.equal(r.status, 502, `rt${i}: ${r.status} ${r.body.toString().slice(0, 200)}`);
      assert.match(r.body.toString(), new RegExp(`UPSTREAM_ERROR.*${origin.host.replace(/\./g, '\\.')}`));
    }
    const read = await metricValue(b.url, 'berth_upstream_bytes_total');
    assert.ok(read <= 200, `${read} bytes of the lying bodies reached the ingest file`);
  } finally {
    await origin.close();
  }
});
