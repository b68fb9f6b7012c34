/**
 * Reading an eStargz blob's TOC back, by ranges (footer → TOC member → JSON), and what berth learns from
 * it: which files a set of Range requests touched (the start-up set a snapshotter read) and how many
 * bytes one prefetch request covers.
 */
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { z } from 'zod';
import { FOOTER_SIZE, parseFooter } from './gzip-member.ts';
import { BLOCK, checksumMatches, numeric, text } from './tar-header.ts';
import { NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME } from './toc-json.ts';
import { ConversionError, type TocEntry } from './types.ts';

const gunzip = promisify(zlib.gunzip);
/** A TOC member larger than this, or a TOC JSON larger than MAX_TOC_JSON, is not one berth will read. */
const MAX_TOC_MEMBER = 64 << 20;
const MAX_TOC_JSON = 256 << 20;
const HASH_SLICE = 8 << 20;

const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional();
const tocEntry = z.object({
  name: z.string(),
  type: z.enum(['dir', 'reg', 'symlink', 'hardlink', 'char', 'block', 'fifo', 'chunk']),
  size: count,
  modtime: z.string().optional(),
  linkName: z.string().optional(),
  mode: count,
  uid: count,
  gid: count,
  userName: z.string().optional(),
  groupName: z.string().optional(),
  offset: count,
  devMajor: count,
  devMinor: count,
  xattrs: z.record(z.string(), z.string()).optional(),
  digest: z.string().optional(),
  chunkOffset: count,
  chunkSize: count,
  chunkDigest: z.string().optional(),
});
const tocJson = z.object({ version: z.number().int(), entries: z.array(tocEntry) });

/** readRange's answer for [start, end): an end-inclusive reader's one extra byte is tolerated. */
async function exactly(readRange: (start: number, end: number) => Promise<Buffer>, start: number, end: number, what: string): Promise<Buffer> {
  const b = await readRange(start, end);
  if (b.length === end - start || b.length === end - start + 1) return b.subarray(0, end - start);
  throw new ConversionError(`reading ${what} (bytes ${start}-${end - 1}) gave ${b.length} bytes`);
}

/**
 * The TOC JSON of an eStargz blob of `blobSize` bytes, unparsed, and its digest (the TOC digest
 * annotation). `readRange(start, end)` returns the blob's bytes from `start` up to, not including, `end`.
 * Telling that a blob is eStargz needs no more: parsing is what costs (a small member can inflate to
 * millions of entries, seconds of JSON.parse on the event loop and gigabytes of objects).
 */
export async function readTocJson(readRange: (start: number, end: number) => Promise<Buffer>, blobSize: number): Promise<{ json: Buffer; tocOffset: number; tocDigest: string }> {
  if (!Number.isSafeInteger(blobSize) || blobSize < FOOTER_SIZE + 20) throw new ConversionError(`a blob of ${blobSize} bytes cannot be eStargz`);
  const footerAt = blobSize - FOOTER_SIZE;
  const { tocOffset } = parseFooter(await exactly(readRange, footerAt, blobSize, 'the footer'));
  if (tocOffset >= footerAt) throw new ConversionError(`the footer names a TOC at ${tocOffset}, past the end of the blob's data (${footerAt})`);
  if (footerAt - tocOffset > MAX_TOC_MEMBER) throw new ConversionError(`the TOC member is ${footerAt - tocOffset} bytes, more than berth reads (${MAX_TOC_MEMBER})`);
  const member = await exactly(readRange, tocOffset, footerAt, 'the TOC');
  let tar: Buffer;
  try {
    tar = await gunzip(member, { maxOutputLength: MAX_TOC_JSON + 4 * BLOCK });
  } catch (err) {
    throw new ConversionError(`the TOC member at ${tocOffset} is not valid gzip: ${(err as Error).message}`);
  }
  const header = tar.subarray(0, BLOCK);
  if (header.length < BLOCK || !checksumMatches(header) || text(header, 0, 100) !== TOC_TAR_NAME) throw new ConversionError(`the member at ${tocOffset} does not hold ${TOC_TAR_NAME}`);
  const size = numeric(header, 124, 12, 'size');
  if (tar.length < BLOCK + size) throw new ConversionError(`${TOC_TAR_NAME} is cut short (${tar.length - BLOCK} of ${size} bytes)`);
  const json = tar.subarray(BLOCK, BLOCK + size);
  // Hashed a slice at a time, yielding between: hundreds of MiB hashed at once would hold the event loop.
  const hash = createHash('sha256');
  for (let at = 0; at < json.length; at += HASH_SLICE) {
    hash.update(json.subarray(at, at + HASH_SLICE));
    if (at + HASH_SLICE < json.length) await new Promise((ok) => setImmediate(ok));
  }
  return { json, tocOffset, tocDigest: `sha256:${hash.digest('hex')}` };
}

/** The TOC of an eStargz blob (readTocJson), parsed and checked entry by entry. */
export async function readToc(readRange: (start: number, end: number) => Promise<Buffer>, blobSize: number): Promise<{ entries: TocEntry[]; tocOffset: number; tocDigest: string }> {
  const { json, tocOffset, tocDigest } = await readTocJson(readRange, blobSize);
  let parsed: z.infer<typeof tocJson>;
  try {
    parsed = tocJson.parse(JSON.parse(json.toString('utf8')));
  } catch (err) {
    throw new ConversionError(`${TOC_TAR_NAME} is not a valid TOC: ${(err as Error).message.slice(0, 300)}`);
  }
  for (const e of parsed.entries) {
    if (e.offset !== undefined && e.offset >= tocOffset) throw new ConversionError(`TOC entry ${JSON.stringify(e.name)} points at ${e.offset}, past the TOC`);
  }
  return { entries: parsed.entries, tocOffset, tocDigest };
}

const isLandmark = (name: string) => name === PREFETCH_LANDMARK || name === NO_PREFETCH_LANDMARK;

/** A regular file's payload member (or chunk) in the blob: [start, end), blob offsets. */
export interface FileExtent {
  name: string;
  start: number;
  end: number;
}

/**
 * The payload members of a TOC's regular files, sorted by offset, each spanning to the next one's start;
 * the last one to `dataEnd` (the TOC's offset) when given, else only its first byte, so reads of the TOC
 * and footer are never taken for a file. Computed once per TOC: filesInExtents then costs a binary search
 * per range, not a pass over every entry (a client's thousands of small reads must not stall berth).
 */
export function fileExtents(entries: readonly TocEntry[], dataEnd?: number): FileExtent[] {
  const data = entries.filter((e) => (e.type === 'reg' || e.type === 'chunk') && e.offset !== undefined && e.offset > 0).sort((a, b) => a.offset! - b.offset!);
  return data.map((e, i) => ({ name: e.name, start: e.offset!, end: i + 1 < data.length ? data[i + 1]!.offset! : Math.max(dataEnd ?? 0, e.offset! + 1) }));
}

/** The files of `extents` (fileExtents) that any of `ranges` ([start, end), end exclusive) overlaps, in blob order, each once; landmarks are not files. */
export function filesInExtents(extents: readonly FileExtent[], ranges: ReadonlyArray<readonly [number, number]>): string[] {
  const hit = new Set<number>();
  for (const [s, e] of ranges) {
    if (e <= s) continue;
    // The first extent ending after s (ends ascend: each extent ends where the next one starts).
    let lo = 0;
    let hi = extents.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (extents[mid]!.end <= s) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < extents.length && extents[i]!.start < e; i++) hit.add(i);
  }
  const out: string[] = [];
  const seen = new Set<string>();
  for (const i of [...hit].sort((a, b) => a - b)) {
    const name = extents[i]!.name;
    if (isLandmark(name) || seen.has(name)) continue;
    seen.add(name);
    out.push(name);
  }
  return out;
}

/** The regular files whose payload members (or chunks) overlap any of `ranges` (fileExtents, filesInExtents). */
export function filesInRanges(entries: readonly TocEntry[], ranges: ReadonlyArray<readonly [number, number]>, dataEnd?: number): string[] {
  return filesInExtents(fileExtents(entries, dataEnd), ranges);
}

/** Bytes one prefetch covers: the blob up to the prefetch landmark's payload member (the snapshotter's prefetchSize). */
export function prefetchSize(entries: readonly TocEntry[]): number {
  return entries.find((e) => e.name === PREFETCH_LANDMARK)?.offset ?? 0;
}
