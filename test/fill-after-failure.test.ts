// A fill that fails with wrong bytes removes its ingest file; a new fill of the same (upstream, digest),
// started the moment the first one left the table, uses the same path. The new fill must not open that
// path until the old one's removal is done, or the removal unlinks the new fill's file under it and its
// commit fails with ENOENT (the chaos test's one 500). Fills as a unit, on real files.
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
  work = await makeTempDir('fill-after-failure');
});
after(async () => {
  if (work) await removeTempDir(work);
});

describe('a fill of the same blob right after one that failed', () => {
  test('opens its ingest file only after the failed fill removed its own; it commits the right bytes', async () => {
    const fills = new Fills({ started: () => {}, ended: () => {} });
    const good = Buffer.alloc(1024 * 1024, 7);
    const wrong = Buffer.from(good);
    wrong.writeUInt8(wrong.readUInt8(500_000) ^ 0xff, 500_000);
    const d = `sha256:${createHash('sha256').update(good).digest('hex')}` as Digest;
    const errors: string[] = [];
    for (let i = 0; i < 25; i++) {
      const committedAs = path.join(work, `committed-${i}`);
      const options = (commit: FillOptions['commit']): FillOptions => ({
        dataFile: path.join(work, 'ingest.data'),
        metaFile: path.join(work, 'ingest.json'),
        retries: { attempts: 0, backoff: 1 },
        abandonAfterMs: 60_000,
        abandonGraceMs: 60_000,
        commit,
        readCommitted: () => Readable.from([]),
        log: () => {},
      });
      const first = (
        await fills.acquire(
          'up',
          d,
          source(wrong),
          options(async () => {}),
        )
      ).fill;
      const second = new Promise<Fill>((resolve, reject) => {
        // At once, from the failure event: the first fill has left the table, its removal has not run yet.
        first.once('failed', () => {
          fills
            .acquire(
              'up',
              d,
              source(good),
              options((file) => rename(file, committedAs)),
            )
            .then(({ fill, joined }) => {
              assert.equal(joined, false, 'the failed fill is not joined');
              resolve(fill);
            }, reject);
        });
      });
      first.start();
      await assert.rejects(first.whenDone(), /hash to/);
      const next = await second;
      next.start();
      await next.whenDone().catch((err: Error) => errors.push(`round ${i}: ${err.message}`));
      if (errors.length === 0) assert.deepEqual(await readFile(committedAs), good);
      next.unused();
    }
    assert.deepEqual(errors, []);
  });
});
