// What goes into a layer: each entry is an absolute path in the image and what it is. Ownership and modes are
// fixed here (root, 0755/0644) rather than taken from the build machine, so that two machines with the same
// inputs write the same bytes.
import { lstatSync, readlinkSync, statSync } from 'node:fs';
import path from 'node:path';

export const ROOT_OWNER = { uid: 0, gid: 0 } as const;

interface Common {
  /** Absolute, normalised path inside the image: `/usr/local/bin/node`. */
  path: string;
  uid?: number;
  gid?: number;
}
export type Entry =
  | (Common & { kind: 'dir'; mode: number })
  /** A file of the build machine, streamed into the layer (never held in memory). */
  | (Common & { kind: 'file'; mode: number; source: string; size: number })
  | (Common & { kind: 'data'; mode: number; data: Buffer })
  | (Common & { kind: 'symlink'; target: string });

/** 0755 when the source is executable by its owner, else 0644: the only thing taken from the source's mode. */
export function fileEntry(imagePath: string, source: string): Entry {
  const st = statSync(source);
  if (!st.isFile()) throw new Error(`${source} is not a regular file`);
  return { kind: 'file', path: imagePath, source, size: st.size, mode: st.mode & 0o100 ? 0o755 : 0o644 };
}

export function dataEntry(imagePath: string, data: string | Buffer, mode = 0o644): Entry {
  return { kind: 'data', path: imagePath, data: Buffer.isBuffer(data) ? data : Buffer.from(data), mode };
}

/**
 * A path of the build machine as the image must hold it: every symlink met on the way (`/lib` → `usr/lib`,
 * `libstdc++.so.6` → `libstdc++.so.6.0.30`) becomes a symlink entry and the file it ends at a file entry at its
 * real path, so the dynamic loader finds a library under every name `ldd` reported.
 */
export function hostPath(p: string, out: Map<string, Entry>, depth = 0): void {
  if (depth > 16) throw new Error(`${p}: too many levels of symbolic links`);
  const parts = p.split('/').filter(Boolean);
  let at = '/';
  for (let i = 0; i < parts.length; i++) {
    const next = path.posix.join(at, parts[i]!);
    if (lstatSync(next).isSymbolicLink()) {
      const target = readlinkSync(next);
      out.set(next, { kind: 'symlink', path: next, target });
      hostPath(path.posix.join(path.posix.resolve(at, target), ...parts.slice(i + 1)), out, depth + 1);
      return;
    }
    at = next;
  }
  out.set(at, fileEntry(at, at));
}

/**
 * Sorted by path, with every missing parent directory added (root-owned, 0755): a tar whose order and directory
 * entries do not depend on how the list was assembled. A parent that is a symlink is an error: the entries
 * under it would land somewhere else at extraction.
 */
export function complete(entries: Iterable<Entry>): Entry[] {
  const byPath = new Map<string, Entry>();
  for (const e of entries) {
    if (!path.posix.isAbsolute(e.path) || path.posix.normalize(e.path) !== e.path) throw new Error(`entry path ${e.path} is not absolute and normalised`);
    if (byPath.has(e.path)) throw new Error(`entry ${e.path} is given twice`);
    byPath.set(e.path, e);
  }
  for (const e of [...byPath.values()]) {
    for (let dir = path.posix.dirname(e.path); dir !== '/'; dir = path.posix.dirname(dir)) {
      const there = byPath.get(dir);
      if (there === undefined) byPath.set(dir, { kind: 'dir', path: dir, mode: 0o755 });
      else if (there.kind !== 'dir') throw new Error(`${e.path}: its parent ${dir} is a ${there.kind}, not a directory`);
    }
  }
  // Plain code-unit order: a parent ("/a") always sorts before its children ("/a/b").
  return [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
