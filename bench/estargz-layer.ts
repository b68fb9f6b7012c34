// The layer the eStargz figure converts: an ordinary gzip layer (tar.gz, gzip level 6 as `docker build`
// writes) of `totalBytes` of files shaped like a real image's — many small files, some of a few MB, a few
// large ones — and content that compresses about as real binaries and text do (half random, half text),
// plus one small file to read lazily. Streamed to a file: memory stays flat whatever the size.
import { randomFillSync } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { type Blob, MediaTypes } from '../test/support/blobs.ts';
import { HashTap } from '../test/support/layer.ts';

export const HELLO_PATH = 'etc/bench/hello.txt';

export interface MixedLayer extends Blob {
  path: string;
  diffId: string;
  /** Bytes of the uncompressed tar. */
  tarBytes: number;
  files: number;
}

const EPOCH = new Date(0);
const OWNER = { uid: 0, gid: 0, uname: 'root', gname: 'root' };
const TEXT = Buffer.from(
  'GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36. Copyright (C) 2022 Free Software Foundation, Inc.\n' + 'usage: %s [-h] [--verbose] [--config FILE] <command> [args...]\n',
);

/** File sizes in a repeating round of 47 files (~27 MB): 40 small (1–64 KiB), 6 medium (256 KiB–2 MiB), one of 20 MiB. */
const PATTERN = [...Array.from({ length: 40 }, (_, i) => (1 << 10) << (i % 7)), ...Array.from({ length: 6 }, (_, i) => (256 << 10) << (i % 4)), 20 << 20];

export async function buildMixedLayer(dir: string, totalBytes: number, hello: string): Promise<MixedLayer> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `mixed-${process.pid}-${Date.now()}.tar.gz`);
  const pack = tar.pack();
  const tarTap = new HashTap();
  const gzTap = new HashTap();
  const writing = pipeline(pack, tarTap, zlib.createGzip({ level: 6 }), gzTap, createWriteStream(file));
  let files = 0;
  const add = async (name: string, size: number): Promise<void> => {
    const entry = pack.entry({ name, size, mode: 0o644, mtime: EPOCH, type: 'file', ...OWNER });
    await writeContent(entry, size, files);
    files++;
  };
  pack.entry({ name: 'etc/bench/', type: 'directory', mode: 0o755, mtime: EPOCH, ...OWNER });
  pack.entry({ name: HELLO_PATH, mode: 0o644, mtime: EPOCH, ...OWNER }, Buffer.from(hello));
  let written = 0;
  for (let i = 0; written < totalBytes; i++) {
    const size = Math.min(PATTERN[i % PATTERN.length]!, totalBytes - written);
    if (i % 100 === 0) pack.entry({ name: `usr/share/bench/d${i / 100}/`, type: 'directory', mode: 0o755, mtime: EPOCH, ...OWNER });
    await add(`usr/share/bench/d${Math.floor(i / 100)}/f${i}.bin`, size);
    written += size;
  }
  pack.finalize();
  await writing;
  return { digest: gzTap.digest(), size: gzTap.bytes, mediaType: MediaTypes.oci.layer, path: file, diffId: tarTap.digest(), tarBytes: tarTap.bytes, files };
}

/** Alternating 64 KiB blocks of random bytes and text: compresses to about half, like a mix of binaries and text. */
async function writeContent(out: NodeJS.WritableStream, size: number, seed: number): Promise<void> {
  const BLOCK = 64 << 10;
  const text = Buffer.alloc(BLOCK);
  for (let o = 0; o < BLOCK; o += TEXT.length) TEXT.copy(text, o);
  for (let at = 0, n = seed; at < size; at += BLOCK, n++) {
    const len = Math.min(BLOCK, size - at);
    const buf = n % 2 === 0 ? randomFillSync(Buffer.allocUnsafe(len)) : text.subarray(0, len);
    if (!out.write(buf)) await new Promise((resolve) => out.once('drain', resolve));
  }
  await new Promise<void>((resolve) => out.end(resolve));
}
