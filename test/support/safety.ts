// What keeps real clients on loopback. Clients (containerd, dockerd, podman) fall back to the real
// registry when a mirror fails; these make every such fallback fail locally instead of leaving the box.

/** Nothing listens on port 9 (discard), and a test cannot bind it: a connection there is refused at once. */
export const DEAD_ENDPOINT = '127.0.0.1:9';

/**
 * Go clients never proxy loopback addresses, so with this env 127.0.0.1 is reached directly while any
 * other host (registry-1.docker.io…) goes to the dead endpoint.
 */
export const DEAD_PROXY_ENV = {
  HTTP_PROXY: `http://${DEAD_ENDPOINT}`,
  HTTPS_PROXY: `http://${DEAD_ENDPOINT}`,
  http_proxy: `http://${DEAD_ENDPOINT}`,
  https_proxy: `http://${DEAD_ENDPOINT}`,
  NO_PROXY: 'localhost,127.0.0.1,::1',
  no_proxy: 'localhost,127.0.0.1,::1',
} as const;

/** True for URLs/hosts that stay on this machine: 127.x, ::1, localhost. */
export function isLoopback(urlOrHost: string): boolean {
  const host = /^[a-z]+:\/\//i.test(urlOrHost) ? new URL(urlOrHost).hostname : urlOrHost.replace(/:\d+$/, '');
  return /^127\.\d+\.\d+\.\d+$/.test(host) || host === 'localhost' || host === '[::1]' || host === '::1';
}
