// Test images, offline: build (real gzipped tars, OCI or Docker schema 2), push over the registry API,
// and seed the standard set. One import for test files; each part lives in its own module.
export {
  ACCEPT_ALL_MANIFESTS,
  type Blob,
  blobBytes,
  blobStream,
  blobsOf,
  digestOf,
  digestOfFile,
  type Format,
  type Image,
  type Index,
  MediaTypes,
  type Platform,
} from './blobs.ts';
export { type BuildImageOptions, type BuildIndexOptions, buildImage, buildIndex } from './build.ts';
export { buildLayer, type LayerSpec, type TarEntry } from './layer.ts';
export { type PushTarget, pushImage, pushIndex } from './push.ts';
export { baseLayer, imagesAreRunnable, type Seeded, STANDARD_REFS, seedStandard } from './seed.ts';
