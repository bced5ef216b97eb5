/**
 * The PMM metadata format, version 1: everything needed to recover a volume,
 * kept on the units themselves ([0060]-[0062]). The PMM keeps no state of its
 * own; any PMM process can rebuild a volume from the metadata areas of its two
 * units alone.
 *
 * ## Where it lives
 * Each unit device has a metadata area (a byte range owned by the PMM). The
 * area is split into two equal slots:
 *   slot size = floor(areaLength / 2) rounded down to a multiple of 4096
 *   slot 0 at area offset 0, slot 1 at area offset `slot size`.
 * A slot holds a 64-byte header followed by the payload. All integers are
 * little-endian; u64 values are unsigned.
 *
 * ## Slot header (64 bytes)
 *   off len field
 *     0   8 magic          "NPMUMETA" (ASCII)
 *     8   4 formatVersion  u32 = 1
 *    12   4 headerSize     u32 = 64
 *    16   8 generation     u64, >= 1, increases by one per update
 *    24   4 payloadLength  u32, bytes of payload after the header
 *    28   4 payloadCrc     u32, CRC-32C (seed 0) of the payload bytes
 *    32   4 flags          u32, 0 in version 1 (anything else is corrupt)
 *    36  24 reserved       zero
 *    60   4 headerCrc      u32, CRC-32C of header bytes [0, 60)
 * Frozen for every future version: magic, formatVersion, headerSize at these
 * offsets and headerCrc in the last 4 bytes of the header. A reader checks the
 * header CRC first, so a flipped bit reads as corrupt, and only then the
 * version, so a genuinely newer format reads as 'ERR_NPMU_META_TOO_NEW' and
 * is never overwritten by an older PMM.
 *
 * ## Payload
 * Volume record:
 *   16        volumeId       128-bit id
 *    1 + n    name           u8 n (1..64), then n bytes of UTF-8, no NUL
 *   16        primaryUnit    unit id of the primary half
 *   16        mirrorUnit     unit id of the mirror half (differs from primary)
 *    4        pageSize       u32, a power of two in [4096, 2^30]
 *    8        dataPages      u64, usable data pages per half (min of the two units)
 *    8        createdAtMs    u64, ms since the Unix epoch
 *    8        nextRegionId   u64, > every regionId below; ids are never reused
 *    4        regionCount    u32
 * then regionCount region records:
 *    8        regionId       u64, >= 1
 *    1 + n    name           u8 n (1..64), UTF-8, no NUL; unique in the volume
 *    8        size           u64 bytes, >= 1 (and a safe integer)
 *    8        basePointer    u64 chosen by the creator, fixed for life [0069], [0080]
 *                            (basePointer + size <= 2^64, so pointers never wrap)
 *    1 + n    owner          u8 n (0..64), UTF-8, no NUL
 *    8        createdAtMs    u64
 *    8        lastOpenAtMs   u64, 0 = never opened
 *    1        durable        u8, 0 or 1: durable writes by default
 *    4 + 16k  primary extents u32 k, then k x (page u64, pages u64)
 *    4 + 16k  mirror extents  likewise
 * The payload ends exactly after the last region record.
 * Extents are in the order the region's bytes are laid out. On each half the
 * extents of a region total exactly ceil(size / pageSize) pages, all within
 * [0, dataPages), and no page belongs to two regions.
 *
 * There is no separate allocation map: the used pages of a half are exactly the
 * union of the extents recorded in the same slot (`usedExtents`). Allocation
 * state is derived, so it cannot disagree with the region table, and a crash
 * can at worst lose an update that never counted — never leak a page for good.
 *
 * ## Update protocol (atomic per unit, ordered across the pair)
 * Generation g is written into slot g % 2, i.e. the slot NOT holding the
 * current newest generation g-1. It counts only once persisted. Write and
 * persist the primary's copy, then the mirror's (`planWrite`). A torn write
 * damages only the older slot and fails its CRC, so the newest valid
 * generation across the four copies is always a complete state
 * (`chooseNewest`); recovery copies it to a half that lags.
 */
import { randomBytes } from 'node:crypto';
import { crc32c } from '../lib/crc32c';
import { NpmuError, argRangeError, argTypeError } from '../lib/errors';
import type { Extent } from './alloc';

export type { Extent } from './alloc';

export const META_MAGIC = 'NPMUMETA';
export const META_FORMAT_VERSION = 1;
export const META_HEADER_SIZE = 64;
/** Slots start on 4096-byte boundaries. */
export const META_SLOT_ALIGN = 4096;
/** Longest volume name, region name and owner, in UTF-8 bytes. */
export const META_MAX_NAME_BYTES = 64;
const MAX_HEADER_SIZE = 4096; // bound for future versions' headers
const U64_LIMIT = 1n << 64n;

const H_MAGIC = 0;
const H_VERSION = 8;
const H_HEADER_SIZE = 12;
const H_GENERATION = 16;
const H_PAYLOAD_LENGTH = 24;
const H_PAYLOAD_CRC = 28;
const H_FLAGS = 32;
const H_RESERVED = 36;
const H_RESERVED_END = 60;
const H_HEADER_CRC = 60;

const MAGIC_BYTES = Buffer.from(META_MAGIC, 'ascii');
const ID_RE = /^[0-9a-f]{32}$/;

/** Which half of the mirrored pair. */
export type Half = 'primary' | 'mirror';

export interface RegionMeta {
  /** u64, >= 1, unique, never reused within a volume. */
  id: number;
  name: string;
  /** Bytes. */
  size: number;
  /** The client pointer value of the region's first byte, fixed for life [0069]. */
  basePointer: bigint;
  owner: string;
  createdAtMs: number;
  /** 0 = never opened. */
  lastOpenAtMs: number;
  /** Writes are durable by default. */
  durable: boolean;
  primaryExtents: Extent[];
  mirrorExtents: Extent[];
}

export interface VolumeMeta {
  /** 128-bit ids are 32 lowercase hex digits. */
  volumeId: string;
  name: string;
  primaryUnit: string;
  mirrorUnit: string;
  pageSize: number;
  /** Usable data pages per half. */
  dataPages: number;
  createdAtMs: number;
  nextRegionId: number;
  regions: RegionMeta[];
}

export interface DecodedSlot {
  generation: number;
  meta: VolumeMeta;
  /** Bytes the slot's content occupies (header + payload). */
  length: number;
}

export interface SlotCopy {
  unit: Half;
  slot: 0 | 1;
  /** The slot's bytes from its start (at least header + payload; the whole slot is fine). */
  bytes: Uint8Array;
}

export type CopyState = 'current' | 'older' | 'empty' | 'corrupt' | 'diverged';

export interface CopyStatus {
  unit: Half;
  slot: 0 | 1;
  state: CopyState;
  /** The copy's generation when it decoded. */
  generation: number | null;
  /** Why it did not decode, or why it diverged. */
  error: NpmuError | null;
}

export interface LaggingHalf {
  unit: Half;
  /** The slot to write the winning copy into (= generation % 2). */
  slot: 0 | 1;
  /** Its newest valid generation, or null if it has none. */
  generation: number | null;
  reason: 'older' | 'invalid' | 'diverged';
}

export interface Recovered {
  meta: VolumeMeta;
  generation: number;
  from: { unit: Half; slot: 0 | 1 };
  /** The winning copy's exact bytes (header + payload), to copy to lagging halves. */
  bytes: Buffer;
  /**
   * Halves that do not hold the winning copy: each must get `bytes` written to
   * `slot` and persisted. Only halves present in the input are judged.
   */
  lagging: LaggingHalf[];
  /** The state of every copy given, in input order. */
  copies: CopyStatus[];
  /** 'ERR_NPMU_META_DIVERGED' if copies of the newest generation differ (the primary's wins). */
  diverged: NpmuError | null;
}

export interface WritePlan {
  generation: number;
  slot: 0 | 1;
  /** Write and persist in this order; the update counts once both are done. */
  order: readonly Half[];
}

/** A fresh random 128-bit id in the format's text form. */
export function newId(): string {
  return randomBytes(16).toString('hex');
}

/** Size of each of the two slots of a metadata area of `areaLength` bytes. */
export function slotSize(areaLength: number): number {
  if (!Number.isSafeInteger(areaLength) || areaLength < 2 * META_SLOT_ALIGN) {
    throw argRangeError('areaLength', `a safe integer >= ${2 * META_SLOT_ALIGN}`, areaLength);
  }
  const half = Math.floor(areaLength / 2);
  return half - (half % META_SLOT_ALIGN);
}

/** Area offsets of slot 0 and slot 1. */
export function slotOffsets(areaLength: number): [number, number] {
  return [0, slotSize(areaLength)];
}

/**
 * Where the next update goes. `currentGeneration` is the newest valid
 * generation (0 for a volume that has none yet).
 */
export function planWrite(currentGeneration: number): WritePlan {
  if (!Number.isSafeInteger(currentGeneration) || currentGeneration < 0 || currentGeneration >= Number.MAX_SAFE_INTEGER) {
    throw argRangeError('currentGeneration', 'a non-negative safe integer', currentGeneration);
  }
  const generation = currentGeneration + 1;
  return { generation, slot: (generation % 2) as 0 | 1, order: ['primary', 'mirror'] };
}

/** The pages a half's regions own (the allocation state is derived, never stored). */
export function usedExtents(meta: VolumeMeta, half: Half): Extent[] {
  const out: Extent[] = [];
  for (const r of meta.regions) {
    for (const e of half === 'primary' ? r.primaryExtents : r.mirrorExtents) out.push({ page: e.page, pages: e.pages });
  }
  return out;
}

// ---------------------------------------------------------------------------
// Validation

function corrupt(message: string, props?: Record<string, unknown>): NpmuError {
  return new NpmuError('ERR_NPMU_META_CORRUPT', `metadata corrupt: ${message}`, props);
}

function utf8(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

function checkName(what: string, s: unknown, minBytes: number): void {
  if (typeof s !== 'string') throw corrupt(`${what} is not a string`);
  const b = utf8(s);
  if (b.length < minBytes || b.length > META_MAX_NAME_BYTES) {
    throw corrupt(`${what} ${JSON.stringify(s)} is ${b.length} UTF-8 bytes (allowed ${minBytes}..${META_MAX_NAME_BYTES})`);
  }
  if (s.includes('\0')) throw corrupt(`${what} ${JSON.stringify(s)} contains NUL`);
  if (b.toString('utf8') !== s) throw corrupt(`${what} ${JSON.stringify(s)} is not well-formed Unicode`);
}

function checkId(what: string, s: unknown): void {
  if (typeof s !== 'string' || !ID_RE.test(s)) throw corrupt(`${what} is not 32 lowercase hex digits`);
}

function checkUint(what: string, v: unknown, min = 0): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw corrupt(`${what} ${String(v)} is not a safe integer >= ${min}`);
  }
}

/**
 * Checks every invariant of a volume's metadata; throws 'ERR_NPMU_META_CORRUPT'
 * saying what is wrong. Run on every decode and before every encode.
 */
export function validateMeta(meta: VolumeMeta): void {
  if (meta === null || typeof meta !== 'object') throw corrupt('volume record is not an object');
  checkId('volumeId', meta.volumeId);
  checkName('volume name', meta.name, 1);
  checkId('primaryUnit', meta.primaryUnit);
  checkId('mirrorUnit', meta.mirrorUnit);
  if (meta.primaryUnit === meta.mirrorUnit) throw corrupt('primary and mirror are the same unit');
  const ps = meta.pageSize;
  if (typeof ps !== 'number' || !Number.isInteger(ps) || ps < 4096 || ps > 2 ** 30 || (ps & (ps - 1)) !== 0) {
    throw corrupt(`pageSize ${String(ps)} is not a power of two in [4096, 2^30]`);
  }
  checkUint('dataPages', meta.dataPages);
  checkUint('createdAtMs', meta.createdAtMs);
  checkUint('nextRegionId', meta.nextRegionId, 1);
  if (!Array.isArray(meta.regions)) throw corrupt('regions is not an array');
  if (meta.regions.length > 0xffffffff) throw corrupt('too many regions');

  const names = new Set<string>();
  const ids = new Set<number>();
  const owned: Record<Half, Array<{ page: number; end: number; region: string }>> = { primary: [], mirror: [] };
  for (let i = 0; i < meta.regions.length; i++) {
    const r = meta.regions[i];
    if (r === null || typeof r !== 'object') throw corrupt(`region #${i} is not an object`);
    checkName(`region #${i} name`, r.name, 1);
    const label = `region ${JSON.stringify(r.name)}`;
    if (names.has(r.name)) throw corrupt(`${label} appears twice (names must be unique)`);
    names.add(r.name);
    checkUint(`${label} id`, r.id, 1);
    if (ids.has(r.id)) throw corrupt(`${label} id ${r.id} is used by another region`);
    ids.add(r.id);
    if (r.id >= meta.nextRegionId) throw corrupt(`${label} id ${r.id} is not below nextRegionId ${meta.nextRegionId}`);
    checkUint(`${label} size`, r.size, 1);
    if (typeof r.basePointer !== 'bigint' || r.basePointer < 0n || r.basePointer >= U64_LIMIT) {
      throw corrupt(`${label} basePointer is not a u64 bigint`);
    }
    if (r.basePointer + BigInt(r.size) > U64_LIMIT) throw corrupt(`${label} basePointer + size exceeds 2^64`);
    checkName(`${label} owner`, r.owner, 0);
    checkUint(`${label} createdAtMs`, r.createdAtMs);
    checkUint(`${label} lastOpenAtMs`, r.lastOpenAtMs);
    if (typeof r.durable !== 'boolean') throw corrupt(`${label} durable is not a boolean`);
    const want = Math.ceil(r.size / ps); // exact: ps is a power of two
    for (const half of ['primary', 'mirror'] as const) {
      const list = half === 'primary' ? r.primaryExtents : r.mirrorExtents;
      if (!Array.isArray(list)) throw corrupt(`${label} ${half} extents is not an array`);
      let total = 0;
      for (const e of list) {
        if (e === null || typeof e !== 'object') throw corrupt(`${label} has a ${half} extent that is not an object`);
        checkUint(`${label} ${half} extent page`, e.page);
        checkUint(`${label} ${half} extent pages`, e.pages, 1);
        if (e.page + e.pages > meta.dataPages) {
          throw corrupt(`${label} ${half} extent [${e.page}, ${e.page + e.pages}) is outside [0, ${meta.dataPages})`);
        }
        total += e.pages;
        owned[half].push({ page: e.page, end: e.page + e.pages, region: r.name });
      }
      if (total !== want) {
        throw corrupt(`${label} has ${total} ${half} pages, needs ceil(${r.size} / ${ps}) = ${want}`);
      }
    }
  }
  for (const half of ['primary', 'mirror'] as const) {
    const list = owned[half].sort((a, b) => a.page - b.page);
    for (let k = 1; k < list.length; k++) {
      if (list[k].page < list[k - 1].end) {
        const a = list[k - 1];
        const b = list[k];
        const who = a.region === b.region ? `region ${JSON.stringify(a.region)} twice` : `regions ${JSON.stringify(a.region)} and ${JSON.stringify(b.region)}`;
        throw corrupt(`${half} page ${b.page} is owned by ${who}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Encoding

/**
 * Encodes `meta` as generation `generation` (header + payload, not padded).
 * Validates first ('ERR_NPMU_META_CORRUPT': the caller would write an
 * impossible state); 'ERR_NPMU_META_TOO_LARGE' (properties `size`, `slotSize`)
 * if it does not fit a slot of `slotBytes` bytes.
 */
export function encodeMeta(meta: VolumeMeta, generation: number, slotBytes: number): Buffer {
  if (!Number.isSafeInteger(generation) || generation < 1) {
    throw argRangeError('generation', 'a safe integer >= 1', generation);
  }
  if (!Number.isSafeInteger(slotBytes) || slotBytes < 0) throw argRangeError('slotBytes', 'a non-negative safe integer', slotBytes);
  validateMeta(meta);

  const volName = utf8(meta.name);
  const regions = meta.regions.map((r) => ({ r, name: utf8(r.name), owner: utf8(r.owner) }));
  let payloadLength = 16 + 1 + volName.length + 16 + 16 + 4 + 8 + 8 + 8 + 4;
  for (const { r, name, owner } of regions) {
    payloadLength += 8 + 1 + name.length + 8 + 8 + 1 + owner.length + 8 + 8 + 1;
    payloadLength += 4 + 16 * r.primaryExtents.length + 4 + 16 * r.mirrorExtents.length;
  }
  const size = META_HEADER_SIZE + payloadLength;
  if (size > slotBytes || payloadLength > 0xffffffff) {
    throw new NpmuError(
      'ERR_NPMU_META_TOO_LARGE',
      `metadata of ${meta.regions.length} regions needs ${size} bytes, a slot holds ${slotBytes}`,
      { size, slotSize: slotBytes },
    );
  }

  const buf = Buffer.alloc(size);
  let p = META_HEADER_SIZE;
  const id = (hex: string) => {
    buf.write(hex, p, 16, 'hex');
    p += 16;
  };
  const u8 = (v: number) => {
    buf.writeUInt8(v, p);
    p += 1;
  };
  const u32 = (v: number) => {
    buf.writeUInt32LE(v, p);
    p += 4;
  };
  const u64 = (v: number | bigint) => {
    buf.writeBigUInt64LE(BigInt(v), p);
    p += 8;
  };
  const str = (b: Buffer) => {
    u8(b.length);
    b.copy(buf, p);
    p += b.length;
  };
  const extents = (list: Extent[]) => {
    u32(list.length);
    for (const e of list) {
      u64(e.page);
      u64(e.pages);
    }
  };

  id(meta.volumeId);
  str(volName);
  id(meta.primaryUnit);
  id(meta.mirrorUnit);
  u32(meta.pageSize);
  u64(meta.dataPages);
  u64(meta.createdAtMs);
  u64(meta.nextRegionId);
  u32(regions.length);
  for (const { r, name, owner } of regions) {
    u64(r.id);
    str(name);
    u64(r.size);
    u64(r.basePointer);
    str(owner);
    u64(r.createdAtMs);
    u64(r.lastOpenAtMs);
    u8(r.durable ? 1 : 0);
    extents(r.primaryExtents);
    extents(r.mirrorExtents);
  }
  if (p !== size) throw new Error(`npmu internal: encoded ${p} bytes, expected ${size}`);

  MAGIC_BYTES.copy(buf, H_MAGIC);
  buf.writeUInt32LE(META_FORMAT_VERSION, H_VERSION);
  buf.writeUInt32LE(META_HEADER_SIZE, H_HEADER_SIZE);
  buf.writeBigUInt64LE(BigInt(generation), H_GENERATION);
  buf.writeUInt32LE(payloadLength, H_PAYLOAD_LENGTH);
  buf.writeUInt32LE(crc32c(buf.subarray(META_HEADER_SIZE)), H_PAYLOAD_CRC);
  buf.writeUInt32LE(0, H_FLAGS);
  buf.writeUInt32LE(crc32c(buf.subarray(0, H_HEADER_CRC)), H_HEADER_CRC);
  return buf;
}

// ---------------------------------------------------------------------------
// Decoding: any input bytes give a result or an NpmuError, nothing else.

/** Bounds-checked little-endian reader over untrusted bytes. */
class Reader {
  #view: DataView;
  #bytes: Uint8Array;
  pos: number;
  readonly end: number;

  constructor(bytes: Uint8Array, start: number, end: number) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = start;
    this.end = end;
  }

  get left(): number {
    return this.end - this.pos;
  }

  #need(n: number, what: string): number {
    if (n > this.end - this.pos) throw corrupt(`payload ends inside ${what}`);
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(what: string): number {
    return this.#view.getUint8(this.#need(1, what));
  }

  u32(what: string): number {
    return this.#view.getUint32(this.#need(4, what), true);
  }

  u64(what: string): bigint {
    return this.#view.getBigUint64(this.#need(8, what), true);
  }

  /** A u64 that must fit a safe integer. */
  uint(what: string): number {
    const v = this.u64(what);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${what} ${v} is too large`);
    return Number(v);
  }

  id(what: string): string {
    const at = this.#need(16, what);
    return Buffer.from(this.#bytes.buffer, this.#bytes.byteOffset + at, 16).toString('hex');
  }

  str(what: string): string {
    const n = this.u8(`${what} length`);
    const at = this.#need(n, what);
    const b = Buffer.from(this.#bytes.buffer, this.#bytes.byteOffset + at, n);
    const s = b.toString('utf8');
    if (!utf8(s).equals(b)) throw corrupt(`${what} is not valid UTF-8`);
    return s;
  }
}

function readExtents(rd: Reader, what: string): Extent[] {
  const k = rd.u32(`${what} count`);
  if (k * 16 > rd.left) throw corrupt(`${what} count ${k} exceeds the payload`);
  const out: Extent[] = [];
  for (let i = 0; i < k; i++) out.push({ page: rd.uint(`${what} page`), pages: rd.uint(`${what} pages`) });
  return out;
}

// Smallest region record: id, name (1 byte), size, basePointer, owner (0), times, durable, two counts.
const MIN_REGION_RECORD = 8 + 2 + 8 + 8 + 1 + 8 + 8 + 1 + 4 + 4;

/**
 * Decodes one slot. Throws NpmuError 'ERR_NPMU_META_EMPTY' (no magic: never
 * written), 'ERR_NPMU_META_TOO_NEW' (property `formatVersion`) or
 * 'ERR_NPMU_META_CORRUPT' (CRC, bounds or impossible values).
 */
export function decodeSlot(bytes: Uint8Array): DecodedSlot {
  if (!(bytes instanceof Uint8Array)) throw argTypeError('bytes', 'a Uint8Array', bytes);
  if (bytes.length < MAGIC_BYTES.length || !MAGIC_BYTES.equals(bytes.subarray(0, MAGIC_BYTES.length))) {
    throw new NpmuError('ERR_NPMU_META_EMPTY', 'metadata slot is empty (no NPMUMETA magic)');
  }
  if (bytes.length < 16) throw corrupt('slot ends inside the header');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerSize = view.getUint32(H_HEADER_SIZE, true);
  if (headerSize < META_HEADER_SIZE || headerSize > MAX_HEADER_SIZE || headerSize % 4 !== 0) {
    throw corrupt(`header size ${headerSize} is impossible`);
  }
  if (headerSize > bytes.length) throw corrupt(`header of ${headerSize} bytes does not fit ${bytes.length} bytes`);
  const headerCrc = view.getUint32(headerSize - 4, true);
  if (crc32c(bytes.subarray(0, headerSize - 4)) !== headerCrc) throw corrupt('header CRC mismatch');

  const formatVersion = view.getUint32(H_VERSION, true);
  if (formatVersion > META_FORMAT_VERSION) {
    throw new NpmuError(
      'ERR_NPMU_META_TOO_NEW',
      `metadata format version ${formatVersion} is newer than this PMM understands (${META_FORMAT_VERSION})`,
      { formatVersion },
    );
  }
  if (formatVersion < 1) throw corrupt(`format version ${formatVersion}`);
  if (headerSize !== META_HEADER_SIZE) throw corrupt(`header size ${headerSize} for format version 1`);
  if (view.getUint32(H_FLAGS, true) !== 0) throw corrupt('unknown header flags');
  for (let i = H_RESERVED; i < H_RESERVED_END; i++) if (bytes[i] !== 0) throw corrupt('reserved header bytes are not zero');
  const gen = view.getBigUint64(H_GENERATION, true);
  if (gen < 1n || gen > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`generation ${gen} is impossible`);
  const generation = Number(gen);
  const payloadLength = view.getUint32(H_PAYLOAD_LENGTH, true);
  if (payloadLength > bytes.length - headerSize) {
    throw corrupt(`payload of ${payloadLength} bytes does not fit ${bytes.length - headerSize} bytes`);
  }
  const end = headerSize + payloadLength;
  if (crc32c(bytes.subarray(headerSize, end)) !== view.getUint32(H_PAYLOAD_CRC, true)) {
    throw corrupt('payload CRC mismatch');
  }

  const rd = new Reader(bytes, headerSize, end);
  const volumeId = rd.id('volumeId');
  const name = rd.str('volume name');
  const primaryUnit = rd.id('primaryUnit');
  const mirrorUnit = rd.id('mirrorUnit');
  const pageSize = rd.u32('pageSize');
  const dataPages = rd.uint('dataPages');
  const createdAtMs = rd.uint('createdAtMs');
  const nextRegionId = rd.uint('nextRegionId');
  const regionCount = rd.u32('regionCount');
  if (regionCount * MIN_REGION_RECORD > rd.left) throw corrupt(`region count ${regionCount} exceeds the payload`);
  const regions: RegionMeta[] = [];
  for (let i = 0; i < regionCount; i++) {
    const what = `region #${i}`;
    const id = rd.uint(`${what} id`);
    const rname = rd.str(`${what} name`);
    const size = rd.uint(`${what} size`);
    const basePointer = rd.u64(`${what} basePointer`);
    const owner = rd.str(`${what} owner`);
    const rCreatedAtMs = rd.uint(`${what} createdAtMs`);
    const lastOpenAtMs = rd.uint(`${what} lastOpenAtMs`);
    const durableByte = rd.u8(`${what} durable`);
    if (durableByte > 1) throw corrupt(`${what} durable flag is ${durableByte}`);
    const primaryExtents = readExtents(rd, `${what} primary extents`);
    const mirrorExtents = readExtents(rd, `${what} mirror extents`);
    regions.push({
      id,
      name: rname,
      size,
      basePointer,
      owner,
      createdAtMs: rCreatedAtMs,
      lastOpenAtMs,
      durable: durableByte === 1,
      primaryExtents,
      mirrorExtents,
    });
  }
  if (rd.left !== 0) throw corrupt(`${rd.left} bytes after the last region record`);
  const meta: VolumeMeta = { volumeId, name, primaryUnit, mirrorUnit, pageSize, dataPages, createdAtMs, nextRegionId, regions };
  validateMeta(meta);
  return { generation, meta, length: end };
}

// ---------------------------------------------------------------------------
// Recovery

const UNIT_ORDER: readonly Half[] = ['primary', 'mirror'];

/**
 * Recovery: decodes every copy given (normally four: two slots on each half)
 * and picks the newest valid generation. Copies of that generation on both
 * halves must be byte-identical; if not, `diverged` is 'ERR_NPMU_META_DIVERGED'
 * and the primary's copy wins. A copy whose generation does not match its slot
 * (g % 2) is corrupt: the protocol never writes it there.
 *
 * Throws 'ERR_NPMU_META_TOO_NEW' if any copy is in a newer format (never
 * overwrite what we cannot read), 'ERR_NPMU_META_EMPTY' if every copy is empty
 * (an unformatted volume), 'ERR_NPMU_META_CORRUPT' if no copy is valid.
 */
export function chooseNewest(slots: readonly SlotCopy[]): Recovered {
  if (!Array.isArray(slots)) throw argTypeError('slots', 'an array', slots);
  const decoded: Array<DecodedSlot | null> = [];
  const copies: CopyStatus[] = [];
  for (let i = 0; i < slots.length; i++) {
    const c = slots[i];
    if (c === null || typeof c !== 'object' || !UNIT_ORDER.includes(c.unit) || (c.slot !== 0 && c.slot !== 1)) {
      throw argTypeError(`slots[${i}]`, "an object {unit: 'primary'|'mirror', slot: 0|1, bytes}", c);
    }
    if (slots.slice(0, i).some((o) => o.unit === c.unit && o.slot === c.slot)) {
      throw argTypeError(`slots[${i}]`, 'a copy not given twice', c);
    }
    try {
      const d = decodeSlot(c.bytes);
      if (d.generation % 2 !== c.slot) {
        throw corrupt(`generation ${d.generation} found in slot ${c.slot} (belongs in slot ${d.generation % 2})`);
      }
      decoded.push(d);
      copies.push({ unit: c.unit, slot: c.slot, state: 'older', generation: d.generation, error: null });
    } catch (err) {
      if (!(err instanceof NpmuError)) throw err;
      if (err.code === 'ERR_NPMU_META_TOO_NEW') {
        throw new NpmuError('ERR_NPMU_META_TOO_NEW', `${c.unit} slot ${c.slot}: ${err.message}`, {
          unit: c.unit,
          slot: c.slot,
          formatVersion: err.formatVersion,
        });
      }
      decoded.push(null);
      const state = err.code === 'ERR_NPMU_META_EMPTY' ? 'empty' : 'corrupt';
      copies.push({ unit: c.unit, slot: c.slot, state, generation: null, error: err });
    }
  }

  let best = -1;
  for (let i = 0; i < slots.length; i++) {
    const d = decoded[i];
    if (d === null) continue;
    const b = best >= 0 ? decoded[best] : null;
    if (
      b === null ||
      d.generation > b.generation ||
      (d.generation === b.generation && UNIT_ORDER.indexOf(slots[i].unit) < UNIT_ORDER.indexOf(slots[best].unit))
    ) {
      best = i;
    }
  }
  if (best < 0) {
    if (copies.length > 0 && copies.every((c) => c.state === 'empty')) {
      throw new NpmuError('ERR_NPMU_META_EMPTY', 'no metadata on any copy (volume not formatted)', { copies });
    }
    const why = copies.map((c) => `${c.unit} slot ${c.slot}: ${c.error?.message ?? 'missing'}`).join('; ');
    throw new NpmuError('ERR_NPMU_META_CORRUPT', `no valid metadata copy (${why || 'none given'})`, { copies });
  }

  const win = decoded[best]!;
  const winBytes = Buffer.from(slots[best].bytes.subarray(0, win.length));
  let diverged: NpmuError | null = null;
  for (let i = 0; i < slots.length; i++) {
    const d = decoded[i];
    if (d === null || d.generation !== win.generation) continue;
    if (winBytes.equals(slots[i].bytes.subarray(0, d.length))) {
      copies[i].state = 'current';
    } else {
      copies[i].state = 'diverged';
      copies[i].error = diverged = new NpmuError(
        'ERR_NPMU_META_DIVERGED',
        `metadata generation ${win.generation} differs between ${slots[best].unit} and ${slots[i].unit}; using ${slots[best].unit}'s`,
        { generation: win.generation, units: [slots[best].unit, slots[i].unit] },
      );
    }
  }

  const slot = (win.generation % 2) as 0 | 1;
  const lagging: LaggingHalf[] = [];
  for (const unit of UNIT_ORDER) {
    const mine = copies.filter((c) => c.unit === unit);
    if (mine.length === 0 || mine.some((c) => c.state === 'current')) continue;
    const gens = mine.map((c) => c.generation).filter((g): g is number => g !== null);
    const generation = gens.length > 0 ? Math.max(...gens) : null;
    const reason = mine.some((c) => c.state === 'diverged') ? 'diverged' : generation === null ? 'invalid' : 'older';
    lagging.push({ unit, slot, generation, reason });
  }

  return {
    meta: win.meta,
    generation: win.generation,
    from: { unit: slots[best].unit, slot: slots[best].slot },
    bytes: winBytes,
    lagging,
    copies,
    diverged,
  };
}
