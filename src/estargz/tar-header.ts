/**
 * Decoding one tar header block and PAX records (POSIX ustar/pax, GNU and v7 forms). Values come back as
 * the estargz writer sees them through Go's archive/tar; anything absurd (a size that is not a number,
 * negative or past 2^53, a NUL inside a PAX path) is a ConversionError, never a guess.
 */
import { ConversionError } from './types.ts';

export const BLOCK = 512;
/** Larger PAX or GNU long-name payloads are absurd for a layer (GNU tar's own limit is far lower in practice). */
export const MAX_META_PAYLOAD = 1 << 20;

const str = (h: Buffer, at: number, len: number): Buffer => {
  const field = h.subarray(at, at + len);
  const nul = field.indexOf(0);
  return nul === -1 ? field : field.subarray(0, nul);
};
export const text = (h: Buffer, at: number, len: number): string => str(h, at, len).toString('utf8');

/** A numeric field: octal (space/NUL padded) or GNU base-256. Negative only where `signed` (mtime). */
export function numeric(h: Buffer, at: number, len: number, what: string, signed = false): number {
  const field = h.subarray(at, at + len);
  if (field[0]! & 0x80) {
    const negative = (field[0]! & 0x40) !== 0;
    if (negative && !signed) throw new ConversionError(`tar header ${what} is negative`);
    let v = 0n;
    for (let i = 0; i < field.length; i++) v = (v << 8n) | BigInt(i === 0 ? field[0]! & 0x7f : field[i]!);
    if (negative) v -= 1n << BigInt(8 * field.length - 1);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) throw new ConversionError(`tar header ${what} is out of range`);
    return Number(v);
  }
  const s = field
    .toString('latin1')
    .replace(/^[ \0]+/, '')
    .replace(/[ \0]+$/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new ConversionError(`tar header ${what} is not a number: ${JSON.stringify(s)}`);
  const v = Number.parseInt(s, 8);
  if (!Number.isSafeInteger(v)) throw new ConversionError(`tar header ${what} is out of range: ${s}`);
  return v;
}

/** Whether the stored checksum matches (the sum with the checksum field as spaces; signed sums too). */
export function checksumMatches(h: Buffer): boolean {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += (b << 24) >> 24;
  }
  const s = h
    .toString('latin1', 148, 156)
    .replace(/^[ \0]+/, '')
    .replace(/[ \0]+$/, '');
  if (!/^[0-7]+$/.test(s)) return false;
  const stored = Number.parseInt(s, 8);
  return stored === unsigned || stored === signed;
}

export const isZeroBlock = (h: Buffer): boolean => {
  for (let i = 0; i < h.length; i++) if (h[i] !== 0) return false;
  return true;
};

/** PAX extended header records (`%d key=value\n`); values stay bytes (xattrs are binary). */
export function paxRecords(payload: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < payload.length) {
    if (payload[pos] === 0) break; // some writers pad the payload with NULs
    const sp = payload.indexOf(0x20, pos);
    const lenText = sp === -1 ? '' : payload.toString('latin1', pos, sp);
    const len = /^[0-9]{1,8}$/.test(lenText) ? Number(lenText) : Number.NaN;
    if (!(len > sp - pos + 1) || pos + len > payload.length || payload[pos + len - 1] !== 0x0a) throw new ConversionError(`malformed PAX record at byte ${pos} of an extended header`);
    const rec = payload.subarray(sp + 1, pos + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw new ConversionError('malformed PAX record (no key)');
    out.set(rec.toString('utf8', 0, eq), rec.subarray(eq + 1));
    pos += len;
  }
  return out;
}

/** A PAX decimal (size, uid, gid): a non-negative safe integer. */
export function paxInteger(v: Buffer, what: string): number {
  const s = v.toString('latin1');
  if (!/^[0-9]{1,16}$/.test(s) || !Number.isSafeInteger(Number(s))) throw new ConversionError(`PAX ${what} is not a valid number: ${JSON.stringify(s.slice(0, 40))}`);
  return Number(s);
}

/** A PAX mtime (`-?seconds[.fraction]`), rounded to the second as estargz's TOC keeps it. */
export function paxTime(v: Buffer): number {
  const s = v.toString('latin1');
  if (!/^-?[0-9]{1,16}(\.[0-9]*)?$/.test(s)) throw new ConversionError(`PAX mtime is not a valid time: ${JSON.stringify(s.slice(0, 40))}`);
  return Math.round(Number(s));
}

/** A path from a PAX record or GNU long-name payload: trailing NULs are padding, an inner NUL is absurd. */
export function pathBytes(v: Buffer, what: string): string {
  let end = v.length;
  while (end > 0 && v[end - 1] === 0) end--;
  if (v.subarray(0, end).includes(0)) throw new ConversionError(`${what} contains a NUL byte`);
  return v.toString('utf8', 0, end);
}

/**
 * The name as the TOC and the start-up set name it: no leading `/` or `./`, no `.` segments, `..`
 * resolved. A `..` that climbs out of the root is an error (estargz would clamp it at the root; berth
 * refuses the layer: a tar extractor that does not clamp would write outside the rootfs). "" is the root.
 */
export function cleanName(raw: string, what: string): string {
  const out: string[] = [];
  for (const seg of raw.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (out.length === 0) throw new ConversionError(`${what} ${JSON.stringify(raw)} escapes the layer's root with ".."`);
      out.pop();
    } else out.push(seg);
  }
  return out.join('/');
}
