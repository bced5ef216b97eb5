/**
 * THE control protocol: every control message of npmu is defined in this file.
 *
 * Control traffic — PMM ↔ unit, client ↔ PMM, and client → unit persist
 * requests — goes over TCP; data never does (clients read and write regions
 * by one-sided RDMA, [0045]-[0046]).
 *
 * ## Framing
 *
 * A frame is a u32 big-endian body length followed by that many bytes of UTF-8
 * JSON, one object per frame. Bodies over {@link MAX_FRAME} bytes are refused
 * from the length prefix alone (nothing is buffered): the receiver replies
 * `ERR_NPMU_PROTO_TOO_LARGE` if it can and closes the connection, since the
 * stream can no longer be resynchronised. A well-framed body that is not valid
 * UTF-8 / JSON / an object gets an `ERR_NPMU_PROTO_MALFORMED` reply and the
 * connection goes on.
 *
 * ## Envelope
 *
 * Every message has `v` (protocol version, {@link PROTOCOL_VERSION}), `id` (a
 * u32 chosen by the requester, echoed in the reply; requests use 1..2^32-1 and
 * an error reply with id 0 answers something that could not be attributed to
 * a request) and `type`. Requests carry their fields beside the envelope:
 * `{v: 1, id: 7, type: 'unmap', sessionId: '12', mapId: '3'}`. Replies are
 * `{v, id, type: 'ok', ...result}` or `{v, id, type: 'error', code, message}`.
 *
 * Field conventions: names are camelCase, types kebab-case; unknown fields are
 * errors; integers that may exceed 2^53 (addresses, iova, base pointers,
 * session and map ids) are `u64`: decimal strings; binary payloads are base64
 * strings with a declared maximum decoded length; every string is well-formed
 * Unicode without NUL, its maximum counted in UTF-8 bytes.
 *
 * ## Connections
 *
 * - PMM → unit: the first request is `hello` with a kind-2 (control) ticket;
 *   then any unit request.
 * - client → unit: `hello` with the client's kind-1 ticket; then only
 *   `persist-range` (for that ticket's session) and `ping`.
 * - client → PMM: `attach` first (it creates the session); then the region
 *   and volume requests. The session ends when the connection closes, and the
 *   PMM then closes the session's opens ([0085]).
 *
 * A server handles a connection's requests one at a time, in order ({@link serve}).
 *
 * ## Error codes (protocol level)
 *
 * `ERR_NPMU_PROTO_VERSION` (v is not 1), `ERR_NPMU_PROTO_UNKNOWN_TYPE`,
 * `ERR_NPMU_PROTO_INVALID` (schema: the message names the field path),
 * `ERR_NPMU_PROTO_TOO_LARGE`, `ERR_NPMU_PROTO_MALFORMED` (not UTF-8 / JSON /
 * an object), `ERR_NPMU_INTERNAL` (a server bug; no details leak),
 * `ERR_NPMU_TIMEOUT`, `ERR_NPMU_DISCONNECTED`, `ERR_NPMU_CONNECT_FAILED`.
 * Handlers reply their own `NpmuError` codes unchanged.
 */

import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { NpmuError, argTypeError, argValueError } from './errors';

/** The protocol version this code speaks. */
export const PROTOCOL_VERSION = 1;
/** Largest frame body, bytes (the 4-byte length prefix not included). */
export const MAX_FRAME = 1024 * 1024;
/**
 * Largest `meta-read` / `meta-write` payload. Base64 inflates by 4/3, so
 * 512 KiB of data (≈ 683 KiB encoded) is the largest power of two that fits in
 * a frame with room to spare.
 */
export const META_IO_MAX = 512 * 1024;
/** Most extents in one `map`. */
export const MAX_EXTENTS = 4096;
/** Most entries in any returned list (names, sessions, connections). */
export const MAX_LIST = 4096;
/** Default time a {@link ControlConnection.request} waits for its reply. */
export const DEFAULT_TIMEOUT_MS = 10_000;

export const PROTO_ERRORS = {
  VERSION: 'ERR_NPMU_PROTO_VERSION',
  UNKNOWN_TYPE: 'ERR_NPMU_PROTO_UNKNOWN_TYPE',
  INVALID: 'ERR_NPMU_PROTO_INVALID',
  TOO_LARGE: 'ERR_NPMU_PROTO_TOO_LARGE',
  MALFORMED: 'ERR_NPMU_PROTO_MALFORMED',
  INTERNAL: 'ERR_NPMU_INTERNAL',
  TIMEOUT: 'ERR_NPMU_TIMEOUT',
  DISCONNECTED: 'ERR_NPMU_DISCONNECTED',
  CONNECT_FAILED: 'ERR_NPMU_CONNECT_FAILED',
} as const;

// ---------------------------------------------------------------------------
// Schema language
// ---------------------------------------------------------------------------

interface SpecBase {
  /** The field may be absent (it may never be null). */
  optional?: boolean;
}
/** A string; `max`/`min` in UTF-8 bytes. Never contains NUL or lone surrogates. */
export interface StringSpec extends SpecBase {
  kind: 'string';
  max: number;
  min?: number;
  pattern?: RegExp;
}
/** A safe integer ≥ `min` (default 0) and ≤ `max` (default 2^53 - 1). */
export interface UintSpec extends SpecBase {
  kind: 'uint';
  min?: number;
  max?: number;
}
/** A u64 as a canonical decimal string ("0", "18446744073709551615"). */
export interface U64Spec extends SpecBase {
  kind: 'u64';
}
export interface BoolSpec extends SpecBase {
  kind: 'bool';
}
export interface EnumSpec extends SpecBase {
  kind: 'enum';
  values: readonly string[];
}
/** Base64 (standard alphabet, padded) of `min`..`max` bytes. */
export interface BytesSpec extends SpecBase {
  kind: 'bytes';
  max: number;
  min?: number;
}
export interface ArraySpec extends SpecBase {
  kind: 'array';
  of: FieldSpec;
  max: number;
  min?: number;
}
export interface ObjectSpec extends SpecBase {
  kind: 'object';
  fields: Readonly<Record<string, FieldSpec>>;
}
export type FieldSpec = StringSpec | UintSpec | U64Spec | BoolSpec | EnumSpec | BytesSpec | ArraySpec | ObjectSpec;

/** Schema builders (they keep literal types, so message types are inferred from the table). */
export const schema = {
  string: (max: number, o: { min?: number; pattern?: RegExp } = {}): StringSpec => ({ kind: 'string', max, ...o }),
  uint: (o: { min?: number; max?: number } = {}): UintSpec => ({ kind: 'uint', ...o }),
  u64: (): U64Spec => ({ kind: 'u64' }),
  bool: (): BoolSpec => ({ kind: 'bool' }),
  enum: <const V extends readonly string[]>(...values: V): { kind: 'enum'; values: V } => ({ kind: 'enum', values }),
  bytes: (max: number, min?: number): BytesSpec => (min === undefined ? { kind: 'bytes', max } : { kind: 'bytes', max, min }),
  array: <S extends FieldSpec>(of: S, max: number, min?: number): { kind: 'array'; of: S; max: number; min?: number } =>
    min === undefined ? { kind: 'array', of, max } : { kind: 'array', of, max, min },
  object: <F extends Record<string, FieldSpec>>(fields: F): { kind: 'object'; fields: F } => ({ kind: 'object', fields }),
  optional: <S extends FieldSpec>(s: S): S & { optional: true } => ({ ...s, optional: true }),
};

/**
 * The TypeScript type of a value matching a spec. `M = 'out'` is what a
 * validated message holds; `M = 'in'` is what senders may pass (u64 also as
 * bigint, bytes also as Uint8Array; {@link encodeFrame} converts them).
 */
export type Infer<S, M extends 'in' | 'out' = 'out'> = S extends { kind: 'string' }
  ? string
  : S extends { kind: 'uint' }
    ? number
    : S extends { kind: 'u64' }
      ? M extends 'in'
        ? string | bigint
        : string
      : S extends { kind: 'bool' }
        ? boolean
        : S extends { kind: 'enum'; values: readonly (infer V)[] }
          ? V
          : S extends { kind: 'bytes' }
            ? M extends 'in'
              ? string | Uint8Array
              : string
            : S extends { kind: 'array'; of: infer O }
              ? Array<Infer<O, M>>
              : S extends { kind: 'object'; fields: infer F }
                ? InferFields<F, M>
                : never;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
type InferFields<F, M extends 'in' | 'out'> = Simplify<
  { -readonly [K in keyof F as F[K] extends { optional: true } ? never : K]: Infer<F[K], M> } & {
    -readonly [K in keyof F as F[K] extends { optional: true } ? K : never]?: Infer<F[K], M>;
  }
>;

const U64_RE = /^(0|[1-9][0-9]{0,19})$/;
const U64_MAX = 2n ** 64n - 1n;
const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const LONE_SURROGATE = /\p{Cs}/u;
const hasOwn = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `a string (${JSON.stringify(v.length > 24 ? v.slice(0, 24) + '…' : v)})`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

function fieldName(k: string): string {
  const j = JSON.stringify(k);
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(k) ? k : `[${j.length > 40 ? j.slice(0, 40) + '…"' : j}]`;
}

function join(path: string, k: string): string {
  const f = fieldName(k);
  return path === '' ? f : f.startsWith('[') ? path + f : `${path}.${f}`;
}

/**
 * Checks `value` against `spec`. Returns undefined when it matches, otherwise
 * a message naming the field path (`extents[3].pages: ...`).
 */
export function checkValue(spec: FieldSpec, value: unknown, path = ''): string | undefined {
  const at = path === '' ? 'value' : path;
  switch (spec.kind) {
    case 'string': {
      if (typeof value !== 'string') return `${at}: expected a string, got ${describe(value)}`;
      const n = Buffer.byteLength(value, 'utf8');
      if (n > spec.max) return `${at}: longer than ${spec.max} UTF-8 bytes`;
      if (n < (spec.min ?? 0)) return `${at}: shorter than ${spec.min} UTF-8 bytes`;
      if (value.includes('\0')) return `${at}: contains NUL`;
      if (LONE_SURROGATE.test(value)) return `${at}: not well-formed Unicode`;
      if (spec.pattern && !spec.pattern.test(value)) return `${at}: does not match ${spec.pattern}`;
      return undefined;
    }
    case 'uint': {
      const min = spec.min ?? 0;
      const max = spec.max ?? Number.MAX_SAFE_INTEGER;
      if (typeof value !== 'number' || !Number.isSafeInteger(value)) return `${at}: expected an integer, got ${describe(value)}`;
      if (value < min || value > max) return `${at}: ${value} is out of range [${min}, ${max}]`;
      return undefined;
    }
    case 'u64':
      if (typeof value !== 'string' || !U64_RE.test(value) || BigInt(value) > U64_MAX) {
        return `${at}: expected a u64 as a decimal string, got ${describe(value)}`;
      }
      return undefined;
    case 'bool':
      return typeof value === 'boolean' ? undefined : `${at}: expected a boolean, got ${describe(value)}`;
    case 'enum':
      if (typeof value !== 'string' || !spec.values.includes(value)) {
        return `${at}: expected one of ${spec.values.map((x) => `'${x}'`).join(', ')}, got ${describe(value)}`;
      }
      return undefined;
    case 'bytes': {
      if (typeof value !== 'string') return `${at}: expected base64 bytes, got ${describe(value)}`;
      if (value.length > Math.ceil(spec.max / 3) * 4) return `${at}: more than ${spec.max} bytes`;
      if (!BASE64_RE.test(value)) return `${at}: not valid base64`;
      const n = (value.length / 4) * 3 - (value.endsWith('==') ? 2 : value.endsWith('=') ? 1 : 0);
      if (n > spec.max) return `${at}: more than ${spec.max} bytes`;
      if (n < (spec.min ?? 0)) return `${at}: fewer than ${spec.min} bytes`;
      return undefined;
    }
    case 'array': {
      if (!Array.isArray(value)) return `${at}: expected an array, got ${describe(value)}`;
      if (value.length > spec.max) return `${at}: more than ${spec.max} elements`;
      if (value.length < (spec.min ?? 0)) return `${at}: fewer than ${spec.min} elements`;
      for (let i = 0; i < value.length; i++) {
        const why = checkValue(spec.of, value[i], `${path}[${i}]`);
        if (why) return why;
      }
      return undefined;
    }
    case 'object':
      if (!isPlainObject(value)) return `${at}: expected an object, got ${describe(value)}`;
      return checkFields(spec.fields, value, path);
  }
}

/** Checks an object's fields; keys listed in `skip` (the envelope) are ignored. */
function checkFields(
  fields: Readonly<Record<string, FieldSpec>>,
  value: Record<string, unknown>,
  path: string,
  skip?: ReadonlySet<string>,
): string | undefined {
  for (const k of Object.keys(value)) {
    if (skip?.has(k)) continue;
    if (!hasOwn(fields, k)) return `${join(path, k)}: unknown field`;
  }
  for (const k of Object.keys(fields)) {
    const spec = fields[k]!;
    if (!hasOwn(value, k)) {
      if (spec.optional) continue;
      return `${join(path, k)}: missing`;
    }
    const why = checkValue(spec, value[k], join(path, k));
    if (why) return why;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// The message table
// ---------------------------------------------------------------------------

const S = schema;
const hex32 = () => S.string(32, { min: 32, pattern: /^[0-9a-f]{32}$/ });
/** Volume names: 1..64 of [A-Za-z0-9._-], not starting with a dot or dash. */
const volumeName = () => S.string(64, { min: 1, pattern: /^[A-Za-z0-9_][A-Za-z0-9._-]*$/ });
/** Region names: 1..64 UTF-8 bytes, no NUL ([0067]). */
const regionName = () => S.string(64, { min: 1 });
/** Host name or IP address literal (IPv6 without brackets, optional %zone). */
const host = () => S.string(255, { min: 1, pattern: /^[A-Za-z0-9.:%_-]+$/ });
const port = () => S.uint({ min: 1, max: 65535 });
const u32 = () => S.uint({ max: 0xffffffff });
const ticket = () => S.bytes(64, 1);
const durability = () => S.enum('pmem', 'msync', 'volatile');
/**
 * The platform's persistence domain of a unit's device (its nd region's
 * persistence_domain): cpu_cache = eADR, a placed byte is durable;
 * memory_controller = ADR, bytes must be flushed from the CPU caches;
 * none = not listed / unknown / not pmem. Optional in replies: a unit that
 * does not report it is treated as 'none' (flush on the unit).
 */
const persistDomain = () => S.enum('cpu_cache', 'memory_controller', 'none');
/** How a persist was done: cache flush (pmem), msync, or nothing (the device is volatile). */
const persistMethod = () => S.enum('pmem', 'msync', 'none');
const unitAddress = () =>
  S.object({ host: host(), rdmaPort: port(), controlPort: port(), unitId: hex32(), available: S.bool() });
/** One half of an open region, [0066], [0084]. */
const regionHalf = () =>
  S.object({
    unitId: hex32(),
    /** the unit's mapping of this open, for persist-range */
    mapId: S.u64(),
    /** base network virtual address */
    iova: S.u64(),
    /** memory context handle */
    rkey: u32(),
    durability: durability(),
    /** false when the half cannot be reached; its iova/rkey are then "0"/0 */
    available: S.bool(),
    /** true when the half missed updates (not mapped; reads and writes of it fail with ERR_NPMU_HALF_STALE) */
    stale: S.optional(S.bool()),
  });
/** A half's place in the volume's history: current (in sync), stale (missed updates: not served until resynced), unknown (never reached by this PMM). */
const halfSync = () => S.enum('current', 'stale', 'unknown');
const unitStatus = () =>
  S.object({
    unitId: hex32(),
    host: host(),
    controlPort: port(),
    /** the PMM reaches the unit (a stale half may be reachable and still not served) */
    available: S.bool(),
    durability: durability(),
    sync: S.optional(halfSync()),
  });
const empty = () => S.object({});

export type Server = 'unit' | 'pmm' | 'any';
export interface MessageSpec {
  /** Who serves it. */
  server: Server;
  request: ObjectSpec;
  reply: ObjectSpec;
}

/**
 * Every request type: who serves it, its request fields, its reply fields.
 */
export const MESSAGES = {
  // ---- any server -------------------------------------------------------
  /** Liveness check; also keeps NATs and dead-peer detection honest. */
  ping: { server: 'any', request: empty(), reply: empty() },

  // ---- PMM → unit (control connection), and client → unit -----------------
  /**
   * First message on a connection to a unit. A kind-2 ticket admits the PMM;
   * a kind-1 ticket admits a client for `persist-range` on its session.
   */
  hello: {
    server: 'unit',
    request: S.object({ ticket: ticket() }),
    reply: S.object({
      unitId: hex32(),
      role: S.enum('none', 'primary', 'mirror'),
      /** all zero when unassigned */
      volumeId: hex32(),
      label: S.string(32),
      capacity: S.uint(),
      pageSize: S.uint({ min: 4096 }),
      dataPages: S.uint(),
      metaLength: S.uint(),
      durability: durability(),
      layoutVersion: S.uint(),
      /** superblock generation */
      generation: S.uint(),
      /** the unit's rdma_cm listening port (so a PMM given only the control address can hand it to clients) */
      rdmaPort: S.optional(port()),
      /** fencing epoch of the PMM holding the unit (0 = none yet) */
      epoch: S.uint(),
      /** that PMM's id (all zero with epoch 0) */
      holder: hex32(),
      /** the platform's persistence domain; absent from older units (= 'none') */
      persistDomain: S.optional(persistDomain()),
    }),
  },
  /**
   * Fencing: a PMM takes the unit for `epoch` (> the unit's, or equal when it
   * already holds it). Persisted before the reply. Control connections of
   * lower epochs are dropped at once, and every state-changing request from a
   * connection that has not claimed the current epoch gets ERR_NPMU_FENCED.
   */
  claim: {
    server: 'unit',
    request: S.object({ epoch: S.uint({ min: 1 }), pmmId: hex32() }),
    reply: S.object({ epoch: S.uint(), previousEpoch: S.uint(), previousHolder: hex32() }),
  },
  /** Drops every mapping of every session (their rkeys die at once); for a half that missed updates. */
  revoke: { server: 'unit', request: empty(), reply: S.object({ mappings: S.uint() }) },
  /** Unit statistics. */
  info: {
    server: 'unit',
    request: empty(),
    reply: S.object({
      unitId: hex32(),
      capacity: S.uint(),
      pageSize: S.uint(),
      dataPages: S.uint(),
      /** as last set by the PMM (set-usage) */
      usedPages: S.uint(),
      durability: durability(),
      /** the platform's persistence domain; absent from older units (= 'none') */
      persistDomain: S.optional(persistDomain()),
      /** true when the unit serves RDMA from a DRAM shadow (test-only shadow mode) */
      shadow: S.optional(S.bool()),
      connections: S.array(
        S.object({ sessionId: S.u64(), remoteAddress: S.string(64), mappings: S.uint() }),
        MAX_LIST,
      ),
      /** mappings in total */
      mappings: S.uint(),
    }),
  },
  /**
   * Binds the unit to a volume (superblock update). Refused if it is bound to
   * another volume, unless `force`.
   */
  'format-volume': {
    server: 'unit',
    request: S.object({
      volumeId: hex32(),
      role: S.enum('primary', 'mirror'),
      label: S.string(32),
      force: S.optional(S.bool()),
    }),
    reply: S.object({ generation: S.uint() }),
  },
  /** Reads the metadata area ([0060]); offset is relative to its start. */
  'meta-read': {
    server: 'unit',
    request: S.object({ offset: S.uint(), length: S.uint({ min: 1, max: META_IO_MAX }) }),
    reply: S.object({ data: S.bytes(META_IO_MAX) }),
  },
  /** Writes the metadata area; with `persist`, replies only once durable. */
  'meta-write': {
    server: 'unit',
    request: S.object({ offset: S.uint(), data: S.bytes(META_IO_MAX, 1), persist: S.bool() }),
    reply: empty(),
  },
  /** Tells the unit how many data pages the PMM has allocated (for info). */
  'set-usage': { server: 'unit', request: S.object({ usedPages: S.uint() }), reply: empty() },
  /**
   * Maps data-page extents, in order, into one contiguous network-virtual range
   * at `iova` for the session's connection only ([0040], [0044]).
   */
  map: {
    server: 'unit',
    request: S.object({
      sessionId: S.u64(),
      /** chosen by the PMM, unique per session */
      mapId: S.u64(),
      extents: S.array(S.object({ page: S.uint(), pages: S.uint({ min: 1 }) }), MAX_EXTENTS, 1),
      iova: S.u64(),
      access: S.enum('ro', 'rw'),
    }),
    reply: S.object({ rkey: u32(), iova: S.u64(), length: S.uint() }),
  },
  /** Removes a mapping; its rkey is revoked. */
  unmap: { server: 'unit', request: S.object({ sessionId: S.u64(), mapId: S.u64() }), reply: empty() },
  /** Persists `length` bytes from `offset` bytes into data page `page` (may span pages). */
  persist: {
    server: 'unit',
    request: S.object({ page: S.uint(), offset: S.uint(), length: S.uint({ min: 1 }) }),
    reply: S.object({ method: persistMethod() }),
  },
  /** Connected sessions and their mappings. */
  sessions: {
    server: 'unit',
    request: empty(),
    reply: S.object({
      sessions: S.array(
        S.object({
          sessionId: S.u64(),
          remoteAddress: S.string(64),
          connectedAtMs: S.uint(),
          mapIds: S.array(S.u64(), MAX_LIST),
        }),
        MAX_LIST,
      ),
    }),
  },

  // ---- client → unit -------------------------------------------------------
  /** Makes a written range of a mapping durable (file-backed units); offset is within the mapping. */
  'persist-range': {
    server: 'unit',
    request: S.object({ sessionId: S.u64(), mapId: S.u64(), offset: S.uint(), length: S.uint({ min: 1 }) }),
    reply: S.object({ method: persistMethod() }),
  },

  // ---- client → PMM --------------------------------------------------------
  /** Opens a session on a volume; returns tickets for both units ([0055]). */
  attach: {
    server: 'pmm',
    request: S.object({ client: S.string(64, { min: 1 }), credential: S.bytes(256), volume: volumeName() }),
    reply: S.object({
      sessionId: S.u64(),
      pmmId: hex32(),
      tickets: S.object({ primary: ticket(), mirror: ticket() }),
      units: S.object({ primary: unitAddress(), mirror: unitAddress() }),
    }),
  },
  /** create_region ([0067]-[0070]): allocates on both halves; the base pointer is fixed for life. */
  'create-region': {
    server: 'pmm',
    request: S.object({
      volume: volumeName(),
      name: regionName(),
      size: S.uint({ min: 1 }),
      basePointer: S.u64(),
      /** writes are durable by default (per-write override in the client) */
      durable: S.optional(S.bool()),
    }),
    reply: empty(),
  },
  /** delete_region: refused if missing, open by another client, or not the caller's. */
  'delete-region': { server: 'pmm', request: S.object({ volume: volumeName(), name: regionName() }), reply: empty() },
  /** open_region ([0084]): maps both halves for this session; returns the region handle. */
  'open-region': {
    server: 'pmm',
    request: S.object({ volume: volumeName(), name: regionName() }),
    reply: S.object({
      handleId: u32(),
      name: regionName(),
      size: S.uint(),
      basePointer: S.u64(),
      pmmId: hex32(),
      durable: S.bool(),
      primary: regionHalf(),
      mirror: regionHalf(),
    }),
  },
  /** close_region ([0085]): unmaps both halves; error if not open by the caller. */
  'close-region': { server: 'pmm', request: S.object({ handleId: u32() }), reply: empty() },
  /** list_regions ([0095]): up to `max` names and the true count. */
  'list-regions': {
    server: 'pmm',
    request: S.object({ volume: volumeName(), max: S.uint({ max: MAX_LIST }) }),
    reply: S.object({ names: S.array(regionName(), MAX_LIST), count: S.uint() }),
  },
  /** read_attributes ([0096]-[0097]): a snapshot the client caches. */
  'read-attributes': {
    server: 'pmm',
    request: S.object({ volume: volumeName(), name: regionName() }),
    reply: S.object({
      attrs: S.object({
        name: regionName(),
        size: S.uint(),
        basePointer: S.u64(),
        owner: S.string(64),
        createdAtMs: S.uint(),
        /** 0 if never opened */
        lastOpenAtMs: S.uint(),
        durable: S.bool(),
        /** what the weaker half can promise */
        durability: durability(),
        pages: S.uint(),
        openCount: S.uint(),
      }),
    }),
  },
  /** Health and usage of a volume and its two halves. */
  'volume-status': {
    server: 'pmm',
    request: S.object({ volume: volumeName() }),
    reply: S.object({
      volume: volumeName(),
      volumeId: hex32(),
      /**
       * ok: both halves current and up; degraded: one current half serves;
       * offline: no current half is reachable; waiting: the only reachable
       * half cannot know whether the other went on without it (bring the
       * other back, or force); split-brain: both halves went on alone (force
       * one); fenced: another PMM took the volume over.
       */
      state: S.enum('ok', 'degraded', 'offline', 'waiting', 'split-brain', 'fenced'),
      /** why the volume is not ok, for operators */
      reason: S.optional(S.string(1024)),
      /** the PMM's fencing epoch on the volume's units */
      epoch: S.optional(S.uint()),
      /** metadata generation */
      generation: S.optional(S.uint()),
      /** a resync in progress: bytes copied of the total */
      resync: S.optional(S.object({ half: S.enum('primary', 'mirror'), done: S.uint(), total: S.uint() })),
      pageSize: S.uint(),
      totalPages: S.uint(),
      usedPages: S.uint(),
      regions: S.uint(),
      primary: unitStatus(),
      mirror: unitStatus(),
    }),
  },
  /**
   * Operator: brings a stale half up to date by a full copy of every region's
   * bytes and the metadata, then marks it current. Refused while any region
   * is open (the copy cannot see one-sided writes made during it). Progress
   * shows in volume-status.
   */
  'volume-resync': {
    server: 'pmm',
    request: S.object({ volume: volumeName() }),
    reply: S.object({ half: S.enum('primary', 'mirror'), regions: S.uint(), bytes: S.uint() }),
  },
  /**
   * Operator: serves a volume that is waiting or split-brain from `half`,
   * marking the other half stale. What the other half acknowledged alone is
   * lost: the command says so.
   */
  'volume-force': {
    server: 'pmm',
    request: S.object({ volume: volumeName(), half: S.enum('primary', 'mirror') }),
    reply: S.object({ stale: S.enum('primary', 'mirror') }),
  },
  /**
   * Client: `half` missed (or is about to miss) a write this client will
   * acknowledge: record it stale on the other half before that. Its mappings
   * are revoked and no one reads it until it is resynced.
   */
  'mark-stale': {
    server: 'pmm',
    request: S.object({ volume: volumeName(), half: S.enum('primary', 'mirror'), reason: S.string(256) }),
    reply: empty(),
  },
  /** Creates a volume from two unbound units in separate fault domains ([0059]). */
  'create-volume': {
    server: 'pmm',
    request: S.object({
      volume: volumeName(),
      primary: S.object({ host: host(), controlPort: port(), rdmaPort: S.optional(port()) }),
      mirror: S.object({ host: host(), controlPort: port(), rdmaPort: S.optional(port()) }),
      /** rebind units already bound to another volume */
      force: S.optional(S.bool()),
    }),
    reply: S.object({ volumeId: hex32() }),
  },
} as const satisfies Record<string, MessageSpec>;

export type MessageType = keyof typeof MESSAGES;
/** A request's fields (without the envelope) as validated. */
export type RequestBody<T extends MessageType> = Infer<(typeof MESSAGES)[T]['request'], 'out'>;
/** A request's fields as a sender may pass them (u64 as bigint, bytes as Uint8Array allowed). */
export type RequestInput<T extends MessageType> = Infer<(typeof MESSAGES)[T]['request'], 'in'>;
/** A reply's result fields (without the envelope). */
export type ReplyBody<T extends MessageType> = Infer<(typeof MESSAGES)[T]['reply'], 'out'>;
export type ReplyInput<T extends MessageType> = Infer<(typeof MESSAGES)[T]['reply'], 'in'>;
/** Any validated request, discriminated by `type`. */
export type Request = { [T in MessageType]: { v: typeof PROTOCOL_VERSION; id: number; type: T } & RequestBody<T> }[MessageType];
export type OkReply<T extends MessageType> = { v: typeof PROTOCOL_VERSION; id: number; type: 'ok' } & ReplyBody<T>;
export interface ErrorReply {
  v: typeof PROTOCOL_VERSION;
  id: number;
  type: 'error';
  code: string;
  message: string;
}

const ENVELOPE = new Set(['v', 'id', 'type']);
const ERROR_FIELDS = { code: S.string(64, { min: 1, pattern: /^[A-Z][A-Z0-9_]*$/ }), message: S.string(4096) };

// The envelope keys are reserved.
for (const [type, m] of Object.entries(MESSAGES) as Array<[string, MessageSpec]>) {
  for (const k of [...Object.keys(m.request.fields), ...Object.keys(m.reply.fields)]) {
    if (ENVELOPE.has(k)) throw new Error(`protocol table: ${type} uses the reserved field ${k}`);
  }
}

/** The request types a server of kind `server` accepts (`'any'` types included). */
export function typesServedBy(server: 'unit' | 'pmm'): MessageType[] {
  return (Object.keys(MESSAGES) as MessageType[]).filter((t) => MESSAGES[t].server === server || MESSAGES[t].server === 'any');
}

export function isMessageType(t: unknown): t is MessageType {
  return typeof t === 'string' && hasOwn(MESSAGES, t);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

export type Invalid = { ok: false; code: string; message: string; id: number };
export type RequestCheck = { ok: true; msg: Request } | Invalid;
export type ReplyCheck<T extends MessageType> = { ok: true; msg: OkReply<T> | ErrorReply } | Invalid;

function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

function envelope(msg: unknown): Invalid | { id: number } {
  if (!isPlainObject(msg)) return { ok: false, code: PROTO_ERRORS.MALFORMED, message: `a message must be a JSON object, got ${describe(msg)}`, id: 0 };
  const id = isU32(msg.id) ? msg.id : 0;
  if (msg.v !== PROTOCOL_VERSION) {
    return { ok: false, code: PROTO_ERRORS.VERSION, message: `unsupported protocol version ${describe(msg.v)}; this side speaks ${PROTOCOL_VERSION}`, id };
  }
  if (!isU32(msg.id)) return { ok: false, code: PROTO_ERRORS.INVALID, message: `id: expected a u32, got ${describe(msg.id)}`, id: 0 };
  return { id };
}

/**
 * Validates a decoded request: envelope, type, then every field.
 *
 * @param opts.types the types this server accepts (others are `ERR_NPMU_PROTO_UNKNOWN_TYPE`).
 * @returns the request, typed; or the error code, a message naming the field
 *   path, and the id to echo (0 when the request's own id is unusable).
 */
export function validateRequest(msg: unknown, opts: { types?: readonly MessageType[] } = {}): RequestCheck {
  const env = envelope(msg);
  if ('ok' in env) return env;
  const m = msg as Record<string, unknown>;
  if (m.id === 0) return { ok: false, code: PROTO_ERRORS.INVALID, message: 'id: 0 is reserved for unattributed errors', id: 0 };
  const type = m.type;
  if (typeof type !== 'string') return { ok: false, code: PROTO_ERRORS.INVALID, message: `type: expected a string, got ${describe(type)}`, id: env.id };
  if (!isMessageType(type) || (opts.types && !opts.types.includes(type))) {
    return { ok: false, code: PROTO_ERRORS.UNKNOWN_TYPE, message: `unknown request type ${describe(type)}`, id: env.id };
  }
  const why = checkFields(MESSAGES[type].request.fields, m, '', ENVELOPE);
  if (why) return { ok: false, code: PROTO_ERRORS.INVALID, message: `${type}: ${why}`, id: env.id };
  return { ok: true, msg: m as Request };
}

/** Validates a decoded reply to a request of type `type` (an ok or an error reply). */
export function validateReply<T extends MessageType>(type: T, msg: unknown): ReplyCheck<T> {
  if (!isMessageType(type)) return { ok: false, code: PROTO_ERRORS.UNKNOWN_TYPE, message: `unknown request type ${describe(type)}`, id: 0 };
  const env = envelope(msg);
  if ('ok' in env) return env;
  const m = msg as Record<string, unknown>;
  let why: string | undefined;
  if (m.type === 'ok') why = checkFields(MESSAGES[type].reply.fields, m, '', ENVELOPE);
  else if (m.type === 'error') why = checkFields(ERROR_FIELDS, m, '', ENVELOPE);
  else why = `type: expected 'ok' or 'error', got ${describe(m.type)}`;
  if (why) return { ok: false, code: PROTO_ERRORS.INVALID, message: `reply to ${type}: ${why}`, id: env.id };
  return { ok: true, msg: m as OkReply<T> | ErrorReply };
}

// ---------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------

function replacer(this: unknown, key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  const orig = (this as Record<string, unknown>)[key];
  if (orig instanceof Uint8Array) return Buffer.from(orig.buffer, orig.byteOffset, orig.byteLength).toString('base64');
  return value;
}

/** JSON text of a message (bigint → decimal string, Uint8Array → base64). */
function stringify(msg: object): string {
  return JSON.stringify(msg, replacer);
}

function frameOf(text: string, maxFrame: number): Buffer {
  const len = Buffer.byteLength(text, 'utf8');
  if (len > maxFrame) throw new NpmuError(PROTO_ERRORS.TOO_LARGE, `message of ${len} bytes exceeds the ${maxFrame}-byte frame limit`, { length: len });
  const b = Buffer.allocUnsafe(4 + len);
  b.writeUInt32BE(len, 0);
  b.write(text, 4, 'utf8');
  return b;
}

/**
 * Encodes one message as a frame. bigint values become decimal strings and
 * Uint8Arrays base64, so u64 and bytes fields may be passed either way.
 * @throws NpmuError `ERR_NPMU_PROTO_TOO_LARGE` over {@link MAX_FRAME}.
 */
export function encodeFrame(msg: object, maxFrame = MAX_FRAME): Buffer {
  if (!isPlainObject(msg)) throw argTypeError('msg', 'an object', msg);
  return frameOf(stringify(msg), maxFrame);
}

export type FrameResult =
  | { ok: true; msg: Record<string, unknown> }
  /** `fatal`: the stream cannot be resynchronised; close the connection. */
  | { ok: false; code: string; message: string; fatal: boolean };

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
/** Chunks smaller than this are copied into an accumulation buffer of ACC_SIZE bytes. */
const SMALL_CHUNK = 4096;
const ACC_SIZE = 64 * 1024;

/**
 * Streaming frame decoder. `push()` each chunk as it arrives; it returns the
 * frames completed by it, in order. A length prefix over the limit is reported
 * (fatal) before any of the body is buffered, and everything after it is
 * dropped. Memory and time stay linear in the bytes received however the peer
 * slices them: small chunks are copied into a shared accumulation buffer (a
 * frame sent one byte per segment costs no object per byte), and a frame's
 * chunks are joined once, when it is complete.
 */
export class FrameDecoder {
  readonly maxFrame: number;
  /** Unconsumed chunks from #head on. */
  #chunks: Buffer[] = [];
  #head = 0;
  /** Accumulation area for small chunks; its first #accLen bytes are data not yet in #chunks. */
  #acc: Buffer | null = null;
  #accLen = 0;
  #buffered = 0;
  /** Body length of the frame being read, or -1 while reading a prefix. */
  #need = -1;
  #failed = false;

  constructor(opts: { maxFrame?: number } = {}) {
    const max = opts.maxFrame ?? MAX_FRAME;
    if (!Number.isSafeInteger(max) || max < 1 || max > 0xffffffff) throw argValueError('maxFrame', 'must be an integer in [1, 2^32-1]', max);
    this.maxFrame = max;
  }

  /** Bytes held for an incomplete frame (non-zero at close means a truncated frame). */
  get buffered(): number {
    return this.#buffered + (this.#need >= 0 ? 4 : 0);
  }

  /** True after a fatal error: the decoder ignores all further input. */
  get failed(): boolean {
    return this.#failed;
  }

  push(chunk: Uint8Array): FrameResult[] {
    if (this.#failed || chunk.length === 0) return [];
    const c = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (c.length < SMALL_CHUNK) {
      if (this.#acc === null || this.#acc.length - this.#accLen < c.length) {
        this.#flushAcc();
        this.#acc = Buffer.allocUnsafe(ACC_SIZE);
      }
      c.copy(this.#acc, this.#accLen);
      this.#accLen += c.length;
    } else {
      this.#flushAcc();
      this.#chunks.push(c);
    }
    this.#buffered += c.length;

    const out: FrameResult[] = [];
    for (;;) {
      if (this.#need < 0) {
        if (this.#buffered < 4) break;
        const len = this.#take(4).readUInt32BE(0);
        if (len > this.maxFrame) {
          this.#failed = true;
          this.#chunks = [];
          this.#head = 0;
          this.#acc = null;
          this.#accLen = 0;
          this.#buffered = 0;
          out.push({ ok: false, code: PROTO_ERRORS.TOO_LARGE, message: `frame of ${len} bytes exceeds the ${this.maxFrame}-byte limit`, fatal: true });
          break;
        }
        this.#need = len;
      }
      if (this.#buffered < this.#need) break;
      const body = this.#take(this.#need);
      this.#need = -1;
      out.push(parseBody(body));
    }
    return out;
  }

  /** Moves the accumulated small chunks into the chunk list; the rest of the area stays for later ones. */
  #flushAcc(): void {
    if (this.#acc === null || this.#accLen === 0) return;
    this.#chunks.push(this.#acc.subarray(0, this.#accLen));
    this.#acc = this.#acc.subarray(this.#accLen);
    this.#accLen = 0;
  }

  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    this.#flushAcc();
    const first = this.#chunks[this.#head]!;
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#head++;
      else this.#chunks[this.#head] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.#chunks[this.#head]!;
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.#head++;
        else this.#chunks[this.#head] = c.subarray(k);
      }
    }
    this.#buffered -= n;
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    } else if (this.#head >= 64 && this.#head * 2 >= this.#chunks.length) {
      this.#chunks = this.#chunks.slice(this.#head);
      this.#head = 0;
    }
    return out;
  }
}

function parseBody(body: Buffer): FrameResult {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    return { ok: false, code: PROTO_ERRORS.MALFORMED, message: 'frame body is not valid UTF-8', fatal: false };
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { ok: false, code: PROTO_ERRORS.MALFORMED, message: 'frame body is not valid JSON', fatal: false };
  }
  if (!isPlainObject(v)) return { ok: false, code: PROTO_ERRORS.MALFORMED, message: `frame body must be a JSON object, got ${describe(v)}`, fatal: false };
  return { ok: true, msg: v };
}

/** Makes a string acceptable as an error message field: no NUL, well-formed, bounded. */
function cleanMessage(s: unknown): string {
  let m = typeof s === 'string' ? s : String(s);
  if (m.length > 1000) m = m.slice(0, 1000) + '…';
  return m.replace(/\0/g, '\\0').replace(/\p{Cs}/gu, '\uFFFD');
}

function errorReply(id: number, code: string, message: string): ErrorReply {
  return { v: PROTOCOL_VERSION, id, type: 'error', code, message: cleanMessage(message) };
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

interface Pending {
  type: MessageType;
  resolve: (msg: never) => void;
  reject: (err: NpmuError) => void;
  timer: NodeJS.Timeout;
}

/**
 * The requesting side of a control connection. Requests may be pipelined;
 * replies are matched by id. Events: `'close'` (after every pending request
 * has been rejected).
 */
export class ControlConnection extends EventEmitter {
  readonly socket: net.Socket;
  readonly defaultTimeoutMs: number;
  #decoder: FrameDecoder;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed = false;
  #cause: unknown;

  /**
   * Connects to `host:port`.
   * @throws NpmuError `ERR_NPMU_CONNECT_FAILED` (errno in `errno`, the system error in `cause`)
   *   or `ERR_NPMU_TIMEOUT`.
   */
  static connect(opts: { host: string; port: number; timeoutMs?: number; maxFrame?: number; defaultTimeoutMs?: number }): Promise<ControlConnection> {
    const { host, port } = opts;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new NpmuError(PROTO_ERRORS.TIMEOUT, `connecting to ${host}:${port} timed out after ${timeoutMs} ms`, { host, port }));
      }, timeoutMs);
      const onError = (err: NodeJS.ErrnoException): void => {
        clearTimeout(timer);
        reject(
          new NpmuError(PROTO_ERRORS.CONNECT_FAILED, `cannot connect to ${host}:${port}: ${err.message}`, {
            cause: err,
            errno: err.code,
            syscall: err.syscall,
            host,
            port,
          }),
        );
      };
      sock.once('error', onError);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeListener('error', onError);
        resolve(new ControlConnection(sock, opts));
      });
    });
  }

  constructor(socket: net.Socket, opts: { maxFrame?: number; defaultTimeoutMs?: number } = {}) {
    super();
    this.socket = socket;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#decoder = new FrameDecoder({ maxFrame: opts.maxFrame ?? MAX_FRAME });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => {
      this.#cause ??= err;
    });
    socket.on('close', () => this.#fail(PROTO_ERRORS.DISCONNECTED, 'connection closed'));
    if (socket.destroyed) queueMicrotask(() => this.#fail(PROTO_ERRORS.DISCONNECTED, 'connection closed'));
  }

  /** True once the connection is closed; requests then fail with `ERR_NPMU_DISCONNECTED`. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Requests awaiting a reply. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Sends a request and resolves with its ok reply.
   *
   * Rejects with an NpmuError: the remote `code` and `message` for an error
   * reply (`remote: true`); `ERR_NPMU_PROTO_*` if the request is invalid
   * (checked before sending) or the reply is; `ERR_NPMU_TIMEOUT` after
   * `timeoutMs` (a late reply is ignored); `ERR_NPMU_DISCONNECTED` if the
   * connection closes first.
   */
  request<T extends MessageType>(type: T, body: RequestInput<T>, opts: { timeoutMs?: number } = {}): Promise<OkReply<T>> {
    return new Promise<OkReply<T>>((resolve, reject) => {
      if (this.#closed || this.socket.destroyed || !this.socket.writable) {
        reject(new NpmuError(PROTO_ERRORS.DISCONNECTED, 'connection is closed', { requestType: type }));
        return;
      }
      const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
      if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw argValueError('timeoutMs', 'must be a positive integer', timeoutMs);
      const id = this.#allocId();
      let frame: Buffer;
      try {
        if (!isPlainObject(body)) throw new NpmuError(PROTO_ERRORS.INVALID, `${type}: the body must be an object`);
        const text = stringify({ ...body, v: PROTOCOL_VERSION, id, type });
        const check = validateRequest(JSON.parse(text));
        if (!check.ok) throw new NpmuError(check.code, check.message, { requestType: type });
        frame = frameOf(text, this.#decoder.maxFrame);
      } catch (err) {
        reject(err instanceof NpmuError ? err : new NpmuError(PROTO_ERRORS.INVALID, `${type}: ${(err as Error).message}`, { cause: err }));
        return;
      }
      const timer = setTimeout(() => {
        if (this.#pending.delete(id)) {
          reject(new NpmuError(PROTO_ERRORS.TIMEOUT, `${type} request timed out after ${timeoutMs} ms`, { requestType: type }));
        }
      }, timeoutMs);
      this.#pending.set(id, { type, resolve: resolve as (m: never) => void, reject, timer });
      this.socket.write(frame);
    });
  }

  /** Closes gracefully (FIN); pending requests are rejected when the socket closes. */
  close(): void {
    this.socket.end();
  }

  /** Closes at once; pending requests are rejected with `ERR_NPMU_DISCONNECTED`. */
  destroy(): void {
    this.socket.destroy();
  }

  #allocId(): number {
    for (;;) {
      const id = this.#nextId;
      this.#nextId = id >= 0xffffffff ? 1 : id + 1;
      if (!this.#pending.has(id)) return id;
    }
  }

  #onData(chunk: Buffer): void {
    for (const r of this.#decoder.push(chunk)) {
      if (this.#closed) return;
      if (!r.ok) {
        // A reply we cannot read cannot be matched to its request: give up on the connection.
        this.#fail(r.code, `unreadable reply: ${r.message}`);
        return;
      }
      const m = r.msg;
      if (!isU32(m.id)) {
        this.#fail(PROTO_ERRORS.INVALID, `reply without a valid id: ${describe(m.id)}`);
        return;
      }
      if (m.id === 0) {
        // The peer could not attribute something we sent; it closes after this.
        const code = typeof m.code === 'string' && ERROR_FIELDS.code.pattern!.test(m.code) ? m.code : PROTO_ERRORS.MALFORMED;
        this.#fail(code, `peer reported: ${cleanMessage(m.message)}`, true);
        return;
      }
      const p = this.#pending.get(m.id);
      if (!p) continue; // late reply to a request that timed out
      this.#pending.delete(m.id);
      clearTimeout(p.timer);
      const check = validateReply(p.type, m);
      if (!check.ok) p.reject(new NpmuError(check.code, check.message, { requestType: p.type }));
      else if (check.msg.type === 'error') p.reject(new NpmuError(check.msg.code, check.msg.message, { remote: true, requestType: p.type }));
      else p.resolve(check.msg as never);
    }
  }

  #fail(code: string, message: string, remote = false): void {
    if (this.#closed) return;
    this.#closed = true;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new NpmuError(code, `${p.type}: ${message}`, { requestType: p.type, remote, cause: this.#cause }));
    }
    this.socket.destroy();
    this.emit('close');
  }
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/**
 * A request handler: returns the reply's result fields (u64 may be bigint,
 * bytes may be Uint8Array), or throws an NpmuError whose code is replied.
 */
export type Handler = (msg: Request, conn: ServerConnection) => Promise<object | void> | object | void;

export interface ServeOptions {
  /** Request types accepted (default: all); see {@link typesServedBy}. */
  types?: readonly MessageType[];
  maxFrame?: number;
  /**
   * Called with anything a handler throws that is not an NpmuError, and with
   * replies that fail validation (server bugs; the peer only sees
   * `ERR_NPMU_INTERNAL`). Pass a logger.
   */
  onError?: (err: unknown, msg: Request | undefined) => void;
  /** Requests queued before the socket stops being read (backpressure). Default 64. */
  maxQueue?: number;
  /** Time the connection may stay half-closed after a fatal framing error. Default 2000 ms. */
  lingerMs?: number;
}

type QueueItem = { kind: 'frame'; frame: FrameResult } | { kind: 'fatal'; code: string; message: string };

/**
 * The serving side of one control connection (made by {@link serve}). Events:
 * `'close'`, once, when the socket is gone — where a server releases what the
 * peer held ([0085]).
 */
export class ServerConnection extends EventEmitter {
  readonly socket: net.Socket;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** Per-connection state for the server's use (e.g. the session a `hello` admitted). */
  state: Record<string, unknown> = {};
  #handler: Handler;
  #opts: ServeOptions;
  #decoder: FrameDecoder;
  #queue: QueueItem[] = [];
  #running = false;
  #closed = false;
  #paused = false;

  constructor(socket: net.Socket, handler: Handler, opts: ServeOptions = {}) {
    super();
    this.socket = socket;
    this.remoteAddress = socket.remoteAddress ?? '';
    this.remotePort = socket.remotePort ?? 0;
    this.#handler = handler;
    this.#opts = opts;
    this.#decoder = new FrameDecoder({ maxFrame: opts.maxFrame ?? MAX_FRAME });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 10_000);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => {
      /* 'close' follows */
    });
    socket.on('close', () => {
      if (this.#closed) return;
      this.#closed = true;
      this.#queue = [];
      this.emit('close');
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Ends the connection after the replies already written. */
  close(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  #onData(chunk: Buffer): void {
    for (const frame of this.#decoder.push(chunk)) {
      if (!frame.ok && frame.fatal) this.#queue.push({ kind: 'fatal', code: frame.code, message: frame.message });
      else this.#queue.push({ kind: 'frame', frame });
    }
    const max = this.#opts.maxQueue ?? 64;
    if (this.#queue.length >= max && !this.#paused) {
      this.#paused = true;
      this.socket.pause();
    }
    void this.#run();
  }

  async #run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const item = this.#queue.shift()!;
        if (item.kind === 'fatal') {
          this.#send(errorReply(0, item.code, item.message));
          this.#queue = [];
          this.socket.end();
          const t = setTimeout(() => this.socket.destroy(), this.#opts.lingerMs ?? 2000);
          t.unref();
          return;
        }
        await this.#handle(item.frame);
        if (this.#paused && this.#queue.length <= (this.#opts.maxQueue ?? 64) / 2) {
          this.#paused = false;
          this.socket.resume();
        }
      }
    } finally {
      this.#running = false;
    }
  }

  async #handle(frame: FrameResult): Promise<void> {
    if (!frame.ok) {
      this.#send(errorReply(0, frame.code, frame.message));
      return;
    }
    const check = validateRequest(frame.msg, { types: this.#opts.types });
    if (!check.ok) {
      this.#send(errorReply(check.id, check.code, check.message));
      return;
    }
    const msg = check.msg;
    let reply: object;
    try {
      const result = await this.#handler(msg, this);
      if (this.#closed) return;
      reply = this.#okReply(msg, result);
    } catch (err) {
      if (this.#closed) return;
      if (err instanceof NpmuError && typeof err.code === 'string' && ERROR_FIELDS.code.pattern!.test(err.code) && err.code.length <= 64) {
        reply = errorReply(msg.id, err.code, err.message);
      } else {
        this.#opts.onError?.(err, msg);
        reply = errorReply(msg.id, PROTO_ERRORS.INTERNAL, 'internal error');
      }
    }
    this.#send(reply);
  }

  /** Builds and checks an ok reply; a bad result is the server's bug: INTERNAL. */
  #okReply(msg: Request, result: object | void): object {
    const body = result ?? {};
    let problem: string | undefined;
    let parsed: unknown;
    if (!isPlainObject(body)) problem = `handler returned ${describe(body)}`;
    else if (Object.keys(body).some((k) => ENVELOPE.has(k))) problem = 'handler result uses an envelope field';
    else {
      try {
        parsed = JSON.parse(stringify({ v: PROTOCOL_VERSION, id: msg.id, type: 'ok', ...body }));
      } catch (err) {
        problem = `handler result is not serialisable: ${(err as Error).message}`;
      }
    }
    if (problem === undefined) {
      const check = validateReply(msg.type, parsed);
      if (check.ok) return check.msg;
      problem = check.message;
    }
    this.#opts.onError?.(new NpmuError(PROTO_ERRORS.INTERNAL, `invalid reply to ${msg.type}: ${problem}`), msg);
    return errorReply(msg.id, PROTO_ERRORS.INTERNAL, 'internal error');
  }

  #send(reply: object): void {
    if (this.#closed || this.socket.destroyed || !this.socket.writable) return;
    let frame: Buffer;
    try {
      frame = encodeFrame(reply, this.#decoder.maxFrame);
    } catch (err) {
      this.#opts.onError?.(err, undefined);
      const id = (reply as { id?: number }).id ?? 0;
      frame = encodeFrame(errorReply(id, PROTO_ERRORS.INTERNAL, 'internal error: reply too large'));
    }
    this.socket.write(frame);
  }
}

/**
 * Serves control requests on `socket`: each request is validated, handed to
 * `handler`, and answered — ok with the handler's result, or an error reply
 * (a thrown NpmuError's own code; anything else `ERR_NPMU_INTERNAL`, with no
 * detail leaked). Malformed input gets an error reply; a broken framing gets
 * one too and the connection is closed. Requests on a connection are handled
 * one at a time, in order. Never throws, never crashes the process.
 */
export function serve(socket: net.Socket, handler: Handler, opts: ServeOptions = {}): ServerConnection {
  return new ServerConnection(socket, handler, opts);
}

/** Decodes a validated `bytes` field. */
export function decodeBytes(b64: string): Buffer {
  return Buffer.from(b64, 'base64');
}

/** Parses a validated `u64` field. */
export function parseU64(s: string): bigint {
  if (typeof s !== 'string' || !U64_RE.test(s) || BigInt(s) > U64_MAX) throw argValueError('u64', 'must be a decimal u64 string', s);
  return BigInt(s);
}

// ---- the RDMA connection's accept private data (unit -> client) ------------

/**
 * What a unit tells a client in the private data of its RDMA accept: the
 * connection's fence word, an 8-byte-aligned word in memory registered with
 * REMOTE_ATOMIC in that connection's protection domain only, which nothing but
 * this connection's fences touches. A durable write on a platform whose CPU
 * caches are persistent ends each half with an 8-byte ATOMIC FETCH_AND_ADD of 0
 * to it: on a reliable connection its response comes only after the unit
 * executed the WRITEs posted before it (as a READ's would), and rxe runs it
 * inline where it defers a READ to a softirq (docs/perf-read.md).
 *
 * Layout (16 bytes, little-endian): "NPF1", rkey u32, address u64. Anything
 * else (an older unit, rxe's zero padding) means: no fence word; use a READ.
 */
export const ACCEPT_INFO_MAGIC = 'NPF1';
export const ACCEPT_INFO_SIZE = 16;

export interface AcceptInfo {
  fenceAddr: bigint;
  fenceRkey: number;
  /**
   * The unit serves persist requests over this RDMA connection (SEND / RECV,
   * see PersistRequest) and keeps this many receives posted for them: the
   * most a client may have in flight on the connection. Absent: persist over
   * the control connection (`persist-range`).
   */
  persistSlots?: number;
}

/** Second block of the accept info (after the fence word's 16 bytes): "NPS1", slots u32. */
export const PERSIST_INFO_MAGIC = 'NPS1';
/** The most persist slots a unit may name (a client refuses a larger figure). */
export const MAX_PERSIST_SLOTS = 64;

export function encodeAcceptInfo(i: AcceptInfo): Buffer {
  if (i.fenceAddr % 8n !== 0n) throw new RangeError('the fence word must be 8-byte aligned');
  const slots = i.persistSlots;
  if (slots !== undefined && (!Number.isInteger(slots) || slots < 1 || slots > MAX_PERSIST_SLOTS)) {
    throw new RangeError(`persistSlots must be an integer in [1, ${MAX_PERSIST_SLOTS}]`);
  }
  const b = Buffer.alloc(slots === undefined ? ACCEPT_INFO_SIZE : ACCEPT_INFO_SIZE + 8);
  b.write(ACCEPT_INFO_MAGIC, 0, 'latin1');
  b.writeUInt32LE(i.fenceRkey >>> 0, 4);
  b.writeBigUInt64LE(i.fenceAddr, 8);
  if (slots !== undefined) {
    b.write(PERSIST_INFO_MAGIC, ACCEPT_INFO_SIZE, 'latin1');
    b.writeUInt32LE(slots, ACCEPT_INFO_SIZE + 4);
  }
  return b;
}

/** The accept info in `data` (a unit's accept private data), or undefined if there is none or it is malformed. */
export function decodeAcceptInfo(data: Uint8Array | null | undefined): AcceptInfo | undefined {
  if (!data || data.length < ACCEPT_INFO_SIZE) return undefined;
  const b = Buffer.from(data.buffer, data.byteOffset, data.length);
  if (b.toString('latin1', 0, 4) !== ACCEPT_INFO_MAGIC) return undefined;
  const fenceAddr = b.readBigUInt64LE(8);
  if (fenceAddr % 8n !== 0n || fenceAddr === 0n) return undefined;
  const info: AcceptInfo = { fenceRkey: b.readUInt32LE(4), fenceAddr };
  // An older unit sends the fence block alone (the rest is the CM's zero padding).
  if (b.length >= ACCEPT_INFO_SIZE + 8 && b.toString('latin1', ACCEPT_INFO_SIZE, ACCEPT_INFO_SIZE + 4) === PERSIST_INFO_MAGIC) {
    const slots = b.readUInt32LE(ACCEPT_INFO_SIZE + 4);
    if (slots >= 1 && slots <= MAX_PERSIST_SLOTS) info.persistSlots = slots;
  }
  return info;
}

// ---- persist requests over the RDMA connection (client <-> unit) -----------

/**
 * On a platform whose CPU caches are not persistent (ADR) or on a file-backed
 * unit, a durable write ends with the unit flushing the written range
 * (`pmem_persist`, or msync). Instead of the control connection's JSON
 * `persist-range`, a client may ask on the RDMA connection itself, as
 * librpma's GPSPM does: it SENDs a PersistRequest; the unit, whose RECV
 * completes only after the WRITEs posted before the SEND on that reliable
 * connection were executed, persists the range of that mapping of the
 * connection's own session and SENDs a PersistReply. Binary, little-endian:
 *
 *   request (32 bytes): "NPP1", seq u32, mapId u64, offset u64, length u64
 *   reply   (16 bytes): "NPR1", seq u32, status u16, method u8, 0 u8, 0 u32
 *
 * `seq` is the client's, echoed. `status` 0 is success, with `method` 1
 * (pmem: flushed from the CPU caches) or 2 (msync); otherwise an index in
 * PERSIST_STATUS, the error's stable code. A request that is not 32 bytes
 * with the magic is answered ERR_NPMU_PROTO_MALFORMED (seq 0 if unreadable).
 */
export const PERSIST_REQUEST_SIZE = 32;
export const PERSIST_REPLY_SIZE = 16;
export const PERSIST_REQUEST_MAGIC = 'NPP1';
export const PERSIST_REPLY_MAGIC = 'NPR1';
/** Reply statuses: 0 is success; the rest are error codes, in this order forever (append only). */
export const PERSIST_STATUS = [
  'ok',
  'ERR_NPMU_PROTO_MALFORMED',
  'ERR_NPMU_NO_SESSION',
  'ERR_NPMU_NO_MAPPING',
  'ERR_NPMU_BAD_RANGE',
  'ERR_NPMU_INTERNAL',
] as const;

export interface PersistRequest {
  seq: number;
  mapId: bigint;
  offset: bigint;
  length: bigint;
}

export interface PersistReply {
  seq: number;
  /** 'ok' or an ERR_NPMU_* code */
  status: (typeof PERSIST_STATUS)[number];
  method?: 'pmem' | 'msync';
}

export function encodePersistRequest(r: PersistRequest, into: Buffer, at = 0): void {
  into.write(PERSIST_REQUEST_MAGIC, at, 'latin1');
  into.writeUInt32LE(r.seq >>> 0, at + 4);
  into.writeBigUInt64LE(r.mapId, at + 8);
  into.writeBigUInt64LE(r.offset, at + 16);
  into.writeBigUInt64LE(r.length, at + 24);
}

/** The request in `b[at, at + n)`, or undefined if it is not one (wrong size or magic). */
export function decodePersistRequest(b: Buffer, at: number, n: number): PersistRequest | undefined {
  if (n !== PERSIST_REQUEST_SIZE || b.toString('latin1', at, at + 4) !== PERSIST_REQUEST_MAGIC) return undefined;
  return { seq: b.readUInt32LE(at + 4), mapId: b.readBigUInt64LE(at + 8), offset: b.readBigUInt64LE(at + 16), length: b.readBigUInt64LE(at + 24) };
}

export function encodePersistReply(r: PersistReply, into: Buffer, at = 0): void {
  into.fill(0, at, at + PERSIST_REPLY_SIZE);
  into.write(PERSIST_REPLY_MAGIC, at, 'latin1');
  into.writeUInt32LE(r.seq >>> 0, at + 4);
  const status = PERSIST_STATUS.indexOf(r.status);
  into.writeUInt16LE(status < 0 ? PERSIST_STATUS.indexOf('ERR_NPMU_INTERNAL') : status, at + 8);
  into.writeUInt8(r.status === 'ok' ? (r.method === 'msync' ? 2 : 1) : 0, at + 10);
}

/** The reply in `b[at, at + n)`, or undefined if it is not one (wrong size, magic, status or method). */
export function decodePersistReply(b: Buffer, at: number, n: number): PersistReply | undefined {
  if (n !== PERSIST_REPLY_SIZE || b.toString('latin1', at, at + 4) !== PERSIST_REPLY_MAGIC) return undefined;
  const status = PERSIST_STATUS[b.readUInt16LE(at + 8)];
  if (status === undefined) return undefined;
  const seq = b.readUInt32LE(at + 4);
  if (status !== 'ok') return { seq, status };
  const m = b.readUInt8(at + 10);
  if (m !== 1 && m !== 2) return undefined;
  return { seq, status, method: m === 1 ? 'pmem' : 'msync' };
}

/** The PERSIST_STATUS a unit answers for an error (ERR_NPMU_INTERNAL for any code not in the table). */
export function persistStatusOf(err: unknown): (typeof PERSIST_STATUS)[number] {
  const code = (err as { code?: unknown } | null)?.code;
  const i = PERSIST_STATUS.indexOf(code as (typeof PERSIST_STATUS)[number]);
  return i > 0 ? PERSIST_STATUS[i]! : 'ERR_NPMU_INTERNAL';
}
