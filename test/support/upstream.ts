// A real upstream registry: Debian's docker-registry (distribution 2.8) on 127.0.0.1, filesystem
// storage in a temp dir, optionally HTTPS with a self-signed certificate and htpasswd basic auth.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { type AccessEntry, accessEntries, completeLines, readCompleteLines } from './accesslog.ts';
import { freePort, waitForHttp } from './ports.ts';
import { type ManagedProcess, startProcess } from './process.ts';
import { makeTempDir, removeTempDir } from './tmp.ts';

export type { AccessEntry } from './accesslog.ts';

const run = promisify(execFile);

export interface Credentials {
  username: string;
  password: string;
}

export interface UpstreamOptions {
  tls?: boolean;
  auth?: Credentials;
}

export interface Upstream {
  /** `127.0.0.1:PORT`, as used in image references. */
  host: string;
  /** `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT` (the cert is valid for 127.0.0.1 and localhost). */
  url: string;
  port: number;
  dir: string;
  /** PEM of the self-signed certificate (it is its own CA), when tls. Named ca.crt so… */
  caFile?: string;
  /** …its directory works as skopeo --cert-dir / docker certs.d/HOST (holds only ca.crt). */
  certDir?: string;
  auth?: Credentials;
  logFile: string;
  accessLog(): AccessEntry[];
  /** Complete log lines so far: a mark for accessLogSince. */
  logLineCount(): number;
  accessLogSince(mark: number): AccessEntry[];
  /**
   * Polls the access log (lines after `since`) until `until(entries)` holds. The registry writes a
   * line only after the response body is out, so a client can finish before its line exists.
   */
  waitForAccess(until: (entries: AccessEntry[]) => boolean, opts?: { since?: number; timeoutMs?: number }): Promise<AccessEntry[]>;
  /** SIGSTOP: the port still accepts TCP (kernel backlog) but nothing answers. A hung upstream. */
  freeze(): void;
  thaw(): void;
  /** Kills the registry but keeps port and data, so restart() brings the same upstream back. */
  halt(): Promise<void>;
  restart(): Promise<void>;
  /** Kills the registry and removes its dir; the access log stays readable from memory. */
  stop(): Promise<void>;
}

export async function startUpstream(opts: UpstreamOptions = {}): Promise<Upstream> {
  const dir = await makeTempDir('upstream');
  const logFile = path.join(dir, 'registry.log');
  let caFile: string | undefined;
  let certDir: string | undefined;
  let keyFile: string | undefined;
  if (opts.tls === true) {
    certDir = path.join(dir, 'certs');
    caFile = path.join(certDir, 'ca.crt');
    keyFile = path.join(dir, 'key.pem'); // not in certDir: skopeo would want a matching client .cert
    await selfSignedCert(caFile, keyFile);
  }
  let htpasswd: string | undefined;
  if (opts.auth !== undefined) {
    htpasswd = path.join(dir, 'htpasswd');
    // distribution accepts bcrypt entries only
    const { stdout } = await run('htpasswd', ['-Bbn', opts.auth.username, opts.auth.password]);
    await writeFile(htpasswd, stdout);
  }

  let port = 0;
  let proc: ManagedProcess | undefined;
  let frozen = false;
  const scheme = opts.tls === true ? 'https' : 'http';

  const launch = async (): Promise<void> => {
    const config = path.join(dir, 'config.yml');
    await writeFile(config, registryConfig({ dir, port, certFile: caFile, keyFile, htpasswd }));
    const p = startProcess('docker-registry', 'docker-registry', ['serve', config], { logFile });
    proc = p;
    // If the port was taken meanwhile the registry exits at once: fail fast instead of waiting.
    const died = p.exited.then((code) => {
      throw new Error(`docker-registry exited (${code}) on port ${port}; see ${logFile}`);
    });
    died.catch(() => undefined); // it also rejects at a later, deliberate stop: not an unhandled rejection
    const before = existsSync(logFile) ? readCompleteLines(logFile).length : 0;
    await Promise.race([waitForHttp(`${scheme}://127.0.0.1:${port}/v2/`, { ca: caFile, timeoutMs: 10_000 }), died]);
    // The probe's own access-log line is written just after its response: wait for it, so that a mark
    // taken right after start-up never counts the probe as a test's request.
    const deadline = Date.now() + 2_000;
    while (accessEntries(readCompleteLines(logFile).slice(before)).length === 0 && Date.now() < deadline) await sleep(10);
  };

  // freePort has a race window: retry with a fresh port if the registry could not bind.
  for (let attempt = 1; ; attempt++) {
    port = await freePort();
    try {
      await launch();
      break;
    } catch (err) {
      await proc?.stop();
      if (attempt >= 3) throw err;
    }
  }

  let finalLog: string[] | undefined;
  const lines = (): string[] => finalLog ?? readCompleteLines(logFile);

  const up: Upstream = {
    host: `127.0.0.1:${port}`,
    url: `${scheme}://127.0.0.1:${port}`,
    port,
    dir,
    caFile,
    certDir,
    auth: opts.auth,
    logFile,
    accessLog: () => accessEntries(lines()),
    logLineCount: () => lines().length,
    accessLogSince: (mark) => accessEntries(lines().slice(mark)),
    async waitForAccess(until, o = {}) {
      const deadline = Date.now() + (o.timeoutMs ?? 5_000);
      for (;;) {
        const entries = up.accessLogSince(o.since ?? 0);
        if (until(entries)) return entries;
        if (Date.now() > deadline) throw new Error(`waitForAccess: condition not met; ${entries.length} entries`);
        await sleep(25);
      }
    },
    freeze() {
      if (proc?.running === true) process.kill(proc.pid, 'SIGSTOP');
      frozen = true;
    },
    thaw() {
      if (proc?.running === true) process.kill(proc.pid, 'SIGCONT');
      frozen = false;
    },
    async halt() {
      if (frozen) up.thaw(); // a stopped process would not act on SIGTERM
      await proc?.stop();
    },
    async restart() {
      await up.halt();
      await launch();
    },
    async stop() {
      await up.halt();
      if (finalLog === undefined) finalLog = completeLines(await readFile(logFile, 'utf8').catch(() => ''));
      await removeTempDir(dir);
    },
  };
  return up;
}

/** Self-signed P-256 certificate for localhost/127.0.0.1 (EC: generated in milliseconds, unlike RSA). */
async function selfSignedCert(certFile: string, keyFile: string): Promise<void> {
  await mkdir(path.dirname(certFile), { recursive: true });
  await run('openssl', [
    'req',
    '-x509',
    '-nodes',
    '-days',
    '3650',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-subj',
    '/CN=localhost',
    '-addext',
    'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1',
    '-keyout',
    keyFile,
    '-out',
    certFile,
  ]);
}

interface ConfigInput {
  dir: string;
  port: number;
  certFile: string | undefined;
  keyFile: string | undefined;
  htpasswd: string | undefined;
}

// As in lab/02-upstream.sh. A fixed http.secret silences the "no secret" warning; upload purging off so
// the registry does no background work during a test.
function registryConfig(c: ConfigInput): string {
  const lines = [
    'version: 0.1',
    'log:',
    '  level: info',
    '  formatter: text',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${path.join(c.dir, 'data')}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${c.port}`,
    '  secret: berth-test-secret',
    '  headers:',
    '    X-Content-Type-Options: [nosniff]',
  ];
  if (c.certFile !== undefined && c.keyFile !== undefined) {
    lines.push('  tls:', `    certificate: ${c.certFile}`, `    key: ${c.keyFile}`);
  }
  if (c.htpasswd !== undefined) {
    lines.push('auth:', '  htpasswd:', '    realm: berth-test', `    path: ${c.htpasswd}`);
  }
  return `${lines.join('\n')}\n`;
}
