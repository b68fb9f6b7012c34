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
}

export async function writeBerthConfig(file: string, c: BerthConfigInput): Promise<void> {
  const config = {
    listen: `127.0.0.1:${c.port}`,
    storage: { path: c.storage },
    upstreams: [{ host: 'docker.io', url: c.upstreamUrl }],
    log: { level: 'info' },
  };
  await writeFile(file, stringify(config));
}

export function spawnBerth(configFile: string, logFile: string): ManagedProcess {
  return startProcess('berth', process.execPath, ['--enable-source-maps', path.join(ROOT, 'dist/berth.mjs'), 'serve', '--config', configFile], {
    logFile,
    cwd: ROOT,
    // Loopback only: no proxy may carry the upstream traffic anywhere.
    env: { ...process.env, HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '' },
  });
}
