/**
 * One unit device: a devdax character device, a file on tmpfs, or an ordinary
 * file, mapped whole (MAP_SHARED) for the superblock and the metadata area
 * ([0035], [0059]-[0061]). The on-device format is unit/layout.ts; this file
 * does the I/O: recognise or format a device, bounded metadata reads/writes
 * for the PMM, superblock updates, and turning data-page extents into device
 * byte ranges for translation (the server maps those, [0040]).
 *
 * Error codes (NpmuError):
 * - `ERR_NPMU_NOT_FORMATTED`, `ERR_NPMU_LAYOUT_TOO_NEW`, `ERR_NPMU_CORRUPT`
 *   (layout.ts): refused unless a format is asked for.
 * - `ERR_NPMU_ALREADY_FORMATTED`: a format was asked for over a device that
 *   holds a superblock (valid, corrupt or newer) without `force`.
 * - `ERR_NPMU_DEVICE_MISMATCH`: the superblock does not fit this device
 *   (device smaller than the formatted capacity, or a page size this device
 *   cannot map, e.g. 4 KiB pages on a devdax device with 2 MiB alignment).
 * - `ERR_NPMU_DEVICE_TOO_SMALL` (layout.ts) at format time.
 * - `ERR_NPMU_BAD_EXTENT`: an extent outside the data pages.
 * - `ERR_NPMU_BAD_RANGE`: a metadata or persist range outside its area.
 * - `ERR_NPMU_READ_ONLY`: a write to a device opened read-only.
 * - `ERR_NPMU_CLOSED`: the device was closed.
 * - `ERR_NPMU_PERSIST_FAILED`: writing a range back to an ordinary file made
 *   no progress (a write of 0 bytes).
 * Mapping failures keep the native layer's codes (ENOENT, EACCES, …); the
 * write-back of an ordinary file keeps Node's (EIO, ENOSPC, … with `syscall`
 * `write` or `fdatasync`).
 *
 * Persistence of an ordinary file (`msync` durability) does not rely on
 * msync: an RDMA WRITE into a pinned page-cache page does not mark the page
 * dirty, so once writeback has cleaned the page, msync skips bytes written by
 * RDMA later. Instead a persist writes the range back through a file
 * descriptor (pwrite of the mapped bytes at their own file offsets, which
 * dirties the pages) and then calls fdatasync. tmpfs (msync, volatile anyway)
 * and devdax (pmem_persist) are persisted through the mapping.
 */
import * as fs from 'node:fs';
import { NpmuError, argTypeError, argValueError } from '../lib/errors';
import { mapFile } from '../lib/verbs';
import type { Extent, Mapping, MappingKind } from '../lib/verbs';
import {
  META_OFFSET,
  SUPERBLOCK_OFFSET,
  SUPERBLOCK_SLOT_SIZE,
  createSuperblock,
  encodeSuperblock,
  nextSuperblockWrite,
  planLayout,
  readSuperblock,
} from './layout';
import type { Durability, Superblock, SuperblockChanges, SuperblockCopy } from './layout';

/** A run of data pages, as the PMM names them in `map`. */
export interface PageExtent {
  page: number;
  pages: number;
}

export interface OpenOptions {
  /** Create a regular file (tmpfs or ordinary) if missing, and grow it to `size` bytes if smaller (never shrinks). */
  create?: { size: number };
  /** Format the device: only an unformatted one, unless `force`. */
  format?: { label?: string; metaLength?: number; unitId?: string };
  /** With `format`: overwrite a device that already has a superblock (a new unit id; the metadata area is zeroed). */
  force?: boolean;
  /** Map read-only (for `info`); no writes are possible. */
  readOnly?: boolean;
}

/**
 * The platform's persistence domain for a device, as the kernel's nd region
 * reports it: `cpu_cache` (eADR: CPU caches are persistent, a byte placed by
 * the RDMA responder is durable), `memory_controller` (ADR: bytes must be
 * flushed out of the CPU caches, pmem_persist), `none` (not listed, unknown,
 * or not persistent memory at all).
 */
export type PersistDomain = 'cpu_cache' | 'memory_controller' | 'none';
export const PERSIST_DOMAINS: readonly PersistDomain[] = ['cpu_cache', 'memory_controller', 'none'];

/**
 * The persistence domain of a devdax device from sysfs: the character
 * device's node (/sys/dev/char/MAJ:MIN, else /sys/bus/dax/devices/daxN.M)
 * resolves to a path under its nd region (…/ndbusX/regionY/daxY.Z/daxY.Z),
 * whose `persistence_domain` file names the domain. Anything else — not a
 * devdax device, no region found, the file absent or empty — is 'none'.
 * `sysfs` is for tests.
 */
export function persistDomainOf(devicePath: string, sysfs = '/sys'): PersistDomain {
  let dir: string | undefined;
  try {
    const st = fs.statSync(devicePath, { bigint: true });
    if (!st.isCharacterDevice()) return 'none';
    const r = st.rdev; // glibc's dev_t encoding (major/minor split across the word)
    const major = ((r >> 8n) & 0xfffn) | ((r >> 32n) & ~0xfffn);
    const minor = (r & 0xffn) | ((r >> 12n) & ~0xffn);
    for (const p of [`${sysfs}/dev/char/${major}:${minor}`, `${sysfs}/bus/dax/devices/${devicePath.split('/').pop()}`]) {
      try {
        dir = fs.realpathSync(p);
        break;
      } catch {
        // try the next
      }
    }
  } catch {
    return 'none';
  }
  for (let d = dir; d && d !== '/' && d.startsWith(sysfs); d = d.slice(0, d.lastIndexOf('/'))) {
    if (!/\/region[0-9]+$/.test(d)) continue;
    let v = '';
    try {
      v = fs.readFileSync(`${d}/persistence_domain`, 'utf8').trim();
    } catch {
      return 'none';
    }
    return v === 'cpu_cache' || v === 'memory_controller' ? v : 'none';
  }
  return 'none';
}

/** What the device can promise for persisted bytes, from the kind of mapping (never from the superblock). */
export function durabilityOf(kind: MappingKind): Durability {
  return kind === 'devdax' ? 'pmem' : kind === 'tmpfs' ? 'volatile' : 'msync';
}

function badRange(what: string, offset: number, length: number, limit: number): NpmuError {
  return new NpmuError('ERR_NPMU_BAD_RANGE', `${what}: [${offset}, ${offset + length}) is outside [0, ${limit})`, { offset, length, limit });
}

function isUint(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

export class UnitDevice {
  readonly path: string;
  readonly kind: MappingKind;
  /** pmem (devdax), msync (ordinary file), volatile (tmpfs). */
  readonly durability: Durability;
  /** The platform's persistence domain from sysfs (devdax); 'none' for files (tmpfs: volatile; ordinary files: msync is their flush). */
  readonly persistDomain: PersistDomain;
  readonly readOnly: boolean;
  /** True when this open formatted the device. */
  readonly formatted: boolean;
  #map: Mapping;
  #view: Buffer;
  #sb: Superblock;
  #copy: SuperblockCopy;
  /** Ordinary files opened for writing: where persists write back to (then fdatasync). */
  #fd: number | undefined;

  private constructor(path: string, map: Mapping, fd: number | undefined, sb: Superblock, copy: SuperblockCopy, formatted: boolean, readOnly: boolean) {
    this.path = path;
    this.#map = map;
    this.#fd = fd;
    this.kind = map.kind;
    this.durability = durabilityOf(map.kind);
    this.persistDomain = map.kind === 'devdax' ? persistDomainOf(path) : 'none';
    this.readOnly = readOnly;
    this.formatted = formatted;
    this.#view = Buffer.from(map.buffer());
    this.#sb = sb;
    this.#copy = copy;
  }

  /**
   * Opens (and on request creates and/or formats) a unit device.
   * @throws NpmuError (see the file comment), or the native layer's errors for the mapping.
   */
  static open(path: string, opts: OpenOptions = {}): UnitDevice {
    if (typeof path !== 'string' || path === '') throw argTypeError('path', 'a non-empty string', path);
    if (typeof opts !== 'object' || opts === null) throw argTypeError('opts', 'an object', opts);
    const { create, format, force = false, readOnly = false } = opts;
    if (create !== undefined && (typeof create !== 'object' || create === null || !isUint(create.size) || create.size === 0)) {
      throw argValueError('opts.create.size', 'must be a positive safe integer', create?.size);
    }
    if (format !== undefined && (typeof format !== 'object' || format === null)) throw argTypeError('opts.format', 'an object', format);
    if (format && readOnly) throw argValueError('opts.readOnly', 'cannot be combined with format', readOnly);

    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(path);
    } catch {
      st = undefined; // missing: mapFile creates it or reports ENOENT
    }
    const regular = st === undefined || st.isFile();
    // A read-only devdax mapping has no buffer() (a store would fault): map it
    // read-write and let #check refuse every write instead.
    const mapReadOnly = readOnly && !st?.isCharacterDevice();
    const map = mapFile(path, create && regular && !readOnly ? { create: true, size: create.size } : { readOnly: mapReadOnly });
    let fd: number | undefined;
    try {
      if (map.kind === 'file' && !readOnly) {
        fd = fs.openSync(path, 'r+');
        const size = fs.fstatSync(fd).size;
        if (size < map.deviceSize) {
          throw new NpmuError('ERR_NPMU_DEVICE_MISMATCH', `${path} changed while it was opened (${size} bytes, mapped ${map.deviceSize})`, { path });
        }
      }
      return UnitDevice.#init(path, map, fd, opts, force, readOnly);
    } catch (err) {
      if (fd !== undefined) fs.closeSync(fd);
      map.close();
      throw err;
    }
  }

  static #init(path: string, map: Mapping, fd: number | undefined, opts: OpenOptions, force: boolean, readOnly: boolean): UnitDevice {
    const view = Buffer.from(map.buffer());
    let found: ReturnType<typeof readSuperblock> | undefined;
    let problem: NpmuError | undefined;
    try {
      found = readSuperblock(view);
    } catch (err) {
      if (!(err instanceof NpmuError)) throw err;
      problem = err;
    }
    if (opts.format) {
      if (problem?.code !== 'ERR_NPMU_NOT_FORMATTED' && !force) {
        const what = found ? `unit ${found.sb.unitId}` : `a superblock (${problem?.code})`;
        throw new NpmuError('ERR_NPMU_ALREADY_FORMATTED', `${path} already holds ${what}; formatting destroys it: pass force to reformat`, {
          path,
          unitId: found?.sb.unitId,
        });
      }
      const persist = (offset: number, length: number): void => void UnitDevice.#persistDevice(map, view, fd, [{ offset, length }]);
      const sb = UnitDevice.#format(map, view, persist, opts.format);
      return new UnitDevice(path, map, fd, sb, 'A', true, false);
    }
    if (problem) {
      problem.message = `${path}: ${problem.message}`;
      problem.path = path;
      throw problem;
    }
    const sb = found!.sb;
    if (sb.capacity > map.deviceSize) {
      throw new NpmuError('ERR_NPMU_DEVICE_MISMATCH', `${path} is ${map.deviceSize} bytes but was formatted for ${sb.capacity}`, {
        path,
        capacity: sb.capacity,
        deviceSize: map.deviceSize,
      });
    }
    if (sb.pageSize % map.pageSize !== 0) {
      throw new NpmuError(
        'ERR_NPMU_DEVICE_MISMATCH',
        `${path} was formatted with ${sb.pageSize}-byte pages, which this ${map.kind} device (alignment ${map.pageSize}) cannot map`,
        { path, pageSize: sb.pageSize, alignment: map.pageSize },
      );
    }
    return new UnitDevice(path, map, fd, sb, found!.copy, false, readOnly);
  }

  /** Writes a new format: old superblocks invalidated first, metadata area zeroed, then copy A, then copy B. */
  static #format(map: Mapping, view: Buffer, persist: (offset: number, length: number) => void, f: NonNullable<OpenOptions['format']>): Superblock {
    // Pages of the device's alignment on devdax (4 KiB or 2 MiB, as its
    // namespace was created), 4 KiB elsewhere (the system page).
    const layout = planLayout({ capacity: map.deviceSize, pageSize: map.pageSize, metaLength: f.metaLength });
    const sb = createSuperblock(layout, { durability: durabilityOf(map.kind), label: f.label, unitId: f.unitId });
    const bytes = encodeSuperblock(sb);
    // A format cut short leaves "not formatted" or the new unit, never a mix
    // of an old superblock and a new (zeroed) metadata area.
    view.fill(0, 0, META_OFFSET);
    persist(0, META_OFFSET);
    view.fill(0, layout.metaOffset, layout.metaOffset + layout.metaLength);
    persist(layout.metaOffset, layout.metaLength);
    for (const copy of ['A', 'B'] as const) {
      bytes.copy(view, SUPERBLOCK_OFFSET[copy]);
      persist(SUPERBLOCK_OFFSET[copy], SUPERBLOCK_SLOT_SIZE);
    }
    return sb;
  }

  /**
   * Makes device byte ranges durable: on an ordinary file, each range is
   * written back through `fd` from the mapping (pwrite of the mapped bytes at
   * their own offsets) and then one fdatasync; elsewhere the mapping persists
   * them (pmem_persist on devdax, msync on tmpfs).
   */
  static #persistDevice(map: Mapping, view: Buffer, fd: number | undefined, ranges: readonly Extent[]): 'pmem' | 'msync' {
    if (fd === undefined) {
      let method: 'pmem' | 'msync' = map.kind === 'devdax' ? 'pmem' : 'msync';
      for (const r of ranges) method = map.persist(r.offset, r.length);
      return method;
    }
    let any = false;
    for (const { offset, length } of ranges) {
      for (let done = 0; done < length; ) {
        const n = fs.writeSync(fd, view, offset + done, length - done, offset + done);
        if (n <= 0) {
          throw new NpmuError('ERR_NPMU_PERSIST_FAILED', `writing [${offset}, ${offset + length}) back to the file made no progress`, { offset, length });
        }
        done += n;
        any = true;
      }
    }
    if (any) fs.fdatasyncSync(fd);
    return 'msync';
  }

  #persist(ranges: readonly Extent[]): 'pmem' | 'msync' {
    return UnitDevice.#persistDevice(this.#map, this.#view, this.#fd, ranges);
  }

  /** The current superblock (a copy). */
  get superblock(): Superblock {
    return { ...this.#sb };
  }

  get unitId(): string {
    return this.#sb.unitId;
  }

  get pageSize(): number {
    return this.#sb.pageSize;
  }

  get dataPages(): number {
    return this.#sb.dataPages;
  }

  get capacity(): number {
    return this.#sb.capacity;
  }

  get metaLength(): number {
    return this.#sb.metaLength;
  }

  get closed(): boolean {
    return this.#map.closed;
  }

  #check(write: boolean): void {
    if (this.#map.closed) throw new NpmuError('ERR_NPMU_CLOSED', `unit device ${this.path} is closed`);
    if (write && this.readOnly) throw new NpmuError('ERR_NPMU_READ_ONLY', `unit device ${this.path} is open read-only`);
  }

  #metaRange(offset: number, length: number): void {
    if (!isUint(offset) || !isUint(length) || offset + length > this.#sb.metaLength) {
      throw badRange('metadata area', offset, length, this.#sb.metaLength);
    }
  }

  /** Reads `length` bytes at `offset` of the metadata area ([0060]); a copy. */
  readMeta(offset: number, length: number): Buffer {
    this.#check(false);
    this.#metaRange(offset, length);
    const start = this.#sb.metaOffset + offset;
    return Buffer.from(this.#view.subarray(start, start + length));
  }

  /** Writes into the metadata area; with `persist`, returns only once the bytes are as durable as the device allows. */
  writeMeta(offset: number, data: Uint8Array, persist: boolean): void {
    this.#check(true);
    if (!(data instanceof Uint8Array)) throw argTypeError('data', 'an instance of Uint8Array', data);
    this.#metaRange(offset, data.length);
    const start = this.#sb.metaOffset + offset;
    this.#view.set(data, start);
    if (persist && data.length > 0) this.#persist([{ offset: start, length: data.length }]);
  }

  /**
   * Changes the binding fields of the superblock (volumeId, role, label,
   * durability): generation + 1 into the other slot, persisted before it
   * counts (layout.ts).
   */
  updateSuperblock(changes: SuperblockChanges): Superblock {
    this.#check(true);
    const w = nextSuperblockWrite({ sb: this.#sb, copy: this.#copy }, changes);
    w.bytes.copy(this.#view, w.offset);
    this.#persist([{ offset: w.offset, length: SUPERBLOCK_SLOT_SIZE }]);
    this.#sb = w.sb;
    this.#copy = w.copy;
    return this.superblock;
  }

  /**
   * Device byte ranges of data-page extents, in order (what `mapExtents` takes).
   * @throws NpmuError `ERR_NPMU_BAD_EXTENT` for an extent outside the data pages.
   */
  extentRanges(extents: readonly PageExtent[]): Extent[] {
    if (!Array.isArray(extents) || extents.length === 0) {
      throw new NpmuError('ERR_NPMU_BAD_EXTENT', 'at least one extent is needed');
    }
    const { dataOffset, dataPages, pageSize } = this.#sb;
    return extents.map((e, i) => {
      const page = e?.page;
      const pages = e?.pages;
      if (!isUint(page) || !isUint(pages) || pages === 0 || page + pages > dataPages) {
        throw new NpmuError('ERR_NPMU_BAD_EXTENT', `extents[${i}]: pages [${page}, ${Number(page) + Number(pages)}) are not within the ${dataPages} data pages`, {
          index: i,
          page,
          pages,
          dataPages,
        });
      }
      return { offset: dataOffset + page * pageSize, length: pages * pageSize };
    });
  }

  /**
   * Persists `length` bytes from `offset` bytes into data page `page` (may span pages).
   * With `source` (shadow mode: a buffer laid out like the device), the bytes
   * are first copied from it into the device.
   * @returns how: 'pmem' (cache flush) or 'msync' (an ordinary file: written
   *   back through the file descriptor, then fdatasync). On tmpfs 'msync' is
   *   all there is: the device is volatile across power loss, which
   *   `durability` says.
   */
  persistData(page: number, offset: number, length: number, source?: Uint8Array): 'pmem' | 'msync' {
    this.#check(false);
    const { dataOffset, dataPages, pageSize } = this.#sb;
    const area = dataPages * pageSize;
    const start = isUint(page) && isUint(offset) ? page * pageSize + offset : NaN;
    if (!isUint(start) || !isUint(length) || length === 0 || start + length > area) {
      throw badRange(`data pages (page ${page}, offset ${offset})`, Number.isFinite(start) ? start : 0, Number(length), area);
    }
    return this.persistDeviceRange(dataOffset + start, length, source);
  }

  /**
   * Persists device bytes [offset, offset + length), which must lie in the
   * data pages (offsets are the device's, as in {@link extentRanges}); with
   * `source` (shadow mode), copies them from it first.
   */
  persistDeviceRange(offset: number, length: number, source?: Uint8Array): 'pmem' | 'msync' {
    this.#dataRange(offset, length);
    if (source) {
      this.#check(true);
      this.#view.set(source.subarray(offset, offset + length), offset);
    } else {
      this.#check(false);
    }
    return this.#persist([{ offset, length }]);
  }

  /** Copies device bytes [offset, offset + length) of the data pages into `target` at the same offsets (fills a shadow). */
  copyDataTo(target: Uint8Array, offset: number, length: number): void {
    this.#check(false);
    this.#dataRange(offset, length);
    target.set(this.#view.subarray(offset, offset + length), offset);
  }

  #dataRange(offset: number, length: number): void {
    const { dataOffset, dataPages, pageSize } = this.#sb;
    const end = dataOffset + dataPages * pageSize;
    if (!isUint(offset) || !isUint(length) || length === 0 || offset < dataOffset || offset + length > end) {
      throw badRange('data pages (device offsets)', Number(offset), Number(length), end);
    }
  }

  /**
   * Persists bytes [offset, offset+length) of a mapping made of the device
   * byte ranges `ranges` (what `extentRanges` returned for it), by the device
   * ranges they cover — for ordinary files, whose RDMA-written bytes msync
   * would not see (see the file comment).
   * @throws NpmuError `ERR_NPMU_BAD_RANGE` when the range is not within the mapping.
   */
  persistMapped(ranges: readonly Extent[], offset: number, length: number): 'pmem' | 'msync' {
    this.#check(false);
    const total = ranges.reduce((n, r) => n + r.length, 0);
    if (!isUint(offset) || !isUint(length) || offset + length > total) throw badRange('mapping', Number(offset), Number(length), total);
    const pieces: Extent[] = [];
    let at = offset;
    let left = length;
    let base = 0;
    for (const r of ranges) {
      if (left === 0) break;
      if (at < base + r.length) {
        const n = Math.min(left, base + r.length - at);
        pieces.push({ offset: r.offset + (at - base), length: n });
        at += n;
        left -= n;
      }
      base += r.length;
    }
    return this.#persist(pieces);
  }

  /** Unmaps the device (and closes its file descriptor). Idempotent. */
  close(): void {
    this.#map.close();
    if (this.#fd !== undefined) {
      const fd = this.#fd;
      this.#fd = undefined;
      fs.closeSync(fd);
    }
  }
}
