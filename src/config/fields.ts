import { z } from 'zod';
import { parseDuration, parseRate, parseSize } from './units.ts';

/** The config file's unit-bearing fields as zod types: what the file says (`30s`, `20MiB/s`, `80%`) in, milliseconds and bytes out. */
export const duration = (def: string) =>
  z
    .union([z.string(), z.number()])
    .default(def)
    .transform((v, ctx) => {
      const ms = parseDuration(v);
      if (ms === undefined) {
        ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration (e.g. 30s, 5m, 1h)` });
        return z.NEVER;
      }
      return ms;
    });

export const rate = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const r = parseRate(v);
  if (r === undefined || r <= 0) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a rate (e.g. 20MiB/s, 100Mbit/s)` });
    return z.NEVER;
  }
  return r;
});

/** A size in bytes, or a percentage of the storage filesystem (resolved at start-up). */
export const sizeOrPercent = z.union([z.string(), z.number()]).transform((v, ctx) => {
  if (typeof v === 'string' && /^\s*\d+(\.\d+)?\s*%\s*$/.test(v)) {
    const p = Number.parseFloat(v);
    if (p > 0 && p <= 100) return { percent: p } as const;
  }
  const n = parseSize(v);
  if (n === undefined || n <= 0) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (e.g. 50GiB) or a percentage (e.g. 80%)` });
    return z.NEVER;
  }
  return { bytes: n } as const;
});

/** A size in bytes (`4MiB`, `512KiB`, or a number). */
export const byteSize = (def: string) =>
  z
    .union([z.string(), z.number()])
    .default(def)
    .transform((v, ctx) => {
      const n = parseSize(v);
      if (n === undefined || n <= 0) {
        ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (e.g. 4MiB)` });
        return z.NEVER;
      }
      return n;
    });
