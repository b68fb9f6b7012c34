// Test images, offline: build (real gzipped tars, OCI or Docker schema 2), push over the registry API,
// and seed the standard set. One import for test files; each part lives in its own module.
export {
  type Blob,
  type Format,
  type Image,
  type Index,
  type Platform,
  ACCEPT_ALL_MANIFESTS,
  MediaTypes,
  blobBytes,
  blobStream,
  blobsOf,
  digestOf,
  digestOfFile,
} from './blobs.ts';
export { type LayerSpec, type TarEntry, buildLayer } from './layer.ts';
export { type BuildImageOptions, type BuildIndexOptions, buildImage, buildIndex } from './build.ts';
export { type PushTarget, pushImage, pushIndex } from './push.ts';
export { type Seeded, STANDARD_REFS, baseLayer, imagesAreRunnable, seedStandard } from './seed.ts';
