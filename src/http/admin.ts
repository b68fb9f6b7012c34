import type { Context } from 'koa';
import { PassThrough } from 'node:stream';
import { RegistryError } from '../oci/errors.ts';
import { parsePlatforms } from '../oci/platform.ts';
import type { Prewarmer } from '../registry/prewarm.ts';

const MAX_BODY = 1024 * 1024;

async function jsonBody(ctx: Context): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of ctx.req) {
    n += (c as Buffer).length;
    if (n > MAX_BODY) throw new RegistryError('QUERY_INVALID', `request body over ${MAX_BODY} bytes`);
    chunks.push(c as Buffer);
  }
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch {
    throw new RegistryError('QUERY_INVALID', 'request body must be a JSON object');
  }
}

/**
 * `POST /_berth/prewarm {"references": [...], "platforms": "linux/amd64", "pin": true}`: the running
 * berth fetches the images with its own fills at background priority and streams progress as NDJSON
 * (one PrewarmEvent a line), ending with a summary. `berth prewarm --server URL` is its client.
 */
export function prewarmHandler(prewarmer: Prewarmer) {
  return async (ctx: Context): Promise<void> => {
    ctx.state.route = 'admin';
    if (ctx.method !== 'POST') throw new RegistryError('UNSUPPORTED', 'use POST');
    const body = await jsonBody(ctx);
    const refs = body.references;
    if (!Array.isArray(refs) || refs.length === 0 || !refs.every((r) => typeof r === 'string')) {
      throw new RegistryError('QUERY_INVALID', '"references" must be a non-empty array of image references');
    }
    const platforms = parsePlatforms(typeof body.platforms === 'string' ? body.platforms : undefined);
    const out = new PassThrough();
    ctx.status = 200;
    ctx.type = 'application/x-ndjson';
    ctx.body = out;
    void prewarmer
      .run(refs as string[], platforms, (e) => out.write(`${JSON.stringify(e)}\n`), { pin: body.pin !== false })
      .then(() => out.end())
      .catch((err: Error) => out.destroy(err));
  };
}
