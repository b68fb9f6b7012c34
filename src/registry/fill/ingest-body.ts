import type { Priority } from '../../upstream/bandwidth.ts';
import { IntegrityError } from '../integrity.ts';
import type { IngestFile } from './ingest-file.ts';

export interface BodyTarget {
  readonly file: IngestFile;
  readonly digest: string;
  /** The blob's size, when known: a body that runs past it is wrong bytes. */
  size(): number | undefined;
  /** The fill ended (committed or failed): stop writing, the rest is not needed. */
  ended(): boolean;
  onUpstreamBytes?: (n: number, priority: Priority) => void;
  /** After each chunk is in the file: wakes the readers. */
  progress(): void;
  /** Half of the blob is on disk (the `fill.mid-body` failpoint). */
  halfway(): void;
  checkpoint(): Promise<void>;
}

/**
 * Writes a body that starts at `offset` into the ingest file, publishing each chunk as it lands; `landed`
 * after each chunk (the first one lets response headers go). Only what really is in the file is published:
 * a short write (a full disk) must not leave the extents claiming bytes that a later Range would read
 * back as zeros. `fromPeer`: a peer replica's bytes, not counted as the upstream's.
 */
export async function writeBody(t: BodyTarget, body: AsyncIterable<Buffer>, offset: number, priority: () => Priority, landed: () => void = () => {}, fromPeer = false): Promise<void> {
  let pos = offset;
  const counted = fromPeer ? undefined : t.onUpstreamBytes;
  for await (const chunk of body) {
    if (t.ended()) return;
    const size = t.size();
    if (size !== undefined && pos + chunk.length > size) {
      throw new IntegrityError(`upstream sent more than the ${size} bytes of blob ${t.digest}`);
    }
    counted?.(chunk.length, priority());
    const due = await t.file.write(chunk, pos, `blob ${t.digest}`);
    pos += chunk.length;
    landed();
    if (size !== undefined && pos * 2 >= size && (pos - chunk.length) * 2 < size) t.halfway();
    t.progress();
    if (due) await t.checkpoint();
  }
}
