/**
 * Which bytes of a blob are on disk: sorted, disjoint, non-adjacent half-open intervals [start, end).
 * A fill writes sequentially, a lazy Range request writes wherever the client reads; both publish here.
 */
export class Extents {
  private list: Array<[number, number]> = [];

  constructor(initial: Array<[number, number]> = []) {
    for (const [s, e] of initial) this.add(s, e);
  }

  add(start: number, end: number): void {
    if (end <= start) return;
    const out: Array<[number, number]> = [];
    let s = start;
    let e = end;
    let placed = false;
    for (const [a, b] of this.list) {
      if (b < s) out.push([a, b]);
      else if (a > e) {
        if (!placed) {
          out.push([s, e]);
          placed = true;
        }
        out.push([a, b]);
      } else {
        s = Math.min(s, a);
        e = Math.max(e, b);
      }
    }
    if (!placed) out.push([s, e]);
    this.list = out;
  }

  /** The end of the run of bytes on disk that starts at or covers `pos`; `pos` itself if that byte is missing. */
  availableFrom(pos: number): number {
    for (const [a, b] of this.list) {
      if (a <= pos && pos < b) return b;
      if (a > pos) break;
    }
    return pos;
  }

  /** The missing intervals of [0, size). */
  gaps(size: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = 0;
    for (const [a, b] of this.list) {
      if (a > pos) out.push([pos, Math.min(a, size)]);
      pos = Math.max(pos, b);
    }
    if (pos < size) out.push([pos, size]);
    return out.filter(([a, b]) => b > a);
  }

  /** The missing intervals of [start, end). */
  missingIn(start: number, end: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    let pos = start;
    for (const [a, b] of this.list) {
      if (b <= pos) continue;
      if (a >= end) break;
      if (a > pos) out.push([pos, a]);
      pos = Math.max(pos, b);
      if (pos >= end) break;
    }
    if (pos < end) out.push([pos, end]);
    return out;
  }

  covers(size: number): boolean {
    return this.gaps(size).length === 0;
  }

  get bytes(): number {
    return this.list.reduce((n, [a, b]) => n + (b - a), 0);
  }

  toJSON(): Array<[number, number]> {
    return this.list.map(([a, b]) => [a, b]);
  }

  clear(): void {
    this.list = [];
  }
}
