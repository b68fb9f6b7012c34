// The programs the bench drives. wrk (Debian package `wrk`) is installed with apt-get when missing and
// running as root (so is anything else missing); the others come from .ci/run's package list.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function has(cmd: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

const PACKAGES: Record<string, string> = {
  wrk: 'wrk',
  ab: 'apache2-utils',
  nginx: 'nginx',
  'docker-registry': 'docker-registry',
  skopeo: 'skopeo',
  curl: 'curl',
  // The cluster figure hashes every client's body with it (sha256sum has no SHA-NI: 4x the CPU).
  openssl: 'openssl',
};

/** Makes sure every tool is on PATH; installs the missing ones from Debian when root, else says how. */
export async function ensureTools(): Promise<void> {
  const missing: string[] = [];
  for (const cmd of Object.keys(PACKAGES)) if (!(await has(cmd))) missing.push(cmd);
  if (missing.length === 0) return;
  const pkgs = missing.map((c) => PACKAGES[c]!);
  if (process.getuid?.() !== 0) {
    throw new Error(`missing ${missing.join(', ')}: install with  apt-get install -y ${pkgs.join(' ')}`);
  }
  console.log(`installing ${pkgs.join(' ')} (apt-get)…`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    await run('apt-get', ['install', '-y', '-qq', ...pkgs], { env, maxBuffer: 64 << 20 });
  } catch {
    await run('apt-get', ['update', '-qq'], { env, maxBuffer: 64 << 20 });
    await run('apt-get', ['install', '-y', '-qq', ...pkgs], { env, maxBuffer: 64 << 20 });
  }
  for (const cmd of missing) if (!(await has(cmd))) throw new Error(`${cmd} still missing after apt-get install`);
}
