/**
 * OCI content digests (`algorithm:hex`): parsing and verification.
 * @module
 */
import { createHash, type Hash } from "node:crypto";

/** A parsed, valid digest. `value` is the canonical `algorithm:hex` string. */
export interface Digest {
  algorithm: "sha256" | "sha512";
  hex: string;
  value: string;
}

const LENGTHS = { sha256: 64, sha512: 128 } as const;
const GRAMMAR = /^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;

/**
 * Parse a digest string. Returns null for anything that is not a sha256 (64 lowercase hex)
 * or sha512 (128 lowercase hex) digest — other algorithms are valid grammar but unsupported here,
 * and the caller answers DIGEST_INVALID for both.
 */
export function parseDigest(s: string): Digest | null {
  const m = GRAMMAR.exec(s);
  if (!m) return null;
  const algorithm = m[1];
  if (algorithm !== "sha256" && algorithm !== "sha512") return null;
  const hex = m[2];
  if (hex.length !== LENGTHS[algorithm] || !/^[0-9a-f]+$/.test(hex)) return null;
  return { algorithm, hex, value: s };
}

/** True when `s` has the shape of a digest (contains `:`), as opposed to a tag. */
export function looksLikeDigest(s: string): boolean {
  return s.includes(":");
}

/** A streaming hasher for the digest's algorithm (node:crypto: much faster than WASM here). */
export function digester(algorithm: Digest["algorithm"] = "sha256"): Hash {
  return createHash(algorithm);
}

/** The `algorithm:hex` digest of `bytes`. */
export function digestOf(bytes: Uint8Array, algorithm: Digest["algorithm"] = "sha256"): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest("hex")}`;
}
