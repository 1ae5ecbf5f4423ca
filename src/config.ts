/**
 * One validated {@link Config} from embedded defaults, an optional JSON config file, `OCICACHE_*`
 * environment variables and command-line flags (later wins, in that order).
 * @module
 */
import process from "node:process";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { AuthFileError, type ClientAuthConfig, parseHtpasswd, parseTokens, parseUsers } from "./http/client_auth.ts";

/** An upstream registry the cache fronts. */
export interface RegistryConfig {
  /** The first path segment that selects this registry (`/v2/<prefix>/<name>/…`). */
  prefix: string;
  /** The upstream's base URL, e.g. `https://registry-1.docker.io` (no trailing slash). */
  url: string;
  /** Host names a containerd mirror may name in `?ns=` for this registry. */
  hosts: string[];
  /** Docker Hub: single-segment names get `library/`. */
  dockerHub: boolean;
  username?: string;
  password?: string;
  /** How long a tag's digest is served without asking the upstream (ms). */
  tagTtlMs: number;
  /** Never contact the upstream: serve only what is cached. */
  offline: boolean;
  /** How old (ms since the upstream last confirmed it) a tag may be and still be served when the upstream fails; Infinity = no limit. */
  maxStaleMs: number;
  /** Token realm hosts allowed even when not https or on a link-local/metadata address (config file `allowRealm`). */
  allowRealm?: string[];
}

/** Log levels, quietest last. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
/** A log level. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Everything the service is configured with. */
export interface Config {
  listen: { hostname: string; port: number };
  /** The storage folder: blobs, temp files and (by default) the index. */
  storage: string;
  /** libSQL URL of the index; default `file:<storage>/index.db`. */
  indexUrl: string;
  indexAuthToken?: string;
  registries: RegistryConfig[];
  /** Prefix of the registry for unprefixed names (`/v2/library/nginx/…`), or null for none. */
  defaultRegistry: string | null;
  logLevel: LogLevel;
  /** Serve the status page (`GET /`) and its JSON API (`/api/v1/stats`, `/api/v1/images`). */
  ui: boolean;
  upstream: {
    /** Bound on waiting for an upstream's response headers (ms). */
    headersTimeoutMs: number;
    /** Bound on each silent gap while reading an upstream body (ms) — never the whole transfer. */
    idleTimeoutMs: number;
    /** Retries of idempotent upstream requests. */
    retry: { attempts: number; baseDelayMs: number; budgetMs: number };
  };
  download: {
    /** A download whose last client went away still completes into the cache up to this size (bytes); a larger one is cancelled. */
    maxDetachedBytes: number;
    /** Upstream blob downloads running at once; more wait in a bounded queue, then get 503 + Retry-After. */
    maxConcurrent: number;
  };
  /** Bytes of blob content the store may hold (S3-FIFO eviction), or null for no bound. */
  maxSizeBytes: number | null;
  /** Manifests (and their tags) not pulled for this long are dropped (ms), or null to keep them. */
  maxManifestAgeMs: number | null;
  /** Client authentication (`--htpasswd`, `--tokens`, `--users`), or null: anyone who reaches the port may pull. */
  clientAuth: ClientAuthConfig | null;
  /** PEM certificate chain and key to serve HTTPS with (`--tls-cert`, `--tls-key`), or null for plain HTTP. */
  tls: { cert: string; key: string } | null;
  /**
   * Serve content cached through one repository to any repository that asks for its digest,
   * without asking the upstream whether that repository has it (off by default: only safe for
   * caches of public content).
   */
  trustSharedContent: boolean;
}

/** A configuration problem: names the field, for a one-line message and exit code 2. */
export class ConfigError extends Error {
  constructor(readonly field: string, reason: string) {
    super(`invalid configuration: ${field}: ${reason}`);
  }
}

const DEFAULT_TAG_TTL_MS = 5 * 60_000;

/** The embedded registry list: prefixes are the registries' host names. */
export const EMBEDDED_REGISTRIES: readonly Omit<RegistryConfig, "tagTtlMs" | "offline" | "maxStaleMs">[] = [
  {
    prefix: "docker.io",
    url: "https://registry-1.docker.io",
    hosts: ["docker.io", "registry-1.docker.io", "index.docker.io"],
    dockerHub: true,
  },
  { prefix: "ghcr.io", url: "https://ghcr.io", hosts: ["ghcr.io"], dockerHub: false },
  { prefix: "quay.io", url: "https://quay.io", hosts: ["quay.io"], dockerHub: false },
  { prefix: "registry.k8s.io", url: "https://registry.k8s.io", hosts: ["registry.k8s.io"], dockerHub: false },
  { prefix: "gcr.io", url: "https://gcr.io", hosts: ["gcr.io"], dockerHub: false },
  { prefix: "mcr.microsoft.com", url: "https://mcr.microsoft.com", hosts: ["mcr.microsoft.com"], dockerHub: false },
  { prefix: "public.ecr.aws", url: "https://public.ecr.aws", hosts: ["public.ecr.aws"], dockerHub: false },
];

/** The flags `serve` (and the other commands that open the cache) take, with their meaning. */
export const CONFIG_FLAGS: Record<string, string> = {
  "--config": "JSON config file (env OCICACHE_CONFIG)",
  "--listen": "address to listen on, [host]:port (default :5000; env OCICACHE_LISTEN)",
  "--storage": "storage folder (default ./ocicache-data; env OCICACHE_STORAGE)",
  "--index-url": "libSQL URL of the index (default file:<storage>/index.db; env OCICACHE_INDEX_URL)",
  "--registry": "prefix=url, add or replace an upstream (repeatable; env OCICACHE_REGISTRIES=a=url,b=url)",
  "--default-registry": "prefix for unprefixed names, or 'none' (default docker.io; env OCICACHE_DEFAULT_REGISTRY)",
  "--tag-ttl": "how long a tag is served without asking upstream, e.g. 5m, 30s, 0 (env OCICACHE_TAG_TTL)",
  "--log-level": "debug | info | warn | error (default info; env OCICACHE_LOG_LEVEL)",
  "--ui": "status page at / and its JSON API under /api/v1/: true | false (default true; env OCICACHE_UI)",
  "--upstream-timeout": "bound on waiting for upstream response headers (default 30s)",
  "--idle-timeout": "bound on a silent gap in an upstream body (default 60s)",
  "--upstream-retries": "attempts in all for an idempotent upstream request (default 3; 1 = no retries)",
  "--offline": "prefix of a registry served from the cache only, never contacted (repeatable; env OCICACHE_OFFLINE=a,b)",
  "--max-stale": "oldest tag (since the upstream last confirmed it) served when the upstream fails, e.g. 7d (default: no limit)",
  "--max-detached": "a download whose clients all left still completes up to this size, e.g. 2GiB (default 2GiB)",
  "--max-downloads": "upstream blob downloads at once; as many more wait, the rest get 503 + Retry-After (default 64; env OCICACHE_MAX_DOWNLOADS)",
  "--trust-shared-content": "true: serve cached content to any repository asking for its digest without an upstream check (public-only caches; default false; env OCICACHE_TRUST_SHARED_CONTENT)",
  "--max-manifest-age": "drop manifests and their tags not pulled for this long, e.g. 30d (default: keep them)",
  "--max-size": "bound on the bytes of blob content in the store, e.g. 50GiB; S3-FIFO eviction (default: unbounded; env OCICACHE_MAX_SIZE)",
  "--htpasswd": "require HTTP Basic logins: htpasswd file of bcrypt entries (htpasswd -B; env OCICACHE_HTPASSWD)",
  "--tokens": "require logins: file of static bearer tokens, one 'TOKEN USER' a line (env OCICACHE_TOKENS)",
  "--users": "JSON file of the registries each user may pull from, {\"alice\":{\"registries\":[\"docker.io\"]}} (env OCICACHE_USERS)",
  "--tls-cert": "serve HTTPS: PEM certificate (chain) file; needs --tls-key (env OCICACHE_TLS_CERT)",
  "--tls-key": "serve HTTPS: PEM private key file; needs --tls-cert (env OCICACHE_TLS_KEY)",
};

/** Parse `5m`, `30s`, `1h`, `7d`, `250ms` or plain seconds into ms. */
export function parseDuration(field: string, v: unknown): number {
  if (typeof v === "number" && Number.isFinite(v) && v >= 0) return v * 1000;
  const m = typeof v === "string" ? /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(v.trim()) : null;
  if (!m) throw new ConfigError(field, `expected a duration like 30s, 5m or 1h, got ${JSON.stringify(v)}`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? "s"]!;
  return Math.round(Number(m[1]) * unit);
}

/** Parse true/false/1/0. */
export function parseBool(field: string, v: unknown): boolean {
  if (typeof v === "boolean") return v;
  const s = String(v).toLowerCase();
  if (s === "true" || s === "1") return true;
  if (s === "false" || s === "0") return false;
  throw new ConfigError(field, `expected true or false, got ${JSON.stringify(v)}`);
}

/** Parse `50GiB`, `512MiB`, `10GB`, `1048576` (bytes) into bytes. */
export function parseSize(field: string, v: unknown): number {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return v;
  const m = typeof v === "string" ? /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB|K|M|G|T)?$/i.exec(v.trim()) : null;
  if (!m) throw new ConfigError(field, `expected a size like 512MiB, 50GiB or 10GB, got ${JSON.stringify(v)}`);
  const units: Record<string, number> = {
    b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12,
    kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40,
  };
  return Math.round(Number(m[1]) * units[(m[2] ?? "b").toLowerCase()]);
}

/** Parse `[host]:port` / `host:port` / `:port`. */
export function parseListen(field: string, v: string): { hostname: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(field, `expected [host]:port such as :5000 or 127.0.0.1:5000, got ${JSON.stringify(v)}`);
  return { hostname: m[1] ?? (m[2] || "0.0.0.0"), port };
}

function parseUrl(field: string, v: unknown): string {
  let u: URL;
  try {
    u = new URL(String(v));
  } catch {
    throw new ConfigError(field, `not a URL: ${JSON.stringify(v)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new ConfigError(field, "must be an http:// or https:// URL");
  if (u.search || u.hash) throw new ConfigError(field, "must not carry a query or fragment");
  if (u.username || u.password) throw new ConfigError(field, "put credentials in username/passwordFile, not the URL");
  return u.origin + u.pathname.replace(/\/+$/, "");
}

/** Check the prefix rules: non-empty, lowercase, no `/`, unique, none a string-prefix of another. */
export function checkPrefixes(prefixes: string[]): void {
  const seen = new Set<string>();
  for (const p of prefixes) {
    if (!p) throw new ConfigError("registries", "a registry prefix is empty");
    if (!/^[a-z0-9][a-z0-9._:-]*$/.test(p)) {
      throw new ConfigError(`registries.${p}`, "a prefix is lowercase letters, digits, '.', '_', ':' or '-', without '/'");
    }
    if (seen.has(p)) throw new ConfigError(`registries.${p}`, "prefix is configured twice");
    seen.add(p);
  }
  for (const a of prefixes) {
    for (const b of prefixes) {
      if (a !== b && b.startsWith(a)) {
        throw new ConfigError(`registries.${b}`, `prefix "${a}" is a string-prefix of "${b}"; choose prefixes that do not start one another`);
      }
    }
  }
}

/** What a config file may hold (all optional). */
interface FileConfig {
  listen?: string;
  storage?: string;
  indexUrl?: string;
  indexAuthTokenEnv?: string;
  defaultRegistry?: string | null;
  logLevel?: string;
  ui?: boolean;
  tagTtl?: string | number;
  upstreamTimeout?: string | number;
  idleTimeout?: string | number;
  upstreamRetries?: number;
  maxStale?: string | number;
  maxDetached?: string | number;
  maxDownloads?: number;
  maxSize?: string | number | null;
  maxManifestAge?: string | number | null;
  htpasswd?: string;
  tokens?: string;
  users?: string;
  tlsCert?: string;
  tlsKey?: string;
  trustSharedContent?: boolean;
  embeddedRegistries?: boolean;
  registries?: Record<string, {
    url?: string;
    hosts?: string[];
    dockerHub?: boolean;
    username?: string;
    passwordEnv?: string;
    passwordFile?: string;
    tagTtl?: string | number;
    offline?: boolean;
    maxStale?: string | number;
    allowRealm?: string[];
  }>;
}

/** Where {@link loadConfig} reads from. */
export interface ConfigSources {
  /** Parsed `--flag value` pairs; `--registry` may repeat. */
  flags: Map<string, string[]>;
  env: (name: string) => string | undefined;
  /** Read a text file (config file, password files). */
  readText: (path: string) => Promise<string>;
}

/**
 * Split argv into flags the config knows. Accepts `--flag value` and `--flag=value`.
 * Unknown flags and missing values raise a {@link ConfigError}.
 */
export function parseFlags(args: string[], known: Record<string, string> = CONFIG_FLAGS): Map<string, string[]> {
  return parseArgs(args, { known }).flags;
}

/** What {@link parseArgs} accepts. */
export interface ArgSpec {
  /** Flags that take a value, with their help text. */
  known: Record<string, string>;
  /** Flags that take no value (present → "true"). */
  booleans?: Record<string, string>;
  /** Whether bare arguments are allowed. */
  positionals?: boolean;
}

/**
 * Parse a command's arguments: `--flag value`, `--flag=value`, boolean flags, and (when allowed)
 * positional arguments. Unknown flags, missing values and unexpected arguments raise a
 * {@link ConfigError} (one line, exit code 2).
 */
export function parseArgs(args: string[], spec: ArgSpec): { flags: Map<string, string[]>; positionals: string[] } {
  const flags = new Map<string, string[]>();
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith("-")) {
      if (!spec.positionals) throw new ConfigError(a, "unexpected argument (see --help)");
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const name = eq > 0 && a.startsWith("--") ? a.slice(0, eq) : a;
    if (spec.booleans && name in spec.booleans) {
      if (eq > 0) throw new ConfigError(name, "takes no value");
      flags.set(name, ["true"]);
      continue;
    }
    if (!(name in spec.known)) throw new ConfigError(name, `unknown flag (see --help)`);
    let value: string | undefined;
    if (eq > 0 && a.startsWith("--")) value = a.slice(eq + 1);
    else value = args[++i];
    if (value === undefined || (eq < 0 && value.startsWith("--"))) throw new ConfigError(name, "needs a value");
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  return { flags, positionals };
}

function last(flags: Map<string, string[]>, name: string): string | undefined {
  const v = flags.get(name);
  return v?.[v.length - 1];
}

function parsePairs(field: string, items: string[]): [string, string][] {
  return items.flatMap((s) => s.split(",")).filter((s) => s.trim()).map((s) => {
    const eq = s.indexOf("=");
    if (eq <= 0) throw new ConfigError(field, `expected prefix=url, got ${JSON.stringify(s)}`);
    return [s.slice(0, eq).trim(), s.slice(eq + 1).trim()];
  });
}

/** Build and validate the configuration. Throws {@link ConfigError} with the offending field. */
export async function loadConfig(src: ConfigSources): Promise<Config> {
  const { flags, env } = src;
  const configPath = last(flags, "--config") ?? env("OCICACHE_CONFIG");
  let file: FileConfig = {};
  if (configPath) {
    let text: string;
    try {
      text = await src.readText(configPath);
    } catch (e) {
      throw new ConfigError("--config", `cannot read ${configPath}: ${(e as Error).message}`);
    }
    try {
      file = JSON.parse(text);
    } catch (e) {
      throw new ConfigError("--config", `${configPath} is not valid JSON: ${(e as Error).message}`);
    }
    if (!file || typeof file !== "object" || Array.isArray(file)) throw new ConfigError("--config", "must hold a JSON object");
  }

  const pick = (flag: string, envName: string, fileValue: unknown) => last(flags, flag) ?? env(envName) ?? fileValue;

  const listenRaw = String(pick("--listen", "OCICACHE_LISTEN", file.listen) ?? ":5000");
  const listen = parseListen("listen", listenRaw);
  const storage = String(pick("--storage", "OCICACHE_STORAGE", file.storage) ?? "./ocicache-data");
  if (!storage) throw new ConfigError("storage", "must not be empty");
  const absStorage = storage.startsWith("/") ? storage : `${cwd()}/${storage.replace(/^\.\//, "")}`;
  const indexUrl = String(pick("--index-url", "OCICACHE_INDEX_URL", file.indexUrl) ?? `file:${absStorage}/index.db`);
  if (!/^(file:|libsql:|https?:|wss?:|:memory:)/.test(indexUrl)) {
    throw new ConfigError("indexUrl", "expected a libSQL URL: file:…, libsql://…, http(s)://… or :memory:");
  }
  const logLevel = String(pick("--log-level", "OCICACHE_LOG_LEVEL", file.logLevel) ?? "info") as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError("logLevel", `expected one of ${LOG_LEVELS.join(", ")}`);
  const uiRaw = String(pick("--ui", "OCICACHE_UI", file.ui) ?? "true").toLowerCase();
  if (!["true", "false", "1", "0"].includes(uiRaw)) throw new ConfigError("ui", "expected true or false");
  const ui = uiRaw === "true" || uiRaw === "1";
  const ttlRaw = pick("--tag-ttl", "OCICACHE_TAG_TTL", file.tagTtl);
  const tagTtlMs = ttlRaw === undefined ? DEFAULT_TAG_TTL_MS : parseDuration("tagTtl", ttlRaw);
  const headersTimeoutMs = parseDuration("upstreamTimeout", pick("--upstream-timeout", "OCICACHE_UPSTREAM_TIMEOUT", file.upstreamTimeout) ?? "30s");
  const idleTimeoutMs = parseDuration("idleTimeout", pick("--idle-timeout", "OCICACHE_IDLE_TIMEOUT", file.idleTimeout) ?? "60s");
  if (headersTimeoutMs <= 0) throw new ConfigError("upstreamTimeout", "must be more than 0");
  if (idleTimeoutMs <= 0) throw new ConfigError("idleTimeout", "must be more than 0");
  const attempts = Number(pick("--upstream-retries", "OCICACHE_UPSTREAM_RETRIES", file.upstreamRetries) ?? 3);
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 10) throw new ConfigError("upstreamRetries", "expected a whole number from 1 to 10");
  const maxStaleRaw = pick("--max-stale", "OCICACHE_MAX_STALE", file.maxStale);
  const maxStaleMs = maxStaleRaw === undefined ? Infinity : parseDuration("maxStale", maxStaleRaw);
  const maxDetachedBytes = parseSize("maxDetached", pick("--max-detached", "OCICACHE_MAX_DETACHED", file.maxDetached) ?? "2GiB");
  const maxDownloads = Number(pick("--max-downloads", "OCICACHE_MAX_DOWNLOADS", file.maxDownloads) ?? 64);
  if (!Number.isInteger(maxDownloads) || maxDownloads < 1 || maxDownloads > 100_000) throw new ConfigError("maxDownloads", "expected a whole number from 1 to 100000");
  const maxSizeRaw = pick("--max-size", "OCICACHE_MAX_SIZE", file.maxSize);
  const maxSizeBytes = maxSizeRaw === undefined || maxSizeRaw === null || maxSizeRaw === "unbounded" ? null : parseSize("maxSize", maxSizeRaw);
  if (maxSizeBytes !== null && maxSizeBytes < 1024 * 1024) throw new ConfigError("maxSize", "must be at least 1MiB (or 'unbounded')");

  const registries = new Map<string, RegistryConfig>();
  if (file.embeddedRegistries !== false) {
    for (const r of EMBEDDED_REGISTRIES) registries.set(r.prefix, { ...r, hosts: [...r.hosts], tagTtlMs, offline: false, maxStaleMs });
  }
  for (const [prefix, r] of Object.entries(file.registries ?? {})) {
    const field = `registries.${prefix}`;
    if (!r || typeof r !== "object") throw new ConfigError(field, "must be an object");
    const base = registries.get(prefix);
    const url = r.url !== undefined ? parseUrl(`${field}.url`, r.url) : base?.url;
    if (!url) throw new ConfigError(`${field}.url`, "is required");
    let password: string | undefined;
    if (r.passwordEnv) {
      password = env(r.passwordEnv);
      if (password === undefined) throw new ConfigError(`${field}.passwordEnv`, `environment variable ${r.passwordEnv} is not set`);
    }
    if (r.passwordFile) {
      try {
        password = (await src.readText(r.passwordFile)).replace(/\r?\n$/, "");
      } catch (e) {
        throw new ConfigError(`${field}.passwordFile`, `cannot read it: ${(e as Error).message}`);
      }
    }
    if (password !== undefined && !r.username) throw new ConfigError(`${field}.username`, "is required with a password");
    if (r.hosts !== undefined && (!Array.isArray(r.hosts) || r.hosts.some((h) => typeof h !== "string"))) {
      throw new ConfigError(`${field}.hosts`, "must be a list of host names");
    }
    if (r.allowRealm !== undefined && (!Array.isArray(r.allowRealm) || r.allowRealm.some((h) => typeof h !== "string" || !h || /[/@\s]/.test(h)))) {
      throw new ConfigError(`${field}.allowRealm`, "must be a list of host names (host or host:port) token realms may use");
    }
    registries.set(prefix, {
      prefix,
      url,
      hosts: (r.hosts ?? base?.hosts ?? [new URL(url).host]).map((h) => h.toLowerCase()),
      dockerHub: r.dockerHub ?? base?.dockerHub ?? false,
      username: r.username,
      password,
      tagTtlMs: r.tagTtl !== undefined ? parseDuration(`${field}.tagTtl`, r.tagTtl) : tagTtlMs,
      offline: r.offline ?? base?.offline ?? false,
      maxStaleMs: r.maxStale !== undefined ? parseDuration(`${field}.maxStale`, r.maxStale) : (base?.maxStaleMs ?? maxStaleMs),
      ...(r.allowRealm ?? base?.allowRealm ? { allowRealm: (r.allowRealm ?? base?.allowRealm ?? []).map((h) => h.toLowerCase()) } : {}),
    });
  }
  const cliRegistries = [...(env("OCICACHE_REGISTRIES") ? [env("OCICACHE_REGISTRIES")!] : []), ...(flags.get("--registry") ?? [])];
  for (const [prefix, rawUrl] of parsePairs("--registry", cliRegistries)) {
    const url = parseUrl(`--registry ${prefix}`, rawUrl);
    const base = registries.get(prefix);
    const host = new URL(url).host;
    registries.set(prefix, {
      prefix,
      url,
      hosts: [...new Set([...(base?.hosts ?? []), host])],
      dockerHub: base?.dockerHub ?? false,
      username: base?.username,
      password: base?.password,
      tagTtlMs: base?.tagTtlMs ?? tagTtlMs,
      offline: base?.offline ?? false,
      maxStaleMs: base?.maxStaleMs ?? maxStaleMs,
      ...(base?.allowRealm ? { allowRealm: base.allowRealm } : {}),
    });
  }
  checkPrefixes([...registries.keys()]);
  const offline = [...(env("OCICACHE_OFFLINE") ? [env("OCICACHE_OFFLINE")!] : []), ...(flags.get("--offline") ?? [])]
    .flatMap((s) => s.split(",")).map((s) => s.trim()).filter((s) => s);
  for (const prefix of offline) {
    const r = registries.get(prefix);
    if (!r) throw new ConfigError("--offline", `"${prefix}" is not a configured prefix (${[...registries.keys()].join(", ")})`);
    r.offline = true;
  }

  let defaultRegistry: string | null = null;
  const defRaw = pick("--default-registry", "OCICACHE_DEFAULT_REGISTRY", file.defaultRegistry);
  if (defRaw === undefined) defaultRegistry = registries.has("docker.io") ? "docker.io" : null;
  else if (defRaw === null || defRaw === "none" || defRaw === "") defaultRegistry = null;
  else {
    defaultRegistry = String(defRaw);
    if (!registries.has(defaultRegistry)) {
      throw new ConfigError("defaultRegistry", `"${defaultRegistry}" is not a configured prefix (${[...registries.keys()].join(", ")})`);
    }
  }

  const clientAuth = await loadClientAuth(src, pick, file, [...registries.values()]);
  const tls = await loadTls(src, pick, file);

  return {
    listen,
    storage: absStorage,
    indexUrl,
    indexAuthToken: file.indexAuthTokenEnv ? env(file.indexAuthTokenEnv) : env("OCICACHE_INDEX_AUTH_TOKEN"),
    registries: [...registries.values()],
    defaultRegistry,
    logLevel,
    ui,
    upstream: { headersTimeoutMs, idleTimeoutMs, retry: { attempts, baseDelayMs: 200, budgetMs: 10_000 } },
    download: { maxDetachedBytes, maxConcurrent: maxDownloads },
    maxSizeBytes,
    maxManifestAgeMs: (() => {
      const raw = pick("--max-manifest-age", "OCICACHE_MAX_MANIFEST_AGE", file.maxManifestAge);
      if (raw === undefined || raw === null) return null;
      const ms = parseDuration("maxManifestAge", raw);
      if (ms < 60_000) throw new ConfigError("maxManifestAge", "must be at least 1m");
      return ms;
    })(),
    clientAuth,
    tls,
    trustSharedContent: parseBool("trustSharedContent", pick("--trust-shared-content", "OCICACHE_TRUST_SHARED_CONTENT", file.trustSharedContent) ?? false),
  };
}

type Pick = (flag: string, envName: string, fileValue: unknown) => unknown;

async function readNamed(src: ConfigSources, field: string, path: string): Promise<string> {
  try {
    return await src.readText(path);
  } catch (e) {
    throw new ConfigError(field, `cannot read ${path}: ${(e as Error).message}`);
  }
}

/** `--htpasswd`, `--tokens`, `--users` → the parsed client-auth configuration, or null when neither login file is set. */
async function loadClientAuth(src: ConfigSources, pick: Pick, file: FileConfig, registries: RegistryConfig[]): Promise<ClientAuthConfig | null> {
  const paths = {
    htpasswd: pick("--htpasswd", "OCICACHE_HTPASSWD", file.htpasswd) as string | undefined,
    tokens: pick("--tokens", "OCICACHE_TOKENS", file.tokens) as string | undefined,
    users: pick("--users", "OCICACHE_USERS", file.users) as string | undefined,
  };
  if (!paths.htpasswd && !paths.tokens) {
    if (paths.users) throw new ConfigError("--users", "needs --htpasswd or --tokens (it restricts users those files define)");
    return null;
  }
  const known = (r: string) => registries.some((g) => g.prefix === r || g.hosts.includes(r));
  const parse = async <T>(field: string, path: string | undefined, fn: (text: string, name: string) => T, empty: T): Promise<T> => {
    if (!path) return empty;
    const text = await readNamed(src, field, path);
    try {
      return fn(text, path);
    } catch (e) {
      if (e instanceof AuthFileError) throw new ConfigError(field, e.message);
      throw e;
    }
  };
  const passwords = await parse("--htpasswd", paths.htpasswd, parseHtpasswd, new Map<string, string>());
  const tokens = await parse("--tokens", paths.tokens, parseTokens, []);
  if (!passwords.size && !tokens.length) {
    throw new ConfigError(paths.htpasswd ? "--htpasswd" : "--tokens", "defines no user: nobody could pull (add an entry, or drop the flag to turn client authentication off)");
  }
  const registriesByUser = await parse("--users", paths.users, (t, n) => parseUsers(t, known, n), new Map<string, string[]>());
  return { passwords, tokens, registries: registriesByUser };
}

/** `--tls-cert` / `--tls-key`: both or neither; checked to parse and to belong together. */
async function loadTls(src: ConfigSources, pick: Pick, file: FileConfig): Promise<{ cert: string; key: string } | null> {
  const certPath = pick("--tls-cert", "OCICACHE_TLS_CERT", file.tlsCert) as string | undefined;
  const keyPath = pick("--tls-key", "OCICACHE_TLS_KEY", file.tlsKey) as string | undefined;
  if (!certPath && !keyPath) return null;
  if (!certPath) throw new ConfigError("--tls-cert", "is required with --tls-key (give both or neither)");
  if (!keyPath) throw new ConfigError("--tls-key", "is required with --tls-cert (give both or neither)");
  const cert = await readNamed(src, "--tls-cert", certPath);
  const key = await readNamed(src, "--tls-key", keyPath);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (e) {
    throw new ConfigError("--tls-cert", `${certPath} is not a PEM certificate: ${(e as Error).message}`);
  }
  let pk: ReturnType<typeof createPrivateKey>;
  try {
    pk = createPrivateKey(key);
  } catch (e) {
    throw new ConfigError("--tls-key", `${keyPath} is not a PEM private key: ${(e as Error).message}`);
  }
  let matches = true;
  try {
    matches = x509.checkPrivateKey(pk);
  } catch {
    // A runtime without checkPrivateKey: the server's start will tell.
  }
  if (!matches) throw new ConfigError("--tls-key", `${keyPath} is not the private key of the certificate in ${certPath}`);
  return { cert, key };
}

function cwd(): string {
  return process.cwd();
}
