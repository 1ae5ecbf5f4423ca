/**
 * The top-level web handler: `/v2/…` to the pull handler, `/healthz`, `/readyz`; method checks,
 * request ids, one JSON log line per request, and no unhandled error ever reaching a client as
 * anything but an OCI error body.
 * @module
 */
import type { Logger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { PullHandler, RequestContext } from "../oci/handler.ts";
import type { Router } from "../oci/router.ts";
import type { ConnInfo, Handler } from "../runtime/types.ts";
import { isStatusPath, serveStatus } from "../ui/routes.ts";
import type { StatusApi } from "../ui/stats.ts";
import type { ClientAuth } from "./client_auth.ts";
import { ociError } from "./errors.ts";

/** What the app needs. */
export interface AppDeps {
  router: Router;
  pull: PullHandler;
  log: Logger;
  /** Resolves when the service can serve: index answers, storage writable. Rejects with why not. */
  ready: () => Promise<void>;
  metrics: Metrics;
  /** The status page (`GET /`) and its JSON API; absent (404) with `--ui=false`. */
  status?: StatusApi;
  /** Client authentication: when set, every endpoint but `/healthz` needs credentials. */
  auth?: ClientAuth;
}

/** What the handler reports back, plus the repository for the status page's top lists. */
type AppContext = RequestContext & { repository?: string; user?: string };

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Build the web handler. */
export function createApp(deps: AppDeps): Handler {
  return async (req: Request, info: ConnInfo): Promise<Response> => {
    const started = performance.now();
    const given = req.headers.get("x-request-id");
    const id = given && REQUEST_ID.test(given) ? given : crypto.randomUUID();
    const ctx: AppContext = { cache: "none", endpoint: "other" };
    let url: URL | undefined;
    let res: Response;
    try {
      url = new URL(req.url);
      res = await dispatch(deps, req, url, ctx, info.remoteAddr);
    } catch (e) {
      deps.log.error("unhandled error", { id, path: url?.pathname, error: (e as Error)?.stack ?? String(e) });
      res = ociError(500, "UNKNOWN", "internal error; see the ocicache log for request id " + id);
    }
    res.headers.set("x-request-id", id);
    if (ctx.cache !== "none") res.headers.set("x-cache", ctx.cache);
    const bytes = Number(res.headers.get("content-length") ?? -1);
    deps.metrics.requests.inc({ endpoint: ctx.endpoint, status: String(res.status), cache: ctx.cache });
    if (bytes > 0 && req.method !== "HEAD") deps.metrics.bytesServed.inc({ endpoint: ctx.endpoint, cache: ctx.cache }, bytes);
    deps.log.info("request", {
      id,
      method: req.method,
      path: url?.pathname,
      ns: url?.searchParams.get("ns") ?? undefined,
      status: res.status,
      bytes,
      ms: Math.round((performance.now() - started) * 10) / 10,
      cache: ctx.cache,
      registry: ctx.registry,
      user: ctx.user,
      remote: info.remoteAddr,
    });
    deps.status?.request({ ...ctx, method: req.method, status: res.status, bytes });
    return res;
  };
}

async function dispatch(deps: AppDeps, req: Request, url: URL, ctx: AppContext, remote: string): Promise<Response> {
  const path = url.pathname;
  // The gate: with client authentication on, only /healthz answers without credentials.
  if (deps.auth && path !== "/healthz") {
    const who = await deps.auth.authenticate(req, remote);
    if (!who.ok) return who.response;
    ctx.user = who.user;
  }
  if (path === "/v2" || path.startsWith("/v2/")) {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return ociError(405, "UNSUPPORTED", `${req.method} is not supported: ocicache is a read-only pull-through cache`, null, {
        allow: "GET, HEAD",
      });
    }
    const routed = deps.router.route(url);
    if (!routed.ok) return routed.response;
    if (deps.auth && ctx.user !== undefined && routed.route.kind !== "base" && !deps.auth.allows(ctx.user, routed.route.target.registry)) {
      return deps.auth.denied(ctx.user, routed.route.target.registry.prefix, remote);
    }
    if (routed.route.kind !== "base") ctx.repository = routed.route.target.name;
    return await deps.pull.handle(req, routed.route, ctx);
  }
  if (path === "/healthz") {
    ctx.endpoint = "healthz";
    return Response.json({ status: "ok" });
  }
  if (path === "/metrics") {
    ctx.endpoint = "metrics";
    return new Response(await deps.metrics.render(), { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } });
  }
  if (path === "/readyz") {
    ctx.endpoint = "readyz";
    try {
      await deps.ready();
      return Response.json({ status: "ready" });
    } catch (e) {
      return Response.json({ status: "not ready", reason: (e as Error).message }, { status: 503 });
    }
  }
  if (deps.status && isStatusPath(path)) {
    const r = await serveStatus(deps.status, req, path);
    ctx.endpoint = r.endpoint;
    return r.response;
  }
  return ociError(404, "UNSUPPORTED", `no such endpoint: ${path}; the registry API is under /v2/`);
}
