// Fills under faults (issue #8, items 2, 3, 6 and 9): a Range request during an upstream outage, a blob the
// upstream no longer has, an upstream that sends wrong bytes to a Range reader, and clients that start fills
// and walk away. Whatever happens: a fast, honest answer (503 / 404 before the headers, or a cut after
// them), a bounded number of upstream requests, no bytes of one upstream served to another's clients, and
// fills released instead of holding upstream connections for `fillTimeout`.
// Real docker-registry upstreams; a stand-in origin only for the one that lies; berth as a child process
// where a freeze would freeze the test process too.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { buildImage, type Image, MediaTypes, pushImage } from './support/images.ts';
import { metricValue, waitUntil } from './support/links.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { startRelay } from './support/relay.ts';
import { respond, type StandInOrigin, startStandInOrigin } from './support/stand-in-origin.ts';
import { committed } from './support/storage.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

let up: Upstream;
let work: string;
const images: Record<string, Image> = {};
const cleanups: Array<() => Promise<unknown>> = [];

/** One image per repository, each with one random layer of `size` bytes. */
const REPOS: Record<string, number> = {
  'lab/outage': 3 * MB,
  'lab/cached': 1 * MB,
  'lab/gone-on-demand': 3 * MB,
  'lab/gone-background': 3 * MB,
  'lab/shared': 3 * MB,
  'lab/cold1': 4 * MB,
  'lab/cold2': 4 * MB,
  'lab/cold3': 4 * MB,
  'lab/lazy-bg': 3 * MB,
  'lab/byte1': 4 * MB,
  'lab/byte2': 4 * MB,
  'lab/byte3': 4 * MB,
  'lab/byte416': 4 * MB,
};

before(async () => {
  work = await makeTempDir('fill-faults');
  up = await startUpstream();
  for (const [repo, size] of Object.entries(REPOS)) {
    images[repo] = await buildImage({ format: 'oci', layers: [{ randomBytes: size, dir: work }] });
  }
  await Promise.all(Object.entries(images).map(([repo, img]) => pushImage(up, repo, '1', img)));
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await up?.stop();
  if (work) await removeTempDir(work);
});

const layer = (repo: string) => images[repo]!.layers[0]!;

async function getManifest(base: string, repo: string, host?: string): Promise<void> {
  const ns = host ? `?ns=${host}` : '';
  const r = await fetchOutcome(base, `/v2/${repo}/manifests/1${ns}`, { headers: { accept: MediaTypes.oci.manifest } });
  assert.equal(r.status, 200, describeOutcome(r));
}

const blobGets = (entries: { method: string; path: string }[], digest: string) => entries.filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${digest}`)).length;

describe('a Range request while the upstream is down', () => {
  let b: BerthChild;
  before(async () => {
    b = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }], retries: { attempts: 2, backoff: '50ms' } });
    cleanups.push(() => b.stop());
  });

  test('answers fast (503, or a cut), the log does not explode, and a cached manifest is served meanwhile', async () => {
    await getManifest(b.url, 'lab/outage');
    await getManifest(b.url, 'lab/cached');
    const cached = images['lab/cached']!;
    await up.halt();
    try {
      // Open the breaker too: the loop of the issue needs a fetch that fails without any I/O.
      for (let i = 0; i < 6; i++) await fetchOutcome(b.url, `/v2/lab/outage/blobs/${layer('lab/outage').digest}`, { headers: { range: `bytes=${i * 1000}-${i * 1000 + 99}` }, timeoutMs: 10_000 });
      const linesBefore = b.log().split('\n').length;
      const started = performance.now();
      const ranged = fetchOutcome(b.url, `/v2/lab/outage/blobs/${layer('lab/outage').digest}`, { headers: { range: 'bytes=0-99' }, timeoutMs: 20_000 });
      // While that request is in flight, a cached manifest must answer at once.
      const manifest = await fetchOutcome(b.url, `/v2/lab/cached/manifests/${cached.manifestDigest}`, { headers: { accept: MediaTypes.oci.manifest }, timeoutMs: 10_000 });
      const manifestMs = performance.now() - started;
      const r = await ranged;
      assert.equal(manifest.status, 200, `the cached manifest during the outage: ${describeOutcome(manifest)}`);
      assert.ok(manifestMs < 2_000, `the cached manifest took ${Math.round(manifestMs)} ms while a Range waited on a dead upstream`);
      assert.ok(r.ms < 5_000, `the Range request took ${Math.round(r.ms)} ms: ${describeOutcome(r)}`);
      assert.ok(r.status === 503 || !r.complete, `a Range of an uncached blob with the upstream down should be a 503 (or a cut): ${describeOutcome(r)}`);
      const lines = b.log().split('\n').length - linesBefore;
      assert.ok(lines < 50, `berth logged ${lines} lines for one Range request`);
      assert.ok(b.process.running, 'berth is still running');
    } finally {
      await up.restart();
    }
  });
});

describe('a Range read of a blob the upstream answers 404 for', () => {
  for (const lazyFill of ['on-demand', 'background'] as const) {
    test(`with lazyFill ${lazyFill}: the client gets 404 BLOB_UNKNOWN, after a few upstream GETs, and the fill is released`, async () => {
      const repo = `lab/gone-${lazyFill}`;
      const digest = layer(repo).digest;
      const b = await startBerthChild({ upstreams: [{ host: up.host, url: up.url }], lazyFill });
      cleanups.push(() => b.stop());
      await getManifest(b.url, repo);
      const del = await fetchOutcome(up.url, `/v2/${repo}/blobs/${digest}`, { method: 'DELETE' });
      assert.equal(del.status, 202, describeOutcome(del));
      const mark = up.logLineCount();
      const r = await fetchOutcome(b.url, `/v2/${repo}/blobs/${digest}`, { headers: { range: 'bytes=100-199' }, timeoutMs: 20_000 });
      assert.equal(r.status, 404, describeOutcome(r));
      assert.match(r.body.toString(), /BLOB_UNKNOWN/);
      await waitUntil('the fill to be released', async () => (await metricValue(b.url, 'berth_fills_active')) === 0, 10_000, 100);
      // Give a loop time to show itself, then count.
      await new Promise((ok) => setTimeout(ok, 1_500));
      const gets = blobGets(up.accessLogSince(mark), digest);
      assert.ok(gets >= 1 && gets <= 3, `berth made ${gets} upstream GETs of a blob the upstream does not have`);
    });
  }
});

describe('Range reads through an upstream that sends wrong bytes', () => {
  let evil: StandInOrigin;
  let b: InProcessBerth;
  let right: Buffer;
  let wrong: Buffer;

  before(async () => {
    right = await readFile(layer('lab/shared').path!);
    wrong = Buffer.from(right);
    for (let i = 0; i < wrong.length; i += 4096) wrong[i]! ^= 0xff;
    evil = await startStandInOrigin(
      (req, reply) => {
        const p = req.path.split('?')[0]!;
        if (!p.endsWith(`/blobs/${layer('lab/shared').digest}`)) return respond(reply, 404, { 'Content-Type': 'application/json' }, '{"errors":[{"code":"BLOB_UNKNOWN","message":"no"}]}');
        const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
        const start = m ? Number(m[1]) : 0;
        const end = m?.[2] ? Math.min(Number(m[2]), wrong.length - 1) : wrong.length - 1;
        const head: Record<string, string | number> = { 'Content-Type': 'application/octet-stream', 'Content-Length': end - start + 1 };
        if (m) head['Content-Range'] = `bytes ${start}-${end}/${wrong.length}`;
        reply.head(m ? 206 : 200, head);
        reply.end(req.method === 'HEAD' ? undefined : wrong.subarray(start, end + 1));
      },
      { keepAlive: true },
    );
    cleanups.push(() => evil.close());
    b = await startBerth({
      upstreams: [
        { host: up.host, url: up.url },
        { host: evil.host, url: evil.url },
      ],
      lazyFill: 'on-demand',
    });
    cleanups.push(() => b.stop());
  });

  test('ingest bytes read through one upstream are never served to a client of another', async () => {
    const digest = layer('lab/shared').digest;
    const viaEvil = await fetchOutcome(b.url, `/v2/lab/shared/blobs/${digest}?ns=${evil.host}`, { headers: { range: 'bytes=0-65535' } });
    assert.equal(viaEvil.status, 206, describeOutcome(viaEvil));
    const viaGood = await fetchOutcome(b.url, `/v2/lab/shared/blobs/${digest}?ns=${up.host}`, { headers: { range: 'bytes=0-65535' } });
    assert.equal(viaGood.status, 206, describeOutcome(viaGood));
    assert.ok(viaGood.body.equals(right.subarray(0, 65536)), 'a client of the good upstream got bytes another upstream sent');
  });

  test('a Range that covers the whole blob (bytes=0-, 0-<size-1>) is held back like a whole GET: cut, never a clean 206 of wrong bytes', async () => {
    const digest = layer('lab/shared').digest;
    for (const range of ['bytes=0-', `bytes=0-${right.length - 1}`]) {
      const r = await fetchOutcome(b.url, `/v2/lab/shared/blobs/${digest}?ns=${evil.host}`, { headers: { range }, timeoutMs: 20_000 });
      assert.ok(!(r.complete && r.status === 206), `${range} through a lying upstream: ${describeOutcome(r)}`);
      await waitUntil('the failed fill to end', () => b.berth.fills.all().length === 0, 10_000);
    }
  });

  test('several ranges that together cover the whole blob are held back too: a lying upstream cuts them, a good one serves them', async () => {
    const digest = layer('lab/shared').digest;
    for (const range of ['bytes=0-0,1-', 'bytes=1-,0-0']) {
      const r = await fetchOutcome(b.url, `/v2/lab/shared/blobs/${digest}?ns=${evil.host}`, { headers: { range }, timeoutMs: 20_000 });
      assert.ok(!(r.complete && r.status === 206), `${range} through a lying upstream: ${describeOutcome(r)}`);
      await waitUntil('the failed fill to end', () => b.berth.fills.all().length === 0, 10_000);
    }
    const good = await fetchOutcome(b.url, `/v2/lab/shared/blobs/${digest}?ns=${up.host}`, { headers: { range: 'bytes=1-,0-0' }, timeoutMs: 20_000 });
    assert.ok(good.complete && good.status === 206, describeOutcome(good));
    assert.ok(good.body.includes(right.subarray(1, 65536)), "the good upstream's multipart lacks the blob's bytes");
  });
});

describe('clients that start fills and walk away', () => {
  let b: InProcessBerth;
  before(async () => {
    // 1 MB/s: a 4 MB layer takes 4 s, so fills are still running when their clients leave.
    const link = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 1 * MB });
    cleanups.push(() => link.close());
    b = await startBerth({ upstreams: [{ host: link.host, url: link.url() }], fills: { maxConcurrent: 8, maxPerClient: 2, abandonGrace: '1s' } } as never);
    cleanups.push(() => b.stop());
  });

  /** A GET whose response head is awaited; the body is left unread until `abort`. */
  function openGet(repo: string): Promise<{ status: number; body: string; abort: () => void }> {
    return new Promise((resolve, reject) => {
      const req = http.get(`${b.url}/v2/${repo}/blobs/${layer(repo).digest}`, { agent: false }, (res) => {
        const chunks: Buffer[] = [];
        if (res.statusCode !== 200) {
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), abort: () => req.destroy() }));
          return;
        }
        resolve({ status: 200, body: '', abort: () => req.destroy() });
      });
      req.on('error', reject);
    });
  }

  test('past the per-client cap a new fill is a fast 503, and abandoned fills are dropped after the grace, not after fillTimeout', async () => {
    const first = await openGet('lab/cold1');
    const second = await openGet('lab/cold2');
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    const started = performance.now();
    const third = await openGet('lab/cold3');
    assert.equal(third.status, 503, `a third cold fill from one client: ${third.status} ${third.body}`);
    assert.ok(performance.now() - started < 2_000, 'the 503 came fast');
    assert.match(third.body, /UNAVAILABLE/);
    first.abort();
    second.abort();
    // grace 1 s; fillTimeout (30 min by default) would keep both running
    await waitUntil('the abandoned fills to be dropped', () => b.berth.fills.active === 0, 6_000, 50);
    const d3 = layer('lab/cold3').digest;
    const again = await fetchOutcome(b.url, `/v2/lab/cold3/blobs/${d3}`, { timeoutMs: 30_000 });
    assert.ok(again.complete && again.status === 200, describeOutcome(again));
    assert.equal(sha256Of(again.body), d3);
  });

  test('a lazily read blob that the background completes keeps going after its client left (fillTimeout, not the grace)', async () => {
    const repo = 'lab/lazy-bg';
    const { digest } = layer(repo);
    await getManifest(b.url, repo);
    const started = performance.now();
    const r = await fetchOutcome(b.url, `/v2/${repo}/blobs/${digest}`, { headers: { range: 'bytes=0-99' } });
    assert.equal(r.status, 206, describeOutcome(r));
    // 3 MB at 1 MB/s, starting 1 s after the read: well past the 1 s grace
    await waitUntil('the background completion to commit the blob', () => committed(b, digest), 30_000, 50);
    const ms = performance.now() - started;
    assert.ok(ms > 2_000, `the completion took ${Math.round(ms)} ms: too fast to show that the grace did not apply`);
  });
});

describe('one-byte Range reads and the fill caps', () => {
  let b: InProcessBerth;
  let link: Awaited<ReturnType<typeof startRelay>>;
  before(async () => {
    // 300 kB/s for the whole link: two 4 MB lazy completions take about 27 s, far longer than the test.
    link = await startRelay({ target: { host: '127.0.0.1', port: up.port }, rateBytesPerSec: 300_000 });
    cleanups.push(() => link.close());
    b = await startBerth({ upstreams: [{ host: link.host, url: link.url() }], fills: { maxConcurrent: 8, maxPerClient: 2, abandonGrace: '1s' } } as never);
    cleanups.push(() => b.stop());
  });

  test("lazy completions of two bytes=0-0 reads do not hold the client's fill cap once it left: a whole GET of a third layer is served", async () => {
    for (const repo of ['lab/byte1', 'lab/byte2']) {
      const r = await fetchOutcome(b.url, `/v2/${repo}/blobs/${layer(repo).digest}`, { headers: { range: 'bytes=0-0' } });
      assert.equal(r.status, 206, describeOutcome(r));
    }
    const d3 = layer('lab/byte3').digest;
    // Before the fix this was a 503 until one of the two completions ended (about 27 s).
    const status = await waitUntil(
      'a whole GET of a third layer from the same client',
      () =>
        new Promise<number | undefined>((resolve, reject) => {
          const req = http.get(`${b.url}/v2/lab/byte3/blobs/${d3}`, { agent: false }, (res) => {
            req.destroy();
            resolve(res.statusCode === 200 ? 200 : undefined);
          });
          req.on('error', reject);
        }),
      4_000,
      200,
    );
    assert.equal(status, 200);
    // The two completions go on in the background.
    const running = (repo: string) => b.berth.fills.all().some((f) => f.digest === layer(repo).digest);
    assert.ok(running('lab/byte1') && running('lab/byte2'), 'the lazy completions were dropped');
  });

  test('a 416 on a cold blob starts no background download of it', async () => {
    const { digest } = layer('lab/byte416');
    const mark = up.logLineCount();
    const r = await fetchOutcome(b.url, `/v2/lab/byte416/blobs/${digest}`, { headers: { range: 'bytes=99999999-' } });
    assert.equal(r.status, 416, describeOutcome(r));
    // Grace 1 s; a background completion would have started after 1 s and kept the fill for about 13 s.
    await waitUntil('the unread fill to be dropped', () => !b.berth.fills.all().some((f) => f.digest === digest), 5_000, 50);
    assert.equal(blobGets(up.accessLogSince(mark), digest), 0, 'berth fetched a blob for a 416');
  });

  test('past fills.maxBackground a lazy completion whose client left is dropped after the grace', async () => {
    const b1 = await startBerth({ upstreams: [{ host: link.host, url: link.url() }], fills: { maxConcurrent: 8, maxPerClient: 2, abandonGrace: '500ms', maxBackground: 1 } } as never);
    cleanups.push(() => b1.stop());
    for (const repo of ['lab/byte3', 'lab/byte416']) {
      const r = await fetchOutcome(b1.url, `/v2/${repo}/blobs/${layer(repo).digest}`, { headers: { range: 'bytes=0-0' } });
      assert.equal(r.status, 206, describeOutcome(r));
    }
    const left = await waitUntil('one completion to be dropped', () => (b1.berth.fills.all().length === 1 ? b1.berth.fills.all() : undefined), 5_000, 50);
    assert.equal(left[0]!.digest, layer('lab/byte3').digest);
    assert.ok(left[0]!.background && left[0]!.running, 'the completion holding the slot is running as background work');
  });
});
