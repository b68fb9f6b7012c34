// What the figures were measured on: cores, memory, CPU model and the versions of every program involved.
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface MachineInfo {
  cores: number;
  memoryGiB: number;
  cpuModel: string;
  kernel: string;
  /** 1-minute load average when the bench started: other work competes for the 2 cores. */
  loadAtStart: number;
  versions: Record<string, string>;
  berthCommit: string;
  date: string;
}

async function firstLine(cmd: string, args: string[], pick: (out: string) => string = (s) => s): Promise<string> {
  let out: string;
  try {
    const { stdout, stderr } = await run(cmd, args, { timeout: 10_000 });
    out = `${stdout}${stderr}`;
  } catch (err) {
    // some print their version and exit non-zero (wrk -v)
    const e = err as { stdout?: string; stderr?: string; message: string };
    out = `${e.stdout ?? ''}${e.stderr ?? ''}`;
    if (out.trim() === '') return `unavailable (${e.message.split('\n')[0]})`;
  }
  return pick(out).split('\n')[0]!.trim();
}

export async function machineInfo(): Promise<MachineInfo> {
  const root = path.resolve(import.meta.dirname, '..');
  const [registry, nginx, wrk, ab, skopeo, curl, commit, dirty] = await Promise.all([
    firstLine('docker-registry', ['--version'], (s) => s.replace(/^docker-registry github.com\/docker\/distribution /, '')),
    firstLine('nginx', ['-v'], (s) => s.replace(/^nginx version: nginx\//, '')),
    firstLine('wrk', ['-v'], (s) => s.replace(/^wrk /, '').replace(/ Copyright.*/, '')),
    firstLine('ab', ['-V'], (s) => s.replace(/^This is ApacheBench, Version /, '').replace(/ <.*/, '')),
    firstLine('skopeo', ['--version'], (s) => s.replace(/^skopeo version /, '')),
    firstLine('curl', ['--version'], (s) => s.replace(/^curl (\S+).*/, '$1')),
    firstLine('git', ['-C', root, 'rev-parse', '--short', 'HEAD']),
    firstLine('git', ['-C', root, 'status', '--porcelain', '--', 'src'], (s) => (s.trim() === '' ? 'clean' : 'modified')),
  ]);
  const cpus = os.cpus();
  return {
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    kernel: `${os.type()} ${os.release()}`,
    loadAtStart: os.loadavg()[0]!,
    versions: { node: process.version, 'docker-registry': registry, nginx, wrk, ab, skopeo, curl },
    berthCommit: `${commit}${dirty === 'modified' ? ' (src/ modified)' : ''}`,
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  };
}
