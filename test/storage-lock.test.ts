// One writer per storage directory (issue #8 item 15): `berth serve` holds storage/berth.lock (pid, start
// time, URL). A second serve refuses and names the PID; operator commands that write refuse the same way,
// except those that can go through the running server (prewarm, pin), which do; read-only commands (ls)
// run beside it. A holder killed with -9 leaves a stale file that the next start takes over. The hold
// itself is a kernel lock (berth.lock.db, see src/store/lock.ts): it holds across containers (PID
// namespaces) sharing the storage, where every berth is PID 1, and while berth.lock is not written yet.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { StorageLock, StorageLockedError } from '../src/store/lock.ts';
import { StoragePaths } from '../src/store/paths.ts';
import { type BerthChild, berthConfig, startBerthChild, tryServe } from './support/berth-child.ts';
import { describeRun, lsJson, runBerth } from './support/berth-cli.ts';
import { blobsOf, buildImage, type Image, pushImage } from './support/images.ts';
import { waitUntil } from './support/links.ts';
import { fillUp, mountTmpfs, unmountUnder } from './support/mounts.ts';
import { fetchOutcome } from './support/outcome.ts';
import { freePort } from './support/ports.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

/** `berth serve` as in a container of its own: new user and PID namespaces (it is PID 1), same filesystem. */
const CONTAINER = ['unshare', '--user', '--map-root-user', '--pid', '--fork', '--mount-proc', '--kill-child'];

describe('the storage lock', () => {
  let up: Upstream;
  let work: string;
  let img: Image;
  let other: Image;
  let b: BerthChild;
  const upstreams = () => [{ host: 'docker.io', url: up.url }];

  before(async () => {
    work = await makeTempDir('storage-lock');
    up = await startUpstream();
    img = await buildImage({ format: 'oci', layers: [{ files: { 'etc/lock': 'lock test\n' } }] });
    other = await buildImage({ format: 'oci', layers: [{ files: { 'etc/other': 'other image\n' } }] });
    await pushImage(up, 'lab/locked', '1', img);
    await pushImage(up, 'lab/other', '1', other);
    b = await startBerthChild({ upstreams: upstreams() });
    const r = await fetchOutcome(b.url, '/v2/lab/locked/manifests/1', { headers: { Accept: img.mediaType } });
    assert.equal(r.status, 200);
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  test('berth serve writes its pid and URL into storage/berth.lock', () => {
    const lock = JSON.parse(readFileSync(path.join(b.storage, 'berth.lock'), 'utf8')) as { pid: number; url: string; command: string };
    assert.equal(lock.pid, b.process.pid);
    assert.equal(lock.command, 'serve');
    assert.equal(lock.url, b.url);
  });

  test('a second berth serve on the same storage refuses and names the PID that holds it', async () => {
    const port = await freePort();
    const config = path.join(work, 'second.yaml');
    await writeFile(config, stringify(berthConfig({ upstreams: upstreams() }, b.storage, `127.0.0.1:${port}`)));
    const r = await tryServe(config, `http://127.0.0.1:${port}`, { logFile: path.join(work, 'second.log') });
    if (r.kind === 'listening') {
      await r.process.stop();
      assert.fail('a second berth serve started on a locked storage');
    }
    assert.notEqual(r.code, 0);
    assert.match(r.output, new RegExp(`in use by berth serve \\(pid ${b.process.pid}\\b`), r.output);
  });

  for (const args of [['import', '/nonexistent/bundle.tar'], ['rm', 'docker.io/lab/locked:1'], ['gc'], ['unpin', 'docker.io/lab/locked:1'], ['index', 'rebuild']]) {
    test(`berth ${args[0]}${args[1] === 'rebuild' ? ' rebuild' : ''} beside a running server refuses, naming its PID`, async () => {
      const full = [...args, '--config', b.configFile];
      const r = await runBerth(full);
      assert.equal(r.code, 1, describeRun(full, r));
      assert.match(r.stderr, new RegExp(`in use by berth serve \\(pid ${b.process.pid}\\b`), describeRun(full, r));
    });
  }

  test('berth ls runs beside it (read-only), and the index was not touched by the refused commands', async () => {
    const rows = await lsJson(b.configFile);
    assert.deepEqual(
      rows.map((r) => r.reference),
      ['docker.io/lab/locked:1'],
    );
  });

  test('berth prewarm and pin beside it go through the running server', async () => {
    const prewarm = ['prewarm', 'docker.io/lab/other:1', '--config', b.configFile];
    const r = await runBerth(prewarm);
    assert.equal(r.code, 0, describeRun(prewarm, r));
    assert.ok(r.stderr.includes(`going through it at ${b.url}`), describeRun(prewarm, r));
    const pin = ['pin', 'docker.io/lab/locked:1', '--config', b.configFile];
    const p = await runBerth(pin);
    assert.equal(p.code, 0, describeRun(pin, p));
    assert.match(p.stdout, /pinned docker\.io\/lab\/locked:1 \(through the running berth/);
    const rows = await lsJson(b.configFile);
    for (const ref of ['docker.io/lab/other:1', 'docker.io/lab/locked:1']) assert.equal(rows.find((x) => x.reference === ref)?.pinned, true, `${ref} pinned`);
    assert.ok(b.log().includes('/_berth/prewarm'), 'the server did the work');
    for (const blob of blobsOf(other)) assert.ok(existsSync(path.join(b.storage, 'blobs', 'sha256', blob.digest.slice(7, 9), blob.digest.slice(7))));
  });

  test('after kill -9 the stale lock does not stop the next start, and commands run once it is stopped', async () => {
    await b.kill('SIGKILL');
    assert.ok(existsSync(path.join(b.storage, 'berth.lock')), 'kill -9 leaves the lock file behind');
    await b.restart();
    const lock = JSON.parse(readFileSync(path.join(b.storage, 'berth.lock'), 'utf8')) as { pid: number };
    assert.equal(lock.pid, b.process.pid, 'the new server took the stale lock over');
    await b.kill('SIGTERM');
    assert.ok(!existsSync(path.join(b.storage, 'berth.lock')), 'a clean stop removes the lock');
    const gc = ['gc', '--config', b.configFile];
    const r = await runBerth(gc);
    assert.equal(r.code, 0, describeRun(gc, r));
  });
});

describe('the storage lock across containers and in its first instants', () => {
  let up: Upstream;
  let work: string;
  const upstreams = () => [{ host: 'docker.io', url: up.url }];

  before(async () => {
    work = await makeTempDir('storage-lock-ns');
    up = await startUpstream();
  });

  after(async () => {
    await up?.stop();
    if (work) await removeTempDir(work);
  });

  async function serveIn(storage: string, name: string, wrap?: string[]) {
    const port = await freePort();
    const config = path.join(work, `${name}.yaml`);
    await writeFile(config, stringify(berthConfig({ upstreams: upstreams() }, storage, `127.0.0.1:${port}`)));
    return { config, r: await tryServe(config, `http://127.0.0.1:${port}`, { logFile: path.join(work, `${name}.log`), ...(wrap ? { wrap } : {}) }) };
  }

  test('two berth serve in separate PID namespaces (both PID 1) on one storage: the second refuses', async () => {
    const storage = path.join(work, 'shared-volume');
    const first = await serveIn(storage, 'container-a', CONTAINER);
    assert.equal(first.r.kind, 'listening', first.r.kind === 'exited' ? first.r.output : '');
    if (first.r.kind !== 'listening') return;
    try {
      const lock = await waitUntil(
        "berth.lock to name the first container's server",
        () => {
          try {
            const l = JSON.parse(readFileSync(path.join(storage, 'berth.lock'), 'utf8')) as { pid: number; url?: string };
            return l.url ? l : undefined;
          } catch {
            return undefined;
          }
        },
        10_000,
        50,
      );
      assert.equal(lock.pid, 1, 'berth is PID 1 in its container');
      const second = await serveIn(storage, 'container-b', CONTAINER);
      if (second.r.kind === 'listening') {
        await second.r.process.stop('SIGKILL');
        assert.fail('a second berth serve started, in another container, on a storage already served');
      }
      assert.notEqual(second.r.code, 0);
      assert.match(second.r.output, /in use by berth serve \(pid 1\b/, second.r.output);
      const still = JSON.parse(readFileSync(path.join(storage, 'berth.lock'), 'utf8')) as { url: string };
      assert.equal(still.url, lock.url, 'the refused start left berth.lock alone');
    } finally {
      await first.r.process.stop('SIGKILL'); // unshare --kill-child takes its PID 1 along
    }
    // kill -9 of the whole container: the kernel dropped its lock, so the next one starts.
    const next = await serveIn(storage, 'container-c', CONTAINER);
    assert.equal(next.r.kind, 'listening', next.r.kind === 'exited' ? next.r.output : '');
    if (next.r.kind === 'listening') await next.r.process.stop('SIGKILL');
  });

  test('a holder that has taken the lock but not yet written berth.lock is not taken for a dead one', async () => {
    // What berth does in its first instants: the kernel lock is held, berth.lock is created but empty.
    const storage = path.join(work, 'first-instants');
    await mkdir(storage, { recursive: true });
    const paths = new StoragePaths(storage);
    const holder = spawn(
      process.execPath,
      [
        '-e',
        `
      const db = new (require('better-sqlite3'))(${JSON.stringify(paths.lockDb)});
      db.exec('BEGIN EXCLUSIVE');
      require('fs').writeFileSync(${JSON.stringify(paths.lock)}, '');
      process.stdout.write('held\\n');
      setInterval(() => {}, 1000);
    `,
      ],
      { cwd: path.resolve(import.meta.dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((ok, fail) => {
        holder.stdout.once('data', () => ok());
        holder.once('exit', (code) => fail(new Error(`the lock holder exited (${String(code)})`)));
      });
      const { r } = await serveIn(storage, 'first-instants');
      if (r.kind === 'listening') {
        await r.process.stop('SIGKILL');
        assert.fail('berth serve took over a lock whose holder is alive but had not written berth.lock yet');
      }
      assert.notEqual(r.code, 0);
      assert.match(r.output, /in use by another berth \(it has not written berth\.lock yet\)/, r.output);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  test('a second StorageLock in the same process is refused (it once counted as a restarted PID 1)', async () => {
    const storage = path.join(work, 'same-process');
    await mkdir(storage, { recursive: true });
    const paths = new StoragePaths(storage);
    const lock = await StorageLock.acquire(paths, 'serve');
    try {
      await assert.rejects(StorageLock.acquire(paths, 'gc'), (err: unknown) => err instanceof StorageLockedError && new RegExp(`in use by berth serve \\(pid ${process.pid}\\b`).test(err.message));
    } finally {
      await lock.release();
    }
    const again = await StorageLock.acquire(paths, 'gc');
    await again.release();
    assert.ok(!existsSync(paths.lock), 'release removes berth.lock');
  });

  test('on a full disk the lock is still taken and still holds (berth.lock cannot be written: no name)', async () => {
    const mnt = path.join(work, 'full-fs');
    await mkdir(mnt);
    await mountTmpfs(mnt, '1m');
    try {
      const paths = new StoragePaths(path.join(mnt, 'storage'));
      await mkdir(paths.root);
      await fillUp(path.join(mnt, 'filler'));
      const lock = await StorageLock.acquire(paths, 'serve');
      try {
        await lock.setUrl('http://127.0.0.1:1');
        await assert.rejects(StorageLock.acquire(paths, 'gc'), /in use by another berth \(it has not written berth\.lock yet\)/);
      } finally {
        await lock.release();
      }
      await (await StorageLock.acquire(paths, 'gc')).release();
    } finally {
      await unmountUnder(mnt);
    }
  });
});
