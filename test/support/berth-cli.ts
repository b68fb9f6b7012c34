// berth's operator commands as an operator runs them (`berth prewarm|export|import|ls|pin|unpin|rm|gc|hosts`),
// and what the tests of isolated sites (issue #4) check afterwards: the storage directory's blob files, OCI
// layouts and archives. Every command gets its own --config file, so the repository's config/berth.yaml
// (the public registries) is never what a test runs with.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import type { UpstreamSpec } from './berth.ts';
import { isLoopback } from './safety.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');

export interface CliResult {
  /** Exit code; null when killed (timeout). */
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * `node --import tsx src/main.ts <args>` from the repository root, stdout and stderr as pipes (not a TTY).
 * Resolves with the exit code whatever it is: tests assert on it.
 */
export function runBerth(args: string[], o: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', path.join(ROOT, 'src/main.ts'), ...args],
      {
        cwd: ROOT,
        timeout: o.timeoutMs ?? 120_000,
        maxBuffer: 32 << 20,
        // No outbound proxy from the environment, and no BERTH_* override leaking in from the caller.
        env: { ...withoutBerthEnv(process.env), HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '', ...o.env },
      },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function withoutBerthEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('BERTH_')));
}

/** Fails with everything the command printed, for assertion messages. */
export function describeRun(args: string[], r: CliResult): string {
  return `berth ${args.join(' ')} exited ${String(r.code)}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

export interface CliConfigOptions {
  storage: string;
  upstreams: UpstreamSpec[];
  offline?: boolean;
  maxSize?: string;
  tagTtl?: string;
  defaultUpstream?: string;
  listen?: string;
}

/** A berth.yaml for operator commands (loopback upstreams only). */
export async function writeCliConfig(file: string, o: CliConfigOptions): Promise<string> {
  for (const u of o.upstreams) {
    if (!isLoopback(u.url)) throw new Error(`test config must use loopback upstreams only, got ${u.url}`);
  }
  const config: Record<string, unknown> = {
    storage: { path: o.storage, ...(o.maxSize !== undefined ? { maxSize: o.maxSize } : {}) },
    upstreams: o.upstreams,
    offline: o.offline ?? false,
    retries: { attempts: 2, backoff: '50ms' },
    log: { level: 'warn' },
  };
  if (o.tagTtl !== undefined) config.tagTtl = o.tagTtl;
  if (o.defaultUpstream !== undefined) config.defaultUpstream = o.defaultUpstream;
  if (o.listen !== undefined) config.listen = o.listen;
  await writeFile(file, stringify(config));
  return file;
}

/** One row of `berth ls --json`. */
export interface LsRow {
  reference: string;
  digest: string;
  mediaType: string;
  size: number;
  complete: boolean;
  lastPulled: string | null;
  checked: string;
  pinned: boolean;
}

export async function lsJson(configFile: string): Promise<LsRow[]> {
  const args = ['ls', '--json', '--config', configFile];
  const r = await runBerth(args);
  if (r.code !== 0) throw new Error(describeRun(args, r));
  return JSON.parse(r.stdout) as LsRow[];
}

export interface BlobFile {
  /** `sha256:<hex>` from the file name. */
  digest: string;
  file: string;
  size: number;
}

/** Every file under `<storage>/blobs/`, at any depth (so a stray file is not missed). */
export async function blobFiles(storage: string): Promise<BlobFile[]> {
  const root = path.join(storage, 'blobs');
  const out: BlobFile[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push({ digest: `sha256:${e.name}`, file: p, size: (await stat(p)).size });
    }
  };
  await walk(root);
  return out;
}

/** Sum of the sizes of the files under `<storage>/blobs/`. */
export async function blobBytesOnDisk(storage: string): Promise<number> {
  return (await blobFiles(storage)).reduce((n, f) => n + f.size, 0);
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

/** Files under blobs/ that do not hash to their name (should always be empty). */
export async function unverifiedBlobFiles(storage: string): Promise<string[]> {
  const bad: string[] = [];
  for (const f of await blobFiles(storage)) {
    if (!/^sha256:[a-f0-9]{64}$/.test(f.digest) || (await sha256File(f.file)) !== f.digest) bad.push(f.file);
  }
  return bad;
}

/** The digests present under blobs/. */
export async function storedDigests(storage: string): Promise<Set<string>> {
  return new Set((await blobFiles(storage)).map((f) => f.digest));
}

/** The root descriptors of an OCI layout directory's index.json (what skopeo wrote into `oci:DIR`). */
export async function ociLayoutManifests(dir: string): Promise<Array<{ digest: string; mediaType: string; annotations?: Record<string, string> }>> {
  const index = JSON.parse(await readFile(path.join(dir, 'index.json'), 'utf8')) as {
    manifests: Array<{ digest: string; mediaType: string; annotations?: Record<string, string> }>;
  };
  return index.manifests;
}

/** One entry of a tar file, with where its data lies in the file. */
export interface TarFileEntry {
  name: string;
  type: string;
  headerOffset: number;
  dataOffset: number;
  size: number;
}

/** Lists a (ustar/pax) tar's entries by reading its headers: enough to damage or truncate one on purpose. */
export async function tarFileEntries(file: string): Promise<TarFileEntry[]> {
  const fh = await open(file, 'r');
  try {
    const { size: fileSize } = await fh.stat();
    const out: TarFileEntry[] = [];
    const header = Buffer.alloc(512);
    let pos = 0;
    let paxName: string | undefined;
    while (pos + 512 <= fileSize) {
      await fh.read(header, 0, 512, pos);
      if (header.every((b) => b === 0)) break;
      const field = (o: number, n: number) =>
        header
          .subarray(o, o + n)
          .toString('utf8')
          .replace(/\0.*$/s, '');
      const size = parseInt(field(124, 12).trim() || '0', 8);
      const type = field(156, 1) || '0';
      const prefix = header.subarray(257, 263).toString('latin1').startsWith('ustar') ? field(345, 155) : '';
      let name = prefix ? `${prefix}/${field(0, 100)}` : field(0, 100);
      const dataOffset = pos + 512;
      if (type === 'x') {
        const pax = Buffer.alloc(size);
        await fh.read(pax, 0, size, dataOffset);
        paxName = /\d+ path=([^\n]*)\n/.exec(pax.toString('utf8'))?.[1];
      } else {
        if (paxName !== undefined) name = paxName;
        paxName = undefined;
        out.push({ name, type, headerOffset: pos, dataOffset, size });
      }
      pos = dataOffset + Math.ceil(size / 512) * 512;
    }
    return out;
  } finally {
    await fh.close();
  }
}

/** Flips every bit of one byte of a file in place. */
export async function flipByte(file: string, offset: number): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, offset);
  } finally {
    await fh.close();
  }
}

/** The data of one tar entry. */
export async function readTarEntry(file: string, entry: TarFileEntry): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(entry.size);
    await fh.read(buf, 0, entry.size, entry.dataOffset);
    return buf;
  } finally {
    await fh.close();
  }
}
