/**
 * A tar reader that keeps every header byte: berth copies each entry's header blocks (PAX `x`/`g`
 * records with xattrs, GNU `L`/`K` long names, the ustar block itself) into the eStargz output
 * unchanged, so nothing a parser would drop (unknown PAX keys, ACLs, fractional mtimes) is lost. What it
 * decodes is what the TOC needs. The consumer reads exactly `size` payload bytes from the same ByteReader
 * before asking for the next entry; the padding is skipped here.
 */
import type { ByteReader } from './byte-reader.ts';
import { BLOCK, checksumMatches, cleanName, isZeroBlock, MAX_META_PAYLOAD, numeric, pathBytes, paxInteger, paxRecords, paxTime, text } from './tar-header.ts';
import { ConversionError } from './types.ts';

export type EntryType = 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';

export interface TarEntry {
  /** Every header block of this entry, in source order, ready to be copied out. */
  header: Buffer;
  /** Cleaned name (see cleanName); "" is the root directory. */
  name: string;
  type: EntryType;
  /** Payload bytes that follow (0 for every type but `reg`). */
  size: number;
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  /** Seconds since the epoch. */
  mtime: number;
  /** Symlink target as written; hardlink target cleaned like a name. */
  linkName: string;
  devMajor: number;
  devMinor: number;
  xattrs: Map<string, Buffer>;
}

const TYPES: Record<string, EntryType> = { '0': 'reg', '7': 'reg', '1': 'hardlink', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };
const UNSUPPORTED: Record<string, string> = { S: 'GNU sparse file', M: 'GNU multi-volume continuation', V: 'GNU volume label', D: 'GNU dump directory' };
const XATTR = 'SCHILY.xattr.';

const pad = (n: number): number => (BLOCK - (n % BLOCK)) % BLOCK;

export async function* readTar(r: ByteReader): AsyncGenerator<TarEntry> {
  for (;;) {
    const pre: Buffer[] = [];
    let local = new Map<string, Buffer>();
    let longName: string | undefined;
    let longLink: string | undefined;
    let h: Buffer | null;
    let flag: string;
    for (;;) {
      const at = r.position;
      h = await r.readExact(BLOCK, 'a tar header');
      if (h === null) {
        if (pre.length > 0) throw new ConversionError('the tar stream ends after an extended header, before its entry');
        return; // EOF on a block boundary: Go's archive/tar accepts this too
      }
      if (isZeroBlock(h)) {
        if (pre.length > 0) throw new ConversionError('an extended header is followed by the end of the archive');
        return; // end-of-archive; the caller drains the rest
      }
      if (!checksumMatches(h)) throw new ConversionError(`not a tar stream: bad header checksum at byte ${at}`);
      flag = String.fromCharCode(h[156] || 0x30);
      if (flag !== 'x' && flag !== 'g' && flag !== 'L' && flag !== 'K') break;
      const size = numeric(h, 124, 12, 'size');
      if (size > MAX_META_PAYLOAD) throw new ConversionError(`tar extended header of ${size} bytes at byte ${at} is absurd`);
      const payload = size === 0 ? Buffer.alloc(0) : await r.readExact(size + pad(size), 'an extended header');
      if (payload === null) throw new ConversionError('the tar stream ends inside an extended header');
      pre.push(h, payload);
      const body = payload.subarray(0, size);
      if (flag === 'x') local = paxRecords(body);
      else if (flag === 'g')
        paxRecords(body); // checked, kept in the output, not applied (Go's archive/tar and containerd ignore it)
      else if (flag === 'L') longName = pathBytes(body, 'a GNU long name');
      else longLink = pathBytes(body, 'a GNU long link name');
    }
    const type = TYPES[flag];
    if (type === undefined) {
      const what = UNSUPPORTED[flag] ?? `entry type ${JSON.stringify(flag)}`;
      throw new ConversionError(`unsupported tar entry: ${what} at byte ${r.position - BLOCK}`);
    }
    const pax = local;
    for (const k of pax.keys()) if (k.startsWith('GNU.sparse.')) throw new ConversionError('unsupported tar entry: GNU sparse file (PAX)');
    const magic = h.toString('latin1', 257, 263);
    let rawName = text(h, 0, 100);
    if (magic === 'ustar\0') {
      const prefix = text(h, 345, 155);
      if (prefix !== '') rawName = `${prefix}/${rawName}`;
    }
    const paxPath = pax.get('path');
    if (paxPath !== undefined) rawName = pathBytes(paxPath, 'a PAX path');
    else if (longName !== undefined) rawName = longName;
    let linkName = text(h, 157, 100);
    const paxLink = pax.get('linkpath');
    if (paxLink !== undefined) linkName = pathBytes(paxLink, 'a PAX linkpath');
    else if (longLink !== undefined) linkName = longLink;

    // v7 tars mark directories by a trailing slash on a type-NUL entry (Go's archive/tar does the same).
    const finalType: EntryType = h[156] === 0 && rawName.endsWith('/') ? 'dir' : type;
    const name = cleanName(rawName, 'entry name');
    if (name === '' && finalType !== 'dir') throw new ConversionError(`tar entry ${JSON.stringify(rawName)} of type ${finalType} has no name`);
    if (finalType === 'hardlink') {
      linkName = cleanName(linkName, `hardlink target of ${JSON.stringify(rawName)}:`);
      if (linkName === '') throw new ConversionError(`hardlink ${JSON.stringify(rawName)} has no target`);
    }
    let size = numeric(h, 124, 12, 'size');
    const paxSize = pax.get('size');
    if (paxSize !== undefined) size = paxInteger(paxSize, 'size');
    const xattrs = new Map<string, Buffer>();
    for (const [k, v] of pax) if (k.startsWith(XATTR)) xattrs.set(k.slice(XATTR.length), v);
    const paxUid = pax.get('uid');
    const paxGid = pax.get('gid');
    const paxMtime = pax.get('mtime');
    const entry: TarEntry = {
      header: Buffer.concat([...pre, h]),
      name,
      type: finalType,
      size: finalType === 'reg' ? size : 0, // header-only types carry no payload, whatever the field says
      mode: numeric(h, 100, 8, 'mode'),
      uid: paxUid !== undefined ? paxInteger(paxUid, 'uid') : numeric(h, 108, 8, 'uid'),
      gid: paxGid !== undefined ? paxInteger(paxGid, 'gid') : numeric(h, 116, 8, 'gid'),
      uname: pax.get('uname')?.toString('utf8') ?? text(h, 265, 32),
      gname: pax.get('gname')?.toString('utf8') ?? text(h, 297, 32),
      mtime: paxMtime !== undefined ? paxTime(paxMtime) : numeric(h, 136, 12, 'mtime', true),
      linkName: finalType === 'hardlink' || finalType === 'symlink' ? linkName : '',
      devMajor: finalType === 'char' || finalType === 'block' ? numeric(h, 329, 8, 'devmajor') : 0,
      devMinor: finalType === 'char' || finalType === 'block' ? numeric(h, 337, 8, 'devminor') : 0,
      xattrs,
    };
    yield entry;
    const p = pad(entry.size);
    if (p > 0 && (await r.readExact(p, `the padding of ${JSON.stringify(rawName)}`)) === null) {
      throw new ConversionError(`the tar stream ends inside the padding of ${JSON.stringify(rawName)}`);
    }
  }
}
