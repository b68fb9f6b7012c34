/** One error berth answered or hit: an error response, or a fill that failed. */
export interface RecentError {
  /** ISO 8601. */
  time: string;
  kind: 'response' | 'fill';
  /** HTTP status of the response (a fill: the status its readers got, when known). */
  status?: number;
  /** The OCI error code (NAME_UNKNOWN, UNAVAILABLE…). */
  code?: string;
  method?: string;
  /** Request path (client-chosen text: shown as text, never as markup). */
  path?: string;
  /** A failed fill's blob and the repository it was fetched for. */
  digest?: string;
  repository?: string;
  message: string;
}

/** Longest message and path kept: an error carries client text, which must not grow the ring without bound. */
const MAX_TEXT = 500;

const clip = (s: string): string => (s.length > MAX_TEXT ? `${s.slice(0, MAX_TEXT)}…` : s);

/**
 * The last `capacity` errors, newest first, for the status page. Built by the composition root (one per
 * server), fed by the request log (error responses) and the fill table (failed fills).
 */
export class RecentErrors {
  private readonly ring: RecentError[] = [];
  /** Errors recorded since start (the ring holds only the last `capacity`). */
  total = 0;

  constructor(private readonly capacity = 50) {}

  record(e: Omit<RecentError, 'time'>, now = Date.now()): void {
    this.total++;
    const entry: RecentError = { ...e, time: new Date(now).toISOString(), message: clip(e.message) };
    if (e.path !== undefined) entry.path = clip(e.path);
    this.ring.unshift(entry);
    if (this.ring.length > this.capacity) this.ring.length = this.capacity;
  }

  list(): RecentError[] {
    return [...this.ring];
  }
}
