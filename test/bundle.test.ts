// `npm start` runs berth from an esbuild bundle, not from the TypeScript sources the other tests use:
// the bundle must build and serve.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { freePort, waitForHttp } from './support/ports.ts';
import { type ManagedProcess, startProcess } from './support/process.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '..');

describe('the bundle npm start runs', () => {
  let dir: string | undefined;
  let proc: ManagedProcess | undefined;
  let outDir: string | undefined;

  after(async () => {
    await proc?.stop();
    if (dir) await removeTempDir(dir);
    if (outDir) await rm(outDir, { recursive: true, force: true });
  });

  test('builds with the package build script and answers /v2/ as berth serve', async () => {
    await mkdir(path.join(root, 'dist'), { recursive: true });
    dir = await makeTempDir('bundle');
    // Inside the checkout (dist/ is ignored) so the bundle's external packages resolve from node_modules.
    outDir = await mkdtemp(path.join(root, 'dist', 'test-'));
    const out = path.join(outDir, 'berth.mjs');
    // The same esbuild invocation as `npm run build`, into a private file so parallel runs do not collide.
    const pkg = (await import('../package.json', { with: { type: 'json' } })).default as { scripts: Record<string, string> };
    const args = pkg.scripts
      .build!.replace(/^esbuild /, '')
      .replace('--outfile=dist/berth.mjs', `--outfile=${out}`)
      .split(' ');
    await run(path.join(root, 'node_modules/.bin/esbuild'), args, { cwd: root });
    const port = await freePort();
    proc = startProcess('berth-bundle', process.execPath, [out, 'serve', '--listen', `127.0.0.1:${port}`, '--storage', path.join(dir, 'storage'), '--upstream', `docker.io=http://${DEAD_ENDPOINT}`], {
      logFile: path.join(dir, 'berth.log'),
      cwd: root,
    });
    await waitForHttp(`http://127.0.0.1:${port}/v2/`, { timeoutMs: 20_000 });
    const res = await fetch(`http://127.0.0.1:${port}/v2/`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
    const { stdout } = await run(process.execPath, [out, '--version']);
    assert.equal(stdout.trim(), '0.1.0');
  });
});
