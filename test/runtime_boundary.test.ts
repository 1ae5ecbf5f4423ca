/** Only src/runtime/ may touch Deno.* or Bun.* (design: one small runtime adapter). */
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";

const SRC = fileURLToPath(new URL("../src/", import.meta.url));
const MENTION = /\b(?:Deno|Bun)\??\./;

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await tsFiles(p)));
    else if (e.isFile() && /\.(?:ts|tsx|mts)$/.test(e.name)) out.push(p);
  }
  return out;
}

/** `file:line: text` for every line mentioning Deno./Bun. */
function mentions(file: string, text: string): string[] {
  return text.split("\n").flatMap((line, i) => (MENTION.test(line) ? [`${file}:${i + 1}: ${line.trim()}`] : []));
}

function inRuntime(rel: string): boolean {
  return rel.split(sep)[0] === "runtime";
}

describe("runtime boundary", () => {
  test("the detector flags what it should", () => {
    assert.equal(mentions("x.ts", "const a = Deno.env.get('X');").length, 1);
    assert.equal(mentions("x.ts", "await Bun.write(p, b)").length, 1);
    assert.equal(mentions("x.ts", "globalThis.Deno?.exit(1)").length, 1);
    assert.equal(mentions("x.ts", "// Deno and Bun both run this\nconst ok = 1;").length, 0);
    assert.equal(mentions("x.ts", "const myDeno = { x: 1 }; myDeno.x").length, 0);
  });

  test("no file outside src/runtime/ mentions Deno. or Bun.", async () => {
    const files = await tsFiles(SRC);
    const rels = files.map((f) => relative(SRC, f));
    assert.ok(files.length >= 10, `expected to find the sources under ${SRC}, found ${files.length}`);
    // The walk reaches the adapter, which must mention them: proves the scan reads real files.
    const runtimeHits = (await Promise.all(files.filter((_, i) => inRuntime(rels[i])).map(async (f) => mentions(f, await readFile(f, "utf8"))))).flat();
    assert.ok(runtimeHits.length > 0, "src/runtime/ should hold the Deno/Bun calls");

    const offenders: string[] = [];
    for (let i = 0; i < files.length; i++) {
      if (inRuntime(rels[i])) continue;
      offenders.push(...mentions(`src/${rels[i]}`, await readFile(files[i], "utf8")));
    }
    assert.deepEqual(offenders, [], `Deno./Bun. outside src/runtime/ (move it behind the Runtime adapter):\n${offenders.join("\n")}`);
  });
});
