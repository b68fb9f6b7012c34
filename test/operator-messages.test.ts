// Honest exits and messages from the operator commands (issue #8 item 17): image-list lines that hold no
// reference are named with their line numbers; an import that lacks a manifest fails; imported images are
// pinned and `berth rm` will not drop a pinned one without --force; a bad flag or BERTH_* variable is
// reported under its own name; a missing storage directory is created only where content comes in (and
// said so), a read-only one is called read-only; `berth hosts` falls back to the configured upstream and
// keeps docker's daemon.json out of containerd's certs.d; every command says which storage it used.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { ConfigError, loadConfig } from '../src/config/load.ts';
import type { UpstreamSpec } from './support/berth.ts';
import { tryServe } from './support/berth-child.ts';
import { describeRun, lsJson, runBerth, writeCliConfig } from './support/berth-cli.ts';
import { blobsOf, buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { mountTmpfs, unmountUnder } from './support/mounts.ts';
import { freePort } from './support/ports.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const exec = promisify(execFile);

/** Writes `img` as an OCI image layout directory naming it `name` (what `berth export` and skopeo write). */
async function writeLayout(dir: string, entries: Array<{ name: string; img?: Image; digest?: string }>): Promise<void> {
  await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const manifests = [];
  for (const e of entries) {
    if (e.img) {
      await writeFile(path.join(dir, 'blobs', 'sha256', e.img.manifestDigest.slice(7)), e.img.manifest);
      for (const b of blobsOf(e.img)) {
        const to = path.join(dir, 'blobs', 'sha256', b.digest.slice(7));
        if (b.bytes) await writeFile(to, b.bytes);
        else await copyFile(b.path!, to);
      }
    }
    const digest = e.img?.manifestDigest ?? e.digest!;
    manifests.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: e.img?.manifest.length ?? 500, annotations: { 'org.opencontainers.image.ref.name': e.name } });
  }
  await writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests }));
}

describe('operator commands say what happened', () => {
  let up: Upstream;
  let work: string;
  let upstreams: UpstreamSpec[];
  let img: Image;

  before(async () => {
    work = await makeTempDir('operator-messages');
    up = await startUpstream();
    upstreams = [{ host: 'docker.io', url: up.url }];
    img = await buildImage({ format: 'oci', layers: [{ files: { 'etc/msg': `messages ${randomBytes(4).toString('hex')}\n` } }] });
    await pushImage(up, 'lab/msg', '1', img);
  });

  after(async () => {
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test('image-list lines that hold no reference are named with their line numbers, and stop the prewarm unless --skip-bad-lines', async () => {
    const storage = path.join(work, 'list');
    const config = await writeCliConfig(path.join(work, 'list.yaml'), { storage, upstreams });
    const list = path.join(work, 'images.txt');
    await writeFile(
      list,
      ['docker.io/lab/msg:1', '    image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"', 'docker.io/lab/a:1 docker.io/lab/b:1', 'Not/A!Reference', '# a comment', ''].join('\n'),
    );
    const args = ['prewarm', '-f', list, '--config', config];
    const r = await runBerth(args);
    assert.notEqual(r.code, 0, describeRun(args, r));
    for (const n of [2, 3, 4]) assert.match(r.stderr, new RegExp(`images\\.txt:${n}: `), `line ${n} is named: ${describeRun(args, r)}`);
    assert.doesNotMatch(r.stderr, /images\.txt:5: /, 'a comment is not a bad line');
    const skip = [...args, '--skip-bad-lines'];
    const s = await runBerth(skip);
    assert.equal(s.code, 0, describeRun(skip, s));
    assert.match(s.stdout, /prewarmed 1 of 1 images/, describeRun(skip, s));
    assert.match(s.stderr, /skipped .*images\.txt:3: /, 'still named when skipped');
    assert.match(s.stderr, new RegExp(`storage ${storage.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(config: `), 'says which storage it used');
  });

  test('import: a manifest missing from the bundle fails the import; the others are imported and pinned; rm refuses a pinned image without --force', async () => {
    const storage = path.join(work, 'import');
    const config = await writeCliConfig(path.join(work, 'import.yaml'), { storage, upstreams, offline: true });
    const layout = path.join(work, 'layout');
    await writeLayout(layout, [
      { name: 'docker.io/lab/imported:1', img },
      { name: 'docker.io/lab/absent:1', digest: `sha256:${randomBytes(32).toString('hex')}` },
    ]);
    // As a tar, the way bundles travel (a directory layout is read the same way).
    const bundle = path.join(work, 'bundle.tar');
    await exec('tar', ['-cf', bundle, '-C', layout, '.']);
    const args = ['import', bundle, '--config', config];
    const r = await runBerth(args);
    assert.equal(r.code, 1, describeRun(args, r));
    assert.match(r.stdout, /FAILED docker\.io\/lab\/absent:1: .*missing/, describeRun(args, r));
    assert.match(r.stdout, /imported docker\.io\/lab\/imported:1 /, describeRun(args, r));
    const row = (await lsJson(config)).find((x) => x.reference === 'docker.io/lab/imported:1');
    assert.equal(row?.pinned, true, 'an imported image is pinned, as a prewarmed one is');
    assert.equal(row?.complete, true);

    const rm = ['rm', 'docker.io/lab/imported:1', '--config', config];
    const refused = await runBerth(rm);
    assert.equal(refused.code, 1, describeRun(rm, refused));
    assert.match(refused.stderr, /is pinned/, describeRun(rm, refused));
    assert.ok(
      (await lsJson(config)).some((x) => x.reference === 'docker.io/lab/imported:1'),
      'a refused rm removed nothing',
    );
    const forced = await runBerth([...rm, '--force']);
    assert.equal(forced.code, 0, describeRun([...rm, '--force'], forced));
    assert.ok(!(await lsJson(config)).some((x) => x.reference === 'docker.io/lab/imported:1'));

    const noPinConfig = await writeCliConfig(path.join(work, 'import-nopin.yaml'), { storage: path.join(work, 'import-nopin'), upstreams, offline: true });
    const noPin = ['import', '--no-pin', layout, '--config', noPinConfig];
    const n = await runBerth(noPin);
    assert.equal(n.code, 1, describeRun(noPin, n));
    assert.equal((await lsJson(noPinConfig)).find((x) => x.reference === 'docker.io/lab/imported:1')?.pinned, false, '--no-pin');
  });

  test('a bad --listen flag or BERTH_* variable is reported under its own name, not as the config file', async () => {
    const file = path.join(work, 'named.yaml');
    await writeFile(file, `upstreams:\n  - host: docker.io\n    url: ${up.url}\n`);
    const message = (fn: () => unknown): string => {
      try {
        fn();
      } catch (err) {
        assert.ok(err instanceof ConfigError, String(err));
        return err.message;
      }
      return assert.fail('expected a ConfigError');
    };
    assert.match(
      message(() => loadConfig({ config: file, listen: 'nonsense' }, {})),
      /^--listen: listen: /,
    );
    assert.match(
      message(() => loadConfig({ config: file }, { BERTH_LISTEN: 'nonsense' })),
      /^BERTH_LISTEN: listen: /,
    );
    assert.match(
      message(() => loadConfig({ config: file }, { BERTH_STORAGE_MAX_SIZE: 'lots' })),
      /^BERTH_STORAGE_MAX_SIZE: storage\.maxSize: /,
    );
    await writeFile(file, `listen: nonsense\nupstreams:\n  - host: docker.io\n    url: ${up.url}\n`);
    assert.ok(message(() => loadConfig({ config: file }, {})).startsWith(`${file}: listen: `), 'a bad value in the file is still the file');
  });

  test('a missing storage directory: ls refuses and names it, serve creates it and says so', async () => {
    const storage = path.join(work, 'typo-storage');
    const config = await writeCliConfig(path.join(work, 'typo.yaml'), { storage, upstreams });
    const ls = ['ls', '--config', config];
    const r = await runBerth(ls);
    assert.equal(r.code, 1, describeRun(ls, r));
    assert.match(r.stderr, /storage directory .*typo-storage does not exist/, describeRun(ls, r));
    assert.ok(!existsSync(storage), 'ls did not create it');

    const port = await freePort();
    const serveConfig = await writeCliConfig(path.join(work, 'typo-serve.yaml'), { storage, upstreams, listen: `127.0.0.1:${port}` });
    const s = await tryServe(serveConfig, `http://127.0.0.1:${port}`, { logFile: path.join(work, 'typo-serve.log') });
    assert.equal(s.kind, 'listening');
    if (s.kind === 'listening') {
      try {
        await waitUntil('serve to log that it created the storage directory', () => /created the storage directory/.test(s.output()), 10_000, 100);
      } finally {
        await s.process.stop();
      }
    }
    assert.ok(existsSync(storage));
  });

  test('a read-only storage directory is called read-only', async () => {
    const mnt = path.join(work, 'ro');
    await mkdir(mnt);
    await mountTmpfs(mnt, '4m');
    try {
      await mkdir(path.join(mnt, 'storage'));
      await exec('mount', ['-o', 'remount,ro', mnt]);
      const config = await writeCliConfig(path.join(work, 'ro.yaml'), { storage: path.join(mnt, 'storage'), upstreams });
      const args = ['ls', '--config', config];
      const r = await runBerth(args);
      assert.equal(r.code, 1, describeRun(args, r));
      assert.match(r.stderr, /read-only/, describeRun(args, r));
      assert.doesNotMatch(r.stderr, /unable to open database file/);
    } finally {
      await unmountUnder(mnt);
    }
  });

  test('berth hosts: the fallback is the configured docker.io upstream, and daemon.json goes where --docker says, not into certs.d', async () => {
    const config = await writeCliConfig(path.join(work, 'hosts.yaml'), { storage: path.join(work, 'hosts-storage'), upstreams });
    const out = path.join(work, 'certs.d');
    const daemon = path.join(work, 'docker-daemon.json');
    const args = ['hosts', '--url', 'http://127.0.0.1:5000', '--out', out, '--docker', daemon, '--config', config];
    const r = await runBerth(args);
    assert.equal(r.code, 0, describeRun(args, r));
    const hub = await readFile(path.join(out, 'docker.io', 'hosts.toml'), 'utf8');
    assert.match(hub, new RegExp(`^server = "${up.url}"$`, 'm'), hub);
    assert.doesNotMatch(hub, /registry-1\.docker\.io/);
    assert.ok(!existsSync(path.join(out, 'daemon.json')));
    assert.deepEqual((JSON.parse(await readFile(daemon, 'utf8')) as Record<string, unknown>)['registry-mirrors'], ['http://127.0.0.1:5000']);
  });
});
