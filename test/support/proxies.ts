// Real outbound forward proxies (squid, tinyproxy from Debian) on 127.0.0.1 with private configs and
// access logs, as in lab/07-outbound-proxies.sh. Both only accept loopback clients; squid only forwards
// to loopback destinations. Each can require basic proxy authentication.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chown, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { freePort } from './ports.ts';
import { type ManagedProcess, startProcess } from './process.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

const run = promisify(execFile);

export interface ProxyCredentials {
  username: string;
  password: string;
}

/** One request a proxy logged: a forwarded `GET http://…` or a `CONNECT host:port` tunnel. */
export interface ProxyRequest {
  method: string;
  /** Absolute URL for forwarded requests, `host:port` for CONNECT. */
  target: string;
  /** squid only: the HTTP status it answered (407 when authentication failed), and bytes sent to the client. */
  status?: number;
  bytes?: number;
  /** squid only: the authenticated user, or '-'. */
  user?: string;
}

export interface ForwardProxy {
  kind: 'squid' | 'tinyproxy';
  port: number;
  /** `http://127.0.0.1:PORT`, without credentials. */
  url: string;
  /** `http://user:pass@127.0.0.1:PORT` when the proxy requires authentication, else `url`. */
  authUrl: string;
  logFile: string;
  /**
   * Requests logged so far. squid logs a line when a request (or a CONNECT tunnel) is finished;
   * tinyproxy logs the request line when it arrives.
   */
  requests(): ProxyRequest[];
  /** Polls the log until `until` holds. */
  waitFor(until: (r: ProxyRequest[]) => boolean, timeoutMs?: number): Promise<ProxyRequest[]>;
  stop(): Promise<void>;
}

export async function startSquid(opts: { auth?: ProxyCredentials } = {}): Promise<ForwardProxy> {
  const dir = await makeTempDir('squid');
  // squid drops to user `proxy`: it must be able to write its logs and pid file here.
  await chown(dir, uidOf('proxy'), gidOf('proxy'));
  const logFile = path.join(dir, 'access.log');
  let passwd: string | undefined;
  if (opts.auth) {
    passwd = path.join(dir, 'passwd');
    const { stdout } = await run('htpasswd', ['-bn', opts.auth.username, opts.auth.password]);
    await writeFile(passwd, stdout);
    await chown(passwd, uidOf('proxy'), gidOf('proxy'));
  }
  return launch('squid', dir, logFile, opts.auth, async (port) => {
    const conf = path.join(dir, 'squid.conf');
    const lines = [
      `http_port 127.0.0.1:${port}`,
      'visible_hostname berth-test-squid',
      `pid_filename ${dir}/squid.pid`,
      `access_log stdio:${logFile} squid`,
      `cache_log ${dir}/cache.log`,
      'cache_store_log none',
      'cache deny all',
      'cache_mem 8 MB',
      `coredump_dir ${dir}`,
      // names never leave the box: only /etc/hosts, and a resolver on loopback
      'dns_nameservers 127.0.0.1',
      'hosts_file /etc/hosts',
      // stop at once on SIGTERM instead of draining connections for 30 s
      'shutdown_lifetime 0 seconds',
      'acl localsrc src 127.0.0.1/32 ::1',
      'acl localdst dst 127.0.0.1/32 ::1',
      'acl CONNECT method CONNECT',
    ];
    if (passwd !== undefined) {
      lines.push(
        `auth_param basic program /usr/lib/squid/basic_ncsa_auth ${passwd}`,
        'auth_param basic realm berth-test-proxy',
        'acl authed proxy_auth REQUIRED',
        'http_access allow localsrc localdst authed',
      );
    } else {
      lines.push('http_access allow localsrc localdst');
    }
    lines.push('http_access deny all');
    await writeFile(conf, `${lines.join('\n')}\n`);
    // -N: no daemon, no worker fork: the PID we record is squid itself.
    return startProcess('squid', 'squid', ['-N', '-f', conf], { logFile: path.join(dir, 'stdout.log') });
  });
}

export async function startTinyproxy(opts: { auth?: ProxyCredentials } = {}): Promise<ForwardProxy> {
  const dir = await makeTempDir('tinyproxy');
  await chown(dir, uidOf('nobody'), gidOf('nogroup'));
  const logFile = path.join(dir, 'tinyproxy.log');
  return launch('tinyproxy', dir, logFile, opts.auth, async (port) => {
    const conf = path.join(dir, 'tinyproxy.conf');
    const lines = [
      'User nobody',
      'Group nogroup',
      `Port ${port}`,
      'Listen 127.0.0.1',
      'Timeout 600',
      `LogFile "${logFile}"`,
      'LogLevel Connect',
      `PidFile "${dir}/tinyproxy.pid"`,
      'MaxClients 100',
      'Allow 127.0.0.1',
    ];
    if (opts.auth) lines.push(`BasicAuth ${opts.auth.username} ${opts.auth.password}`);
    await writeFile(conf, `${lines.join('\n')}\n`);
    return startProcess('tinyproxy', 'tinyproxy', ['-d', '-c', conf], { logFile: path.join(dir, 'stdout.log') });
  });
}

async function launch(kind: 'squid' | 'tinyproxy', dir: string, logFile: string, auth: ProxyCredentials | undefined, spawnOn: (port: number) => Promise<ManagedProcess>): Promise<ForwardProxy> {
  let proc: ManagedProcess | undefined;
  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    proc = await spawnOn(port);
    if (await listening(port, proc, 15_000)) break;
    await proc.stop('SIGKILL');
    if (attempt >= 3) {
      await removeTempDir(dir);
      throw new Error(`${kind} did not start listening on 127.0.0.1:${port}; see ${dir}`);
    }
  }
  const url = `http://127.0.0.1:${port}`;
  const authUrl = auth ? `http://${encodeURIComponent(auth.username)}:${encodeURIComponent(auth.password)}@127.0.0.1:${port}` : url;
  let finalText: string | undefined;
  const text = (): string => {
    if (finalText !== undefined) return finalText;
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const requests = (): ProxyRequest[] => (kind === 'squid' ? parseSquid(text()) : parseTinyproxy(text()));
  const running = proc;
  return {
    kind,
    port,
    url,
    authUrl,
    logFile,
    requests,
    async waitFor(until, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = requests();
        if (until(r)) return r;
        if (Date.now() > deadline) throw new Error(`${kind} log: condition not met in ${timeoutMs} ms; ${r.length} requests logged:\n${text().slice(-3000)}`);
        await sleep(50);
      }
    },
    async stop() {
      await running.stop();
      finalText = text();
      await removeTempDir(dir);
    },
  };
}

/** squid's native format: time elapsed client code/status bytes method URL user hierarchy type */
function parseSquid(text: string): ProxyRequest[] {
  const out: ProxyRequest[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const status = Number(f[3]!.split('/')[1]);
    out.push({ method: f[5]!, target: f[6]!, status, bytes: Number(f[4]), user: f[7]! });
  }
  return out;
}

/** tinyproxy: `CONNECT   Nov 26 15:51:18.053 [16531]: Request (file descriptor 5): GET http://… HTTP/1.1` */
function parseTinyproxy(text: string): ProxyRequest[] {
  const out: ProxyRequest[] = [];
  for (const m of text.matchAll(/Request \(file descriptor \d+\): (\S+) (\S+) HTTP\/[\d.]+/g)) {
    out.push({ method: m[1]!, target: m[2]! });
  }
  return out;
}

async function listening(port: number, proc: ManagedProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && proc.running) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return true;
    await sleep(50);
  }
  return false;
}

function uidOf(user: string): number {
  return idOf('/etc/passwd', user, 2);
}

function gidOf(group: string): number {
  return idOf('/etc/group', group, 2);
}

function idOf(file: string, name: string, field: number): number {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === name) return Number(f[field]);
  }
  throw new Error(`no ${name} in ${file}`);
}
