// Child processes owned by a test: started by handle, logged to a file, stopped by PID only.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ManagedProcess {
  name: string;
  pid: number;
  logFile: string;
  /** Exit code, or null when the process died from a signal. Never rejects. */
  exited: Promise<number | null>;
  /** True until `exited` has settled. */
  readonly running: boolean;
  /** Sends `signal` (SIGTERM), waits up to 5 s, then SIGKILL. Safe to call twice or after exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface StartProcessOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** stdout and stderr are appended here by the child itself (no pipe through this process). */
  logFile: string;
}

// Processes still running, killed if this test process exits without stopping them (a failed
// assertion before stop(), a crash). Keyed by PID: we only ever signal PIDs we spawned.
const live = new Map<number, string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: process.kill is.
  process.on('exit', () => {
    for (const pid of live.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export function startProcess(name: string, cmd: string, args: readonly string[], opts: StartProcessOptions): ManagedProcess {
  installExitHook();
  const fd = openSync(opts.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', fd, fd],
    });
  } finally {
    closeSync(fd); // the child has its own copy
  }
  let running = true;
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    // spawn failure (ENOENT): 'exit' never comes
    child.once('error', () => resolve(null));
  }).then((code) => {
    running = false;
    if (child.pid !== undefined) live.delete(child.pid);
    return code;
  });
  const pid = child.pid;
  if (pid === undefined) {
    throw new Error(`startProcess ${name}: could not spawn ${cmd} (see ${opts.logFile})`);
  }
  live.set(pid, name);
  // A test that forgets stop() must not hang its file until the runner's timeout: an unref'd child does
  // not keep this process alive, and the exit hook kills it when this process ends.
  child.unref();

  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    if (!running) return;
    try {
      process.kill(pid, signal);
    } catch {
      // exited between the check and the kill
    }
    // The timer is cancelled once the process is gone, so it cannot hold this process open for 5 s.
    const timer = new AbortController();
    const timedOut = await Promise.race([exited.then(() => false), sleep(5_000, true, { signal: timer.signal }).catch(() => false)]);
    timer.abort();
    if (timedOut && running) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
      await exited;
    }
  };

  return {
    name,
    pid,
    logFile: opts.logFile,
    exited,
    get running() {
      return running;
    },
    stop,
  };
}

/** PIDs whose command line mentions `needle` (e.g. a temp dir): for daemons' own children (shims). */
export async function pidsMentioning(needle: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    try {
      const cmdline = (await readFile(`/proc/${entry}/cmdline`)).toString('utf8').replaceAll('\0', ' ');
      if (cmdline.includes(needle)) found.push(pid);
    } catch {
      // exited while we looked
    }
  }
  return found;
}

/** All descendants of the given PIDs (children first found, then theirs), from /proc/<pid>/stat ppid. */
export async function descendantsOf(roots: readonly number[]): Promise<number[]> {
  const parentOf = new Map<number, number>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parentOf.set(Number(entry), ppid);
    } catch {
      // exited while we looked
    }
  }
  const found = new Set<number>();
  let frontier = new Set(roots);
  while (frontier.size > 0) {
    const next = new Set<number>();
    for (const [pid, ppid] of parentOf) if (frontier.has(ppid) && !found.has(pid)) next.add(pid);
    for (const pid of next) found.add(pid);
    frontier = next;
  }
  return [...found];
}

/** SIGKILL each PID (found by pidsMentioning) and wait until it is gone, up to 5 s. */
export async function killPids(pids: readonly number[]): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  const deadline = Date.now() + 5_000;
  for (const pid of pids) {
    while (Date.now() < deadline && isAlive(pid)) await sleep(20);
  }
}

// A killed daemon child is reparented to init and may stay a zombie for a moment: count that as gone.
function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}
