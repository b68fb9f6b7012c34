import { PassThrough } from 'node:stream';
import type { Context } from 'koa';
import { RegistryError } from '../oci/errors.ts';
import type { Platform } from '../oci/manifest.ts';
import { parsePlatforms } from '../oci/platform.ts';
import type { PrewarmEvent, Prewarmer } from '../registry/prewarm.ts';

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
 * `POST /_berth/prewarm {"references": [...], "platforms": "linux/amd64", "pin": true, "referrers": false, "estargz": false}`: the running
 * berth fetches the images with its own fills at background priority and streams progress as NDJSON
 * (one PrewarmEvent a line), ending with a summary. `berth prewarm --server URL` is its client.
 * At most `maxReferences` a request (a list is refused whole, before any fetch); the references are
 * warmed one after the other, and a client that hung up stops the run before the next one — the
 * image in progress finishes what it started, nothing else is fetched on behalf of nobody.
 */
export function prewarmHandler(prewarmer: Prewarmer, maxReferences: number) {
  return async (ctx: Context): Promise<void> => {
    ctx.state.route = 'admin';
    if (ctx.method !== 'POST') throw new RegistryError('UNSUPPORTED', 'use POST');
    const body = await jsonBody(ctx);
    const refs = body.references;
    if (!Array.isArray(refs) || refs.length === 0 || !refs.every((r) => typeof r === 'string')) {
      throw new RegistryError('QUERY_INVALID', '"references" must be a non-empty array of image references');
    }
    if (refs.length > maxReferences) {
      throw new RegistryError('QUERY_INVALID', `a prewarm request may name at most ${maxReferences} references (admin.maxPrewarmReferences), got ${refs.length}: split the list`);
    }
    const platforms = parsePlatforms(typeof body.platforms === 'string' ? body.platforms : undefined);
    const out = new PassThrough();
    ctx.status = 200;
    ctx.type = 'application/x-ndjson';
    ctx.body = out;
    let hungUp = false;
    ctx.res.once('close', () => {
      if (!ctx.res.writableFinished) hungUp = true;
    });
    const emit = (e: PrewarmEvent) => {
      if (!hungUp) out.write(`${JSON.stringify(e)}\n`);
    };
    void runEach(prewarmer, refs as string[], platforms, emit, { pin: body.pin !== false, withReferrers: body.referrers === true, estargz: body.estargz === true }, () => hungUp)
      .then((summary) => {
        emit(summary);
        out.end();
      })
      .catch((err: Error) => out.destroy(err));
  };
}

/** Prewarmer.run one reference at a time, so that a hang-up is noticed between references; one summary. */
async function runEach(
  prewarmer: Prewarmer,
  refs: string[],
  platforms: Platform[] | undefined,
  emit: (e: PrewarmEvent) => void,
  opts: { pin: boolean; withReferrers: boolean; estargz: boolean },
  stopped: () => boolean,
): Promise<PrewarmEvent & { type: 'summary' }> {
  const total: PrewarmEvent & { type: 'summary' } = { type: 'summary', ok: [], failed: [], bytes: 0, fetched: 0 };
  for (const ref of refs) {
    if (stopped()) break;
    const s = await prewarmer.run([ref], platforms, (e) => e.type !== 'summary' && emit(e), opts);
    total.ok.push(...s.ok);
    total.failed.push(...s.failed);
    total.bytes += s.bytes;
    total.fetched += s.fetched;
  }
  return total;
}
