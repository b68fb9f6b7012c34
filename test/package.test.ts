// The npm package (issue #9 §5): it ships what a user runs (bin, the bundle, the scripts postinstall and bin
// need, the example configs), not test/, bench/ or src/; and its `berth` command runs the bundle with the
// memory settings `npm start` uses, not the TypeScript sources through tsx.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { symlink } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { buildBundle, ROOT } from './support/bundle.ts';
import { freePort, waitForHttp } from './support/ports.ts';
import { type ManagedProcess, startProcess } from './support/process.ts';
import { DEAD_ENDPOINT } from './support/safety.ts';
import { makeTempDir, removeTempDir } from './support/tmp.ts';

const run = promisify(execFile);

interface PackResult {
  filename: string;
  files: Array<{ path: string }>;
}

/** npm pack without its prepack (the bundle is built by buildBundle, atomically, so test files can share it). */
async function pack(args: string[]): Promise<PackResult> {
  const { stdout } = await run('npm', ['pack', '--json', '--ignore-scripts', ...args], { cwd: ROOT, env: { ...process.env, npm_config_loglevel: 'silent' } });
  return (JSON.parse(stdout) as PackResult[])[0]!;
}

/** Without the MALLOC_* variables, so the test sees bin/berth.js set them. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.MALLOC_ARENA_MAX;
  delete env.MALLOC_MMAP_THRESHOLD_;
  return env;
}

describe('the npm package', () => {
  let dir: string;
  let proc: ManagedProcess | undefined;

  before(async () => {
    await buildBundle();
    dir = await makeTempDir('package');
  });

  after(async () => {
    await proc?.stop();
    if (dir) await removeTempDir(dir);
  });

  test('ships the bundle, bin and the scripts postinstall and bin import; no test/, bench/ or src/', async () => {
    const files = (await pack(['--dry-run'])).files.map((f) => f.path).sort();
    for (const prefix of ['test/', 'bench/', 'src/', 'docs/', 'storage/', '.ci/', 'node_modules/']) {
      assert.deepEqual(
        files.filter((f) => f.startsWith(prefix)),
        [],
        `${prefix} is not in the package`,
      );
    }
    for (const f of ['bin/berth.js', 'dist/berth.mjs', 'dist/berth.mjs.map', 'scripts/build-native.mjs', 'scripts/runtime.mjs', 'scripts/runtime-check.mjs', 'package.json', 'README.md']) {
      assert.ok(files.includes(f), `${f} is in the package: ${files.join(', ')}`);
    }
    assert.deepEqual(
      files.filter((f) => f.startsWith('dist/')),
      ['dist/berth.mjs', 'dist/berth.mjs.map'],
      'only the bundle from dist/ (not the bundle test builds)',
    );
    // Every relative import of bin/berth.js and the postinstall script is shipped.
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string>; dependencies: Record<string, string> };
    assert.match(pkg.scripts.postinstall!, /scripts\/build-native\.mjs/);
    assert.match(pkg.scripts.prepack!, /npm run build/, 'npm pack builds the bundle it ships');
    for (const f of ['bin/berth.js', 'scripts/build-native.mjs']) {
      for (const m of readFileSync(path.join(ROOT, f), 'utf8').matchAll(/from '(\.{1,2}\/[^']+)'/g)) {
        const target = path.relative(ROOT, path.resolve(path.dirname(path.join(ROOT, f)), m[1]!));
        assert.ok(files.includes(target), `${f} imports ${target}, which is shipped`);
      }
    }
    // The bundle needs no TypeScript runner or bundler at run time.
    assert.equal(pkg.dependencies.tsx, undefined);
    assert.equal(pkg.dependencies.esbuild, undefined);
  });

  test('the berth command of the unpacked package runs the bundle with the memory settings of npm start', async () => {
    const tarball = path.join(dir, (await pack(['--pack-destination', dir])).filename);
    await run('tar', ['-xzf', tarball, '-C', dir]);
    const pkgDir = path.join(dir, 'package');
    assert.ok(!existsSync(path.join(pkgDir, 'src')), 'no sources in the package');
    // The dependencies an `npm install` of the tarball would bring, from the checkout (no registry here).
    await symlink(path.join(ROOT, 'node_modules'), path.join(pkgDir, 'node_modules'));
    const bin = path.join(pkgDir, 'bin/berth.js');

    const { stdout } = await run(process.execPath, [bin, '--version'], { env: cleanEnv() });
    assert.equal(stdout.trim(), '0.1.0');

    const port = await freePort();
    proc = startProcess('berth-packed', process.execPath, [bin, 'serve', '--listen', `127.0.0.1:${port}`, '--storage', path.join(dir, 'storage'), '--upstream', `docker.io=http://${DEAD_ENDPOINT}`], {
      logFile: path.join(dir, 'berth.log'),
      cwd: dir,
      env: cleanEnv(),
    });
    await Promise.race([
      waitForHttp(`http://127.0.0.1:${port}/v2/`, { timeoutMs: 20_000 }),
      proc.exited.then((code) => assert.fail(`bin/berth.js exited (${String(code)}) before serving:\n${readFileSync(path.join(dir, 'berth.log'), 'utf8')}`)),
    ]);
    const res = await fetch(`http://127.0.0.1:${port}/v2/`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');

    // On Node.js 24 bin/berth.js restarts itself with execve: the process that serves is the one started.
    const environ = readFileSync(`/proc/${proc.pid}/environ`, 'utf8').split('\0');
    assert.ok(environ.includes('MALLOC_ARENA_MAX=2'), 'glibc sees MALLOC_ARENA_MAX=2 from process start');
    assert.ok(environ.includes('MALLOC_MMAP_THRESHOLD_=131072'), 'and MALLOC_MMAP_THRESHOLD_=131072');
    const cmdline = readFileSync(`/proc/${proc.pid}/cmdline`, 'utf8').split('\0');
    assert.ok(cmdline.includes('--enable-source-maps'), cmdline.join(' '));
    await proc.stop();
    assert.equal(await proc.exited, 0, readFileSync(path.join(dir, 'berth.log'), 'utf8'));
  });
});
