/**
 * A client for one upstream registry over `fetch`: auth, redirects without leaking credentials,
 * and timeouts on waiting for headers and on each idle gap of a body — never on a whole transfer.
 * @module
 */
import type { RegistryConfig } from "../config.ts";
import { UpstreamAuth } from "./auth.ts";

/** What an upstream request came to. A response of any status is `ok: true`; the caller reads it. */
export type UpstreamResult =
  | { ok: true; response: Response }
  | { ok: false; kind: "unreachable" | "timeout"; message: string };

/** One upstream exchange, reported to {@link UpstreamOptions.observe}. */
export interface UpstreamEvent {
  registry: string;
  /** What was asked: manifests, blobs, tags. */
  kind: string;
  method: string;
  /** Seconds to the response headers (or to the failure). */
  seconds: number;
  /** The status, or undefined when no response came. */
  status?: number;
}

/** Options of {@link Upstream}. */
export interface UpstreamOptions {
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  /** Injected for tests; defaults to the global fetch. */
  fetch?: typeof fetch;
  /** Told of every request sent (after redirects) — for metrics. */
  observe?: (e: UpstreamEvent) => void;
  /** Told of every body chunk received — for metrics. */
  onBytes?: (registry: string, n: number) => void;
}

const MAX_REDIRECTS = 5;

/** The client of one upstream registry. */
export class Upstream {
  readonly auth: UpstreamAuth;
  readonly #fetch: typeof fetch;

  constructor(readonly registry: RegistryConfig, private readonly opts: UpstreamOptions) {
    this.#fetch = opts.fetch ?? fetch;
    const credentials = registry.username !== undefined && registry.password !== undefined
      ? { username: registry.username, password: registry.password }
      : undefined;
    this.auth = new UpstreamAuth({ credentials, fetch: this.#fetch, timeoutMs: opts.headersTimeoutMs });
  }

  /** GET or HEAD a manifest. */
  manifest(method: "GET" | "HEAD", name: string, reference: string, accept: string): Promise<UpstreamResult> {
    return this.request(method, name, `manifests/${reference}`, { accept });
  }

  /** GET or HEAD a blob; redirects (e.g. to object storage) are followed. */
  blob(method: "GET" | "HEAD", name: string, digest: string, headers: Record<string, string> = {}): Promise<UpstreamResult> {
    return this.request(method, name, `blobs/${digest}`, headers);
  }

  /** GET the tag list, with the client's `n`/`last` query. */
  tags(name: string, query: string): Promise<UpstreamResult> {
    return this.request("GET", name, `tags/list${query}`, { accept: "application/json" });
  }

  /**
   * Send a request for `/v2/<name>/<rest>` with the auth dance: use a known token, or on a 401
   * answer the challenge once and retry. The body of the result is guarded by the idle timeout.
   */
  async request(method: string, name: string, rest: string, headers: Record<string, string>): Promise<UpstreamResult> {
    const url = `${this.registry.url}/v2/${name}/${rest}`;
    const scope = `repository:${name}:pull`;
    const h = new Headers(headers);
    h.set("user-agent", "ocicache");
    const known = await this.auth.authorizationFor(scope);
    if (known) h.set("authorization", known);
    const kind = rest.split("/")[0];
    let r = await this.#send(method, url, h, kind);
    if (r.ok && r.response.status === 401) {
      const answer = await this.auth.answer(r.response.headers.get("www-authenticate"), scope);
      if (answer.ok) {
        await r.response.body?.cancel();
        h.set("authorization", answer.authorization);
        r = await this.#send(method, url, h, kind);
      }
    }
    return r;
  }

  async #send(method: string, url: string, headers: Headers, kind: string): Promise<UpstreamResult> {
    const started = performance.now();
    const r = await this.#sendOnce(method, url, headers);
    this.opts.observe?.({
      registry: this.registry.prefix,
      kind,
      method,
      seconds: (performance.now() - started) / 1000,
      status: r.ok ? r.response.status : undefined,
    });
    return r;
  }

  async #sendOnce(method: string, url: string, headers: Headers): Promise<UpstreamResult> {
    let target = new URL(url);
    const origin = target.origin;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(new Error("timeout")), this.opts.headersTimeoutMs);
      const h = new Headers(headers);
      // Credentials belong to the registry: never send them to another host a redirect names.
      if (target.origin !== origin) h.delete("authorization");
      let res: Response;
      try {
        res = await this.#fetch(target, { method, headers: h, redirect: "manual", signal: ctl.signal });
      } catch (e) {
        clearTimeout(timer);
        if (ctl.signal.aborted) {
          return { ok: false, kind: "timeout", message: `${target.host} sent no response within ${this.opts.headersTimeoutMs} ms` };
        }
        return { ok: false, kind: "unreachable", message: `${target.host} is unreachable: ${(e as Error).message}` };
      }
      clearTimeout(timer);
      const location = res.headers.get("location");
      if (res.status >= 300 && res.status < 400 && location) {
        await res.body?.cancel();
        target = new URL(location, target);
        continue;
      }
      const onBytes = this.opts.onBytes;
      const prefix = this.registry.prefix;
      return { ok: true, response: guardIdle(res, this.opts.idleTimeoutMs, ctl, onBytes && ((n) => onBytes(prefix, n))) };
    }
    return { ok: false, kind: "unreachable", message: `${new URL(url).host} redirected more than ${MAX_REDIRECTS} times` };
  }
}

/** Wrap a response so that its body errors (and the fetch aborts) after `ms` without a chunk. */
function guardIdle(res: Response, ms: number, ctl: AbortController, onBytes?: (n: number) => void): Response {
  if (!res.body) return res;
  const reader = res.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(c) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const idle = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`upstream body idle for ${ms} ms`)), ms);
      });
      try {
        const { done, value } = await Promise.race([reader.read(), idle]);
        if (done) c.close();
        else {
          onBytes?.(value.length);
          c.enqueue(value);
        }
      } catch (e) {
        ctl.abort(e);
        reader.cancel(e).catch(() => {});
        c.error(e);
      } finally {
        clearTimeout(timer);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
}
