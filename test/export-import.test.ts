// Isolated sites (issue #4), the two-step copy: a connected berth exports images to an OCI archive, a berth
// that can reach no registry imports it, and containerd, dockerd and skopeo then pull those images from the
// isolated berth with the digests they have upstream. Import verifies every blob, is idempotent, reads
// skopeo's layouts too, rejects a damaged archive and keeps what an interrupted one completed.
import assert from 'node:assert/strict';
import { copyFile, truncate } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type InProcessBerth, startBerth, type UpstreamSpec } from './support/berth.ts';
import {
  blobFiles,
  describeRun,
  flipByte,
  lsJson,
  ociLayoutManifests,
  readTarEntry,
  runBerth,
  storedDigests,
  type TarFileEntry,
  tarFileEntries,
  unverifiedBlobFiles,
  writeCliConfig,
} from './support/berth-cli.ts';
import { type Containerd, imageTargets, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { type Dockerd, startDockerd } from './support/dockerd.ts';
import { blobsOf, type Seeded, seedStandard } from './support/images.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const REFS = ['docker.io/lab/small:1', 'quay.io/org/multi:1', 'docker.io/library/small:1'];

const isBlobEntry = (e: TarFileEntry): boolean => /^(\.\/)?blobs\/sha256\/[a-f0-9]{64}$/.test(e.name);
const digestOfEntry = (e: TarFileEntry): string => `sha256:${e.name.slice(e.name.lastIndexOf('/') + 1)}`;

describe('export on the connected side, import on the isolated side', () => {
  let up: Upstream;
  let seeded: Seeded;
  let seedDir: string;
  let work: string;
  let connectedConfig: string;
  let bundle: string;
  /** Upstreams that point at a port nothing listens on. */
  const deadUpstreams: UpstreamSpec[] = [
    { host: 'docker.io', url: `http://${DEAD_ENDPOINT}` },
    { host: 'quay.io', url: `http://${DEAD_ENDPOINT}` },
  ];
  let isolatedStorage: string;
  let isolatedConfig: string;
  let containerd: Containerd;

  /** A fresh isolated site: storage and an offline config whose upstreams are unreachable. */
  async function isolatedSite(name: string): Promise<{ storage: string; config: string }> {
    const storage = path.join(work, name);
    const config = await writeCliConfig(path.join(work, `${name}.yaml`), { storage, upstreams: deadUpstreams, offline: true });
    return { storage, config };
  }

  async function importInto(config: string, source: string): Promise<{ code: number | null; stdout: string; stderr: string; args: string[] }> {
    const args = ['import', source, '--config', config];
    return { ...(await runBerth(args)), args };
  }

  before(async () => {
    seedDir = await makeTempDir('seed-export');
    work = await makeTempDir('export-work');
    bundle = path.join(work, 'bundle.tar');
    const [u, c] = await Promise.all([startUpstream(), startContainerd()]);
    up = u;
    containerd = c;
    seeded = await seedStandard(up, seedDir);
    connectedConfig = await writeCliConfig(path.join(work, 'connected.yaml'), {
      storage: path.join(work, 'connected'),
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: 'quay.io', url: up.url },
      ],
    });
    const site = await isolatedSite('isolated');
    isolatedStorage = site.storage;
    isolatedConfig = site.config;
  });

  after(async () => {
    await containerd?.stop();
    await up?.stop();
    await removeTempDir(seedDir);
    await removeTempDir(work);
  });

  test('export fetches what is missing and writes an OCI archive that skopeo reads by full reference', async () => {
    const args = ['export', ...REFS, '-o', bundle, '--config', connectedConfig];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    assert.match(r.stdout, /3 images/, describeRun(args, r));

    const entries = await tarFileEntries(bundle);
    const indexEntry = entries.find((e) => e.name === 'index.json' || e.name === './index.json');
    assert.ok(indexEntry, `no index.json in the archive: ${entries.map((e) => e.name).join(', ')}`);
    const index = JSON.parse((await readTarEntry(bundle, indexEntry)).toString('utf8')) as {
      manifests: Array<{ digest: string; annotations?: Record<string, string> }>;
    };
    const named = new Map(index.manifests.map((m) => [m.annotations?.['org.opencontainers.image.ref.name'], m.digest]));
    assert.equal(named.get('docker.io/lab/small:1'), seeded.small.manifestDigest);
    assert.equal(named.get('docker.io/library/small:1'), seeded.small.manifestDigest);
    assert.equal(named.get('quay.io/org/multi:1'), seeded.multi.digest);

    const small = path.join(work, 'from-archive-small');
    await skopeoCopy(`oci-archive:${bundle}:docker.io/lab/small:1`, `oci:${small}`);
    assert.equal((await ociLayoutManifests(small))[0]?.digest, seeded.small.manifestDigest);
    const multi = path.join(work, 'from-archive-multi');
    await skopeoCopy(`oci-archive:${bundle}:quay.io/org/multi:1`, `oci:${multi}`, { all: true });
    assert.equal((await ociLayoutManifests(multi))[0]?.digest, seeded.multi.digest);
  });

  test('a berth that can reach no registry imports the archive, every blob verified', async () => {
    const r = await importInto(isolatedConfig, bundle);
    assert.equal(r.code, 0, describeRun(r.args, r));
    for (const ref of REFS) assert.match(r.stdout, new RegExp(`imported ${ref} sha256:`), describeRun(r.args, r));
    assert.deepEqual(await unverifiedBlobFiles(isolatedStorage), []);
    const rows = await lsJson(isolatedConfig);
    assert.deepEqual(rows.map((x) => x.reference).sort(), [...REFS].sort());
    for (const row of rows) assert.equal(row.complete, true, `${row.reference} is not complete after import`);
    assert.equal(rows.find((x) => x.reference === 'quay.io/org/multi:1')?.digest, seeded.multi.digest);
  });

  test('importing the same archive again adds no blob', async () => {
    const before = (await blobFiles(isolatedStorage)).map((f) => f.digest).sort();
    const r = await importInto(isolatedConfig, bundle);
    assert.equal(r.code, 0, describeRun(r.args, r));
    assert.match(r.stderr, /\b0 of \d+ blobs new/, describeRun(r.args, r));
    assert.deepEqual((await blobFiles(isolatedStorage)).map((f) => f.digest).sort(), before);
  });

  describe('the isolated berth serves the imported images', () => {
    let isolated: InProcessBerth;
    let dockerd: Dockerd | undefined;
    let dockerdError: Error | undefined;

    before(async () => {
      isolated = await startBerth({ upstreams: deadUpstreams, storage: isolatedStorage, offline: true });
      await containerd.writeHosts('docker.io', mirrorHostsToml(isolated.url));
      await containerd.writeHosts('quay.io', mirrorHostsToml(isolated.url));
      dockerd = await startDockerd({ mirror: isolated.url }).catch((err: Error) => {
        dockerdError = err;
        return undefined;
      });
    });

    after(async () => {
      await dockerd?.stop();
      await isolated?.stop();
    });

    test('containerd pulls them through hosts.toml (ns routing) with the upstream digests', async () => {
      await containerd.pull('docker.io/lab/small:1');
      await containerd.pull('quay.io/org/multi:1');
      const targets = await imageTargets(containerd);
      assert.equal(targets.get('docker.io/lab/small:1'), seeded.small.manifestDigest);
      assert.equal(targets.get('quay.io/org/multi:1'), seeded.multi.digest);
    });

    test('dockerd with --registry-mirror pulls small:1 with the upstream digest', async () => {
      assert.ok(dockerd, `dockerd could not start on this machine: ${dockerdError?.message}`);
      await dockerd.docker(['pull', 'small:1'], { timeoutMs: 120_000 });
      const { stdout } = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}} {{.Id}}', 'small:1']);
      const [repoDigests, id] = stdout.trim().split(' ');
      assert.deepEqual(JSON.parse(repoDigests!), [`small@${seeded.small.manifestDigest}`]);
      assert.equal(id, seeded.small.config.digest);
    });

    test('skopeo pulls by host prefix (127.0.0.1:PORT/quay.io/org/multi:1)', async () => {
      const dir = path.join(work, 'isolated-quay');
      await skopeoCopy(`docker://${isolated.host}/quay.io/org/multi:1`, `oci:${dir}`, { all: true });
      assert.equal((await ociLayoutManifests(dir))[0]?.digest, seeded.multi.digest);
    });
  });

  test('imports an OCI layout directory written by skopeo copy … oci:DIR:docker.io/lab/small:1', async () => {
    const layout = path.join(work, 'skopeo-layout');
    await skopeoCopy(`docker://${up.host}/lab/small:1`, `oci:${layout}:docker.io/lab/small:1`);
    const site = await isolatedSite('from-dir');
    const r = await importInto(site.config, layout);
    assert.equal(r.code, 0, describeRun(r.args, r));
    const rows = await lsJson(site.config);
    assert.deepEqual(
      rows.map((x) => [x.reference, x.digest, x.complete]),
      [['docker.io/lab/small:1', seeded.small.manifestDigest, true]],
    );
    const stored = await storedDigests(site.storage);
    for (const b of blobsOf(seeded.small)) assert.ok(stored.has(b.digest), `blob ${b.digest} was not imported`);
    assert.deepEqual(await unverifiedBlobFiles(site.storage), []);
  });

  test('a damaged archive is rejected and nothing unverified is left under blobs/', async () => {
    const damaged = path.join(work, 'damaged.tar');
    await copyFile(bundle, damaged);
    const victim = (await tarFileEntries(damaged)).filter(isBlobEntry).sort((a, b) => b.size - a.size)[0]!;
    await flipByte(damaged, victim.dataOffset + Math.floor(victim.size / 2));
    const site = await isolatedSite('from-damaged');
    const r = await importInto(site.config, damaged);
    assert.notEqual(r.code, 0, describeRun(r.args, r));
    assert.match(r.stdout, /FAILED .*damaged/, describeRun(r.args, r));
    assert.deepEqual(await unverifiedBlobFiles(site.storage), []);
    assert.ok(!(await storedDigests(site.storage)).has(digestOfEntry(victim)), 'the damaged blob was stored');
    for (const row of await lsJson(site.config)) assert.equal(row.complete, false, `${row.reference} is listed as complete without its damaged blob`);
  });

  test('an interrupted import keeps the blobs it completed, and a second import adds only the rest', async () => {
    const cut = path.join(work, 'interrupted.tar');
    await copyFile(bundle, cut);
    const entries = (await tarFileEntries(bundle)).filter(isBlobEntry);
    let half = 0;
    for (const e of await tarFileEntries(bundle)) half = Math.max(half, e.dataOffset + e.size);
    half = Math.floor(half / 2);
    await truncate(cut, half);
    const completed = entries.filter((e) => e.dataOffset + e.size <= half);
    const lost = entries.filter((e) => e.dataOffset + e.size > half);
    assert.ok(completed.length > 0 && lost.length > 0, 'test archive: the cut should fall between blobs');

    const site = await isolatedSite('from-interrupted');
    const first = await importInto(site.config, cut);
    assert.notEqual(first.code, 0, `an import of a truncated archive reported success\n${describeRun(first.args, first)}`);
    assert.deepEqual(await unverifiedBlobFiles(site.storage), []);
    const stored = await storedDigests(site.storage);
    for (const e of completed) assert.ok(stored.has(digestOfEntry(e)), `${e.name}, complete before the cut, was not kept`);
    for (const e of lost) assert.ok(!stored.has(digestOfEntry(e)), `${e.name}, cut short, is under blobs/`);

    const second = await importInto(site.config, bundle);
    assert.equal(second.code, 0, describeRun(second.args, second));
    assert.match(second.stderr, new RegExp(`\\b${lost.length} of ${entries.length} blobs new`), describeRun(second.args, second));
    const rows = await lsJson(site.config);
    assert.deepEqual(rows.map((x) => x.reference).sort(), [...REFS].sort());
    for (const row of rows) assert.equal(row.complete, true, `${row.reference} is not complete after the second import`);
  });
});
