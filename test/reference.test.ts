/** Repository-name and tag grammar (OCI distribution spec). */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isValidName, isValidTag, MAX_NAME_LENGTH } from "../src/oci/reference.ts";

describe("isValidName", () => {
  const good = [
    "nginx",
    "library/nginx",
    "owner/app",
    "a/b/c/d",
    "a.b",
    "a_b",
    "a__b",
    "a-b",
    "a--b",
    "a---b",
    "foo.bar/baz_qux/x-y",
    "0",
    "9x/7y",
  ];
  for (const n of good) test(`accepts ${JSON.stringify(n)}`, () => assert.equal(isValidName(n), true));

  const bad: [string, string][] = [
    ["", "empty"],
    ["Nginx", "uppercase"],
    ["library/Nginx", "uppercase in a later component"],
    ["-nginx", "leading separator"],
    ["nginx-", "trailing separator"],
    [".nginx", "leading dot"],
    ["nginx.", "trailing dot"],
    ["_nginx", "leading underscore"],
    ["a___b", "three underscores"],
    ["a..b", "two dots"],
    ["a._b", "mixed separators"],
    ["a_-b", "mixed separators"],
    ["/nginx", "leading slash: empty component"],
    ["nginx/", "trailing slash: empty component"],
    ["a//b", "empty component in the middle"],
    ["a b", "space"],
    ["a:b", "colon"],
    ["a@b", "at sign"],
    ["ngïnx", "non-ASCII"],
  ];
  for (const [n, why] of bad) test(`rejects ${JSON.stringify(n)} (${why})`, () => assert.equal(isValidName(n), false));

  test(`length limit is ${MAX_NAME_LENGTH}`, () => {
    assert.equal(MAX_NAME_LENGTH, 255);
    const atLimit = "a".repeat(100) + "/" + "b".repeat(154);
    assert.equal(atLimit.length, 255);
    assert.equal(isValidName(atLimit), true);
    assert.equal(isValidName(atLimit + "c"), false);
    assert.equal(isValidName("a".repeat(256)), false);
  });
});

describe("isValidTag", () => {
  test("128 characters is the maximum", () => {
    assert.equal(isValidTag("a".repeat(128)), true);
    assert.equal(isValidTag("a".repeat(129)), false);
  });
  for (const t of ["latest", "1.0", "v1.2.3-rc.1", "_private", "UPPER_case", "0", "a-b_c.d", "1.25-alpine"]) {
    test(`accepts ${JSON.stringify(t)}`, () => assert.equal(isValidTag(t), true));
  }
  for (const t of ["", ".hidden", "-dash", "a:b", "a/b", "a b", "sha256:abc", "tag+meta", "ünï"]) {
    test(`rejects ${JSON.stringify(t)}`, () => assert.equal(isValidTag(t), false));
  }
});
