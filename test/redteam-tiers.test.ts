// Red team (issue #12, tiers): an edge berth with `offline: except-parents` in front of a hostile parent (a
// `kind: berth` upstream that answers whatever it likes) and a registry of its own (`kind: registry`, a
// witness that records every request). The edge's credentials for the parent never go anywhere but the
// parent's origin (not across a redirect, not to a token realm elsewhere, not in clear over http after an
// https parent redirected to it); with except-parents nothing a parent says makes the edge contact another
// host; a parent's wrong sizes, wrong ranges, huge manifests and stalled bodies are 502/503s, never a wrong
// byte, a 500 or a hang.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import { request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, blobBytes, buildImage, type Image } from './support/images.ts';
import { sha256 } from './support/links.ts';
import { committed } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const run = promisify(execFile);
const REGISTRY = 'registry.test';
const OTHER = 'other.test';
const CREDS = { username: 'edge', password: `pw-${randomUUID()}` };
const BASIC = `Basic ${Buffer.from(`${CREDS.username}:${CREDS.password}`).toString('base64')}`;
const MB = 1_000_000;

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, u: URL) => void;

interface Seen {
  url: string;
  authorization: string | undefined;
  /** The connection was TLS. */
  tls: boolean;
}

/**
 * A programmable parent on one port that speaks both TLS and plain HTTP (the first byte decides), so that an
 * https parent redirecting to http on its own host:port is caught sending whatever it sends in clear.
 */
async function startHostile(certFile: string, keyFile: string) {
  const seen: Seen[] = [];
  let handler: Handler = (_req, res) => void res.writeHead(404).end();
  const onRequest = (tls: boolean) => (req: http.IncomingMessage, res: http.ServerResponse) => {
    const u = new URL(req.url ?? '/', 'http://x');
    seen.push({ url: req.url ?? '', authorization: req.headers.authorization, tls });
    if (req.headers.authorization !== BASIC) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="parent"', 'content-type': 'application/json' });
      return void res.end('{"errors":[{"code":"UNAUTHORIZED","message":"who"}]}');
    }
    if (u.pathname === '/v2/' || u.pathname === '/v2') return void res.end('{}');
    handler(req, res, u);
  };
  const plain = http.createServer(onRequest(false));
  const secure = https.createServer({ cert: await readFile(certFile), key: await readFile(keyFile) }, onRequest(true));
  const sockets = new Set<net.Socket>();
  const front = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.once('readable', () => {
      const first = socket.read(1) as Buffer | null;
      if (!first) return void socket.destroy();
      socket.unshift(first);
      (first[0] === 0x16 ? secure : plain).emit('connection', socket);
    });
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  const { port } = front.address() as AddressInfo;
  return {
    port,
    seen,
    set(h: Handler) {
      handler = h;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => front.close(() => resolve()));
    },
  };
}

/** A registry the edge has of its own (kind: registry): under except-parents it must never hear a thing. */
async function startWitness() {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ url: req.url ?? '', authorization: req.headers.authorization, tls: false });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"token":"witness-token"}');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, seen, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

let work: string;
let hostile: Awaited<ReturnType<typeof startHostile>>;
let witness: Awaited<ReturnType<typeof startWitness>>;
let edge: InProcessBerth;
let images: Image[];
let next = 0;
/** A cold image per test: nothing of it is cached at the edge yet. */
const fresh = () => images[next++]!;

/** The parent answering as a berth would for `img`, except where `override` says otherwise. */
function parentFor(img: Image, bytes: Map<string, Buffer>, override: (req: http.IncomingMessage, res: http.ServerResponse, u: URL, digest: string) => boolean = () => false): Handler {
  return (req, res, u) => {
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(u.pathname);
    if (!m || u.searchParams.get('ns') !== REGISTRY) return void res.writeHead(404).end();
    if (override(req, res, u, m[3]!)) return;
    if (m[2] === 'manifests') {
      res.writeHead(200, { 'content-type': img.mediaType, 'content-length': img.manifest.length, 'docker-content-digest': img.manifestDigest });
      return void res.end(req.method === 'HEAD' ? undefined : img.manifest);
    }
    const b = bytes.get(m[3]!);
    if (!b) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': b.length, 'docker-content-digest': m[3]! });
    res.end(req.method === 'HEAD' ? undefined : b);
  };
}

async function bytesOf(img: Image): Promise<Map<string, Buffer>> {
  return new Map([[img.config.digest, await blobBytes(img.config)], ...(await Promise.all(img.layers.map(async (l) => [l.digest, await blobBytes(l)] as const)))]);
}

before(async () => {
  work = await makeTempDir('redteam-tiers');
  const certFile = path.join(work, 'cert.pem');
  const keyFile = path.join(work, 'key.pem');
  await run('openssl', [
    ...['req', '-x509', '-nodes', '-days', '30', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-subj', '/CN=localhost'],
    ...['-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile],
  ]);
  [hostile, witness] = await Promise.all([startHostile(certFile, keyFile), startWitness()]);
  images = await Promise.all(Array.from({ length: 10 }, (_, i) => buildImage({ format: 'oci', layers: [{ randomBytes: i === 0 ? 4 * MB : 64 * 1024, dir: work }] })));
  const parent = { host: REGISTRY, url: `https://127.0.0.1:${hostile.port}`, kind: 'berth', ca: certFile, ...CREDS, timeouts: { idle: '2s' } } as unknown as UpstreamSpec;
  edge = await startBerth({ upstreams: [parent, { host: OTHER, url: witness.url }], offline: 'except-parents', retries: { attempts: 2, backoff: '20ms' } } as Parameters<typeof startBerth>[0]);
});

after(async () => {
  await edge?.stop();
  await hostile?.close();
  await witness?.close();
  if (work) await removeTempDir(work);
});

const leaked = () => hostile.seen.filter((x) => !x.tls);

describe('a hostile parent', () => {
  test('an https parent redirecting to http on its own host:port never gets the credentials in clear', async () => {
    const img = fresh();
    const bytes = await bytesOf(img);
    const layer = img.layers[0]!;
    hostile.set(
      parentFor(img, bytes, (_req, res, u, d) => {
        if (d !== layer.digest || u.searchParams.has('plain')) return false;
        res.writeHead(307, { location: `http://127.0.0.1:${hostile.port}${u.pathname}?ns=${REGISTRY}&plain=1` });
        res.end();
        return true;
      }),
    );
    const res = await request(edge.url, `/v2/${REGISTRY}/lab/a/blobs/${layer.digest}`);
    const clear = leaked();
    assert.deepEqual(
      clear.filter((s) => s.authorization !== undefined),
      [],
      'credentials sent over plain http',
    );
    if (res.status === 200) assert.equal(sha256(res.body), layer.digest);
    else assert.equal(res.status, 502, res.body.toString('utf8'));
  });

  test('an https registry redirecting to http on its own host is followed without the credentials', async () => {
    // The plain origin configured as an upstream too, as a public host would pass the egress guard.
    const img = fresh();
    const layer = img.layers[0]!;
    const b = await startBerth({
      upstreams: [
        { host: 'secure.test', url: `https://127.0.0.1:${hostile.port}`, ca: path.join(work, 'cert.pem'), ...CREDS },
        { host: 'plain.test', url: `http://127.0.0.1:${hostile.port}` },
      ] as unknown as UpstreamSpec[],
    });
    try {
      hostile.set((_req, res, u) => {
        if (u.pathname !== `/v2/lab/e/blobs/${layer.digest}`) return void res.writeHead(404).end();
        res.writeHead(307, { location: `http://127.0.0.1:${hostile.port}/cdn/${layer.digest}` });
        res.end();
      });
      const mark = hostile.seen.length;
      await request(b.url, `/v2/secure.test/lab/e/blobs/${layer.digest}`);
      const clear = hostile.seen.slice(mark).filter((x) => !x.tls);
      assert.ok(clear.length > 0, 'the redirect was followed');
      assert.deepEqual(
        clear.filter((x) => x.authorization !== undefined).map((x) => x.url),
        [],
        'credentials sent in clear after an https to http redirect',
      );
    } finally {
      await b.stop();
    }
  });

  test('a parent redirecting a blob to another host: with except-parents the edge does not follow it', async () => {
    const img = fresh();
    const layer = img.layers[0]!;
    hostile.set(
      parentFor(img, await bytesOf(img), (_req, res, _u, d) => {
        if (d !== layer.digest) return false;
        res.writeHead(307, { location: `${witness.url}/cdn/${layer.digest}` });
        res.end();
        return true;
      }),
    );
    const before = witness.seen.length;
    const res = await request(edge.url, `/v2/${REGISTRY}/lab/b/blobs/${layer.digest}`);
    assert.deepEqual(witness.seen.slice(before), [], 'the edge contacted a non-parent host');
    assert.equal(res.status, 502, res.body.toString('utf8'));
  });

  test("a parent naming another host's token realm: with except-parents no token request leaves for it, no credentials anywhere", async () => {
    const img = fresh();
    hostile.set(
      parentFor(img, await bytesOf(img), (req, res, u) => {
        if (!u.pathname.includes('/lab/c/')) return false;
        if (req.headers.authorization === 'Bearer witness-token') return false;
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${witness.url}/token",service="x"` });
        res.end();
        return true;
      }),
    );
    const before = witness.seen.length;
    const res = await request(edge.url, `/v2/${REGISTRY}/lab/c/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.ok(res.status >= 400 && res.status < 500 ? true : res.status === 502, `${res.status} ${res.body.toString('utf8')}`);
    assert.deepEqual(witness.seen.slice(before), [], 'the edge contacted a non-parent host');
  });
});

describe('a parent that lies about bodies', () => {
  /** The manifest first, so the edge knows the declared sizes (as a pull does). */
  const manifestFirst = async (repo: string) => {
    const m = await request(edge.url, `/v2/${REGISTRY}/lab/${repo}/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
    assert.equal(m.status, 200, m.body.toString('utf8'));
  };

  test('more or fewer bytes than the manifest declared: a 502 or a cut, never a 200 with wrong bytes, nothing committed', async () => {
    for (const [repo, change] of [
      ['longer', (b: Buffer) => Buffer.concat([b, Buffer.alloc(100, 1)])],
      ['shorter', (b: Buffer) => b.subarray(0, b.length - 100)],
    ] as const) {
      const img = fresh();
      const bytes = await bytesOf(img);
      const layer = img.layers[0]!;
      bytes.set(layer.digest, change(bytes.get(layer.digest)!));
      hostile.set(parentFor(img, bytes));
      await manifestFirst(repo);
      const got = await request(edge.url, `/v2/${REGISTRY}/lab/${repo}/blobs/${layer.digest}`).catch((err: Error) => err);
      console.log(`${repo} body: ${got instanceof Error ? got.message : got.status}`);
      if (!(got instanceof Error)) {
        assert.ok(got.status !== 200 || sha256(got.body) === layer.digest, `${repo}: ${got.status} with wrong bytes`);
        assert.ok(got.status === 502 || got.status === 503, `${repo}: ${got.status} ${got.body.toString('utf8').slice(0, 200)}`);
      }
      assert.equal(committed(edge, layer.digest), false, repo);
    }
  });

  test('a 206 for another range than asked: the client never gets those bytes as its range', async () => {
    const img = fresh();
    const bytes = await bytesOf(img);
    const layer = img.layers[0]!;
    const whole = bytes.get(layer.digest)!;
    hostile.set(
      parentFor(img, bytes, (req, res, _u, d) => {
        if (d !== layer.digest || !req.headers.range) return false;
        // Always the first 1000 bytes, whatever was asked.
        res.writeHead(206, { 'content-type': 'application/octet-stream', 'content-length': 1000, 'content-range': `bytes 0-999/${whole.length}` });
        res.end(whole.subarray(0, 1000));
        return true;
      }),
    );
    await manifestFirst('range');
    const got = await request(edge.url, `/v2/${REGISTRY}/lab/range/blobs/${layer.digest}`, { headers: { range: 'bytes=30000-30099' } }).catch((err: Error) => err);
    console.log(`wrong 206: ${got instanceof Error ? got.message : `${got.status} ${got.body.length} bytes`}`);
    if (!(got instanceof Error) && got.status === 206) {
      assert.ok(got.body.equals(whole.subarray(30000, 30100)), 'a 206 with the wrong bytes for the range');
    } else if (!(got instanceof Error)) {
      assert.ok([502, 503].includes(got.status), `${got.status} ${got.body.toString('utf8').slice(0, 200)}`);
    }
  });

  test('a manifest of a gigabyte (declared, or streamed without a length) is refused quickly', async () => {
    for (const chunked of [false, true]) {
      const img = fresh();
      let sent = 0;
      hostile.set(
        parentFor(img, new Map(), (req, res, u) => {
          if (!u.pathname.includes('/manifests/')) return false;
          res.writeHead(200, { 'content-type': img.mediaType, ...(chunked ? {} : { 'content-length': 1_000_000_000 }) });
          if (req.method === 'HEAD') {
            res.end();
            return true;
          }
          const chunk = Buffer.alloc(64 * 1024, 0x20);
          const pump = () => {
            while (sent < 1_000_000_000 && !res.destroyed) {
              sent += chunk.length;
              if (!res.write(chunk)) return void res.once('drain', pump);
            }
            res.end();
          };
          res.once('close', () => (sent = Number.POSITIVE_INFINITY));
          pump();
          return true;
        }),
      );
      const t0 = performance.now();
      const got = await request(edge.url, `/v2/${REGISTRY}/lab/huge${chunked ? 'c' : ''}/manifests/1`, { headers: { accept: ACCEPT_ALL_MANIFESTS }, timeoutMs: 30_000 });
      const took = performance.now() - t0;
      console.log(`huge manifest (${chunked ? 'chunked' : 'declared'}): ${got.status} after ${Math.round(took)} ms`);
      assert.ok(got.status >= 400 && got.status !== 500, `${got.status} ${got.body.toString('utf8').slice(0, 200)}`);
      assert.ok(took < 10_000, `took ${Math.round(took)} ms`);
    }
  });

  test('a blob body that stalls halfway: the client is cut or answered within a bound, and the next pull gets the right bytes', async () => {
    const img = images[0]!;
    const bytes = await bytesOf(img);
    const layer = img.layers[0]!;
    const whole = bytes.get(layer.digest)!;
    let stall = true;
    const held: http.ServerResponse[] = [];
    hostile.set(
      parentFor(img, bytes, (_req, res, _u, d) => {
        if (d !== layer.digest || !stall) return false;
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': whole.length, 'docker-content-digest': d });
        res.write(whole.subarray(0, whole.length >> 1));
        held.push(res);
        return true;
      }),
    );
    await manifestFirst('stall');
    const t0 = performance.now();
    const got = await request(edge.url, `/v2/${REGISTRY}/lab/stall/blobs/${layer.digest}`, { timeoutMs: 60_000 }).catch((err: Error) => err);
    const took = performance.now() - t0;
    console.log(`stalled body: ${got instanceof Error ? got.message : got.status} after ${Math.round(took)} ms`);
    assert.ok(took < 30_000, `a stalled parent held the client ${Math.round(took)} ms`);
    if (!(got instanceof Error)) assert.ok(got.status !== 200 || sha256(got.body) === layer.digest, `${got.status} with wrong bytes`);
    stall = false;
    for (const r of held) r.destroy();
    const again = await request(edge.url, `/v2/${REGISTRY}/lab/stall/blobs/${layer.digest}`, { timeoutMs: 30_000 });
    assert.equal(again.status, 200, again.body.toString('utf8').slice(0, 200));
    assert.equal(sha256(again.body), layer.digest);
  });
});

describe('names an attacker chooses through the edge', () => {
  test('odd ns values and host prefixes: never a 500, and the parent only ever hears of its own registry', async () => {
    const img = fresh();
    hostile.set(parentFor(img, await bytesOf(img)));
    const mark = hostile.seen.length;
    const m = `manifests/${img.manifestDigest}`;
    const paths = [
      `/v2/lab/x/${m}?ns=Registry.Test`,
      `/v2/lab/x/${m}?ns=registry.test:443`,
      `/v2/lab/x/${m}?ns=registry.test&ns=${OTHER}`,
      `/v2/lab/x/${m}?ns=${OTHER}`,
      `/v2/lab/x/${m}?ns=`,
      `/v2/lab/x/${m}?ns=registry.test%00`,
      `/v2/lab/x/${m}?ns=registry.test%2Fevil`,
      `/v2/lab/x/${m}?ns=..`,
      `/v2/lab/x/${m}?ns=${'a.'.repeat(200)}test`,
      `/v2/registry.test/registry.test/lab/x/${m}`,
      `/v2/${OTHER}/lab/x/${m}?ns=registry.test`,
      `/v2/REGISTRY.TEST/lab/x/${m}`,
      `/v2/registry.test/lab/x/${m}?ns=registry.test&n=1%26ns%3Dother.test`,
      `/v2/registry.test/lab/x/tags/list?n=1&last=a%26ns%3D${OTHER}`,
      `/v2/registry.test/lab/x/referrers/${img.manifestDigest}?artifactType=a%26ns%3D${OTHER}`,
      `/v2/registry.test/%2e%2e/lab/x/${m}`,
      `/v2/registry.test/lab/x/../y/${m}`,
    ];
    const statuses: string[] = [];
    for (const p of paths) {
      const res = await request(edge.url, p, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      statuses.push(`${res.status} ${p}`);
      assert.ok(res.status < 500 || res.status === 502 || res.status === 503, `${res.status} for ${p}: ${res.body.toString('utf8').slice(0, 200)}`);
      if (res.status === 200 && p.includes('/manifests/')) assert.equal(sha256(res.body), img.manifestDigest, p);
    }
    console.log(statuses.join('\n'));
    for (const s of hostile.seen.slice(mark)) {
      const u = new URL(s.url, 'http://x');
      assert.deepEqual(u.searchParams.getAll('ns'), [REGISTRY], `the parent was asked ${s.url}`);
      assert.ok(u.pathname.startsWith(`/v2/${REGISTRY}/`), `the parent was asked ${s.url}`);
    }
    assert.deepEqual(
      witness.seen.filter((x) => x.url.includes('/lab/x')),
      [],
      'the registry of its own was contacted under except-parents',
    );
  });
});
