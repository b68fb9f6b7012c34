// berth's production dependencies as npm itself resolved them (package-lock.json: what `npm ci --omit=dev`
// installs), not a hand-kept list, so a new dependency is in the image as soon as it is in the lockfile. What
// each package holds is taken whole, except what is known to be build-time only.
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

interface LockedPackage {
  version?: string;
  dev?: boolean;
  optional?: boolean;
  link?: boolean;
}

/**
 * Package directories of the production tree, absolute, the root excluded: package-lock.json's `packages`,
 * the tree npm ci installs (arborist's virtual tree), less what npm marks `dev` — what `npm ci --omit=dev`
 * keeps. Taken from the lockfile rather than from `npm ls` of what is installed, because node_modules may hold
 * packages this package.json does not require (another checkout's), which npm ls prints among the rest. Each
 * package must be installed at its locked version; an optional one that is absent (another platform's) is skipped.
 */
export function productionPackages(root: string): string[] {
  const lock = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { lockfileVersion?: number; packages?: Record<string, LockedPackage> };
  if (!lock.packages || (lock.lockfileVersion ?? 0) < 2) throw new Error('package-lock.json has no `packages` (lockfileVersion 2 or later): npm install writes it');
  const dirs: string[] = [];
  for (const [key, p] of Object.entries(lock.packages)) {
    if (!key.startsWith('node_modules/') || p.dev === true) continue;
    if (p.link === true) throw new Error(`${key} is a link (a workspace or file: dependency): not supported in the image`);
    const dir = path.join(root, key);
    let installed: string | undefined;
    try {
      installed = (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version?: string }).version;
    } catch {
      if (p.optional === true) continue;
      throw new Error(`${key} is locked but not installed: run npm ci`);
    }
    if (installed !== p.version) throw new Error(`${key} is ${installed} but package-lock.json locks ${p.version}: run npm ci`);
    dirs.push(dir);
  }
  if (dirs.length === 0) throw new Error('package-lock.json locks no production packages');
  return dirs.sort();
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
