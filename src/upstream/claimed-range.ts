import { IntegrityError } from '../oci/integrity.ts';

/**
 * The body of an upstream 206, held to the `length` bytes its Content-Range claims: a chunk that would run
 * past the claim fails before any of it is yielded (so nothing beyond the claim reaches the ingest file),
 * and the connection is dropped (`drop`). `what` names the upstream and blob for the error.
 */
export async function* withinClaim(body: AsyncIterable<Buffer>, length: number, what: string, drop: () => void): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const chunk of body) {
    if (n + chunk.length > length) {
      drop();
      throw new IntegrityError(`${what}: the 206 body runs past the ${length} bytes its Content-Range claims`);
    }
    n += chunk.length;
    yield chunk;
  }
}
