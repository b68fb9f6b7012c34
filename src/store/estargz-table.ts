import type Database from 'better-sqlite3';
import type { Digest } from '../oci/digest.ts';
import type { EstargzImageRow, EstargzIndex, EstargzLayerRow, EstargzStartupRow, StartupFile } from './index-roles.ts';

const LAYER = 'source, options, digest, size, diff_id AS diffId, toc_digest AS tocDigest, uncompressed_size AS uncompressedSize';
const IMAGE = 'source, options, digest, upstream, repository, created_at AS createdAt';

/**
 * The eStargz conversion tables (created by src/store/migrations.ts) on StoreIndex's connection. SQLite
 * answers synchronously; the methods are async to match the role, which PostgreSQL will implement.
 */
export class EstargzTable implements EstargzIndex {
  private readonly s;

  constructor(db: Database.Database) {
    const p = (sql: string) => db.prepare(sql);
    this.s = {
      layer: p(`SELECT ${LAYER} FROM estargz_layers WHERE source = ? AND options = ?`),
      putLayer: p(`INSERT INTO estargz_layers (source, options, digest, size, diff_id, toc_digest, uncompressed_size) VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(source, options) DO UPDATE SET digest = excluded.digest, size = excluded.size, diff_id = excluded.diff_id,
                   toc_digest = excluded.toc_digest, uncompressed_size = excluded.uncompressed_size`),
      image: p(`SELECT ${IMAGE} FROM estargz_images WHERE source = ? AND options = ?`),
      putImage: p(`INSERT INTO estargz_images (source, options, digest, upstream, repository, created_at) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(source, options) DO UPDATE SET digest = excluded.digest, upstream = excluded.upstream,
                   repository = excluded.repository, created_at = excluded.created_at`),
      images: p(`SELECT ${IMAGE} FROM estargz_images ORDER BY created_at DESC`),
      imageOf: p(`SELECT ${IMAGE} FROM estargz_images WHERE digest = ? ORDER BY created_at DESC LIMIT 1`),
      layerOf: p(`SELECT ${LAYER} FROM estargz_layers WHERE digest = ? LIMIT 1`),
      startup: p('SELECT source, files, bytes, pulls, learned_at AS learnedAt, updated_at AS updatedAt FROM estargz_startup WHERE source = ?'),
      putStartup: p(`INSERT INTO estargz_startup (source, files, bytes, pulls, learned_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
                     ON CONFLICT(source) DO UPDATE SET files = excluded.files, bytes = excluded.bytes, pulls = excluded.pulls,
                     learned_at = excluded.learned_at, updated_at = excluded.updated_at`),
    };
  }

  async layer(source: Digest, options: string): Promise<EstargzLayerRow | undefined> {
    return this.s.layer.get(source, options) as EstargzLayerRow | undefined;
  }

  async putLayer(r: EstargzLayerRow): Promise<void> {
    this.s.putLayer.run(r.source, r.options, r.digest, r.size, r.diffId, r.tocDigest, r.uncompressedSize);
  }

  async image(source: Digest, options: string): Promise<EstargzImageRow | undefined> {
    return this.s.image.get(source, options) as EstargzImageRow | undefined;
  }

  async putImage(r: EstargzImageRow): Promise<void> {
    this.s.putImage.run(r.source, r.options, r.digest, r.upstream, r.repository, r.createdAt);
  }

  async images(): Promise<EstargzImageRow[]> {
    return this.s.images.all() as EstargzImageRow[];
  }

  async imageOf(digest: Digest): Promise<EstargzImageRow | undefined> {
    return this.s.imageOf.get(digest) as EstargzImageRow | undefined;
  }

  async layerOf(digest: Digest): Promise<EstargzLayerRow | undefined> {
    return this.s.layerOf.get(digest) as EstargzLayerRow | undefined;
  }

  async startup(source: Digest): Promise<EstargzStartupRow | undefined> {
    const row = this.s.startup.get(source) as (Omit<EstargzStartupRow, 'files'> & { files: string }) | undefined;
    return row ? { ...row, files: JSON.parse(row.files) as StartupFile[] } : undefined;
  }

  async putStartup(r: EstargzStartupRow): Promise<void> {
    this.s.putStartup.run(r.source, JSON.stringify(r.files), r.bytes, r.pulls, r.learnedAt, r.updatedAt);
  }
}
