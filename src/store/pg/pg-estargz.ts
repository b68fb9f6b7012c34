import type { Digest } from '../../oci/digest.ts';
import type { EstargzImageRow, EstargzIndex, EstargzLayerRow, EstargzStartupRow, StartupFile } from '../index-roles.ts';
import type { PgDb } from './db.ts';

// Quoted aliases: PostgreSQL folds unquoted names to lower case.
const LAYER = 'source, options, digest, size, diff_id AS "diffId", toc_digest AS "tocDigest", uncompressed_size AS "uncompressedSize"';
const IMAGE = 'source, options, digest, upstream, repository, created_at AS "createdAt"';
const STARTUP = 'source, files, bytes, pulls, learned_at AS "learnedAt", updated_at AS "updatedAt"';

/**
 * The eStargz conversion tables in PostgreSQL (src/store/estargz-table.ts is the SQLite one and says what the
 * rows mean). Every write is one upsert, so two replicas recording the same conversion end with one row.
 */
export class PgEstargz implements EstargzIndex {
  constructor(private readonly db: PgDb) {}

  private async one<T>(sql: string, params: readonly unknown[]): Promise<T | undefined> {
    return (await this.db.run<T>(sql, params)).rows[0];
  }

  layer(source: Digest, options: string): Promise<EstargzLayerRow | undefined> {
    return this.one(`SELECT ${LAYER} FROM estargz_layers WHERE source = $1 AND options = $2`, [source, options]);
  }

  async putLayer(r: EstargzLayerRow): Promise<void> {
    await this.db.run(
      `INSERT INTO estargz_layers (source, options, digest, size, diff_id, toc_digest, uncompressed_size) VALUES ($1, $2, $3, $4, $5, $6, $7)
       ON CONFLICT (source, options) DO UPDATE SET digest = excluded.digest, size = excluded.size, diff_id = excluded.diff_id,
       toc_digest = excluded.toc_digest, uncompressed_size = excluded.uncompressed_size`,
      [r.source, r.options, r.digest, r.size, r.diffId, r.tocDigest, r.uncompressedSize],
    );
  }

  image(source: Digest, options: string): Promise<EstargzImageRow | undefined> {
    return this.one(`SELECT ${IMAGE} FROM estargz_images WHERE source = $1 AND options = $2`, [source, options]);
  }

  async putImage(r: EstargzImageRow): Promise<void> {
    await this.db.run(
      `INSERT INTO estargz_images (source, options, digest, upstream, repository, created_at) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (source, options) DO UPDATE SET digest = excluded.digest, upstream = excluded.upstream,
       repository = excluded.repository, created_at = excluded.created_at`,
      [r.source, r.options, r.digest, r.upstream, r.repository, r.createdAt],
    );
  }

  async images(): Promise<EstargzImageRow[]> {
    return (await this.db.run<EstargzImageRow>(`SELECT ${IMAGE} FROM estargz_images ORDER BY created_at DESC`)).rows;
  }

  imageOf(digest: Digest): Promise<EstargzImageRow | undefined> {
    return this.one(`SELECT ${IMAGE} FROM estargz_images WHERE digest = $1 ORDER BY created_at DESC LIMIT 1`, [digest]);
  }

  layerOf(digest: Digest): Promise<EstargzLayerRow | undefined> {
    return this.one(`SELECT ${LAYER} FROM estargz_layers WHERE digest = $1 LIMIT 1`, [digest]);
  }

  async startup(source: Digest): Promise<EstargzStartupRow | undefined> {
    const row = await this.one<Omit<EstargzStartupRow, 'files'> & { files: string }>(`SELECT ${STARTUP} FROM estargz_startup WHERE source = $1`, [source]);
    return row ? { ...row, files: JSON.parse(row.files) as StartupFile[] } : undefined;
  }

  async putStartup(r: EstargzStartupRow): Promise<void> {
    await this.db.run(
      `INSERT INTO estargz_startup (source, files, bytes, pulls, learned_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
       ON CONFLICT (source) DO UPDATE SET files = excluded.files, bytes = excluded.bytes, pulls = excluded.pulls,
       learned_at = excluded.learned_at, updated_at = excluded.updated_at`,
      [r.source, JSON.stringify(r.files), r.bytes, r.pulls, r.learnedAt, r.updatedAt],
    );
  }
}
