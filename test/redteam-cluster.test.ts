// A lease row that names a hostile or silent "peer" (issue #12 red team). Peer URLs come from the shared
// database, so whatever a lease names is asked for the blob: a replica must never serve a peer's wrong bytes,
// never write a 206 for another range than it asked, and never hold a blob's pulls for as long as a live
// but silent owner keeps its lease (it would never go). Each case: a real replica and a real upstream, a
// fake peer of our own (what no real berth does), its lease row kept heartbeating by the test. The replica
// must end up reading the upstream itself, and serve the right bytes. Last, the internal endpoint itself
// is attacked: malformed requests are 4xx, and hundreds of aborted reads of a running fill leak nothing.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { signPeerRequest } from '../src/cluster/peer-auth.ts';
import type { Blob } from './support/blobs.ts';
import { CLUSTER_SECRET, peerHeaders, query, type Replica, startReplica } from './support/cluster.ts';
import { hashedGet, request } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince, waitUntil } from './support/links.ts';
import { type Postgres, startPostgres } from './support/postgres.ts';
import { type Relay, startRelay } from './support/relay.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const LEASE_TIMEOUT_MS = 2000;

type Behaviour = (req: http.IncomingMessage, res: http.ServerResponse, blob: Buffer) => void;

let work: string;
let pgServer: Postgres;
let pgUrl: string;
let up: Upstream;
let relay: Relay;
let img: Image;
let replica: Replica;
let peer: http.Server;
let peerUrl: string;
let behaviour: Behaviour = () => {};
let peerBlob: Buffer = Buffer.alloc(0);
const sockets = new Set<Socket>();
const heartbeats: NodeJS.Timeout[] = [];

const bytesOf = async (b: Blob) => b.bytes ?? (await readFile(b.path!));
const blobPath = (b: Blob) => `/v2/lab/red/blobs/${b.digest}`;

before(async () => {
  work = await makeTempDir('redteam-cluster');
  pgServer = await startPostgres();
  pgUrl = await pgServer.createDatabase();
  up = await startUpstream();
  // Slow enough that a fill of the last layer is still running while the endpoint is attacked.
  relay = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 8 * MB });
  img = await buildImage({ format: 'oci', layers: [1, 2, 3, 4, 5, 6].map((n) => ({ randomBytes: (n === 5 ? 24 : 4) * MB, dir: work })) });
  await pushImage(up, 'lab/red', '1', img);
  peer = http.createServer((req, res) => behaviour(req, res, peerBlob));
  peer.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => peer.listen(0, '127.0.0.1', resolve));
  peerUrl = `http://127.0.0.1:${(peer.address() as AddressInfo).port}`;
  replica = await startReplica('red', { pgUrl, upstreams: [{ host: up.host, url: relay.url() }], leaseTimeout: `${LEASE_TIMEOUT_MS / 1000}s` });
});

after(async () => {
  for (const t of heartbeats) clearInterval(t);
  for (const s of sockets) s.destroy();
  peer?.close();
  await replica?.stop().catch(() => {});
  await relay?.close();
  await up?.stop();
  await pgServer?.destroy();
  if (work) await removeTempDir(work);
});

/** A lease of `blob`'s fill held by the fake peer, heartbeated as a live replica's is. */
async function hostileLease(blob: Blob, owner: string): Promise<void> {
  const args = [up.host.toLowerCase(), blob.digest, owner, peerUrl];
  await query(pgUrl, 'INSERT INTO fill_leases (upstream, digest, owner, url, taken_at, heartbeat_at) VALUES ($1, $2, $3, $4, now(), now())', args);
  heartbeats.push(setInterval(() => void query(pgUrl, 'UPDATE fill_leases SET heartbeat_at = now() WHERE owner = $1', [owner]).catch(() => {}), 300));
}

const upstreamGetsOf = async (blob: Blob, mark: number) => (await upstreamTrafficSince(up, mark)).filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${blob.digest}`));

/** A GET that may break (a fill that fails mid-body cuts it): what it got, never wrong bytes presented as whole. */
async function getOrBreak(blob: Blob): Promise<'broken' | number> {
  try {
    const g = await hashedGet(`${replica.url}${blobPath(blob)}`);
    if (g.status === 200) assert.equal(g.digest, blob.digest, 'a 200 that ends cleanly holds the blob');
    return g.status;
  } catch {
    return 'broken';
  }
}

test('a peer that sends wrong bytes: never served clean, and the next pull reads the upstream', async () => {
  const blob = img.layers[0]!;
  peerBlob = Buffer.alloc(blob.size, 0x5a);
  let asked = 0;
  behaviour = (_req, res, b) => {
    asked++;
    res.writeHead(200, { 'content-length': b.length, 'content-type': 'application/octet-stream' });
    res.end(b);
  };
  await hostileLease(blob, 'hostile-wrong-bytes');
  const mark = up.logLineCount();
  const first = await getOrBreak(blob);
  assert.notEqual(first, 200, 'the wrong bytes were not served as the blob');
  assert.equal(asked, 1, 'the peer named by the lease was asked once');
  const second = await hashedGet(`${replica.url}${blobPath(blob)}`);
  assert.equal(second.status, 200);
  assert.equal(second.digest, blob.digest, 'the upstream bytes');
  assert.equal(asked, 1, 'a peer whose bytes failed is not asked again for that blob');
  assert.equal((await upstreamGetsOf(blob, mark)).length, 1);
  // pino writes asynchronously: the line may land just after the response.
  await waitUntil('the log line /a peer replica failed this blob/', () => /a peer replica failed this blob/.test(replica.log()) || undefined, 5000);
});

test('a peer that answers a Range with another range: the replica serves the range asked, from the upstream', async () => {
  const blob = img.layers[1]!;
  const bytes = await bytesOf(blob);
  peerBlob = bytes;
  let asked = 0;
  behaviour = (req, res, b) => {
    asked++;
    const m = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '');
    // Always the blob's first bytes, labelled honestly: a 206 that is true of itself but not what was asked.
    const n = m ? (m[2] ? Number(m[2]) - Number(m[1]) + 1 : b.length - Number(m[1])) : b.length;
    res.writeHead(206, { 'content-range': `bytes 0-${n - 1}/${b.length}`, 'content-length': n });
    res.end(b.subarray(0, n));
  };
  await hostileLease(blob, 'hostile-wrong-range');
  const start = 3_000_000;
  const end = start + 65_535;
  const got = await request(replica.url, blobPath(blob), { headers: { range: `bytes=${start}-${end}` } });
  assert.equal(got.status, 206);
  assert.equal(got.headers['content-range'], `bytes ${start}-${end}/${blob.size}`);
  assert.ok(got.body.equals(bytes.subarray(start, end + 1)), 'the bytes of the range asked');
  assert.ok(asked >= 1, 'the peer was asked');
  const whole = await hashedGet(`${replica.url}${blobPath(blob)}`);
  assert.equal(whole.digest, blob.digest);
  assert.equal(asked, 1, 'and not again after it answered the wrong range');
});

test('a live owner that never answers: pulls are served from the upstream after one lease timeout, not held for good', async () => {
  const blob = img.layers[2]!;
  let connected = 0;
  behaviour = () => {
    connected++; // never answers, keeps the socket open
  };
  await hostileLease(blob, 'hostile-black-hole');
  const mark = up.logLineCount();
  const g = await hashedGet(`${replica.url}${blobPath(blob)}`);
  assert.equal(g.status, 200, 'not a 503 after waiting for a lease that never goes');
  assert.equal(g.digest, blob.digest);
  assert.equal(connected, 1, 'the silent owner was asked once');
  assert.equal((await upstreamGetsOf(blob, mark)).length, 1);
  // pino writes asynchronously: the line may land just after the response.
  await waitUntil('the log line /alive but not answering/', () => /alive but not answering/.test(replica.log()) || undefined, 5000);
  assert.match((await request(replica.url, '/metrics')).body.toString(), /berth_cluster_peer_errors_total\{kind="timeout"\} [1-9]/);
});

test('a peer whose body stalls twice: that peer is dropped for the blob and the upstream sends only the rest', async () => {
  const blob = img.layers[3]!;
  const bytes = await bytesOf(blob);
  let asked = 0;
  let sent = 0;
  behaviour = (req, res) => {
    asked++;
    const from = Number(/bytes=(\d+)-/.exec(req.headers.range ?? '')?.[1] ?? 0);
    const headers = from ? { 'content-range': `bytes ${from}-${bytes.length - 1}/${bytes.length}`, 'content-length': bytes.length - from } : { 'content-length': bytes.length };
    res.writeHead(from ? 206 : 200, headers);
    // The true bytes, a quarter of the blob at a time, then silence: as a stalled owner's body looks.
    const part = bytes.subarray(from, Math.min(bytes.length, from + Math.floor(bytes.length / 4)));
    sent += part.length;
    res.write(part);
  };
  await hostileLease(blob, 'hostile-stall');
  const mark = up.logLineCount();
  const g = await hashedGet(`${replica.url}${blobPath(blob)}`);
  assert.equal(g.status, 200);
  assert.equal(g.digest, blob.digest);
  assert.equal(asked, 2, 'asked, resumed once, then dropped');
  const gets = await upstreamGetsOf(blob, mark);
  assert.equal(gets.length, 1);
  assert.equal(gets[0]!.bytes, blob.size - sent, 'the upstream sent the half the peer did not');
});

test('a lease row naming a host that is no replica: it learns no secret, and nothing it got opens a real replica', async () => {
  const blob = img.layers[5]!;
  const seen: Array<{ url: string; authorization: string }> = [];
  behaviour = (req, res) => {
    seen.push({ url: req.url ?? '', authorization: String(req.headers.authorization ?? '') });
    res.writeHead(401).end();
  };
  await hostileLease(blob, 'hostile-collector');
  const g = await hashedGet(`${replica.url}${blobPath(blob)}`);
  assert.equal(g.digest, blob.digest, 'the pull is served from the upstream');
  assert.ok(seen.length >= 1, 'the host the lease named was asked');
  for (const s of seen) {
    assert.ok(!s.authorization.includes(CLUSTER_SECRET), `the secret itself was sent: ${s.authorization}`);
    assert.match(s.authorization, /^BerthPeer t=\d+, sig=[0-9a-f]{64}$/);
    // Replayed at the real replica (the same path and query): signed for another origin, so refused.
    const replay = await request(replica.url, s.url, { headers: { authorization: s.authorization } });
    assert.equal(replay.status, 401, `a replayed request: ${replay.status}`);
  }
  // Signed with the right secret, for the right host, but ten minutes ago (or from a clock that far off): refused.
  const p = seen[0]!.url;
  const stale = signPeerRequest(CLUSTER_SECRET, 'GET', new URL(p, replica.url), undefined, Date.now() - 10 * 60_000);
  assert.equal((await request(replica.url, p, { headers: { authorization: stale } })).status, 401);
  await waitUntil('the log line /from our clock/', () => /from our clock/.test(replica.log()) || undefined, 5000);
  assert.equal((await request(replica.url, p, { headers: peerHeaders(replica.url, p) })).status, 200, 'a fresh signature opens it');
});

test('the internal endpoint under attack: malformed requests are 4xx, 300 aborted reads of a running fill leak no descriptor', async () => {
  const blob = img.layers[4]!;
  const q = `upstream=${encodeURIComponent(up.host)}&repository=lab/red`;
  const signed = (path: string, range?: string) => peerHeaders(replica.url, path, range);
  for (const [path, headers, method] of [
    [`/_berth/cluster/blobs/${blob.digest}?${q}`, {}, 'GET'],
    [`/_berth/cluster/blobs/${blob.digest}?${q}`, { authorization: `Bearer ${CLUSTER_SECRET}` }, 'GET'],
    [`/_berth/cluster/blobs/${blob.digest}?${q}`, { authorization: `${signed(`/_berth/cluster/blobs/${blob.digest}?${q}`).authorization}0` }, 'GET'],
    [`/_berth/cluster/blobs/${blob.digest}?${q}`, { authorization: signed(`/_berth/cluster/blobs/${blob.digest}?${q}`, 'bytes=0-9').authorization, range: 'bytes=0-99' }, 'GET'],
    [`/_berth/cluster/blobs/sha256:zz?${q}`, signed(`/_berth/cluster/blobs/sha256:zz?${q}`), 'GET'],
    [`/_berth/cluster/blobs/../../etc/passwd?${q}`, signed(`/_berth/cluster/blobs/../../etc/passwd?${q}`), 'GET'],
    [`/_berth/cluster/blobs/${blob.digest}/..?${q}`, signed(`/_berth/cluster/blobs/${blob.digest}/..?${q}`), 'GET'],
    [`/_berth/cluster/blobs/${blob.digest}`, signed(`/_berth/cluster/blobs/${blob.digest}`), 'GET'],
    [`/_berth/cluster/blobs/${blob.digest}?${q}`, signed(`/_berth/cluster/blobs/${blob.digest}?${q}`), 'DELETE'],
    [`/_berth/cluster/blobs/${blob.digest}?${q}`, signed(`/_berth/cluster/blobs/${blob.digest}?${q}`, 'bytes=99999999999-'), 'GET'],
    [`/_berth/cluster/other?${q}`, signed(`/_berth/cluster/other?${q}`), 'GET'],
  ] as const) {
    const res = await request(replica.url, path, { method, headers });
    assert.ok(res.status >= 400 && res.status < 500, `${method} ${path}: ${res.status} ${res.body.toString().slice(0, 200)}`);
  }
  // A running fill (a client's pull through the 8 MB/s relay), then peers that hang up by the hundred.
  const pull = hashedGet(`${replica.url}${blobPath(blob)}`);
  await waitUntil('the fill runs', async () => (await query(pgUrl, 'SELECT 1 FROM fill_leases WHERE digest = $1', [blob.digest])).length > 0 || undefined, 30_000, 20);
  const fds = async () => (await readdir(`/proc/${replica.process.pid}/fd`)).length;
  let before = 0;
  for (let round = 0; round < 10; round++) {
    // After a first round: the pools (PostgreSQL, the upstream) have grown to what this load needs.
    if (round === 1) before = await fds();
    await Promise.all(
      Array.from(
        { length: 30 },
        (_, i) =>
          new Promise<void>((resolve) => {
            const path = `/_berth/cluster/blobs/${blob.digest}?${q}`;
            const headers = signed(path, i % 2 ? `bytes=${i * 1000}-${i * 1000 + 999}` : undefined);
            const req = http.get(`${replica.url}${path}`, { agent: false, headers }, (res) => {
              res.once('data', () => req.destroy());
              res.on('error', () => resolve());
              res.on('close', () => resolve());
            });
            req.on('error', () => resolve());
            req.on('close', () => resolve());
          }),
      ),
    );
  }
  const g = await pull;
  assert.equal(g.digest, blob.digest, 'the pull that the aborted reads joined still gets its bytes');
  // A leak per aborted read would be hundreds; pools (PostgreSQL, the upstream, peers) may still grow by a few.
  await waitUntil(`descriptors back to about where they were (${before})`, async () => (await fds()) <= before + 20 || undefined, 10_000, 50);
});
