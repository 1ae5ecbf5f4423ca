/**
 * Manifest media types and `Accept` negotiation.
 * @module
 */

/** OCI image manifest. */
export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
/** OCI image index. */
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
/** Docker image manifest, schema 2. */
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
/** Docker manifest list. */
export const DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
/** Docker schema 1 (signed), still served by some registries. */
export const DOCKER_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/** Docker schema 1 (unsigned). */
export const DOCKER_V1 = "application/vnd.docker.distribution.manifest.v1+json";

/** Every manifest type the cache knows, in the order sent upstream when a client names none. */
export const MANIFEST_TYPES = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] as const;

/** The `Accept` value sent upstream when the client sent none (or only a wildcard). */
export const DEFAULT_ACCEPT = MANIFEST_TYPES.join(", ");

/** The media types named in an `Accept` header, without parameters, lowercased. */
export function acceptedTypes(accept: string | null): string[] {
  if (!accept) return [];
  return accept.split(",")
    // q=0 means "not acceptable" (RFC 9110 §12.4.2).
    .filter((p) => !/;\s*q\s*=\s*0(?:\.0{0,3})?\s*(?:;|$)/i.test(p))
    .map((p) => p.split(";")[0].trim().toLowerCase())
    .filter((t) => t);
}

/**
 * Whether a client with this `Accept` header takes a manifest of `mediaType`. No Accept, or a
 * wildcard, takes anything (what registries do for clients like curl).
 */
export function accepts(accept: string | null, mediaType: string): boolean {
  const types = acceptedTypes(accept);
  if (types.length === 0) return true;
  return types.some((t) => t === "*/*" || t === "application/*" || t === mediaType.toLowerCase());
}

/** The Accept value to send upstream for a client's Accept header. */
export function upstreamAccept(accept: string | null): string {
  const types = acceptedTypes(accept).filter((t) => t !== "*/*");
  return types.length ? accept! : DEFAULT_ACCEPT;
}

/**
 * The media type of a manifest: the upstream's Content-Type when it names a specific type, else
 * the `mediaType` field of the JSON. Returns null when neither says.
 */
export function manifestMediaType(contentType: string | null, parsed: unknown): string | null {
  const ct = contentType?.split(";")[0].trim().toLowerCase();
  if (ct && ct !== "application/json" && ct !== "text/plain" && ct !== "application/octet-stream") return ct;
  if (parsed && typeof parsed === "object" && "mediaType" in parsed) {
    const mt = (parsed as { mediaType: unknown }).mediaType;
    if (typeof mt === "string" && mt) return mt;
  }
  if (parsed && typeof parsed === "object" && "manifests" in parsed) return OCI_INDEX;
  if (parsed && typeof parsed === "object" && "layers" in parsed) return OCI_MANIFEST;
  return null;
}
