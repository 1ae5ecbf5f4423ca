/**
 * OCI distribution error bodies: `{"errors":[{"code","message","detail"}]}`.
 *
 * Every error the cache answers goes through {@link ociError}, so clients always get
 * the JSON shape of the distribution spec with the status a registry would use.
 * @module
 */

/** The error codes of the OCI distribution spec, plus the distribution registry's UNAVAILABLE. */
export type ErrorCode =
  | "BLOB_UNKNOWN"
  | "DIGEST_INVALID"
  | "MANIFEST_UNKNOWN"
  | "MANIFEST_INVALID"
  | "NAME_INVALID"
  | "NAME_UNKNOWN"
  | "SIZE_INVALID"
  | "UNAUTHORIZED"
  | "DENIED"
  | "UNSUPPORTED"
  | "TOOMANYREQUESTS"
  | "UNAVAILABLE"
  | "RANGE_INVALID"
  | "PAGINATION_NUMBER_INVALID"
  | "UNKNOWN";

/** Build an OCI JSON error response. `headers` are added to the response (e.g. Retry-After). */
export function ociError(
  status: number,
  code: ErrorCode,
  message: string,
  detail?: unknown,
  headers?: HeadersInit,
): Response {
  const h = new Headers(headers);
  h.set("content-type", "application/json");
  h.set("docker-distribution-api-version", "registry/2.0");
  const body = JSON.stringify({ errors: [{ code, message, detail: detail ?? null }] });
  return new Response(body, { status, headers: h });
}
