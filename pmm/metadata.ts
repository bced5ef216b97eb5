/**
 * The PMM metadata format, version 2: everything needed to recover a volume,
 * kept on the units themselves ([0060]-[0062]). The PMM keeps no state of its
 * own; any PMM process can rebuild a volume from the metadata areas of its two
 * units alone. Version 2 is a paged region table under a small root that flips
 * between two slots: an update writes O(1) table pages and one root, whatever
 * the number of regions. (Version 1 rewrote the whole table on every update;
 * a v1 volume reads as 'ERR_NPMU_META_TOO_OLD' and must be recreated.)
 *
 * All integers are little-endian; u64 values are unsigned. Ids (volume, unit,
 * PMM writer) are 16 bytes, shown as 32 lowercase hex digits. Strings are a u8
 * byte count n then n bytes of UTF-8 (well-formed, no NUL). CRCs are CRC-32C
 * (lib/crc32c.ts, seed 0).
 *
 * ## Where it lives
 * Each unit device has a metadata area (a byte range owned by the PMM). Offsets
 * are relative to the area's start:
 *
 *   0      root slot 0   (ROOT_SLOT_SIZE  = 8192 bytes)
 *   8192   root slot 1
 *   16384  table page 0, then page 1, ... (TABLE_PAGE_SIZE = 8192 bytes each)
 *          pageCount = floor((areaLength - 16384) / 8192)
 *
 * Both halves of a volume hold the same table pages at the same indices. Their
 * roots of the same generation are identical except for the sync state.
 *
 * ## Root (in root slot generation % 2; header + body <= 8192 bytes)
 * Header, 64 bytes (magic, formatVersion, headerSize and the header CRC in the
 * header's last 4 bytes are frozen for every future version, as in version 1):
 *   off len field
 *     0   8 magic          "NPMUROOT" (ASCII); "NPMUMETA" is a version 1 slot
 *     8   4 formatVersion  u32 = 2
 *    12   4 headerSize     u32 = 64
 *    16   8 generation     u64, >= 1, +1 per update
 *    24   4 bodyLength     u32, bytes of body after the header
 *    28   4 bodyCrc        u32, CRC-32C of the body
 *    32   4 flags          u32 = 0 (anything else is corrupt)
 *    36  24 reserved       zero
 *    60   4 headerCrc      u32, CRC-32C of header bytes [0, 60)
 * A reader checks the header CRC first, so a flipped bit reads as corrupt, and
 * only then the version, so a genuinely newer format reads as
 * 'ERR_NPMU_META_TOO_NEW' and is never overwritten by this PMM. A slot without
 * the magic is empty ('ERR_NPMU_META_EMPTY'), unless its header CRC matches
 * with the magic restored (a damaged root: corrupt).
 * Body (headerCrc + bodyCrc together cover every byte of the root):
 *     8        epoch          u64, fencing epoch of the PMM that wrote it
 *    16        writer         id of the PMM that wrote it
 *     1        peerStale      u8, 0 or 1: this half recorded that its peer missed updates
 *     8        staleSince     u64, the generation at which it recorded that
 *                             (0 iff peerStale = 0; otherwise 1..generation)
 *    16        volumeId
 *     1 + n    name           n in 1..64
 *    16        primaryUnit    unit id of the primary half
 *    16        mirrorUnit     unit id of the mirror half (differs from primary)
 *     4        pageSize       u32, a power of two in [4096, 2^30]
 *     8        dataPages      u64, usable data pages per half
 *     8        createdAtMs    u64, ms since the Unix epoch
 *     8        nextRegionId   u64, > every region id; ids are never reused
 *     4        regionCount    u32, records in all listed pages together
 *     4        pageRefCount   u32, table pages in use (<= regionCount; 0 iff no regions)
 *    12 x k    page refs, strictly ascending by index, each:
 *                index u32 (< pageCount), length u32 (bytes used, 36..8192),
 *                crc u32 (CRC-32C of the page's bytes [0, length))
 * The body ends exactly after the last page ref. With a 64-byte volume name
 * the fixed part is 246 bytes, so a root lists up to 662 pages.
 *
 * ## Table page (at TABLE_OFFSET + index * 8192; `length` bytes used)
 *   off len field
 *     0   8 magic          "NPMUPAGE"
 *     8   4 formatVersion  u32 = 2
 *    12   4 headerSize     u32 = 32
 *    16   8 generation     u64, the root generation these bytes were written for
 *                          (<= the generation of any root that references them)
 *    24   4 index          u32, this page's own index (a page copied elsewhere is corrupt)
 *    28   4 recordCount    u32, >= 1
 *    32     records        recordCount region records, strictly ascending by id
 *  len-4  4 crc            u32, CRC-32C of bytes [0, length - 4)
 * A region record never spans pages; a page holds at most 8156 record bytes:
 *     8        regionId       u64, >= 1
 *     1 + n    name           n in 1..64; unique in the volume
 *     8        size           u64 bytes, >= 1 (and a safe integer)
 *     8        basePointer    u64 chosen by the creator, fixed for life [0069], [0080]
 *                             (basePointer + size <= 2^64, so pointers never wrap)
 *     1 + n    owner          n in 0..64
 *     8        createdAtMs    u64
 *     8        lastOpenAtMs   u64, 0 = never opened
 *     1        durable        u8, 0 or 1: durable writes by default
 *     4 + 16k  primary extents u32 k, then k x (page u64, pages u64)
 *     4 + 16k  mirror extents  likewise
 * Extents are in the order the region's bytes are laid out. On each half the
 * extents of a region total exactly ceil(size / pageSize) pages, all within
 * [0, dataPages), and no page belongs to two regions. Creation order is id
 * order. There is no allocation map: a half's used pages are exactly the union
 * of the extents in the table (`usedExtents`), so allocation cannot disagree
 * with the region table and a crash never leaks a page for good.
 *
 * ## Update protocol (copy-on-write, atomic per unit)
 * Let g be the current root's generation. An update (create, delete, change of
 * some regions, or only a sync-state change) is planned from the in-memory
 * image (`MetaImage.plan`):
 *   1. every table page whose contents change is written, with the new
 *      contents, to a page index NOT referenced by root g (lowest free indices
 *      first); a page left empty is simply dropped from the page list;
 *   2. after those are persisted, root g+1 (listing the new page set) is
 *      written to root slot (g+1) % 2, i.e. over root g-1, never over root g.
 * The update counts once the root is persisted. Both halves get the same page
 * writes; each half's root carries its own sync state. A plan is refused
 * ('ERR_NPMU_META_TOO_LARGE', 'ERR_NPMU_META_CORRUPT') before anything is
 * written. A create or delete writes one page (two if a record has to move)
 * plus one root of 246 + 12 x pages bytes; a region record goes to the page in
 * use with the least room that still fits it (lowest index on ties), else to a
 * fresh page. An update that grows the page set must leave one page index
 * free, so a delete (which needs one free index to rewrite its page) can
 * always be planned.
 *
 * ## Crash argument
 * Until root g+1 is persisted, root g is intact (its slot is never written)
 * and every page it references is intact (step 1 writes only unreferenced
 * indices), so recovery finds g. A torn root g+1 fails its CRC and g wins. A
 * torn page can only be an unreferenced index, which g does not read; root
 * g+1 is written only after its pages are persisted, so a valid g+1 has valid
 * pages. Stale bytes in a reused index are never taken: each page is checked
 * against the length and CRC its root lists (and its own index and CRC).
 * Recovery per half is `newestRoot` (the valid root with the higher
 * generation; a generation found in the wrong slot is corrupt), then
 * `MetaImage.load` with the pages it references.
 */
import { randomBytes } from 'node:crypto';
import { crc32c } from '../lib/crc32c';
import { NpmuError, argRangeError, argTypeError, argValueError } from '../lib/errors';
import type { Extent } from './alloc';

export type { Extent } from './alloc';

export const META_FORMAT_VERSION = 2;
export const ROOT_SLOT_SIZE = 8192;
export const TABLE_PAGE_SIZE = 8192;
export const TABLE_OFFSET = 2 * ROOT_SLOT_SIZE;
/** Longest volume name, region name and owner, in UTF-8 bytes. */
export const META_MAX_NAME_BYTES = 64;
export const ROOT_MAGIC = 'NPMUROOT';
export const PAGE_MAGIC = 'NPMUPAGE';
/** The magic of a version 1 slot (read only to say it is too old). */
export const V1_MAGIC = 'NPMUMETA';
export const ROOT_HEADER_SIZE = 64;
export const PAGE_HEADER_SIZE = 32;
/** Record bytes one table page holds (page size - header - trailing CRC). */
export const PAGE_CAPACITY = TABLE_PAGE_SIZE - PAGE_HEADER_SIZE - 4;
/** Bytes of one page ref in the root. */
export const PAGE_REF_SIZE = 12;

const MAX_HEADER_SIZE = 4096; // bound for future versions' headers
const U64_LIMIT = 1n << 64n;
const U32_MAX = 0xffffffff;
const MIN_PAGE_LENGTH = PAGE_HEADER_SIZE + 4;

// Root header offsets (frozen layout shared with version 1).
const H_MAGIC = 0;
const H_VERSION = 8;
const H_HEADER_SIZE = 12;
const H_GENERATION = 16;
const H_BODY_LENGTH = 24;
const H_BODY_CRC = 28;
const H_FLAGS = 32;
const H_RESERVED = 36;
const H_RESERVED_END = 60;
const H_HEADER_CRC = 60;

// Page header offsets.
const P_VERSION = 8;
const P_HEADER_SIZE = 12;
const P_GENERATION = 16;
const P_INDEX = 24;
const P_COUNT = 28;

const ROOT_MAGIC_BYTES = Buffer.from(ROOT_MAGIC, 'ascii');
const PAGE_MAGIC_BYTES = Buffer.from(PAGE_MAGIC, 'ascii');
const V1_MAGIC_BYTES = Buffer.from(V1_MAGIC, 'ascii');
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

/** What a half records about its peer. */
export interface SyncState {
  peerStale: boolean;
  /** The generation at which this half recorded that its peer missed updates; 0 when in sync. */
  staleSince: number;
}

/** A table page in use, as its root lists it. */
export interface PageRef {
  index: number;
  /** Bytes used, from the page's start. */
  length: number;
  /** CRC-32C of bytes [0, length) of the page. */
  crc: number;
}

export interface RootRecord {
  generation: number;
  epoch: number;
  writer: string;
  sync: SyncState;
  volume: Omit<VolumeMeta, 'regions'>;
  regionCount: number;
  /** Strictly ascending by index. */
  pages: PageRef[];
}

/** A table page's contents. */
export interface DecodedPage {
  index: number;
  generation: number;
  /** Strictly ascending by id. */
  records: RegionMeta[];
  /** Bytes the page occupies (header + records + CRC). */
  length: number;
}

export type RootSlotState = 'valid' | 'empty' | 'corrupt';

/** A fresh random 128-bit id in the format's text form. */
export function newId(): string {
  return randomBytes(16).toString('hex');
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
// Geometry

/** Area offset of a root slot. */
export function rootSlotOffset(slot: 0 | 1): number {
  if (slot !== 0 && slot !== 1) throw argRangeError('slot', '0 or 1', slot);
  return slot * ROOT_SLOT_SIZE;
}

/** Area offset of table page `index`. */
export function tablePageOffset(index: number): number {
  if (!Number.isSafeInteger(index) || index < 0 || index > U32_MAX) {
    throw argRangeError('index', 'an integer in [0, 2^32)', index);
  }
  return TABLE_OFFSET + index * TABLE_PAGE_SIZE;
}

/** Table pages in a metadata area of `areaLength` bytes (at least the two root slots). */
export function tablePageCount(areaLength: number): number {
  if (!Number.isSafeInteger(areaLength) || areaLength < TABLE_OFFSET) {
    throw argRangeError('areaLength', `a safe integer >= ${TABLE_OFFSET}`, areaLength);
  }
  return Math.min(Math.floor((areaLength - TABLE_OFFSET) / TABLE_PAGE_SIZE), U32_MAX + 1);
}

// ---------------------------------------------------------------------------
// Validation

function corrupt(message: string, props?: Record<string, unknown>): NpmuError {
  return new NpmuError('ERR_NPMU_META_CORRUPT', `metadata corrupt: ${message}`, props);
}

function tooLarge(message: string, needed: number, available: number, what: string): NpmuError {
  return new NpmuError('ERR_NPMU_META_TOO_LARGE', `metadata does not fit: ${message}`, { needed, available, what });
}

function utf8(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

/** `what` may be a function, so that a label is built only on failure. */
function checkName(what: string | (() => string), s: unknown, minBytes: number): void {
  const w = () => (typeof what === 'string' ? what : what());
  if (typeof s !== 'string') throw corrupt(`${w()} is not a string`);
  const b = utf8(s);
  if (b.length < minBytes || b.length > META_MAX_NAME_BYTES) {
    throw corrupt(`${w()} ${JSON.stringify(s)} is ${b.length} UTF-8 bytes (allowed ${minBytes}..${META_MAX_NAME_BYTES})`);
  }
  if (s.includes('\0')) throw corrupt(`${w()} ${JSON.stringify(s)} contains NUL`);
  if (b.toString('utf8') !== s) throw corrupt(`${w()} ${JSON.stringify(s)} is not well-formed Unicode`);
}

function checkId(what: string, s: unknown): void {
  if (typeof s !== 'string' || !ID_RE.test(s)) throw corrupt(`${what} is not 32 lowercase hex digits`);
}

function checkUint(what: string, v: unknown, min = 0): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw corrupt(`${what} ${String(v)} is not a safe integer >= ${min}`);
  }
}

function regionLabel(r: RegionMeta): string {
  return `region ${JSON.stringify(r.name)}`;
}

/** The checks of a volume record (everything of a VolumeMeta but its regions). */
function validateVolume(meta: Omit<VolumeMeta, 'regions'>): void {
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
}

/** The checks of one region record that do not depend on the volume. */
function validateRegionFields(r: RegionMeta, what: string): void {
  if (r === null || typeof r !== 'object') throw corrupt(`${what} is not an object`);
  checkName(`${what} name`, r.name, 1);
  const isUint = (v: unknown, min: number) => typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
  // Labels are built only on failure: this runs for every record of every load.
  const fail = (field: string, v: unknown, min = 0) => {
    throw corrupt(`${regionLabel(r)} ${field} ${String(v)} is not a safe integer >= ${min}`);
  };
  if (!isUint(r.id, 1)) fail('id', r.id, 1);
  if (!isUint(r.size, 1)) fail('size', r.size, 1);
  if (typeof r.basePointer !== 'bigint' || r.basePointer < 0n || r.basePointer >= U64_LIMIT) {
    throw corrupt(`${regionLabel(r)} basePointer is not a u64 bigint`);
  }
  if (r.basePointer + BigInt(r.size) > U64_LIMIT) throw corrupt(`${regionLabel(r)} basePointer + size exceeds 2^64`);
  checkName(() => `${regionLabel(r)} owner`, r.owner, 0);
  if (!isUint(r.createdAtMs, 0)) fail('createdAtMs', r.createdAtMs);
  if (!isUint(r.lastOpenAtMs, 0)) fail('lastOpenAtMs', r.lastOpenAtMs);
  if (typeof r.durable !== 'boolean') throw corrupt(`${regionLabel(r)} durable is not a boolean`);
  for (const half of ['primary', 'mirror'] as const) {
    const list = half === 'primary' ? r.primaryExtents : r.mirrorExtents;
    if (!Array.isArray(list)) throw corrupt(`${regionLabel(r)} ${half} extents is not an array`);
    if (list.length > U32_MAX) throw corrupt(`${regionLabel(r)} has too many ${half} extents`);
    for (const e of list) {
      if (e === null || typeof e !== 'object') throw corrupt(`${regionLabel(r)} has a ${half} extent that is not an object`);
      if (!isUint(e.page, 0)) fail(`${half} extent page`, e.page);
      if (!isUint(e.pages, 1)) fail(`${half} extent pages`, e.pages, 1);
    }
  }
}

/** The checks of one region against its volume (extents in range, page totals). */
function validateRegionInVolume(r: RegionMeta, meta: Omit<VolumeMeta, 'regions'>): void {
  const want = Math.ceil(r.size / meta.pageSize); // exact: pageSize is a power of two
  for (const half of ['primary', 'mirror'] as const) {
    let total = 0;
    for (const e of half === 'primary' ? r.primaryExtents : r.mirrorExtents) {
      if (e.page + e.pages > meta.dataPages) {
        throw corrupt(`${regionLabel(r)} ${half} extent [${e.page}, ${e.page + e.pages}) is outside [0, ${meta.dataPages})`);
      }
      total += e.pages;
    }
    if (total !== want) throw corrupt(`${regionLabel(r)} has ${total} ${half} pages, needs ceil(${r.size} / ${meta.pageSize}) = ${want}`);
  }
}

/**
 * Checks every invariant of a volume's metadata; throws 'ERR_NPMU_META_CORRUPT'
 * saying what is wrong. O(n log n); run on every load.
 */
export function validateMeta(meta: VolumeMeta): void {
  validateVolume(meta);
  if (!Array.isArray(meta.regions)) throw corrupt('regions is not an array');
  if (meta.regions.length > U32_MAX) throw corrupt('too many regions');

  const names = new Set<string>();
  const ids = new Set<number>();
  const owned: Record<Half, Array<{ page: number; end: number; region: string }>> = { primary: [], mirror: [] };
  for (let i = 0; i < meta.regions.length; i++) {
    const r = meta.regions[i];
    validateRegionFields(r, `region #${i}`);
    if (names.has(r.name)) throw corrupt(`${regionLabel(r)} appears twice (names must be unique)`);
    names.add(r.name);
    if (ids.has(r.id)) throw corrupt(`${regionLabel(r)} id ${r.id} is used by another region`);
    ids.add(r.id);
    if (r.id >= meta.nextRegionId) throw corrupt(`${regionLabel(r)} id ${r.id} is not below nextRegionId ${meta.nextRegionId}`);
    validateRegionInVolume(r, meta);
    for (const e of r.primaryExtents) owned.primary.push({ page: e.page, end: e.page + e.pages, region: r.name });
    for (const e of r.mirrorExtents) owned.mirror.push({ page: e.page, end: e.page + e.pages, region: r.name });
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

function validateSync(sync: SyncState, generation: number): void {
  if (sync === null || typeof sync !== 'object') throw corrupt('sync state is not an object');
  if (typeof sync.peerStale !== 'boolean') throw corrupt('sync.peerStale is not a boolean');
  checkUint('sync.staleSince', sync.staleSince);
  if (!sync.peerStale && sync.staleSince !== 0) throw corrupt(`sync.staleSince ${sync.staleSince} while the peer is in sync (must be 0)`);
  if (sync.peerStale && (sync.staleSince < 1 || sync.staleSince > generation)) {
    throw corrupt(`sync.staleSince ${sync.staleSince} is not in [1, generation ${generation}]`);
  }
}

function validateRoot(r: RootRecord): void {
  if (r === null || typeof r !== 'object') throw corrupt('root is not an object');
  checkUint('generation', r.generation, 1);
  checkUint('epoch', r.epoch);
  checkId('writer', r.writer);
  validateSync(r.sync, r.generation);
  validateVolume(r.volume);
  checkUint('regionCount', r.regionCount);
  if (r.regionCount > U32_MAX) throw corrupt(`regionCount ${r.regionCount} exceeds a u32`);
  if (!Array.isArray(r.pages)) throw corrupt('pages is not an array');
  if (r.pages.length > r.regionCount) throw corrupt(`${r.pages.length} pages for ${r.regionCount} regions (a page in use holds a region)`);
  if (r.regionCount > 0 && r.pages.length === 0) throw corrupt(`${r.regionCount} regions but no table page`);
  let prev = -1;
  for (const p of r.pages) {
    if (p === null || typeof p !== 'object') throw corrupt('a page ref is not an object');
    checkUint('page index', p.index);
    if (p.index > U32_MAX) throw corrupt(`page index ${p.index} exceeds a u32`);
    if (p.index <= prev) throw corrupt(`page refs are not strictly ascending (${p.index} after ${prev})`);
    prev = p.index;
    checkUint(`page ${p.index} length`, p.length);
    if (p.length < MIN_PAGE_LENGTH || p.length > TABLE_PAGE_SIZE) {
      throw corrupt(`page ${p.index} length ${p.length} is not in [${MIN_PAGE_LENGTH}, ${TABLE_PAGE_SIZE}]`);
    }
    checkUint(`page ${p.index} crc`, p.crc);
    if (p.crc > U32_MAX) throw corrupt(`page ${p.index} crc ${p.crc} exceeds a u32`);
  }
}

// ---------------------------------------------------------------------------
// Byte-level reading and writing

/** Bounds-checked little-endian reader over untrusted bytes. */
class Reader {
  #view: DataView;
  #bytes: Uint8Array;
  #where: string;
  pos: number;
  readonly end: number;

  constructor(bytes: Uint8Array, start: number, end: number, where: string) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#where = where;
    this.pos = start;
    this.end = end;
  }

  get left(): number {
    return this.end - this.pos;
  }

  #need(n: number, what: string): number {
    if (n > this.end - this.pos) throw corrupt(`${this.#where} ends inside ${what}`);
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

class Writer {
  readonly buf: Buffer;
  pos: number;

  constructor(buf: Buffer, pos: number) {
    this.buf = buf;
    this.pos = pos;
  }

  u8(v: number): void {
    this.buf.writeUInt8(v, this.pos);
    this.pos += 1;
  }

  u32(v: number): void {
    this.buf.writeUInt32LE(v, this.pos);
    this.pos += 4;
  }

  u64(v: number | bigint): void {
    this.buf.writeBigUInt64LE(BigInt(v), this.pos);
    this.pos += 8;
  }

  id(hex: string): void {
    this.buf.write(hex, this.pos, 16, 'hex');
    this.pos += 16;
  }

  str(b: Buffer): void {
    this.u8(b.length);
    b.copy(this.buf, this.pos);
    this.pos += b.length;
  }

  bytes(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

// ---------------------------------------------------------------------------
// Region records

/** Encoded size of a region record in a table page. */
export function regionRecordSize(r: RegionMeta): number {
  return (
    8 + 1 + Buffer.byteLength(r.name, 'utf8') + 8 + 8 + 1 + Buffer.byteLength(r.owner, 'utf8') + 8 + 8 + 1 +
    4 + 16 * r.primaryExtents.length + 4 + 16 * r.mirrorExtents.length
  );
}

/** Encodes one region record (fields already validated). */
function encodeRegion(r: RegionMeta): Buffer {
  const w = new Writer(Buffer.alloc(regionRecordSize(r)), 0);
  w.u64(r.id);
  w.str(utf8(r.name));
  w.u64(r.size);
  w.u64(r.basePointer);
  w.str(utf8(r.owner));
  w.u64(r.createdAtMs);
  w.u64(r.lastOpenAtMs);
  w.u8(r.durable ? 1 : 0);
  for (const list of [r.primaryExtents, r.mirrorExtents]) {
    w.u32(list.length);
    for (const e of list) {
      w.u64(e.page);
      w.u64(e.pages);
    }
  }
  if (w.pos !== w.buf.length) throw new Error(`npmu internal: region record of ${w.pos} bytes, expected ${w.buf.length}`);
  return w.buf;
}

function readExtents(rd: Reader, what: string): Extent[] {
  const k = rd.u32(`${what} count`);
  if (k * 16 > rd.left) throw corrupt(`${what} count ${k} exceeds the page`);
  const out: Extent[] = [];
  for (let i = 0; i < k; i++) out.push({ page: rd.uint(`${what} page`), pages: rd.uint(`${what} pages`) });
  return out;
}

function readRegion(rd: Reader, what: string): RegionMeta {
  const id = rd.uint(`${what} id`);
  const name = rd.str(`${what} name`);
  const size = rd.uint(`${what} size`);
  const basePointer = rd.u64(`${what} basePointer`);
  const owner = rd.str(`${what} owner`);
  const createdAtMs = rd.uint(`${what} createdAtMs`);
  const lastOpenAtMs = rd.uint(`${what} lastOpenAtMs`);
  const durableByte = rd.u8(`${what} durable`);
  if (durableByte > 1) throw corrupt(`${what} durable flag is ${durableByte}`);
  const primaryExtents = readExtents(rd, `${what} primary extents`);
  const mirrorExtents = readExtents(rd, `${what} mirror extents`);
  return { id, name, size, basePointer, owner, createdAtMs, lastOpenAtMs, durable: durableByte === 1, primaryExtents, mirrorExtents };
}

// Smallest region record: id, name (1 byte), size, basePointer, owner (0), times, durable, two counts.
const MIN_REGION_RECORD = 8 + 2 + 8 + 8 + 1 + 8 + 8 + 1 + 4 + 4;

// ---------------------------------------------------------------------------
// Table pages

/** Builds a page from encoded records (ascending by id, total <= PAGE_CAPACITY). */
function buildPage(index: number, generation: number, records: readonly Buffer[]): Buffer {
  let used = 0;
  for (const b of records) used += b.length;
  const length = PAGE_HEADER_SIZE + used + 4;
  const buf = Buffer.alloc(length);
  PAGE_MAGIC_BYTES.copy(buf, 0);
  buf.writeUInt32LE(META_FORMAT_VERSION, P_VERSION);
  buf.writeUInt32LE(PAGE_HEADER_SIZE, P_HEADER_SIZE);
  buf.writeBigUInt64LE(BigInt(generation), P_GENERATION);
  buf.writeUInt32LE(index, P_INDEX);
  buf.writeUInt32LE(records.length, P_COUNT);
  let p = PAGE_HEADER_SIZE;
  for (const b of records) {
    b.copy(buf, p);
    p += b.length;
  }
  buf.writeUInt32LE(crc32c(buf.subarray(0, p)), p);
  return buf;
}

/**
 * Encodes a table page at `index` holding `records` (strictly ascending by id,
 * at least one), written for root generation `generation`. Validates the
 * records' fields ('ERR_NPMU_META_CORRUPT'); 'ERR_NPMU_META_TOO_LARGE' if they
 * exceed a page.
 */
export function encodePage(index: number, generation: number, records: readonly RegionMeta[]): Buffer {
  if (!Number.isSafeInteger(index) || index < 0 || index > U32_MAX) throw argRangeError('index', 'an integer in [0, 2^32)', index);
  if (!Number.isSafeInteger(generation) || generation < 1) throw argRangeError('generation', 'a safe integer >= 1', generation);
  if (!Array.isArray(records) || records.length === 0) throw argTypeError('records', 'a non-empty array of regions', records);
  let prev = 0;
  const encoded: Buffer[] = [];
  let used = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i];
    validateRegionFields(r, `record #${i}`);
    if (r.id <= prev) throw corrupt(`page records are not strictly ascending by id (${r.id} after ${prev})`);
    prev = r.id;
    const b = encodeRegion(r);
    used += b.length;
    encoded.push(b);
  }
  if (used > PAGE_CAPACITY) {
    throw tooLarge(`${records.length} records need ${used} bytes, a table page holds ${PAGE_CAPACITY}`, used, PAGE_CAPACITY, 'page');
  }
  return buildPage(index, generation, encoded);
}

/**
 * Decodes a table page (its bytes from the page's start; trailing bytes are
 * ignored). With `index`, the page must say it is that page. Throws only
 * NpmuError 'ERR_NPMU_META_CORRUPT' (a page is read only when a root
 * references it, so a missing magic is corruption, not emptiness).
 */
export function decodePage(bytes: Uint8Array, index?: number): DecodedPage {
  if (!(bytes instanceof Uint8Array)) throw argTypeError('bytes', 'a Uint8Array', bytes);
  const n = Math.min(bytes.length, TABLE_PAGE_SIZE);
  if (n < MIN_PAGE_LENGTH) throw corrupt(`table page of ${bytes.length} bytes is shorter than a header`);
  if (!PAGE_MAGIC_BYTES.equals(bytes.subarray(0, 8))) throw corrupt('table page has no NPMUPAGE magic');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(P_VERSION, true);
  if (version !== META_FORMAT_VERSION) throw corrupt(`table page format version ${version}`);
  if (view.getUint32(P_HEADER_SIZE, true) !== PAGE_HEADER_SIZE) throw corrupt('table page header size');
  const gen = view.getBigUint64(P_GENERATION, true);
  if (gen < 1n || gen > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`table page generation ${gen} is impossible`);
  const pageIndex = view.getUint32(P_INDEX, true);
  if (index !== undefined && pageIndex !== index) throw corrupt(`table page ${index} says it is page ${pageIndex}`);
  const count = view.getUint32(P_COUNT, true);
  if (count < 1) throw corrupt(`table page ${pageIndex} holds no records`);
  const rd = new Reader(bytes, PAGE_HEADER_SIZE, n - 4, `table page ${pageIndex}`);
  if (count * MIN_REGION_RECORD > rd.left) throw corrupt(`table page ${pageIndex} record count ${count} exceeds the page`);
  const records: RegionMeta[] = [];
  let prev = 0;
  for (let i = 0; i < count; i++) {
    const what = `page ${pageIndex} record #${i}`;
    const r = readRegion(rd, what);
    validateRegionFields(r, what);
    if (r.id <= prev) throw corrupt(`${what} id ${r.id} is not above the previous record's ${prev}`);
    prev = r.id;
    records.push(r);
  }
  const end = rd.pos;
  if (crc32c(bytes.subarray(0, end)) !== view.getUint32(end, true)) throw corrupt(`table page ${pageIndex} CRC mismatch`);
  return { index: pageIndex, generation: Number(gen), records, length: end + 4 };
}

// ---------------------------------------------------------------------------
// Roots

function rootBodyLength(r: RootRecord): number {
  return 8 + 16 + 1 + 8 + 16 + 1 + Buffer.byteLength(r.volume.name, 'utf8') + 16 + 16 + 4 + 8 + 8 + 8 + 4 + 4 + PAGE_REF_SIZE * r.pages.length;
}

/**
 * Encodes a root. Validates first ('ERR_NPMU_META_CORRUPT': the caller would
 * write an impossible state); 'ERR_NPMU_META_TOO_LARGE' (properties `needed`,
 * `available`) if it exceeds ROOT_SLOT_SIZE.
 */
export function encodeRoot(r: RootRecord): Buffer {
  validateRoot(r);
  const size = ROOT_HEADER_SIZE + rootBodyLength(r);
  if (size > ROOT_SLOT_SIZE) {
    throw tooLarge(`a root listing ${r.pages.length} table pages needs ${size} bytes, a root slot holds ${ROOT_SLOT_SIZE}`, size, ROOT_SLOT_SIZE, 'root');
  }
  const buf = Buffer.alloc(size);
  const w = new Writer(buf, ROOT_HEADER_SIZE);
  w.u64(r.epoch);
  w.id(r.writer);
  w.u8(r.sync.peerStale ? 1 : 0);
  w.u64(r.sync.staleSince);
  const v = r.volume;
  w.id(v.volumeId);
  w.str(utf8(v.name));
  w.id(v.primaryUnit);
  w.id(v.mirrorUnit);
  w.u32(v.pageSize);
  w.u64(v.dataPages);
  w.u64(v.createdAtMs);
  w.u64(v.nextRegionId);
  w.u32(r.regionCount);
  w.u32(r.pages.length);
  for (const p of r.pages) {
    w.u32(p.index);
    w.u32(p.length);
    w.u32(p.crc);
  }
  if (w.pos !== size) throw new Error(`npmu internal: encoded a root of ${w.pos} bytes, expected ${size}`);
  ROOT_MAGIC_BYTES.copy(buf, H_MAGIC);
  buf.writeUInt32LE(META_FORMAT_VERSION, H_VERSION);
  buf.writeUInt32LE(ROOT_HEADER_SIZE, H_HEADER_SIZE);
  buf.writeBigUInt64LE(BigInt(r.generation), H_GENERATION);
  buf.writeUInt32LE(size - ROOT_HEADER_SIZE, H_BODY_LENGTH);
  buf.writeUInt32LE(crc32c(buf.subarray(ROOT_HEADER_SIZE)), H_BODY_CRC);
  buf.writeUInt32LE(0, H_FLAGS);
  buf.writeUInt32LE(crc32c(buf.subarray(0, H_HEADER_CRC)), H_HEADER_CRC);
  return buf;
}

/** True if `bytes` hold a root header whose CRC matches once the magic is restored. */
function damagedRootMagic(bytes: Uint8Array): boolean {
  if (bytes.length < 16) return false;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let hs = view.getUint32(H_HEADER_SIZE, true);
  if (hs < ROOT_HEADER_SIZE || hs > MAX_HEADER_SIZE || hs % 4 !== 0 || hs > bytes.length) hs = ROOT_HEADER_SIZE;
  if (hs > bytes.length) return false;
  const header = Buffer.from(bytes.subarray(0, hs - 4));
  ROOT_MAGIC_BYTES.copy(header, 0);
  return crc32c(header) === view.getUint32(hs - 4, true);
}

/**
 * Decodes a root slot (its bytes from the slot's start; trailing bytes are
 * ignored). Throws only NpmuError: 'ERR_NPMU_META_EMPTY' (no magic: never
 * written), 'ERR_NPMU_META_TOO_OLD' (a version 1 slot; property
 * `formatVersion`), 'ERR_NPMU_META_TOO_NEW' (property `formatVersion`) or
 * 'ERR_NPMU_META_CORRUPT' (CRC, bounds or impossible values).
 */
export function decodeRoot(bytes: Uint8Array): RootRecord {
  if (!(bytes instanceof Uint8Array)) throw argTypeError('bytes', 'a Uint8Array', bytes);
  const magic = bytes.subarray(0, 8);
  if (V1_MAGIC_BYTES.equals(magic)) {
    const formatVersion = bytes.length >= 12 ? new DataView(bytes.buffer, bytes.byteOffset, 12).getUint32(8, true) : 1;
    throw new NpmuError(
      'ERR_NPMU_META_TOO_OLD',
      'metadata is format version 1 (NPMUMETA), which this PMM no longer reads: recreate the volume (create-volume --force) and its regions',
      { formatVersion },
    );
  }
  if (!ROOT_MAGIC_BYTES.equals(magic)) {
    if (damagedRootMagic(bytes)) throw corrupt('root magic is damaged');
    throw new NpmuError('ERR_NPMU_META_EMPTY', 'metadata root slot is empty (no NPMUROOT magic)');
  }
  if (bytes.length < 16) throw corrupt('root slot ends inside the header');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerSize = view.getUint32(H_HEADER_SIZE, true);
  if (headerSize < ROOT_HEADER_SIZE || headerSize > MAX_HEADER_SIZE || headerSize % 4 !== 0) {
    throw corrupt(`root header size ${headerSize} is impossible`);
  }
  if (headerSize > bytes.length) throw corrupt(`root header of ${headerSize} bytes does not fit ${bytes.length} bytes`);
  if (crc32c(bytes.subarray(0, headerSize - 4)) !== view.getUint32(headerSize - 4, true)) throw corrupt('root header CRC mismatch');

  const formatVersion = view.getUint32(H_VERSION, true);
  if (formatVersion > META_FORMAT_VERSION) {
    throw new NpmuError(
      'ERR_NPMU_META_TOO_NEW',
      `metadata format version ${formatVersion} is newer than this PMM understands (${META_FORMAT_VERSION})`,
      { formatVersion },
    );
  }
  if (formatVersion < META_FORMAT_VERSION) throw corrupt(`root format version ${formatVersion} with NPMUROOT magic`);
  if (headerSize !== ROOT_HEADER_SIZE) throw corrupt(`root header size ${headerSize} for format version 2`);
  if (view.getUint32(H_FLAGS, true) !== 0) throw corrupt('unknown root header flags');
  for (let i = H_RESERVED; i < H_RESERVED_END; i++) if (bytes[i] !== 0) throw corrupt('reserved root header bytes are not zero');
  const gen = view.getBigUint64(H_GENERATION, true);
  if (gen < 1n || gen > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`generation ${gen} is impossible`);
  const generation = Number(gen);
  const bodyLength = view.getUint32(H_BODY_LENGTH, true);
  const room = Math.min(bytes.length, ROOT_SLOT_SIZE) - ROOT_HEADER_SIZE;
  if (bodyLength > room) throw corrupt(`root body of ${bodyLength} bytes does not fit ${room} bytes`);
  const end = ROOT_HEADER_SIZE + bodyLength;
  if (crc32c(bytes.subarray(ROOT_HEADER_SIZE, end)) !== view.getUint32(H_BODY_CRC, true)) throw corrupt('root body CRC mismatch');

  const rd = new Reader(bytes, ROOT_HEADER_SIZE, end, 'root');
  const epoch = rd.uint('epoch');
  const writer = rd.id('writer');
  const staleByte = rd.u8('peerStale');
  if (staleByte > 1) throw corrupt(`peerStale flag is ${staleByte}`);
  const staleSince = rd.uint('staleSince');
  const volume: Omit<VolumeMeta, 'regions'> = {
    volumeId: rd.id('volumeId'),
    name: rd.str('volume name'),
    primaryUnit: rd.id('primaryUnit'),
    mirrorUnit: rd.id('mirrorUnit'),
    pageSize: rd.u32('pageSize'),
    dataPages: rd.uint('dataPages'),
    createdAtMs: rd.uint('createdAtMs'),
    nextRegionId: rd.uint('nextRegionId'),
  };
  const regionCount = rd.u32('regionCount');
  const pageCount = rd.u32('page ref count');
  if (pageCount * PAGE_REF_SIZE !== rd.left) {
    throw corrupt(`${pageCount} page refs need ${pageCount * PAGE_REF_SIZE} bytes, the root has ${rd.left} left`);
  }
  const pages: PageRef[] = [];
  for (let i = 0; i < pageCount; i++) pages.push({ index: rd.u32('page index'), length: rd.u32('page length'), crc: rd.u32('page crc') });
  const root: RootRecord = { generation, epoch, writer, sync: { peerStale: staleByte === 1, staleSince }, volume, regionCount, pages };
  validateRoot(root);
  return root;
}

/**
 * Reads the two root slots of ONE half and returns its newest valid root (or
 * null if both are empty), the slot it came from and both slots' states.
 * Throws 'ERR_NPMU_META_TOO_NEW' / 'ERR_NPMU_META_TOO_OLD' (property `slot`)
 * if either slot is (never fall back behind a newer writer's back),
 * 'ERR_NPMU_META_CORRUPT' (property `errors`) if neither is valid and not both
 * are empty. A root whose generation does not match its slot (g % 2) is corrupt.
 */
export function newestRoot(
  slot0: Uint8Array,
  slot1: Uint8Array,
): { root: RootRecord | null; slot: 0 | 1 | null; states: [RootSlotState, RootSlotState] } {
  const roots: Array<RootRecord | null> = [null, null];
  const states: [RootSlotState, RootSlotState] = ['empty', 'empty'];
  const errors: Array<NpmuError | null> = [null, null];
  const version: Array<NpmuError | null> = [null, null];
  const input = [slot0, slot1];
  for (const slot of [0, 1] as const) {
    try {
      const r = decodeRoot(input[slot]);
      if (r.generation % 2 !== slot) {
        throw corrupt(`generation ${r.generation} found in root slot ${slot} (belongs in slot ${r.generation % 2})`);
      }
      roots[slot] = r;
      states[slot] = 'valid';
    } catch (err) {
      if (!(err instanceof NpmuError)) throw err;
      if (err.code === 'ERR_NPMU_META_TOO_NEW' || err.code === 'ERR_NPMU_META_TOO_OLD') version[slot] = err;
      states[slot] = err.code === 'ERR_NPMU_META_EMPTY' ? 'empty' : 'corrupt';
      errors[slot] = err;
    }
  }
  for (const code of ['ERR_NPMU_META_TOO_NEW', 'ERR_NPMU_META_TOO_OLD']) {
    for (const slot of [0, 1] as const) {
      const e = version[slot];
      if (e !== null && e.code === code) {
        throw new NpmuError(code, `root slot ${slot}: ${e.message}`, { slot, formatVersion: e.formatVersion });
      }
    }
  }
  const [r0, r1] = roots;
  if (r0 !== null && (r1 === null || r0.generation > r1.generation)) return { root: r0, slot: 0, states };
  if (r1 !== null) return { root: r1, slot: 1, states };
  if (states[0] === 'empty' && states[1] === 'empty') return { root: null, slot: null, states };
  const why = ([0, 1] as const).map((s) => `slot ${s}: ${errors[s]?.message ?? 'empty'}`).join('; ');
  throw new NpmuError('ERR_NPMU_META_CORRUPT', `no valid metadata root (${why})`, { errors, states });
}

// ---------------------------------------------------------------------------
// The in-memory image

export interface AreaWrite {
  /** Relative to the metadata area. */
  offset: number;
  bytes: Buffer;
}

export interface UpdatePlan {
  generation: number;
  /** Write and persist these first (the same on both halves). */
  pageWrites: AreaWrite[];
  /** Where this half's new root goes. */
  rootOffset: number;
  /** The new root for a half with that sync state. */
  rootBytes(sync: SyncState): Buffer;
}

export interface Change {
  add?: RegionMeta;
  /** A region id. */
  remove?: number;
  /** Replaced by id; the extents (and so the record size) may change. */
  update?: RegionMeta[];
}

interface Entry {
  meta: RegionMeta;
  /** The encoded record. */
  bytes: Buffer;
  /** Index of the table page that holds it. */
  page: number;
}

interface PageState {
  ref: PageRef;
  /** Ascending. */
  ids: number[];
  /** Record bytes. */
  used: number;
  /** The page's bytes [0, length). */
  bytes: Buffer;
}

/** A plan's effect, kept until `apply`. */
interface Delta {
  generation: number;
  epoch: number;
  writer: string;
  volume: Omit<VolumeMeta, 'regions'>;
  removeId: number | undefined;
  upserts: Entry[];
  /** Old page indices no longer referenced. */
  released: number[];
  written: PageState[];
}

function freezeRegion(r: RegionMeta): RegionMeta {
  const copy: RegionMeta = {
    id: r.id,
    name: r.name,
    size: r.size,
    basePointer: r.basePointer,
    owner: r.owner,
    createdAtMs: r.createdAtMs,
    lastOpenAtMs: r.lastOpenAtMs,
    durable: r.durable,
    primaryExtents: Object.freeze(r.primaryExtents.map((e) => Object.freeze({ page: e.page, pages: e.pages }))) as Extent[],
    mirrorExtents: Object.freeze(r.mirrorExtents.map((e) => Object.freeze({ page: e.page, pages: e.pages }))) as Extent[],
  };
  return Object.freeze(copy);
}

function cloneRegion(r: RegionMeta): RegionMeta {
  return {
    ...r,
    primaryExtents: r.primaryExtents.map((e) => ({ page: e.page, pages: e.pages })),
    mirrorExtents: r.mirrorExtents.map((e) => ({ page: e.page, pages: e.pages })),
  };
}

/** The pages one half's regions own: disjoint intervals sorted by page, O(log n) lookups. */
class ExtentIndex {
  #start: number[] = [];
  #end: number[] = [];
  #owner: number[] = [];

  /** First interval whose end is after `page` (ends ascend because intervals are disjoint). */
  #firstEndAfter(page: number): number {
    let lo = 0;
    let hi = this.#end.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#end[mid] <= page) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The owner of a page in [page, end) other than those in `ignore`, or null. */
  conflict(page: number, end: number, ignore: ReadonlySet<number>): number | null {
    for (let i = this.#firstEndAfter(page); i < this.#start.length && this.#start[i] < end; i++) {
      if (!ignore.has(this.#owner[i])) return this.#owner[i];
    }
    return null;
  }

  insert(page: number, pages: number, owner: number): void {
    const i = this.#firstEndAfter(page);
    this.#start.splice(i, 0, page);
    this.#end.splice(i, 0, page + pages);
    this.#owner.splice(i, 0, owner);
  }

  remove(page: number, owner: number): void {
    const i = this.#firstEndAfter(page);
    if (this.#start[i] !== page || this.#owner[i] !== owner) throw new Error(`npmu internal: extent at page ${page} of region ${owner} not indexed`);
    this.#start.splice(i, 1);
    this.#end.splice(i, 1);
    this.#owner.splice(i, 1);
  }

  /** Appends intervals already sorted and disjoint (load). */
  static build(list: Array<{ page: number; pages: number; owner: number }>): ExtentIndex {
    const x = new ExtentIndex();
    for (const e of list) {
      x.#start.push(e.page);
      x.#end.push(e.page + e.pages);
      x.#owner.push(e.owner);
    }
    return x;
  }

  extents(): Extent[] {
    return this.#start.map((page, i) => ({ page, pages: this.#end[i] - page }));
  }
}

/**
 * The in-memory image of a volume's metadata: the table and where each record
 * lives. Plans updates (`plan`) without mutating itself; `apply` makes a plan
 * its state once the caller has written it. Returned regions are frozen.
 */
export class MetaImage {
  readonly areaLength: number;
  readonly #pageCount: number;
  #generation = 0;
  #volume: Omit<VolumeMeta, 'regions'>;
  #lastWriter: { epoch: number; writer: string } | null = null;
  /** By id, in creation (= id) order. */
  #entries = new Map<number, Entry>();
  #byName = new Map<string, Entry>();
  /** By page index. */
  #pages = new Map<number, PageState>();
  /** 1 where the current root references the page index. */
  #inUse: Uint8Array;
  #own: Record<Half, ExtentIndex> = { primary: new ExtentIndex(), mirror: new ExtentIndex() };
  #pending: { plan: UpdatePlan; delta: Delta } | null = null;

  private constructor(volume: Omit<VolumeMeta, 'regions'>, areaLength: number) {
    this.areaLength = areaLength;
    this.#pageCount = tablePageCount(areaLength);
    this.#inUse = new Uint8Array(this.#pageCount);
    this.#volume = MetaImage.#volumeCopy(volume);
  }

  static #volumeCopy(v: Omit<VolumeMeta, 'regions'>): Omit<VolumeMeta, 'regions'> {
    return Object.freeze({
      volumeId: v.volumeId,
      name: v.name,
      primaryUnit: v.primaryUnit,
      mirrorUnit: v.mirrorUnit,
      pageSize: v.pageSize,
      dataPages: v.dataPages,
      createdAtMs: v.createdAtMs,
      nextRegionId: v.nextRegionId,
    });
  }

  /** A new volume's image: generation 0, no regions, no pages (plan({}) writes its first root). */
  static create(volume: Omit<VolumeMeta, 'regions'>, areaLength: number): MetaImage {
    tablePageCount(areaLength);
    validateVolume(volume);
    return new MetaImage(volume, areaLength);
  }

  /**
   * Rebuilds from a root and the bytes of the table pages it references
   * (index → bytes from the page's start, at least `length` bytes each).
   * Validates everything: 'ERR_NPMU_META_CORRUPT' saying what is wrong.
   */
  static load(root: RootRecord, pages: ReadonlyMap<number, Uint8Array>, areaLength: number): MetaImage {
    const pageCount = tablePageCount(areaLength);
    if (pages === null || typeof pages !== 'object' || typeof pages.get !== 'function') {
      throw argTypeError('pages', 'a Map of page index to bytes', pages);
    }
    validateRoot(root);
    const states: PageState[] = [];
    const records: Array<{ meta: RegionMeta; page: number }> = [];
    for (const ref of root.pages) {
      if (ref.index >= pageCount) throw corrupt(`root references table page ${ref.index}, the area has ${pageCount}`);
      const bytes = pages.get(ref.index);
      if (!(bytes instanceof Uint8Array)) throw corrupt(`table page ${ref.index} was not given`);
      if (bytes.length < ref.length) throw corrupt(`table page ${ref.index}: ${bytes.length} bytes given, the root lists ${ref.length}`);
      const used = bytes.subarray(0, ref.length);
      if (crc32c(used) !== ref.crc) throw corrupt(`table page ${ref.index} does not match its root entry (CRC): stale or torn`);
      const page = decodePage(used, ref.index);
      if (page.length !== ref.length) throw corrupt(`table page ${ref.index} is ${page.length} bytes, the root lists ${ref.length}`);
      if (page.generation > root.generation) {
        throw corrupt(`table page ${ref.index} was written for generation ${page.generation}, after root generation ${root.generation}`);
      }
      states.push({ ref: { ...ref }, ids: page.records.map((r) => r.id), used: ref.length - MIN_PAGE_LENGTH, bytes: Buffer.from(used) });
      for (const r of page.records) records.push({ meta: r, page: ref.index });
    }
    if (records.length !== root.regionCount) throw corrupt(`root counts ${root.regionCount} regions, its pages hold ${records.length}`);
    records.sort((a, b) => a.meta.id - b.meta.id);
    validateMeta({ ...root.volume, regions: records.map((x) => x.meta) });

    const img = new MetaImage(root.volume, areaLength);
    img.#generation = root.generation;
    img.#lastWriter = { epoch: root.epoch, writer: root.writer };
    for (const s of states) {
      img.#pages.set(s.ref.index, s);
      img.#inUse[s.ref.index] = 1;
    }
    const own: Record<Half, Array<{ page: number; pages: number; owner: number }>> = { primary: [], mirror: [] };
    for (const { meta, page } of records) {
      const e: Entry = { meta: freezeRegion(meta), bytes: encodeRegion(meta), page };
      img.#entries.set(meta.id, e);
      img.#byName.set(meta.name, e);
      for (const x of meta.primaryExtents) own.primary.push({ page: x.page, pages: x.pages, owner: meta.id });
      for (const x of meta.mirrorExtents) own.mirror.push({ page: x.page, pages: x.pages, owner: meta.id });
    }
    for (const half of ['primary', 'mirror'] as const) {
      img.#own[half] = ExtentIndex.build(own[half].sort((a, b) => a.page - b.page));
    }
    return img;
  }

  get generation(): number {
    return this.#generation;
  }

  get volume(): Omit<VolumeMeta, 'regions'> {
    return this.#volume;
  }

  get regionCount(): number {
    return this.#entries.size;
  }

  /** Table pages in the area. */
  get pageCount(): number {
    return this.#pageCount;
  }

  /** Table pages the current root references. */
  get pagesInUse(): number {
    return this.#pages.size;
  }

  /** Epoch and writer of the current root (null at generation 0). */
  get lastWriter(): { epoch: number; writer: string } | null {
    return this.#lastWriter;
  }

  /** The current root's page refs, ascending by index. */
  pageRefs(): PageRef[] {
    return [...this.#pages.keys()].sort((a, b) => a - b).map((i) => ({ ...this.#pages.get(i)!.ref }));
  }

  region(name: string): RegionMeta | undefined {
    return this.#byName.get(name)?.meta;
  }

  regionById(id: number): RegionMeta | undefined {
    return this.#entries.get(id)?.meta;
  }

  /** In creation order. */
  *regions(): Iterable<RegionMeta> {
    for (const e of this.#entries.values()) yield e.meta;
  }

  /** The first `max` names in creation order. */
  names(max: number): string[] {
    const out: string[] = [];
    if (!(max > 0)) return out;
    for (const e of this.#entries.values()) {
      out.push(e.meta.name);
      if (out.length >= max) break;
    }
    return out;
  }

  /** A full VolumeMeta (O(n); for tests and diagnostics). */
  toMeta(): VolumeMeta {
    return { ...this.#volume, regions: [...this.#entries.values()].map((e) => cloneRegion(e.meta)) };
  }

  /** Pages and extents owned on a half, sorted by page (for the allocator). */
  usedExtents(half: Half): Extent[] {
    if (half !== 'primary' && half !== 'mirror') throw argValueError('half', "must be 'primary' or 'mirror'", half);
    return this.#own[half].extents();
  }

  #root(generation: number, epoch: number, writer: string, sync: SyncState, volume: Omit<VolumeMeta, 'regions'>, regionCount: number, pages: PageRef[]): RootRecord {
    return { generation, epoch, writer, sync, volume, regionCount, pages };
  }

  /**
   * Plans a change on top of this image without mutating it. Checks the change
   * incrementally and throws 'ERR_NPMU_META_CORRUPT' for an impossible change
   * and 'ERR_NPMU_META_TOO_LARGE' (properties `needed`, `available`, `what`:
   * 'record' | 'pages' | 'root') when it does not fit, both before anything is
   * written. An empty change plans a root-only update. Deterministic: the same
   * image and change give the same plan.
   */
  plan(change: Change, opts: { epoch: number; writer: string }): UpdatePlan {
    if (change === null || typeof change !== 'object') throw argTypeError('change', 'an object', change);
    if (opts === null || typeof opts !== 'object') throw argTypeError('opts', 'an object', opts);
    checkUint('epoch', opts.epoch);
    checkId('writer', opts.writer);
    if (this.#generation >= Number.MAX_SAFE_INTEGER) throw corrupt('generation would exceed 2^53 - 1');
    const generation = this.#generation + 1;
    const vol = this.#volume;
    const { add, remove } = change;
    const updates = change.update ?? [];
    if (!Array.isArray(updates)) throw corrupt('change.update is not an array');

    // Which regions the change replaces or removes (their old names and pages are released).
    const gone = new Set<number>();
    if (remove !== undefined) {
      checkUint('region id to remove', remove, 1);
      if (!this.#entries.has(remove)) throw corrupt(`no region with id ${remove} to remove`);
      gone.add(remove);
    }
    const incoming: RegionMeta[] = [];
    for (let i = 0; i < updates.length; i++) {
      const u = updates[i];
      validateRegionFields(u, `update #${i}`);
      validateRegionInVolume(u, vol);
      if (!this.#entries.has(u.id)) throw corrupt(`no region with id ${u.id} to update`);
      if (gone.has(u.id)) throw corrupt(`region id ${u.id} is changed twice in one update`);
      gone.add(u.id);
      incoming.push(u);
    }
    if (add !== undefined) {
      validateRegionFields(add, 'new region');
      validateRegionInVolume(add, vol);
      if (add.id !== vol.nextRegionId) throw corrupt(`new region id ${add.id} is not nextRegionId ${vol.nextRegionId}`);
      incoming.push(add);
    }
    // Names stay unique.
    const newNames = new Set<string>();
    for (const r of incoming) {
      const holder = this.#byName.get(r.name);
      if (newNames.has(r.name) || (holder !== undefined && holder.meta.id !== r.id && !gone.has(holder.meta.id))) {
        throw corrupt(`${regionLabel(r)} appears twice (names must be unique)`);
      }
      newNames.add(r.name);
    }
    // No page owned twice on either half.
    for (const half of ['primary', 'mirror'] as const) {
      const list: Array<{ page: number; end: number; r: RegionMeta }> = [];
      for (const r of incoming) for (const e of half === 'primary' ? r.primaryExtents : r.mirrorExtents) list.push({ page: e.page, end: e.page + e.pages, r });
      list.sort((a, b) => a.page - b.page);
      for (let k = 0; k < list.length; k++) {
        const x = list[k];
        if (k > 0 && x.page < list[k - 1].end) {
          const a = list[k - 1].r;
          const who = a === x.r ? `${regionLabel(a)} twice` : `regions ${JSON.stringify(a.name)} and ${JSON.stringify(x.r.name)}`;
          throw corrupt(`${half} page ${x.page} is owned by ${who}`);
        }
        const other = this.#own[half].conflict(x.page, x.end, gone);
        if (other !== null) {
          const o = this.#entries.get(other)!.meta;
          throw corrupt(`${half} pages [${x.page}, ${x.end}) of ${regionLabel(x.r)} overlap region ${JSON.stringify(o.name)}`);
        }
      }
    }
    // Encode the new records.
    const encoded = new Map<number, Buffer>();
    for (const r of incoming) {
      const b = encodeRegion(r);
      if (b.length > PAGE_CAPACITY) {
        throw tooLarge(`${regionLabel(r)} needs ${b.length} bytes, a table page holds ${PAGE_CAPACITY}`, b.length, PAGE_CAPACITY, 'record');
      }
      encoded.set(r.id, b);
    }

    // Lay the records out on pages. Working copies of the pages touched; fresh pages have keys < 0.
    const work = new Map<number, { ids: number[]; used: number }>();
    let fresh = 0;
    const touch = (key: number) => {
      let w = work.get(key);
      if (w === undefined) {
        const s = this.#pages.get(key)!;
        w = { ids: s.ids.slice(), used: s.used };
        work.set(key, w);
      }
      return w;
    };
    const take = (w: { ids: number[]; used: number }, id: number, size: number) => {
      w.ids.splice(w.ids.indexOf(id), 1);
      w.used -= size;
    };
    const place = (id: number, size: number) => {
      let best: number | null = null;
      let bestRoom = Infinity;
      const consider = (key: number, used: number) => {
        const room = PAGE_CAPACITY - used;
        if (room < size) return;
        // Least room that fits; existing pages before fresh ones; then lowest index / first fresh.
        if (
          best === null ||
          room < bestRoom ||
          (room === bestRoom && (key >= 0 ? best < 0 || key < best : best < 0 && key > best))
        ) {
          best = key;
          bestRoom = room;
        }
      };
      for (const [key, s] of this.#pages) consider(key, work.get(key)?.used ?? s.used);
      for (let k = -1; k >= -fresh; k--) consider(k, work.get(k)!.used);
      if (best === null) {
        fresh++;
        best = -fresh;
        work.set(best, { ids: [], used: 0 });
      }
      const w = touch(best);
      let i = w.ids.length;
      while (i > 0 && w.ids[i - 1] > id) i--;
      w.ids.splice(i, 0, id);
      w.used += size;
    };
    if (remove !== undefined) {
      const e = this.#entries.get(remove)!;
      take(touch(e.page), remove, e.bytes.length);
    }
    for (const u of updates) {
      const e = this.#entries.get(u.id)!;
      const size = encoded.get(u.id)!.length;
      const w = touch(e.page);
      if (w.used - e.bytes.length + size <= PAGE_CAPACITY) {
        w.used += size - e.bytes.length;
      } else {
        take(w, u.id, e.bytes.length);
        place(u.id, size);
      }
    }
    if (add !== undefined) place(add.id, encoded.get(add.id)!.length);

    // Pages to write (old index order, then fresh pages in creation order) and pages dropped.
    const released: number[] = [];
    const rewrite: Array<{ ids: number[]; used: number }> = [];
    const keys = [...work.keys()].sort((a, b) => (a >= 0 && b >= 0 ? a - b : a >= 0 ? -1 : b >= 0 ? 1 : b - a));
    for (const key of keys) {
      const w = work.get(key)!;
      if (key >= 0) released.push(key);
      if (w.ids.length > 0) rewrite.push(w);
    }
    const inUse = this.#pages.size;
    const free = this.#pageCount - inUse;
    if (rewrite.length > free) {
      throw tooLarge(`the update writes ${rewrite.length} table pages, ${free} of ${this.#pageCount} are free`, rewrite.length, free, 'pages');
    }
    const after = inUse - released.length + rewrite.length;
    if (after > inUse && after > this.#pageCount - 1) {
      // Keep one index free so that a delete can always be planned.
      throw tooLarge(`the table would use ${after} of ${this.#pageCount} pages (one is kept free for deletes)`, after + 1, this.#pageCount, 'pages');
    }
    const targets: number[] = [];
    for (let i = 0; i < this.#pageCount && targets.length < rewrite.length; i++) if (this.#inUse[i] === 0) targets.push(i);

    const written: PageState[] = [];
    const recordBytes = (id: number) => encoded.get(id) ?? this.#entries.get(id)!.bytes;
    for (let k = 0; k < rewrite.length; k++) {
      const w = rewrite[k];
      const index = targets[k];
      const bytes = buildPage(index, generation, w.ids.map(recordBytes));
      written.push({ ref: { index, length: bytes.length, crc: crc32c(bytes) }, ids: w.ids, used: w.used, bytes });
    }
    const releasedSet = new Set(released);
    const refs: PageRef[] = [];
    for (const [i, s] of this.#pages) if (!releasedSet.has(i)) refs.push(s.ref);
    for (const s of written) refs.push(s.ref);
    refs.sort((a, b) => a.index - b.index);

    const volume = MetaImage.#volumeCopy(add !== undefined ? { ...vol, nextRegionId: add.id + 1 } : vol);
    const regionCount = this.#entries.size - (remove !== undefined ? 1 : 0) + (add !== undefined ? 1 : 0);
    const { epoch, writer } = opts;
    const base = this.#root(generation, epoch, writer, { peerStale: false, staleSince: 0 }, volume, regionCount, refs);
    // TOO_LARGE now, before anything is written (the root's size does not depend on the sync state;
    // its other fields are valid by construction).
    const rootSize = ROOT_HEADER_SIZE + rootBodyLength(base);
    if (rootSize > ROOT_SLOT_SIZE) {
      throw tooLarge(`a root listing ${refs.length} table pages needs ${rootSize} bytes, a root slot holds ${ROOT_SLOT_SIZE}`, rootSize, ROOT_SLOT_SIZE, 'root');
    }

    const upserts: Entry[] = incoming.map((r) => ({ meta: freezeRegion(r), bytes: encoded.get(r.id)!, page: -1 }));
    const delta: Delta = { generation, epoch, writer, volume, removeId: remove, upserts, released, written };
    const plan: UpdatePlan = Object.freeze({
      generation,
      pageWrites: written.map((s) => ({ offset: tablePageOffset(s.ref.index), bytes: s.bytes })),
      rootOffset: rootSlotOffset((generation % 2) as 0 | 1),
      rootBytes: (sync: SyncState) => encodeRoot({ ...base, sync }),
    });
    this.#pending = { plan, delta };
    return plan;
  }

  /** Makes a plan the image's state (after the caller has written it). Only the plan most recently made from this generation. */
  apply(plan: UpdatePlan): void {
    const pending = this.#pending;
    if (pending === null || pending.plan !== plan || pending.delta.generation !== this.#generation + 1) {
      throw argValueError('plan', `is not the plan most recently made from generation ${this.#generation} of this image`, plan);
    }
    const d = pending.delta;
    // Release the old records' names and pages first (an update may reuse its own pages).
    const olds: Entry[] = [];
    if (d.removeId !== undefined) olds.push(this.#entries.get(d.removeId)!);
    for (const u of d.upserts) {
      const old = this.#entries.get(u.meta.id);
      if (old !== undefined) olds.push(old);
    }
    for (const old of olds) {
      if (this.#byName.get(old.meta.name) === old) this.#byName.delete(old.meta.name);
      for (const e of old.meta.primaryExtents) this.#own.primary.remove(e.page, old.meta.id);
      for (const e of old.meta.mirrorExtents) this.#own.mirror.remove(e.page, old.meta.id);
    }
    if (d.removeId !== undefined) this.#entries.delete(d.removeId);
    for (const u of d.upserts) {
      const old = this.#entries.get(u.meta.id);
      const e: Entry = { meta: u.meta, bytes: u.bytes, page: old?.page ?? -1 };
      this.#entries.set(u.meta.id, e); // an existing key keeps its place: creation order
      this.#byName.set(u.meta.name, e);
      for (const x of u.meta.primaryExtents) this.#own.primary.insert(x.page, x.pages, u.meta.id);
      for (const x of u.meta.mirrorExtents) this.#own.mirror.insert(x.page, x.pages, u.meta.id);
    }
    for (const i of d.released) {
      this.#pages.delete(i);
      this.#inUse[i] = 0;
    }
    for (const s of d.written) {
      this.#pages.set(s.ref.index, s);
      this.#inUse[s.ref.index] = 1;
      for (const id of s.ids) this.#entries.get(id)!.page = s.ref.index;
    }
    this.#volume = d.volume;
    this.#generation = d.generation;
    this.#lastWriter = { epoch: d.epoch, writer: d.writer };
    this.#pending = null;
  }

  /**
   * Every write that puts this whole image on a half whose metadata is
   * arbitrary (resync, roll-forward, format): all pages in use, then a zeroed
   * other root slot (so an older or foreign root there can never win), then
   * the root of the current generation. Safe to run against a half that is
   * not served (until the root is persisted the half may read as corrupt).
   */
  fullImage(opts: { epoch: number; writer: string }, sync: SyncState): { pageWrites: AreaWrite[]; rootOffset: number; rootBytes: Buffer } {
    if (opts === null || typeof opts !== 'object') throw argTypeError('opts', 'an object', opts);
    if (this.#generation < 1) throw argValueError('image', 'has no root yet (apply a first plan)', this.#generation);
    const refs = this.pageRefs();
    const rootBytes = encodeRoot(this.#root(this.#generation, opts.epoch, opts.writer, sync, this.#volume, this.#entries.size, refs));
    const pageWrites: AreaWrite[] = refs.map((r) => ({ offset: tablePageOffset(r.index), bytes: Buffer.from(this.#pages.get(r.index)!.bytes) }));
    const slot = (this.#generation % 2) as 0 | 1;
    pageWrites.push({ offset: rootSlotOffset(slot === 0 ? 1 : 0), bytes: Buffer.alloc(ROOT_SLOT_SIZE) });
    return { pageWrites, rootOffset: rootSlotOffset(slot), rootBytes };
  }
}
