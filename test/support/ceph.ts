// A one-node Ceph cluster with the RADOS Gateway (real S3) on 127.0.0.1, one per test file: started in `before`
// by test/support/ceph-rgw.sh (a copy of the lab's ../shared/lab/ceph-rgw.sh), stopped by the same script in
// `after`, which signals only the PIDs it recorded. Needs Debian's ceph-mon, ceph-osd, radosgw and
// ceph-common (.ci/run installs them); without them start() fails, it does not skip.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { makeTempDir, removeTempDir } from './tmp.ts';

const run = promisify(execFile);
const SCRIPT = path.join(import.meta.dirname, 'ceph-rgw.sh');

export interface CephOptions {
  /**
   * First of ten ports (S3, mon, the OSD's): a fixed block per test file, below 32768 so that no outgoing
   * connection takes one (ip_local_port_range starts there).
   */
  port: number;
  /** Store capacity: at 95% full the gateway wedges (every PUT and DELETE hangs), so size it for the file's data. */
  sizeGb?: number;
  /** memstore (default: RAM; loses data on kill -9 of the OSD) or bluestore (a sparse file). */
  store?: 'memstore' | 'bluestore';
}

export interface Ceph {
  dir: string;
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  port: number;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Stops only radosgw (the OSD and mon keep the data): S3 unreachable. */
  stopGateway(): Promise<void>;
  /**
   * Freezes radosgw (SIGSTOP): the kernel still accepts connections on its port, but nothing answers, as
   * with a wedged gateway (a full store, an overloaded host). resumeGateway() (SIGCONT) lets it go on.
   */
  pauseGateway(): Promise<void>;
  resumeGateway(): Promise<void>;
  /**
   * Every request the gateway answered so far, in order, from its own access log (beast logs one line per
   * request at debug_rgw 1, the default): what berth really sent, e.g. how many uploads of a blob.
   */
  requests(): Promise<RgwRequest[]>;
  /** Starts whatever is not running (radosgw after stopGateway: about 2 s). */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface RgwRequest {
  method: string;
  /** As sent: /<bucket>/<key>?<query> */
  path: string;
  status: number;
  /** The bytes field of the line (a PUT's body, a GET's answer). */
  bytes: number;
}

const BEAST_LINE = / beast: \S+ \S+ - \S+ \[[^\]]+\] "(\S+) (\S+) HTTP\/[\d.]+" (\d+) (\d+)/;

function exported(out: string, name: string): string {
  const m = new RegExp(`${name}=(\\S+)`).exec(out);
  if (!m) throw new Error(`ceph-rgw.sh printed no ${name}: ${out}`);
  return m[1]!;
}

/** Whether `pid` has exited (a zombie counts: PID 1 here reaps late). */
async function gone(pid: number): Promise<boolean> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const state = /^State:\s+(\S)/m.exec(status)?.[1];
  return state === undefined || state === 'Z';
}

export async function startCeph(o: CephOptions): Promise<Ceph> {
  const dir = await makeTempDir('ceph');
  const env = { ...process.env, CEPH_STORE: o.store ?? 'memstore', CEPH_SIZE_GB: String(o.sizeGb ?? 2) };
  const start = async () => (await run('bash', [SCRIPT, 'start', dir, String(o.port)], { env, timeout: 120_000 })).stdout;
  let out: string;
  try {
    out = await start();
  } catch (err) {
    await run('bash', [SCRIPT, 'stop', dir], { env }).catch(() => undefined);
    const logs = await run('bash', ['-c', `tail -n 20 "${dir}"/log/*.out "${dir}"/log/*.log 2>/dev/null`]).catch(() => ({ stdout: '' }));
    throw new Error(`could not start Ceph RGW (${(err as Error).message.trim()}); is ceph-mon/ceph-osd/radosgw/ceph-common installed?\n${logs.stdout}`);
  }
  const gatewayPid = async () => Number((await readFile(path.join(dir, 'run', 'rgw.a.pid0'), 'utf8')).trim());
  const endpoint = exported(out, 'S3_ENDPOINT');
  return {
    dir,
    endpoint,
    port: o.port,
    bucket: exported(out, 'S3_BUCKET'),
    accessKeyId: exported(out, 'AWS_ACCESS_KEY_ID'),
    secretAccessKey: exported(out, 'AWS_SECRET_ACCESS_KEY'),
    async pauseGateway() {
      process.kill(await gatewayPid(), 'SIGSTOP');
    },
    async resumeGateway() {
      process.kill(await gatewayPid(), 'SIGCONT');
    },
    async stopGateway() {
      const pid = await gatewayPid();
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 100 && !(await gone(pid)); i++) await sleep(100);
      if (!(await gone(pid))) process.kill(pid, 'SIGKILL');
    },
    async requests() {
      // A request of our own, then its line: the log is written by a thread of its own, a little after each
      // answer, so once the mark is there every line of a request answered before it is there too.
      const mark = `berth-log-mark=${randomBytes(8).toString('hex')}`;
      const logFile = path.join(dir, 'log', 'client.rgw.a.log');
      await fetch(`${endpoint}/?${mark}`).then((r) => r.arrayBuffer());
      for (let i = 0; ; i++) {
        const text = await readFile(logFile, 'utf8');
        if (text.includes(mark)) {
          const out: RgwRequest[] = [];
          for (const line of text.split('\n')) {
            const m = BEAST_LINE.exec(line);
            if (m && !m[2]!.includes(mark)) out.push({ method: m[1]!, path: m[2]!, status: Number(m[3]), bytes: Number(m[4]) });
          }
          return out;
        }
        if (i >= 100) throw new Error(`radosgw's log (${logFile}) has no line for ${mark} after 5 s`);
        await sleep(50);
      }
    },
    async start() {
      await start();
    },
    async stop() {
      // A gateway left paused by a failed test would sit on its SIGTERM until the script's SIGKILL.
      await gatewayPid()
        .then((pid) => process.kill(pid, 'SIGCONT'))
        .catch(() => undefined);
      await run('bash', [SCRIPT, 'stop', dir], { env, timeout: 120_000 });
      await removeTempDir(dir);
    },
  };
}
