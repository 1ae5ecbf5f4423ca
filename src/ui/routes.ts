/**
 * The status page's routes: `GET /` (the page) and `GET /api/v1/stats`, `GET /api/v1/images`
 * (its JSON). Anything else under `/api/v1/` is not found.
 * @module
 */
import { pageResponse } from "./page.ts";
import type { StatusApi } from "./stats.ts";

/** Whether `path` is one of the status page's. */
export function isStatusPath(path: string): boolean {
  return path === "/" || path === "/api/v1/stats" || path === "/api/v1/images";
}

/** Answer a request for one of the {@link isStatusPath} paths; `endpoint` names it for logs and metrics. */
export async function serveStatus(api: StatusApi, req: Request, path: string): Promise<{ endpoint: string; response: Response }> {
  const endpoint = path === "/" ? "ui" : "api";
  if (req.method !== "GET" && req.method !== "HEAD") {
    return {
      endpoint,
      response: Response.json({ error: `${req.method} is not supported here; use GET` }, { status: 405, headers: { allow: "GET, HEAD" } }),
    };
  }
  if (path === "/") return { endpoint, response: pageResponse() };
  const body = path === "/api/v1/stats" ? await api.stats() : await api.images();
  return {
    endpoint,
    response: Response.json(body, { headers: { "cache-control": "no-store", "x-content-type-options": "nosniff" } }),
  };
}
