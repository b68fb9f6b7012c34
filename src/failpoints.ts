/**
 * Crash points for the fault tests: `failpoints: [fill.before-rename]` in the config (or
 * `BERTH_FAILPOINTS=fill.before-rename`, read by config/load.ts) makes berth kill itself with SIGKILL when
 * a fill reaches that point, the way a power cut or an OOM kill would. Empty (always, in production) each
 * hit is one Set lookup. One instance per server, built in the composition root from the config.
 *
 *   fill.headers       the upstream's response headers arrived
 *   fill.mid-body      half of the blob is on disk
 *   fill.before-rename the digest is verified, the file not yet renamed into blobs/
 *   fill.index-write   the file is in blobs/, the index row not yet written
 *   upload.before-rename  a pushed blob is verified, its session file not yet renamed into blobs/
 *   store.s3.mid-upload   (s3 driver) half of a file handed to commitFile is uploaded to the bucket's ingest/
 */
export class Failpoints {
  private readonly armed: ReadonlySet<string>;

  constructor(
    names: Iterable<string> = [],
    private readonly crash: (name: string) => void = () => process.kill(process.pid, 'SIGKILL'),
  ) {
    this.armed = new Set(names);
  }

  hit(name: string): void {
    if (this.armed.size > 0 && this.armed.has(name)) this.crash(name);
  }
}
