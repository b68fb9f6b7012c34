import { RegistryError } from './errors.ts';

/** An inclusive byte range [start, end] of a blob, both within its size. */
export interface ByteRange {
  start: number;
  end: number;
}

/** More ranges than this in one header is abuse, not lazy pulling (stargz asks for a handful). */
export const MAX_RANGES = 256;

/**
 * Any number of digits: a last-byte-pos past the end means the end (RFC 9110 §14.1.2), however long it is;
 * numbers beyond a safe integer only ever compare past the end of a blob, which is all they are used for.
 */
const SPEC = /^(?:(\d+)-(\d*)|-(\d+))$/;

/**
 * Parses a Range header (RFC 9110 §14.1.2) against a blob of `size` bytes.
 * Returns the satisfiable ranges in request order; throws RANGE_INVALID (400) for a malformed header and
 * RANGE_NOT_SATISFIABLE (416, with `Content-Range: bytes *\/size`) when no range overlaps the blob.
 * Overlapping ranges are kept as asked: a client that asks twice gets the bytes twice.
 */
export function parseRange(header: string, size: number): ByteRange[] {
  const m = /^\s*bytes\s*=\s*(.*)$/i.exec(header);
  if (!m) throw new RegistryError('RANGE_INVALID', `invalid Range "${header.slice(0, 80)}": only "bytes=" ranges are supported`);
  const specs = m[1]!
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (specs.length === 0) throw new RegistryError('RANGE_INVALID', `invalid Range "${header.slice(0, 80)}": no range given`);
  if (specs.length > MAX_RANGES) throw new RegistryError('RANGE_INVALID', `Range asks for ${specs.length} ranges; at most ${MAX_RANGES} are served`);
  const out: ByteRange[] = [];
  for (const spec of specs) {
    const p = SPEC.exec(spec);
    if (!p) throw new RegistryError('RANGE_INVALID', `invalid range "${spec.slice(0, 40)}" in Range header`);
    if (p[3] !== undefined) {
      const suffix = Number(p[3]);
      if (suffix === 0) continue; // a zero-length suffix selects nothing
      if (size === 0) continue;
      out.push({ start: Math.max(0, size - suffix), end: size - 1 });
      continue;
    }
    const start = Number(p[1]);
    // No blob is that big; unlike a last byte past the end (clamped below), nothing sensible is asked.
    if (!Number.isSafeInteger(start)) throw new RegistryError('RANGE_INVALID', `invalid range "${spec.slice(0, 40)}": first byte past 2^53`);
    const end = p[2] === '' ? size - 1 : Number(p[2]);
    if (p[2] !== '' && end < start) throw new RegistryError('RANGE_INVALID', `invalid range "${spec}": last byte before first`);
    if (start >= size) continue;
    out.push({ start, end: Math.min(end, size - 1) });
  }
  // Overlapping ranges are served as asked, but not to multiply a blob (RFC 9110 §14.2).
  if (out.length > 1 && out.reduce((n, r) => n + r.end - r.start + 1, 0) > 2 * size + 1024) {
    throw new RegistryError('RANGE_INVALID', 'the ranges overlap: together they ask for more than twice the blob');
  }
  if (out.length === 0) {
    throw new RegistryError('RANGE_NOT_SATISFIABLE', `Range "${header.slice(0, 80)}" is outside the blob's ${size} bytes`, undefined, {
      'Content-Range': `bytes */${size}`,
    });
  }
  return out;
}

export function rangeLength(r: ByteRange): number {
  return r.end - r.start + 1;
}
