// One image layer, written with tar-stream and gzip so that the same entries give the same bytes: entries in
// path order, one fixed mtime, numeric owners with no user or group names, fixed modes, no atime or ctime (a
// ustar header has neither), and a gzip stream whose header carries no time or file name (zlib writes
// mtime 0) at a fixed level. Streams: files go from disk through the tar and gzip to disk.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar, { type Header } from 'tar-stream';
import { complete, type Entry, ROOT_OWNER } from './entries.ts';

export const GZIP_LEVEL = 6;

export interface LayerBlob {
  /** sha256 of the gzip stream: the layer's descriptor digest. */
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar: the config's rootfs.diff_ids entry. */
  diffId: string;
  uncompressedSize: number;
  file: string;
  entries: number;
}

/** A pass-through that hashes and counts what flows through it. */
function tap(hash: Hash, count: { bytes: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      count.bytes += chunk.length;
      done(null, chunk);
    },
  });
}

function header(e: Entry, mtime: Date): Partial<Header> & Pick<Header, 'name'> {
  const name = e.path.slice(1) + (e.kind === 'dir' ? '/' : '');
  const owner = { uid: e.uid ?? ROOT_OWNER.uid, gid: e.gid ?? ROOT_OWNER.gid, uname: '', gname: '' };
  switch (e.kind) {
    case 'dir':
      return { name, type: 'directory', mode: e.mode, mtime, ...owner };
    case 'symlink':
      return { name, type: 'symlink', linkname: e.target, mode: 0o777, mtime, ...owner };
    case 'file':
      return { name, type: 'file', mode: e.mode, size: e.size, mtime, ...owner };
    case 'data':
      return { name, type: 'file', mode: e.mode, size: e.data.length, mtime, ...owner };
  }
}

async function add(pack: tar.Pack, e: Entry, mtime: Date): Promise<void> {
  const h = header(e, mtime);
  if (e.kind === 'file') {
    await pipeline(createReadStream(e.source), pack.entry(h));
    return;
  }
  const done = (resolve: () => void, reject: (err: Error) => void) => (err?: Error | null) => (err ? reject(err) : resolve());
  await new Promise<void>((resolve, reject) => {
    if (e.kind === 'data') pack.entry(h, e.data, done(resolve, reject));
    else pack.entry(h, done(resolve, reject));
  });
}

/**
 * Runs `feed` into `pack`, finalises it, and waits for `written` (the pipeline draining it): a failing feed
 * destroys the pack so the pipeline ends too, and the feed's error wins over the pipeline's echo of it.
 */
export async function feedPack(pack: tar.Pack, written: Promise<void>, feed: () => Promise<void>): Promise<void> {
  const fed = (async () => {
    await feed();
    pack.finalize();
  })().catch((err: Error) => {
    pack.destroy(err);
    throw err;
  });
  const [w, f] = await Promise.allSettled([written, fed]);
  if (f.status === 'rejected') throw f.reason;
  if (w.status === 'rejected') throw w.reason;
}

/** Writes the entries (parents added, sorted) as a gzipped tar to `file`. `epoch`: seconds, every entry's mtime. */
export async function writeLayer(entries: Iterable<Entry>, file: string, epoch: number): Promise<LayerBlob> {
  const list = complete(entries);
  const mtime = new Date(epoch * 1000);
  const pack = tar.pack();
  const diff = createHash('sha256');
  const compressed = createHash('sha256');
  const raw = { bytes: 0 };
  const gz = { bytes: 0 };
  const written = pipeline(pack, tap(diff, raw), createGzip({ level: GZIP_LEVEL }), tap(compressed, gz), createWriteStream(file));
  await feedPack(pack, written, async () => {
    for (const e of list) await add(pack, e, mtime);
  });
  return {
    digest: `sha256:${compressed.digest('hex')}`,
    size: gz.bytes,
    diffId: `sha256:${diff.digest('hex')}`,
    uncompressedSize: raw.bytes,
    file,
    entries: list.length,
  };
}
