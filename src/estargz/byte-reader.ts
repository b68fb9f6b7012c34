/**
 * Pull-style reads over a byte stream (the gunzipped layer): exactly n bytes for a tar block, or up to n
 * for payload, without holding more than one source chunk beyond what was asked for.
 */
import { ConversionError } from './types.ts';

export class ByteReader {
  private queue: Buffer[] = [];
  private queued = 0;
  private ended = false;
  /** Bytes handed out so far: the tar offset, for error messages. */
  position = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<void> {
    while (this.queued < n && !this.ended) {
      const r = await this.source.next();
      if (r.done) this.ended = true;
      else if (r.value.length > 0) {
        this.queue.push(r.value);
        this.queued += r.value.length;
      }
    }
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const head = this.queue[0]!;
    if (head.length >= n) {
      out = head.subarray(0, n);
      if (head.length === n) this.queue.shift();
      else this.queue[0] = head.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const b = this.queue[0]!;
        const k = Math.min(b.length, n - at);
        b.copy(out, at, 0, k);
        at += k;
        if (k === b.length) this.queue.shift();
        else this.queue[0] = b.subarray(k);
      }
    }
    this.queued -= n;
    this.position += n;
    return out;
  }

  /** Exactly n bytes; null when the stream ended cleanly before the first of them; throws when it ends inside. */
  async readExact(n: number, what: string): Promise<Buffer | null> {
    await this.fill(n);
    if (this.queued === 0 && this.ended) return null;
    if (this.queued < n) throw new ConversionError(`the tar stream ends inside ${what} (at byte ${this.position + this.queued})`);
    return this.take(n);
  }

  /** Between 1 and max bytes; throws when the stream ended (the caller knows how many it still needs). */
  async readSome(max: number, what: string): Promise<Buffer> {
    if (this.queued === 0) await this.fill(1);
    if (this.queued === 0) throw new ConversionError(`the tar stream ends inside ${what} (at byte ${this.position})`);
    return this.take(Math.min(max, this.queue[0]!.length));
  }

  /** Reads to the end (what follows the end-of-archive blocks), so a truncated or corrupt gzip still fails. */
  async drain(): Promise<void> {
    this.queue = [];
    this.queued = 0;
    while (!this.ended) {
      const r = await this.source.next();
      if (r.done) this.ended = true;
    }
  }
}
