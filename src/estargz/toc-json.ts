/**
 * The TOC JSON (`stargz.index.json`) as the estargz package writes it: `{"version":1,"entries":[...]}`,
 * tab-indented (Go's json.MarshalIndent(toc, "", "\t")), each entry's fields in TOCEntry's order with Go's
 * `omitempty` (zero numbers, empty strings and maps left out), xattr values base64 (Go's []byte), keys
 * sorted. `userName`/`groupName` appear only where they change for a uid/gid (estargz's nameIfChanged);
 * readers carry them forward.
 */
import { BLOCK } from './tar-header.ts';

export const TOC_TAR_NAME = 'stargz.index.json';
export const PREFETCH_LANDMARK = '.prefetch.landmark';
export const NO_PREFETCH_LANDMARK = '.no.prefetch.landmark';
/** The landmark files' one byte of content (estargz `landmarkContents`). */
export const LANDMARK_CONTENTS = 0x0f;

export interface TocRecord {
  name: string;
  type: 'dir' | 'reg' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo' | 'chunk';
  size?: number;
  modtime?: string;
  linkName?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  userName?: string;
  groupName?: string;
  offset?: number;
  devMajor?: number;
  devMinor?: number;
  xattrs?: Record<string, string>;
  digest?: string;
  chunkOffset?: number;
  chunkSize?: number;
  chunkDigest?: string;
}

const ORDER: (keyof TocRecord)[] = [
  'name',
  'type',
  'size',
  'modtime',
  'linkName',
  'mode',
  'uid',
  'gid',
  'userName',
  'groupName',
  'offset',
  'devMajor',
  'devMinor',
  'xattrs',
  'digest',
  'chunkOffset',
  'chunkSize',
  'chunkDigest',
];

function ordered(e: TocRecord): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const k of ORDER) {
    const v = e[k];
    if (k === 'name' || k === 'type') o[k] = v;
    else if (v === undefined || v === 0 || v === '') continue;
    else if (k === 'xattrs' && Object.keys(v as object).length === 0) continue;
    else o[k] = v;
  }
  return o;
}

export function tocJson(entries: readonly TocRecord[]): Buffer {
  return Buffer.from(JSON.stringify({ version: 1, entries: entries.map(ordered) }, null, '\t'));
}

/** estargz's formatModtime: RFC 3339 UTC to the second; the epoch itself is left out. */
export function modtime(seconds: number): string {
  if (seconds === 0) return '';
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A ustar header for the entries berth adds (landmarks, the TOC): mode 0, owner 0, mtime 0, as Go writes them. */
export function ustarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const octal = (v: number, width: number) => `${v.toString(8).padStart(width - 1, '0')}\0`;
  h.write(name, 0, 100, 'utf8');
  h.write(octal(0, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  h.write(octal(size, 12), 124);
  h.write(octal(0, 12), 136);
  h.write('        ', 148);
  h.write('0', 156);
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return h;
}
