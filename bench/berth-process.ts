// berth as the bench runs it, as `npm start` does: the bundle `node dist/berth.mjs serve --config FILE`, berth's default settings
// except a loopback listen address, a temp storage dir and the bench upstream as docker.io.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { type ManagedProcess, startProcess } from '../test/support/process.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

export interface BerthConfigInput {
  port: number;
  storage: string;
  upstreamUrl: string;
  /** More configuration (e.g. `bandwidth`), merged over the defaults. */
  extra?: Record<string, unknown>;
}

export async function writeBerthConfig(file: string, c: BerthConfigInput): Promise<void> {
  const config = {
    listen: `127.0.0.1:${c.port}`,
    storage: { path: c.storage },
    upstreams: [{ host: 'docker.io', url: c.upstreamUrl }],
    log: { level: 'info' },
    ...c.extra,
  };
  await writeFile(file, stringify(config));
}

export function spawnBerth(configFile: string, logFile: string): ManagedProcess {
  return startProcess('berth', process.execPath, ['--enable-source-maps', path.join(ROOT, 'dist/berth.mjs'), 'serve', '--config', configFile], {
    logFile,
    cwd: ROOT,
    // Loopback only: no proxy may carry the upstream traffic anywhere.
    // The glibc settings `npm start` uses (README: Running): fewer arenas, and read buffers always mmapped so
    // freed ones go back to the OS instead of staying resident.
    env: { ...process.env, MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072', HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '' },
  });
}
