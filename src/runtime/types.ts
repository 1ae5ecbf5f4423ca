/**
 * The runtime boundary: everything the cache needs from Deno or Bun, as one interface.
 * Only files in `src/runtime/` may touch `Deno.*` or `Bun.*`.
 * @module
 */

/** Per-request facts the server knows and a `Request` does not carry. */
export interface ConnInfo {
  /** The peer's IP address, or "" when the runtime cannot tell. */
  remoteAddr: string;
}

/** A web-standard handler. */
export type Handler = (req: Request, info: ConnInfo) => Promise<Response>;

/** What {@link Runtime.serve} needs. */
export interface ServeOptions {
  hostname: string;
  /** 0 picks a free port; read it back from {@link Server.port}. */
  port: number;
  handler: Handler;
  /** Serve HTTPS with this PEM certificate (chain) and private key. */
  tls?: { cert: string; key: string };
}

/** A listening HTTP server. */
export interface Server {
  hostname: string;
  port: number;
  /** Stop accepting connections and resolve once in-flight responses have finished. */
  shutdown(): Promise<void>;
}

/** `stat` facts, or null for a missing path. */
export interface FileInfo {
  size: number;
  mtimeMs: number;
  isFile: boolean;
  isDirectory: boolean;
}

/** A file being written: append, make durable, close. */
export interface TempFile {
  readonly path: string;
  /** Append all of `chunk` (loops over short writes). */
  write(chunk: Uint8Array): Promise<void>;
  /** fsync the data to disk. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** Positional reads from one open file. */
export interface FileReader {
  /** Read up to `buf.length` bytes at `position`; resolves to the count read (0 at EOF). */
  read(buf: Uint8Array, position: number): Promise<number>;
  close(): Promise<void>;
}

/** File primitives. Paths are absolute. */
export interface Files {
  /** A response body streaming bytes `start..end` (inclusive) of the file at `path`. */
  body(path: string, start: number, end: number): Promise<BodyInit>;
  /** The whole file (for small files such as manifests). */
  readAll(path: string): Promise<Uint8Array>;
  /** Create a new, empty file with a unique name in `dir` (which must exist). */
  createTemp(dir: string, prefix: string): Promise<TempFile>;
  /** Open a file for positional reads. */
  openReader(path: string): Promise<FileReader>;
  /** Atomic rename within one filesystem. */
  rename(from: string, to: string): Promise<void>;
  /** fsync a directory, so a rename in it survives a power loss. */
  syncDir(path: string): Promise<void>;
  stat(path: string): Promise<FileInfo | null>;
  /** Remove a file; a missing file is not an error. */
  remove(path: string): Promise<void>;
  /** Names in a directory ([] when it does not exist). */
  list(dir: string): Promise<string[]>;
  /** mkdir -p. */
  mkdir(path: string): Promise<void>;
  writeFile(path: string, data: Uint8Array | string): Promise<void>;
}

/** Signals the service reacts to. */
export type SignalName = "SIGTERM" | "SIGINT";

/** One runtime's implementation of everything runtime-specific. */
export interface Runtime {
  readonly name: "deno" | "bun";
  serve(opts: ServeOptions): Promise<Server>;
  readonly files: Files;
  /** Call `fn` on the signal; returns a function that removes the listener. */
  onSignal(signal: SignalName, fn: () => void): () => void;
  env(name: string): string | undefined;
  /** Command-line arguments after the program name. */
  args(): string[];
  exit(code: number): never;
  /** Whether stderr is a terminal. */
  isTerminal(): boolean;
  /** Write text to stderr without a newline (progress bars). */
  writeErr(s: string): void;
}
