/**
 * Admission tickets: how the PMM vouches for a client to a unit ([0038],
 * [0044]: the PMM "verifies that the requesting processor node has access"
 * before a unit lets it in).
 *
 * The PMM and its units share a 32-byte secret key. When a client attaches,
 * the PMM issues it one ticket per unit of the volume; the client presents
 * the ticket in rdma_cm's connect private data (at most 56 bytes on RC, hence
 * the compact binary form) and in the `hello` of its control connection to the
 * unit. The unit admits the connection only if the ticket verifies: right
 * key, its own unit id, not expired. The ticket's session id is how the unit
 * ties the mappings the PMM later programs (`map {sessionId}`) to that
 * client's connection. Kind 2 tickets admit the PMM's own control connection.
 *
 * ## Wire format (52 bytes)
 *
 * | offset | size | field        | encoding                                         |
 * | -----: | ---: | ------------ | ------------------------------------------------ |
 * |      0 |    2 | magic        | 0x4E54, big-endian (the bytes "NT")              |
 * |      2 |    1 | version      | 1                                                |
 * |      3 |    1 | kind         | 1 client data connection, 2 PMM control          |
 * |      4 |    8 | unitId       | first 8 bytes of the unit's 16-byte id           |
 * |     12 |    8 | sessionId    | u64 little-endian, PMM-assigned                  |
 * |     20 |    4 | expiresAtSec | u32 little-endian, unix seconds                  |
 * |     24 |    4 | nonce        | random                                           |
 * |     28 |   24 | mac          | HMAC-SHA256(key, bytes [0, 28)), first 24 bytes  |
 *
 * A ticket is a bearer token until it expires: keep TTLs short (the PMM
 * issues fresh ones on every attach). 192 MAC bits leave no room for forgery.
 *
 * ## Key file
 *
 * 64 lowercase hex digits and a newline, mode 0600. The PMM and every unit it
 * manages must load the same key: create it once with {@link loadOrCreateKey}
 * (or `head -c 32 /dev/urandom | xxd -p -c 64`) and copy it, keeping mode
 * 0600, to the other hosts. A key file readable by group or others is refused.
 */

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NpmuError, argTypeError, argValueError } from './errors';

export const TICKET_SIZE = 52;
export const TICKET_MAGIC = 0x4e54;
export const TICKET_VERSION = 1;
export const KEY_SIZE = 32;
/** The unit id a control ticket names to be valid at any unit (see verifyTicket). */
export const ANY_UNIT_ID = '0'.repeat(32);
const ANY_UNIT_PREFIX = Buffer.alloc(8);
const MAC_OFFSET = 28;
const MAC_SIZE = 24;

export type TicketKind = 'client' | 'control';
const KIND_CODE: Record<TicketKind, number> = { client: 1, control: 2 };
const KIND_NAME: Record<number, TicketKind> = { 1: 'client', 2: 'control' };

/** What a verified ticket says. */
export interface TicketClaims {
  kind: TicketKind;
  sessionId: bigint;
  expiresAtSec: number;
}

function checkKey(key: unknown): Uint8Array {
  if (!(key instanceof Uint8Array)) throw argTypeError('key', 'an instance of Uint8Array', key);
  if (key.length !== KEY_SIZE) throw argValueError('key', `must be ${KEY_SIZE} bytes`, key);
  return key;
}

/** The 8 bytes of a unit id a ticket carries: from 32 hex digits or 16 bytes. */
function unitPrefix(unitId: unknown): Buffer {
  if (typeof unitId === 'string') {
    if (!/^[0-9a-fA-F]{32}$/.test(unitId)) throw argValueError('unitId', 'must be 32 hex digits', unitId);
    return Buffer.from(unitId.slice(0, 16), 'hex');
  }
  if (unitId instanceof Uint8Array) {
    if (unitId.length !== 16) throw argValueError('unitId', 'must be 16 bytes', unitId);
    return Buffer.from(unitId.subarray(0, 8));
  }
  throw argTypeError('unitId', 'a hex string or a Uint8Array', unitId);
}

function nowSec(now: unknown): number {
  if (now === undefined) return Math.floor(Date.now() / 1000);
  if (typeof now !== 'number' || !Number.isFinite(now) || now < 0) throw argValueError('now', 'must be milliseconds since the epoch', now);
  return Math.floor(now / 1000);
}

function toU64(v: unknown): bigint {
  let n: bigint | undefined;
  if (typeof v === 'bigint') n = v;
  else if (typeof v === 'number' && Number.isSafeInteger(v)) n = BigInt(v);
  else if (typeof v === 'string' && /^(0|[1-9][0-9]{0,19})$/.test(v)) n = BigInt(v);
  if (n === undefined || n < 0n || n >= 2n ** 64n) throw argValueError('sessionId', 'must be a u64 (bigint, safe integer or decimal string)', v);
  return n;
}

function mac(key: Uint8Array, body: Uint8Array): Buffer {
  return createHmac('sha256', key).update(body).digest().subarray(0, MAC_SIZE);
}

/**
 * Issues a ticket.
 *
 * @param opts.key the shared 32-byte key.
 * @param opts.kind `'client'` (a client's RDMA / control connection) or `'control'` (the PMM's own).
 * @param opts.unitId the unit's id: 32 hex digits or 16 bytes.
 * @param opts.sessionId the client's session (any u64; 0 for control tickets, by convention).
 * @param opts.ttlSec seconds until it expires (a positive integer).
 * @param opts.now current time in milliseconds since the epoch (default `Date.now()`).
 * @returns the 52-byte ticket.
 */
export function issueTicket(opts: {
  key: Uint8Array;
  kind: TicketKind;
  unitId: string | Uint8Array;
  sessionId: bigint | number | string;
  ttlSec: number;
  now?: number;
}): Buffer {
  const key = checkKey(opts.key);
  if (typeof opts.kind !== 'string' || !Object.hasOwn(KIND_CODE, opts.kind)) throw argValueError('kind', "must be 'client' or 'control'", opts.kind);
  const kind = KIND_CODE[opts.kind];
  const unit = unitPrefix(opts.unitId);
  const sessionId = toU64(opts.sessionId);
  const ttl = opts.ttlSec;
  if (!Number.isSafeInteger(ttl) || ttl <= 0) throw argValueError('ttlSec', 'must be a positive integer', ttl);
  const expiresAtSec = nowSec(opts.now) + ttl;
  if (expiresAtSec > 0xffffffff) throw argValueError('ttlSec', 'puts the expiry beyond 2106', ttl);

  const t = Buffer.alloc(TICKET_SIZE);
  t.writeUInt16BE(TICKET_MAGIC, 0);
  t.writeUInt8(TICKET_VERSION, 2);
  t.writeUInt8(kind, 3);
  unit.copy(t, 4);
  t.writeBigUInt64LE(sessionId, 12);
  t.writeUInt32LE(expiresAtSec, 20);
  randomBytes(4).copy(t, 24);
  mac(key, t.subarray(0, MAC_OFFSET)).copy(t, MAC_OFFSET);
  return t;
}

function invalid(why: string): NpmuError {
  return new NpmuError('ERR_NPMU_TICKET_INVALID', `invalid ticket: ${why}`);
}

/**
 * Verifies a ticket presented to unit `unitId`.
 *
 * Checks, in order: size, magic and version, MAC (constant time), kind — all
 * `ERR_NPMU_TICKET_INVALID`; then unit (`ERR_NPMU_TICKET_WRONG_UNIT`; a
 * control ticket for {@link ANY_UNIT_ID} passes at every unit) and
 * expiry (`ERR_NPMU_TICKET_EXPIRED`). Nothing in the ticket is trusted before
 * its MAC checks out.
 *
 * @param opts.kind if given, a ticket of the other kind is `ERR_NPMU_TICKET_INVALID`
 *   (the RDMA listener takes client tickets only).
 * @param opts.now current time in milliseconds since the epoch (default `Date.now()`).
 * @param opts.leewaySec clock skew tolerated between PMM and unit (default 0).
 */
export function verifyTicket(
  buf: Uint8Array,
  opts: { key: Uint8Array; unitId: string | Uint8Array; kind?: TicketKind; now?: number; leewaySec?: number },
): TicketClaims {
  const key = checkKey(opts.key);
  const unit = unitPrefix(opts.unitId);
  const now = nowSec(opts.now);
  const leeway = opts.leewaySec ?? 0;
  if (!Number.isSafeInteger(leeway) || leeway < 0) throw argValueError('leewaySec', 'must be a non-negative integer', leeway);
  if (!(buf instanceof Uint8Array)) throw invalid('not a byte array');
  if (buf.length !== TICKET_SIZE) throw invalid(`${buf.length} bytes instead of ${TICKET_SIZE}`);
  const t = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (t.readUInt16BE(0) !== TICKET_MAGIC) throw invalid('bad magic');
  if (t[2] !== TICKET_VERSION) throw invalid(`unsupported version ${t[2]}`);
  if (!timingSafeEqual(mac(key, t.subarray(0, MAC_OFFSET)), t.subarray(MAC_OFFSET))) throw invalid('bad MAC (wrong key or tampered)');
  const kind = KIND_NAME[t[3]!];
  if (kind === undefined) throw invalid(`unknown kind ${t[3]}`);
  if (opts.kind !== undefined && kind !== opts.kind) throw invalid(`a ${kind} ticket where a ${opts.kind} ticket is required`);
  // A control ticket may name the all-zero unit: "any unit sharing the key".
  // A PMM given only addresses learns a unit's id from the reply to its
  // `hello`; control tickets never leave the PMM, so this admits no one new.
  const anyUnit = kind === 'control' && t.subarray(4, 12).equals(ANY_UNIT_PREFIX);
  if (!anyUnit && !t.subarray(4, 12).equals(unit)) {
    throw new NpmuError('ERR_NPMU_TICKET_WRONG_UNIT', 'ticket was issued for another unit', { ticketUnit: t.toString('hex', 4, 12) });
  }
  const expiresAtSec = t.readUInt32LE(20);
  if (now >= expiresAtSec + leeway) {
    throw new NpmuError('ERR_NPMU_TICKET_EXPIRED', `ticket expired at ${new Date(expiresAtSec * 1000).toISOString()}`, { expiresAtSec });
  }
  return { kind, sessionId: t.readBigUInt64LE(12), expiresAtSec };
}

/** Parses key file contents: 64 hex digits, optionally followed by one newline. */
export function parseKey(text: string): Buffer {
  const m = /^([0-9a-fA-F]{64})\r?\n?$/.exec(text);
  if (!m) throw new NpmuError('ERR_NPMU_KEY_INVALID', 'a key file must hold exactly 64 hex digits and a newline');
  return Buffer.from(m[1]!, 'hex');
}

function keyIoError(err: unknown, file: string, what: string): NpmuError {
  const e = err as NodeJS.ErrnoException;
  return new NpmuError('ERR_NPMU_KEY_FILE', `cannot ${what} key file ${file}: ${e?.message ?? String(err)}`, {
    path: file,
    cause: err,
    syscall: e?.syscall,
    errno: e?.code,
  });
}

function readKeyFile(file: string): Buffer {
  let st: fs.Stats;
  let text: string;
  try {
    st = fs.statSync(file);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw keyIoError(err, file, 'read');
  }
  if (!st.isFile()) throw new NpmuError('ERR_NPMU_KEY_FILE', `key file ${file} is not a regular file`, { path: file });
  if ((st.mode & 0o077) !== 0) {
    throw new NpmuError(
      'ERR_NPMU_KEY_PERMISSIONS',
      `key file ${file} is accessible by group or others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`,
      { path: file, mode: st.mode & 0o777 },
    );
  }
  return parseKey(text);
}

/**
 * Loads the shared key from `file`, creating it (32 random bytes, mode 0600)
 * if it does not exist. Creation is atomic: the key is written to a temporary
 * file and hard-linked into place, so concurrent callers (a PMM and a unit
 * started together on one host) end up with the same key and no reader ever
 * sees a partial file.
 *
 * @throws NpmuError `ERR_NPMU_KEY_INVALID` (bad contents), `ERR_NPMU_KEY_PERMISSIONS`
 *   (group/other access), `ERR_NPMU_KEY_FILE` (I/O; `errno` and `cause` set).
 */
export function loadOrCreateKey(file: string): Buffer {
  if (typeof file !== 'string' || file === '') throw argTypeError('file', 'a non-empty string', file);
  if (fs.existsSync(file)) return readKeyFile(file);
  const key = randomBytes(KEY_SIZE);
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  try {
    const fd = fs.openSync(tmp, 'wx', 0o600);
    try {
      fs.writeSync(fd, key.toString('hex') + '\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    try {
      fs.linkSync(tmp, file);
    } catch (err) {
      // Someone else created it first: theirs wins.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      return readKeyFile(file);
    }
    return key;
  } catch (err) {
    if (err instanceof NpmuError) throw err;
    throw keyIoError(err, file, 'create');
  } finally {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // not created
    }
  }
}
