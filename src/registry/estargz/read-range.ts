import type { Digest } from '../../oci/digest.ts';
import type { BlobReader } from '../../store/roles.ts';

/** Bytes [start, end) of a committed blob (a footer, a TOC member: small, bounded reads). */
export async function readRange(store: Pick<BlobReader, 'read'>, d: Digest, start: number, end: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of store.read(d, start, end - 1)) parts.push(c as Buffer);
  return Buffer.concat(parts);
}
