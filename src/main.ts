/**
 * The `ocicache` command line: `serve` (default), `warm`, `ls`, `du`, `fsck`, `gc`, `version`.
 * @module
 */
import { readFile } from "node:fs/promises";
import { type ArgSpec, CONFIG_FLAGS, ConfigError, loadConfig, parseArgs } from "./config.ts";
import { diskUsage, openIndex, renderDiskUsage, renderImages } from "./cli/inspect.ts";
import { parsePlatform, parseWarmRef, warm, type WarmRef } from "./cli/warm.ts";
import { createLogger } from "./log.ts";
import { detectRuntime } from "./runtime/mod.ts";
import type { Runtime } from "./runtime/types.ts";
import { openService } from "./service.ts";
import { Cafs } from "./store/cafs.ts";
import { reconcile, type ReconcileOptions, summarize } from "./store/maintenance.ts";
import { VERSION } from "./version.ts";

/** The flags that pick the store (for commands that read it without serving). */
const STORE_FLAGS: Record<string, string> = {
  "--config": CONFIG_FLAGS["--config"],
  "--storage": CONFIG_FLAGS["--storage"],
  "--index-url": CONFIG_FLAGS["--index-url"],
};

interface Command {
  summary: string;
  spec: ArgSpec;
  usage: string;
  examples: string[];
  run(rt: Runtime, flags: Map<string, string[]>, positionals: string[]): Promise<number>;
}

const SHUTDOWN_DEADLINE_MS = 30_000;

function flagHelp(spec: ArgSpec): string {
  const all = { ...spec.known, ...spec.booleans };
  return Object.entries(all).map(([f, d]) => `  ${f.padEnd(20)} ${d}`).join("\n");
}

function configSources(rt: Runtime, flags: Map<string, string[]>) {
  return { flags, env: (n: string) => rt.env(n), readText: (p: string) => readFile(p, "utf8") };
}

/** `fsck` and `gc`: reconcile the store of `--storage` with its index and print the report. */
async function maintain(rt: Runtime, flags: Map<string, string[]>, name: string, opts: ReconcileOptions): Promise<number> {
  const config = await loadConfig(configSources(rt, flags));
  const index = await openIndex(config);
  try {
    // No Cafs.init(): a running serve may be writing temp files right now.
    const report = await reconcile(index, new Cafs(rt.files, config.storage), { ...opts, dryRun: flags.has("--dry-run") });
    console.log(flags.has("--json") ? JSON.stringify(report, null, 2) : summarize(report, name));
    for (const e of report.errors) console.error(`ocicache ${name}: ${e}`);
    return report.errors.length ? 1 : 0;
  } finally {
    index.close();
  }
}

const COMMANDS: Record<string, Command> = {
  serve: {
    summary: "run the cache (the default command)",
    spec: { known: CONFIG_FLAGS },
    usage: "ocicache serve [flags]",
    examples: [
      "ocicache serve",
      "ocicache serve --listen 127.0.0.1:5001 --storage /var/cache/ocicache",
      "ocicache serve --registry local=http://127.0.0.1:5000 --default-registry local",
      "skopeo copy --src-tls-verify=false docker://localhost:5000/ghcr.io/owner/app:1.0 dir:/tmp/app",
    ],
    async run(rt, flags) {
      const config = await loadConfig(configSources(rt, flags));
      const log = createLogger(config.logLevel);
      const service = await openService(config, rt, log);
      const server = await rt.serve({
        hostname: config.listen.hostname,
        port: config.listen.port,
        handler: service.handler,
        tls: config.tls ?? undefined,
      });
      log.info("listening", {
        url: `${config.tls ? "https" : "http"}://${server.hostname.includes(":") ? `[${server.hostname}]` : server.hostname}:${server.port}/v2/`,
        storage: config.storage,
        runtime: rt.name,
        version: VERSION,
        registries: config.registries.map((r) => r.prefix),
        defaultRegistry: config.defaultRegistry,
        clientAuth: config.clientAuth
          ? { users: config.clientAuth.passwords.size, tokens: config.clientAuth.tokens.length, restricted: config.clientAuth.registries.size }
          : "off: anyone who can reach this port can pull anything the upstream credentials reach (see --htpasswd, --tokens)",
      });
      const stopped = Promise.withResolvers<string>();
      rt.onSignal("SIGTERM", () => stopped.resolve("SIGTERM"));
      rt.onSignal("SIGINT", () => stopped.resolve("SIGINT"));
      const signal = await stopped.promise;
      log.info("shutting down: no new connections, finishing in-flight responses", { signal, deadlineMs: SHUTDOWN_DEADLINE_MS });
      const deadline = new Promise<"deadline">((r) => setTimeout(() => r("deadline"), SHUTDOWN_DEADLINE_MS));
      const result = await Promise.race([server.shutdown().then(() => service.close()).then(() => "clean" as const), deadline]);
      log.info("stopped", { result });
      return 0;
    },
  },
  warm: {
    summary: "pull images through a running cache so they are on disk before they are needed",
    spec: {
      known: {
        "--server": "the cache's URL (default http://127.0.0.1:5000; env OCICACHE_SERVER)",
        "--platform": "only this platform of a multi-platform image, os/arch[/variant] (default: all)",
        "--concurrency": "blobs fetched at once (default 3)",
      },
      positionals: true,
    },
    usage: "ocicache warm [flags] <ref>...   (ref: the path a client uses after /v2/, with :tag or @digest)",
    examples: [
      "ocicache warm docker.io/library/alpine:3.20",
      "ocicache warm --platform linux/arm64 ghcr.io/owner/app:1.0 quay.io/prometheus/node-exporter:v1.8.0",
      "ocicache warm --server http://cache.internal:5000 library/nginx@sha256:…",
    ],
    async run(rt, flags, positionals) {
      if (!positionals.length) throw new ConfigError("ref", "name at least one image to warm, e.g. docker.io/library/alpine:3.20");
      const refs: WarmRef[] = positionals.map((p) => {
        const r = parseWarmRef(p);
        if (!r) throw new ConfigError("ref", `cannot read ${JSON.stringify(p)} as <name>[:tag|@digest]`);
        return r;
      });
      const platformRaw = flags.get("--platform")?.at(-1);
      const platform = platformRaw === undefined ? undefined : parsePlatform(platformRaw);
      if (platform === null) throw new ConfigError("--platform", `expected os/arch[/variant], got ${JSON.stringify(platformRaw)}`);
      const concRaw = flags.get("--concurrency")?.at(-1) ?? "3";
      const concurrency = Number(concRaw);
      if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) throw new ConfigError("--concurrency", "expected a whole number from 1 to 64");
      const server = flags.get("--server")?.at(-1) ?? rt.env("OCICACHE_SERVER") ?? "http://127.0.0.1:5000";
      try {
        new URL(server);
      } catch {
        throw new ConfigError("--server", `not a URL: ${JSON.stringify(server)}`);
      }
      const result = await warm(refs, {
        server,
        platform,
        concurrency,
        out: { tty: rt.isTerminal(), write: (s) => rt.writeErr(s) },
      });
      return result.ok ? 0 : 1;
    },
  },
  ls: {
    summary: "list the cached images",
    spec: { known: STORE_FLAGS, booleans: { "--json": "print JSON" } },
    usage: "ocicache ls [--json] [--storage DIR]",
    examples: ["ocicache ls", "ocicache ls --json --storage /var/lib/ocicache | jq '.[].repository'"],
    async run(rt, flags) {
      const config = await loadConfig(configSources(rt, flags));
      const index = await openIndex(config);
      try {
        const images = await index.listImages();
        console.log(flags.has("--json") ? JSON.stringify(images, null, 2) : renderImages(images));
      } finally {
        index.close();
      }
      return 0;
    },
  },
  du: {
    summary: "bytes and objects in the store, by registry",
    spec: { known: STORE_FLAGS, booleans: { "--json": "print JSON" } },
    usage: "ocicache du [--json] [--storage DIR]",
    examples: ["ocicache du", "ocicache du --json"],
    async run(rt, flags) {
      const config = await loadConfig(configSources(rt, flags));
      const index = await openIndex(config);
      try {
        const du = await diskUsage(index);
        console.log(flags.has("--json") ? JSON.stringify(du, null, 2) : renderDiskUsage(du));
      } finally {
        index.close();
      }
      return 0;
    },
  },
  fsck: {
    summary: "check the store against its index and repair it (safe while serve runs)",
    spec: {
      known: STORE_FLAGS,
      booleans: {
        "--verify": "also re-hash every stored file (BLAKE3 and digest); reads the whole store",
        "--json": "print the report as JSON",
        "--dry-run": "report what would be repaired; change nothing",
      },
    },
    usage: "ocicache fsck [--verify] [--json] [--dry-run] [--storage DIR]",
    examples: ["ocicache fsck", "ocicache fsck --verify --storage /var/lib/ocicache", "ocicache fsck --json | jq .actions"],
    run: (rt, flags) => maintain(rt, flags, "fsck", { verify: flags.has("--verify"), orphanGraceMs: 0 }),
  },
  gc: {
    summary: "remove unindexed files, rows without files and old temp files (safe while serve runs)",
    spec: {
      known: STORE_FLAGS,
      booleans: { "--json": "print the report as JSON", "--dry-run": "report what would be removed; change nothing" },
    },
    usage: "ocicache gc [--json] [--dry-run] [--storage DIR]",
    examples: ["ocicache gc", "ocicache gc --dry-run --storage /var/lib/ocicache"],
    run: (rt, flags) => maintain(rt, flags, "gc", {}),
  },
  version: {
    summary: "print the version",
    spec: { known: {} },
    usage: "ocicache version",
    examples: ["ocicache version"],
    run(rt) {
      console.log(`ocicache ${VERSION} (${rt.name})`);
      return Promise.resolve(0);
    },
  },
};

function mainHelp(): string {
  return `ocicache ${VERSION} — a read-through cache for OCI / Docker registries

Usage: ocicache [command] [flags]

Commands:
${Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(9)} ${c.summary}`).join("\n")}

Run 'ocicache <command> --help' for a command's flags and examples.`;
}

function commandHelp(name: string, c: Command): string {
  const flags = flagHelp(c.spec);
  return `${c.summary}

Usage: ${c.usage}
${flags ? `\nFlags:\n${flags}\n` : ""}
Examples:
${c.examples.map((e) => `  ${e}`).join("\n")}`;
}

/** Run the command line; resolves to the exit code. Configuration mistakes throw {@link ConfigError}. */
export async function main(rt: Runtime, argv: string[]): Promise<number> {
  const args = [...argv];
  const name = args[0] && !args[0].startsWith("-") ? args.shift()! : "serve";
  const wantsHelp = args.includes("--help") || args.includes("-h");
  if (name === "help" || (wantsHelp && argv[0]?.startsWith("-"))) {
    console.log(mainHelp());
    return 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`ocicache: unknown command ${JSON.stringify(name)}; see 'ocicache --help'`);
    return 2;
  }
  if (wantsHelp) {
    console.log(commandHelp(name, cmd));
    return 0;
  }
  const { flags, positionals } = parseArgs(args, cmd.spec);
  return await cmd.run(rt, flags, positionals);
}

if (import.meta.main) {
  const rt = detectRuntime();
  let code: number;
  try {
    code = await main(rt, rt.args());
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`ocicache: ${e.message}`);
      code = 2;
    } else {
      console.error(`ocicache: ${(e as Error)?.message ?? e}`);
      code = 1;
    }
  }
  rt.exit(code);
}
