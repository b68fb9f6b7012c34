import { createHash, type Hash } from 'node:crypto';
import { type Digest, digestHex } from '../oci/digest.ts';

/**
 * One hash of a blob file for all the whole-blob sends of it that overlap in time (storage.verifyReads).
 *
 * A rollout has many nodes pull the same layer at once; hashing it once per client made the hash the
 * largest cost of serving a cached blob (a quarter of the CPU, half the throughput). Sends of one file
 * read it from offset 0 in order, so the one furthest ahead (the leader) hashes each byte first and
 * the others skip what is already hashed. A send that reaches the end finds the verdict there: the hash
 * is never behind a send, because a send feeds every byte the hash has not seen yet. When the leader
 * goes away mid-file, the next send to reach that point carries the hash on.
 *
 * What a send relies on for the bytes it did not hash itself: they are the same file (the same inode:
 * files under blobs/ are never written in place, a replacement is a new inode and a new verification),
 * read moments later, almost always from the page cache the leader's read just filled. A verification
 * lives while some send of the file is open; a send that starts after the last one ended hashes again.
 */
export class SharedVerify {
  private readonly live = new Map<string, Verification>();

  /** The verification of file `ino` as `d` (size bytes), joined; call release() when the send ends. */
  join(d: Digest, ino: number | bigint, size: number): Verification {
    const key = `${d}@${ino}`;
    let v = this.live.get(key);
    if (!v) {
      v = new Verification(d, size, () => this.live.delete(key));
      this.live.set(key, v);
    }
    v.users++;
    return v;
  }

  /** Verifications open now (tests, introspection). */
  get size(): number {
    return this.live.size;
  }
}

export class Verification {
  users = 0;
  /** Bytes hashed so far: every send's next read starts at or before this. */
  private hashed = 0;
  private hash: Hash | undefined = createHash('sha256');
  private verdict: boolean | undefined;

  constructor(
    readonly digest: Digest,
    readonly size: number,
    private readonly gone: () => void,
  ) {}

  /**
   * A send read `chunk` at `pos`: hash what of it the hash has not seen. Returns, once the hash has seen
   * the whole file, whether it is the digest's (undefined before).
   */
  feed(pos: number, chunk: Buffer): boolean | undefined {
    const end = pos + chunk.length;
    if (this.hash && pos <= this.hashed && end > this.hashed) {
      this.hash.update(this.hashed === pos ? chunk : chunk.subarray(this.hashed - pos));
      this.hashed = end;
      if (this.hashed >= this.size) {
        this.verdict = this.hashed === this.size && this.hash.digest('hex') === digestHex(this.digest);
        this.hash = undefined;
      }
    }
    return end >= this.size ? this.verdict : undefined;
  }

  /** The send is over (done, failed or cut). */
  release(): void {
    if (--this.users === 0) this.gone();
  }
}
