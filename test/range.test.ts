/** Range header parsing (RFC 9110 §14). */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { contentRange, parseRange } from "../src/http/range.ts";

describe("parseRange", () => {
  test("no header → full", () => assert.deepEqual(parseRange(null, 100), { kind: "full" }));
  test("bytes=0-9", () => assert.deepEqual(parseRange("bytes=0-9", 100), { kind: "partial", start: 0, end: 9 }));
  test("single byte bytes=5-5", () => assert.deepEqual(parseRange("bytes=5-5", 100), { kind: "partial", start: 5, end: 5 }));
  test("whole body as a range bytes=0-99", () => assert.deepEqual(parseRange("bytes=0-99", 100), { kind: "partial", start: 0, end: 99 }));
  test("open-ended bytes=10-", () => assert.deepEqual(parseRange("bytes=10-", 100), { kind: "partial", start: 10, end: 99 }));
  test("open-ended at the last byte", () => assert.deepEqual(parseRange("bytes=99-", 100), { kind: "partial", start: 99, end: 99 }));
  test("suffix bytes=-5", () => assert.deepEqual(parseRange("bytes=-5", 100), { kind: "partial", start: 95, end: 99 }));
  test("suffix larger than the body → whole body", () => {
    assert.deepEqual(parseRange("bytes=-500", 100), { kind: "partial", start: 0, end: 99 });
  });
  test("end past size is clamped", () => {
    assert.deepEqual(parseRange("bytes=90-1000", 100), { kind: "partial", start: 90, end: 99 });
  });
  test("start at or past size → unsatisfiable", () => {
    assert.deepEqual(parseRange("bytes=100-", 100), { kind: "unsatisfiable" });
    assert.deepEqual(parseRange("bytes=100-200", 100), { kind: "unsatisfiable" });
    assert.deepEqual(parseRange("bytes=5000-5001", 100), { kind: "unsatisfiable" });
  });
  test("bytes=-0 → unsatisfiable", () => assert.deepEqual(parseRange("bytes=-0", 100), { kind: "unsatisfiable" }));
  test("surrounding whitespace is tolerated", () => {
    assert.deepEqual(parseRange("  bytes=0-9 ", 100), { kind: "partial", start: 0, end: 9 });
  });
  for (
    const h of [
      "",
      "bytes=",
      "bytes=-",
      "bytes=abc",
      "bytes=a-b",
      "bytes=9-0",
      "bytes=0-1,5-9",
      "bytes=0-1, 5-9",
      "items=0-9",
      "bytes 0-9",
      "bytes=0--9",
      "bytes=+1-5",
      "bytes=1.5-9",
    ]
  ) {
    test(`malformed or multi-range ${JSON.stringify(h)} → full`, () => assert.deepEqual(parseRange(h, 100), { kind: "full" }));
  }
  describe("zero-size body", () => {
    test("no header → full", () => assert.deepEqual(parseRange(null, 0), { kind: "full" }));
    test("bytes=0- → unsatisfiable", () => assert.deepEqual(parseRange("bytes=0-", 0), { kind: "unsatisfiable" }));
    test("bytes=0-0 → unsatisfiable", () => assert.deepEqual(parseRange("bytes=0-0", 0), { kind: "unsatisfiable" }));
    test("suffix bytes=-5 → unsatisfiable", () => assert.deepEqual(parseRange("bytes=-5", 0), { kind: "unsatisfiable" }));
  });
  test("one-byte body", () => {
    assert.deepEqual(parseRange("bytes=0-", 1), { kind: "partial", start: 0, end: 0 });
    assert.deepEqual(parseRange("bytes=-1", 1), { kind: "partial", start: 0, end: 0 });
    assert.deepEqual(parseRange("bytes=1-", 1), { kind: "unsatisfiable" });
  });
  test("large offsets beyond 32 bits", () => {
    const size = 6 * 1024 ** 3;
    assert.deepEqual(parseRange(`bytes=${5 * 1024 ** 3}-`, size), { kind: "partial", start: 5 * 1024 ** 3, end: size - 1 });
  });
});

describe("contentRange", () => {
  test("partial", () => {
    assert.equal(contentRange(100, { start: 0, end: 9 }), "bytes 0-9/100");
    assert.equal(contentRange(100, { start: 95, end: 99 }), "bytes 95-99/100");
  });
  test("unsatisfiable", () => {
    assert.equal(contentRange(100), "bytes */100");
    assert.equal(contentRange(0), "bytes */0");
  });
  test("parseRange output feeds contentRange", () => {
    const r = parseRange("bytes=-5", 42);
    assert.equal(r.kind, "partial");
    if (r.kind === "partial") assert.equal(contentRange(42, r), "bytes 37-41/42");
  });
});
