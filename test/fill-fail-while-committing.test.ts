// A fill's commit can take long: an S3 upload, and on shared storage the wait for the owner replica's own
// commit (cluster.ts ownerCommitted, up to 30 s), well past the 10 s abandon grace. A fill failed while its
// commit is in flight (the abandon timer, a lazy fetch's wrong bytes, shutdown) left the fill table and let
// a new fill of the same (upstream, digest) open the same ingest path, which the old commit then moved
// away (its rename into the store): the new fill's commit failed with ENOENT. Fills as a unit, real files.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, rename } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { Digest } from '../src/oci/digest.ts';
import type { Fill } from '../src/registry/fill/fill.ts';
import type { FillOptions } from '../src/registry/fill/fill-options.ts';
import { Fills } from '../src/registry/fill/fills.ts';
import { wholeBlobSource as source } from './support/fill-source.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

let work: string;
before(async () => {
  work = await makeTempDir('fill-fail-while-committing');
});
after(async () => {
  if (work) await removeTempDir(work);
});

const bytes = Buffer.alloc(1024 * 1024, 5);
const d = `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;

function options(name: string, commit: FillOptions['commit'], abandonGraceMs = 60_000): FillOptions {
  return {
    dataFile: path.join(work, `${name}.data`),
    metaFile: path.join(work, `${name}.json`),
    retries: { attempts: 0, backoff: 1 },
    abandonAfterMs: 60_000,
    abandonGraceMs,
    commit,
    readCommitted: () => Readable.from([]),
    log: () => {},
  };
}

/** A commit that renames the file into `to` once `gate` opens; `started` resolves when it was called. */
function slowCommit(to: string) {
  const started = Promise.withResolvers<void>();
  const gate = Promise.withResolvers<void>();
  const commit: FillOptions['commit'] = async (file) => {
    started.resolve();
    await gate.promise;
    await rename(file, to);
  };
  return { commit, started: started.promise, open: () => gate.resolve() };
}

describe('a fill that fails or is left while it commits', () => {
  test('is not abandoned: nobody reads it, but its bytes are all in and its commit ends it', async () => {
    const fills = new Fills({ started: () => {}, ended: () => {} });
    const to = path.join(work, 'abandon-committed');
    const slow = slowCommit(to);
    const { fill } = await fills.acquire('up', d, source(bytes), options('abandon', slow.commit, 20));
    fill.start();
    await slow.started;
    // Its last reader leaves while the commit waits: the grace runs out before the commit ends.
    let abandoned = false;
    fill.once('failed', () => {
      abandoned = true;
    });
    fill.unused();
    // Ten times the grace: an abandon timer armed now has fired by then (a timer, not an event, is what is tested).
    await new Promise<void>((resolve) => setTimeout(resolve, 200));
    slow.open();
    await fill.whenDone();
    assert.equal(abandoned, false);
    assert.deepEqual(await readFile(to), bytes);
  });

  test('a new fill of the same blob opens the ingest path only once the old commit is done with it', async () => {
    const fills = new Fills({ started: () => {}, ended: () => {} });
    const slow = slowCommit(path.join(work, 'first-committed'));
    const { fill: first } = await fills.acquire('up', d, source(bytes), options('same', slow.commit));
    first.start();
    await slow.started;
    const second = new Promise<Fill>((resolve, reject) => {
      first.once('failed', () => {
        fills
          .acquire(
            'up',
            d,
            source(bytes),
            options('same', (file) => rename(file, path.join(work, 'second-committed'))),
          )
          .then(({ fill }) => resolve(fill), reject);
      });
    });
    // As at shutdown, or a lazy fetch whose body was wrong: failed while the commit is in flight.
    first.fail(new Error('failed while committing'));
    // The old commit goes on (its bytes verified) and moves the file away: here once the new fill has
    // opened its file, which takes a few local file operations; a new fill that rightly waits for the old
    // commit never opens before it, so the commit goes on after 100 ms instead.
    await Promise.race([second, new Promise<void>((resolve) => setTimeout(resolve, 100))]);
    slow.open();
    const next = await second;
    next.start();
    await next.whenDone();
    assert.deepEqual(await readFile(path.join(work, 'second-committed')), bytes);
    next.unused();
  });
});
