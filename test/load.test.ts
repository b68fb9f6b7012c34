// Load and hostile clients (issue #5): 500 concurrent keep-alive connections mixing cache hits, misses and
// Range reads for ~15 s with zero errors and berth's resident memory within a bound (measured from /proc
// of a berth child process, so the load generator's own memory does not count); a slowloris client
// (headers one byte every few seconds) is cut off by the server's headers timeout; a client that never
// reads a big blob neither holds berth's memory nor stops the fill: another client gets the blob.
// The 60 s soak belongs to the benchmarks (bench/), not here.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { blobFiles, sha256File } from './support/berth-cli.ts';
import { type RawResponse, request } from './support/http.ts';
import { ACCEPT_ALL_MANIFESTS, type Blob, blobBytes, buildImage, type Image, pushImage } from './support/images.ts';
import { parseByteranges, waitUntil } from './support/links.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;
const MiB = 1024 * 1024;
const CONNECTIONS = 500;
// The soak the issue asks for: a minute of it, running beside the other test files.
const LOAD_MS = 60_000;
const MISS_POOL = 300;
/** berth's clientTimeouts.headers as configured here, and the check interval berth derives from it (a quarter). */
const HEADERS_TIMEOUT_MS = 5_000;
const CHECK_INTERVAL_MS = 1_250;
/** Bounds on berth's resident memory, over its own idle baseline. */
const LOAD_RSS_GROWTH = 400 * MiB;
const STUCK_READER_RSS_GROWTH = 72 * MiB; // buffering the 95 MiB blob would exceed it

let up: Upstream;
let work: string;
let hot: Image;
let hotLayer: { blob: Blob; bytes: Buffer };
let misses: Image;
let missBytes: Map<string, Buffer>;
let big: Image;
let b: BerthChild;

interface Slowloris {
  started: number;
  bytesSent: number;
  /** Resolves when the server closes the connection: ms after the connect, and what it said. */
  closed: Promise<{ ms: number; answer: string }>;
  stop(): void;
}

let slowloris: Slowloris | undefined;

/** A client that sends a request head one byte every `everyMs` and never finishes it. */
function startSlowloris(port: number, everyMs: number): Slowloris {
  const head = `GET /v2/lab/hot/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUser-Agent: slowloris\r\nX-Padding: `;
  const s = net.connect(port, '127.0.0.1');
  const started = Date.now();
  let answer = '';
  let timer: NodeJS.Timeout | undefined;
  const state: Slowloris = {
    started,
    bytesSent: 0,
    closed: new Promise((resolve) => {
      s.on('data', (c: Buffer) => (answer += c.toString('latin1')));
      s.on('error', () => undefined);
      s.on('close', () => {
        if (timer) clearInterval(timer);
        resolve({ ms: Date.now() - started, answer });
      });
    }),
    stop: () => {
      if (timer) clearInterval(timer);
      s.destroy();
    },
  };
  s.on('connect', () => {
    s.write(head.slice(0, 20));
    state.bytesSent = 20;
    let i = 20;
    timer = setInterval(() => {
      if (s.destroyed) return;
      s.write(i < head.length ? head[i]! : 'x');
      i++;
      state.bytesSent++;
    }, everyMs);
  });
  return state;
}

before(async () => {
  work = await makeTempDir('load');
  up = await startUpstream();
  hot = await buildImage({ format: 'oci', layers: [{ files: { 'hot.bin': randomBytes(1 * MB) } }] });
  misses = await buildImage({ format: 'oci', layers: Array.from({ length: MISS_POOL }, (_, i) => ({ files: { [`miss/${i}`]: randomBytes(16 * 1024) } })) });
  big = await buildImage({ format: 'oci', layers: [{ randomBytes: 100 * MB, dir: work }] });
  await Promise.all([pushImage(up, 'lab/hot', '1', hot), pushImage(up, 'lab/misses', '1', misses), pushImage(up, 'lab/big', '1', big)]);
  hotLayer = { blob: hot.layers[0]!, bytes: await blobBytes(hot.layers[0]!) };
  missBytes = new Map(await Promise.all(misses.layers.map(async (l) => [l.digest, await blobBytes(l)] as [string, Buffer])));
  // All 500 clients share one address here, and the misses are 300 distinct blobs: the fill caps (per
  // address and in all, tested in fill-faults) would turn the load into 503s, which is not what this measures.
  b = await startBerthChild({
    upstreams: [{ host: up.host, url: up.url }],
    log: { level: 'warn' },
    clientTimeouts: { headers: `${HEADERS_TIMEOUT_MS}ms` },
    fills: { maxConcurrent: 1000, maxPerClient: 1000 },
  });
  // Started now and checked at the end: node enforces headersTimeout only every connectionsCheckingInterval.
  slowloris = startSlowloris(b.port, 2_000);
});

after(async () => {
  slowloris?.stop();
  await b?.stop();
  await up?.stop();
  if (work) await removeTempDir(work);
});

interface Sampler {
  samples: Array<{ t: number; rss: number }>;
  stop(): void;
}

function sampleRss(child: BerthChild, everyMs = 200): Sampler {
  const samples: Array<{ t: number; rss: number }> = [];
  const t0 = Date.now();
  const timer = setInterval(() => {
    try {
      samples.push({ t: Date.now() - t0, rss: child.rss() });
    } catch {
      // the process is gone: the test will say so
    }
  }, everyMs);
  return { samples, stop: () => clearInterval(timer) };
}

const maxRss = (xs: Array<{ rss: number }>): number => xs.reduce((m, s) => Math.max(m, s.rss), 0);
const mib = (n: number): string => `${(n / MiB).toFixed(0)} MiB`;

/** One request on a keep-alive agent, the body collected. */
function viaAgent(agent: http.Agent, path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET'): Promise<RawResponse> {
  return request(b.url, path, { agent, headers, method, timeoutMs: 60_000 });
}

/** The hot image's manifest, config and layer fetched (twice), so they are cache hits from now on. */
async function warmHot(): Promise<void> {
  for (let round = 0; round < 2; round++) {
    for (const p of ['/v2/lab/hot/manifests/1', `/v2/lab/hot/blobs/${hot.config.digest}`, `/v2/lab/hot/blobs/${hotLayer.blob.digest}`]) {
      const r = await fetchOutcome(b.url, p, { headers: { accept: ACCEPT_ALL_MANIFESTS } });
      assert.equal(r.status, 200, describeOutcome(r));
    }
    await waitUntil('the hot layer committed', async () => (await blobFiles(b.storage)).some((f) => f.digest === hotLayer.blob.digest), 10_000);
  }
}

describe('berth under load and against hostile clients', () => {
  test("a client that never reads a 100 MB blob holds neither berth's memory nor the fill: another client gets the blob meanwhile", async (t) => {
    // First in the file, on a fresh berth: a buffered blob would show as growth over a small baseline.
    // Warm up first (one fill, one cached read) so that start-up allocations do not count as growth.
    await warmHot();
    const layer = big.layers[0]!;
    const baseline = b.rss();
    const sampler = sampleRss(b, 100);
    // The stuck client: asks for the (cold) blob and never reads a byte of the answer.
    const stuck = net.connect(b.port, '127.0.0.1');
    stuck.on('error', () => undefined);
    await new Promise<void>((resolve) => stuck.once('connect', () => resolve()));
    stuck.write(`GET /v2/lab/big/blobs/${layer.digest} HTTP/1.1\r\nHost: 127.0.0.1:${b.port}\r\n\r\n`);
    stuck.pause();
    try {
      // The fill goes on without the stuck client: the blob is verified and committed.
      const file = await waitUntil(
        'the blob committed under blobs/ while its first client reads nothing',
        async () => (await blobFiles(b.storage)).find((f) => f.digest === layer.digest),
        60_000,
        100,
      );
      assert.equal(await sha256File(file.file), layer.digest);
      // Another client gets the whole blob.
      const other = await fetchOutcome(b.url, `/v2/lab/big/blobs/${layer.digest}`, { timeoutMs: 60_000 });
      assert.ok(other.complete && other.status === 200, describeOutcome(other));
      assert.equal(other.body.length, layer.size);
      assert.equal(sha256Of(other.body), layer.digest);
      assert.ok(!stuck.destroyed, 'the stuck client is still connected (nothing was cut to make room)');
    } finally {
      sampler.stop();
      stuck.destroy();
    }
    const peak = maxRss(sampler.samples);
    t.diagnostic(`berth RSS baseline ${mib(baseline)}, peak ${mib(peak)} with a stuck reader of a ${mib(layer.size)} blob`);
    assert.ok(
      peak - baseline <= STUCK_READER_RSS_GROWTH,
      `berth grew from ${mib(baseline)} to ${mib(peak)} while a client did not read a ${mib(layer.size)} blob (bound: +${mib(STUCK_READER_RSS_GROWTH)})`,
    );
  });

  test(`${CONNECTIONS} concurrent connections mixing cache hits, misses and Range reads for ${LOAD_MS / 1000} s: zero errors, and memory stays bounded`, async (t) => {
    await warmHot();
    const baseline = b.rss();
    const sampler = sampleRss(b);
    const deadline = Date.now() + LOAD_MS;
    const counts = { hit: 0, head: 0, manifest: 0, range: 0, multirange: 0, miss: 0, missHit: 0 };
    const errors: string[] = [];
    let errorCount = 0;
    let nextMiss = 0;
    let peakInFlight = 0;
    let inFlight = 0;
    const size = hotLayer.bytes.length;
    const fail = (what: string): void => {
      errorCount++;
      if (errors.length < 20) errors.push(what);
    };

    const worker = async (agent: http.Agent): Promise<void> => {
      while (Date.now() < deadline) {
        const dice = Math.random();
        inFlight++;
        peakInFlight = Math.max(peakInFlight, inFlight);
        try {
          if (dice < 0.3) {
            const r = await viaAgent(agent, `/v2/lab/hot/blobs/${hotLayer.blob.digest}`);
            if (r.status !== 200 || r.body.length !== size || sha256Of(r.body) !== hotLayer.blob.digest) fail(`hit: ${r.status}, ${r.body.length} bytes`);
            counts.hit++;
          } else if (dice < 0.4) {
            const r = await viaAgent(agent, `/v2/lab/hot/blobs/${hotLayer.blob.digest}`, {}, 'HEAD');
            if (r.status !== 200 || Number(r.headers['content-length']) !== size) fail(`HEAD: ${r.status}, length ${r.headers['content-length']}`);
            counts.head++;
          } else if (dice < 0.55) {
            const r = await viaAgent(agent, '/v2/lab/hot/manifests/1', { accept: ACCEPT_ALL_MANIFESTS });
            if (r.status !== 200 || sha256Of(r.body) !== hot.manifestDigest) fail(`manifest: ${r.status}`);
            counts.manifest++;
          } else if (dice < 0.7) {
            const start = Math.floor(Math.random() * size);
            const end = Math.min(size - 1, start + Math.floor(Math.random() * 256 * 1024));
            const r = await viaAgent(agent, `/v2/lab/hot/blobs/${hotLayer.blob.digest}`, { range: `bytes=${start}-${end}` });
            if (r.status !== 206 || r.headers['content-range'] !== `bytes ${start}-${end}/${size}` || !r.body.equals(hotLayer.bytes.subarray(start, end + 1))) {
              fail(`range ${start}-${end}: ${r.status} ${r.headers['content-range']}`);
            }
            counts.range++;
          } else if (dice < 0.8) {
            const a = Math.floor(Math.random() * (size / 2));
            const c = Math.floor(size / 2 + Math.random() * (size / 2 - 1));
            const r = await viaAgent(agent, `/v2/lab/hot/blobs/${hotLayer.blob.digest}`, { range: `bytes=${a}-${a + 999},${c}-${c + 99}` });
            const parts = r.status === 206 ? parseByteranges(String(r.headers['content-type']), r.body) : [];
            if (parts.length !== 2 || parts.some((p) => !p.body.equals(hotLayer.bytes.subarray(p.start, p.end + 1)))) fail(`multi-range: ${r.status}, ${parts.length} parts`);
            counts.multirange++;
          } else {
            const i = nextMiss++;
            const layer = i < MISS_POOL ? misses.layers[i]! : misses.layers[Math.floor(Math.random() * MISS_POOL)]!;
            const r = await viaAgent(agent, `/v2/lab/misses/blobs/${layer.digest}`);
            if (r.status !== 200 || !r.body.equals(missBytes.get(layer.digest)!)) fail(`miss ${i}: ${r.status}, ${r.body.length} bytes`);
            if (i < MISS_POOL) counts.miss++;
            else counts.missHit++;
          }
        } catch (err) {
          fail((err as Error).message);
        } finally {
          inFlight--;
        }
      }
    };

    const agents = Array.from({ length: CONNECTIONS }, () => new http.Agent({ keepAlive: true, maxSockets: 1 }));
    try {
      await Promise.all(agents.map((a) => worker(a)));
    } finally {
      sampler.stop();
      for (const a of agents) a.destroy();
    }
    const total = Object.values(counts).reduce((n, x) => n + x, 0);
    const peak = maxRss(sampler.samples);
    const firstHalf = maxRss(sampler.samples.filter((s) => s.t < LOAD_MS / 2));
    const secondHalf = maxRss(sampler.samples.filter((s) => s.t >= LOAD_MS / 2));
    t.diagnostic(
      `${total} requests (${JSON.stringify(counts)}), peak in flight ${peakInFlight}; berth RSS baseline ${mib(baseline)}, peak ${mib(peak)}, first half ${mib(firstHalf)}, second half ${mib(secondHalf)}`,
    );

    assert.equal(errorCount, 0, `${errorCount} errors under load, e.g.:\n${errors.join('\n')}`);
    assert.ok(b.process.running, 'berth died under load');
    assert.equal(peakInFlight, CONNECTIONS, 'the load really had every connection busy at once');
    // (lower bounds only: other test files may share these two cores)
    assert.ok(counts.miss >= 100, `only ${counts.miss} cache misses under load`);
    assert.ok(total >= 2 * CONNECTIONS, `only ${total} requests in ${LOAD_MS} ms`);
    // (the sampler shares this busy event loop with the load: it gets fewer ticks than asked for)
    assert.ok(
      sampler.samples.filter((s) => s.t < LOAD_MS / 2).length >= 3 && sampler.samples.filter((s) => s.t >= LOAD_MS / 2).length >= 3,
      `memory was sampled throughout (${sampler.samples.length} samples)`,
    );
    assert.ok(peak - baseline <= LOAD_RSS_GROWTH, `berth grew from ${mib(baseline)} to ${mib(peak)} under load (bound: +${mib(LOAD_RSS_GROWTH)})`);
    assert.ok(secondHalf <= firstHalf * 1.25 + 32 * MiB, `berth kept growing under a steady load: ${mib(firstHalf)} in the first half, ${mib(secondHalf)} in the second`);
  });

  test('a slowloris client (request headers one byte every 2 s) is cut off by the headers timeout', async (t) => {
    assert.ok(slowloris, 'the slowloris client was started');
    const limit = HEADERS_TIMEOUT_MS + CHECK_INTERVAL_MS + 10_000;
    const waited = Date.now() - slowloris.started;
    const closed = await Promise.race([slowloris.closed, sleep(Math.max(0, limit - waited), undefined, { ref: false })]);
    t.diagnostic(closed ? `closed after ${closed.ms} ms (${slowloris.bytesSent} bytes sent): ${JSON.stringify(closed.answer.slice(0, 60))}` : 'still open');
    assert.ok(closed, `the slowloris connection was still open ${limit} ms after it started (${slowloris.bytesSent} header bytes trickled in)`);
    assert.ok(closed.ms >= HEADERS_TIMEOUT_MS - 1_000, `closed after ${closed.ms} ms, before the headers timeout: something else cut it`);
    assert.ok(closed.answer === '' || /^HTTP\/1\.1 408/.test(closed.answer), `the server's last word: ${JSON.stringify(closed.answer.slice(0, 80))}`);
  });
});
