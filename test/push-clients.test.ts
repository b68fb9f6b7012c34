// Issue #10 "Proof", the real clients: skopeo copy and skopeo sync (docker → docker, and the two-step copy
// through a directory) into berth's local prefix `site/`, pulled back with skopeo, containerd's ctr and
// podman with equal digests; podman push. berth has client auth (htpasswd: a writer and a reader, anonymous
// pulls allowed), so every push also proves that these clients log in after berth's challenge, and that a
// reader is refused. Everything stays on loopback: the upstream is a local docker-registry, containerd's
// hosts.toml names berth itself, podman and skopeo run with proxies pointing at a dead port.
// The tests run in order and build on each other: the first push (site/small:1) is what the clients pull later.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type Containerd, imageTargets, startContainerd } from './support/containerd.ts';
import { type Dockerd, startDockerd } from './support/dockerd.ts';
import { digestOf, type Seeded, seedStandard } from './support/images.ts';
import { unmountUnder } from './support/mounts.ts';
import { DEAD_PROXY_ENV } from './support/safety.ts';
import { skopeoCopy, skopeoInspectRaw } from './support/skopeo.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);
const WRITER = 'writer:writer-pw';
const READER = 'reader:reader-pw';

describe('real clients pushing into a local repository of berth', () => {
  let dir: string;
  let up: Upstream;
  let seed: Seeded;
  let b: InProcessBerth;
  let containerd: Containerd | undefined;
  let dockerd: Dockerd | undefined;
  let podmanEnv: NodeJS.ProcessEnv;
  const env = { ...process.env, ...DEAD_PROXY_ENV };

  const skopeo = (...args: string[]) => run('skopeo', ['--insecure-policy', ...args], { env, timeout: 120_000, maxBuffer: 16 << 20 });
  const podman = (...args: string[]) => run('podman', ['--cgroup-manager=cgroupfs', '--events-backend=file', ...args], { env: podmanEnv, timeout: 120_000, maxBuffer: 16 << 20 });
  /** The manifest digest berth serves for a reference, as skopeo reads it. */
  const servedDigest = async (ref: string) => digestOf(await skopeoInspectRaw(`docker://${b.host}/${ref}`, { tlsVerify: false }));
  /** What berth asked the upstream for under a local name: must stay nothing. */
  const upstreamSawLocal = () => up.accessLog().filter((e) => e.path.includes('/site/'));

  before(async () => {
    dir = await makeTempDir('push-clients');
    up = await startUpstream();
    seed = await seedStandard(up, dir);
    const htpasswd = path.join(dir, 'htpasswd');
    const lines = await Promise.all([WRITER, READER].map((c) => run('htpasswd', ['-nbB', '-C', '8', ...c.split(':')])));
    await writeFile(htpasswd, `${lines.map((l) => l.stdout.trim()).join('\n')}\n`);
    b = await startBerth({
      upstreams: [{ host: up.host, url: up.url }],
      local: { prefixes: ['site/'] },
      auth: { htpasswd, anonymous: true, push: [{ prefix: 'site/', users: ['writer'] }] },
    });
    await mkdir(path.join(dir, 'podman'), { recursive: true });
    await writeFile(path.join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = "${dir}/podman/storage"\nrunroot = "${dir}/podman/run"\n`);
    // No unqualified search, and berth's address plain HTTP: every reference below names 127.0.0.1.
    await writeFile(path.join(dir, 'registries.conf'), `unqualified-search-registries = []\n[[registry]]\nlocation = "${b.host}"\ninsecure = true\n`);
    await writeFile(path.join(dir, 'auth.json'), '{}\n');
    podmanEnv = {
      ...env,
      CONTAINERS_REGISTRIES_CONF: path.join(dir, 'registries.conf'),
      CONTAINERS_STORAGE_CONF: path.join(dir, 'storage.conf'),
      // No login state from the machine, none left behind.
      REGISTRY_AUTH_FILE: path.join(dir, 'auth.json'),
    };
  });

  after(async () => {
    if (podmanEnv) await podman('rmi', '-af').catch(() => {});
    await containerd?.stop();
    await dockerd?.stop();
    await b?.stop();
    await up?.stop();
    await unmountUnder(dir).catch(() => {});
    await removeTempDir(dir);
  });

  test('skopeo copy into site/: refused without credentials and for a reader, stored byte for byte for the writer', async () => {
    const src = `docker://${up.host}/lab/small:1`;
    const dst = `docker://${b.host}/site/small:1`;
    await assert.rejects(skopeoCopy(src, dst), /authentication required|unauthorized/i);
    await assert.rejects(skopeoCopy(src, dst, { destCreds: READER }), /denied/i);
    await skopeoCopy(src, dst, { destCreds: WRITER });
    assert.equal(await servedDigest('site/small:1'), seed.small.manifestDigest);
    // Pulled back whole (every blob) by an anonymous skopeo.
    await skopeoCopy(dst, `oci:${path.join(dir, 'pulled-small')}:small`);
    const index = JSON.parse(await readFile(path.join(dir, 'pulled-small', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    assert.equal(index.manifests[0]?.digest, seed.small.manifestDigest);
    assert.deepEqual(upstreamSawLocal(), [], 'a local name never reaches the upstream');
  });

  test('skopeo sync --src docker --dest docker copies an index with every platform into site/', async () => {
    await skopeo('sync', '--src', 'docker', '--dest', 'docker', '--all', '--src-tls-verify=false', '--dest-tls-verify=false', '--dest-creds', WRITER, `${up.host}/lab/multi`, `${b.host}/site/`);
    assert.equal(await servedDigest('site/multi:1'), seed.multi.digest);
    for (const child of seed.multi.images) assert.equal(await servedDigest(`site/multi@${child.manifestDigest}`), child.manifestDigest);
  });

  test('the two-step copy: skopeo sync --dest dir on the connected side, --src dir --dest docker into berth', async () => {
    const transfer = path.join(dir, 'transfer');
    await skopeo('sync', '--src', 'docker', '--dest', 'dir', '--all', '--src-tls-verify=false', `${up.host}/lab/small`, transfer);
    assert.deepEqual((await readdir(transfer)).sort(), ['small:1', 'small:v2s2'], 'one directory per tag, named by the last path component');
    await skopeo('sync', '--src', 'dir', '--dest', 'docker', '--all', '--dest-tls-verify=false', '--dest-creds', WRITER, transfer, `${b.host}/site/carried/`);
    assert.equal(await servedDigest('site/carried/small:1'), seed.small.manifestDigest);
  });

  test('containerd pulls the local images from berth (a hosts.toml naming berth itself), digests equal', async () => {
    containerd = await startContainerd();
    await containerd.writeHosts(b.host, `server = "${b.url}"\n`);
    await containerd.pull(`${b.host}/site/small:1`);
    await containerd.pull(`${b.host}/site/multi:1`, { platform: 'linux/amd64' });
    const targets = await imageTargets(containerd);
    assert.equal(targets.get(`${b.host}/site/small:1`), seed.small.manifestDigest);
    assert.equal(targets.get(`${b.host}/site/multi:1`), seed.multi.digest);
    assert.deepEqual(upstreamSawLocal(), []);
  });

  test('podman pulls a local image, and podman push stores exactly what podman sent', async () => {
    await podman('pull', '-q', `${b.host}/site/small:1`);
    const { stdout } = await podman('image', 'inspect', '--format', '{{.Digest}} {{.Id}}', `${b.host}/site/small:1`);
    const [digest, id] = stdout.trim().split(' ');
    assert.equal(digest, seed.small.manifestDigest);
    assert.equal(`sha256:${id}`, seed.small.config.digest);
    const target = `docker://${b.host}/site/pushed:1`;
    await assert.rejects(podman('push', '--tls-verify=false', `${b.host}/site/small:1`, target), /authentication required|unauthorized/i);
    await assert.rejects(podman('push', '--tls-verify=false', '--creds', READER, `${b.host}/site/small:1`, target), /denied/i);
    const digestFile = path.join(dir, 'pushed.digest');
    await podman('push', '--tls-verify=false', '--creds', WRITER, '--digestfile', digestFile, `${b.host}/site/small:1`, target);
    const pushed = (await readFile(digestFile, 'utf8')).trim();
    assert.match(pushed, /^sha256:[0-9a-f]{64}$/);
    assert.equal(await servedDigest('site/pushed:1'), pushed);
    // The config podman pushed is the image it has (its id), whatever it did to the layers' compression.
    const manifest = JSON.parse((await skopeoInspectRaw(`docker://${b.host}/site/pushed:1`, { tlsVerify: false })).toString('utf8')) as { config: { digest: string } };
    assert.equal(manifest.config.digest, `sha256:${id}`);
  });

  test('docker pulls anonymously after the ping challenge, and pushes after docker login (the challenge on GET /v2/ is what makes it log in)', async () => {
    // The mirror is berth too (dockerd needs one here); the references below name berth directly anyway.
    dockerd = await startDockerd({ mirror: b.url });
    await dockerd.docker(['pull', '-q', `${b.host}/site/small:1`]);
    const inspect = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', `${b.host}/site/small:1`]);
    assert.deepEqual(JSON.parse(inspect.stdout.trim()), [`${b.host}/site/small@${seed.small.manifestDigest}`]);
    // And as a Docker Hub mirror (berth's default upstream is the loopback registry): the bearer challenge's
    // anonymous token keeps cached pulls working for a docker without credentials.
    await dockerd.docker(['pull', '-q', 'small:1']);
    const mirrored = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', 'small:1']);
    // The same image as site/small:1 (one image id, two names); Docker Hub itself is behind a dead proxy.
    assert.ok((JSON.parse(mirrored.stdout.trim()) as string[]).includes(`small@${seed.small.manifestDigest}`), mirrored.stdout);
    const target = `${b.host}/site/from-docker:1`;
    await dockerd.docker(['tag', `${b.host}/site/small:1`, target]);
    await assert.rejects(dockerd.docker(['push', '-q', target]), /unauthorized|authentication required|no basic auth credentials/i);
    await dockerd.docker(['login', '-u', 'reader', '-p', 'reader-pw', b.host]);
    await assert.rejects(dockerd.docker(['push', '-q', target]), /denied/i);
    await dockerd.docker(['login', '-u', 'writer', '-p', 'writer-pw', b.host]);
    await dockerd.docker(['push', '-q', target]);
    const pushed = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', target]);
    const digests = (JSON.parse(pushed.stdout.trim()) as string[]).filter((d) => d.startsWith(`${b.host}/site/from-docker@`));
    assert.equal(digests.length, 1, pushed.stdout);
    assert.equal(await servedDigest('site/from-docker:1'), digests[0]!.split('@')[1]);
  });
});
