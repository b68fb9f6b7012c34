// One line of the results table: a figure, each system's value, berth's ratios, the target and whether
// berth met it. Figures build rows with these helpers; report.ts lays them out.
import type { SystemName } from './systems.ts';

export interface Row {
  /** Which figure (the --only name) produced it. */
  figure: string;
  /** What is measured, with its unit: "cached blob 1 GiB, 1 client (MB/s)". */
  label: string;
  cells: Partial<Record<SystemName, string>>;
  /** berth's ratio to each other system, e.g. "1.32x docker-registry, 0.91x nginx". */
  ratio?: string;
  target?: string;
  /** undefined: no target, or nothing to judge (an error says why in notes). */
  pass?: boolean;
  notes?: string[];
}

/** A number with 3 significant digits (at least whole units above 100). */
export function num(x: number | undefined, digits = 3): string {
  if (x === undefined || !Number.isFinite(x)) return '—';
  if (Math.abs(x) >= 10 ** digits) return Math.round(x).toLocaleString('en-US');
  return Number(x.toPrecision(digits)).toString();
}

export const mbps = (bytes: number, seconds: number): number => bytes / 1e6 / seconds;
export const mb = (bytes: number): string => `${num(bytes / 1e6)} MB`;

export function bytesText(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${num(n / 1024)} KiB`;
  return `${num(n / 1e6)} MB`;
}

/** "1.23x" (berth / other), or "—" when either is missing. */
export function times(berth: number | undefined, other: number | undefined): string {
  if (berth === undefined || other === undefined || other === 0 || !Number.isFinite(berth) || !Number.isFinite(other)) return '—';
  return `${(berth / other).toFixed(2)}x`;
}

/** A row that says a figure could not be measured. */
export function errorRow(figure: string, label: string, err: unknown): Row {
  const message = err instanceof Error ? err.message : String(err);
  return { figure, label, cells: {}, pass: false, notes: [`ERROR: ${message.split('\n').slice(0, 3).join(' / ')}`] };
}
