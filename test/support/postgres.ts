// A throw-away PostgreSQL 15 per test file, on 127.0.0.1, state in a temp dir: test/support/postgres.sh (a copy of
// the lab's ../shared/lab/postgres.sh) does initdb, start and stop, as user `postgres` (postgres refuses root).
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { makeTempDir, removeTempDir } from './tmp.ts';

const run = promisify(execFile);
const SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'postgres.sh');
/** The issue asks for PostgreSQL 15 (Debian 12's): pinned, so a machine with a newer one still tests 15. */
export const PG_BIN = '/usr/lib/postgresql/15/bin';
const PASSWORD = 'berth';

export interface Postgres {
  host: string;
  port: number;
  /** The `berth` role on the `berth` database. */
  url: string;
  /** A fresh database owned by `berth` (name `t_<n>` unless given); its URL. */
  createDatabase(name?: string): Promise<string>;
  dropDatabase(url: string): Promise<void>;
  /** Fast shutdown (disconnects every client); the data stays. */
  stop(): Promise<void>;
  /** Starts the stopped server again on the same port and data. */
  start(): Promise<void>;
  /** SIGSTOP to the postmaster and its backends: a hung server (connections stay open, nothing answers). */
  freeze(): void;
  /** SIGCONT to what freeze() stopped. */
  thaw(): void;
  /** Stops it and removes its directory. */
  destroy(): Promise<void>;
}

// Postmasters this process started, killed (SIGQUIT: immediate shutdown) by their recorded PID if the test process
// exits without destroy() (a failed before(), a crash): pg_ctl daemonizes them, so nothing else would.
const live = new Map<string, number>();
let hooked = false;
function killLeftovers(): void {
  for (const pid of live.values()) {
    for (const sig of ['SIGCONT', 'SIGQUIT'] as const) {
      try {
        process.kill(pid, sig);
      } catch {
        // already gone
      }
    }
  }
}

/** The postmaster and the processes it forked (backends, checkpointer, ...), from /proc. */
function serverProcesses(postmaster: number): number[] {
  const pids = [postmaster];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      // /proc/PID/stat: "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === postmaster) pids.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

/** A free TCP port on 127.0.0.1 below 32768 (outgoing connections take ports from 32768 up, so never this one). */
async function lowPort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port below 32768 on 127.0.0.1');
}

/** Starts PostgreSQL 15; FAILS (never skips) when the server binaries are missing. */
export async function startPostgres(): Promise<Postgres> {
  if (!existsSync(path.join(PG_BIN, 'postgres'))) {
    throw new Error(`PostgreSQL 15 server binaries are missing (${PG_BIN}): apt-get install -y postgresql`);
  }
  const dir = await makeTempDir('pg');
  // The server runs as `postgres`: mkdtemp made the folder 0700 (root's only), and the script refuses a folder it cannot reach.
  await chmod(dir, 0o755);
  const env = { ...process.env, PG_BIN, PG_PASSWORD: PASSWORD };
  const script = async (...args: string[]) => (await run('bash', [SCRIPT, ...args], { env, timeout: 120_000 })).stdout;
  let port = 0;
  for (let attempt = 0; ; attempt++) {
    port = await lowPort();
    try {
      await script('start', dir, String(port));
      break;
    } catch (err) {
      // Another test took the port between the check and initdb: the script refused it before initdb, try another.
      if (attempt < 3 && /port \d+ is in use/.test(String((err as { stderr?: string }).stderr))) continue;
      throw new Error(`postgres.sh start failed: ${(err as { stderr?: string }).stderr ?? err}`);
    }
  }
  const pidFile = path.join(dir, 'run', 'postgres.pid0');
  const remember = () => {
    live.set(dir, Number(readFileSync(pidFile, 'utf8').trim()));
    if (!hooked) process.on('exit', killLeftovers);
    hooked = true;
  };
  remember();
  const host = '127.0.0.1';
  const urlOf = (user: string, db: string) => `postgres://${user}:${PASSWORD}@${host}:${port}/${db}`;
  // The superuser, for CREATE DATABASE (the berth role cannot).
  const admin = async <T>(sql: string): Promise<T[]> => {
    const c = new pg.Client({ connectionString: urlOf('postgres', 'postgres'), connectionTimeoutMillis: 5000 });
    await c.connect();
    try {
      return (await c.query(sql)).rows as T[];
    } finally {
      await c.end();
    }
  };
  let n = 0;
  let frozen: number[] = [];
  const thaw = () => {
    for (const pid of frozen) process.kill(pid, 'SIGCONT');
    frozen = [];
  };
  return {
    host,
    port,
    url: urlOf('berth', 'berth'),
    async createDatabase(name = `t_${process.pid}_${n++}`) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`not a plain database name: ${name}`);
      // FILE_COPY: a third faster than WAL_LOG for a near-empty template (fsync is off on this server anyway).
      await admin(`CREATE DATABASE ${name} OWNER berth STRATEGY FILE_COPY`);
      return urlOf('berth', name);
    },
    async dropDatabase(url) {
      const name = new URL(url).pathname.slice(1);
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`not a plain database name: ${name}`);
      await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
    async stop() {
      await script('stop', dir);
      live.delete(dir);
    },
    async start() {
      await script('start', dir, String(port));
      remember();
    },
    freeze() {
      const postmaster = live.get(dir);
      if (postmaster === undefined) throw new Error('freeze: the server is not running');
      frozen = serverProcesses(postmaster);
      for (const pid of frozen) process.kill(pid, 'SIGSTOP');
    },
    thaw,
    async destroy() {
      thaw();
      await script('stop', dir);
      live.delete(dir);
      await removeTempDir(dir);
    },
  };
}
