// berth's production dependencies as npm itself resolves them (`npm ls --omit=dev --parseable --all`: every
// package directory of the installed tree that a production install keeps), not a hand-kept list, so a new
// dependency is in the image as soon as it is in package.json. What each package holds is taken whole, except
// what is known to be build-time only.
import { execFileSync } from 'node:child_process';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { type Entry, fileEntry } from './entries.ts';

/** The runtime packages: their bin/node becomes the image's /usr/local/bin/node; headers and docs stay out. */
export const RUNTIME_PACKAGES = /^node-(linux|darwin|win)-[a-z0-9]+$/;

/**
 * Per package, what it keeps when its tree holds build leftovers. better-sqlite3 is compiled at install
 * (scripts/build-native.mjs): it needs its JavaScript and the addon, not SQLite's sources (deps/, src/) or
 * the compiler's objects and test extension (build/).
 */
const KEEP: Record<string, (rel: string) => boolean> = {
  'better-sqlite3': (rel) => rel === 'package.json' || rel === 'LICENSE' || rel.startsWith('lib/') || rel === 'build/Release/better_sqlite3.node',
};

/**
 * Package directories of the production tree, absolute, the root excluded. `--long` marks each line; an
 * EXTRANEOUS package (installed, but required by nothing in package.json: another checkout's node_modules)
 * stays out, and a tree that does not satisfy package.json (INVALID, MISSING) stops the build.
 */
export function productionPackages(root: string): string[] {
  // npm exits non-zero when the tree has extraneous or invalid packages, and still lists it.
  let out: string;
  try {
    out = execFileSync('npm', ['ls', '--omit=dev', '--parseable', '--all', '--long'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 16 << 20 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    if (!e.stdout || /missing|invalid/i.test(e.stderr ?? '')) throw new Error(`npm ls --omit=dev failed: ${e.stderr ?? String(err)}`);
    out = e.stdout;
  }
  const dirs: string[] = [];
  for (const line of out.split('\n').filter((l) => l.trim() !== '')) {
    const [dir, id, ...marks] = line.trim().split(':');
    if (marks.includes('EXTRANEOUS')) continue;
    if (marks.length > 0 || id === undefined) throw new Error(`npm ls --omit=dev: ${line.trim()}: the installed tree does not match package.json (npm ci)`);
    if (path.resolve(dir!) !== path.resolve(root)) dirs.push(dir!);
  }
  if (dirs.length === 0) throw new Error('npm ls --omit=dev listed no packages: run npm ci first');
  return dirs;
}

function packageName(dir: string): string {
  return (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name: string }).name;
}

/** Every file of one package directory, relative, without its nested node_modules (npm lists those packages on their own). */
function filesOf(dir: string, rel = ''): Array<{ rel: string; symlink?: string }> {
  const found: Array<{ rel: string; symlink?: string }> = [];
  for (const name of readdirSync(path.join(dir, rel)).sort()) {
    const r = rel === '' ? name : `${rel}/${name}`;
    if (r === 'node_modules') continue;
    const st = lstatSync(path.join(dir, r));
    if (st.isSymbolicLink()) found.push({ rel: r, symlink: readlinkSync(path.join(dir, r)) });
    else if (st.isDirectory()) found.push(...filesOf(dir, r));
    else if (st.isFile()) found.push({ rel: r });
  }
  return found;
}

/** The production tree's files as entries under `prefix` (`/opt/berth`), at their paths relative to `root`. */
export function productionTree(root: string, prefix: string): { entries: Entry[]; packages: number; addons: string[] } {
  const entries: Entry[] = [];
  const addons: string[] = [];
  let packages = 0;
  // The root's node_modules may be a symlink (a git worktree's): paths are taken as npm prints them.
  for (const dir of productionPackages(root)) {
    const name = packageName(dir);
    if (RUNTIME_PACKAGES.test(name)) continue;
    packages++;
    const keep = KEEP[name] ?? (() => true);
    const base = path.posix.join(prefix, path.relative(root, dir).split(path.sep).join('/'));
    for (const f of filesOf(dir)) {
      if (!keep(f.rel)) continue;
      const at = path.posix.join(base, f.rel);
      if (f.symlink !== undefined) entries.push({ kind: 'symlink', path: at, target: f.symlink });
      else entries.push(fileEntry(at, path.join(dir, f.rel)));
      if (f.rel.endsWith('.node')) addons.push(path.join(dir, f.rel));
    }
  }
  return { entries, packages, addons };
}
