/**
 * The request path to a parent berth (an upstream of `kind: berth`) for a path of the registry API
 * (`v2/<repository>/...`): the registry it is for goes along twice, as containerd's override_path form
 * does (`v2/<host>/<repository>/...?ns=<host>`). `ns` makes the parent route to its upstream of that host
 * whatever the host looks like (`registry` without a dot would read as a repository component); the path
 * prefix, which the parent strips once when `ns` names it, keeps a repository that itself begins with the
 * host's name (`quay.io/quay.io/x`) intact. A path that names `ns` already (a Link the parent sent) is its.
 */
export function tierPath(path: string, host: string): string {
  const q = path.indexOf('?');
  const pathname = q < 0 ? path : path.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : path.slice(q + 1));
  if (query.has('ns')) return path;
  const rest = pathname.replace(/^\/?v2\//, '');
  query.set('ns', host);
  return `v2/${host}/${rest}?${query}`;
}

/** A page query the parent sent back (`ns=…&n=…&last=…`) without its `ns`, which is this berth's to add again. */
export function withoutNs(query: string): string {
  const q = new URLSearchParams(query);
  q.delete('ns');
  return q.toString();
}
