/**
 * Write-ahead logs for the key-value store of examples/kv/store.ts: the one
 * interface the store commits through, and three implementations of it.
 *
 *   FileWal         a WAL on disk: one pwrite + one fdatasync per commit,
 *                   commits one after another (a committer that arrives while
 *                   another's fdatasync is in flight waits for it, then does
 *                   its own).
 *   GroupCommitWal  the same files with group commit: every record that arrives
 *                   while an fdatasync is in flight goes out together in the
 *                   next write + fdatasync (how PostgreSQL's WAL writer and
 *                   InnoDB's log amortise the flush).
 *   NpmuWal         an adapter over the npmu log (lib/log.ts, `NpmuLog`): its
 *                   append returns once the record is durable on both halves,
 *                   and it coalesces concurrent appends itself.
 *
 * The file WALs keep their records in preallocated, zero-filled segment files
 * (`wal-000001`, … of `segmentSize` bytes each), as PostgreSQL keeps WAL
 * segments: a commit overwrites zeros inside an allocated file, so its
 * fdatasync writes the data block(s) and no file size or extent change. A
 * record never spans two segments; when the next one is needed it is created
 * (zeros written and fsynced, and the directory fsynced) and the one after it
 * is prepared in the background.
 *
 * Record framing (little-endian), 16-byte header then the data:
 *   u32 length of data | u32 CRC-32C of (length, lsn, data) | u64 lsn | data
 * LSNs are 1, 2, 3, … with no gap. Replay stops at the first record that does
 * not check out (a CRC mismatch, a length past the segment, an LSN other than
 * the next one), so a torn tail — or the zeros past the end — is never taken
 * for a record. Opening a WAL for writing after a crash zeroes whatever
 * follows the last good record (the rest of its segment and any later
 * segment), so bytes of an unacknowledged write cannot be mistaken later for
 * records that follow new ones.
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { crc32c } from '../../lib/crc32c';

/** What the store needs of a log. */
export interface Wal {
  /** Make `record` durable; resolves to its LSN once it is. */
  append(record: Uint8Array): Promise<bigint>;
  /** Every durable record, in LSN order. */
  replay(): AsyncIterable<{ lsn: bigint; data: Buffer }>;
  close(): Promise<void>;
}

export const HEADER = 16;
const SEG_RE = /^wal-(\d{6})$/;
const segName = (n: number): string => `wal-${String(n).padStart(6, '0')}`;

/** A frame of `data` with `lsn` (header + data). */
export function frameRecord(lsn: bigint, data: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(HEADER + data.length);
  b.writeUInt32LE(data.length, 0);
  b.writeBigUInt64LE(lsn, 8);
  b.set(data, HEADER);
  b.writeUInt32LE(frameCrc(b, data.length), 4);
  return b;
}

function frameCrc(frame: Uint8Array, len: number): number {
  const c = crc32c(frame.subarray(0, 4));
  return crc32c(frame.subarray(8, HEADER + len), c);
}

/**
 * Parse the records of one segment from `at`, expecting LSN `expect` first.
 * Returns the records and the offset just past the last good one.
 */
export function parseSegment(buf: Buffer, at: number, expect: bigint): { records: Array<{ lsn: bigint; data: Buffer }>; end: number } {
  const records: Array<{ lsn: bigint; data: Buffer }> = [];
  let off = at;
  while (off + HEADER <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (off + HEADER + len > buf.length) break;
    if (buf.readBigUInt64LE(off + 8) !== expect) break;
    if (buf.readUInt32LE(off + 4) !== frameCrc(buf.subarray(off), len)) break;
    records.push({ lsn: expect, data: Buffer.from(buf.subarray(off + HEADER, off + HEADER + len)) });
    off += HEADER + len;
    expect++;
  }
  return { records, end: off };
}

export interface FileWalOptions {
  /** bytes per segment file (default 16 MiB, PostgreSQL's); a multiple of 4096 */
  segmentSize?: number;
}

interface Pending {
  frame: Buffer;
  lsn: bigint;
  resolve: (lsn: bigint) => void;
  reject: (e: Error) => void;
}

const ZERO = Buffer.alloc(1 << 20);

async function zeroFill(fh: fsp.FileHandle, from: number, to: number): Promise<void> {
  for (let off = from; off < to; off += ZERO.length) {
    const n = Math.min(ZERO.length, to - off);
    await fh.write(ZERO, 0, n, off);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const d = await fsp.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * The segmented file WAL. `groupCommit` false: one write + fdatasync per
 * record, in order; true: everything queued while a flush is in flight goes
 * out in the next one.
 */
class SegmentedFileWal implements Wal {
  readonly dir: string;
  readonly segmentSize: number;
  readonly groupCommit: boolean;
  #seg = 0; // current segment number
  #fh: fsp.FileHandle | undefined;
  #off = 0; // next write offset in the current segment
  #nextLsn = 1n;
  #queue: Pending[] = [];
  #flushing = false;
  #closed = false;
  #failed: Error | undefined;
  #prepared: Promise<void> | undefined; // the next segment, being zero-filled
  #flushes = 0;

  protected constructor(dir: string, segmentSize: number, groupCommit: boolean) {
    this.dir = dir;
    this.segmentSize = segmentSize;
    this.groupCommit = groupCommit;
  }

  /** The largest record (data bytes) a segment holds. */
  get maxRecord(): number {
    return this.segmentSize - HEADER;
  }

  /** The LSN the next append gets. */
  get nextLsn(): bigint {
    return this.#nextLsn;
  }

  /** write + fdatasync pairs done so far (one per commit without group commit). */
  get flushes(): number {
    return this.#flushes;
  }

  protected static async openWal<T extends SegmentedFileWal>(make: () => T): Promise<T> {
    const w = make();
    await w.#recover();
    return w;
  }

  #segments(): number[] {
    return fs
      .readdirSync(this.dir)
      .map((f) => SEG_RE.exec(f))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
  }

  /** Find the end of the log; zero everything after it; open the segment to write. */
  async #recover(): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    const segs = this.#segments();
    if (segs.length === 0) {
      await this.#createSegment(1);
      this.#seg = 1;
      this.#off = 0;
    } else {
      for (let i = 0; i < segs.length; i++) {
        if (segs[i] !== segs[0]! + i) throw new Error(`WAL ${this.dir}: segment ${segName(segs[0]! + i)} is missing`);
      }
      let expect = 1n;
      let endSeg = segs[0]!;
      let endOff = 0;
      for (const s of segs) {
        const buf = fs.readFileSync(path.join(this.dir, segName(s)));
        if (buf.length !== this.segmentSize) throw new Error(`WAL ${this.dir}: ${segName(s)} is ${buf.length} bytes, not the segment size ${this.segmentSize}`);
        const { records, end } = parseSegment(buf, 0, expect);
        if (records.length === 0 && s !== segs[0]) break; // the log ended in the previous segment
        expect += BigInt(records.length);
        endSeg = s;
        endOff = end;
        if (end + HEADER <= buf.length && !isZero(buf, end, buf.length)) break; // a torn or stale tail here: the end
      }
      this.#nextLsn = expect;
      // Zero what follows the end: the rest of its segment, and later segments.
      for (const s of segs) {
        if (s < endSeg) continue;
        const file = path.join(this.dir, segName(s));
        const buf = fs.readFileSync(file);
        const from = s === endSeg ? endOff : 0;
        if (!isZero(buf, from, buf.length)) {
          const fh = await fsp.open(file, 'r+');
          try {
            await zeroFill(fh, from, lastNonZero(buf) + 1);
            await fh.datasync();
          } finally {
            await fh.close();
          }
        }
      }
      this.#seg = endSeg;
      this.#off = endOff;
    }
    this.#fh = await fsp.open(path.join(this.dir, segName(this.#seg)), 'r+');
  }

  async #createSegment(n: number): Promise<void> {
    const file = path.join(this.dir, segName(n));
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w');
    try {
      await zeroFill(fh, 0, this.segmentSize);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await fsyncDir(this.dir);
  }

  /** The next segment exists (created now, or by the background preparation). */
  async #ensureSegment(n: number): Promise<void> {
    if (this.#prepared) await this.#prepared.catch(() => undefined);
    this.#prepared = undefined;
    if (!fs.existsSync(path.join(this.dir, segName(n)))) await this.#createSegment(n);
  }

  /** Reads every record, from the files (what a recovery would see). */
  async *replay(): AsyncIterable<{ lsn: bigint; data: Buffer }> {
    let expect = 1n;
    for (const s of this.#segments()) {
      const buf = await fsp.readFile(path.join(this.dir, segName(s)));
      const { records } = parseSegment(buf, 0, expect);
      if (records.length === 0) return;
      for (const r of records) yield r;
      expect += BigInt(records.length);
    }
  }

  append(record: Uint8Array): Promise<bigint> {
    if (!(record instanceof Uint8Array)) return Promise.reject(typeErr('record', 'a Uint8Array', record));
    if (this.#closed) return Promise.reject(Object.assign(new Error('the WAL is closed'), { code: 'ERR_WAL_CLOSED' }));
    if (this.#failed) return Promise.reject(this.#failed);
    if (record.length > this.maxRecord) {
      return Promise.reject(
        Object.assign(new RangeError(`a record of ${record.length} bytes does not fit in a ${this.segmentSize}-byte segment (at most ${this.maxRecord})`), {
          code: 'ERR_OUT_OF_RANGE',
        }),
      );
    }
    const lsn = this.#nextLsn++;
    const frame = frameRecord(lsn, record);
    return new Promise<bigint>((resolve, reject) => {
      this.#queue.push({ frame, lsn, resolve, reject });
      if (!this.#flushing) void this.#flushLoop();
    });
  }

  async #flushLoop(): Promise<void> {
    this.#flushing = true;
    try {
      while (this.#queue.length > 0) {
        // Without group commit: one record per write + fdatasync.
        const batch = this.groupCommit ? this.#queue.splice(0, this.#queue.length) : this.#queue.splice(0, 1);
        try {
          await this.#write(batch.map((p) => p.frame));
          for (const p of batch) p.resolve(p.lsn);
        } catch (e) {
          // A failed fsync leaves the file in an unknown state (PostgreSQL's
          // lesson): fail this batch and every later append.
          this.#failed = e instanceof Error ? e : new Error(String(e));
          for (const p of [...batch, ...this.#queue.splice(0)]) p.reject(this.#failed);
        }
      }
    } finally {
      this.#flushing = false;
    }
  }

  /** Write frames (in order) at the end, switching segments as needed, then fdatasync. */
  async #write(frames: Buffer[]): Promise<void> {
    let i = 0;
    while (i < frames.length) {
      // As many as fit in the current segment, in one write.
      let bytes = 0;
      let j = i;
      while (j < frames.length && this.#off + bytes + frames[j]!.length <= this.segmentSize) bytes += frames[j++]!.length;
      if (j === i) {
        // The next frame does not fit: move to the next segment.
        await this.#fh!.close();
        this.#fh = undefined;
        await this.#ensureSegment(this.#seg + 1);
        this.#seg++;
        this.#off = 0;
        this.#fh = await fsp.open(path.join(this.dir, segName(this.#seg)), 'r+');
        const next = this.#seg + 1;
        this.#prepared = fs.existsSync(path.join(this.dir, segName(next))) ? undefined : this.#createSegment(next);
        this.#prepared?.catch(() => undefined);
        continue;
      }
      const buf = j - i === 1 ? frames[i]! : Buffer.concat(frames.slice(i, j), bytes);
      let done = 0;
      while (done < bytes) {
        const { bytesWritten } = await this.#fh!.write(buf, done, bytes - done, this.#off + done);
        done += bytesWritten;
      }
      await this.#fh!.datasync();
      this.#flushes++;
      this.#off += bytes;
      i = j;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    while (this.#flushing) await new Promise((r) => setImmediate(r));
    if (this.#prepared) await this.#prepared.catch(() => undefined);
    await this.#fh?.close();
    this.#fh = undefined;
  }
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

function lastNonZero(buf: Buffer): number {
  for (let i = buf.length - 1; i >= 0; i--) if (buf[i] !== 0) return i;
  return -1;
}

function typeErr(name: string, expected: string, v: unknown): TypeError {
  const d = v === null ? 'null' : typeof v === 'object' ? `an instance of ${(v as object).constructor?.name ?? 'Object'}` : `type ${typeof v}`;
  return Object.assign(new TypeError(`The "${name}" argument must be ${expected}. Received ${d}`), { code: 'ERR_INVALID_ARG_TYPE' });
}

function checkOptions(dir: unknown, o: FileWalOptions | undefined): number {
  if (typeof dir !== 'string' || dir === '') throw typeErr('dir', 'a non-empty string', dir);
  const size = o?.segmentSize ?? 16 << 20;
  if (!Number.isSafeInteger(size) || size < 4096 || size % 4096 !== 0) {
    throw Object.assign(new RangeError(`segmentSize must be a positive multiple of 4096, not ${String(size)}`), { code: 'ERR_OUT_OF_RANGE' });
  }
  return size;
}

/** A WAL file on disk: write + fdatasync per commit, commits one after another. */
export class FileWal extends SegmentedFileWal {
  private constructor(dir: string, size: number) {
    super(dir, size, false);
  }
  /** Open (or create) the WAL in directory `dir`, recovering its end. */
  static async open(dir: string, opts?: FileWalOptions): Promise<FileWal> {
    const size = checkOptions(dir, opts);
    return SegmentedFileWal.openWal(() => new FileWal(dir, size));
  }
}

/** The same files with group commit: appends that arrive during a flush share the next one. */
export class GroupCommitWal extends SegmentedFileWal {
  private constructor(dir: string, size: number) {
    super(dir, size, true);
  }
  static async open(dir: string, opts?: FileWalOptions): Promise<GroupCommitWal> {
    const size = checkOptions(dir, opts);
    return SegmentedFileWal.openWal(() => new GroupCommitWal(dir, size));
  }
}

// ---- the npmu log ----------------------------------------------------------

/** The slice of lib/log.ts's NpmuLog that the adapter uses. */
export interface NpmuLogLike {
  append(record: Uint8Array): Promise<bigint>;
  read(fromLsn?: bigint): AsyncIterableIterator<{ lsn: bigint; data: Buffer }>;
  readonly firstLsn: bigint;
  readonly nextLsn: bigint;
  close(): Promise<void>;
}

/** The static side of NpmuLog (lib/log.ts). */
export interface NpmuLogClass {
  create(client: unknown, name: string, opts?: { size?: number }): Promise<void>;
  open(client: unknown, name: string, opts?: { writer?: boolean }): Promise<NpmuLogLike>;
}

/**
 * lib/log.ts's NpmuLog, if this build has it (it is written in parallel with
 * this example); undefined otherwise. Loaded at run time so that this file
 * compiles either way.
 */
export function loadNpmuLog(): NpmuLogClass | undefined {
  let mod: { NpmuLog?: NpmuLogClass };
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(path.join(__dirname, '..', '..', 'lib', 'log')) as { NpmuLog?: NpmuLogClass };
  } catch (e) {
    if ((e as { code?: string }).code === 'MODULE_NOT_FOUND') return undefined;
    throw e;
  }
  return mod.NpmuLog;
}

/** The npmu log as the store's WAL. */
export class NpmuWal implements Wal {
  readonly log: NpmuLogLike;
  constructor(log: NpmuLogLike) {
    this.log = log;
  }
  /**
   * Open log `name` on `client`'s volume as its writer, creating it (`size`
   * bytes) if it does not exist.
   */
  static async open(client: unknown, name: string, opts?: { size?: number }): Promise<NpmuWal> {
    const NpmuLog = loadNpmuLog();
    if (!NpmuLog) throw Object.assign(new Error('lib/log.ts (the npmu log) is not in this build'), { code: 'ERR_NPMU_LOG_MISSING' });
    try {
      await NpmuLog.create(client, name, opts);
    } catch (e) {
      if ((e as { code?: string }).code !== 'ERR_NPMU_REGION_EXISTS') throw e;
    }
    return new NpmuWal(await NpmuLog.open(client, name, { writer: true }));
  }
  append(record: Uint8Array): Promise<bigint> {
    return this.log.append(record);
  }
  async *replay(): AsyncIterable<{ lsn: bigint; data: Buffer }> {
    yield* this.log.read(this.log.firstLsn);
  }
  close(): Promise<void> {
    return this.log.close();
  }
}
