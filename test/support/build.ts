// Images and indexes (OCI or Docker schema 2) assembled from layers, byte-exact and offline.
import { type Blob, digestOf, type Format, type Image, type Index, MediaTypes, type Platform } from './blobs.ts';
import { buildLayer, type LayerSpec } from './layer.ts';

export interface BuildImageOptions {
  format: Format;
  layers: LayerSpec[];
  arch?: string;
  os?: string;
  variant?: string;
  /** Extra image config (`Cmd`, `Env`, `Labels`…), merged over the defaults. */
  config?: Record<string, unknown>;
}

export async function buildImage(opts: BuildImageOptions): Promise<Image> {
  const media = MediaTypes[opts.format];
  const platform: Platform = { architecture: opts.arch ?? 'amd64', os: opts.os ?? 'linux' };
  if (opts.variant !== undefined) platform.variant = opts.variant;
  // Sequential: a big random layer already keeps one core busy.
  const layers: Blob[] = [];
  for (const spec of opts.layers) layers.push(await buildLayer(spec, opts.format));

  const configJson = {
    ...platform,
    created: '1970-01-01T00:00:00Z',
    config: { Env: ['PATH=/bin:/usr/bin'], Cmd: ['/bin/sh'], WorkingDir: '/', ...opts.config },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
    history: layers.map(() => ({ created: '1970-01-01T00:00:00Z', created_by: 'berth test/support' })),
  };
  const configBytes = Buffer.from(JSON.stringify(configJson));
  const config: Blob = { digest: digestOf(configBytes), size: configBytes.length, mediaType: media.config, bytes: configBytes };

  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: media.manifest,
      config: descriptor(config),
      layers: layers.map(descriptor),
    }),
  );
  return { manifest, manifestDigest: digestOf(manifest), mediaType: media.manifest, config, layers, platform };
}

export interface BuildIndexOptions {
  format: Format;
  images: Image[];
}

/** OCI image index or Docker manifest list; each entry carries its image's platform. */
export function buildIndex(opts: BuildIndexOptions): Index {
  const media = MediaTypes[opts.format];
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: media.index,
      manifests: opts.images.map((img) => ({
        mediaType: img.mediaType,
        digest: img.manifestDigest,
        size: img.manifest.length,
        platform: img.platform,
      })),
    }),
  );
  return { index, digest: digestOf(index), mediaType: media.index, images: opts.images };
}

function descriptor(b: Blob): { mediaType: string; digest: string; size: number } {
  return { mediaType: b.mediaType, digest: b.digest, size: b.size };
}
