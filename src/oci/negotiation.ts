import { bareMediaType, isIndexMediaType, isManifestMediaType } from './media-types.ts';

/**
 * Content negotiation of manifests by tag (docs/decisions.md, "how tags are keyed"). A registry answers a
 * tag with what it stores when the client's Accept admits it; otherwise it may rewrite (distribution and
 * Docker Hub answer a client that cannot take a manifest list with the list's linux/amd64 manifest). So one
 * tag can have several right answers, one per negotiation, and the cache keeps one row per negotiation.
 */

/** The key of a tag row that was not negotiated: imported, or written before keys existed. */
export const UNNEGOTIATED = '*';

/**
 * The negotiation key of an Accept list: the manifest media types it names, sorted and deduplicated.
 * Registries look only for these (distribution answers wildcards and `application/json` as if they were
 * not there), so nothing else (order, parameters, q-values) splits the cache: at most 2^6 keys per tag.
 */
export function negotiationKey(accept: string): string {
  const types = new Set(
    accept
      .split(',')
      .map((t) => bareMediaType(t))
      .filter(isManifestMediaType),
  );
  return [...types].sort().join(',');
}

/** A cached answer to a tag: the key of the negotiation that produced it and what it produced. */
export interface NegotiatedAnswer {
  accept: string;
  mediaType: string;
  checkedAt: number;
}

/**
 * Whether a cached answer is what the upstream would give a client whose negotiation key is `key`:
 * - the same negotiation produced it; else
 * - the client must name the answer's media type (a wildcard does not count: distribution answers a
 *   wildcard with a schema 1 rewrite, not with the list);
 * - an index is never a rewrite (registries rewrite indexes to manifests, not the reverse), so it is the
 *   tag's stored content and right for every client that names its type; so is an unnegotiated row;
 * - a manifest may be a rewrite of an index the negotiating client did not name. It is right for this
 *   client if this client names no manifest type that negotiation did not (then it would not take that
 *   index either). A narrow client's answer is thus never served to a broader one.
 */
export function answers(row: NegotiatedAnswer, key: string): boolean {
  if (row.accept === key) return true;
  const mine = key.split(',').filter(Boolean);
  if (!mine.includes(row.mediaType)) return false;
  if (row.accept === UNNEGOTIATED || isIndexMediaType(row.mediaType)) return true;
  const theirs = new Set(row.accept.split(','));
  return mine.every((t) => theirs.has(t));
}

/** Of the cached answers right for a client with this Accept list, the one checked most recently. */
export function choose<T extends NegotiatedAnswer>(rows: readonly T[], accept: string): T | undefined {
  const key = negotiationKey(accept);
  let best: T | undefined;
  for (const r of rows) {
    if (!answers(r, key)) continue;
    if (!best || r.checkedAt > best.checkedAt || (r.checkedAt === best.checkedAt && r.accept === key)) best = r;
  }
  return best;
}

/**
 * The key an upstream answer is stored under: an index is the tag's own content whoever asked, so it is
 * stored once for everyone; a manifest under the negotiation that produced it.
 */
export function storageKey(accept: string, mediaType: string): string {
  return isIndexMediaType(mediaType) ? UNNEGOTIATED : negotiationKey(accept);
}
