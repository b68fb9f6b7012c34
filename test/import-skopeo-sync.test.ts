// The two-step copy with what operators may already use on the connected side: `skopeo sync --dest dir`.
// An isolated berth imports those directories and serves the images by their names. Issue #4.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { describeRun, runBerth, unverifiedBlobFiles, writeCliConfig } from './support/berth-cli.ts';
import { digestOf, type Seeded, seedStandard } from './support/images.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { skopeoInspectRaw } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);

describe('importing skopeo sync directories into an isolated berth', () => {
  let up: Upstream;
  let seed: Seeded;
  let dir: string;
  let berth: InProcessBerth | undefined;

  before(async () => {
    dir = await makeTempDir('sync');
    up = await startUpstream();
    seed = await seedStandard(up, dir);
    for (const ref of ['lab/small:1', 'lab/multi:1']) {
      await run('skopeo', ['sync', '--src', 'docker', '--dest', 'dir', '--scoped', '--all', '--src-tls-verify=false', `${up.host}/${ref}`, path.join(dir, 'sync')], { timeout: 60_000 });
    }
  });

  after(async () => {
    await berth?.stop();
    await up?.stop();
    await removeTempDir(dir);
  });

  test('berth import reads the directories, verifies every blob, and serves the images offline by name', async () => {
    const storage = path.join(dir, 'storage');
    // The registry is named as the sync scoped it; berth can never reach it (a dead port, and offline).
    const upstreams = [{ host: up.host, url: `http://${DEAD_ENDPOINT}` }];
    const config = await writeCliConfig(path.join(dir, 'berth.yaml'), { storage, upstreams, offline: true });
    const args = ['import', '--config', config, path.join(dir, 'sync')];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    assert.match(r.stdout, new RegExp(`imported ${up.host}/lab/small:1 ${seed.small.manifestDigest}`));
    assert.match(r.stdout, new RegExp(`imported ${up.host}/lab/multi:1 ${seed.multi.digest}`));
    assert.deepEqual(await unverifiedBlobFiles(storage), []);

    berth = await startBerth({ upstreams, storage, offline: true, defaultUpstream: up.host });
    const small = await skopeoInspectRaw(`docker://${berth.host}/lab/small:1`, { tlsVerify: false });
    assert.equal(digestOf(small), seed.small.manifestDigest);
    const multi = await skopeoInspectRaw(`docker://${berth.host}/lab/multi:1`, { tlsVerify: false });
    assert.equal(digestOf(multi), seed.multi.digest);
    await run('skopeo', ['copy', '--all', '--src-tls-verify=false', `docker://${berth.host}/lab/multi:1`, `oci:${path.join(dir, 'pulled')}:multi`], { timeout: 60_000 });
  });
});
