// A cached blob removed between the look that found it and the open that reads it (the quota evicting it
// under a full disk, gc, `berth rm`, or another replica on shared storage) is a miss after all: the client
// gets the right bytes, fetched again, never a 500. Found by the chaos test (test/chaos.test.ts), where the
// quota evicts all the time; here the removal is put exactly into that gap, every time.
import assert from 'node:assert/strict';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { Digest } from '../src/oci/digest.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { blobBytes, buildImage, type Image, pushImage } from './support/images.ts';
import { upstreamTrafficSince } from './support/links.ts';
import { describeOutcome, fetchOutcome, sha256Of } from './support/outcome.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const MB = 1_000_000;

describe('a cached blob evicted between being found and being read', () => {
  let up: Upstream;
  let work: string;
  let b: InProcessBerth;
  let offline: InProcessBerth;
  let image: Image;
  let layer: { digest: Digest; bytes: Buffer };

  before(async () => {
    work = await makeTempDir('berth-evicted');
    up = await startUpstream();
    image = await buildImage({ format: 'oci', layers: [{ randomBytes: 3 * MB, dir: work }] });
    await pushImage(up, 'lab/evicted', '1', image);
    const l = image.layers[0]!;
    layer = { digest: l.digest as Digest, bytes: await blobBytes(l) };
    b = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }] });
  });

  after(async () => {
    await b?.stop();
    await offline?.stop();
    await up?.stop();
    await removeTempDir(work);
  });

  const blobPath = () => `/v2/lab/evicted/blobs/${layer.digest}`;

  /** Makes the next read of a blob (send or read) find its file gone: removed in the gap, after Blobs found it. */
  function evictOnNextRead(on: InProcessBerth): void {
    const store = on.berth.store;
    const { send, read } = store;
    const restore = () => {
      store.send = send;
      store.read = read;
    };
    store.send = async (d, start, end, write) => {
      restore();
      await store.remove(d);
      return send.call(store, d, start, end, write);
    };
    store.read = (d, start, end) => {
      restore();
      return Readable.from(
        (async function* () {
          await store.remove(d);
          yield* read.call(store, d, start, end);
        })(),
      );
    };
  }

  async function cacheThenEvictOnRead(on: InProcessBerth): Promise<void> {
    const warm = await fetchOutcome(on.url, blobPath());
    assert.equal(warm.status, 200, describeOutcome(warm));
    evictOnNextRead(on);
  }

  async function blobGets(mark: number): Promise<number> {
    return (await upstreamTrafficSince(up, mark)).filter((e) => e.method === 'GET' && e.path.split('?')[0]!.endsWith(`/blobs/${layer.digest}`)).length;
  }

  test('a whole GET is fetched again and answered with the right bytes', async () => {
    await cacheThenEvictOnRead(b);
    const mark = up.logLineCount();
    const o = await fetchOutcome(b.url, blobPath());
    assert.equal(o.status, 200, describeOutcome(o));
    assert.equal(sha256Of(o.body), layer.digest);
    assert.equal(await blobGets(mark), 1, 'the evicted blob was fetched from the upstream again');
  });

  test('a Range GET is answered with the right bytes of the refetched blob', async () => {
    await cacheThenEvictOnRead(b);
    const o = await fetchOutcome(b.url, blobPath(), { headers: { range: 'bytes=1000000-1999999' } });
    assert.equal(o.status, 206, describeOutcome(o));
    assert.ok(o.body.equals(layer.bytes.subarray(1_000_000, 2_000_000)), 'the range holds the blob’s bytes');
  });

  test('a multi-range GET (streamed, not sent) is answered with the right parts', async () => {
    await cacheThenEvictOnRead(b);
    const o = await fetchOutcome(b.url, blobPath(), { headers: { range: 'bytes=0-9,2000000-2000009' } });
    assert.equal(o.status, 206, describeOutcome(o));
    const text = o.body.toString('latin1');
    assert.ok(text.includes(layer.bytes.subarray(0, 10).toString('latin1')), 'the first part is there');
    assert.ok(text.includes(layer.bytes.subarray(2_000_000, 2_000_010).toString('latin1')), 'the second part is there');
  });

  test('offline, the blob that was evicted is a 404 BLOB_UNKNOWN, not a 500', async () => {
    const storage = path.join(work, 'offline-storage');
    const online = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], storage });
    const warm = await fetchOutcome(online.url, blobPath());
    await online.stop();
    assert.equal(warm.status, 200, describeOutcome(warm));
    offline = await startBerth({ upstreams: [{ host: 'docker.io', url: up.url }], storage, offline: true });
    evictOnNextRead(offline);
    const o = await fetchOutcome(offline.url, blobPath());
    assert.equal(o.status, 404, describeOutcome(o));
    assert.match(o.body.toString(), /BLOB_UNKNOWN/);
  });
});
