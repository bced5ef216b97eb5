/**
 * The on-device layout of a unit (the nPMU, [0035], [0059]-[0061]).
 *
 * THIS COMMENT IS THE REFERENCE FOR THE ON-DEVICE FORMAT. Everything here is
 * pure (no I/O): the unit daemon maps the device and hands the bytes in.
 *
 * A unit owns one device: a devdax character device (page size 2 MiB) or a
 * file on tmpfs, a DAX file system or an ordinary file system (page size
 * 4 KiB). The device is cut into three areas:
 *
 * ```
 *   0        4096     8192                         dataOffset                              capacity
 *   +--------+--------+----------------------------+----------+----------+-----+----------+------+
 *   | SB  A  | SB  B  | metadata area (PMM-owned)  | page 0   | page 1   | ... | page N-1 | tail |
 *   +--------+--------+----------------------------+----------+----------+-----+----------+------+
 *                     metaOffset     metaLength    (pageSize-aligned)     N = dataPages
 * ```
 *
 * ## Superblock (two copies, 4096-byte slots at byte 0 and byte 4096)
 *
 * All integers little-endian. The struct is 256 bytes (`headerSize`); the rest
 * of each 4096-byte slot is zero.
 *
 * | offset | size | field         | meaning                                                        |
 * | -----: | ---: | ------------- | -------------------------------------------------------------- |
 * |      0 |    8 | magic         | ASCII `NPMUUNIT`                                               |
 * |      8 |    4 | layoutVersion | 2 (1 is read too: its epoch and holder are zero)               |
 * |     12 |    4 | headerSize    | 256: bytes of the struct, CRC included                         |
 * |     16 |    8 | generation    | +1 on every superblock update (≥ 1)                            |
 * |     24 |   16 | unitId        | random at format time; never changes                           |
 * |     40 |    8 | capacity      | device bytes at format time                                    |
 * |     48 |    4 | pageSize      | power of two, 4 KiB .. 1 GiB                                   |
 * |     52 |    4 | (reserved)    | zero                                                           |
 * |     56 |    8 | metaOffset    | 8192 in version 1                                              |
 * |     64 |    8 | metaLength    | ≥ 64 KiB; metaOffset + metaLength = dataOffset                 |
 * |     72 |    8 | dataOffset    | first data page, a multiple of pageSize                        |
 * |     80 |    8 | dataPages     | floor((capacity - dataOffset) / pageSize), ≥ 1                 |
 * |     88 |    8 | createdAtMs   | unix milliseconds at format time                               |
 * |     96 |   16 | volumeId      | volume this unit belongs to; all zero = unassigned             |
 * |    112 |    1 | role          | 0 none, 1 primary, 2 mirror (0 exactly when volumeId is zero)  |
 * |    113 |    1 | durability    | 0 volatile (tmpfs), 1 msync (file), 2 pmem (devdax / DAX)      |
 * |    114 |    6 | (reserved)    | zero                                                           |
 * |    120 |   32 | label         | UTF-8, NUL padded (no NUL inside the text)                     |
 * |    152 |    8 | epoch         | fencing epoch of the PMM that holds the unit (0 = none yet)     |
 * |    160 |   16 | holder        | id of that PMM (32 hex digits); all zero with epoch 0           |
 * |    176 |   76 | (reserved)    | zero                                                           |
 * |    252 |    4 | crc32c        | CRC-32C (lib/crc32c.ts) of bytes [0, 252)                      |
 *
 * Invariant for every layout version, present and future: bytes 0-15 (magic,
 * layoutVersion, headerSize) keep their meaning and the CRC-32C sits in the
 * last 4 bytes of the struct, over all bytes before it. That is what lets this
 * version tell a superblock written by newer software (refused with
 * `ERR_NPMU_LAYOUT_TOO_NEW`) from a damaged one (`ERR_NPMU_CORRUPT`).
 *
 * ## Fencing (one writer per unit)
 *
 * `epoch` and `holder` are the fence. A PMM takes a unit with `claim`
 * (epoch > the stored one; persisted here before the reply); from then on the
 * unit refuses every state-changing request (metadata writes, maps, unmaps,
 * persists, zeroing maps, format-volume) from any control connection that has
 * not claimed the current epoch (`ERR_NPMU_FENCED`) and drops the control
 * connections of lower epochs at once. The epoch only grows.
 *
 * ## Atomic update (the two-slot rule, [0060], [0062])
 *
 * The valid copy with the highest generation is current. An update writes the
 * whole struct, with generation + 1, into the OTHER slot and persists it
 * (msync / pmem_persist); only then does it count. A crash at any point leaves
 * at least one valid copy: the old one, or the new one once persisted. A torn
 * new copy fails its CRC and the old one is used. Formatting writes the same
 * generation-1 superblock into both slots (A, then B); it is complete once
 * both are persisted (a format interrupted in between may leave a previous
 * format current, or the device refused as corrupt: run it again). Two valid
 * copies with the same generation must be byte-identical; anything else is
 * refused.
 *
 * ## Metadata area
 *
 * [metaOffset, metaOffset + metaLength): opaque to the unit, owned by the PMM
 * (its slots, generations and CRCs are the PMM's format, `pmm/`). The unit only
 * checks that reads and writes stay inside it. Default size: the data area
 * starts at 1 MiB rounded up to the page size, i.e. 1 MiB - 8192 bytes of
 * metadata with 4 KiB pages and 2 MiB - 8192 with 2 MiB pages. A configured
 * size (≥ 64 KiB) is rounded up so that dataOffset is page-aligned.
 *
 * ## Data pages
 *
 * [dataOffset, dataOffset + dataPages * pageSize): the physical pages the PMM
 * allocates to regions ([0061]) and the unit maps for clients ([0038], [0040]).
 * The tail after the last whole page is unused.
 */

import { randomBytes } from 'node:crypto';
import { crc32c } from '../lib/crc32c';
import { NpmuError, argRangeError, argTypeError, argValueError } from '../lib/errors';

/** The layout version this code writes and the newest it reads. */
export const LAYOUT_VERSION = 2;
/** The oldest layout version this code reads (it writes LAYOUT_VERSION on the next update). */
export const MIN_LAYOUT_VERSION = 1;
/** `NPMUUNIT` */
export const SUPERBLOCK_MAGIC: Buffer = Buffer.from('NPMUUNIT', 'latin1');
/** Bytes of the superblock struct (CRC included) in layout version 1. */
export const SUPERBLOCK_SIZE = 256;
/** Bytes reserved for each superblock copy. */
export const SUPERBLOCK_SLOT_SIZE = 4096;
/** Byte offset of each superblock copy. */
export const SUPERBLOCK_OFFSET = { A: 0, B: 4096 } as const;
/** First byte after both superblock copies: where the metadata area starts. */
export const META_OFFSET = 8192;
/** Smallest metadata area accepted at format time. */
export const MIN_META_LENGTH = 64 * 1024;
/** Default start of the data area (before rounding up to the page size) on devices of at least LARGE_DEVICE bytes: 8 MiB of metadata (more than 10,000 regions). */
export const DEFAULT_DATA_OFFSET = 8 * 1024 * 1024;
/** Default start of the data area on smaller devices. */
export const SMALL_DATA_OFFSET = 1024 * 1024;
/** Devices of at least this size get the large default metadata area. */
export const LARGE_DEVICE = 128 * 1024 * 1024;
export const MIN_PAGE_SIZE = 4096;
export const MAX_PAGE_SIZE = 1024 * 1024 * 1024;
/** Maximum label length in UTF-8 bytes. */
export const LABEL_MAX = 32;

export type Role = 'none' | 'primary' | 'mirror';
/** What the unit's device can promise once a write is persisted. */
export type Durability = 'volatile' | 'msync' | 'pmem';
export type SuperblockCopy = 'A' | 'B';

const ROLES: readonly Role[] = ['none', 'primary', 'mirror'];
const DURABILITIES: readonly Durability[] = ['volatile', 'msync', 'pmem'];
const ZERO_ID = '0'.repeat(32);
const HEX32 = /^[0-9a-f]{32}$/;

/** Geometry of a unit's device: the three areas. All values are byte counts/offsets except dataPages. */
export interface Layout {
  capacity: number;
  pageSize: number;
  metaOffset: number;
  metaLength: number;
  dataOffset: number;
  dataPages: number;
}

/** A decoded superblock. Ids are 32 lowercase hex digits. */
export interface Superblock extends Layout {
  layoutVersion: number;
  generation: number;
  unitId: string;
  createdAtMs: number;
  /** All zeros when the unit belongs to no volume. */
  volumeId: string;
  role: Role;
  durability: Durability;
  label: string;
  /** Fencing epoch of the holder (0 = never claimed). */
  epoch: number;
  /** The PMM holding the unit: 32 hex digits, all zero when epoch is 0. */
  holder: string;
}

/** The fields an update may change; everything else is fixed at format time. */
export type SuperblockChanges = Partial<Pick<Superblock, 'volumeId' | 'role' | 'durability' | 'label' | 'epoch' | 'holder'>>;

// Field offsets (see the table above).
const O = {
  magic: 0,
  layoutVersion: 8,
  headerSize: 12,
  generation: 16,
  unitId: 24,
  capacity: 40,
  pageSize: 48,
  reserved1: 52,
  metaOffset: 56,
  metaLength: 64,
  dataOffset: 72,
  dataPages: 80,
  createdAtMs: 88,
  volumeId: 96,
  role: 112,
  durability: 113,
  reserved2: 114,
  label: 120,
  epoch: 152,
  holder: 160,
  reserved3: 176,
  crc: 252,
} as const;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isPow2(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

function roundUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

/**
 * Plans the layout of a device of `capacity` bytes.
 *
 * @param opts.capacity device size in bytes (a safe integer).
 * @param opts.pageSize 2 MiB for devdax, 4 KiB for files; a power of two in [4 KiB, 1 GiB].
 * @param opts.metaLength metadata area size in bytes (≥ 64 KiB); rounded up so the data area is page-aligned.
 *   Default: the data area starts at 1 MiB rounded up to the page size.
 * @throws TypeError `ERR_INVALID_ARG_VALUE` / `ERR_INVALID_ARG_TYPE` for bad inputs;
 *   NpmuError `ERR_NPMU_DEVICE_TOO_SMALL` when not even one data page fits.
 */
export function planLayout(opts: { capacity: number; pageSize: number; metaLength?: number }): Layout {
  if (typeof opts !== 'object' || opts === null) throw argTypeError('opts', 'an object', opts);
  const { capacity, pageSize, metaLength } = opts;
  if (typeof capacity !== 'number') throw argTypeError('capacity', 'of type number', capacity);
  if (!Number.isSafeInteger(capacity) || capacity <= 0) throw argValueError('capacity', 'must be a positive safe integer', capacity);
  if (typeof pageSize !== 'number') throw argTypeError('pageSize', 'of type number', pageSize);
  if (!isPow2(pageSize) || pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE) {
    throw argValueError('pageSize', `must be a power of two in [${MIN_PAGE_SIZE}, ${MAX_PAGE_SIZE}]`, pageSize);
  }
  let dataOffset: number;
  if (metaLength === undefined) {
    dataOffset = roundUp(capacity >= LARGE_DEVICE ? DEFAULT_DATA_OFFSET : SMALL_DATA_OFFSET, pageSize);
  } else {
    if (typeof metaLength !== 'number') throw argTypeError('metaLength', 'of type number', metaLength);
    if (!Number.isSafeInteger(metaLength) || metaLength < MIN_META_LENGTH) {
      throw argValueError('metaLength', `must be a safe integer ≥ ${MIN_META_LENGTH}`, metaLength);
    }
    dataOffset = roundUp(META_OFFSET + metaLength, pageSize);
  }
  const dataPages = capacity > dataOffset ? Math.floor((capacity - dataOffset) / pageSize) : 0;
  if (dataPages < 1) {
    throw new NpmuError(
      'ERR_NPMU_DEVICE_TOO_SMALL',
      `a device of ${capacity} bytes cannot hold the superblocks, a ${dataOffset - META_OFFSET}-byte metadata area ` +
        `and one ${pageSize}-byte data page (needs ${dataOffset + pageSize} bytes; a smaller metaLength may help)`,
      { capacity, pageSize, needed: dataOffset + pageSize },
    );
  }
  return { capacity, pageSize, metaOffset: META_OFFSET, metaLength: dataOffset - META_OFFSET, dataOffset, dataPages };
}

/**
 * Byte offset in the device of data page `page` (0-based).
 * @throws RangeError `ERR_OUT_OF_RANGE` unless 0 ≤ page < dataPages.
 */
export function dataPageOffset(layout: Layout, page: number): number {
  if (!Number.isSafeInteger(page) || page < 0 || page >= layout.dataPages) {
    throw argRangeError('page', `an integer >= 0 and < ${layout.dataPages}`, page);
  }
  return layout.dataOffset + page * layout.pageSize;
}

/**
 * A new generation-1 superblock for a freshly planned layout. Formatting writes
 * `encodeSuperblock()` of it into both slots (A, then B) and persists them.
 *
 * @param opts.unitId 32 hex digits; random by default.
 * @param opts.createdAtMs default `Date.now()`.
 */
export function createSuperblock(
  layout: Layout,
  opts: { durability: Durability; unitId?: string; label?: string; createdAtMs?: number },
): Superblock {
  const sb: Superblock = {
    layoutVersion: LAYOUT_VERSION,
    generation: 1,
    unitId: opts.unitId ?? randomBytes(16).toString('hex'),
    capacity: layout.capacity,
    pageSize: layout.pageSize,
    metaOffset: layout.metaOffset,
    metaLength: layout.metaLength,
    dataOffset: layout.dataOffset,
    dataPages: layout.dataPages,
    createdAtMs: opts.createdAtMs ?? Date.now(),
    volumeId: ZERO_ID,
    role: 'none',
    durability: opts.durability,
    label: opts.label ?? '',
    epoch: 0,
    holder: ZERO_ID,
  };
  const why = checkSuperblock(sb);
  if (why) throw argValueError('superblock', why, sb);
  return sb;
}

/**
 * Returns why a superblock is impossible, or undefined when it is consistent.
 * Shared by the encoder (programming error) and the decoder (corruption).
 */
function checkSuperblock(sb: Superblock): string | undefined {
  const u = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
  if (sb.layoutVersion < MIN_LAYOUT_VERSION || sb.layoutVersion > LAYOUT_VERSION) return `layoutVersion must be in [${MIN_LAYOUT_VERSION}, ${LAYOUT_VERSION}]`;
  for (const k of ['generation', 'capacity', 'pageSize', 'metaOffset', 'metaLength', 'dataOffset', 'dataPages', 'createdAtMs', 'epoch'] as const) {
    if (!u(sb[k])) return `${k} must be a non-negative safe integer`;
  }
  if (sb.generation < 1) return 'generation must be at least 1';
  if (typeof sb.unitId !== 'string' || !HEX32.test(sb.unitId)) return 'unitId must be 32 lowercase hex digits';
  if (sb.unitId === ZERO_ID) return 'unitId must not be all zero';
  if (typeof sb.volumeId !== 'string' || !HEX32.test(sb.volumeId)) return 'volumeId must be 32 lowercase hex digits';
  if (!ROLES.includes(sb.role)) return `role must be one of ${ROLES.join(', ')}`;
  if (!DURABILITIES.includes(sb.durability)) return `durability must be one of ${DURABILITIES.join(', ')}`;
  if ((sb.role === 'none') !== (sb.volumeId === ZERO_ID)) return 'role must be "none" exactly when volumeId is all zero';
  if (typeof sb.holder !== 'string' || !HEX32.test(sb.holder)) return 'holder must be 32 lowercase hex digits';
  if ((sb.epoch === 0) !== (sb.holder === ZERO_ID)) return 'holder must be all zero exactly when epoch is 0';
  if (typeof sb.label !== 'string') return 'label must be a string';
  if (sb.label.includes('\0')) return 'label must not contain NUL';
  if (Buffer.byteLength(sb.label, 'utf8') > LABEL_MAX) return `label must be at most ${LABEL_MAX} UTF-8 bytes`;
  if (/\p{Cs}/u.test(sb.label)) return 'label must be well-formed Unicode';
  if (!isPow2(sb.pageSize) || sb.pageSize < MIN_PAGE_SIZE || sb.pageSize > MAX_PAGE_SIZE) {
    return `pageSize must be a power of two in [${MIN_PAGE_SIZE}, ${MAX_PAGE_SIZE}]`;
  }
  if (sb.metaOffset !== META_OFFSET) return `metaOffset must be ${META_OFFSET}`;
  if (sb.metaLength < MIN_META_LENGTH) return `metaLength must be at least ${MIN_META_LENGTH}`;
  if (sb.metaOffset + sb.metaLength !== sb.dataOffset) return 'the metadata area must end where the data area starts';
  if (sb.dataOffset % sb.pageSize !== 0) return 'dataOffset must be a multiple of pageSize';
  if (sb.dataPages < 1) return 'dataPages must be at least 1';
  // BigInt: a corrupted dataPages times pageSize may exceed 2^53.
  if (BigInt(sb.dataOffset) + BigInt(sb.dataPages) * BigInt(sb.pageSize) > BigInt(sb.capacity)) {
    return 'the data area extends beyond capacity';
  }
  return undefined;
}

/**
 * Encodes a superblock into a 4096-byte slot image (struct, CRC, zero padding).
 * @throws TypeError `ERR_INVALID_ARG_VALUE` if the superblock is inconsistent.
 */
export function encodeSuperblock(sb: Superblock): Buffer {
  const why = checkSuperblock(sb);
  if (why) throw argValueError('superblock', why, sb);
  const b = Buffer.alloc(SUPERBLOCK_SLOT_SIZE);
  SUPERBLOCK_MAGIC.copy(b, O.magic);
  b.writeUInt32LE(LAYOUT_VERSION, O.layoutVersion);
  b.writeUInt32LE(SUPERBLOCK_SIZE, O.headerSize);
  b.writeBigUInt64LE(BigInt(sb.generation), O.generation);
  b.write(sb.unitId, O.unitId, 16, 'hex');
  b.writeBigUInt64LE(BigInt(sb.capacity), O.capacity);
  b.writeUInt32LE(sb.pageSize, O.pageSize);
  b.writeBigUInt64LE(BigInt(sb.metaOffset), O.metaOffset);
  b.writeBigUInt64LE(BigInt(sb.metaLength), O.metaLength);
  b.writeBigUInt64LE(BigInt(sb.dataOffset), O.dataOffset);
  b.writeBigUInt64LE(BigInt(sb.dataPages), O.dataPages);
  b.writeBigUInt64LE(BigInt(sb.createdAtMs), O.createdAtMs);
  b.write(sb.volumeId, O.volumeId, 16, 'hex');
  b.writeUInt8(ROLES.indexOf(sb.role), O.role);
  b.writeUInt8(DURABILITIES.indexOf(sb.durability), O.durability);
  b.write(sb.label, O.label, LABEL_MAX, 'utf8');
  b.writeBigUInt64LE(BigInt(sb.epoch), O.epoch);
  b.write(sb.holder, O.holder, 16, 'hex');
  b.writeUInt32LE(crc32c(b.subarray(0, O.crc)), O.crc);
  return b;
}

function corrupt(message: string, props?: Record<string, unknown>): NpmuError {
  return new NpmuError('ERR_NPMU_CORRUPT', `corrupt superblock: ${message}`, props);
}

/**
 * Decodes one superblock copy (at least the struct's bytes; usually the whole slot).
 *
 * Checks, in order: magic (`ERR_NPMU_NOT_FORMATTED`), headerSize and CRC
 * (`ERR_NPMU_CORRUPT`), layoutVersion (`ERR_NPMU_LAYOUT_TOO_NEW` when newer than
 * {@link LAYOUT_VERSION}), then every field for impossible values
 * (`ERR_NPMU_CORRUPT`). It does not compare capacity with the real device
 * size: the caller, which knows it, must.
 */
export function decodeSuperblock(buf: Uint8Array): Superblock {
  if (!(buf instanceof Uint8Array)) throw argTypeError('buf', 'an instance of Uint8Array', buf);
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 16 || !b.subarray(0, 8).equals(SUPERBLOCK_MAGIC)) {
    throw new NpmuError('ERR_NPMU_NOT_FORMATTED', 'no npmu superblock (magic "NPMUUNIT" not found)');
  }
  const layoutVersion = b.readUInt32LE(O.layoutVersion);
  const headerSize = b.readUInt32LE(O.headerSize);
  if (headerSize < 20 || headerSize > SUPERBLOCK_SLOT_SIZE || headerSize % 4 !== 0) {
    throw corrupt(`impossible headerSize ${headerSize}`);
  }
  if (b.length < headerSize) throw corrupt(`only ${b.length} bytes given, headerSize is ${headerSize}`);
  const stored = b.readUInt32LE(headerSize - 4);
  const computed = crc32c(b.subarray(0, headerSize - 4));
  if (stored !== computed) {
    throw corrupt(`CRC-32C mismatch (stored 0x${stored.toString(16)}, computed 0x${computed.toString(16)})`);
  }
  if (layoutVersion > LAYOUT_VERSION) {
    throw new NpmuError(
      'ERR_NPMU_LAYOUT_TOO_NEW',
      `superblock layout version ${layoutVersion} is newer than the supported version ${LAYOUT_VERSION}; upgrade npmu`,
      { layoutVersion, supported: LAYOUT_VERSION },
    );
  }
  if (layoutVersion < MIN_LAYOUT_VERSION) throw corrupt(`impossible layoutVersion ${layoutVersion}`);
  if (headerSize !== SUPERBLOCK_SIZE) throw corrupt(`headerSize ${headerSize} != ${SUPERBLOCK_SIZE}`);
  const u64 = (off: number, name: string): number => {
    const v = b.readBigUInt64LE(off);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(`${name} ${v} exceeds 2^53`);
    return Number(v);
  };
  for (const [off, len] of [
    [O.reserved1, 4],
    [O.reserved2, 6],
    [O.reserved3, O.crc - O.reserved3],
  ] as const) {
    if (b.subarray(off, off + len).some((x) => x !== 0)) throw corrupt(`reserved bytes at ${off} are not zero`);
  }
  const roleCode = b[O.role]!;
  const durabilityCode = b[O.durability]!;
  const role = ROLES[roleCode];
  const durability = DURABILITIES[durabilityCode];
  if (role === undefined) throw corrupt(`unknown role ${roleCode}`);
  if (durability === undefined) throw corrupt(`unknown durability ${durabilityCode}`);
  const labelBytes = b.subarray(O.label, O.label + LABEL_MAX);
  const nul = labelBytes.indexOf(0);
  const textEnd = nul < 0 ? LABEL_MAX : nul;
  if (labelBytes.subarray(textEnd).some((x) => x !== 0)) throw corrupt('label is not NUL padded');
  let label: string;
  try {
    label = utf8.decode(labelBytes.subarray(0, textEnd));
  } catch {
    throw corrupt('label is not valid UTF-8');
  }
  const sb: Superblock = {
    layoutVersion,
    generation: u64(O.generation, 'generation'),
    unitId: b.toString('hex', O.unitId, O.unitId + 16),
    capacity: u64(O.capacity, 'capacity'),
    pageSize: b.readUInt32LE(O.pageSize),
    metaOffset: u64(O.metaOffset, 'metaOffset'),
    metaLength: u64(O.metaLength, 'metaLength'),
    dataOffset: u64(O.dataOffset, 'dataOffset'),
    dataPages: u64(O.dataPages, 'dataPages'),
    createdAtMs: u64(O.createdAtMs, 'createdAtMs'),
    volumeId: b.toString('hex', O.volumeId, O.volumeId + 16),
    role,
    durability,
    label,
    epoch: layoutVersion >= 2 ? u64(O.epoch, 'epoch') : 0,
    holder: layoutVersion >= 2 ? b.toString('hex', O.holder, O.holder + 16) : ZERO_ID,
  };
  const why = checkSuperblock(sb);
  if (why) throw corrupt(why);
  return sb;
}

/** The result of {@link readSuperblock}. */
export interface SuperblockRead {
  /** The current superblock. */
  sb: Superblock;
  /** The slot it came from; the next update goes to the other one. */
  copy: SuperblockCopy;
  /**
   * The other slot: `'valid'` holds the same generation (the copies agree, as
   * after formatting); `'older'` a valid previous generation (normal after an
   * update); `'invalid'` nothing usable (torn, corrupt, blank, or left over
   * from a different format). The unit may rewrite an invalid or older copy
   * from the current one at any time.
   */
  other: 'valid' | 'invalid' | 'older';
}

type Attempt = { ok: true; sb: Superblock; bytes: Buffer } | { ok: false; err: NpmuError };

function attempt(device: Uint8Array, copy: SuperblockCopy): Attempt {
  const off = SUPERBLOCK_OFFSET[copy];
  const end = Math.min(device.byteLength, off + SUPERBLOCK_SLOT_SIZE);
  const slot = off < end ? device.subarray(off, end) : new Uint8Array(0);
  try {
    const sb = decodeSuperblock(slot);
    return { ok: true, sb, bytes: Buffer.from(slot.buffer, slot.byteOffset, SUPERBLOCK_SIZE) };
  } catch (err) {
    if (err instanceof NpmuError) return { ok: false, err };
    throw err;
  }
}

function sameFormat(x: Superblock, y: Superblock): boolean {
  return (
    x.unitId === y.unitId &&
    x.capacity === y.capacity &&
    x.pageSize === y.pageSize &&
    x.metaOffset === y.metaOffset &&
    x.metaLength === y.metaLength &&
    x.dataOffset === y.dataOffset &&
    x.dataPages === y.dataPages &&
    x.createdAtMs === y.createdAtMs
  );
}

/**
 * Picks the current superblock of a device from its two copies.
 *
 * @param device the device's bytes from offset 0 (at least the first 8192 are read).
 * @throws NpmuError `ERR_NPMU_LAYOUT_TOO_NEW` if either copy is intact but
 *   newer than this code (never fall back to an older copy behind a newer
 *   writer's back); `ERR_NPMU_NOT_FORMATTED` when neither slot has the magic;
 *   `ERR_NPMU_CORRUPT` when no copy is valid otherwise, or when two copies claim
 *   the same generation with different contents.
 */
export function readSuperblock(device: Uint8Array): SuperblockRead {
  if (!(device instanceof Uint8Array)) throw argTypeError('device', 'an instance of Uint8Array', device);
  const a = attempt(device, 'A');
  const b = attempt(device, 'B');
  for (const x of [a, b]) {
    if (!x.ok && x.err.code === 'ERR_NPMU_LAYOUT_TOO_NEW') throw x.err;
  }
  if (a.ok && b.ok) {
    if (a.sb.generation === b.sb.generation) {
      if (!a.bytes.equals(b.bytes)) {
        throw corrupt(`both copies claim generation ${a.sb.generation} but differ`, { generation: a.sb.generation });
      }
      return { sb: a.sb, copy: 'A', other: 'valid' };
    }
    const [cur, old, copy]: [Superblock, Superblock, SuperblockCopy] =
      a.sb.generation > b.sb.generation ? [a.sb, b.sb, 'A'] : [b.sb, a.sb, 'B'];
    // A copy of another format (a format that crashed between its two writes)
    // is not a previous state of this one.
    return { sb: cur, copy, other: sameFormat(cur, old) ? 'older' : 'invalid' };
  }
  if (a.ok) return { sb: a.sb, copy: 'A', other: 'invalid' };
  if (b.ok) return { sb: b.sb, copy: 'B', other: 'invalid' };
  if (a.err.code === 'ERR_NPMU_NOT_FORMATTED' && b.err.code === 'ERR_NPMU_NOT_FORMATTED') {
    throw new NpmuError('ERR_NPMU_NOT_FORMATTED', 'device is not formatted as an npmu unit (no superblock in either slot)');
  }
  throw corrupt(`no valid copy (A: ${a.err.message}; B: ${b.err.message})`, { copyA: a.err.code, copyB: b.err.code });
}

/**
 * Plans a superblock update: the changed superblock with generation + 1, to be
 * written at `offset` (the slot that is NOT current) and persisted before it
 * counts. After that, `{sb, copy}` is the current state.
 *
 * @param current what {@link readSuperblock} returned, or the previous result of this function.
 * @param changes the binding fields to change (volumeId, role, durability, label).
 * @throws TypeError `ERR_INVALID_ARG_VALUE` for unknown or immutable fields or an inconsistent result.
 */
export function nextSuperblockWrite(
  current: { sb: Superblock; copy: SuperblockCopy },
  changes: SuperblockChanges,
): { offset: number; bytes: Buffer; sb: Superblock; copy: SuperblockCopy } {
  const mutable = new Set(['volumeId', 'role', 'durability', 'label', 'epoch', 'holder']);
  for (const k of Object.keys(changes)) {
    if (!mutable.has(k)) throw argValueError(`changes.${k}`, 'cannot be changed after format', (changes as Record<string, unknown>)[k]);
  }
  const copy: SuperblockCopy = current.copy === 'A' ? 'B' : 'A';
  const sb: Superblock = { ...current.sb, ...changes, layoutVersion: LAYOUT_VERSION, generation: current.sb.generation + 1 };
  if (sb.epoch < current.sb.epoch) throw argValueError('changes.epoch', `must not go below ${current.sb.epoch}`, sb.epoch);
  return { offset: SUPERBLOCK_OFFSET[copy], bytes: encodeSuperblock(sb), sb, copy };
}
