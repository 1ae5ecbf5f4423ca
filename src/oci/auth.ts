/**
 * Upstream registry authentication: `WWW-Authenticate` parsing, the Bearer token dance, and a
 * token cache per scope that fetches each token once however many requests wait for it.
 * @module
 */

/** One challenge of a `WWW-Authenticate` header. */
export interface Challenge {
  /** Lowercased auth scheme, e.g. `bearer`, `basic`. */
  scheme: string;
  /** Parameters with lowercased names (`realm`, `service`, `scope`, `error`, …). */
  params: Record<string, string>;
}

/**
 * Parse a `WWW-Authenticate` header into its challenges (RFC 9110 §11.6.1): quoted strings with
 * `\` escapes, commas inside quotes, several challenges in one header. Unparseable parts are
 * skipped rather than thrown on.
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const s = header;
  const skipWs = () => {
    while (i < s.length && (s[i] === " " || s[i] === "\t" || s[i] === ",")) i++;
  };
  const token = () => {
    const m = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/.exec(s.slice(i));
    if (!m) return "";
    i += m[0].length;
    return m[0];
  };
  while (i < s.length) {
    skipWs();
    const scheme = token();
    if (!scheme) {
      i++;
      continue;
    }
    const ch: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(ch);
    // parameters: name=value pairs separated by commas, until a token not followed by '='
    while (i < s.length) {
      while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
      const save = i;
      if (s[i] === ",") i++;
      while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
      const name = token();
      while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
      if (!name || s[i] !== "=") {
        i = name ? save : i + (i === save ? 1 : 0);
        if (name) break; // start of the next challenge
        if (i >= s.length) break;
        continue;
      }
      i++; // '='
      while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
      let value = "";
      if (s[i] === '"') {
        i++;
        while (i < s.length && s[i] !== '"') {
          if (s[i] === "\\" && i + 1 < s.length) i++;
          value += s[i++];
        }
        i++; // closing quote
      } else {
        value = token();
      }
      ch.params[name.toLowerCase()] = value;
    }
  }
  return out;
}

/** Basic credentials for an upstream. */
export interface Credentials {
  username: string;
  password: string;
}

/** The Basic `Authorization` value for credentials. */
export function basicAuth(c: Credentials): string {
  const bytes = new TextEncoder().encode(`${c.username}:${c.password}`);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return `Basic ${btoa(bin)}`;
}

/**
 * Why a token could not be had. `refused`: the realm was refused by policy
 * ({@link checkRealm}) — no request was sent, and the caller should fail with an upstream error.
 */
export type TokenFailure = { ok: false; status?: number; message: string; refused?: boolean };

/** Where token realms may point, for one upstream registry. */
export interface RealmPolicy {
  /** The registry's base URL: a plain `http://` registry may name a plain `http://` realm. */
  registryUrl?: string;
  /** Realm hosts (`host` or `host:port`) allowed whatever the other rules say (userinfo aside). */
  allowRealm?: readonly string[];
}

/** Host names of cloud metadata services (in addition to the link-local address ranges). */
const METADATA_HOSTS = new Set(["metadata.google.internal"]);

/** An IPv4 dotted quad as four numbers, or null. */
function ipv4(host: string): number[] | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  return m ? m.slice(1).map(Number) : null;
}

/** An IPv6 address (without brackets) as eight 16-bit numbers, or null. */
function ipv6(host: string): number[] | null {
  if (!host.includes(":")) return null;
  let h = host.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(h);
  if (v4) {
    const q = ipv4(v4[1]);
    if (!q) return null;
    h = h.slice(0, -v4[1].length) + ((q[0] << 8) | q[1]).toString(16) + ":" + ((q[2] << 8) | q[3]).toString(16);
  }
  const [a, b, ...more] = h.split("::");
  if (more.length) return null;
  const head = a ? a.split(":") : [];
  const tail = b !== undefined && b ? b.split(":") : [];
  const fill = b !== undefined ? 8 - head.length - tail.length : 0;
  if (fill < 0 || (b === undefined && head.length !== 8)) return null;
  const parts = [...head, ...Array(fill).fill("0"), ...tail];
  if (parts.length !== 8 || parts.some((p) => !/^[0-9a-f]{1,4}$/.test(p))) return null;
  return parts.map((p) => parseInt(p, 16));
}

/** Whether a URL host names a link-local address or a cloud metadata service. */
export function isMetadataHost(hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/^\[|\]$/g, "").replace(/\.$/, "");
  if (METADATA_HOSTS.has(host)) return true;
  const v4 = ipv4(host);
  if (v4) return v4[0] === 169 && v4[1] === 254;
  const v6 = ipv6(host);
  if (!v6) return false;
  if ((v6[0] & 0xffc0) === 0xfe80) return true; // fe80::/10
  if (v6.join(":") === "64768:3778:0:0:0:0:0:596") return true; // fd00:ec2::254 (AWS IMDS over IPv6)
  // IPv4-mapped / -compatible forms of 169.254.0.0/16
  const mapped = v6.slice(0, 5).every((x) => x === 0) && (v6[5] === 0xffff || v6[5] === 0);
  return mapped && v6[6] >> 8 === 169 && (v6[6] & 0xff) === 254;
}

/**
 * Check a token realm before anything is sent to it (the challenge comes from the upstream, and
 * the request carries the registry's credentials): no userinfo; `https:` unless the registry
 * itself is plain `http:`; never a link-local or cloud metadata address. A host listed in
 * `allowRealm` passes the last two checks. Returns why it is refused, or null.
 */
export function checkRealm(realm: URL, policy: RealmPolicy = {}): string | null {
  const shown = JSON.stringify(realm.origin + realm.pathname);
  if (realm.username || realm.password) return `token realm ${shown} carries credentials in its URL; refused`;
  const allowed = (policy.allowRealm ?? []).map((h) => h.toLowerCase());
  if (allowed.includes(realm.host.toLowerCase()) || allowed.includes(realm.hostname.toLowerCase())) return null;
  const registryHttp = policy.registryUrl !== undefined && policy.registryUrl.toLowerCase().startsWith("http:");
  if (realm.protocol !== "https:" && !(realm.protocol === "http:" && registryHttp)) {
    return `token realm ${shown} is not https (the registry is ${registryHttp ? "http" : "https"}); refused — list its host in the registry's allowRealm to allow it`;
  }
  if (isMetadataHost(realm.hostname)) {
    return `token realm ${shown} points at a link-local or cloud metadata address; refused — list its host in the registry's allowRealm to allow it`;
  }
  return null;
}

/** A token, or why not. */
export type TokenResult = { ok: true; authorization: string } | TokenFailure;

interface CachedToken {
  authorization: string;
  expiresAt: number;
}

/** Options of {@link UpstreamAuth}. */
export interface AuthOptions {
  credentials?: Credentials;
  fetch: typeof fetch;
  /** Bound on a token request (ms). */
  timeoutMs: number;
  now?: () => number;
  /** Where token realms may point ({@link checkRealm}); default: https only, no metadata addresses. */
  realm?: RealmPolicy;
}

/**
 * The auth state of one upstream registry: which scheme it challenged with, and tokens per
 * scope. Once a registry has challenged with Bearer, later requests fetch (or reuse) the token
 * before the request instead of taking a 401 first.
 */
export class UpstreamAuth {
  #challenge: Challenge | undefined;
  readonly #tokens = new Map<string, CachedToken>();
  readonly #pending = new Map<string, Promise<TokenResult>>();
  /** Token requests actually sent (for tests and metrics). */
  tokenRequests = 0;

  constructor(private readonly opts: AuthOptions) {}

  #now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** The Authorization value to send up front for `scope`, when the registry is known to need one. */
  async authorizationFor(scope: string): Promise<string | undefined> {
    const ch = this.#challenge;
    if (!ch) return undefined;
    if (ch.scheme === "basic") return this.opts.credentials ? basicAuth(this.opts.credentials) : undefined;
    const r = await this.#token(ch, scope);
    return r.ok ? r.authorization : undefined;
  }

  /**
   * React to a 401's `WWW-Authenticate`: remember the scheme and get what to retry with. A token
   * cached for the scope that was just refused is dropped first.
   */
  async answer(wwwAuthenticate: string | null, scope: string): Promise<TokenResult> {
    const challenges = wwwAuthenticate ? parseWwwAuthenticate(wwwAuthenticate) : [];
    const bearer = challenges.find((c) => c.scheme === "bearer" && c.params.realm);
    const basic = challenges.find((c) => c.scheme === "basic");
    if (bearer) {
      this.#challenge = bearer;
      this.#tokens.delete(scope);
      return this.#token(bearer, scope);
    }
    if (basic) {
      this.#challenge = basic;
      if (!this.opts.credentials) return { ok: false, status: 401, message: "the upstream requires credentials and none are configured" };
      return { ok: true, authorization: basicAuth(this.opts.credentials) };
    }
    return { ok: false, status: 401, message: "the upstream refused the request without a usable challenge" };
  }

  #token(ch: Challenge, scope: string): Promise<TokenResult> {
    const cached = this.#tokens.get(scope);
    if (cached && cached.expiresAt > this.#now()) return Promise.resolve({ ok: true, authorization: cached.authorization });
    let p = this.#pending.get(scope);
    if (!p) {
      p = this.#fetchToken(ch, scope).finally(() => this.#pending.delete(scope));
      this.#pending.set(scope, p);
    }
    return p;
  }

  async #fetchToken(ch: Challenge, scope: string): Promise<TokenResult> {
    let url: URL;
    try {
      url = new URL(ch.params.realm);
    } catch {
      return { ok: false, refused: true, message: `the upstream's token realm is not a URL: ${JSON.stringify(ch.params.realm)}` };
    }
    const refusal = checkRealm(url, this.opts.realm);
    if (refusal) return { ok: false, refused: true, message: refusal };
    if (ch.params.service) url.searchParams.set("service", ch.params.service);
    url.searchParams.set("scope", scope);
    const headers: Record<string, string> = {};
    if (this.opts.credentials) headers.authorization = basicAuth(this.opts.credentials);
    this.tokenRequests++;
    let res: Response;
    try {
      res = await this.opts.fetch(url, { headers, signal: AbortSignal.timeout(this.opts.timeoutMs) });
    } catch (e) {
      return { ok: false, message: `token request to ${url.origin} failed: ${(e as Error).message}` };
    }
    if (!res.ok) {
      await res.body?.cancel();
      return { ok: false, status: res.status, message: `token request to ${url.origin} answered ${res.status}` };
    }
    let body: { token?: string; access_token?: string; expires_in?: number; issued_at?: string };
    try {
      body = (await res.json()) ?? {};
    } catch {
      return { ok: false, message: `token response from ${url.origin} is not JSON` };
    }
    const token = body.token || body.access_token;
    if (!token) return { ok: false, message: `token response from ${url.origin} carries no token` };
    const lifetime = typeof body.expires_in === "number" && body.expires_in > 0 ? body.expires_in : 60;
    const issued = body.issued_at ? Date.parse(body.issued_at) : NaN;
    const start = Number.isFinite(issued) ? Math.min(issued, this.#now()) : this.#now();
    // Renew a little before the upstream would refuse it.
    const expiresAt = start + lifetime * 1000 - Math.min(10_000, (lifetime * 1000) / 10);
    const authorization = `Bearer ${token}`;
    this.#tokens.set(scope, { authorization, expiresAt });
    return { ok: true, authorization };
  }
}
