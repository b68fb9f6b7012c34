// Clients that give up mid-download (issue #8 item 1): a cached layer, rounds of 100 parallel GETs whose
// sockets are reset (RST) as soon as body bytes arrive. A write that fails while BlobStore.send waits
// for its next disk read must end that one response, never the process. Permanent regression case: the
// "client-abort storm". berth runs as its own process, so a crash shows as an exit, and its open file
// descriptors are counted from /proc.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { type BerthChild, startBerthChild } from './support/berth-child.ts';
import { hashedGet } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const ROUNDS = 30;
const PARALLEL = 100;

/** GETs `path` on a fresh connection and resets the socket (RST) once the first body bytes are in. */
function abortMidBody(port: number, path: string): Promise<'reset' | 'no-body'> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let seen = 0;
    let headersEnd = -1;
    let head = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no body within 10 s for ${path}`));
    }, 10_000);
    s.on('connect', () => s.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`));
    s.on('data', (chunk: Buffer) => {
      if (headersEnd < 0) {
        head += chunk.toString('latin1');
        headersEnd = head.indexOf('\r\n\r\n');
        if (headersEnd < 0) return;
        if (!head.startsWith('HTTP/1.1 200')) {
          clearTimeout(timer);
          s.destroy();
          reject(new Error(`expected a 200, got ${head.split('\r\n')[0]}`));
          return;
        }
        seen = head.length - headersEnd - 4;
      } else seen += chunk.length;
      if (seen > 0) {
        clearTimeout(timer);
        s.resetAndDestroy();
        resolve('reset');
      }
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve('no-body');
    });
  });
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

describe('a storm of clients that reset their connections mid-body', () => {
  let up: Upstream;
  let work: string;
  let img: Image;
  let b: BerthChild;

  before(async () => {
    work = await makeTempDir('client-aborts');
    up = await startUpstream();
    img = await buildImage({ format: 'oci', layers: [{ randomBytes: 1_000_000, dir: work }] });
    await pushImage(up, 'lab/aborts', '1', img);
    b = await startBerthChild({ upstreams: [{ host: 'docker.io', url: up.url }] });
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test(`${ROUNDS} rounds of ${PARALLEL} aborted GETs of a cached 1 MB layer: berth keeps serving, fds come back`, async () => {
    const layer = img.layers[0]!;
    const path = `/v2/lab/aborts/blobs/${layer.digest}`;
    const first = await hashedGet(`${b.url}${path}`);
    assert.equal(first.status, 200);
    assert.equal(first.digest, layer.digest, 'the fill serves the right bytes');
    const fdsBefore = openFds(b.process.pid);
    let resets = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const outcomes = await Promise.all(Array.from({ length: PARALLEL }, () => abortMidBody(b.port, path)));
      resets += outcomes.filter((o) => o === 'reset').length;
      assert.ok(b.process.running, `berth exited after ${resets} aborted downloads:\n${b.log().slice(-2000)}`);
    }
    assert.ok(resets >= ROUNDS * PARALLEL * 0.9, `most GETs were reset mid-body (${resets})`);
    const again = await hashedGet(`${b.url}${path}`);
    assert.ok(b.process.running, `berth exited:\n${b.log().slice(-2000)}`);
    assert.equal(again.status, 200);
    assert.equal(again.digest, layer.digest, 'the cached layer is still served whole and right');
    assert.doesNotMatch(b.log(), /uncaught|unhandled/i);
    await waitUntil(`berth's open fds to come back near ${fdsBefore}`, () => openFds(b.process.pid) <= fdsBefore + 5, 10_000, 100);
  });
});
