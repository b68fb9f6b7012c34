// podman on a laptop: a registries.conf mirror for docker.io (no ns, default upstream) and a mirror with
// a host prefix for quay.io (`berth/quay.io`). Issue #2.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { type Seeded, seedStandard } from './support/images.ts';
import { unmountUnder } from './support/mounts.ts';
import { DEAD_ENDPOINT, DEAD_PROXY_ENV } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const run = promisify(execFile);

describe('podman pulling through berth', () => {
  let up: Upstream;
  let seed: Seeded;
  let berth: InProcessBerth;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  const podman = async (...args: string[]) => run('podman', ['--cgroup-manager=cgroupfs', '--events-backend=file', ...args], { env, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 });

  before(async () => {
    dir = await makeTempDir('podman');
    up = await startUpstream();
    seed = await seedStandard(up, dir);
    berth = await startBerth({
      upstreams: [
        { host: 'docker.io', url: up.url },
        { host: 'quay.io', url: up.url },
      ],
    });
    await mkdir(path.join(dir, 'storage'), { recursive: true });
    await writeFile(path.join(dir, 'storage.conf'), `[storage]\ndriver = "vfs"\ngraphroot = "${dir}/storage"\nrunroot = "${dir}/run"\n`);
    // `location` is a dead loopback port: if berth failed, podman's fallback could not leave the machine.
    await writeFile(
      path.join(dir, 'registries.conf'),
      [
        'unqualified-search-registries = ["docker.io"]',
        'short-name-mode = "permissive"',
        '[[registry]]',
        'prefix = "docker.io"',
        `location = "${DEAD_ENDPOINT}"`,
        'insecure = true',
        '[[registry.mirror]]',
        `location = "${berth.host}"`,
        'insecure = true',
        '[[registry]]',
        'prefix = "quay.io"',
        `location = "${DEAD_ENDPOINT}"`,
        'insecure = true',
        '[[registry.mirror]]',
        `location = "${berth.host}/quay.io"`,
        'insecure = true',
        '',
      ].join('\n'),
    );
    env = {
      ...process.env,
      ...DEAD_PROXY_ENV,
      CONTAINERS_REGISTRIES_CONF: path.join(dir, 'registries.conf'),
      CONTAINERS_STORAGE_CONF: path.join(dir, 'storage.conf'),
    };
  });

  after(async () => {
    await podman('rmi', '-af').catch(() => {});
    await berth?.stop();
    await up?.stop();
    await unmountUnder(dir).catch(() => {});
    await removeTempDir(dir);
  });

  test('podman pull docker.io/library/small:1 goes through the mirror and gets the upstream image', async () => {
    await podman('pull', '-q', 'docker.io/library/small:1');
    const { stdout } = await podman('image', 'inspect', '--format', '{{.Digest}} {{.Id}}', 'docker.io/library/small:1');
    const [digest, id] = stdout.trim().split(' ');
    assert.equal(digest, seed.small.manifestDigest);
    assert.equal(`sha256:${id}`, seed.small.config.digest);
  });

  test('podman pull quay.io/org/multi:1 goes through the host-prefixed mirror', async () => {
    const since = up.logLineCount();
    await podman('pull', '-q', 'quay.io/org/multi:1');
    const { stdout } = await podman('image', 'inspect', '--format', '{{.Digest}}', 'quay.io/org/multi:1');
    assert.equal(stdout.trim(), seed.multi.digest);
    // berth asked the upstream for org/multi: the prefix was stripped and routed to quay.io's upstream.
    const entries = await up.waitForAccess((es) => es.some((e) => e.path.startsWith('/v2/org/multi/manifests/')), { since });
    assert.ok(
      entries.every((e) => !e.path.includes('quay.io')),
      'the host prefix reached the upstream',
    );
  });
});
