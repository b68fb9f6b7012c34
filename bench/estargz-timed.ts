// One command measured by GNU time (Debian package `time`): wall seconds, user+system CPU seconds and the
// peak resident set of the largest process it ran (the kernel's ru_maxrss), the same way for berth's
// converter and for ctr-remote.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const GNU_TIME = '/usr/bin/time';

export interface Timed {
  wallSeconds: number;
  cpuSeconds: number;
  maxRssBytes: number;
  stdout: string;
}

export async function timed(cmd: string, args: readonly string[], o: { env?: NodeJS.ProcessEnv; scratch: string; timeoutMs?: number }): Promise<Timed> {
  if (!existsSync(GNU_TIME)) throw new Error(`${GNU_TIME} missing: apt-get install -y time`);
  const report = path.join(o.scratch, `time-${process.pid}-${Date.now()}.txt`);
  let stdout: string;
  try {
    ({ stdout } = await run(GNU_TIME, ['-o', report, '-f', '%e %U %S %M', cmd, ...args], { env: o.env ?? process.env, timeout: o.timeoutMs ?? 1_800_000, maxBuffer: 16 << 20 }));
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.message.split('\n')[0]}\n${e.stderr ?? ''}`);
  }
  // The last line: GNU time writes "Command exited with non-zero status" before it when there is one.
  const line = (await readFile(report, 'utf8')).trim().split('\n').pop() ?? '';
  await rm(report, { force: true });
  const [wall, user, sys, rssKiB] = line.split(' ').map(Number);
  if (![wall, user, sys, rssKiB].every((v) => Number.isFinite(v))) throw new Error(`GNU time said ${JSON.stringify(line)}`);
  return { wallSeconds: wall!, cpuSeconds: user! + sys!, maxRssBytes: rssKiB! * 1024, stdout };
}
