// Real layer shapes for the eStargz converter's tests: a directory tree made on disk (many small files,
// hard links, symlinks, empty files, a big file, xattrs, a long name, odd modes, owners, devices, a fifo,
// whiteouts) and archived by GNU tar, gzip'd or not, as image builders do; and an independent reader
// (tar-stream) that summarises a tar file for file, to compare a converted layer with its source.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, chown, link, mkdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';

export interface TreeOptions {
  /** Small files spread over directories of 100 (default 3000). */
  smallFiles?: number;
  /** Size of `big/blob.bin`, half pseudo-random and half text per MiB (default none). */
  bigFileBytes?: number;
}

/** A file's content from its index: text of varying length, so the layer compresses like a real one. */
const smallContent = (i: number): string => `file ${i}\n${'lorem ipsum dolor sit amet '.repeat(i % 40)}${i % 7 === 0 ? '\0binary\xff' : ''}\n`;

/** Writes `bytes` of deterministic, half-compressible data to `file`, a MiB at a time. */
export async function writeBigFile(file: string, bytes: number): Promise<void> {
  let x = 0x9e3779b9;
  const block = 1 << 20;
  const text = Buffer.from('the quick brown fox jumps over the lazy dog 0123456789\n'.repeat(Math.ceil(block / 2 / 55))).subarray(0, block / 2);
  async function* blocks() {
    for (let at = 0; at < bytes; at += block) {
      const b = Buffer.allocUnsafe(block);
      for (let i = 0; i < block / 2; i += 4) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        b.writeInt32LE(x | 0, i);
      }
      text.copy(b, block / 2);
      yield b.subarray(0, Math.min(block, bytes - at));
    }
  }
  await pipeline(Readable.from(blocks()), createWriteStream(file));
}

/** Builds the tree under `root` (which must not exist). Needs root (chown, mknod) and python3 (setxattr). */
export async function buildTree(root: string, opts: TreeOptions = {}): Promise<void> {
  const small = opts.smallFiles ?? 3000;
  await mkdir(root, { recursive: true });
  for (let i = 0; i < small; i++) {
    const dir = path.join(root, 'usr/share/small', `d${String(Math.floor(i / 100)).padStart(2, '0')}`);
    if (i % 100 === 0) await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, `f${String(i).padStart(4, '0')}.txt`), smallContent(i));
  }
  await mkdir(path.join(root, 'etc'), { recursive: true });
  await writeFile(path.join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
  await mkdir(path.join(root, 'empty'));
  await writeFile(path.join(root, 'empty/one'), '');
  await writeFile(path.join(root, 'empty/two'), '');
  await mkdir(path.join(root, 'links'));
  await writeFile(path.join(root, 'links/target.txt'), 'the target of two hard links\n');
  await link(path.join(root, 'links/target.txt'), path.join(root, 'links/hard1'));
  await link(path.join(root, 'links/target.txt'), path.join(root, 'links/hard2'));
  await symlink('target.txt', path.join(root, 'links/sym-rel'));
  await symlink('../etc/passwd', path.join(root, 'links/sym-up'));
  await symlink('/etc/passwd', path.join(root, 'links/sym-abs'));
  await symlink('nowhere', path.join(root, 'links/dangling'));
  const long = path.join(root, 'deep', 'a-directory-name-that-is-rather-long-0123456789', 'and-another-long-directory-name-abcdefghijklmnopqrstuvwxyz');
  await mkdir(long, { recursive: true });
  await writeFile(path.join(long, 'a-file-whose-full-path-is-well-over-one-hundred-characters-long.txt'), 'long name\n');
  await mkdir(path.join(root, 'odd'));
  await writeFile(path.join(root, 'odd/setuid'), '#!/bin/sh\n');
  await chmod(path.join(root, 'odd/setuid'), 0o4755);
  await writeFile(path.join(root, 'odd/private'), 'secret\n');
  await chmod(path.join(root, 'odd/private'), 0o600);
  await mkdir(path.join(root, 'odd/sticky'));
  await chmod(path.join(root, 'odd/sticky'), 0o1777);
  await mkdir(path.join(root, 'odd/no-access'));
  await chmod(path.join(root, 'odd/no-access'), 0o000);
  await writeFile(path.join(root, 'odd/owned'), 'owned by 1000\n');
  await chown(path.join(root, 'odd/owned'), 1000, 1000);
  await writeFile(path.join(root, 'odd/nobody'), 'owned by nobody\n');
  await chown(path.join(root, 'odd/nobody'), 65534, 65534);
  execFileSync('mknod', [path.join(root, 'odd/null'), 'c', '1', '3']);
  execFileSync('mknod', [path.join(root, 'odd/loop9'), 'b', '7', '9']);
  execFileSync('mkfifo', [path.join(root, 'odd/fifo')]);
  await writeFile(path.join(root, 'odd/ping'), 'a binary with a file capability\n');
  // security.capability (VFS_CAP_REVISION_2, cap_net_raw permitted+effective) and a user xattr with a NUL.
  execFileSync('python3', [
    '-c',
    'import os,sys; os.setxattr(sys.argv[1], "security.capability", bytes.fromhex("0100000200200000000000000000000000000000")); os.setxattr(sys.argv[1], "user.berth", b"v\\x00al")',
    path.join(root, 'odd/ping'),
  ]);
  await mkdir(path.join(root, 'wh/opaque'), { recursive: true });
  await writeFile(path.join(root, 'wh/.wh.removed'), '');
  await writeFile(path.join(root, 'wh/opaque/.wh..wh..opq'), '');
  if (opts.bigFileBytes) {
    await mkdir(path.join(root, 'big'));
    await writeBigFile(path.join(root, 'big/blob.bin'), opts.bigFileBytes);
  }
}

export interface BuiltLayer {
  path: string;
  compression: 'gzip' | 'none';
  /** sha256 of the file as it is, and of the uncompressed tar. */
  digest: string;
  diffId: string;
  size: number;
}

const sha256File = async (file: string, gunzip = false): Promise<{ digest: string; size: number }> => {
  const h = createHash('sha256');
  let size = 0;
  const src = createReadStream(file);
  for await (const b of gunzip ? src.pipe(zlib.createGunzip()) : src) {
    h.update(b as Buffer);
    size += (b as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
};

/**
 * Archives the tree with GNU tar: `gnu` format with `./` names (tar -C root .) or `posix` (pax) with
 * bare names, both with xattrs, sorted, numeric owners kept with their names.
 */
export async function tarTree(root: string, out: string, opts: { gzip: boolean; format: 'gnu' | 'posix' }): Promise<BuiltLayer> {
  const tarFile = opts.gzip ? `${out}.tmp.tar` : out;
  const names = opts.format === 'gnu' ? ['.'] : execFileSync('ls', ['-A', root], { encoding: 'utf8' }).split('\n').filter(Boolean);
  execFileSync('tar', [`--format=${opts.format}`, '--xattrs', '--xattrs-include=*', '--sort=name', '--mtime=2024-05-01 12:00:00', '-C', root, '-cf', tarFile, ...names]);
  if (opts.gzip) {
    await pipeline(createReadStream(tarFile), zlib.createGzip({ level: 6 }), createWriteStream(out));
    execFileSync('rm', ['-f', tarFile]);
  }
  const { digest, size } = await sha256File(out);
  const diffId = opts.gzip ? (await sha256File(out, true)).digest : digest;
  return { path: out, compression: opts.gzip ? 'gzip' : 'none', digest, diffId, size };
}

/** One tar entry as an independent reader (tar-stream) sees it. */
export interface EntrySummary {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  xattrs: Record<string, string>;
  size: number;
  sha256: string;
}

/** Every entry of a tar stream (uncompressed), contents by sha256, nothing held but the summaries. */
export async function summariseTar(stream: AsyncIterable<Buffer> | Readable): Promise<EntrySummary[]> {
  const extract = tar.extract();
  const out: EntrySummary[] = [];
  extract.on('entry', (h, body, next) => {
    const hash = createHash('sha256');
    let size = 0;
    body.on('data', (b) => {
      hash.update(b as Buffer);
      size += (b as Buffer).length;
    });
    body.on('end', () => {
      const xattrs: Record<string, string> = {};
      for (const [k, v] of Object.entries(h.pax ?? {})) if (k.startsWith('SCHILY.xattr.')) xattrs[k] = Buffer.from(v, 'utf8').toString('base64');
      out.push({
        name: h.name,
        type: h.type ?? 'file',
        mode: h.mode ?? 0,
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
        uname: h.uname ?? '',
        gname: h.gname ?? '',
        mtime: Math.round((h.mtime?.getTime() ?? 0) / 1000),
        linkname: h.linkname ?? '',
        devmajor: h.devmajor ?? 0,
        devminor: h.devminor ?? 0,
        xattrs,
        size,
        sha256: hash.digest('hex'),
      });
      next();
    });
  });
  await pipeline(Readable.from(stream), extract as unknown as Writable);
  return out;
}

/** One hand-made tar header block (ustar), for hostile layers no tar tool would write. */
export function rawHeader(f: { name: string; type?: string; size?: number; sizeField?: Buffer; linkname?: string; mode?: number }): Buffer {
  const h = Buffer.alloc(512);
  const octal = (v: number, width: number) => `${v.toString(8).padStart(width - 1, '0')}\0`;
  h.write(f.name, 0, 100, 'latin1');
  h.write(octal(f.mode ?? 0o644, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  if (f.sizeField) f.sizeField.copy(h, 124, 0, 12);
  else h.write(octal(f.size ?? 0, 12), 124);
  h.write(octal(0, 12), 136);
  h.write('        ', 148);
  h.write(f.type ?? '0', 156);
  h.write(f.linkname ?? '', 157, 100, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}

/** A PAX `x` header carrying `records`, to precede an entry. */
export function paxHeader(records: Record<string, string | Buffer>): Buffer {
  const body = Buffer.concat(
    Object.entries(records).map(([k, v]) => {
      const rest = Buffer.concat([Buffer.from(` ${k}=`), Buffer.from(v), Buffer.from('\n')]);
      let len = rest.length + 1;
      while (String(len).length + rest.length > len) len++;
      return Buffer.concat([Buffer.from(String(len)), rest]);
    }),
  );
  return Buffer.concat([rawHeader({ name: 'PaxHeaders/x', type: 'x', size: body.length }), body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

/** A tar of these blocks (headers and padded payloads) and the end-of-archive blocks. */
export function tarOf(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, Buffer.alloc(1024)]);
}

/** A file entry: header and padded content. */
export function fileEntry(name: string, content: string | Buffer): Buffer {
  const b = Buffer.from(content);
  return Buffer.concat([rawHeader({ name, size: b.length }), b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
}
