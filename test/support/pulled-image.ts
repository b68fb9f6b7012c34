// Checks what a client pulled into a skopeo `dir:` layout against the image that was pushed upstream.
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { digestOfFile, type Image } from './images.ts';

/** manifest.json is the pushed manifest byte for byte, and the blob files are exactly the image's, each hashing to its name. */
export async function assertPulledImage(dir: string, image: Image): Promise<void> {
  const blobs: string[] = [];
  for (const name of await readdir(dir)) {
    if (name === 'manifest.json' || name === 'version') continue;
    const digest = await digestOfFile(path.join(dir, name));
    assert.equal(digest, `sha256:${name}`, `${name} in the pulled image does not hash to its name`);
    blobs.push(digest);
  }
  const manifest = await readFile(path.join(dir, 'manifest.json'));
  assert.ok(manifest.equals(image.manifest), 'the pulled manifest differs from the one the upstream has');
  assert.deepEqual(blobs.sort(), [image.config, ...image.layers].map((b) => b.digest).sort(), "the pulled blobs are not the image's");
}
