// The conversion pool (src/estargz/pool.ts): conversions on worker threads, FIFO beyond `concurrency`,
// the same bytes as on the main thread, aborts and crashes failing only their own conversion, the worker
// thread reniced, the bundle (esbuild, as `npm run build` makes dist/berth.mjs) running its worker from
// itself, and memory flat while a layer with a 150 MiB file goes through.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import { convertLayer } from '../src/estargz/convert-layer.ts';
import { ConversionPool } from '../src/estargz/pool.ts';
import { ConversionError, type ConvertedLayer } from '../src/estargz/types.ts';
import { type BuiltLayer, buildTree, tarTree } from './support/layers.ts';
import { waitUntil } from './support/links.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const OPTS = { chunkSize: 4 << 20, prioritizedFiles: [] };
const ROOT = path.resolve(import.meta.dirname, '..');

let dir: string;
let small: BuiltLayer;
let medium: BuiltLayer;
let big: BuiltLayer;
let expected: ConvertedLayer;
const pools: ConversionPool[] = [];

const discard = async () => {};
const newPool = (o: ConstructorParameters<typeof ConversionPool>[0]) => {
  const p = new ConversionPool(o);
  pools.push(p);
  return p;
};

before(async () => {
  dir = await makeTempDir('estargz-pool');
  await buildTree(path.join(dir, 'small'), { smallFiles: 200 });
  small = await tarTree(path.join(dir, 'small'), path.join(dir, 'small.tar.gz'), { gzip: true, format: 'posix' });
  await buildTree(path.join(dir, 'medium'), { smallFiles: 10, bigFileBytes: 40 << 20 });
  medium = await tarTree(path.join(dir, 'medium'), path.join(dir, 'medium.tar.gz'), { gzip: true, format: 'posix' });
  await buildTree(path.join(dir, 'big'), { smallFiles: 3000, bigFileBytes: 150 << 20 });
  big = await tarTree(path.join(dir, 'big'), path.join(dir, 'big.tar.gz'), { gzip: true, format: 'posix' });
  expected = await convertLayer(createReadStream(small.path), 'gzip', OPTS, discard);
});

after(async () => {
  await Promise.all(pools.map((p) => p.close()));
  await rm(path.join(ROOT, 'dist', `estargz-pool-check-${process.pid}.mjs`), { force: true });
  if (dir) await removeTempDir(dir);
});

describe('the pool', () => {
  test('a conversion on a worker gives the same bytes as on the main thread, and the sink gets them all', async () => {
    const pool = newPool({ concurrency: 1 });
    let bytes = 0;
    const r = await pool.convert(createReadStream(small.path), 'gzip', OPTS, async (b) => {
      bytes += b.length;
    });
    assert.deepEqual(r, expected);
    assert.equal(bytes, r.size);
  });

  test('with concurrency 1 two conversions run one after the other, both correct', async () => {
    const events: string[] = [];
    const pool = newPool({
      concurrency: 1,
      onWorker: (w) => {
        const id = w.threadId;
        events.push(`start ${id}`);
        w.once('exit', () => events.push(`exit ${id}`));
      },
    });
    const [a, b] = await Promise.all([pool.convert(createReadStream(medium.path), 'gzip', OPTS, discard), pool.convert(createReadStream(small.path), 'gzip', OPTS, discard)]);
    assert.deepEqual(b, expected);
    assert.deepEqual(a, await convertLayer(createReadStream(medium.path), 'gzip', OPTS, discard));
    await waitUntil('both workers exited', () => events.length === 4);
    const [first, second] = [events[0]!.split(' ')[1], events.find((e, i) => i > 0 && e.startsWith('start'))!.split(' ')[1]];
    assert.ok(events.indexOf(`exit ${first}`) < events.indexOf(`start ${second}`), events.join(', '));
  });

  test('an abort mid-way rejects promptly, ends the worker, and the pool goes on', async () => {
    const workers: Worker[] = [];
    const pool = newPool({ concurrency: 1, onWorker: (w) => workers.push(w) });
    const ac = new AbortController();
    let exited = false;
    let sent = 0;
    const t = Date.now();
    await assert.rejects(
      pool.convert(
        createReadStream(big.path),
        'gzip',
        OPTS,
        async (b) => {
          sent += b.length;
          if (sent > 2e6 && !ac.signal.aborted) {
            workers[0]!.once('exit', () => {
              exited = true;
            });
            ac.abort();
          }
        },
        ac.signal,
      ),
      (err: Error) => err.name === 'AbortError',
    );
    assert.ok(Date.now() - t < 15_000);
    await waitUntil('the worker exited', () => exited);
    // A conversion queued behind an aborted one still runs; one aborted while queued leaves the queue.
    const queuedAbort = new AbortController();
    const running = pool.convert(createReadStream(small.path), 'gzip', OPTS, discard);
    const queued = pool.convert(createReadStream(small.path), 'gzip', OPTS, discard, queuedAbort.signal);
    queuedAbort.abort();
    await assert.rejects(queued, (err: Error) => err.name === 'AbortError');
    assert.deepEqual(await running, expected);
  });

  test('a worker that dies fails only its own conversion', async () => {
    let n = 0;
    const pool = newPool({
      concurrency: 1,
      onWorker: (w) => {
        if (n++ === 0) w.once('message', () => void w.terminate());
      },
    });
    const [a, b] = await Promise.allSettled([pool.convert(createReadStream(small.path), 'gzip', OPTS, discard), pool.convert(createReadStream(small.path), 'gzip', OPTS, discard)]);
    assert.equal(a.status, 'rejected');
    assert.match(String((a as PromiseRejectedResult).reason), /worker exited/);
    assert.equal(b.status, 'fulfilled');
    assert.deepEqual((b as PromiseFulfilledResult<ConvertedLayer>).value, expected);
  });

  test('prioritised files: the worker spools under spoolDir (and leaves nothing there), same bytes as the main thread', async () => {
    const spoolDir = path.join(dir, 'spool');
    await mkdir(spoolDir);
    const pool = newPool({ concurrency: 1, spoolDir });
    const prio = { chunkSize: 4 << 20, prioritizedFiles: ['odd/ping', 'links/hard2'] };
    let seen: string[] = [];
    const r = await pool.convert(createReadStream(small.path), 'gzip', prio, async () => {
      if (seen.length === 0) seen = await readdir(spoolDir);
    });
    assert.equal(seen.length, 1);
    assert.match(seen[0]!, /^berth-estargz-/);
    assert.deepEqual(await readdir(spoolDir), []);
    assert.deepEqual(r, await convertLayer(createReadStream(small.path), 'gzip', prio, discard));
    const nowhere = newPool({ concurrency: 1, spoolDir: path.join(dir, 'no-such-dir') });
    await assert.rejects(nowhere.convert(createReadStream(small.path), 'gzip', prio, discard), /ENOENT/);
  });

  test('a bad layer is a ConversionError from the worker too', async () => {
    const pool = newPool({ concurrency: 1 });
    await assert.rejects(
      pool.convert(
        (async function* () {
          yield Buffer.from('this is not a gzip stream at all');
        })(),
        'gzip',
        OPTS,
        discard,
      ),
      (err: Error) => err instanceof ConversionError && /not a valid gzip stream/.test(err.message),
    );
    assert.deepEqual(await pool.convert(createReadStream(small.path), 'gzip', OPTS, discard), expected);
  });

  test('the worker thread runs at nice 19, the process at its own priority', async () => {
    const pool = newPool({ concurrency: 1 });
    const nices = async () => {
      const out: number[] = [];
      for (const tid of await readdir('/proc/self/task')) {
        const stat = await readFile(`/proc/self/task/${tid}/stat`, 'utf8').catch(() => '');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        if (fields.length > 16) out.push(Number(fields[16])); // field 19 (nice), counted after "(comm) "
      }
      return out;
    };
    const own = (await nices())[0];
    const conversion = pool.convert(createReadStream(medium.path), 'gzip', OPTS, discard);
    await waitUntil('a thread at nice 19', async () => (await nices()).includes(19));
    await conversion;
    assert.equal((await nices())[0], own);
  });
});

describe('bundled by esbuild', () => {
  let bundle: string;
  before(async () => {
    // An entry that imports the pool and then does what the CLI does after its imports: run. If the
    // worker (which runs the bundle itself) ever got past the pool's module, it would exit 3.
    // It also imports every CLI module (as main.ts does), so the worker loads all of berth's packages
    // (better-sqlite3's addon, koa, undici, pino…) the way it will inside dist/berth.mjs.
    const cli = (await readdir(path.join(ROOT, 'src/cli'))).filter((f) => f.endsWith('.ts')).map((f) => `import ${JSON.stringify(path.join(ROOT, 'src/cli', f))};`);
    const entry = path.join(dir, 'entry.ts');
    await writeFile(
      entry,
      `${cli.join('\n')}
import { createReadStream, createWriteStream } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import { ConversionPool } from ${JSON.stringify(path.join(ROOT, 'src/estargz/pool.ts'))};
if (!isMainThread) { console.error('the CLI ran in a worker'); process.exit(3); }
const pool = new ConversionPool({ concurrency: 1 });
const convert = async (file: string) => {
  const out = createWriteStream(process.argv[4]!);
  const r = await pool.convert(createReadStream(file), 'gzip', { chunkSize: 4 << 20, prioritizedFiles: [] }, (b) => new Promise<void>((res, rej) => out.write(b, (e) => (e ? rej(e) : res()))));
  await new Promise((res) => out.end(res));
  return r;
};
const warm = await convert(process.argv[2]!);
const before = process.resourceUsage().maxRSS;
const cpu = process.cpuUsage();
const t = Date.now();
const result = await convert(process.argv[3]!);
const used = process.cpuUsage(cpu);
console.log(JSON.stringify({ warm, result, maxRssBeforeKb: before, maxRssAfterKb: process.resourceUsage().maxRSS, wallMs: Date.now() - t, cpuMs: (used.user + used.system) / 1000 }));
await pool.close();
`,
    );
    // Next to dist/berth.mjs (git-ignored), where the bundle's external packages resolve as they do for berth's.
    bundle = path.join(ROOT, 'dist', `estargz-pool-check-${process.pid}.mjs`);
    execFileSync(
      path.join(ROOT, 'node_modules/.bin/esbuild'),
      [entry, '--bundle', '--platform=node', '--format=esm', '--packages=external', '--target=node24', `--outfile=${bundle}`, '--log-level=warning'],
      {
        cwd: ROOT,
      },
    );
  });

  test('the worker runs from the bundle; a 150 MiB-file layer converts with peak RSS growing < 64 MB', async () => {
    const out = execFileSync(process.execPath, [bundle, small.path, big.path, path.join(dir, 'big.esgz')], {
      cwd: ROOT,
      env: { ...process.env, MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072' },
      encoding: 'utf8',
      maxBuffer: 1 << 20,
    });
    const m = JSON.parse(out.trim().split('\n').at(-1)!);
    assert.deepEqual(m.warm, expected);
    assert.deepEqual(m.result, await convertLayer(createReadStream(big.path), 'gzip', OPTS, discard));
    const growthMb = (m.maxRssAfterKb - m.maxRssBeforeKb) / 1024;
    console.log(
      `pool (bundled): ${(big.size / 1e6).toFixed(1)} MB source in ${m.wallMs / 1000}s wall, ${(m.cpuMs / 1000).toFixed(1)}s CPU = ${(big.size / 1e6 / (m.cpuMs / 1000)).toFixed(1)} MB/s of source per core; ` +
        `peak RSS ${(m.maxRssBeforeKb / 1024).toFixed(0)} → ${(m.maxRssAfterKb / 1024).toFixed(0)} MB (+${growthMb.toFixed(1)} MB)`,
    );
    assert.ok(growthMb < 64, `peak RSS grew by ${growthMb.toFixed(1)} MB`);
  });
});
