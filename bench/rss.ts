// Resident memory (sampled from /proc/PID/status while a test runs) and CPU time (/proc/PID/stat) of a
// server's processes.
import { readFileSync } from 'node:fs';

/** VmRSS (or another Vm* field) of one process in bytes; 0 when it is gone. */
export function procStatusBytes(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export interface RssSample {
  /** ms since start */
  t: number;
  bytes: number;
}

export interface RssSampler {
  stop(): RssSample[];
}

/** Samples the summed VmRSS of `pids()` every `everyMs` until stop(). */
export function sampleRss(pids: () => number[], everyMs = 50): RssSampler {
  const started = performance.now();
  const samples: RssSample[] = [];
  const take = (): void => {
    const bytes = pids().reduce((sum, pid) => sum + procStatusBytes(pid), 0);
    samples.push({ t: performance.now() - started, bytes });
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

export const peakOf = (samples: readonly RssSample[]): number => samples.reduce((m, s) => Math.max(m, s.bytes), 0);

/** Linux reports CPU time in USER_HZ ticks, 100 per second on every architecture the bench runs on. */
const USER_HZ = 100;

/** User + system CPU seconds the processes have used so far (children they waited for not included). */
export function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15 of the line)
    } catch {
      // gone
    }
  }
  return ticks / USER_HZ;
}
