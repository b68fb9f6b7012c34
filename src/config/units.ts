/**
 * Human units in the configuration: durations (`30s`, `5m`, `1h30m`, `250ms`, or a number of
 * seconds), sizes (`512MiB`, `20GB`, or bytes) and rates (`20MiB/s`, `100Mbit/s`, or bytes per second).
 * Each parser returns undefined for text it cannot read, so the schema can name the field.
 */
const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

export function parseDuration(v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? v * 1000 : undefined;
  const text = v.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const parts = text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g);
  let total = 0;
  let consumed = 0;
  for (const p of parts) {
    total += Number(p[1]) * DURATION_UNITS[p[2]!]!;
    consumed += p[0].length;
  }
  return consumed === text.length && consumed > 0 ? total : undefined;
}

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  ki: 1024,
  kib: 1024,
  mi: 1024 ** 2,
  mib: 1024 ** 2,
  gi: 1024 ** 3,
  gib: 1024 ** 3,
  ti: 1024 ** 4,
  tib: 1024 ** 4,
};

export function parseSize(v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.floor(v) : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  if (!m) return undefined;
  const unit = SIZE_UNITS[(m[2] || 'b').toLowerCase()];
  return unit === undefined ? undefined : Math.floor(Number(m[1]) * unit);
}

/** Rates: a size per second, or bits per second with `bit` units (`100Mbit/s` = 12.5 MB/s). */
export function parseRate(v: string | number): number | undefined {
  if (typeof v === 'number') return parseSize(v);
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*?)(bit|bps)?\s*(?:\/\s*s|ps)?\s*$/i.exec(v);
  if (!m) return undefined;
  const bits = m[3] !== undefined;
  const prefix = m[2] ?? '';
  const unit = bits ? SIZE_UNITS[(prefix || 'b').toLowerCase()] : SIZE_UNITS[(prefix || 'b').toLowerCase()];
  if (unit === undefined) return undefined;
  const bytes = Number(m[1]) * unit;
  return Math.floor(bits ? bytes / 8 : bytes);
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
