/**
 * Which upstream Range requests serve a client's ranges of a blob still arriving: the missing parts of
 * the ranges, merged where they overlap or lie closer than `gap` bytes, then the closest neighbours merged
 * until at most `max` requests remain. So one request of 256 small ranges costs a few upstream GETs,
 * at the price of some bytes between them (never more than the span from the first to the last range).
 * Spans are half-open [start, end).
 */
export function planFetches(missing: Array<[number, number]>, o: { gap: number; max: number }): Array<[number, number]> {
  const sorted = missing.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of sorted) {
    const last = out[out.length - 1];
    if (last && a - last[1] <= o.gap) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  while (out.length > o.max) {
    let best = 1;
    for (let i = 2; i < out.length; i++) if (out[i]![0] - out[i - 1]![1] < out[best]![0] - out[best - 1]![1]) best = i;
    out[best - 1]![1] = Math.max(out[best - 1]![1], out[best]![1]);
    out.splice(best, 1);
  }
  return out;
}
