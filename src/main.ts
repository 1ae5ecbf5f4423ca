/**
 * The `ocicache` command line: parse flags, env and config, build the service, serve.
 * @module
 */
import { readFile } from "node:fs/promises";
import { CONFIG_FLAGS, ConfigError, loadConfig, parseFlags } from "./config.ts";
import { createLogger } from "./log.ts";
import { detectRuntime } from "./runtime/mod.ts";
import type { Runtime } from "./runtime/types.ts";
import { openService } from "./service.ts";
import { VERSION } from "./version.ts";

const HELP: Record<string, string> = {
  main: `ocicache ${VERSION} — a read-through cache for OCI / Docker registries

Usage: ocicache [command] [flags]

Commands:
  serve      run the cache (the default)
  version    print the version
  help       this text

Run 'ocicache serve --help' for the flags.`,
  serve: `Usage: ocicache serve [flags]

Flags:
${Object.entries(CONFIG_FLAGS).map(([f, d]) => `  ${f.padEnd(20)} ${d}`).join("\n")}

Examples:
  ocicache serve
  ocicache serve --listen 127.0.0.1:5001 --storage /var/cache/ocicache
  ocicache serve --registry local=http://127.0.0.1:5000 --default-registry local
  docker pull localhost:5000/library/alpine:3          # Docker Hub, unprefixed
  skopeo copy docker://localhost:5000/ghcr.io/owner/app:1.0 dir:/tmp/app --src-tls-verify=false`,
  version: "Usage: ocicache version\n\nPrints the version.",
};

const SHUTDOWN_DEADLINE_MS = 30_000;

async function serve(rt: Runtime, args: string[]): Promise<number> {
  const config = await loadConfig({
    flags: parseFlags(args),
    env: (n) => rt.env(n),
    readText: (p) => readFile(p, "utf8"),
  });
  const log = createLogger(config.logLevel);
  const service = await openService(config, rt, log);
  const server = await rt.serve({ hostname: config.listen.hostname, port: config.listen.port, handler: service.handler });
  log.info("listening", {
    url: `http://${server.hostname.includes(":") ? `[${server.hostname}]` : server.hostname}:${server.port}/v2/`,
    storage: config.storage,
    runtime: rt.name,
    version: VERSION,
    registries: config.registries.map((r) => r.prefix),
    defaultRegistry: config.defaultRegistry,
  });
  const stopped = Promise.withResolvers<void>();
  const stop = (signal: string) => () => {
    log.info("shutting down", { signal, deadlineMs: SHUTDOWN_DEADLINE_MS });
    stopped.resolve();
  };
  rt.onSignal("SIGTERM", stop("SIGTERM"));
  rt.onSignal("SIGINT", stop("SIGINT"));
  await stopped.promise;
  const deadline = new Promise<"deadline">((r) => setTimeout(() => r("deadline"), SHUTDOWN_DEADLINE_MS));
  const result = await Promise.race([server.shutdown().then(() => service.close()).then(() => "clean" as const), deadline]);
  log.info("stopped", { result });
  return 0;
}

/** Run the command line; resolves to the exit code. */
export async function main(rt: Runtime, argv: string[]): Promise<number> {
  const args = [...argv];
  const cmd = args[0] && !args[0].startsWith("-") ? args.shift()! : "serve";
  if (args.includes("--help") || args.includes("-h") || cmd === "help") {
    console.log(HELP[cmd] ?? HELP.main);
    return 0;
  }
  switch (cmd) {
    case "serve":
      return await serve(rt, args);
    case "version":
      console.log(`ocicache ${VERSION} (${rt.name})`);
      return 0;
    default:
      console.error(`ocicache: unknown command ${JSON.stringify(cmd)}; see 'ocicache --help'`);
      return 2;
  }
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
