// A small eStargz writer and reader (containerd/stargz-snapshotter docs/estargz.md), for lazy-pulling tests.
//
// Layout written here: every tar header in its own gzip member, every regular file's payload (plus its tar
// padding) in its own gzip member, then one gzip member holding the TOC tar entry `stargz.index.json` and the
// tar end-of-archive blocks, then the 51-byte footer. The gunzipped concatenation is an ordinary tar; the TOC
// gives each file's `offset` (where its payload's gzip member starts in the blob), so a reader fetches only
// the footer, the TOC and the members of the files it opens.
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import { type Blob, digestOf, type Image, MediaTypes } from './blobs.ts';

export const TOC_TAR_NAME = 'stargz.index.json';
export const FOOTER_SIZE = 51;
const BLOCK = 512;

export interface TocEntry {
  name: string;
  type: 'dir' | 'reg';
  size?: number;
  modtime: string;
  mode: number;
  uid: number;
  gid: number;
  offset?: number;
  digest?: string;
  chunkDigest?: string;
}

export interface Toc {
  version: number;
  entries: TocEntry[];
}

export interface EstargzLayer extends Blob {
  bytes: Buffer;
  diffId: string;
  toc: Toc;
  tocOffset: number;
  /** sha256 of the TOC JSON: the `containerd.io/snapshot/stargz/toc.digest` annotation. */
  tocDigest: string;
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const gz = (b: Buffer): Buffer => zlib.gzipSync(b, { level: 6 });

/** A ustar header block (the fields eStargz readers and containerd use). */
function tarHeader(name: string, type: 'dir' | 'reg', size: number, mode: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  if (Buffer.byteLength(name) > 100) throw new Error(`tar name too long for this writer: ${name}`);
  const octal = (v: number, width: number) => `${v.toString(8).padStart(width - 1, '0')}\0`;
  h.write(name, 0, 100, 'utf8');
  h.write(octal(mode, 8), 100);
  h.write(octal(0, 8), 108);
  h.write(octal(0, 8), 116);
  h.write(octal(size, 12), 124);
  h.write(octal(0, 12), 136);
  h.write('        ', 148); // checksum field counts as spaces
  h.write(type === 'dir' ? '5' : '0', 156);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.write('root', 265);
  h.write('root', 297);
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return h;
}

function padded(content: Buffer): Buffer {
  const pad = (BLOCK - (content.length % BLOCK)) % BLOCK;
  return Buffer.concat([content, Buffer.alloc(pad)]);
}

/** The footer: an empty gzip member whose Extra field holds `%016xSTARGZ` (the TOC's offset) as subfield 'SG'. */
export function estargzFooter(tocOffset: number): Buffer {
  const subfield = Buffer.from(`${tocOffset.toString(16).padStart(16, '0')}STARGZ`);
  const extra = Buffer.concat([Buffer.from('SG'), u16(subfield.length), subfield]);
  const header = Buffer.from([0x1f, 0x8b, 0x08, 0x04 /* FEXTRA */, 0, 0, 0, 0, 0x00, 0xff]);
  const emptyStoredBlock = Buffer.from([0x01, 0x00, 0x00, 0xff, 0xff]);
  const trailer = Buffer.alloc(8); // CRC32 and ISIZE of nothing
  const footer = Buffer.concat([header, u16(extra.length), extra, emptyStoredBlock, trailer]);
  if (footer.length !== FOOTER_SIZE) throw new Error(`footer is ${footer.length} bytes, not ${FOOTER_SIZE}`);
  return footer;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}

/** The TOC offset from the last 51 bytes of an eStargz blob, as stargz-snapshotter parses it. */
export function parseFooter(footer: Buffer): number {
  if (footer.length !== FOOTER_SIZE) throw new Error(`footer must be ${FOOTER_SIZE} bytes, got ${footer.length}`);
  if (footer[0] !== 0x1f || footer[1] !== 0x8b) throw new Error('footer is not a gzip member');
  if (footer.subarray(12, 14).toString() !== 'SG') throw new Error('footer has no SG extra subfield');
  const field = footer.subarray(16, 16 + 22).toString('latin1');
  if (!field.endsWith('STARGZ')) throw new Error(`footer extra is ${JSON.stringify(field)}`);
  return Number.parseInt(field.slice(0, 16), 16);
}

/** Gunzips the TOC member (bytes [tocOffset, size - 51)) and reads `stargz.index.json` out of its tar. */
export function parseTocMember(member: Buffer): { toc: Toc; json: Buffer } {
  const tar = zlib.gunzipSync(member);
  const name = tar.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
  if (name !== TOC_TAR_NAME) throw new Error(`first entry of the TOC member is ${JSON.stringify(name)}`);
  const size = Number.parseInt(tar.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim(), 8);
  const json = tar.subarray(BLOCK, BLOCK + size);
  return { toc: JSON.parse(json.toString('utf8')) as Toc, json };
}

/**
 * Builds an eStargz layer of `files` (paths without a leading slash). Directories are added, then a
 * `.no.prefetch.landmark`, then the files in the order given.
 */
export function buildEstargzLayer(files: Array<[string, Buffer | string]>): EstargzLayer {
  const members: Buffer[] = [];
  const tarParts: Buffer[] = [];
  const entries: TocEntry[] = [];
  let offset = 0;
  const add = (plain: Buffer): number => {
    const at = offset;
    const member = gz(plain);
    members.push(member);
    tarParts.push(plain);
    offset += member.length;
    return at;
  };
  const modtime = '1970-01-01T00:00:00Z';
  const dirs = new Set<string>();
  for (const [name] of files) for (let d = parentOf(name); d; d = parentOf(d)) dirs.add(d);
  for (const d of [...dirs].sort()) {
    add(tarHeader(`${d}/`, 'dir', 0, 0o755));
    entries.push({ name: `${d}/`, type: 'dir', modtime, mode: 0o755, uid: 0, gid: 0 });
  }
  const all: Array<[string, Buffer]> = [['.no.prefetch.landmark', Buffer.from([0x0f])], ...files.map(([n, c]): [string, Buffer] => [n, Buffer.from(c)])];
  for (const [name, content] of all) {
    add(tarHeader(name, 'reg', content.length, 0o644));
    const entry: TocEntry = { name, type: 'reg', size: content.length, modtime, mode: 0o644, uid: 0, gid: 0 };
    if (content.length > 0) {
      entry.offset = add(padded(content));
      entry.digest = sha(content);
      entry.chunkDigest = sha(content);
    }
    entries.push(entry);
  }
  const toc: Toc = { version: 1, entries };
  const json = Buffer.from(JSON.stringify(toc));
  const tocOffset = add(Buffer.concat([tarHeader(TOC_TAR_NAME, 'reg', json.length, 0o644), padded(json), Buffer.alloc(2 * BLOCK)]));
  members.push(estargzFooter(tocOffset));
  const bytes = Buffer.concat(members);
  return {
    digest: digestOf(bytes),
    size: bytes.length,
    mediaType: MediaTypes.oci.layer,
    bytes,
    diffId: digestOf(Buffer.concat(tarParts)),
    toc,
    tocOffset,
    tocDigest: sha(json),
  };
}

function parentOf(p: string): string {
  const i = p.replace(/\/$/, '').lastIndexOf('/');
  return i > 0 ? p.slice(0, i) : '';
}

/** An OCI image with one eStargz layer, annotated with its TOC digest as `ctr-remote optimize` does. */
export function estargzImage(layer: EstargzLayer): Image {
  const configJson = {
    architecture: 'amd64',
    os: 'linux',
    created: '1970-01-01T00:00:00Z',
    config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [layer.diffId] },
    history: [{ created: '1970-01-01T00:00:00Z', created_by: 'berth test/support estargz' }],
  };
  const configBytes = Buffer.from(JSON.stringify(configJson));
  const config: Blob = { digest: digestOf(configBytes), size: configBytes.length, mediaType: MediaTypes.oci.config, bytes: configBytes };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.oci.manifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: [
        {
          mediaType: layer.mediaType,
          digest: layer.digest,
          size: layer.size,
          annotations: {
            'containerd.io/snapshot/stargz/toc.digest': layer.tocDigest,
            'io.containers.estargz.uncompressed-size': String(zlib.gunzipSync(layer.bytes).length),
          },
        },
      ],
    }),
  );
  return { manifest, manifestDigest: digestOf(manifest), mediaType: MediaTypes.oci.manifest, config, layers: [layer], platform: { architecture: 'amd64', os: 'linux' } };
}
