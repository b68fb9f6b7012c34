// The second layer: berth itself under /opt/berth, as the npm package lays it out (bin/berth.js, the bundle and
// its source map, the script bin imports, package.json it reads, the example configs) with the production
// node_modules beside it, and /etc/berth/berth.yaml: berth's defaults with the storage on the image's volume.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { dataEntry, type Entry, fileEntry } from './entries.ts';
import { productionTree } from './prod-tree.ts';
import { STORAGE_DIR } from './runtime-layer.ts';

export const APP_DIR = '/opt/berth';
export const CONFIG_FILE = '/etc/berth/berth.yaml';

/** The files of the checkout berth runs from (what package.json's `files` ships that the image runs). */
const APP_FILES = ['package.json', 'bin/berth.js', 'dist/berth.mjs', 'dist/berth.mjs.map', 'scripts/runtime.mjs'];

/**
 * config/berth.yaml (the defaults, comments kept) with `storage.path` on the volume: with no file mounted
 * over it, the image's berth behaves as berth's defaults say, storing under /var/lib/berth.
 */
export function imageConfig(root: string): string {
  const text = readFileSync(path.join(root, 'config/berth.yaml'), 'utf8');
  const re = /^(storage:\n(?:[ \t]+#.*\n)*[ \t]+path:[ \t]*)\S+/m;
  if (!re.test(text)) throw new Error('config/berth.yaml: no `storage:` / `path:` to point at the volume');
  const header = `# berth's configuration in its container image: berth's defaults (config/berth.yaml), storage on the volume\n# ${STORAGE_DIR}. Mount your own file here (Kubernetes: a ConfigMap) to change it.\n`;
  return header + text.replace(re, `$1${STORAGE_DIR}`);
}

export interface BerthLayer {
  entries: Entry[];
  /** Native addons in the tree (better-sqlite3's): the runtime layer must hold the libraries they load. */
  addons: string[];
  packages: number;
}

export function berthLayer(root: string): BerthLayer {
  const entries: Entry[] = [];
  for (const f of APP_FILES) {
    const source = path.join(root, f);
    if (!existsSync(source)) throw new Error(`${f} is missing${f.startsWith('dist/') ? ': run `npm run build` first (`npm run image` does)' : ''}`);
    entries.push(fileEntry(path.posix.join(APP_DIR, f), source));
  }
  for (const f of readdirSync(path.join(root, 'config')).sort()) {
    if (f.endsWith('.yaml')) entries.push(fileEntry(`${APP_DIR}/config/${f}`, path.join(root, 'config', f)));
  }
  const tree = productionTree(root, APP_DIR);
  if (tree.addons.length === 0) throw new Error('no native addon in the production tree: better-sqlite3 is not built (npm ci builds it)');
  entries.push(...tree.entries, dataEntry(CONFIG_FILE, imageConfig(root)));
  return { entries, addons: tree.addons, packages: tree.packages };
}
