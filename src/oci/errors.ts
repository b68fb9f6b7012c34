/**
 * The one error type of berth. Every failure that reaches a client is a RegistryError with a code from
 * the distribution spec (section "Error Codes") or one of berth's own, and its HTTP status comes from
 * the table below, never from the throw site.
 */
export const ERROR_STATUS = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_INVALID: 400,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  // 400, as distribution answers a manifest PUT that names a blob the repository does not have.
  MANIFEST_BLOB_UNKNOWN: 400,
  MANIFEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  // berth's own codes (clients treat unknown codes by their status)
  PAGINATION_NUMBER_INVALID: 400,
  QUERY_INVALID: 400,
  RANGE_INVALID: 400,
  RANGE_NOT_SATISFIABLE: 416,
  NOT_FOUND: 404,
  /** A manifest body over local.maxManifestSize (the spec's 413 Payload Too Large). */
  MANIFEST_TOO_LARGE: 413,
  // 502/503 make containerd and docker fall back to the next host. 429 is never sent: containerd
  // would retry the same host.
  UPSTREAM_ERROR: 502,
  UNAVAILABLE: 503,
  INTERNAL: 500,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly detail: unknown;
  /** Extra response headers (e.g. Content-Range on a 416). */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, detail?: unknown, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'RegistryError';
    this.code = code;
    this.detail = detail;
    this.headers = headers;
  }

  get status(): number {
    return ERROR_STATUS[this.code];
  }

  toJSON(): { errors: Array<{ code: string; message: string; detail?: unknown }> } {
    const e: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) e.detail = this.detail;
    return { errors: [e] };
  }
}

export function isRegistryError(err: unknown): err is RegistryError {
  return err instanceof RegistryError;
}
