/** Digest parsing, hashing helpers. */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, test } from "node:test";
import { digester, digestOf, looksLikeDigest, parseDigest } from "../src/oci/digest.ts";

const HEX64 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; // sha256 of ""
const HEX128 = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce" +
  "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"; // sha512 of ""

describe("parseDigest", () => {
  test("sha256 with 64 lowercase hex", () => {
    const d = parseDigest(`sha256:${HEX64}`);
    assert.deepEqual(d, { algorithm: "sha256", hex: HEX64, value: `sha256:${HEX64}` });
  });
  test("sha512 with 128 lowercase hex", () => {
    const d = parseDigest(`sha512:${HEX128}`);
    assert.deepEqual(d, { algorithm: "sha512", hex: HEX128, value: `sha512:${HEX128}` });
  });
  const bad: [string, string][] = [
    [`sha256:${HEX64.toUpperCase()}`, "uppercase hex"],
    [`sha256:${HEX64.slice(0, 63)}`, "63 hex"],
    [`sha256:${HEX64}0`, "65 hex"],
    [`sha256:${HEX128}`, "sha256 with 128 hex"],
    [`sha512:${HEX64}`, "sha512 with 64 hex"],
    [`md5:d41d8cd98f00b204e9800998ecf8427e`, "md5"],
    [`SHA256:${HEX64}`, "uppercase algorithm"],
    [HEX64, "missing colon"],
    [`sha256${HEX64}`, "missing colon, algorithm glued on"],
    [`sha256:`, "empty hex"],
    [`:${HEX64}`, "empty algorithm"],
    [`sha256:${HEX64.slice(0, 63)}g`, "non-hex character"],
    [`sha256::${HEX64}`, "double colon"],
    [` sha256:${HEX64}`, "leading space"],
    [`sha256:${HEX64}\n`, "trailing newline"],
    ["", "empty"],
    ["latest", "a tag"],
  ];
  for (const [s, why] of bad) test(`rejects ${why}`, () => assert.equal(parseDigest(s), null));
});

describe("looksLikeDigest", () => {
  test("anything with a colon looks like a digest, tags do not", () => {
    assert.equal(looksLikeDigest(`sha256:${HEX64}`), true);
    assert.equal(looksLikeDigest("md5:abc"), true);
    assert.equal(looksLikeDigest("latest"), false);
    assert.equal(looksLikeDigest("1.0-alpine"), false);
  });
});

describe("digestOf / digester", () => {
  test("digestOf of empty bytes is the well-known sha256", () => {
    assert.equal(digestOf(new Uint8Array()), `sha256:${HEX64}`);
  });
  test("digestOf sha512", () => {
    assert.equal(digestOf(new Uint8Array(), "sha512"), `sha512:${HEX128}`);
  });
  test("digestOf matches node:crypto on real content and the result parses", () => {
    const bytes = new TextEncoder().encode('{"schemaVersion":2}');
    const want = "sha256:" + createHash("sha256").update(bytes).digest("hex");
    assert.equal(digestOf(bytes), want);
    assert.notEqual(digestOf(bytes), `sha256:${HEX64}`);
    assert.ok(parseDigest(digestOf(bytes)));
    assert.ok(parseDigest(digestOf(bytes, "sha512")));
  });
  test("streaming digester over chunks equals digestOf of the whole", () => {
    const a = new TextEncoder().encode("hello ");
    const b = new TextEncoder().encode("world");
    const h = digester();
    h.update(a);
    h.update(b);
    assert.equal(`sha256:${h.digest("hex")}`, digestOf(new TextEncoder().encode("hello world")));
  });
});
