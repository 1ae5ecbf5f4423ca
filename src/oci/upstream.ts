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
  | { ok: false; kind: "unreachable" | "timeout" | "offline" | "refused"; message: string };

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

/** How idempotent requests are retried (connection errors, timeouts, 502/503/504, and 429/503 with a short Retry-After). */
export interface RetryPolicy {
  /** Attempts in all, the first included (1 = no retries). */
  attempts: number;
  /** First backoff (ms); doubles per retry, with ±50 % jitter. */
  baseDelayMs: number;
  /** No retry starts once this much time (ms) has gone since the first attempt; a Retry-After longer than what is left is not waited for. */
  budgetMs: number;
}

/** The default {@link RetryPolicy}. */
export const DEFAULT_RETRY: RetryPolicy = { attempts: 3, baseDelayMs: 200, budgetMs: 10_000 };

/** Options of {@link Upstream}. */
export interface UpstreamOptions {
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  retry?: RetryPolicy;
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
    this.auth = new UpstreamAuth({
      credentials,
      fetch: this.#fetch,
      timeoutMs: opts.headersTimeoutMs,
      realm: { registryUrl: registry.url, allowRealm: registry.allowRealm },
    });
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
   * Send an idempotent request for `/v2/<name>/<rest>`, retried with exponential backoff and
   * jitter on connection errors, timeouts and 502/503/504, and after a Retry-After (429/503) that
   * fits the retry budget. An `offline` registry is never contacted.
   */
  async request(method: string, name: string, rest: string, headers: Record<string, string>): Promise<UpstreamResult> {
    if (this.registry.offline) {
      return { ok: false, kind: "offline", message: `registry ${this.registry.prefix} is configured offline; only cached content is served` };
    }
    const policy = this.opts.retry ?? DEFAULT_RETRY;
    const started = performance.now();
    for (let attempt = 1; ; attempt++) {
      const r = await this.#attempt(method, name, rest, headers);
      const delay = retryDelay(r, attempt, policy);
      const left = policy.budgetMs - (performance.now() - started);
      if (delay === null || attempt >= policy.attempts || delay > left) return r;
      if (r.ok) await r.response.body?.cancel();
      await new Promise((res) => setTimeout(res, delay));
    }
  }

  /** One attempt with the auth dance: use a known token, or on a 401 answer the challenge once. */
  async #attempt(method: string, name: string, rest: string, headers: Record<string, string>): Promise<UpstreamResult> {
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
      } else if (answer.refused) {
        // The challenge names a realm we will not send to (or anything be sent from): fail loudly.
        await r.response.body?.cancel();
        return { ok: false, kind: "refused", message: answer.message };
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

/** How long to wait before retrying `r`, or null when it is not worth retrying. */
export function retryDelay(r: UpstreamResult, attempt: number, policy: RetryPolicy, random = Math.random): number | null {
  const backoff = () => Math.round(policy.baseDelayMs * 2 ** (attempt - 1) * (0.5 + random()));
  if (!r.ok) return r.kind === "offline" || r.kind === "refused" ? null : backoff();
  const status = r.response.status;
  const after = parseRetryAfter(r.response.headers.get("retry-after"));
  if (status === 429) return after;
  if (status === 503) return after ?? backoff();
  if (status === 502 || status === 504) return backoff();
  return null;
}

/** A Retry-After value (seconds or an HTTP date) in ms, or null. */
export function parseRetryAfter(v: string | null, now = Date.now()): number | null {
  if (v === null) return null;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, t - now) : null;
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
