/**
 * The Deno implementation of {@link Runtime}.
 * @module
 */
import { nodeFiles, tempName } from "./node_files.ts";
import type { Files, Runtime, Server, ServeOptions, TempFile } from "./types.ts";

const CHUNK = 256 * 1024;

/** A stream of `length` bytes of an open file from its current position; closes the file. */
function limited(file: Deno.FsFile, length: number): ReadableStream<Uint8Array> {
  let left = length;
  return new ReadableStream<Uint8Array>({
    type: "bytes",
    async pull(ctrl) {
      if (left <= 0) {
        file.close();
        ctrl.close();
        return;
      }
      const buf = new Uint8Array(Math.min(CHUNK, left));
      const n = await file.read(buf);
      if (n === null || n === 0) {
        file.close();
        ctrl.error(new Error("file ended early"));
        return;
      }
      left -= n;
      ctrl.enqueue(n === buf.length ? buf : buf.subarray(0, n));
    },
    cancel() {
      file.close();
    },
  });
}

const files: Files = {
  ...nodeFiles,
  async body(path, start, end) {
    const file = await Deno.open(path, { read: true });
    try {
      const size = (await file.stat()).size;
      if (start > 0) await file.seek(start, Deno.SeekMode.Start);
      if (end === size - 1) return file.readable;
      return limited(file, end - start + 1);
    } catch (e) {
      file.close();
      throw e;
    }
  },
  async readAll(path) {
    return await Deno.readFile(path);
  },
  async createTemp(dir, prefix): Promise<TempFile> {
    const path = tempName(dir, prefix);
    const file = await Deno.open(path, { write: true, createNew: true, mode: 0o644 });
    return {
      path,
      async write(chunk) {
        let off = 0;
        while (off < chunk.length) off += await file.write(chunk.subarray(off));
      },
      sync: () => file.syncData(),
      async close() {
        file.close();
      },
    };
  },
};

/** The Deno runtime. */
export const denoRuntime: Runtime = {
  name: "deno",
  files,
  serve(opts: ServeOptions): Promise<Server> {
    return new Promise((resolve) => {
      const server = Deno.serve({
        hostname: opts.hostname,
        port: opts.port,
        ...(opts.tls ? { cert: opts.tls.cert, key: opts.tls.key } : {}),
        onListen: () => {},
        handler: (req, info) => {
          const addr = info.remoteAddr as Deno.NetAddr;
          return opts.handler(req, { remoteAddr: addr?.hostname ?? "" });
        },
      });
      const addr = server.addr as Deno.NetAddr;
      resolve({
        hostname: addr.hostname,
        port: addr.port,
        async shutdown() {
          await server.shutdown();
        },
      });
    });
  },
  onSignal(signal, fn) {
    Deno.addSignalListener(signal, fn);
    return () => Deno.removeSignalListener(signal, fn);
  },
  env: (name) => Deno.env.get(name),
  args: () => [...Deno.args],
  exit: (code) => Deno.exit(code),
  isTerminal: () => Deno.stderr.isTerminal(),
  writeErr: (s) => {
    Deno.stderr.writeSync(new TextEncoder().encode(s));
  },
};
