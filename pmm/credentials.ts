/**
 * Client credentials for `attach` ([0055]: clients are identified before the
 * PMM vouches for them to the units).
 *
 * ## Clients file
 *
 * A text file, one client per line; blank lines and lines starting with `#`
 * are ignored:
 *
 * ```
 * # name  roles  verifier
 * alice   user   scrypt$14$8$1$<salt base64>$<hash base64>
 * ops     admin  scrypt$14$8$1$<salt base64>$<hash base64>
 * ```
 *
 * - name: 1..64 bytes of `[A-Za-z0-9._@-]`, unique.
 * - roles: `user` or `admin` (comma-separated list; `admin` may also create
 *   volumes with `create-volume`). Every client may create regions, open any
 *   region of its volume, and delete the regions it owns.
 * - verifier: scrypt(secret, salt, N = 2^logN, r, p) → 32 bytes. The secret is
 *   never stored. `npmu pmm add-client` appends a line and prints a fresh
 *   random secret (32 bytes, base64url).
 *
 * The client sends its secret (UTF-8, ≤ 256 bytes) in `attach.credential`:
 * the control connection is plain TCP, so run it on a trusted network (as
 * the RDMA fabric itself is). A verified (name, secret) pair is remembered
 * as a SHA-256 digest so repeated attaches cost one hash, not one scrypt.
 *
 * The file is read at start and again whenever its mtime changes.
 */
import { createHash, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import { NpmuError } from '../lib/errors';

export type Role = 'user' | 'admin';

export interface ClientEntry {
  name: string;
  roles: Role[];
  logN: number;
  r: number;
  p: number;
  salt: Buffer;
  hash: Buffer;
}

const NAME_RE = /^[A-Za-z0-9._@-]{1,64}$/;
const HASH_LEN = 32;
/** The default cost: 16 MiB of memory and ~50 ms natively per verification. */
export const DEFAULT_LOG_N = 14;

/** A fresh random secret: 32 bytes as base64url (43 characters). */
export function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

function scrypt(secret: Uint8Array, e: { salt: Buffer; logN: number; r: number; p: number }): Buffer {
  const N = 2 ** e.logN;
  return scryptSync(secret, e.salt, HASH_LEN, { N, r: e.r, p: e.p, maxmem: 256 * N * e.r + 1024 * 1024 });
}

/** The clients-file line for `name` with `secret`. */
export function clientLine(name: string, secret: string, opts: { roles?: Role[]; logN?: number } = {}): string {
  if (!NAME_RE.test(name)) throw new NpmuError('ERR_NPMU_CLIENTS_FILE', `client name ${JSON.stringify(name)} must be 1..64 of [A-Za-z0-9._@-]`);
  const logN = opts.logN ?? DEFAULT_LOG_N;
  if (!Number.isInteger(logN) || logN < 1 || logN > 20) throw new NpmuError('ERR_NPMU_CLIENTS_FILE', `logN ${logN} must be in 1..20`);
  const roles = opts.roles ?? ['user'];
  const salt = randomBytes(16);
  const hash = scrypt(Buffer.from(secret, 'utf8'), { salt, logN, r: 8, p: 1 });
  return `${name} ${roles.join(',')} scrypt$${logN}$8$1$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** Parses a clients file's text. Throws ERR_NPMU_CLIENTS_FILE naming the line. */
export function parseClients(text: string, file = 'clients file'): Map<string, ClientEntry> {
  const out = new Map<string, ClientEntry>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const bad = (why: string): NpmuError => new NpmuError('ERR_NPMU_CLIENTS_FILE', `${file} line ${i + 1}: ${why}`, { line: i + 1 });
    const f = line.split(/\s+/);
    if (f.length !== 3) throw bad('expected "name roles verifier"');
    const [name, roleList, verifier] = f as [string, string, string];
    if (!NAME_RE.test(name)) throw bad(`bad client name ${JSON.stringify(name)}`);
    if (out.has(name)) throw bad(`client ${name} appears twice`);
    const roles = roleList.split(',');
    if (roles.some((r) => r !== 'user' && r !== 'admin')) throw bad(`roles must be user and/or admin, got ${roleList}`);
    const m = /^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(verifier);
    if (!m) throw bad('verifier must be scrypt$logN$r$p$salt$hash');
    const logN = Number(m[1]);
    const r = Number(m[2]);
    const p = Number(m[3]);
    const salt = Buffer.from(m[4]!, 'base64');
    const hash = Buffer.from(m[5]!, 'base64');
    if (logN < 1 || logN > 20 || r < 1 || p < 1 || salt.length < 8 || hash.length !== HASH_LEN) throw bad('impossible scrypt parameters');
    out.set(name, { name, roles: roles as Role[], logN, r, p, salt, hash });
  }
  return out;
}

/** Verifies attach credentials against a clients file, reloading it when it changes. */
export class ClientRegistry {
  readonly file: string | null;
  #clients: Map<string, ClientEntry>;
  #mtimeMs = -1;
  /** sha256(name \0 secret) of pairs that verified, so a re-attach costs no scrypt. */
  #verified = new Set<string>();

  /** From a file, or (tests, embedding) from an in-memory list. */
  constructor(source: { file: string } | { entries: Map<string, ClientEntry> }) {
    if ('file' in source) {
      this.file = source.file;
      this.#clients = new Map();
      this.#reload();
    } else {
      this.file = null;
      this.#clients = source.entries;
    }
  }

  get size(): number {
    return this.#clients.size;
  }

  #reload(): void {
    if (this.file === null) return;
    let st: fs.Stats;
    try {
      st = fs.statSync(this.file);
    } catch (err) {
      throw new NpmuError('ERR_NPMU_CLIENTS_FILE', `cannot read clients file ${this.file}: ${(err as Error).message}`, { cause: err });
    }
    if (st.mtimeMs === this.#mtimeMs) return;
    this.#clients = parseClients(fs.readFileSync(this.file, 'utf8'), this.file);
    this.#mtimeMs = st.mtimeMs;
    this.#verified.clear();
  }

  /**
   * The client's roles if `secret` is its secret. Throws ERR_NPMU_NOT_AUTHORIZED
   * (unknown client or wrong secret: the same error, so names cannot be probed).
   */
  verify(name: string, secret: Uint8Array): Role[] {
    try {
      this.#reload();
    } catch {
      // keep the last good list; the operator sees the error in the log at the next start
    }
    const e = this.#clients.get(name);
    const digest = createHash('sha256').update(name).update('\0').update(secret).digest('hex');
    if (e && this.#verified.has(digest)) return e.roles;
    // Always pay one scrypt, known client or not.
    const probe = e ?? { salt: Buffer.alloc(16), logN: 10, r: 8, p: 1, hash: Buffer.alloc(HASH_LEN) };
    const got = scrypt(secret, probe);
    if (!e || !timingSafeEqual(got, e.hash)) {
      throw new NpmuError('ERR_NPMU_NOT_AUTHORIZED', `client ${JSON.stringify(name)} is not authorized (unknown client or wrong secret)`);
    }
    this.#verified.add(digest);
    return e.roles;
  }
}
