// Image layers as real gzipped tars that containerd and dockerd can unpack. Deterministic (sorted
// entries, mtime 0, uid/gid 0, no gzip timestamp): the same files give the same digest every time.
import { createHash, randomFill } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { type Blob, digestOf, type Format, MediaTypes } from './blobs.ts';

const fillRandom = (buf: Buffer): Promise<Buffer> => new Promise((resolve, reject) => randomFill(buf, (err, b) => (err ? reject(err) : resolve(b))));

/** A file's content, or a file with a mode, or a symlink (busybox applets). */
export type TarEntry = string | Buffer | { content: string | Buffer; mode?: number } | { linkTo: string };

export type LayerSpec =
  /** Paths relative to the image root (`etc/passwd`); parent directories are added. */
  | { files: Record<string, TarEntry> }
  /** One file `/random.bin` of incompressible bytes, streamed to a .tar.gz file in `dir`. */
  | { randomBytes: number; dir: string };

const EPOCH = new Date(0);
const OWNER = { uid: 0, gid: 0, uname: 'root', gname: 'root' };

export async function buildLayer(spec: LayerSpec, format: Format): Promise<Blob> {
  const mediaType = MediaTypes[format].layer;
  if ('randomBytes' in spec) return randomLayer(spec.randomBytes, spec.dir, mediaType);
  const tarBytes = await filesTar(spec.files);
  const gz = zlib.gzipSync(tarBytes, { level: 6 });
  return { digest: digestOf(gz), size: gz.length, mediaType, bytes: gz, diffId: digestOf(tarBytes) };
}

async function filesTar(files: Record<string, TarEntry>): Promise<Buffer> {
  const pack = tar.pack();
  const done = collect(pack);
  const names = Object.keys(files).map((n) => n.replace(/^\/+/, ''));
  const dirs = new Set<string>();
  for (const name of names) {
    for (let d = path.posix.dirname(name); d !== '.' && d !== '/'; d = path.posix.dirname(d)) dirs.add(d);
  }
  const entries = [...[...dirs].map((d) => ({ name: d, dir: true })), ...names.map((n) => ({ name: n, dir: false }))];
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.dir) {
      pack.entry({ name: `${e.name}/`, type: 'directory', mode: 0o755, mtime: EPOCH, ...OWNER });
      continue;
    }
    const value = files[e.name] ?? files[`/${e.name}`];
    if (value === undefined) continue;
    if (typeof value === 'object' && 'linkTo' in value) {
      pack.entry({ name: e.name, type: 'symlink', linkname: value.linkTo, mode: 0o777, mtime: EPOCH, ...OWNER });
    } else {
      const content = typeof value === 'string' || Buffer.isBuffer(value) ? value : value.content;
      const mode = typeof value === 'string' || Buffer.isBuffer(value) ? 0o644 : (value.mode ?? 0o644);
      pack.entry({ name: e.name, type: 'file', mode, mtime: EPOCH, ...OWNER }, Buffer.from(content));
    }
  }
  pack.finalize();
  return done;
}

async function collect(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/**
 * A tar holding `size` random bytes, gzipped straight to a file: never more than a few MiB in memory.
 * gzip level 0 (stored deflate blocks: still real gzip; random data would not compress anyway, and this is
 * 3x faster than level 1), so the blob is `size` plus a few KiB.
 * Both digests are computed on the way through.
 */
async function randomLayer(size: number, dir: string, mediaType: string): Promise<Blob> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `layer-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}.tar.gz`);
  const pack = tar.pack();
  const tarHash = new HashTap();
  const gzHash = new HashTap();
  const writing = pipeline(pack, tarHash, zlib.createGzip({ level: 0 }), gzHash, createWriteStream(file));
  const entry = pack.entry({ name: 'random.bin', size, mode: 0o644, mtime: EPOCH, type: 'file', ...OWNER });
  await writeRandom(entry, size);
  pack.finalize();
  await writing;
  return { digest: gzHash.digest(), size: gzHash.bytes, mediaType, path: file, diffId: tarHash.digest() };
}

// tar-stream entries are streamx writables: write/'drain'/end(cb) behave like node's, finished() does not apply.
async function writeRandom(out: NodeJS.WritableStream, size: number): Promise<void> {
  const chunk = 1 << 20;
  for (let left = size; left > 0; left -= chunk) {
    const buf = await fillRandom(Buffer.allocUnsafe(Math.min(chunk, left)));
    if (!out.write(buf)) await new Promise((resolve) => out.once('drain', resolve));
  }
  await new Promise<void>((resolve) => out.end(resolve));
}

/** Pass-through that hashes and counts what flows by. */
export class HashTap extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
  digest(): string {
    return `sha256:${this.hash.digest('hex')}`;
  }
}
