/**
 * gzip members as eStargz needs them (RFC 1952): every file payload (or chunk) starts a member of its own,
 * so a reader can start a gunzip at the TOC's `offset`. The header is fixed (no name, mtime 0, XFL 0,
 * OS 255 "unknown", as Go's compress/gzip writes it) so that the same input gives the same bytes; the
 * deflate data comes from zlib at a fixed level. The footer is the 51-byte empty member of the estargz
 * package (estargz/types.go FooterSize): its extra field, subfield `SG`, holds `%016x` of the TOC's
 * offset followed by `STARGZ`.
 */
import zlib from 'node:zlib';
import { ConversionError } from './types.ts';

/** zlib level of every member: 6 (zlib's default) trades 2-3x the speed of estargz's 9 for a few % size. */
export const COMPRESSION_LEVEL = 6;
export const FOOTER_SIZE = 51;

/** Raw deflate of one member's data; async (libuv pool) on the main thread, sync in a niced worker. */
export type Deflate = (data: Buffer) => Promise<Buffer>;

export const deflateAsync: Deflate = (data) => new Promise((resolve, reject) => zlib.deflateRaw(data, { level: COMPRESSION_LEVEL }, (err, out) => (err ? reject(err) : resolve(out))));
export const deflateSync: Deflate = async (data) => zlib.deflateRawSync(data, { level: COMPRESSION_LEVEL });

const MEMBER_HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff]);

/** Members smaller than this come as one buffer; larger ones as header, deflate data, trailer (no copy). */
const JOIN_BELOW = 64 << 10;

/** One complete gzip member holding `data`, as consecutive buffers (fresh ones: the caller may keep them). */
export async function gzipMember(data: Buffer, deflate: Deflate): Promise<Buffer[]> {
  const crc = zlib.crc32(data) >>> 0; // before deflate: data is the caller's buffer, reused afterwards
  const body = await deflate(data);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(crc, 0);
  trailer.writeUInt32LE(data.length % 2 ** 32, 4);
  if (body.length < JOIN_BELOW) return [Buffer.concat([MEMBER_HEADER, body, trailer])];
  return [Buffer.from(MEMBER_HEADER), body, trailer];
}

const SUBFIELD_LEN = 22; // 16 hex digits + "STARGZ"

/** The 51-byte footer naming the TOC member's offset. */
export function footerBytes(tocOffset: number): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  Buffer.from([0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0x00, 0xff]).copy(b, 0); // FLG = FEXTRA
  b.writeUInt16LE(4 + SUBFIELD_LEN, 10); // XLEN = 26
  b.write('SG', 12, 'latin1');
  b.writeUInt16LE(SUBFIELD_LEN, 14);
  b.write(`${tocOffset.toString(16).padStart(16, '0')}STARGZ`, 16, 'latin1');
  // An empty final stored deflate block (BFINAL=1, BTYPE=00, LEN=0, NLEN=0xffff), then CRC32 0 and ISIZE 0.
  Buffer.from([0x01, 0x00, 0x00, 0xff, 0xff]).copy(b, 38);
  return b;
}

/** The TOC offset a footer names, or null when these 51 bytes are not an eStargz footer. */
function footerOffset(last51: Buffer): number | null {
  if (last51.length !== FOOTER_SIZE) return null;
  if (last51[0] !== 0x1f || last51[1] !== 0x8b || last51[2] !== 0x08 || last51[3] !== 0x04) return null;
  if (last51.readUInt16LE(10) !== 4 + SUBFIELD_LEN) return null;
  if (last51.toString('latin1', 12, 14) !== 'SG' || last51.readUInt16LE(14) !== SUBFIELD_LEN) return null;
  const sub = last51.toString('latin1', 16, 38);
  if (!/^[0-9a-f]{16}STARGZ$/.test(sub)) return null;
  // The rest must be the empty member: a stored empty block and a zero CRC/ISIZE.
  if (!last51.subarray(38).equals(Buffer.from([0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]))) return null;
  const offset = Number.parseInt(sub.slice(0, 16), 16);
  return Number.isSafeInteger(offset) ? offset : null;
}

/** Whether the last 51 bytes of a blob are an eStargz footer (the layer already is eStargz). */
export function isEstargzFooter(last51: Buffer): boolean {
  return footerOffset(last51) !== null;
}

/** The TOC offset of an eStargz footer; throws on bytes that are not one. */
export function parseFooter(last51: Buffer): { tocOffset: number } {
  const tocOffset = footerOffset(last51);
  if (tocOffset === null) throw new ConversionError('the last 51 bytes are not an eStargz footer');
  return { tocOffset };
}
