/**
 * Crash points for the fault tests: `BERTH_FAILPOINTS=fill.before-rename` makes berth kill itself with
 * SIGKILL when a fill reaches that point, the way a power cut or an OOM kill would. Unset (always, in
 * production) each call is one Set lookup.
 *
 *   fill.headers       the upstream's response headers arrived
 *   fill.mid-body      half of the blob is on disk
 *   fill.before-rename the digest is verified, the file not yet renamed into blobs/
 *   fill.index-write   the file is in blobs/, the index row not yet written
 */
const armed = new Set((process.env.BERTH_FAILPOINTS ?? '').split(',').map((s) => s.trim()).filter(Boolean));

export function failpoint(name: string): void {
  if (armed.size > 0 && armed.has(name)) process.kill(process.pid, 'SIGKILL');
}
