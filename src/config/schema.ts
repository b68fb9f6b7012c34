import { z } from 'zod';
import { isHost } from '../oci/reference.ts';
import { byteSize, duration, rate, sizeOrPercent } from './fields.ts';

/**
 * A local repository prefix: path components of the distribution name grammar, ending in `/`. Its first
 * component must not look like a registry host (a `.` or `:` in it, or `localhost`), or `docker.io/x`
 * could be both a local name and a name on an upstream.
 */
const localPrefix = z
  .string()
  .regex(/^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\/$/, 'must be repository path components ending in "/", e.g. "site/"')
  .refine((p) => {
    const first = p.slice(0, p.indexOf('/'));
    return !first.includes('.') && !first.includes(':') && first !== 'localhost';
  }, 'must not start with a registry host');

/** An `auth.push` prefix: a local repository (`site/app`) or repository path components ending in `/` (`site/`). */
const pushPrefix = z
  .string()
  .regex(/^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\/?$/, 'must be a local repository name or path components ending in "/", e.g. "site/"');

/** An `auth.push` entry; `anonymous` is no user here (that is local.allowAnonymousPush, without client auth). */
const pushUser = z
  .string()
  .min(1)
  .refine((u) => u !== 'anonymous', 'anonymous pushes are local.allowAnonymousPush, for a berth without client auth');
const pushRule = z.object({ prefix: pushPrefix, users: z.array(pushUser).min(1) }).strict();

const url = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}, 'must be an http:// or https:// URL');

const listen = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9.-]*):\d{1,5}$/, 'must be HOST:PORT or :PORT');

const registryHost = z.string().refine(isHost, 'must be a registry host such as quay.io or 127.0.0.1:5001');

export const UpstreamSchema = z
  .object({
    /** The registry host clients name: `docker.io`, `quay.io`, `127.0.0.1:5001`. */
    host: registryHost,
    /** Where berth reaches it: the registry itself, or with `kind: berth` a parent berth that has an upstream of this host. */
    url,
    /** `berth`: `url` is another berth (a tier); requests keep their registry (`?ns=<host>`), and `offline: except-parents` still reaches it. */
    kind: z.enum(['registry', 'berth']).default('registry'),
    /** Other names that route here (`index.docker.io`). */
    aliases: z.array(z.string().refine(isHost, 'must be a registry host')).default([]),
    username: z.string().optional(),
    password: z.string().optional(),
    /** Read the password from this file (first line), or from this environment variable. */
    passwordFile: z.string().optional(),
    passwordEnv: z.string().optional(),
    /** PEM file of the CA that signed the upstream's certificate (added to the system roots). */
    ca: z.string().optional(),
    insecureSkipVerify: z.boolean().default(false),
    /** Outbound HTTP proxy for this upstream; else HTTP(S)_PROXY/NO_PROXY from the environment. */
    proxy: url.optional(),
    bandwidth: rate.optional(),
    /**
     * Token realms (origins) that may receive this upstream's credentials besides its own origin and
     * hosts under its parent domain over HTTPS (registry-1.docker.io → auth.docker.io).
     */
    tokenRealms: z.array(url).default([]),
    timeouts: z
      .object({ connect: duration('10s'), header: duration('30s'), idle: duration('30s') })
      .strict()
      .prefault({}),
  })
  .strict();

/**
 * An `upstreams` entry as written: one upstream, or with `kind: berth` several hosts behind one parent
 * (`hosts: [docker.io, quay.io]`), each becoming an upstream of its own with the entry's other settings.
 */
const UpstreamEntrySchema = UpstreamSchema.extend({ host: registryHost.optional(), hosts: z.array(registryHost).min(1).optional() }).superRefine((u, ctx) => {
  if ((u.host === undefined) === (u.hosts === undefined)) ctx.addIssue({ code: 'custom', path: ['host'], message: 'give host, or (with kind: berth) hosts' });
  if (u.hosts && u.kind !== 'berth')
    ctx.addIssue({ code: 'custom', path: ['hosts'], message: 'is for kind: berth (several registries behind one parent berth); a registry of its own has one host (other names are aliases)' });
  if (u.hosts && u.aliases.length > 0) ctx.addIssue({ code: 'custom', path: ['aliases'], message: 'go with a single host, not with hosts' });
});

const expandHosts = (entries: Array<z.output<typeof UpstreamEntrySchema>>): UpstreamConfig[] => entries.flatMap(({ host, hosts, ...u }) => (hosts ?? [host!]).map((h) => ({ ...u, host: h })));

/** storage.s3: the bucket that holds blobs/ with the S3 driver (src/store/s3/). */
const S3Schema = z
  .object({
    endpoint: url,
    region: z.string().min(1).default('us-east-1'),
    bucket: z.string().min(1),
    /** Key prefix of everything berth keeps in the bucket (`berth/` → `berth/blobs/sha256/…`); '' for the bucket's root. */
    prefix: z
      .string()
      .default('')
      .refine((p) => p === '' || (p.endsWith('/') && !p.startsWith('/')), 'must be empty or end in "/" (and not start with one)'),
    /** Both or neither; without them the SDK's default chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles…). */
    accessKeyId: z.string().min(1).optional(),
    secretAccessKey: z.string().min(1).optional(),
    /** Bucket in the path (`http://host/bucket/key`), as Ceph RGW and MinIO need without wildcard DNS. */
    forcePathStyle: z.boolean().default(true),
    /** Whole blobs read from the bucket are kept on local disk too (LRU up to maxSize), so hot blobs are read locally. */
    localCache: z
      .object({ path: z.string().min(1), maxSize: byteSize('10GiB') })
      .strict()
      .optional(),
  })
  .strict()
  .refine((s) => !s.accessKeyId === !s.secretAccessKey, { message: 'accessKeyId and secretAccessKey go together: give both or neither' });

export const DEFAULT_UPSTREAMS = [
  { host: 'docker.io', url: 'https://registry-1.docker.io', aliases: ['index.docker.io', 'registry-1.docker.io'] },
  { host: 'quay.io', url: 'https://quay.io' },
  { host: 'ghcr.io', url: 'https://ghcr.io' },
  { host: 'registry.k8s.io', url: 'https://registry.k8s.io' },
  { host: 'gcr.io', url: 'https://gcr.io' },
];

/**
 * The configuration file's schema (config/berth.yaml). Every field has a default so that no file at
 * all gives a working server; units are parsed by the field types of fields.ts so the rest of berth sees milliseconds and bytes.
 */
export const ConfigSchema = z
  .object({
    listen: listen.default(':5000'),
    storage: z
      .object({
        path: z.string().min(1).default('./storage'),
        maxSize: sizeOrPercent.optional(),
        /** Re-hash whole cached blobs as they are served (and manifests as they are read); false trusts the disk. */
        verifyReads: z.boolean().default(true),
        /** Where blobs/ lives: under `path` (filesystem), or in an S3 bucket (`s3`; `path` stays the replica's working directory). */
        driver: z.enum(['filesystem', 's3']).default('filesystem'),
        s3: S3Schema.optional(),
      })
      .strict()
      .superRefine((s, ctx) => {
        if (s.driver === 's3' && !s.s3) ctx.addIssue({ code: 'custom', path: ['s3'], message: 'is required with driver: s3 (at least endpoint and bucket)' });
        // A percentage is of the disk under storage.path; with s3 that disk holds only partial downloads, and a bucket has no size.
        if (s.driver === 's3' && s.maxSize && 'percent' in s.maxSize)
          ctx.addIssue({ code: 'custom', path: ['maxSize'], message: 'must be a size (e.g. 500GiB) with driver: s3: a bucket has no disk size' });
      })
      .prefault({}),
    /**
     * Contact no upstream at all: serve what is cached, answer 404 for the rest. `except-parents`: contact
     * only the upstreams of `kind: berth` (a tier's parent); every other upstream is as with `true`.
     */
    offline: z.union([z.boolean(), z.literal('except-parents')]).default(false),
    /** How long a cached tag is served without asking the upstream again. */
    tagTtl: duration('5m'),
    /**
     * Deadline of one manifest request to an upstream (the HEAD, or the GET with its whole body): past it
     * a cached tag is served stale, and an uncached one is a 503.
     */
    manifestTimeout: duration('10s'),
    /** How long a fill that background work wants (prewarm, lazy completion) goes on after its last client left; others: fills.abandonGrace. */
    fillTimeout: duration('30m'),
    /**
     * Limits on fills (downloads from an upstream): how many run at once in all, how many one client
     * address may have started, and how long a fill whose clients all left goes on when no background work
     * (prewarm, lazy completion) wants it. Over a limit a new fill is a 503, so containerd falls back.
     */
    fills: z
      .object({
        maxConcurrent: z.number().int().min(1).default(64),
        maxPerClient: z.number().int().min(1).default(16),
        abandonGrace: duration('10s'),
        maxBackground: z.number().int().min(0).default(4),
      })
      .strict()
      .prefault({}),
    /** Whole blobs whose first bytes were asked by Range: complete in the background or only as read. */
    lazyFill: z.enum(['background', 'on-demand']).default('background'),
    retries: z
      .object({ attempts: z.number().int().min(0).max(100).default(5), backoff: duration('500ms') })
      .strict()
      .prefault({}),
    bandwidth: z.object({ limit: rate.optional() }).strict().prefault({}),
    defaultUpstream: z.string().optional(),
    upstreams: z.array(UpstreamEntrySchema).min(1, 'at least one upstream is needed').prefault(DEFAULT_UPSTREAMS).transform(expandHosts),
    /** Serve HTTPS with this certificate and key (PEM files, re-read on SIGHUP). */
    tls: z
      .object({ certificate: z.string().min(1), key: z.string().min(1) })
      .strict()
      .optional(),
    /** Client authentication. Without it every pull is anonymous. */
    auth: z
      .object({
        /** Whether pulls without credentials are allowed when users or tokens are configured. */
        anonymous: z.boolean().default(false),
        /** An htpasswd file with bcrypt hashes (`htpasswd -Bbn user pass`). */
        htpasswd: z.string().optional(),
        /** A file of bearer tokens for automation, one per line (`#` comments). */
        tokensFile: z.string().optional(),
        /** htpasswd users who may use the admin endpoints (/metrics, /readyz, /_berth/*) on the main listener. */
        admins: z.array(z.string().min(1)).default([]),
        /**
         * Who may pull which repositories, first match wins, names as `<registry>/<repository>`:
         * `[{prefix: "docker.io/private/", users: ["ci"]}]`. `*` is any authenticated client, `anonymous`
         * a client without credentials. A name no rule matches is open to everyone who may pull.
         */
        rules: z.array(z.object({ prefix: z.string().min(1), users: z.array(z.string().min(1)) }).strict()).default([]),
        /**
         * Who may push to (and delete in) which local repositories, first match wins, names as pushed
         * (`site/app`): `[{prefix: "site/", users: ["ci"]}]`. `users` are htpasswd names, `*` every htpasswd
         * user. A local name no rule matches takes no pushes. Bearer tokens push only where their own line in
         * `tokensFile` says (`TOKEN push:site/`). Whoever may push a name may also pull it.
         */
        push: z.array(pushRule).default([]),
      })
      .strict()
      .optional(),
    /**
     * Client connections: how long a client may take to send its request headers (slowloris), and how
     * long a connection may sit with nothing moving (a reader that never reads).
     */
    clientTimeouts: z
      .object({ headers: duration('30s'), idle: duration('2m') })
      .strict()
      .prefault({}),
    /** Admin endpoints: /metrics, /readyz, /healthz and /_berth/* (docs/decisions.md "Admin endpoints"). */
    admin: z
      .object({
        /** A separate listener for them (they leave the main listener when set). */
        listen: listen.optional(),
        /** On the main listener they answer loopback clients only, unless this is true. */
        allowRemote: z.boolean().default(false),
        /** References one POST /_berth/prewarm may name. */
        maxPrewarmReferences: z.number().int().min(1).default(1000),
      })
      .strict()
      .prefault({}),
    /**
     * The local registry beside the cache (issue #10): repositories under these prefixes belong to the site.
     * They take pushes, are never fetched from an upstream (online or offline) and never evicted. An empty
     * list (the default) makes berth a read-only cache: every push is 405 UNSUPPORTED.
     */
    local: z
      .object({
        /** Repository name prefixes, each ending in `/`: `["site/", "ci/"]`. Not a registry host: `docker.io/` is no prefix. */
        prefixes: z.array(localPrefix).default([]),
        /** Without any client auth configured, pushes are refused unless this is true (berth warns at start-up). */
        allowAnonymousPush: z.boolean().default(false),
        /** An upload session nothing was sent to for this long is removed. */
        uploadIdle: duration('1h'),
        /** The largest manifest a client may push (413 beyond it). */
        maxManifestSize: byteSize('4MiB'),
      })
      .strict()
      .prefault({}),
    /** DELETE of manifests, tags and blobs of local repositories; off (405 UNSUPPORTED) unless enabled, as in distribution. */
    delete: z
      .object({ enabled: z.boolean().default(false) })
      .strict()
      .prefault({}),
    /**
     * eStargz on demand (issue #11): `<name>:<tag><suffix>` is the eStargz form of `<name>:<tag>`, converted by
     * berth from the layers it caches, so stargz-snapshotter can pull any image lazily.
     */
    estargz: z
      .object({
        /** Off: a `-esgz` tag is an ordinary tag (fetched from the upstream like any other). */
        enabled: z.boolean().default(true),
        /** The tag suffix that asks for the converted image; what remains must still be a tag. */
        suffix: z
          .string()
          .regex(/^[A-Za-z0-9._-]{1,32}$/, 'must be 1-32 tag characters (letters, digits, ".", "_", "-")')
          .default('-esgz'),
        /** Uncompressed bytes per gzip member of a large file: the unit a lazy reader fetches. */
        chunkSize: byteSize('4MiB'),
        /** Layers converted at once (worker threads, background priority). */
        concurrency: z.number().int().min(1).max(64).default(1),
        /** How long a manifest request waits for a conversion in progress before a 404 saying it is under way. */
        waitFor: duration('30s'),
        /** Lazy pulls observed before berth converts the image again with their start-up files first; 0: never. */
        learnAfter: z.number().int().min(0).default(1),
        /** A lazy pull's start-up reads: the Range reads of one client for one converted image within this time of its first. */
        learnWindow: duration('10s'),
        /** Only these platforms of an index are converted (others are left out of the new index); empty: all. */
        platforms: z.array(z.string().regex(/^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/, 'must be os/arch or os/arch/variant')).default([]),
      })
      .strict()
      .prefault({}),
    /**
     * The tag/manifest index. sqlite: berth.db under storage.path, embedded (the default: one instance).
     * postgres: issue #12, shared by replicas (src/store/pg/, opened by src/store/open-index.ts).
     */
    index: z
      .object({
        driver: z.enum(['sqlite', 'postgres']).default('sqlite'),
        postgres: z
          .object({
            /** postgres://user:password@host:5432/database; the password may be left out and given as PGPASSWORD. Never logged. */
            url: z
              .string()
              .min(1, 'is empty: give postgres://user:password@host:5432/database')
              .refine((v) => /^postgres(ql)?:\/\//.test(v), 'must be a postgres:// or postgresql:// URL (postgres://user:password@host:5432/database)'),
            /** Connections per replica at most. */
            poolSize: z.number().int().min(1).max(1000).default(10),
          })
          .strict()
          .optional(),
      })
      .strict()
      .prefault({})
      .superRefine((ix, ctx) => {
        if (ix.driver === 'postgres' && !ix.postgres) {
          ctx.addIssue({ code: 'custom', path: ['postgres', 'url'], message: 'is required with driver: postgres (postgres://user:password@host:5432/database)' });
        }
      }),
    /**
     * Several replicas sharing PostgreSQL (issue #12, src/cluster/): one upstream read per blob across them
     * (fill leases in the index database; the others stream from the owner at `advertise`, authenticated
     * with `secret`). Needs index.driver postgres. Absent: one replica, nothing changes.
     */
    cluster: z
      .object({
        /** This replica's URL as its peers reach it (`http://10.0.0.5:5000`): the internal blob endpoint is there. */
        advertise: z.string().refine((v) => /^https?:\/\/[^/?#]+\/?$/.test(v), 'must be http://host:port or https://host:port (no path)'),
        /** Shared by every replica: peers sign their requests with it (src/cluster/peer-auth.ts). At least 16 characters. */
        secret: z.string().min(16, 'must be at least 16 characters'),
        /** PEM file of the CA that signed the peers' certificates (an https:// advertise), added to the system roots. */
        ca: z.string().min(1).optional(),
        /** A lease whose heartbeat (every second) is older than this is free: the owner died. */
        leaseTimeout: duration('5s'),
      })
      .strict()
      .optional(),
    log: z
      .object({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
      .strict()
      .prefault({}),
    /** Crash points for the fault tests (src/failpoints.ts); also BERTH_FAILPOINTS=a,b. Empty in production. */
    failpoints: z.array(z.string().min(1)).default([]),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.cluster && (c.index.driver !== 'postgres' || !c.index.postgres)) {
      ctx.addIssue({ code: 'custom', path: ['cluster'], message: 'needs index.driver: postgres and index.postgres.url (the replicas share their fill leases there)' });
    }
    if (c.cluster && c.cluster.leaseTimeout < 2000) ctx.addIssue({ code: 'custom', path: ['cluster', 'leaseTimeout'], message: 'must be at least 2s (heartbeats go every second)' });
    // Push permissions only mean something together: say so at start-up rather than refuse every push later.
    const credentials = !!(c.auth?.htpasswd || c.auth?.tokensFile);
    if (c.local.allowAnonymousPush && credentials) {
      ctx.addIssue({
        code: 'custom',
        path: ['local', 'allowAnonymousPush'],
        message: 'is for a berth without client auth; with auth.htpasswd or auth.tokensFile, list who may push in auth.push (or give tokens push: scopes)',
      });
    }
    if (c.offline === 'except-parents' && !c.upstreams.some((u) => u.kind === 'berth')) {
      ctx.addIssue({ code: 'custom', path: ['offline'], message: 'except-parents reaches only upstreams of kind: berth, and none is configured (offline: true contacts no upstream)' });
    }
    const push = c.auth?.push ?? [];
    if (push.length > 0 && !c.auth?.htpasswd) ctx.addIssue({ code: 'custom', path: ['auth', 'push'], message: 'names htpasswd users: set auth.htpasswd too' });
    push.forEach((r, i) => {
      const p = r.prefix.endsWith('/') ? r.prefix : `${r.prefix}/`;
      if (!c.local.prefixes.some((l) => p.startsWith(l))) {
        ctx.addIssue({
          code: 'custom',
          path: ['auth', 'push', i, 'prefix'],
          message: `"${r.prefix}" is not under any local.prefixes entry (${c.local.prefixes.map((l) => `"${l}"`).join(', ') || 'none'}): nothing could be pushed there`,
        });
      }
    });
  });

export type ConfigInput = z.input<typeof ConfigSchema>;
export type UpstreamConfig = z.output<typeof UpstreamSchema>;
export type Config = z.output<typeof ConfigSchema> & { defaultUpstream: string };
