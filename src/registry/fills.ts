import type { Digest } from '../oci/digest.ts';
import { Fill, type BlobSource, type FillOptions } from './fill.ts';

/** At most one fill per digest: every reader of an uncached blob joins the same one. */
export class Fills {
  private readonly fills = new Map<Digest, Fill>();
  private readonly opening = new Map<Digest, Promise<Fill>>();

  constructor(private readonly hooks: { started: () => void; ended: (fill: Fill, ok: boolean) => void }) {}

  get(d: Digest): Fill | undefined {
    return this.fills.get(d);
  }

  get active(): number {
    return this.fills.size;
  }

  /** The running fill of `d`, or a new one made from `make()`. `joined` says whether it was already there. */
  async acquire(d: Digest, source: BlobSource, options: FillOptions): Promise<{ fill: Fill; joined: boolean }> {
    const existing = this.fills.get(d);
    if (existing) return { fill: existing, joined: true };
    const pending = this.opening.get(d);
    if (pending) return { fill: await pending, joined: true };
    const p = Fill.open(d, source, options);
    this.opening.set(d, p);
    try {
      const fill = await p;
      this.fills.set(d, fill);
      this.hooks.started();
      const end = (ok: boolean) => {
        if (this.fills.get(d) === fill) this.fills.delete(d);
        this.hooks.ended(fill, ok);
      };
      fill.once('committed', () => end(true));
      fill.once('failed', () => end(false));
      return { fill, joined: false };
    } finally {
      this.opening.delete(d);
    }
  }

  all(): Fill[] {
    return [...this.fills.values()];
  }
}
