/**
 * A TCP relay that counts what passes: put it between a cache and its upstream registry to see
 * how many bytes (and which HTTP requests) really went upstream. Bytes are counted on the wire,
 * headers included; request lines are picked from the client→upstream direction (GET/HEAD
 * requests carry no body, so every line that looks like a request line is one).
 * @module
 */
import { connect, createServer, type Server, type Socket } from "node:net";

/** Counters since the last {@link CountingProxy.reset}. */
export interface ProxyCounts {
  /** TCP connections opened to the upstream. */
  connections: number;
  /** Bytes the upstream sent (responses: headers + bodies). */
  bytesFromUpstream: number;
  /** Bytes sent to the upstream (requests). */
  bytesToUpstream: number;
  /** Request lines seen, e.g. "GET /v2/bench/big/blobs/sha256:…". */
  requests: string[];
}

export interface CountingProxy {
  /** `http://127.0.0.1:PORT` */
  url: string;
  counts(): ProxyCounts;
  /** Connections currently open. */
  open(): number;
  reset(): void;
  stop(): Promise<void>;
}

const REQUEST_LINE =
  /^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP\/1\.[01]$/;

/** Listen on a free 127.0.0.1 port and relay every connection to `target` (`http://host:port`). */
export function startCountingProxy(target: string): Promise<CountingProxy> {
  const t = new URL(target);
  const host = t.hostname;
  const port = Number(t.port || 80);
  let c: ProxyCounts = {
    connections: 0,
    bytesFromUpstream: 0,
    bytesToUpstream: 0,
    requests: [],
  };
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const up = connect(port, host);
    sockets.add(client);
    sockets.add(up);
    c.connections++;
    let pending = "";
    client.on("data", (d: Uint8Array) => {
      c.bytesToUpstream += d.length;
      pending += new TextDecoder("latin1").decode(d);
      const lines = pending.split("\r\n");
      pending = lines.pop() ?? "";
      if (pending.length > 8192) pending = pending.slice(-8192);
      for (const l of lines) {
        const m = REQUEST_LINE.exec(l);
        if (m) c.requests.push(`${m[1]} ${m[2]}`);
      }
    });
    up.on("data", (d: Uint8Array) => {
      c.bytesFromUpstream += d.length;
    });
    client.pipe(up);
    up.pipe(client);
    const close = () => {
      client.destroy();
      up.destroy();
      sockets.delete(client);
      sockets.delete(up);
    };
    client.on("error", close);
    up.on("error", close);
    client.on("close", close);
    up.on("close", close);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const p = typeof addr === "object" && addr ? addr.port : 0;
      resolve({
        url: `http://127.0.0.1:${p}`,
        counts: () => ({ ...c, requests: [...c.requests] }),
        open: () => sockets.size / 2,
        reset: () => {
          c = {
            connections: 0,
            bytesFromUpstream: 0,
            bytesToUpstream: 0,
            requests: [],
          };
        },
        stop: () =>
          new Promise<void>((r) => {
            for (const s of sockets) s.destroy();
            sockets.clear();
            server.close(() => r());
          }),
      });
    });
  });
}
