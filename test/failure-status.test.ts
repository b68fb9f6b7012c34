// Every kind of upstream or storage failure reaches the client as a status from the error table with a
// code and a message that names what failed, never a 500 (issue #9 §4): integrity (sizes or digests that
// do not match), network (refused, reset), timeout (headers never come), the outbound proxy (down, or
// answering 502), the token service (down, 500, garbage, silent) and a full disk. For manifests
// and blobs, each on a cold cache (the failure is met on the way in, before any header goes out).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { ACCEPT_ALL_MANIFESTS, buildImage, digestOf, type Image, MediaTypes, pushImage } from './support/images.ts';
import { fillUp, mountTmpfs, unmountUnder } from './support/mounts.ts';
import { describeOutcome, fetchOutcome, type Outcome } from './support/outcome.ts';
import { freePort } from './support/ports.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { respond, type StandInOrigin, startStandInOrigin } from './support/stand-in-origin.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const SHORT = { connect: '1s', header: '1s', idle: '1s' };
const UNAUTHORIZED = '{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}';

let work: string;
let up: Upstream;
let image: Image;
let liar: Image;
let b: InProcessBerth;
let full: InProcessBerth | undefined;
let mnt: string | undefined;
const relays: Relay[] = [];
const servers: Array<{ close(): Promise<void> }> = [];

/** A TCP listener that answers every request, CONNECT included, with `502 Bad Gateway`: a proxy whose way out is broken. */
async function startBadGatewayProxy(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.once('data', () => s.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** An origin whose token service fails in the way its path names; the registry side always asks for a token. */
async function startTokenOrigin(realmDown: string): Promise<StandInOrigin> {
  let origin: StandInOrigin;
  const realms: Record<string, string> = {};
  origin = await startStandInOrigin(
    (req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/v2/' || p === '/v2') return respond(reply, 401, { 'WWW-Authenticate': `Bearer realm="${origin.url}/token/500"`, 'Content-Type': 'application/json' }, UNAUTHORIZED);
      const kind = /^\/v2\/token-([a-z0-9]+)\//.exec(p)?.[1];
      if (kind) {
        const realm = kind === 'down' ? `${realmDown}/token` : `${origin.url}/token/${kind}`;
        realms[kind] = realm;
        return respond(reply, 401, { 'WWW-Authenticate': `Bearer realm="${realm}",service="token.test"`, 'Content-Type': 'application/json' }, UNAUTHORIZED);
      }
      if (p === '/token/500') return respond(reply, 500, { 'Content-Type': 'text/plain' }, 'internal server error');
      if (p === '/token/garbage') return respond(reply, 200, { 'Content-Type': 'application/json' }, '<html>not a token</html>');
      if (p === '/token/empty') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
      // /token/silent: accepts and never answers (the socket stays open until close()).
      if (p === '/token/silent') return;
      respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    },
    { keepAlive: true },
  );
  return origin;
}

/** An origin that serves a manifest whose bytes do not hash to the digest asked for (and the tag's lies about its digest header). */
async function startLyingOrigin(): Promise<StandInOrigin> {
  const bytes = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.oci.manifest, config: { mediaType: MediaTypes.oci.config, digest: `sha256:${'0'.repeat(64)}`, size: 2 }, layers: [] }),
  );
  return startStandInOrigin(
    (req, reply) => {
      const p = req.path.split('?')[0]!;
      if (p === '/v2/' || p === '/v2') return respond(reply, 200, { 'Content-Type': 'application/json' }, '{}');
      if (/^\/v2\/lab\/lie\/manifests\//.test(p)) {
        const wrong = `sha256:${'1'.repeat(64)}`;
        return respond(reply, 200, { 'Content-Type': MediaTypes.oci.manifest, 'Docker-Content-Digest': wrong }, req.method === 'HEAD' ? '' : bytes);
      }
      // Headers, then a tenth of the body, then a reset: a link that breaks mid-manifest or mid-blob.
      if (/^\/v2\/lab\/cut\/(manifests|blobs)\//.test(p)) {
        const isManifest = p.includes('/manifests/');
        reply.head(200, { 'Content-Type': isManifest ? MediaTypes.oci.manifest : 'application/octet-stream', 'Content-Length': bytes.length * 10 });
        if (req.method === 'HEAD') return reply.end();
        return void reply.write(bytes.subarray(0, 20)).then(() => reply.destroy());
      }
      // A blob whose body is not its digest, with a size that is its own.
      if (/^\/v2\/lab\/lie\/blobs\//.test(p)) {
        const body = randomBytes(4096);
        reply.head(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length });
        return req.method === 'HEAD' ? reply.end() : reply.end(body);
      }
      respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
    },
    { keepAlive: true },
  );
}

before(async () => {
  work = await makeTempDir('failure-status');
  up = await startUpstream();
  image = await buildImage({ format: 'oci', layers: [{ files: { 'a.txt': `a ${randomBytes(8).toString('hex')}\n` } }, { randomBytes: 256 * 1024, dir: work }] });
  await pushImage(up, 'lab/small', '1', image);
  // Its manifest declares the last layer with size 1; the blob is the real one.
  const json = JSON.parse(image.manifest.toString()) as { layers: Array<{ size: number }> };
  json.layers[json.layers.length - 1]!.size = 1;
  const manifest = Buffer.from(JSON.stringify(json));
  liar = { ...image, manifest, manifestDigest: digestOf(manifest) };
  await pushImage(up, 'lab/liar', '1', liar);

  const closed = [await freePort(), await freePort(), await freePort()];
  const target = { host: '127.0.0.1', port: up.port };
  const reset = await startRelay({ target, plan: { all: { refuse: true } } });
  const stall = await startRelay({ target, plan: { all: { stallAfterBytes: 0 } } });
  relays.push(reset, stall);
  const badGateway = await startBadGatewayProxy();
  const realmDown = `http://127.0.0.1:${closed[2]!}`;
  const token = await startTokenOrigin(realmDown);
  const lying = await startLyingOrigin();
  servers.push(badGateway, token, lying);

  const upstreams: UpstreamSpec[] = [
    { host: 'docker.io', url: up.url },
    { host: 'lying.test', url: lying.url },
    { host: 'refused.test', url: `http://127.0.0.1:${closed[0]!}`, timeouts: SHORT },
    { host: 'reset.test', url: reset.url(), timeouts: SHORT },
    { host: 'stall.test', url: stall.url(), timeouts: SHORT },
    { host: 'proxy-down.test', url: up.url, proxy: `http://127.0.0.1:${closed[1]!}`, timeouts: SHORT },
    { host: 'proxy-502.test', url: up.url, proxy: badGateway.url, timeouts: SHORT },
    { host: 'token.test', url: token.url, timeouts: SHORT },
    // Configured only so that a realm on it passes the egress guard: nothing listens there.
    { host: 'realm-down.test', url: realmDown, timeouts: SHORT },
  ];
  // One attempt: each failure kind is seen as it is, not as the circuit breaker's verdict after retries.
  b = await startBerth({ upstreams, defaultUpstream: 'docker.io', retries: { attempts: 0, backoff: '10ms' } });
});

after(async () => {
  await b?.stop();
  await full?.stop().catch(() => undefined);
  if (mnt) await unmountUnder(mnt);
  for (const r of relays) await r.close();
  for (const s of servers) await s.close();
  await up?.stop();
  if (work) await removeTempDir(work);
});

interface Expect {
  status: number;
  code: string;
  /** The message says what failed (which upstream, which part). */
  message: RegExp;
}

function assertAnswered(what: string, r: Outcome, e: Expect): void {
  assert.ok(r.complete, `${what}: ${describeOutcome(r)}`);
  assert.notEqual(r.status, 500, `${what}: ${r.body.toString()}`);
  assert.equal(r.status, e.status, `${what}: ${r.body.toString()}`);
  const err = (JSON.parse(r.body.toString()) as { errors: Array<{ code: string; message: string }> }).errors[0]!;
  assert.equal(err.code, e.code, `${what}: ${err.message}`);
  assert.match(err.message, e.message, what);
}

const manifest = (name: string, ns: string) => `/v2/${name}/manifests/1?ns=${ns}`;
const blob = (name: string, ns: string, digest: string) => `/v2/${name}/blobs/${digest}?ns=${ns}`;

async function both(kind: string, name: string, ns: string, e: Expect | { manifest: Expect; blob: Expect }): Promise<void> {
  const em = 'manifest' in e ? e.manifest : e;
  const eb = 'blob' in e ? e.blob : e;
  const layer = image.layers[0]!;
  for (const method of ['GET', 'HEAD']) {
    const m = await fetchOutcome(b.url, manifest(name, ns), { method, headers: { accept: ACCEPT_ALL_MANIFESTS }, timeoutMs: 20_000 });
    if (method === 'HEAD') {
      // A HEAD carries no body: the status is what the client has.
      assert.equal(m.status, em.status, `${kind} ${method} manifest: ${describeOutcome(m)}`);
    } else assertAnswered(`${kind} GET manifest`, m, em);
  }
  const g = await fetchOutcome(b.url, blob(name, ns, layer.digest), { timeoutMs: 20_000 });
  assertAnswered(`${kind} GET blob`, g, eb);
  const r = await fetchOutcome(b.url, blob(name, ns, image.layers[1]!.digest), { headers: { range: 'bytes=0-99' }, timeoutMs: 20_000 });
  assertAnswered(`${kind} Range GET blob`, r, eb);
}

describe('upstream failures reach the client as statuses from the table, naming the upstream', () => {
  test('integrity: a size in the manifest that the blob does not have is 502 UPSTREAM_ERROR', async () => {
    const pulled = await fetchOutcome(b.url, manifest('lab/liar', 'docker.io'), { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(pulled.status, 200, describeOutcome(pulled));
    const layer = liar.layers.at(-1)!;
    for (const headers of [{}, { range: 'bytes=0-99' }]) {
      const r = await fetchOutcome(b.url, blob('lab/liar', 'docker.io', layer.digest), { headers });
      assertAnswered(`size lie ${JSON.stringify(headers)}`, r, { status: 502, code: 'UPSTREAM_ERROR', message: /upstream docker\.io/ });
    }
  });

  test('integrity: a manifest whose bytes are not the digest asked for is 502 UPSTREAM_ERROR; a blob that is not its digest is cut, never a 500', async () => {
    const wrong = `sha256:${'2'.repeat(64)}`;
    const m = await fetchOutcome(b.url, `/v2/lab/lie/manifests/${wrong}?ns=lying.test`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assertAnswered('manifest digest lie', m, { status: 502, code: 'UPSTREAM_ERROR', message: /upstream lying\.test/ });
    const tag = await fetchOutcome(b.url, '/v2/lab/lie/manifests/1?ns=lying.test', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assertAnswered('manifest digest header lie', tag, { status: 502, code: 'UPSTREAM_ERROR', message: /upstream lying\.test/ });
    // A small blob is checked before its first byte goes out (the last byte is held back for the check and
    // there is only one chunk): a status, not a cut connection.
    const g = await fetchOutcome(b.url, `/v2/lab/lie/blobs/sha256:${'3'.repeat(64)}?ns=lying.test`, { timeoutMs: 20_000 });
    assertAnswered('blob digest lie', g, { status: 502, code: 'UPSTREAM_ERROR', message: /sha256:3333/ });
  });

  test('network: a connection reset in the middle of a manifest body is 503 UNAVAILABLE naming the upstream', async () => {
    for (const ref of ['1', `sha256:${'4'.repeat(64)}`]) {
      const m = await fetchOutcome(b.url, `/v2/lab/cut/manifests/${ref}?ns=lying.test`, { headers: { accept: ACCEPT_ALL_MANIFESTS }, timeoutMs: 20_000 });
      assertAnswered(`manifest cut ${ref}`, m, { status: 503, code: 'UNAVAILABLE', message: /upstream lying\.test/ });
    }
  });

  test('network: a connection reset in the middle of a blob body is never a 500 and never a whole-looking blob', async () => {
    for (const headers of [{}, { range: 'bytes=0-99' }]) {
      const g = await fetchOutcome(b.url, `/v2/lab/cut/blobs/sha256:${'5'.repeat(64)}?ns=lying.test`, { headers, timeoutMs: 20_000 });
      assert.notEqual(g.status, 500, describeOutcome(g));
      if (g.status !== undefined && g.status >= 400) assertAnswered(`blob cut ${JSON.stringify(headers)}`, g, { status: 503, code: 'UNAVAILABLE', message: /upstream lying\.test/ });
      else assert.ok(!g.complete, `a cut blob is cut for the client too: ${describeOutcome(g)}`);
    }
  });

  test('network: connection refused is 503 UNAVAILABLE naming the upstream', async () => {
    await both('refused', 'lab/small', 'refused.test', { status: 503, code: 'UNAVAILABLE', message: /cannot reach upstream refused\.test/ });
  });

  test('network: a connection reset before any answer is 503 UNAVAILABLE naming the upstream', async () => {
    await both('reset', 'lab/small', 'reset.test', { status: 503, code: 'UNAVAILABLE', message: /upstream reset\.test/ });
  });

  test('timeout: an upstream that accepts and never sends headers is 503 UNAVAILABLE naming the upstream', async () => {
    await both('stall', 'lab/small', 'stall.test', { status: 503, code: 'UNAVAILABLE', message: /upstream stall\.test/ });
  });

  test('proxy: an outbound proxy that refuses connections is 503 UNAVAILABLE, through its outbound proxy', async () => {
    await both('proxy down', 'lab/small', 'proxy-down.test', { status: 503, code: 'UNAVAILABLE', message: /upstream proxy-down\.test through its outbound proxy/ });
  });

  test('proxy: an outbound proxy that answers 502 is 502 UPSTREAM_ERROR naming the upstream', async () => {
    // To an http:// upstream undici sends the request itself to the proxy (no CONNECT), so the proxy's 502
    // reads like the upstream's own: a 502 either way, and the client falls back to its next host.
    await both('proxy 502', 'lab/small', 'proxy-502.test', { status: 502, code: 'UPSTREAM_ERROR', message: /upstream proxy-502\.test answered 502 for .* \(through its outbound proxy\)/ });
  });

  for (const [kind, e] of [
    ['500', { status: 502, code: 'UPSTREAM_ERROR', message: /token service of upstream token\.test answered 500/ }],
    ['garbage', { status: 502, code: 'UPSTREAM_ERROR', message: /token service of upstream token\.test sent no token/ }],
    ['empty', { status: 502, code: 'UPSTREAM_ERROR', message: /token service of upstream token\.test sent no token/ }],
    ['silent', { status: 503, code: 'UNAVAILABLE', message: /upstream token\.test/ }],
    ['down', { status: 503, code: 'UNAVAILABLE', message: /upstream token\.test/ }],
  ] as const) {
    test(`token: a token service that is ${kind} is ${e.status} ${e.code} naming the upstream`, async () => {
      await both(`token ${kind}`, `token-${kind}/x`, 'token.test', e);
    });
  }
});

describe('a full disk', () => {
  before(async () => {
    mnt = path.join(work, 'fs');
    await mkdir(mnt);
    await mountTmpfs(mnt, '4m');
    full = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], storage: path.join(mnt, 'storage') });
    await fillUp(path.join(mnt, 'filler'));
  });

  test('a manifest that cannot be stored and a blob that cannot be cached are 503 UNAVAILABLE, never a 500', async () => {
    const m = await fetchOutcome(full!.url, '/v2/lab/small/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assertAnswered('disk full GET manifest', m, { status: 503, code: 'UNAVAILABLE', message: /storage is full/ });
    const byDigest = await fetchOutcome(full!.url, `/v2/lab/small/manifests/${image.manifestDigest}`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assertAnswered('disk full GET manifest by digest', byDigest, { status: 503, code: 'UNAVAILABLE', message: /storage is full/ });
    for (const headers of [{}, { range: 'bytes=0-99' }]) {
      const g = await fetchOutcome(full!.url, `/v2/lab/small/blobs/${image.layers[1]!.digest}`, { headers, timeoutMs: 20_000 });
      assertAnswered(`disk full blob ${JSON.stringify(headers)}`, g, { status: 503, code: 'UNAVAILABLE', message: /no space left/ });
    }
  });

  test('a storage directory that turned read-only is 503 UNAVAILABLE, never a 500', async () => {
    await rm(path.join(mnt!, 'filler'));
    // Where every write begins (berth's index stays writable: its file is open, so the disk cannot go
    // read-only as a whole without unmounting): a read-only bind mount over ingest/.
    const ingest = path.join(full!.storage, 'ingest');
    await run('mount', ['--bind', ingest, ingest]);
    await run('mount', ['-o', 'remount,bind,ro', ingest]);
    try {
      const m = await fetchOutcome(full!.url, '/v2/lab/small/manifests/1', { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      const g = await fetchOutcome(full!.url, `/v2/lab/small/blobs/${image.layers[1]!.digest}`, { timeoutMs: 20_000 });
      const r = await fetchOutcome(full!.url, `/v2/lab/small/blobs/${image.layers[1]!.digest}`, { headers: { range: 'bytes=0-99' }, timeoutMs: 20_000 });
      // A manifest is small enough to serve while its copy cannot be kept; either way, never a 500.
      assert.ok(m.status === 200 || m.status === 503, `read-only GET manifest: ${describeOutcome(m)}`);
      if (m.status === 503) assertAnswered('read-only GET manifest', m, { status: 503, code: 'UNAVAILABLE', message: /storage/ });
      assertAnswered('read-only GET blob', g, { status: 503, code: 'UNAVAILABLE', message: /berth's storage failed \(EROFS\)/ });
      assertAnswered('read-only Range GET blob', r, { status: 503, code: 'UNAVAILABLE', message: /berth's storage failed \(EROFS\)/ });
    } finally {
      await run('umount', [ingest]);
    }
  });
});
