// Found by red-teaming the issue #8 fixes: each case failed before its fix.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { type Upstream, startUpstream } from './support/upstream.ts';
import { type Image, buildImage, pushImage } from './support/images.ts';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { httpRequest, waitUntil } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

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
  const ok = await waitUntil('a new fill for the same client', async () => {
    const res = await httpRequest(b.url, `/v2/lab/rt1/blobs/${c.digest}`);
    return res.status === 200 ? res : undefined;
  }, 5000, 100);
  assert.equal(ok.body.length, c.size);
  await waitUntil('ingest/ emptied', () => readdirSync(`${b.storage}/ingest`).length === 0, 5000);
  assert.equal(b.berth.ctx.fills.active, 0);
});
