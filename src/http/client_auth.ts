/**
 * Client authentication (off by default): who may pull through this cache.
 *
 * - `--htpasswd FILE`: `user:bcrypt-hash` lines (`htpasswd -B` writes `$2y$`; `$2a$` and `$2b$`
 *   work too). Clients use HTTP Basic: `docker login`, `skopeo login` / `--creds`, containerd
 *   hosts.toml credentials.
 * - `--tokens FILE`: one `TOKEN USER` per line. Clients send `Authorization: Bearer TOKEN`, or use
 *   the token as the password of HTTP Basic with its user name (`docker login -u USER`).
 * - `--users FILE`: JSON `{"alice": {"registries": ["docker.io", "ghcr.io"]}}` — the registries
 *   (prefixes or host names) each user may pull from; `"*"` is the entry for users not named.
 *   A user with no entry (and no `"*"`) may pull from every registry.
 *
 * Passwords are checked with bcrypt (slow by design); a successful (user, sha256(password)) is
 * remembered for a minute so the many blob requests of one pull do not each pay for a bcrypt.
 * Tokens are compared as sha256 digests with `timingSafeEqual`, against every token, without an
 * early exit. Secrets never reach a log line: failed logins are logged with the user name, the
 * remote address and the reason.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import bcrypt from "bcryptjs";
import type { Logger } from "../log.ts";
import { ociError } from "./errors.ts";

/** The parsed client-auth configuration (see {@link parseHtpasswd}, {@link parseTokens}, {@link parseUsers}). */
export interface ClientAuthConfig {
  /** user → bcrypt hash. */
  passwords: Map<string, string>;
  /** The static bearer tokens. */
  tokens: { token: string; user: string }[];
  /** user (or `"*"`) → registries (prefixes or hosts) the user may pull from; absent = all. */
  registries: Map<string, string[]>;
}

/** A file that does not parse: names the line. */
export class AuthFileError extends Error {}

const BCRYPT = /^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$/;
const USER = /^[^\s:]{1,256}$/;
const TOKEN = /^[\x21-\x7e]{16,4096}$/;

/**
 * Parse an htpasswd file. Only bcrypt entries are accepted (`htpasswd -B`); `#` comments and blank
 * lines are skipped. Throws {@link AuthFileError} naming the line for anything else.
 */
export function parseHtpasswd(text: string, name = "htpasswd"): Map<string, string> {
  const out = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const where = `${name} line ${i + 1}`;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new AuthFileError(`${where}: expected user:hash`);
    const user = line.slice(0, colon);
    const hash = line.slice(colon + 1);
    if (!USER.test(user)) throw new AuthFileError(`${where}: the user name must not be empty or hold white space`);
    if (!BCRYPT.test(hash)) {
      const kind = hash.startsWith("$apr1$") ? "an MD5 ($apr1$) entry" : hash.startsWith("{SHA}") ? "a SHA-1 ({SHA}) entry" : hash.startsWith("$") ? "not a bcrypt entry" : "a crypt or plain-text entry";
      throw new AuthFileError(`${where}: user ${JSON.stringify(user)} has ${kind}; only bcrypt is accepted — re-create it with htpasswd -B`);
    }
    if (out.has(user)) throw new AuthFileError(`${where}: user ${JSON.stringify(user)} appears twice`);
    out.set(user, hash);
  });
  return out;
}

/**
 * Parse a tokens file: one `TOKEN USER` per line (white space between), `#` comments and blank
 * lines skipped. A token is 16 to 4096 printable ASCII characters without spaces, and unique.
 */
export function parseTokens(text: string, name = "tokens"): { token: string; user: string }[] {
  const out: { token: string; user: string }[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const where = `${name} line ${i + 1}`;
    const parts = line.split(/\s+/);
    if (parts.length !== 2) throw new AuthFileError(`${where}: expected "TOKEN USER" (two fields separated by white space)`);
    const [token, user] = parts;
    if (!TOKEN.test(token)) throw new AuthFileError(`${where}: a token is 16 to 4096 printable characters without spaces (e.g. openssl rand -hex 32)`);
    if (!USER.test(user)) throw new AuthFileError(`${where}: the user name must not hold ':'`);
    if (seen.has(token)) throw new AuthFileError(`${where}: this token appears on an earlier line too`);
    seen.add(token);
    out.push({ token, user });
  });
  return out;
}

/**
 * Parse a users file: JSON `{"alice": {"registries": ["docker.io", "ghcr.io"]}, "*": {…}}`.
 * `known(entry)` says whether a registries entry names a configured registry (prefix or host).
 */
export function parseUsers(text: string, known: (registry: string) => boolean, name = "users"): Map<string, string[]> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new AuthFileError(`${name}: not valid JSON: ${(e as Error).message}`);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new AuthFileError(`${name}: expected {"user": {"registries": ["docker.io", …]}, …}`);
  const out = new Map<string, string[]>();
  for (const [user, entry] of Object.entries(v as Record<string, unknown>)) {
    const regs = (entry as { registries?: unknown } | null)?.registries;
    if (!entry || typeof entry !== "object" || !Array.isArray(regs) || regs.some((r) => typeof r !== "string")) {
      throw new AuthFileError(`${name}: user ${JSON.stringify(user)}: expected {"registries": ["docker.io", …]}`);
    }
    for (const r of regs as string[]) {
      if (!known(r.toLowerCase())) throw new AuthFileError(`${name}: user ${JSON.stringify(user)}: ${JSON.stringify(r)} is not a configured registry prefix or host`);
    }
    out.set(user, (regs as string[]).map((r) => r.toLowerCase()));
  }
  return out;
}

/** A parsed `Authorization` header. */
export type Credentials =
  | { kind: "none" }
  | { kind: "basic"; user: string; password: string }
  | { kind: "bearer"; token: string }
  | { kind: "malformed"; reason: string };

/** Read the `Authorization` header. Never throws. */
export function parseAuthorization(header: string | null): Credentials {
  if (header === null || header.trim() === "") return { kind: "none" };
  const m = /^\s*(\S+)\s+(\S+)\s*$/.exec(header);
  if (!m) return { kind: "malformed", reason: "malformed Authorization header" };
  const scheme = m[1].toLowerCase();
  if (scheme === "bearer") {
    return TOKEN.test(m[2]) ? { kind: "bearer", token: m[2] } : { kind: "malformed", reason: "malformed bearer token" };
  }
  if (scheme !== "basic") return { kind: "malformed", reason: `unsupported scheme ${m[1].slice(0, 20)}` };
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(m[2]) || m[2].length % 4 !== 0) return { kind: "malformed", reason: "malformed basic credentials (not base64)" };
  let decoded: string;
  try {
    const bin = atob(m[2]);
    decoded = new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
  } catch {
    return { kind: "malformed", reason: "malformed basic credentials (not UTF-8 base64)" };
  }
  const colon = decoded.indexOf(":");
  if (colon < 0) return { kind: "malformed", reason: "malformed basic credentials (no ':')" };
  const user = decoded.slice(0, colon);
  if (!user) return { kind: "malformed", reason: "empty user name" };
  return { kind: "basic", user, password: decoded.slice(colon + 1) };
}

/** The outcome of {@link ClientAuth.authenticate}. */
export type AuthResult = { ok: true; user: string } | { ok: false; response: Response };

/** Options of {@link ClientAuth}. */
export interface ClientAuthOptions {
  log: Logger;
  /** Clock (ms) for the verified-credentials cache. */
  now?: () => number;
  /** How long a verified password is remembered (ms; default 60000). */
  cacheTtlMs?: number;
  /** Most remembered passwords (default 1000). */
  cacheMax?: number;
}

const sha256 = (s: string) => createHash("sha256").update(s).digest();

/** Checks requests' credentials against the configured users and tokens. */
export class ClientAuth {
  readonly #cfg: ClientAuthConfig;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #ttl: number;
  readonly #max: number;
  readonly #tokens: { digest: Buffer; user: string }[];
  /** `user\0sha256hex(password)` → expiry (ms); insertion order = age. */
  readonly #verified = new Map<string, number>();
  /** Compared against for an unknown user (at the cost of the file's entries), so it takes as long as a wrong password. */
  #dummy: string | undefined;
  /** bcrypt comparisons run (tests). */
  bcryptRuns = 0;

  constructor(cfg: ClientAuthConfig, opts: ClientAuthOptions) {
    this.#cfg = cfg;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    this.#ttl = opts.cacheTtlMs ?? 60_000;
    this.#max = opts.cacheMax ?? 1000;
    this.#tokens = cfg.tokens.map((t) => ({ digest: sha256(t.token), user: t.user }));
  }

  /** Who the request's credentials belong to, or a 401 to answer with. Never throws. */
  async authenticate(req: Request, remote: string): Promise<AuthResult> {
    const creds = parseAuthorization(req.headers.get("authorization"));
    switch (creds.kind) {
      case "none":
        return this.#deny("authentication required: log in (docker login / skopeo --creds) or send a bearer token");
      case "malformed":
        this.#failed(undefined, remote, creds.reason);
        return this.#deny(`authentication failed: ${creds.reason}`);
      case "bearer": {
        const user = this.#tokenUser(creds.token);
        if (user !== undefined) return { ok: true, user };
        this.#failed(undefined, remote, "unknown token");
        return this.#deny("authentication failed: unknown token");
      }
      case "basic": {
        const r = await this.#checkPassword(creds.user, creds.password);
        if (r === true) return { ok: true, user: creds.user };
        this.#failed(creds.user, remote, r);
        return this.#deny("authentication failed: wrong user name or password");
      }
    }
  }

  /** Whether `user` may pull from the registry with this prefix and these host names. */
  allows(user: string, registry: { prefix: string; hosts: string[] }): boolean {
    const list = this.#cfg.registries.get(user) ?? this.#cfg.registries.get("*");
    if (!list) return true;
    return list.includes(registry.prefix) || registry.hosts.some((h) => list.includes(h));
  }

  /** The 403 for a registry `user` may not pull from. */
  denied(user: string, prefix: string, remote: string): Response {
    this.#log.warn("access denied", { user, registry: prefix, remote });
    return ociError(403, "DENIED", `user ${JSON.stringify(user)} may not pull from registry ${JSON.stringify(prefix)}`);
  }

  #tokenUser(token: string): string | undefined {
    const d = sha256(token);
    let found: string | undefined;
    // Every token is compared, so the time taken does not tell which (or whether one) matched.
    for (const t of this.#tokens) {
      if (timingSafeEqual(t.digest, d) && found === undefined) found = t.user;
    }
    return found;
  }

  /** true, or the reason for the log line. */
  async #checkPassword(user: string, password: string): Promise<true | string> {
    const now = this.#now();
    const key = `${user}\0${sha256(password).toString("hex")}`;
    const until = this.#verified.get(key);
    if (until !== undefined) {
      if (until > now) return true;
      this.#verified.delete(key);
    }
    // A token used as the password of its user (docker login -u USER -p TOKEN).
    if (this.#tokenUser(password) === user) return true;
    const hash = this.#cfg.passwords.get(user);
    let ok = false;
    this.bcryptRuns++;
    try {
      ok = await bcrypt.compare(password, hash ?? this.#dummyHash());
    } catch {
      ok = false;
    }
    if (!hash) return "unknown user";
    if (!ok) return "wrong password";
    if (this.#verified.size >= this.#max) {
      for (const [k, t] of this.#verified) {
        if (t <= now || this.#verified.size >= this.#max) this.#verified.delete(k);
        else break;
      }
    }
    this.#verified.set(key, now + this.#ttl);
    return true;
  }

  #dummyHash(): string {
    if (!this.#dummy) {
      const first = this.#cfg.passwords.values().next().value;
      const cost = first ? Number(first.slice(4, 6)) : 10;
      this.#dummy = bcrypt.hashSync(crypto.randomUUID(), cost);
    }
    return this.#dummy;
  }

  #failed(user: string | undefined, remote: string, reason: string): void {
    this.#log.warn("authentication failed", { user, remote, reason });
  }

  #deny(message: string): AuthResult {
    return {
      ok: false,
      response: ociError(401, "UNAUTHORIZED", message, null, { "www-authenticate": 'Basic realm="ocicache"' }),
    };
  }
}
