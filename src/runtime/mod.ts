/**
 * Picks the runtime implementation for the process at start.
 * @module
 */
import { bunRuntime } from "./bun.ts";
import { denoRuntime } from "./deno.ts";
import type { Runtime } from "./types.ts";

export type * from "./types.ts";

/** The runtime this process runs on. Throws on anything but Deno or Bun. */
export function detectRuntime(): Runtime {
  if ("Bun" in globalThis) return bunRuntime;
  if ("Deno" in globalThis) return denoRuntime;
  throw new Error("ocicache runs on Deno or Bun");
}
