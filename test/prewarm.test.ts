// Isolated sites (issue #4), the connected day: `berth prewarm` fetches images ahead of need from the
// image lists operators already have, pins them, fetches only the platforms asked for, names each
// failure, and can drive a running berth (`--server`) so that later pulls cost the upstream nothing.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ChildBerth, startBerthProcess, type UpstreamSpec } from './support/berth.ts';
import { describeRun, lsJson, ociLayoutManifests, runBerth, storedDigests, unverifiedBlobFiles, writeCliConfig } from './support/berth-cli.ts';
import { blobsOf, type Seeded, seedStandard } from './support/images.ts';
import { upstreamTrafficSince } from './support/links.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { type AccessEntry, startUpstream, type Upstream } from './support/upstream.ts';

const blobGets = (entries: AccessEntry[]): string[] => entries.filter((e) => e.method === 'GET' && /\/blobs\/sha256:/.test(e.path)).map((e) => e.path.split('?')[0]!);

/** The "<ISO time> <message>" lines the non-TTY progress writes (berth's own JSON log lines aside). */
function progressLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
}

describe('berth prewarm', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let work: string;
  let upstreams: UpstreamSpec[];
  let server: ChildBerth | undefined;

  /** A fresh storage directory and its config file. */
  async function freshSite(name: string): Promise<{ storage: string; config: string }> {
    const storage = path.join(work, name);
    const config = await writeCliConfig(path.join(work, `${name}.yaml`), { storage, upstreams });
    return { storage, config };
  }

  before(async () => {
    seedDir = await makeTempDir('seed-prewarm');
    work = await makeTempDir('prewarm-work');
    up = await startUpstream();
    seeded = await seedStandard(up, seedDir);
    upstreams = [
      { host: 'docker.io', url: up.url },
      { host: 'quay.io', url: up.url },
    ];
  });

  after(async () => {
    await server?.stop();
    await up?.stop();
    await removeTempDir(seedDir);
    await removeTempDir(work);
  });

  test('prewarm -f reads kubeadm, helm and commented image lists, fetches every image and pins it', async () => {
    const site = await freshSite('from-file');
    const list = path.join(work, 'images.txt');
    await writeFile(
      list,
      [
        '# kubeadm config images list',
        'docker.io/lab/small:1',
        '',
        '# helm template … | grep image:',
        '        image: "quay.io/org/multi:1"',
        "      - image: 'docker.io/library/small:1'",
        '  image: docker.io/lab/small:v2s2   # pinned for the v2s2 test',
        '   ',
        '# docker.io/lab/big:1  (commented out: not fetched)',
        'docker.io/lab/small:1',
        '',
      ].join('\n'),
    );
    const mark = up.logLineCount();
    const args = ['prewarm', '-f', list, '--config', site.config];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    assert.match(r.stdout, /prewarmed 4 of 4 images/, describeRun(args, r));

    const expected = ['docker.io/lab/small:1', 'docker.io/library/small:1', 'docker.io/lab/small:v2s2', 'quay.io/org/multi:1'];
    const rows = await lsJson(site.config);
    assert.deepEqual(rows.map((row) => row.reference).sort(), [...expected].sort());
    for (const row of rows) assert.equal(row.pinned, true, `${row.reference} is not pinned`);
    assert.equal(rows.find((row) => row.reference === 'quay.io/org/multi:1')?.digest, seeded.multi.digest);
    assert.equal(rows.find((row) => row.reference === 'docker.io/lab/small:v2s2')?.digest, seeded.v2s2.manifestDigest);

    // Every blob of every image is on disk, verified; nothing of the commented-out image was asked for.
    const stored = await storedDigests(site.storage);
    for (const b of [...blobsOf(seeded.small), ...blobsOf(seeded.v2s2), ...blobsOf(seeded.multi)]) {
      assert.ok(stored.has(b.digest), `blob ${b.digest} was not prewarmed`);
    }
    assert.deepEqual(await unverifiedBlobFiles(site.storage), []);
    const traffic = await upstreamTrafficSince(up, mark);
    assert.ok(!traffic.some((e) => e.path.includes('/lab/big/')), 'the commented-out image was fetched');
  });

  test('--platform linux/arm64 on an index fetches only that platform', async () => {
    const site = await freshSite('arm64-only');
    const arm64 = seeded.multi.images.find((i) => i.platform.architecture === 'arm64')!;
    const amd64 = seeded.multi.images.find((i) => i.platform.architecture === 'amd64')!;
    const mark = up.logLineCount();
    const args = ['prewarm', 'docker.io/lab/multi:1', '--platform', 'linux/arm64', '--config', site.config];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));

    const traffic = await upstreamTrafficSince(up, mark);
    const fetched = new Set(blobGets(traffic).map((p) => p.slice(p.lastIndexOf('/') + 1)));
    for (const b of blobsOf(arm64)) assert.ok(fetched.has(b.digest), `arm64 blob ${b.digest} was not fetched`);
    const amd64Only = blobsOf(amd64).filter((b) => !blobsOf(arm64).some((a) => a.digest === b.digest));
    assert.ok(amd64Only.length > 0, 'test images: amd64 should have blobs of its own');
    for (const b of amd64Only) assert.ok(!fetched.has(b.digest), `amd64 blob ${b.digest} was fetched`);
    assert.ok(!traffic.some((e) => e.path.includes(amd64.manifestDigest)), 'the amd64 manifest was fetched');

    const stored = await storedDigests(site.storage);
    for (const b of amd64Only) assert.ok(!stored.has(b.digest), `amd64 blob ${b.digest} is in the cache`);
    const row = (await lsJson(site.config)).find((x) => x.reference === 'docker.io/lab/multi:1');
    assert.equal(row?.digest, seeded.multi.digest);
    assert.equal(row?.pinned, true);
  });

  test('a failed reference makes the exit code non-zero, is named, and the others are still prewarmed', async () => {
    const site = await freshSite('with-failures');
    const bad = ['docker.io/lab/no-such-image:1', 'docker.io/lab/small:no-such-tag', 'ghcr.io/not/configured:1', 'docker.io/Lab/UPPER:1'];
    const args = ['prewarm', 'docker.io/lab/small:1', ...bad, '--config', site.config];
    const mark = up.logLineCount();
    const r = await runBerth(args);
    assert.equal(r.code, 1, describeRun(args, r));
    assert.match(r.stdout, /prewarmed 1 of 5 images/, describeRun(args, r));
    for (const ref of bad) {
      assert.ok(
        r.stdout.split('\n').some((l) => l.startsWith(`FAILED ${ref}: `)),
        `no FAILED line names ${ref}:\n${r.stdout}`,
      );
    }
    assert.ok(!r.stdout.includes('FAILED docker.io/lab/small:1'), 'the good reference is reported as failed');
    const rows = await lsJson(site.config);
    assert.deepEqual(
      rows.map((x) => [x.reference, x.pinned]),
      [['docker.io/lab/small:1', true]],
    );
    // An unconfigured registry is never contacted (nor is anything else but the one upstream).
    const traffic = await upstreamTrafficSince(up, mark);
    assert.ok(!traffic.some((e) => e.path.includes('/not/configured/')), 'berth asked its upstream for the ghcr.io image');
  });

  test('without a terminal, progress is plain timestamped log lines', async () => {
    const site = await freshSite('plain-output');
    const args = ['prewarm', 'docker.io/lab/small:1', 'quay.io/org/multi:1', '--config', site.config];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    const all = r.stdout + r.stderr;
    assert.ok(!all.includes('\x1b['), 'ANSI escape sequences in non-TTY output');
    assert.ok(!all.includes('\r'), 'carriage returns (redrawn bars) in non-TTY output');
    const lines = progressLines(r.stderr);
    for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z \S/, `not a log line: ${JSON.stringify(l)}`);
    for (const ref of ['docker.io/lab/small:1', 'quay.io/org/multi:1']) {
      assert.ok(
        lines.some((l) => l.includes(`${ref}: done`)),
        `no "done" line for ${ref}:\n${r.stderr}`,
      );
    }
  });

  test('prewarm --server makes a running berth fetch and pin, and later pulls cost the upstream no blob', async () => {
    server = await startBerthProcess({ upstreams });
    const mark = up.logLineCount();
    const args = ['prewarm', '--server', server.url, 'docker.io/lab/small:1', 'quay.io/org/multi:1'];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    assert.match(r.stdout, /prewarmed 2 of 2 images/);
    const prewarmTraffic = await upstreamTrafficSince(up, mark);
    assert.ok(blobGets(prewarmTraffic).length >= blobsOf(seeded.small).length, 'the server did not fetch the blobs');

    const pullMark = up.logLineCount();
    const small = path.join(work, 'pulled-small');
    const multi = path.join(work, 'pulled-multi');
    await skopeoCopy(`docker://${server.host}/lab/small:1`, `oci:${small}`);
    await skopeoCopy(`docker://${server.host}/quay.io/org/multi:1`, `oci:${multi}`, { all: true });
    assert.equal((await ociLayoutManifests(small))[0]?.digest, seeded.small.manifestDigest);
    assert.equal((await ociLayoutManifests(multi))[0]?.digest, seeded.multi.digest);
    const pullTraffic = await upstreamTrafficSince(up, pullMark);
    assert.deepEqual(blobGets(pullTraffic), [], 'pulls after prewarm still fetched blobs from the upstream');

    // The server pinned what it prewarmed (read from its storage while it runs).
    const rows = await lsJson(server.configFile);
    for (const ref of ['docker.io/lab/small:1', 'quay.io/org/multi:1']) {
      assert.equal(rows.find((x) => x.reference === ref)?.pinned, true, `${ref} is not pinned by the server's prewarm`);
    }
  });
});
