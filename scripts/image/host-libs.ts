// The shared libraries the runtime needs, taken from the build machine (Debian) as `ldd` resolves them, and the
// Debian packages they came from: the image records those packages the way distroless images do
// (/var/lib/dpkg/status.d/<package>, with each package's copyright file), so that a scanner sees what the
// image holds and a reader sees whose files they are and under which licence.
import { execFileSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { dataEntry, type Entry, hostPath } from './entries.ts';

/** The libraries (and the dynamic loader) each ELF file loads, as paths: `ldd`'s `name => path` and bare-path lines. */
export function sharedLibraries(elfFiles: string[]): string[] {
  const found = new Set<string>();
  for (const f of elfFiles) {
    const out = execFileSync('ldd', [f], { encoding: 'utf8' });
    for (const line of out.split('\n')) {
      const m = /^\s*(?:\S+\s+=>\s+)?(\/\S+)\s+\(0x[0-9a-f]+\)\s*$/.exec(line);
      if (m) found.add(m[1]!);
      else if (/not found/.test(line)) throw new Error(`ldd ${f}: ${line.trim()}`);
    }
  }
  if (found.size === 0) throw new Error(`ldd found no shared libraries for ${elfFiles.join(', ')}: not a dynamically linked glibc program?`);
  return [...found].sort();
}

/** dpkg names a file under the path its package shipped, which on a merged-/usr system may lack or have the /usr. */
function owningPackage(file: string): string {
  const real = realpathSync(file);
  const candidates = new Set([file, real]);
  for (const p of [...candidates]) candidates.add(p.startsWith('/usr/') ? p.slice(4) : `/usr${p}`);
  for (const p of candidates) {
    try {
      const out = execFileSync('dpkg-query', ['--search', p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const pkg = /^([^:\s,]+)(?::[a-z0-9]+)?:\s/m.exec(out)?.[1];
      if (pkg) return pkg;
    } catch {
      // not this spelling of the path
    }
  }
  throw new Error(`no Debian package owns ${file} (the image is built from Debian's files: dpkg-query must know them)`);
}

export interface DebianPackage {
  name: string;
  version: string;
}

/** Each package's status paragraph and copyright file, as entries; and the packages with their versions. */
export function packageRecords(names: Iterable<string>, out: Map<string, Entry>): DebianPackage[] {
  const packages: DebianPackage[] = [];
  for (const name of [...new Set(names)].sort()) {
    const status = execFileSync('dpkg-query', ['--status', name], { encoding: 'utf8' });
    const version = /^Version:\s*(\S+)/m.exec(status)?.[1];
    if (!version) throw new Error(`dpkg-query --status ${name}: no Version`);
    packages.push({ name, version });
    out.set(`/var/lib/dpkg/status.d/${name}`, dataEntry(`/var/lib/dpkg/status.d/${name}`, `${status.trimEnd()}\n`));
    const copyright = `/usr/share/doc/${name}/copyright`;
    if (existsSync(copyright)) hostPath(copyright, out);
  }
  return packages;
}

/** The libraries of these ELF files, with every symlink on the way, into `out`; returns the packages that own them. */
export function addSharedLibraries(elfFiles: string[], out: Map<string, Entry>): string[] {
  const owners = new Set<string>();
  for (const lib of sharedLibraries(elfFiles)) {
    const before = new Set(out.keys());
    hostPath(lib, out);
    for (const [p, e] of out) if (!before.has(p) && e.kind === 'file') owners.add(owningPackage(p));
  }
  return [...owners];
}
