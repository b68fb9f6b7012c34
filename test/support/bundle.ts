// dist/berth.mjs, the bundle that `npm start` and the package's bin/berth.js run, built from the checkout's
// sources with package.json's own build script. Built into a private directory and renamed into place, so
// test files that build it at once never load a half-written bundle.
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const ROOT = path.resolve(import.meta.dirname, '../..');
export const BUNDLE = path.join(ROOT, 'dist/berth.mjs');

/** Builds dist/berth.mjs (and its .map) as `npm run build` does; returns its path. */
export async function buildBundle(): Promise<string> {
  mkdirSync(path.join(ROOT, 'dist'), { recursive: true });
  const dir = await mkdtemp(path.join(ROOT, 'dist', 'build-'));
  try {
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    const out = path.join(dir, 'berth.mjs');
    const args = pkg.scripts
      .build!.replace(/^esbuild /, '')
      .replace('--outfile=dist/berth.mjs', `--outfile=${out}`)
      .split(' ');
    await run(path.join(ROOT, 'node_modules/.bin/esbuild'), args, { cwd: ROOT });
    // The map first: a bundle in place always finds a map at least as new as itself.
    await rename(`${out}.map`, `${BUNDLE}.map`);
    await rename(out, BUNDLE);
    return BUNDLE;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
