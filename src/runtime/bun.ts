/**
 * The Bun implementation of {@link Runtime}.
 * @module
 */
import process from "node:process";
import { nodeCreateTemp, nodeFiles } from "./node_files.ts";
import type { Files, Runtime, Server, ServeOptions } from "./types.ts";

// deno-lint-ignore no-explicit-any
declare const Bun: any;

const files: Files = {
  ...nodeFiles,
  body(path, start, end) {
    // Bun.file(...).slice() keeps Content-Length and is sent with sendfile(2).
    return Promise.resolve(Bun.file(path).slice(start, end + 1));
  },
  createTemp: nodeCreateTemp,
};

/** The Bun runtime. */
export const bunRuntime: Runtime = {
  name: "bun",
  files,
  serve(opts: ServeOptions): Promise<Server> {
    const server = Bun.serve({
      hostname: opts.hostname,
      port: opts.port,
      ...(opts.tls ? { tls: { cert: opts.tls.cert, key: opts.tls.key } } : {}),
      // Large layers stream for a long time and a cold download may pause while the upstream
      // answers: the longest idle timeout Bun allows (seconds).
      idleTimeout: 255,
      // deno-lint-ignore no-explicit-any
      fetch: (req: Request, srv: any) => {
        const ip = srv.requestIP(req);
        return opts.handler(req, { remoteAddr: ip?.address ?? "" });
      },
      error: (err: Error) =>
        new Response(JSON.stringify({ errors: [{ code: "UNKNOWN", message: String(err?.message ?? err) }] }), {
          status: 500,
          headers: { "content-type": "application/json" },
        }),
    });
    return Promise.resolve({
      hostname: server.hostname,
      port: server.port,
      async shutdown() {
        await server.stop(false);
      },
    });
  },
  onSignal(signal, fn) {
    process.on(signal, fn);
    return () => process.off(signal, fn);
  },
  env: (name) => process.env[name],
  args: () => Bun.argv.slice(2),
  exit: (code) => process.exit(code),
  isTerminal: () => Boolean(process.stderr.isTTY),
  writeErr: (s) => {
    process.stderr.write(s);
  },
};
