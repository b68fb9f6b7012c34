// berth's container image (issue #13): `npm run image`'s builder (scripts/image/build.ts) writes an oci-archive
// that skopeo reads and podman loads and runs — as user 10001, read-only root filesystem, the storage on a
// volume, its config mounted at /etc/berth/berth.yaml — and that skopeo and containerd pull through. The same
// commit builds the same bytes; the image is under 120 MB; and the image, run as `berth import`, loads itself
// into a berth's storage, which then serves it (an isolated site brings berth in the bundle with its images).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chown, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { createGunzip } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import type { ImageSummary } from '../scripts/image/build.ts';
import { ociLayoutManifests } from './support/berth-cli.ts';
import { buildBundle, ROOT } from './support/bundle.ts';
import { type Containerd, imageTargets, mirrorHostsToml, startContainerd } from './support/containerd.ts';
import { type Seeded, seedStandard } from './support/images.ts';
import { unmountUnder } from './support/mounts.ts';
import { freePort, waitForHttp } from './support/ports.ts';
import { DEAD_PROXY_ENV } from './support/safety.ts';
import { skopeoCopy } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const MB = 1000 * 1000;
const MiB = 1024 * 1024;
const BUILDER = path.join(ROOT, 'scripts/image/build.ts');

/** The builder as `npm run image` runs it (after the bundle is built), into `out`. */
async function buildImage(out: string): Promise<ImageSummary> {
  const { stdout } = await run(process.execPath, [BUILDER, '--out', out, '--json'], { cwd: ROOT, timeout: 180_000, maxBuffer: 16 * MiB });
  return JSON.parse(stdout.trim().split('\n').pop()!) as ImageSummary;
}

/** The commit the image is built from, and its time: what the builder stamps (SOURCE_DATE_EPOCH wins when set). */
async function commitOf(): Promise<{ revision: string; epoch: number }> {
  const [revision, time] = (await run('git', ['log', '-1', '--format=%H %ct'], { cwd: ROOT })).stdout.trim().split(' ');
  const given = process.env.SOURCE_DATE_EPOCH;
  return { revision: revision!, epoch: given ? Number(given) : Number(time) };
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file), h);
  return `sha256:${h.digest('hex')}`;
}

/** Every entry header of a gzipped layer tar, in order; the bodies of the few files named in `keep` (the rest are read past). */
async function readLayer(file: string, keep: string[] = []): Promise<{ headers: Header[]; bodies: Map<string, string> }> {
  const headers: Header[] = [];
  const bodies = new Map<string, string>();
  const extract = tar.extract();
  const consumed = (async () => {
    for await (const entry of extract) {
      headers.push(entry.header);
      if (!keep.includes(entry.header.name)) {
        entry.resume();
        continue;
      }
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      bodies.set(entry.header.name, Buffer.concat(chunks).toString('utf8'));
    }
  })();
  await Promise.all([pipeline(createReadStream(file), createGunzip(), extract), consumed]);
  return { headers, bodies };
}

/** The entry a path leads to inside the image, following its symlinks (absolute and relative) as the kernel would. */
function resolveIn(entries: Header[], target: string, depth = 0): Header | undefined {
  const byName = new Map(entries.map((h) => [h.name.replace(/\/$/, ''), h]));
  const parts = target.split('/').filter(Boolean);
  let at = '';
  for (let i = 0; i < parts.length; i++) {
    const next = at === '' ? parts[i]! : `${at}/${parts[i]}`;
    const h = byName.get(next);
    if (h === undefined) return undefined;
    if (h.type === 'symlink') {
      if (depth > 16) return undefined;
      const link = h.linkname!;
      const base = link.startsWith('/') ? link : path.posix.join('/', at, link);
      return resolveIn(entries, path.posix.join(base, ...parts.slice(i + 1)), depth + 1);
    }
    at = next;
  }
  return byName.get(at);
}

describe('the container image (npm run image)', () => {
  let dir: string;
  let up: Upstream;
  let seed: Seeded;
  let image: ImageSummary;
  let second: Promise<ImageSummary>;
  let layout: string;
  let env: NodeJS.ProcessEnv;
  let containerId: string | undefined;
  let berthHost: string;
  let importOutput: string;
  let containerd: Containerd | undefined;

  const podman = (args: string[], timeout = 180_000) => run('podman', args, { env, timeout, maxBuffer: 16 * MiB });
  /** What podman needs on this machine (see lab/06-podman.sh): runc (crun refuses the hybrid cgroups), ulimits within the hard limits. */
  let runArgs: string[];

  before(async () => {
    dir = await makeTempDir('image');
    await buildBundle();
    const started = Date.now();
    image = await buildImage(path.join(dir, 'image.tar'));
    console.log(`# image built in ${((Date.now() - started) / 1000).toFixed(1)} s (builder: ${image.seconds} s)`);
    // The second build, for the reproducibility test, runs while podman loads and starts the first.
    second = buildImage(path.join(dir, 'again', 'image.tar'));
    second.catch(() => {});
    layout = path.join(dir, 'layout');
    await mkdir(layout);
    await run('tar', ['-xf', image.archive, '-C', layout]);

    up = await startUpstream();
    seed = await seedStandard(up, dir);

    // podman with its own storage, state and temporary files under dir: the host's podman store is not touched.
    await writeFile(path.join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = "${dir}/podman/storage"\nrunroot = "${dir}/podman/run"\n`);
    await writeFile(
      path.join(dir, 'containers.conf'),
      `[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nevents_logfile_path = "${dir}/podman/events.log"\ntmp_dir = "${dir}/podman/tmp"\n`,
    );
    env = { ...process.env, ...DEAD_PROXY_ENV, CONTAINERS_STORAGE_CONF: path.join(dir, 'storage.conf'), CONTAINERS_CONF: path.join(dir, 'containers.conf') };
    const hardNofile = (await run('sh', ['-c', 'ulimit -Hn'])).stdout.trim();
    runArgs = ['--runtime', 'runc', '--ulimit', `nofile=${hardNofile}:${hardNofile}`, '--ulimit', 'nproc=4096:4096'];
    await podman(['load', '-i', image.archive]);

    // The storage volume belongs to the image's user, as a Kubernetes fsGroup or an operator's chown makes it.
    const data = path.join(dir, 'data');
    await mkdir(data);
    await chown(data, 10001, 10001);
    const port = await freePort();
    berthHost = `127.0.0.1:${port}`;
    const config = path.join(dir, 'berth.yaml');
    await writeFile(config, `listen: "${berthHost}"\nstorage:\n  path: /var/lib/berth\nupstreams:\n  - host: docker.io\n    url: ${up.url}\n`);
    const mounts = ['-v', `${data}:/var/lib/berth`, '-v', `${config}:/etc/berth/berth.yaml:ro`];
    // Read-only as Kubernetes' readOnlyRootFilesystem makes it: podman's default tmpfs on /tmp, /run and /var/tmp off too.
    const readOnly = ['--read-only', '--read-only-tmpfs=false'];
    const proxies = Object.entries(DEAD_PROXY_ENV).flatMap(([k, v]) => ['-e', `${k}=${v}`]);

    // The isolated site's first step, done by the image itself: `berth import` of the archive it came in. With
    // the image's own /etc/berth/berth.yaml (no file mounted: its storage must be the volume) and no network at
    // all (that file names the public registries; import contacts none).
    const imported = await podman([
      'run',
      '--rm',
      ...runArgs,
      '--network',
      'none',
      ...readOnly,
      '--user',
      '10001',
      '-v',
      `${data}:/var/lib/berth`,
      '-v',
      `${image.archive}:/bundle/image.tar:ro`,
      image.name,
      'import',
      '/bundle/image.tar',
    ]);
    importOutput = imported.stdout;
    // Then `berth serve`: the image's own Cmd and user (no --user), on the host's network for the loopback upstream.
    const { stdout } = await podman(['run', '-d', ...runArgs, '--network', 'host', ...readOnly, ...proxies, ...mounts, image.name]);
    containerId = stdout.trim();
    await waitForHttp(`http://${berthHost}/v2/`, { timeoutMs: 30_000 });
  });

  after(async () => {
    await containerd?.stop();
    if (containerId) await podman(['rm', '-f', '-t', '5', containerId]).catch(() => {});
    await second?.catch(() => {});
    if (env) await podman(['rmi', '-af']).catch(() => {});
    await up?.stop();
    if (dir) {
      await unmountUnder(dir).catch(() => {});
      await removeTempDir(dir);
    }
  });

  test('the same commit builds the same image: a second build is byte for byte the same archive', async () => {
    const again = await second;
    assert.equal(again.manifestDigest, image.manifestDigest);
    assert.deepEqual(again.layers, image.layers);
    assert.equal(await sha256File(again.archive), await sha256File(image.archive));
  });

  test('a SOURCE_DATE_EPOCH that is not whole seconds stops the build, saying so, and writes nothing', async () => {
    const out = path.join(dir, 'bad-epoch', 'image.tar');
    const r = await run(process.execPath, [BUILDER, '--out', out], { cwd: ROOT, env: { ...process.env, SOURCE_DATE_EPOCH: 'yesterday' } }).then(
      () => assert.fail('the build succeeded'),
      (err: { code?: number; stderr?: string }) => err,
    );
    assert.equal(r.code, 1);
    assert.match(r.stderr ?? '', /SOURCE_DATE_EPOCH must be whole seconds, not "yesterday"/);
    await assert.rejects(readdir(path.dirname(out)), { code: 'ENOENT' });
  });

  test('it is under 120 MB compressed (sizes reported)', () => {
    console.log(
      `# image ${image.name}: ${(image.compressedSize / MB).toFixed(1)} MB compressed (layers ${image.layers.map((l) => (l.size / MB).toFixed(1)).join(' + ')}), ` +
        `${(image.uncompressedSize / MB).toFixed(1)} MB uncompressed, archive ${(image.archiveSize / MB).toFixed(1)} MB`,
    );
    assert.ok(image.compressedSize < 120 * MB, `${image.compressedSize} bytes compressed`);
    assert.ok(image.archiveSize < 120 * MB);
  });

  test('skopeo inspect shows the labels, the user, the entrypoint, the port and the volume', async () => {
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string; devDependencies: Record<string, string> };
    const commit = await commitOf();
    const created = new Date(commit.epoch * 1000).toISOString().replace('.000Z', 'Z');
    const { stdout } = await run('skopeo', ['inspect', '--config', `oci-archive:${image.archive}`], { env });
    const cfg = JSON.parse(stdout) as { architecture: string; os: string; created: string; config: Record<string, unknown> & { Labels: Record<string, string>; Env: string[] } };
    assert.equal(cfg.architecture, process.arch === 'x64' ? 'amd64' : process.arch);
    assert.equal(cfg.os, 'linux');
    assert.equal(cfg.created, created);
    assert.equal(cfg.config.User, '10001:10001');
    assert.deepEqual(cfg.config.Entrypoint, ['/usr/local/bin/node', '/opt/berth/bin/berth.js']);
    assert.deepEqual(cfg.config.Cmd, ['serve', '--config', '/etc/berth/berth.yaml']);
    assert.deepEqual(cfg.config.ExposedPorts, { '5000/tcp': {} });
    assert.deepEqual(cfg.config.Volumes, { '/var/lib/berth': {} });
    assert.equal(cfg.config.WorkingDir, '/var/lib/berth');
    for (const e of ['NODE_ENV=production', 'MALLOC_ARENA_MAX=2', 'MALLOC_MMAP_THRESHOLD_=131072', 'BERTH_CONFIG=/etc/berth/berth.yaml']) assert.ok(cfg.config.Env.includes(e), e);
    assert.equal(cfg.config.Labels['org.opencontainers.image.version'], pkg.version);
    assert.equal(cfg.config.Labels['org.opencontainers.image.revision'], commit.revision);
    assert.equal(cfg.config.Labels['org.opencontainers.image.created'], created);
    assert.match(cfg.config.Labels['dev.berth.image.debian-packages']!, /\blibc6=\S+/);
    // The archive's one image is named so that podman load, ctr import and berth import agree on its name.
    const [entry] = await ociLayoutManifests(layout);
    assert.equal(entry?.digest, image.manifestDigest);
    assert.equal(entry?.annotations?.['org.opencontainers.image.ref.name'], `docker.io/library/berth:${pkg.version}`);
  });

  test('it holds the runtime files only: no shell, no devDependencies, fixed owners, modes and times', async () => {
    const manifest = JSON.parse(await readFile(path.join(layout, 'blobs/sha256', image.manifestDigest.slice(7)), 'utf8')) as { layers: Array<{ digest: string }> };
    const CA = 'etc/ssl/certs/ca-certificates.crt';
    const [base, top] = await Promise.all(manifest.layers.map((l) => readLayer(path.join(layout, 'blobs/sha256', l.digest.slice(7)), [CA])));
    const runtime = base!.headers;
    const app = top!.headers;
    const all = [...runtime, ...app];
    const names = new Set(all.map((h) => h.name));
    const { epoch } = await commitOf();
    for (const h of all) {
      assert.equal(h.mtime?.getTime(), epoch * 1000, `${h.name} mtime`);
      const owner = h.name === 'var/lib/berth/' ? 10001 : 0;
      assert.deepEqual([h.uid, h.gid, h.uname ?? '', h.gname ?? ''], [owner, owner, '', ''], `${h.name} owner`);
    }
    for (const layer of [runtime, app]) {
      const order = layer.map((h) => h.name.replace(/\/$/, ''));
      assert.deepEqual(order, [...order].sort(), 'entries in path order');
    }
    for (const n of ['usr/local/bin/node', 'etc/passwd', 'etc/group', 'etc/nsswitch.conf', 'etc/ssl/certs/ca-certificates.crt', 'tmp/', 'var/lib/berth/']) {
      assert.ok(names.has(n), `${n} is in the image`);
    }
    // Every library the runtime and the addon load (and the loader itself), under the path ldd names, through the image's own symlinks.
    const addon = path.join(ROOT, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    for (const elf of [path.join(ROOT, `node_modules/node-linux-${process.arch}/bin/node`), addon]) {
      const libs = [...(await run('ldd', [elf])).stdout.matchAll(/(\/\S+) \(0x/g)].map((m) => m[1]!);
      assert.ok(libs.length >= 4, `ldd ${elf}: ${libs.join(' ')}`);
      for (const lib of libs) assert.equal(resolveIn(all, lib)?.type, 'file', `${lib} (needed by ${path.basename(elf)}) resolves to a file in the image`);
    }
    assert.equal(runtime.find((h) => h.name === 'tmp/')?.mode, 0o1777);
    assert.deepEqual(
      all.filter((h) => /^(usr\/)?s?bin\//.test(h.name)),
      [],
      'no /bin, /sbin, /usr/bin: no shell, no package manager',
    );
    const appFiles = ['opt/berth/bin/berth.js', 'opt/berth/dist/berth.mjs', 'opt/berth/scripts/runtime.mjs', 'opt/berth/package.json', 'etc/berth/berth.yaml'];
    for (const n of [...appFiles, 'opt/berth/node_modules/better-sqlite3/build/Release/better_sqlite3.node', 'opt/berth/node_modules/koa/package.json']) {
      assert.ok(names.has(n), `${n} is in the image`);
    }
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    for (const d of Object.keys(pkg.dependencies)) assert.ok(names.has(`opt/berth/node_modules/${d}/package.json`), `dependency ${d}`);
    for (const d of Object.keys(pkg.devDependencies)) assert.ok(!names.has(`opt/berth/node_modules/${d}/`), `devDependency ${d} is not in the image`);
    // Exactly the packages `npm ci --omit=dev` installs (the lockfile's non-dev entries), whatever else node_modules holds here.
    const lock = JSON.parse(await readFile(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean; optional?: boolean }> };
    const locked = Object.entries(lock.packages)
      .filter(([k, p]) => k.startsWith('node_modules/') && p.dev !== true && !/node_modules\/node-linux-/.test(k) && (p.optional !== true || names.has(`opt/berth/${k}/package.json`)))
      .map(([k]) => k)
      .sort();
    const packageDir = /^opt\/berth\/((?:node_modules\/(?:@[^/]+\/)?[^/@][^/]*\/)+)package\.json$/;
    const inImage = [...names]
      .map((n) => packageDir.exec(n)?.[1]?.slice(0, -1))
      .filter((d): d is string => d !== undefined)
      .sort();
    assert.deepEqual(inImage, locked);
    assert.ok(![...names].some((n) => n.startsWith('opt/berth/node_modules/better-sqlite3/deps/') || n.startsWith('opt/berth/node_modules/node-linux-')), 'no build leftovers, no second copy of node');
    // The CA bundle is Debian's, not the build machine's: local CAs added on this machine are not trusted in the image.
    const bundle = base!.bodies.get(CA)!;
    const mozilla = (await readdir('/usr/share/ca-certificates/mozilla')).filter((f) => f.endsWith('.crt'));
    assert.equal(bundle.match(/-----BEGIN CERTIFICATE-----/g)?.length, mozilla.length);
    for (const local of await readdir('/usr/local/share/ca-certificates').catch(() => [] as string[])) {
      const pem = (await readFile(path.join('/usr/local/share/ca-certificates', local), 'utf8').catch(() => '')).trim();
      if (pem.includes('BEGIN CERTIFICATE')) assert.ok(!bundle.includes(pem.split('\n')[1]!), `the build machine's ${local} is not in the image`);
    }
  });

  test('podman load names it as the archive does, with the same digest', async () => {
    const { stdout } = await podman(['image', 'inspect', '--format', '{{.Digest}} {{.Id}}', image.name]);
    assert.deepEqual(stdout.trim().split(' '), [image.manifestDigest, image.configDigest.slice(7)]);
  });

  test('it runs as user 10001 with a read-only root filesystem (no tmpfs) and writes only its volume', async () => {
    const pid = (await podman(['inspect', '--format', '{{.State.Pid}}', containerId!])).stdout.trim();
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    assert.match(status, /^Uid:\s+10001\s+10001\s+10001\s+10001$/m);
    assert.match(status, /^Gid:\s+10001\s+10001\s+10001\s+10001$/m);
    const probe = [
      "const fs = require('node:fs');",
      'const tryWrite = (f) => { try { fs.writeFileSync(f, "x"); return "written"; } catch (e) { return e.code; } };',
      "console.log(JSON.stringify({ uid: process.getuid(), root: tryWrite('/probe'), app: tryWrite('/opt/berth/probe'), tmp: tryWrite('/tmp/probe'), volume: tryWrite('/var/lib/berth/probe'), volumeHolds: fs.readdirSync('/var/lib/berth').sort() }));",
    ].join('\n');
    const { stdout } = await podman(['exec', containerId!, '/usr/local/bin/node', '-e', probe]);
    const r = JSON.parse(stdout) as { uid: number; root: string; app: string; tmp: string; volume: string; volumeHolds: string[] };
    assert.equal(r.uid, 10001);
    assert.equal(r.root, 'EROFS');
    assert.equal(r.app, 'EROFS');
    assert.equal(r.tmp, 'EROFS', 'no tmpfs on /tmp: berth needs none');
    assert.equal(r.volume, 'written');
    assert.ok(r.volumeHolds.includes('berth.db'), `berth keeps its index on the volume: ${r.volumeHolds.join(' ')}`);
  });

  test('skopeo copies an image through the containerised berth with the upstream digest', async () => {
    const mark = up.logLineCount();
    const out = path.join(dir, 'skopeo-small');
    await skopeoCopy(`docker://${berthHost}/library/small:1`, `oci:${out}`);
    assert.equal((await ociLayoutManifests(out))[0]?.digest, seed.small.manifestDigest);
    await up.waitForAccess((es) => es.some((e) => e.path === `/v2/library/small/manifests/1`), { since: mark });
  });

  test('ctr images import loads the archive under its name, as on a node without a registry', async () => {
    containerd ??= await startContainerd();
    // Not unpacked here: podman above runs the very same layers; the point is the name and the digest.
    await containerd.ctr(['images', 'import', '--no-unpack', image.archive], { timeoutMs: 180_000 });
    assert.equal((await imageTargets(containerd)).get(image.name), image.manifestDigest);
  });

  test('containerd pulls through the containerised berth (hosts.toml mirror)', async () => {
    containerd ??= await startContainerd();
    await containerd.writeHosts('docker.io', mirrorHostsToml(`http://${berthHost}`));
    await containerd.pull('docker.io/org/multi:1');
    assert.equal((await imageTargets(containerd)).get('docker.io/org/multi:1'), seed.multi.digest);
  });

  test('berth import, run in the image with its own berth.yaml, loads the image onto the volume; berth serve then serves it with the same digest', async () => {
    assert.match(importOutput, new RegExp(`^imported ${image.name.replace(/[.:]/g, '\\$&')} ${image.manifestDigest} \\(pinned\\)$`, 'm'));
    const mark = up.logLineCount();
    const out = path.join(dir, 'skopeo-berth');
    await skopeoCopy(`docker://${berthHost}/library/berth:${image.name.split(':').pop()}`, `oci:${out}`, { timeoutMs: 180_000 });
    assert.equal((await ociLayoutManifests(out))[0]?.digest, image.manifestDigest);
    for (const l of image.layers) assert.equal(await sha256File(path.join(out, 'blobs/sha256', l.digest.slice(7))), l.digest);
    // Served from the import: the upstream was never asked for it.
    assert.deepEqual(
      up.accessLogSince(mark).filter((e) => e.path.includes('/berth/')),
      [],
    );
  });
});
