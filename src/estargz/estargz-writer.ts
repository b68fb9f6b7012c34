/**
 * Writes entries in eStargz layout (the estargz package's Writer.AppendTar): a new gzip member starts
 * at every chunk of a regular file's payload (that member begins with the payload bytes, which is what
 * the TOC's `offset` promises a reader), and the tar header blocks of the following entries ride in the
 * member that is open (the previous file's last chunk, with its padding). Landmarks start a member of
 * their own. The TOC and the tar end blocks form the last member, then the footer.
 *
 * Memory: one member's uncompressed bytes (≤ chunkSize plus the headers that follow) and its compressed
 * form; a run of header-only entries is cut into members of about chunkSize too.
 */
import { createHash, type Hash } from 'node:crypto';
import { type Deflate, footerBytes, gzipMember } from './gzip-member.ts';
import { BLOCK } from './tar-header.ts';
import type { TarEntry } from './tar-reader.ts';
import { LANDMARK_CONTENTS, modtime, TOC_TAR_NAME, type TocRecord, tocJson, ustarHeader } from './toc-json.ts';

/** Between 1 and max payload bytes of the current entry (the caller never asks past its size). */
export type PayloadRead = (max: number) => Promise<Buffer>;

export interface WriterResult {
  tocOffset: number;
  tocDigest: string;
  diffId: string;
  uncompressedSize: number;
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const ZEROS = Buffer.alloc(2 * BLOCK);

export class EstargzWriter {
  /** Compressed bytes emitted so far: the offset of the next member. */
  private offset = 0;
  /** The open member's uncompressed bytes, in one buffer reused member after member (no per-chunk garbage). */
  private member: Buffer;
  private pendingLength = 0;
  private readonly diff = createHash('sha256');
  private uncompressed = 0;
  private readonly toc: TocRecord[] = [];
  private readonly unames = new Map<number, string>();
  private readonly gnames = new Map<number, string>();

  constructor(
    private readonly chunkSize: number,
    private readonly deflate: Deflate,
    /** Takes ownership of the buffer (it may be transferred to another thread). */
    private readonly emit: (member: Buffer) => Promise<void>,
  ) {
    this.member = Buffer.allocUnsafeSlow(chunkSize + 4 * BLOCK);
  }

  private write(b: Buffer): void {
    if (this.pendingLength + b.length > this.member.length) {
      const bigger = Buffer.allocUnsafeSlow(Math.max(2 * this.member.length, this.pendingLength + b.length));
      this.member.copy(bigger, 0, 0, this.pendingLength);
      this.member = bigger;
    }
    b.copy(this.member, this.pendingLength);
    this.pendingLength += b.length;
    this.diff.update(b);
    this.uncompressed += b.length;
  }

  private async closeMember(): Promise<void> {
    if (this.pendingLength === 0) return;
    const data = this.member.subarray(0, this.pendingLength);
    const parts = await gzipMember(data, this.deflate);
    this.pendingLength = 0;
    for (const part of parts) {
      this.offset += part.length; // before emit: a worker's sink transfers (detaches) the buffer
      await this.emit(part);
    }
  }

  /** estargz's nameIfChanged: a user/group name is written only where it changes for that id. */
  private nameIfChanged(names: Map<number, string>, id: number, name: string): string {
    if (name === '' || names.get(id) === name) return '';
    names.set(id, name);
    return name;
  }

  async add(e: TarEntry, read: PayloadRead): Promise<void> {
    const rec: TocRecord = {
      name: e.name,
      type: e.type,
      modtime: modtime(e.mtime),
      linkName: e.linkName,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      userName: this.nameIfChanged(this.unames, e.uid, e.uname),
      groupName: this.nameIfChanged(this.gnames, e.gid, e.gname),
      devMajor: e.devMajor,
      devMinor: e.devMinor,
      xattrs: Object.fromEntries([...e.xattrs].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => [k, v.toString('base64')])),
    };
    this.write(e.header);
    if (e.type !== 'reg') {
      this.toc.push(rec);
      if (this.pendingLength >= this.chunkSize) await this.closeMember();
      return;
    }
    rec.size = e.size;
    const file = createHash('sha256');
    const first = rec;
    let chunk: TocRecord = rec;
    let written = 0;
    while (written < e.size) {
      const remain = e.size - written;
      const size = Math.min(this.chunkSize, remain);
      if (remain >= this.chunkSize) chunk.chunkSize = size; // the last chunk's size is implied (0 = to the end)
      await this.closeMember();
      chunk.offset = this.offset;
      chunk.chunkOffset = written;
      chunk.chunkDigest = await this.copyChunk(read, size, file);
      this.toc.push(chunk);
      written += size;
      chunk = { name: e.name, type: 'chunk' };
    }
    if (e.size === 0) this.toc.push(first);
    first.digest = `sha256:${file.digest('hex')}`;
    const pad = (BLOCK - (e.size % BLOCK)) % BLOCK;
    if (pad > 0) this.write(ZEROS.subarray(0, pad));
  }

  private async copyChunk(read: PayloadRead, size: number, file: Hash): Promise<string> {
    const chunk = createHash('sha256');
    let left = size;
    while (left > 0) {
      const b = await read(left);
      chunk.update(b);
      file.update(b);
      this.write(b);
      left -= b.length;
    }
    return `sha256:${chunk.digest('hex')}`;
  }

  /** `.prefetch.landmark` / `.no.prefetch.landmark`: a 1-byte file whose header starts a member of its own. */
  async addLandmark(name: string): Promise<void> {
    await this.closeMember();
    const content = Buffer.from([LANDMARK_CONTENTS]);
    const entry: TarEntry = {
      header: ustarHeader(name, 1),
      name,
      type: 'reg',
      size: 1,
      mode: 0,
      uid: 0,
      gid: 0,
      uname: '',
      gname: '',
      mtime: 0,
      linkName: '',
      devMajor: 0,
      devMinor: 0,
      xattrs: new Map(),
    };
    await this.add(entry, async () => content);
  }

  /** The TOC entry and the tar end blocks in the last member, then the footer. */
  async finish(): Promise<WriterResult> {
    await this.closeMember();
    const tocOffset = this.offset;
    const json = tocJson(this.toc);
    const pad = (BLOCK - (json.length % BLOCK)) % BLOCK;
    this.write(ustarHeader(TOC_TAR_NAME, json.length));
    this.write(json);
    if (pad > 0) this.write(ZEROS.subarray(0, pad));
    this.write(ZEROS);
    await this.closeMember();
    const footer = footerBytes(tocOffset);
    this.offset += footer.length;
    await this.emit(footer);
    return { tocOffset, tocDigest: sha256(json), diffId: `sha256:${this.diff.digest('hex')}`, uncompressedSize: this.uncompressed };
  }
}
