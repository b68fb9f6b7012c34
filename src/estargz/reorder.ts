/**
 * Prioritised files first: a tar is read once, front to back, but the start-up set can sit anywhere in
 * it, so the layer's entries go to a spool file first (their header blocks and payload, uncompressed, in
 * source order) and are written out in the new order from there: the prioritised files in the given
 * order, each preceded by its parent directories and, for a hardlink, by its target (estargz's moveRec;
 * a plain tar extractor needs both to exist first), then `.prefetch.landmark`, then the rest in source
 * order. Names not in this layer are skipped (the caller may pass an image's whole start-up set).
 * Memory: the entries' metadata, as the TOC needs anyway; the payloads stay on disk.
 */
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ByteReader } from './byte-reader.ts';
import type { EstargzWriter } from './estargz-writer.ts';
import { cleanName } from './tar-header.ts';
import type { TarEntry } from './tar-reader.ts';
import { PREFETCH_LANDMARK } from './toc-json.ts';

const IO_SIZE = 1 << 20;

interface Spooled {
  entry: TarEntry;
  /** Where its header blocks, then its payload, start in the spool file. */
  at: number;
}

/** The order of entry indices: the moved ones, and whether each index was moved. */
export function prioritisedOrder(entries: readonly TarEntry[], prioritized: readonly string[]): { moved: number[]; rest: number[] } {
  const byName = new Map<string, number[]>();
  entries.forEach((e, i) => {
    const list = byName.get(e.name);
    if (list) list.push(i);
    else byName.set(e.name, [i]);
  });
  const taken = new Set<number>();
  const moved: number[] = [];
  const visiting = new Set<string>();
  const move = (name: string): void => {
    if (visiting.has(name)) return; // a hardlink cycle in a hostile tar
    visiting.add(name);
    const found = byName.get(name) ?? [];
    if (name !== '') move(path.posix.dirname(name) === '.' ? '' : path.posix.dirname(name));
    for (const i of found) if (entries[i]!.type === 'hardlink') move(entries[i]!.linkName);
    for (const i of found) {
      if (!taken.has(i)) {
        taken.add(i);
        moved.push(i);
      }
    }
    visiting.delete(name);
  };
  for (const p of prioritized) {
    let name: string;
    try {
      name = cleanName(p, 'prioritised file');
    } catch {
      continue; // a name that cannot be in any layer
    }
    if (name !== '' && byName.has(name)) move(name);
  }
  const rest = entries.map((_, i) => i).filter((i) => !taken.has(i));
  return { moved, rest };
}

/** `spoolDir`: where the spool file goes (a directory of its own is made in it and removed); default os.tmpdir(). */
export async function writeReordered(
  entries: AsyncIterable<TarEntry>,
  reader: ByteReader,
  writer: EstargzWriter,
  prioritized: readonly string[],
  signal?: AbortSignal,
  spoolDir: string = os.tmpdir(),
): Promise<void> {
  const dir = await mkdtemp(path.join(spoolDir, 'berth-estargz-'));
  try {
    const file = await open(path.join(dir, 'entries'), 'w+');
    try {
      const spooled: Spooled[] = [];
      let at = 0;
      for await (const entry of entries) {
        signal?.throwIfAborted();
        spooled.push({ entry, at });
        at += (await file.write(entry.header, 0, entry.header.length, at)).bytesWritten;
        let left = entry.size;
        while (left > 0) {
          const b = await reader.readSome(Math.min(left, IO_SIZE), `the payload of ${JSON.stringify(entry.name)}`);
          at += (await file.write(b, 0, b.length, at)).bytesWritten;
          left -= b.length;
        }
        entry.header = Buffer.alloc(0); // kept on disk, not in memory
      }
      const list = spooled.map((s) => s.entry);
      const { moved, rest } = prioritisedOrder(list, prioritized);
      const out = async (i: number) => {
        signal?.throwIfAborted();
        const { entry, at: start } = spooled[i]!;
        const headerLength = (i + 1 < spooled.length ? spooled[i + 1]!.at : at) - start - entry.size;
        const header = Buffer.alloc(headerLength);
        await file.read(header, 0, headerLength, start);
        let pos = start + headerLength;
        await writer.add({ ...entry, header }, async (max) => {
          const b = Buffer.allocUnsafe(Math.min(max, IO_SIZE));
          const { bytesRead } = await file.read(b, 0, b.length, pos);
          if (bytesRead === 0) throw new Error('spool file ended early');
          pos += bytesRead;
          return b.subarray(0, bytesRead);
        });
      };
      for (const i of moved) await out(i);
      await writer.addLandmark(PREFETCH_LANDMARK);
      for (const i of rest) await out(i);
    } finally {
      await file.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
