// The Node.js runtime berth runs on. The project brings it: the registry's `node` package is a dependency,
// its binary is node_modules/.bin/node, and npm scripts put node_modules/.bin first on PATH, so `npm start`,
// `npm test` and the postinstall run on it whatever Node.js ran npm. Plain JavaScript with no dependencies:
// this file also runs on an older Node.js, to say what is wrong.
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

/** The lowest major version that package.json's engines allow (`>=24` → 24). */
export function requiredMajor() {
  const m = /^>=\s*(\d+)/.exec(pkg.engines?.node ?? '');
  if (!m) throw new Error(`package.json engines.node must read ">=N", not ${JSON.stringify(pkg.engines?.node)}`);
  return Number(m[1]);
}

/** Says which Node.js this is; exits non-zero when it is older than engines allows. */
export function checkRuntime(what) {
  console.log(`berth ${what}: Node.js ${process.version} (${process.execPath})`);
  const need = requiredMajor();
  if (Number(process.versions.node.split('.')[0]) >= need) return;
  console.error(
    `berth needs Node.js ${need} or later (package.json engines: ${pkg.engines.node}). The project brings it as the \`node\` ` +
      'package: run `npm ci` first, then use the npm scripts (`npm start`, `npm test`, `npm run berth -- …`) or ' +
      'node_modules/.bin/node, not the Node.js on PATH.',
  );
  process.exit(1);
}
