// Command-line options of `npm run bench`: sizes, durations, link rate and which figures to run.

export const FIGURES = ['blob1', 'blob8', 'manifest', 'head', 'pull', 'cold8', 'range', 'bandwidth', 'rss64', 'startup', 'coldsmall', 'estargz', 's3', 'cluster'] as const;
export type FigureName = (typeof FIGURES)[number];

export const MB = 1_000_000;
export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

export interface BenchOptions {
  quick: boolean;
  only: ReadonlySet<FigureName>;
  /** The upstream link for the cold figures, bytes per second. */
  linkRate: number;
  /** The "200 MB" image's single layer (cold figures, 8 clients). */
  bigBytes: number;
  /** The "1 GiB" image's single layer (one client, 64 streams). */
  hugeBytes: number;
  /** wrk run per system and kind, seconds (after a short warm-up run). */
  wrkSeconds: number;
  wrkConnections: number;
  /** Repetitions of each cached-blob measurement after one unrecorded round (the median is reported). */
  repeats: number;
  /** 64 slow streams of the 1 GiB blob last this long, seconds. */
  rss64Seconds: number;
  rss64Streams: number;
  /** Per-stream rate of the 64 streams (curl --limit-rate), bytes per second. */
  rss64StreamRate: number;
  startupBlobs: number;
  startupTags: number;
  startupRuns: number;
  /** Write bench/RESULTS.md (off with --no-write). */
  write: boolean;
}

const USAGE = `usage: npm run bench -- [--quick] [--only ${FIGURES.join(',')}] [--link-rate 20MB/s] [--no-write]`;

/** "200 MB", "1 GiB": how the sizes above are named in labels. */
export function sizeName(bytes: number): string {
  if (bytes >= GiB && bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes % MiB === 0 && bytes % MB !== 0) return `${bytes / MiB} MiB`;
  return `${Math.round(bytes / MB)} MB`;
}

/** "20MB/s", "20MiB/s", "20M", "20000000": bytes per second. */
export function parseRateArg(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(k|ki|m|mi|g|gi)?b?(?:\/s)?\s*$/i.exec(text);
  if (!m) throw new Error(`--link-rate: "${text}" is not a rate (e.g. 20MB/s, 50MiB/s)`);
  const unit = (m[2] ?? '').toLowerCase();
  const mult: Record<string, number> = { '': 1, k: 1e3, ki: 1024, m: 1e6, mi: MiB, g: 1e9, gi: GiB };
  return Number(m[1]) * mult[unit]!;
}

export function parseOptions(argv: readonly string[]): BenchOptions {
  let quick = false;
  let write = true;
  let only: Set<FigureName> = new Set(FIGURES);
  let linkRate = 20 * MB;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const eq = a.indexOf('=');
      if (eq >= 0) return a.slice(eq + 1);
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === '--quick') quick = true;
    else if (a === '--no-write') write = false;
    else if (a === '--only' || a.startsWith('--only=')) {
      const names = value()
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      for (const n of names) if (!(FIGURES as readonly string[]).includes(n)) throw new Error(`--only: unknown figure "${n}"\n${USAGE}`);
      only = new Set(names as FigureName[]);
    } else if (a === '--link-rate' || a.startsWith('--link-rate=')) linkRate = parseRateArg(value());
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  return {
    quick,
    only,
    linkRate,
    bigBytes: quick ? 50 * MB : 200 * MB,
    hugeBytes: quick ? 200 * MB : GiB,
    wrkSeconds: quick ? 3 : 10,
    wrkConnections: 32,
    repeats: quick ? 3 : 5,
    rss64Seconds: quick ? 6 : 20,
    rss64Streams: 64,
    rss64StreamRate: 8 * MB,
    startupBlobs: 100_000,
    startupTags: 10_000,
    startupRuns: quick ? 2 : 3,
    write,
  };
}
