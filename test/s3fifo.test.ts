/** S3-FIFO eviction (src/cache/s3fifo.ts) and the LRU / FIFO baselines (src/cache/policies.ts). */
import { prng } from "./support/prng.ts";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type EvictionPolicy, FifoPolicy, LruPolicy } from "../src/cache/policies.ts";
import { S3Fifo, type S3FifoChange, type S3FifoEntry, type S3FifoOptions } from "../src/cache/s3fifo.ts";

/** Queue contents, head first. */
function queues(c: S3Fifo) {
  return { small: [...c.queueKeys("small")], main: [...c.queueKeys("main")], ghost: [...c.queueKeys("ghost")] };
}

/** A small seeded PRNG for the randomized runs. */
const rng = prng;

/** A table kept the way the service would keep one from the change events. */
function mirror() {
  const rows = new Map<string, S3FifoEntry>();
  const apply = (changes: readonly S3FifoChange[]) => {
    for (const ch of changes) {
      if (ch.op === "put") rows.set(ch.entry.key, { ...ch.entry });
      else rows.delete(ch.key);
    }
  };
  return { rows, apply };
}

const byKey = (a: S3FifoEntry, b: S3FifoEntry) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);

describe("S3-FIFO, hand-traced", () => {
  test("a new object enters S; a hit raises freq and reorders nothing", () => {
    const c = new S3Fifo({ capacity: 100 });
    assert.deepEqual(c.access("a", 10), { hit: false, admitted: true, evicted: [] });
    assert.deepEqual(c.access("b", 10), { hit: false, admitted: true, evicted: [] });
    assert.deepEqual(c.access("a", 10), { hit: true, admitted: true, evicted: [] });
    assert.deepEqual(queues(c), { small: ["a", "b"], main: [], ghost: [] });
    assert.equal(c.freqOf("a"), 1);
    assert.equal(c.freqOf("b"), 0);
    for (let i = 0; i < 5; i++) c.access("a", 10);
    assert.equal(c.freqOf("a"), 3, "the counter saturates at 3");
    assert.equal(c.bytes, 20);
    assert.equal(c.count, 2);
    assert.equal(c.queueOf("a"), "small");
    assert.equal(c.queueOf("zzz"), undefined);
  });

  test("nothing is evicted until the cache is full, even with S over its share", () => {
    const c = new S3Fifo({ capacity: 100 }); // S's share: 10 bytes
    for (const k of ["a", "b", "c", "d"]) c.access(k, 25);
    assert.deepEqual(queues(c), { small: ["a", "b", "c", "d"], main: [], ghost: [] });
    assert.equal(c.bytes, 100);
  });

  test("S overflow: a hit head moves to M (freq reset), an unhit head goes to G", () => {
    const c = new S3Fifo({ capacity: 100, smallRatio: 0.3 }); // S's share: 30 bytes
    c.access("a", 30);
    c.access("b", 30);
    c.access("c", 30);
    c.access("a", 30); // hit: a.freq = 1
    const r = c.access("d", 30); // 120 > 100: a → M, b → G
    assert.deepEqual(r, { hit: false, admitted: true, evicted: ["b"] });
    assert.deepEqual(queues(c), { small: ["c", "d"], main: ["a"], ghost: ["b"] });
    assert.equal(c.freqOf("a"), 0, "freq is cleared on the move to M");
    assert.equal(c.has("b"), false);
    assert.equal(c.bytes, 90);
    const s = c.stats();
    assert.equal(s.counters.promotions, 1);
    assert.equal(s.counters.evictions, 1);
    assert.equal(s.counters.evictionsSmall, 1);
    assert.deepEqual(s.small, { count: 2, bytes: 60, target: 30 });
    assert.deepEqual(s.main, { count: 1, bytes: 30, target: 70 });
    assert.deepEqual(s.ghost, { count: 1, bytes: 30, maxBytes: 90, maxEntries: 100_000 });

    // b comes back: a ghost hit, admitted straight to M; c (unhit head of S) makes room.
    const r2 = c.access("b", 30);
    assert.deepEqual(r2, { hit: false, admitted: true, evicted: ["c"] });
    assert.deepEqual(queues(c), { small: ["d"], main: ["a", "b"], ghost: ["c"] });
    assert.equal(c.stats().counters.ghostHits, 1);
    assert.equal(c.freqOf("b"), 0);
  });

  test("M: a head with freq > 0 is reinserted at the tail with freq − 1; the first freq-0 head leaves", () => {
    const c = new S3Fifo({ capacity: 100, smallRatio: 0.3 }); // S's share 30, ghost ≤ 90 bytes
    for (const k of ["a", "b", "c", "d", "e"]) c.access(k, 20);
    for (const k of ["a", "b", "c"]) c.access(k, 20); // freq 1 each
    assert.deepEqual(c.access("f", 20).evicted, ["d"]); // a, b, c → M; d → G
    assert.deepEqual(queues(c), { small: ["e", "f"], main: ["a", "b", "c"], ghost: ["d"] });

    c.access("a", 20);
    c.access("a", 20); // a.freq 2
    c.access("c", 20); // c.freq 1
    assert.deepEqual(c.access("g", 20).evicted, ["e"]); // S holds 40 ≥ 30: e → G
    assert.deepEqual(queues(c), { small: ["f", "g"], main: ["a", "b", "c"], ghost: ["d", "e"] });

    assert.deepEqual(c.access("d", 20).evicted, ["f"]); // ghost hit: d → M; f → G
    assert.deepEqual(queues(c), { small: ["g"], main: ["a", "b", "c", "d"], ghost: ["e", "f"] });

    // S now holds 20 < 30: evict from M. a (freq 2) goes round with freq 1; b (freq 0) leaves.
    const r = c.access("e", 20);
    assert.deepEqual(r, { hit: false, admitted: true, evicted: ["b"] });
    assert.deepEqual(queues(c), { small: ["g"], main: ["c", "d", "a", "e"], ghost: ["f"] });
    assert.equal(c.freqOf("a"), 1);
    assert.equal(c.stats().counters.reinsertions, 1);
    assert.equal(c.stats().counters.evictionsMain, 1);

    // Again from M: c (freq 1) goes round with 0; d (0) leaves. M evictions do not feed G.
    assert.deepEqual(c.access("h", 20).evicted, ["d"]);
    assert.deepEqual(queues(c), { small: ["g", "h"], main: ["a", "e", "c"], ghost: ["f"] });
    assert.equal(c.freqOf("c"), 0);
    assert.equal(c.stats().counters.reinsertions, 2);
    assert.equal(c.bytes, 100);
  });

  test("promoteThreshold 2: one hit in S is not enough to reach M", () => {
    const c = new S3Fifo({ capacity: 100, smallRatio: 0.3, ghostRatio: 1, promoteThreshold: 2 });
    c.access("a", 50);
    c.access("b", 50);
    c.access("a", 50); // one hit
    c.access("b", 50);
    c.access("b", 50); // two hits
    assert.deepEqual(c.access("c", 50).evicted, ["a"]); // a (1 hit) → G; that made room
    assert.deepEqual(queues(c), { small: ["b", "c"], main: [], ghost: ["a"] });
    assert.deepEqual(c.access("d", 50).evicted, ["c"]); // b (2 hits) → M; c (0) → G
    assert.deepEqual(queues(c), { small: ["d"], main: ["b"], ghost: ["a", "c"] });
  });

  test("an object larger than S's share is admitted and S drains oldest-first; bytes never exceed capacity", () => {
    const c = new S3Fifo({ capacity: 100 }); // S's share: 10 bytes
    c.access("a", 5);
    c.access("b", 5);
    assert.deepEqual(c.access("c", 60).evicted, []); // bigger than S's share: admitted to S all the same
    assert.deepEqual(queues(c).small, ["a", "b", "c"]);
    assert.ok(c.stats().small.bytes > c.smallTarget);
    // d needs 50 of the 30 free bytes: a, b and then c leave S, oldest first, until d fits.
    const r = c.access("d", 50);
    assert.deepEqual(r.evicted, ["a", "b", "c"]);
    assert.deepEqual(queues(c), { small: ["d"], main: [], ghost: ["a", "b", "c"] });
    assert.ok(c.bytes <= c.capacity);
  });

  test("an object larger than the whole capacity is not admitted and evicts nothing", () => {
    const c = new S3Fifo({ capacity: 100 });
    c.access("a", 40);
    c.access("b", 40);
    const before = c.snapshot();
    assert.deepEqual(c.access("huge", 101), { hit: false, admitted: false, evicted: [] });
    assert.equal(c.has("huge"), false);
    assert.deepEqual(c.snapshot(), before);
    assert.equal(c.stats().counters.rejected, 1);
    assert.equal(c.stats().counters.rejectedBytes, 101);
    // Exactly the capacity is admitted (and evicts everything else).
    assert.deepEqual(c.access("full", 100), { hit: false, admitted: true, evicted: ["a", "b"] });
    assert.equal(c.bytes, 100);
  });

  test("the ghost queue is bounded in bytes and in keys", () => {
    const c = new S3Fifo({ capacity: 100, ghostRatio: 0.3 }); // ghost ≤ 30 bytes
    for (const k of ["a", "b", "c", "d", "e", "f"]) c.access(k, 20);
    assert.deepEqual(queues(c).ghost, ["a"]); // f made a leave
    c.access("g", 20); // b → G: 40 > 30 bytes, a falls off
    assert.deepEqual(queues(c).ghost, ["b"]);
    assert.equal(c.stats().counters.ghostExpired, 1);
    c.access("x", 50); // c, d, e → G in turn; only the newest fits in 30 bytes
    assert.deepEqual(queues(c).ghost, ["e"]);

    const k = new S3Fifo({ capacity: 10, ghostMaxEntries: 2 });
    for (let i = 0; i < 10; i++) k.access(`k${i}`, 1);
    for (let i = 10; i < 15; i++) k.access(`k${i}`, 1); // k0..k4 leave, the newest two are kept
    assert.deepEqual(queues(k).ghost, ["k3", "k4"]);

    const none = new S3Fifo({ capacity: 10, ghostRatio: 0 });
    for (let i = 0; i < 12; i++) none.access(`k${i}`, 1);
    assert.deepEqual(queues(none).ghost, []);
    assert.equal(none.count, 10);
  });

  test("remove forgets a resident object; a ghost key is not resident and stays", () => {
    const c = new S3Fifo({ capacity: 100, smallRatio: 0.3 });
    c.access("a", 30);
    c.access("b", 30);
    c.access("c", 30);
    c.access("d", 30); // a → G
    assert.equal(c.remove("b"), true);
    assert.equal(c.remove("b"), false);
    assert.equal(c.remove("a"), false);
    assert.equal(c.queueOf("a"), "ghost");
    assert.deepEqual(queues(c), { small: ["c", "d"], main: [], ghost: ["a"] });
    assert.equal(c.bytes, 60);
    assert.equal(c.stats().counters.removals, 1);
  });

  test("a hit with a different size is a removal plus a miss", () => {
    const c = new S3Fifo({ capacity: 100 });
    c.access("a", 10);
    c.access("a", 10);
    assert.deepEqual(c.access("a", 20), { hit: false, admitted: true, evicted: [] });
    assert.equal(c.bytes, 20);
    assert.equal(c.freqOf("a"), 0);
  });

  test("bad sizes and options are refused", () => {
    assert.throws(() => new S3Fifo({ capacity: 0 }), RangeError);
    assert.throws(() => new S3Fifo({ capacity: 1.5 }), RangeError);
    assert.throws(() => new S3Fifo({ capacity: 10, smallRatio: 1 }), RangeError);
    assert.throws(() => new S3Fifo({ capacity: 10, promoteThreshold: 4 }), RangeError);
    const c = new S3Fifo({ capacity: 10 });
    assert.throws(() => c.access("a", -1), RangeError);
    assert.throws(() => c.access("a", NaN), RangeError);
    assert.equal(c.count, 0);
  });
});

describe("S3-FIFO change events", () => {
  test("one batch per operation, after the state is consistent; the rows mirror the snapshot", () => {
    const m = mirror();
    const batches: S3FifoChange[][] = [];
    const c = new S3Fifo({
      capacity: 100,
      smallRatio: 0.3,
      onChange: (ch) => {
        batches.push([...ch]);
        m.apply(ch);
        // Delivered once the operation is complete: the state already reflects every change.
        assert.deepEqual([...m.rows.values()].sort(byKey), c.snapshot().entries.sort(byKey));
      },
    });
    c.access("a", 30);
    c.access("b", 30);
    c.access("c", 30);
    c.access("a", 30);
    c.access("a", 30);
    c.access("a", 30);
    c.access("a", 30); // at maxFreq: no change, no batch
    c.access("d", 30);
    const reasons = batches.map((b) => b.map((x) => `${x.op}:${x.reason}:${x.op === "put" ? x.entry.key : x.key}`));
    assert.deepEqual(reasons, [
      ["put:insert:a"],
      ["put:insert:b"],
      ["put:insert:c"],
      ["put:hit:a"],
      ["put:hit:a"],
      ["put:hit:a"],
      ["put:promote:a", "put:ghost:b", "put:insert:d"],
    ]);
    const last = batches.at(-1)!;
    assert.deepEqual(last[0], { op: "put", reason: "promote", entry: { key: "a", size: 30, queue: "main", freq: 0, seq: 4 } });
    assert.deepEqual(last[1], { op: "put", reason: "ghost", entry: { key: "b", size: 30, queue: "ghost", freq: 0, seq: 5 } });
    c.remove("c");
    assert.deepEqual(batches.at(-1), [{ op: "delete", reason: "remove", key: "c" }]);
    assert.equal(c.access("big", 1000).admitted, false);
    assert.equal(batches.length, 8, "a refused object changes nothing");
  });
});

describe("S3-FIFO snapshot and restore", () => {
  const opts: S3FifoOptions = { capacity: 1000, smallRatio: 0.1, ghostRatio: 0.9 };

  /** A reproducible request stream over a key pool with fixed sizes. */
  function stream(seed: number, n: number) {
    const r = rng(seed);
    const sizes = new Map<string, number>();
    const out: [string, number][] = [];
    for (let i = 0; i < n; i++) {
      const k = `k${Math.floor(Math.pow(r(), 2) * 80)}`; // skewed popularity
      if (!sizes.has(k)) sizes.set(k, 1 + Math.floor(r() * 120));
      out.push([k, sizes.get(k)!]);
    }
    return out;
  }

  test("a restored copy behaves identically, via the JSON snapshot and via the event-kept rows", () => {
    const reqs = stream(7, 4000);
    const m = mirror();
    const a = new S3Fifo({ ...opts, onChange: m.apply });
    for (const [k, s] of reqs.slice(0, 2000)) a.access(k, s);
    const snap = JSON.parse(JSON.stringify(a.snapshot()));

    const b = new S3Fifo(opts);
    assert.deepEqual(b.restore(snap), { evicted: [] });
    assert.deepEqual(b.snapshot(), a.snapshot());

    // The rows a table would hold, in arbitrary (shuffled) order.
    const rows = [...m.rows.values()];
    const r = rng(99);
    for (let i = rows.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [rows[i], rows[j]] = [rows[j], rows[i]];
    }
    const c = new S3Fifo(opts);
    c.restore({ version: 1, entries: rows });
    assert.deepEqual(c.snapshot(), a.snapshot());

    const evA: S3FifoChange[][] = [];
    const evB: S3FifoChange[][] = [];
    a.onChange = (ch) => evA.push([...ch]);
    b.onChange = (ch) => evB.push([...ch]);
    for (const [k, s] of reqs.slice(2000)) {
      const ra = a.access(k, s);
      assert.deepEqual(b.access(k, s), ra);
      assert.deepEqual(c.access(k, s), ra);
    }
    assert.deepEqual(evB, evA);
    assert.deepEqual(b.snapshot(), a.snapshot());
    assert.deepEqual(c.snapshot(), a.snapshot());
  });

  test("restoring into a smaller cache evicts by the normal rules until it fits", () => {
    const a = new S3Fifo(opts);
    for (const [k, s] of stream(3, 1500)) a.access(k, s);
    const snap = a.snapshot();
    const events: S3FifoChange[] = [];
    const small = new S3Fifo({ capacity: 300, onChange: (ch) => events.push(...ch) });
    const { evicted } = small.restore(snap);
    assert.ok(evicted.length > 0);
    assert.ok(small.bytes <= 300);
    for (const k of evicted) assert.equal(small.has(k), false);
    const before = new Set(snap.entries.filter((e) => e.queue !== "ghost").map((e) => e.key));
    assert.equal(small.count + evicted.length, before.size);
    assert.ok(small.stats().ghost.bytes <= small.ghostMaxBytes);
    assert.ok(events.some((e) => e.op === "delete" || e.reason === "ghost"), "the evictions are reported");
  });

  test("entries without seq are taken in the order given", () => {
    const c = new S3Fifo({ capacity: 100, smallRatio: 0.3 });
    c.restore({
      version: 1,
      entries: [
        { key: "m1", size: 20, queue: "main", freq: 9 },
        { key: "s1", size: 20, queue: "small" },
        { key: "g1", size: 20, queue: "ghost", freq: 2 },
        { key: "s2", size: 20, queue: "small", freq: 1 },
      ],
    });
    assert.deepEqual(queues(c), { small: ["s1", "s2"], main: ["m1"], ghost: ["g1"] });
    assert.equal(c.freqOf("m1"), 3, "clamped to maxFreq");
    assert.equal(c.freqOf("s2"), 1);
    // Stamps are assigned in queue order: S, then M, then G.
    assert.deepEqual(c.snapshot().entries.map((e) => `${e.key}@${e.seq}`), ["s1@1", "s2@2", "m1@3", "g1@4"]);
    assert.deepEqual(c.snapshot().entries.find((e) => e.key === "g1"), { key: "g1", size: 20, queue: "ghost", freq: 0, seq: 4 });
    // New stamps continue after the restored ones.
    c.access("n", 10);
    assert.equal(c.snapshot().entries.find((e) => e.key === "n")!.seq, 5);
  });

  test("a bad snapshot is refused and leaves the state as it was", () => {
    const c = new S3Fifo({ capacity: 100 });
    c.access("a", 10);
    const before = c.snapshot();
    const bad: unknown[] = [
      { version: 2, entries: [] },
      { version: 1 },
      { version: 1, entries: [{ key: "x", size: 1, queue: "small" }, { key: "x", size: 1, queue: "main" }] },
      { version: 1, entries: [{ key: "x", size: 1, queue: "attic" }] },
      { version: 1, entries: [{ key: "x", size: -1, queue: "small" }] },
      { version: 1, entries: [{ key: "x", size: 1, queue: "small", seq: 1 }, { key: "y", size: 1, queue: "small" }] },
    ];
    for (const s of bad) {
      assert.throws(() => c.restore(s as Parameters<S3Fifo["restore"]>[0]));
      assert.deepEqual(c.snapshot(), before);
    }
  });
});

describe("LRU and FIFO", () => {
  for (const [name, make, victim] of [
    ["lru", (cap: number) => new LruPolicy(cap), "b"],
    ["fifo", (cap: number) => new FifoPolicy(cap), "a"],
  ] as const) {
    test(`${name}: a hit on the oldest ${name === "lru" ? "saves it" : "does not save it"}`, () => {
      const p = make(30);
      p.access("a", 10);
      p.access("b", 10);
      p.access("c", 10);
      assert.deepEqual(p.access("a", 10), { hit: true, admitted: true, evicted: [] });
      assert.deepEqual(p.access("d", 10), { hit: false, admitted: true, evicted: [victim] });
      assert.equal(p.bytes, 30);
      assert.equal(p.count, 3);
      assert.equal(p.has(victim), false);
      assert.deepEqual(p.access("big", 31), { hit: false, admitted: false, evicted: [] });
      assert.deepEqual(p.access("e", 25).evicted.length, 3);
      assert.deepEqual([...p.keys()], ["e"]);
      assert.equal(p.remove("e"), true);
      assert.equal(p.remove("e"), false);
      assert.equal(p.bytes, 0);
    });
  }

  test("lru: keys come oldest-used first", () => {
    const p = new LruPolicy(100);
    for (const k of ["a", "b", "c"]) p.access(k, 1);
    p.access("a", 1);
    assert.deepEqual([...p.keys()], ["b", "c", "a"]);
  });
});

describe("randomized invariants (seeded)", () => {
  function check(make: () => EvictionPolicy, seed: number, ops: number) {
    const r = rng(seed);
    let p = make();
    const capacity = p.capacity;
    const sizeOf = new Map<string, number>();
    let s3 = p instanceof S3Fifo ? p : null;
    const m = mirror();
    if (s3) s3.onChange = m.apply;
    for (let i = 0; i < ops; i++) {
      const k = `k${Math.floor(Math.pow(r(), 1.5) * 120)}`;
      if (!sizeOf.has(k)) {
        const x = r();
        // mostly small, some large, a few bigger than the whole cache, some empty
        sizeOf.set(k, x < 0.05 ? 0 : x < 0.9 ? 1 + Math.floor(r() * 30) : x < 0.98 ? 50 + Math.floor(r() * 100) : capacity + 1);
      }
      const op = r();
      const where = `seed ${seed}, op ${i}`;
      if (op < 0.05) {
        const was = p.has(k);
        assert.equal(p.remove(k), was, where);
        assert.equal(p.has(k), false, where);
      } else if (op < 0.07 && s3) {
        // a restart: restore a fresh copy from the snapshot and keep going on it
        const copy = make() as S3Fifo;
        copy.onChange = m.apply;
        assert.deepEqual(copy.restore(JSON.parse(JSON.stringify(s3.snapshot()))), { evicted: [] }, where);
        assert.deepEqual(copy.snapshot(), s3.snapshot(), where);
        s3.onChange = undefined;
        p = s3 = copy;
      } else {
        const size = sizeOf.get(k)!;
        const had = p.has(k);
        const res = p.access(k, size);
        assert.equal(res.hit, had, where);
        assert.equal(res.admitted, size <= capacity, where);
        assert.equal(p.has(k), res.admitted, where);
        for (const e of res.evicted) assert.equal(p.has(e), false, `${where}: evicted ${e} still resident`);
        assert.ok(!res.evicted.includes(k), where);
      }
      assert.ok(p.bytes <= capacity, `${where}: ${p.bytes} > ${capacity}`);
      const keys = [...p.keys()];
      assert.equal(new Set(keys).size, keys.length, `${where}: a key twice`);
      assert.equal(keys.length, p.count, where);
      assert.equal(keys.reduce((s, key) => s + sizeOf.get(key)!, 0), p.bytes, `${where}: bytes ≠ sum of sizes`);
      if (s3) {
        const snap = s3.snapshot().entries;
        const seen = new Set<string>();
        const lastSeq: Record<string, number> = { small: 0, main: 0, ghost: 0 };
        let gBytes = 0;
        for (const e of snap) {
          assert.ok(!seen.has(e.key), `${where}: ${e.key} in two queues`);
          seen.add(e.key);
          assert.ok(e.seq > lastSeq[e.queue], `${where}: seq order in ${e.queue}`);
          lastSeq[e.queue] = e.seq;
          assert.ok(e.freq >= 0 && e.freq <= 3, where);
          if (e.queue === "ghost") {
            assert.equal(s3.has(e.key), false, `${where}: ghost holds resident ${e.key}`);
            gBytes += e.size;
          }
        }
        const st = s3.stats();
        assert.equal(st.small.bytes + st.main.bytes, p.bytes, where);
        assert.equal(st.ghost.bytes, gBytes, where);
        assert.ok(gBytes <= s3.ghostMaxBytes && st.ghost.count <= s3.ghostMaxEntries, `${where}: ghost bound`);
        assert.deepEqual([...m.rows.values()].sort(byKey), [...snap].sort(byKey), `${where}: event mirror`);
      }
    }
  }

  for (const seed of [1, 2, 3, 4, 5]) {
    test(`s3fifo, seed ${seed}`, () => check(() => new S3Fifo({ capacity: 300, smallRatio: 0.2, ghostMaxEntries: 25 }), seed, 1500));
  }
  test("s3fifo, promoteThreshold 2", () => check(() => new S3Fifo({ capacity: 300, promoteThreshold: 2 }), 11, 1500));
  test("lru", () => check(() => new LruPolicy(300), 6, 1500));
  test("fifo", () => check(() => new FifoPolicy(300), 7, 1500));
});
