/**
 * A persistent log on an npmu region: the spec's "log tail" ([0051]).
 *
 * ```ts
 * await NpmuLog.create(client, 'wal', { size: 4 << 20 });
 * const log = await NpmuLog.open(client, 'wal');              // the writer (one per log, by lease)
 * const lsn = await log.append(Buffer.from('commit 42'));     // durable on both halves
 * for await (const r of log.read(1n)) console.log(r.lsn, r.data);
 * await log.truncate(lsn);                                     // once the records are safe elsewhere
 * await log.close();
 * ```
 *
 * The format is lib/log-format.ts; docs/log.md has the format, the
 * recovery argument, group commit, the lease and the errors.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Mirror, ReadFrom } from './client';
import type { NpmuClient, RegionHandle } from './client';
import { NpmuError, argRangeError, argTypeError } from './errors';
import {
  FRAME_HEADER,
  HEADER_SIZE,
  LEASE_OFFSET,
  MIN_LOG_SIZE,
  RESERVE,
  TRUNC_OFFSET,
  TRUNC_SLOT,
  decodeSuperblock,
  decodeTruncation,
  encodeFrame,
  encodeTruncation,
  formatHeader,
  frameSize,
  maxPayload,
  planAppend,
  scan,
} from './log-format';
import type { DataReader } from './log-format';

export interface LogCreateOptions {
  /** Bytes of the region (header + data area), a multiple of 8, ≥ 8 KiB. Default 4 MiB. */
  size?: number;
  /** Base pointer of the region (see NpmuClient.createRegion). Default 0. */
  basePointer?: bigint;
}

export interface LogOpenOptions {
  /** Open as the log's one writer (takes the lease). Default true. false: read only. */
  writer?: boolean;
  /** The writer's lease, ms (10 ms steps, ≤ 655 s): renewed every leaseMs/4; another opener waits this long for a silent holder. Default 5000. */
  leaseMs?: number;
  /** Most framed bytes one group-commit write carries (a larger single append goes alone). Default 256 KiB. */
  maxBatchBytes?: number;
}

export interface LogStats {
  /** records appended by this instance */
  appends: number;
  /** group-commit writes posted (each one post + one persistence step per half) */
  writes: number;
  /** truncation headers written */
  truncations: number;
}

/** A queued append: one record (append) or several (appendMany), acknowledged together. */
interface Pending {
  recs: Uint8Array[];
  /** framed bytes of recs */
  bytes: number;
  /** called with the first record's LSN once the write holding them is durable on both halves */
  done: (first: bigint) => void;
  reject: (e: Error) => void;
}

const DEFAULT_SIZE = 4 << 20;
const DEFAULT_LEASE_MS = 5000;
const DEFAULT_BATCH = 256 << 10;
const READ_CHUNK = 1 << 20;
const IMAGE_CHUNK = 16 << 20;
/** The options of every log write: both halves, durable (frozen: the client checks it on every call). */
const DURABLE_BOTH = Object.freeze({ mirror: Mirror.BOTH, durable: true });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Lease word: bits 63..48 owner tag (≠ 0), 47..32 lease length in 10 ms units, 31..0 heartbeat counter. 0 = free. */
const leaseWord = (tag: number, leaseMs: number, counter: number): bigint =>
  (BigInt(tag) << 48n) | (BigInt(Math.ceil(leaseMs / 10)) << 32n) | BigInt(counter >>> 0);
const leaseMsOf = (w: bigint): number => Number((w >> 32n) & 0xffffn) * 10;
const leaseTagOf = (w: bigint): number => Number(w >> 48n);

export class NpmuLog {
  readonly client: NpmuClient;
  readonly handle: RegionHandle;
  readonly writer: boolean;
  /** Random id of this log (seeds every CRC). */
  readonly logId: bigint;
  /** Bytes of the region the log uses. */
  readonly size: number;
  /** Bytes of the circular data area. */
  readonly dataSize: number;
  readonly leaseMs: number;
  readonly maxBatchBytes: number;

  #first: bigint;
  #next: bigint;
  #head: number; // data offset of record #first (or == #tail when empty)
  #tail: number; // data offset where the next frame goes
  #truncSeq: bigint;
  #offs: number[] = []; // offs[i - #offsStart] = data offset of record #first + i (writer only)
  #offsStart = 0;
  #queue: Pending[] = [];
  #flushing: Promise<void> | null = null;
  #failed: Error | null = null;
  #closed = false;
  #truncating: Promise<void> = Promise.resolve();
  #staging: Buffer | null = null;
  #stats: LogStats = { appends: 0, writes: 0, truncations: 0 };
  // lease
  #leaseWord = 0n;
  #validUntil = 0;
  #leaseLost: Error | null = null;
  #renewing: Promise<void> | null = null;
  #timer: NodeJS.Timeout | null = null;

  private constructor(client: NpmuClient, handle: RegionHandle, writer: boolean, sb: { size: number; logId: bigint }, leaseMs: number, maxBatch: number) {
    this.client = client;
    this.handle = handle;
    this.writer = writer;
    this.size = sb.size;
    this.logId = sb.logId;
    this.dataSize = sb.size - HEADER_SIZE;
    this.leaseMs = leaseMs;
    this.maxBatchBytes = maxBatch;
    this.#first = 1n;
    this.#next = 1n;
    this.#head = 0;
    this.#tail = 0;
    this.#truncSeq = 0n;
  }

  /** Creates region `name` and formats it as an empty log (ERR_NPMU_REGION_EXISTS if it exists). */
  static async create(client: NpmuClient, name: string, opts: LogCreateOptions = {}): Promise<void> {
    const size = opts.size ?? DEFAULT_SIZE;
    if (typeof size !== 'number') throw argTypeError('opts.size', 'of type number', size);
    if (!Number.isSafeInteger(size) || size < MIN_LOG_SIZE || size % 8 !== 0) throw argRangeError('opts.size', `a multiple of 8 that is at least ${MIN_LOG_SIZE}`, size);
    await client.createRegion(name, size, opts.basePointer ?? 0n);
    const h = await client.openRegion(name);
    try {
      const logId = randomBytes(8).readBigUInt64LE(0) | 1n;
      await client.writeRegion(h, formatHeader(size, logId), HEADER_SIZE, h.basePointer, { mirror: Mirror.BOTH, durable: true });
    } finally {
      await client.closeRegion(h);
    }
  }

  /**
   * Opens log `name`. As the writer (default) it first takes the lease
   * (ERR_NPMU_LOG_BUSY while another live writer holds it; waits one lease
   * length if a holder is silent), then recovers: finds the end, and makes
   * both halves equal to what it found (docs/log.md). A reader
   * (`writer: false`) only finds the end.
   */
  static async open(client: NpmuClient, name: string, opts: LogOpenOptions = {}): Promise<NpmuLog> {
    const writer = opts.writer ?? true;
    if (typeof writer !== 'boolean') throw argTypeError('opts.writer', 'of type boolean', writer);
    const leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS;
    if (typeof leaseMs !== 'number' || !Number.isInteger(leaseMs) || leaseMs < 40 || leaseMs > 655_350) throw argRangeError('opts.leaseMs', 'an integer in [40, 655350]', leaseMs);
    const maxBatch = opts.maxBatchBytes ?? DEFAULT_BATCH;
    if (typeof maxBatch !== 'number' || !Number.isSafeInteger(maxBatch) || maxBatch < 64) throw argRangeError('opts.maxBatchBytes', 'an integer ≥ 64', maxBatch);
    const h = await client.openRegion(name);
    let log: NpmuLog | undefined;
    try {
      if (h.size < MIN_LOG_SIZE) throw new NpmuError('ERR_NPMU_NOT_A_LOG', `region ${name} (${h.size} bytes) is too small to hold a log`);
      const hdr = Buffer.alloc(HEADER_SIZE);
      await client.readRegion(h, hdr, HEADER_SIZE, h.basePointer);
      const sb = decodeSuperblock(hdr, h.size);
      log = new NpmuLog(client, h, writer, sb, leaseMs, Math.min(maxBatch, sb.size - HEADER_SIZE));
      if (writer) await log.#acquire();
      await log.#recover();
      return log;
    } catch (e) {
      if (log?.writer && log.#leaseWord !== 0n) await log.#release().catch(() => undefined);
      await client.closeRegion(h).catch(() => undefined);
      throw e;
    }
  }

  /** The first readable LSN (the first not truncated). */
  get firstLsn(): bigint {
    return this.#first;
  }

  /** The LSN the next appended record gets. */
  get nextLsn(): bigint {
    return this.#next;
  }

  /** Framed bytes free in the data area (a record of n bytes takes 24 + n rounded up to 8, plus up to one wrap). */
  get bytesFree(): number {
    return this.dataSize - RESERVE - this.#used();
  }

  get stats(): Readonly<LogStats> {
    return { ...this.#stats };
  }

  /** Appends one record; resolves with its LSN once it is durable on both halves. */
  append(record: Uint8Array): Promise<bigint> {
    // Not async, no array: one promise, settled by the flush (the hot path of a commit).
    try {
      if (!(record instanceof Uint8Array)) throw argTypeError('record', 'an instance of Uint8Array or Buffer', record);
      const max = maxPayload(this.dataSize);
      if (record.length > max) throw argRangeError('record.length', `at most ${max} bytes (the log's data area is ${this.dataSize} bytes)`, record.length);
      this.#checkWritable();
      return new Promise<bigint>((resolve, reject) => {
        this.#queue.push({ recs: [record], bytes: frameSize(record.length), done: resolve, reject });
        this.#kick();
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Appends records with consecutive LSNs, all in the same group-commit write
   * (so all or none of them is acknowledged); resolves with their LSNs.
   */
  appendMany(records: Uint8Array[]): Promise<bigint[]> {
    try {
      if (!Array.isArray(records)) throw argTypeError('records', 'an Array of Uint8Array', records);
      if (records.length === 0) return Promise.resolve([]);
      let total = 0;
      const max = maxPayload(this.dataSize);
      for (let i = 0; i < records.length; i++) {
        const r = records[i];
        if (!(r instanceof Uint8Array)) throw argTypeError(records.length === 1 ? 'record' : `records[${i}]`, 'an instance of Uint8Array or Buffer', r);
        if (r.length > max) throw argRangeError(records.length === 1 ? 'record.length' : `records[${i}].length`, `at most ${max} bytes (the log's data area is ${this.dataSize} bytes)`, r.length);
        total += frameSize(r.length);
      }
      if (total > this.dataSize - RESERVE - FRAME_HEADER) throw argRangeError('records', `at most ${this.dataSize - RESERVE - FRAME_HEADER} framed bytes in one call`, total);
      this.#checkWritable();
      const recs = records.slice();
      return new Promise<bigint[]>((resolve, reject) => {
        const done = (first: bigint): void => resolve(recs.map((_, i) => first + BigInt(i)));
        this.#queue.push({ recs, bytes: total, done, reject });
        this.#kick();
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Records in LSN order from `fromLsn` (default, or when it is below: the
   * first not truncated) to the end as it is when the iteration starts (a
   * writer) or as found (a reader). Every record yielded passed its CRC.
   */
  async *read(fromLsn?: bigint): AsyncIterableIterator<{ lsn: bigint; data: Buffer }> {
    if (fromLsn !== undefined && typeof fromLsn !== 'bigint') throw argTypeError('fromLsn', 'of type bigint', fromLsn);
    this.#checkOpen();
    let lsn: bigint;
    let off: number;
    let stop: bigint | undefined;
    if (this.writer) {
      lsn = fromLsn !== undefined && fromLsn > this.#first ? fromLsn : this.#first;
      stop = this.#next;
      if (lsn >= stop) return;
      off = this.#offsetOf(lsn);
    } else {
      const t = await this.#readTruncation();
      lsn = t.firstLsn;
      off = t.firstOff;
      this.#first = t.firstLsn;
      this.#head = t.firstOff;
    }
    const { reader, done } = this.#reader();
    try {
      for (;;) {
        // A writer knows where the records end: read no more than that (small reads go through staging memory).
        const span = this.writer ? (this.#tail - off + this.dataSize) % this.dataSize || this.dataSize : READ_CHUNK;
        const it = scan(reader, this.dataSize, this.logId, lsn, off, { chunk: Math.min(READ_CHUNK, Math.max(4096, span)), stopLsn: stop });
        let r = await it.next();
        for (; !r.done; r = await it.next()) {
          if (fromLsn !== undefined && r.value.lsn < fromLsn) continue;
          yield { lsn: r.value.lsn, data: r.value.data };
        }
        const end = r.value;
        // Truncated (and the space reused) while we read: go on from the new first record.
        let first: bigint;
        let firstOff: number;
        if (this.writer) {
          first = this.#first;
          firstOff = first < this.#next ? this.#offsetOf(first) : this.#tail;
        } else {
          const t = await this.#readTruncation();
          first = this.#first = t.firstLsn;
          firstOff = this.#head = t.firstOff;
        }
        if (end.nextLsn < first && (stop === undefined || first < stop)) {
          lsn = first;
          off = firstOff;
          continue;
        }
        if (stop !== undefined && end.nextLsn < stop && end.nextLsn >= first) {
          throw new NpmuError('ERR_NPMU_LOG_CORRUPT', `record ${end.nextLsn} of the log fails its check (it was acknowledged and not truncated)`);
        }
        if (!this.writer && end.nextLsn >= first) {
          this.#next = end.nextLsn;
          this.#tail = end.tail;
        }
        return;
      }
    } finally {
      done();
    }
  }

  /**
   * Frees the records with lsn ≤ upToLsn (the caller has them safe
   * elsewhere): writes the new first LSN and its offset durably into the
   * header's other truncation slot, on both halves, then reuses the space.
   * ERR_OUT_OF_RANGE if upToLsn ≥ nextLsn; nothing happens if upToLsn < firstLsn.
   */
  truncate(upToLsn: bigint): Promise<void> {
    const run = async (): Promise<void> => {
      if (typeof upToLsn !== 'bigint') throw argTypeError('upToLsn', 'of type bigint', upToLsn);
      this.#checkWritable();
      if (upToLsn >= this.#next) throw argRangeError('upToLsn', `below nextLsn (${this.#next}): only appended records can be truncated`, upToLsn);
      if (upToLsn < this.#first) return;
      const first = upToLsn + 1n;
      const off = first < this.#next ? this.#offsetOf(first) : this.#tail;
      await this.#ensureLease();
      const seq = this.#truncSeq + 1n;
      await this.#writeTruncation(seq, first, off);
      this.#truncSeq = seq;
      this.#stats.truncations++;
      const drop = Number(first - this.#first);
      this.#offsStart += Math.min(drop, this.#offs.length - this.#offsStart);
      if (this.#offsStart > 1024 && this.#offsStart * 2 > this.#offs.length) {
        this.#offs = this.#offs.slice(this.#offsStart);
        this.#offsStart = 0;
      }
      this.#first = first;
      this.#head = off;
    };
    const p = this.#truncating.then(run, run);
    this.#truncating = p.catch(() => undefined);
    return p;
  }

  /** Waits for queued appends, releases the lease (a writer) and closes the region handle. */
  async close(): Promise<void> {
    if (this.#closed) return;
    while (this.#flushing) await this.#flushing;
    await this.#truncating;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    if (this.writer && this.#leaseWord !== 0n && !this.#leaseLost) await this.#release().catch(() => undefined);
    if (this.#staging) this.client.releaseBuffer(this.#staging);
    await this.client.closeRegion(this.handle);
  }

  // ---- internals ---------------------------------------------------------------

  #used(): number {
    return (this.#tail - this.#head + this.dataSize) % this.dataSize;
  }

  #offsetOf(lsn: bigint): number {
    const i = this.#offsStart + Number(lsn - this.#first);
    const o = this.#offs[i];
    if (o === undefined) throw new Error(`internal: no offset for LSN ${lsn}`);
    return o;
  }

  #checkOpen(): void {
    if (this.#closed) throw new NpmuError('ERR_NPMU_LOG_CLOSED', `log ${this.handle.name} is closed`);
  }

  #checkWritable(): void {
    this.#checkOpen();
    if (!this.writer) throw new NpmuError('ERR_NPMU_LOG_READ_ONLY', `log ${this.handle.name} was opened with writer: false`);
    if (this.#leaseLost) throw this.#leaseLost;
    if (this.#failed) throw this.#failed;
  }

  /** A DataReader over readRegion with one reusable buffer (released by done()). */
  #reader(): { reader: DataReader; done: () => void } {
    let buf: Buffer | null = null;
    const reader: DataReader = async (off, len) => {
      if (!buf || buf.length < len) {
        if (buf) this.client.releaseBuffer(buf);
        buf = Buffer.alloc(Math.max(len, Math.min(READ_CHUNK, this.dataSize)));
      }
      await this.client.readRegion(this.handle, buf, len, this.handle.basePointer + BigInt(HEADER_SIZE + off));
      return buf.subarray(0, len);
    };
    return { reader, done: () => buf && this.client.releaseBuffer(buf) };
  }

  async #readTruncation(): Promise<{ seq: bigint; firstLsn: bigint; firstOff: number }> {
    const b = Buffer.alloc(HEADER_SIZE);
    await this.client.readRegion(this.handle, b, TRUNC_OFFSET + 2 * TRUNC_SLOT, this.handle.basePointer);
    decodeSuperblock(b, this.handle.size);
    return decodeTruncation(b, this.logId, this.dataSize);
  }

  async #writeTruncation(seq: bigint, firstLsn: bigint, firstOff: number): Promise<void> {
    const slot = Number(seq % 2n);
    const b = encodeTruncation({ seq, firstLsn, firstOff }, this.logId);
    await this.client.writeRegion(this.handle, b, TRUNC_SLOT, this.handle.basePointer + BigInt(TRUNC_OFFSET + slot * TRUNC_SLOT), { mirror: Mirror.BOTH, durable: true });
  }

  /**
   * Finds the end. A writer reads the whole data area (from the primary when
   * it can), zeroes what lies past the end, and writes it all back to both
   * halves, then rewrites the truncation point into the other slot: whatever
   * an interrupted write left on one half only is gone from both (docs/log.md).
   */
  async #recover(): Promise<void> {
    const t = await this.#readTruncation();
    this.#truncSeq = t.seq;
    this.#first = t.firstLsn;
    this.#head = t.firstOff;
    if (!this.writer) {
      const { reader, done } = this.#reader();
      try {
        const it = scan(reader, this.dataSize, this.logId, t.firstLsn, t.firstOff, { chunk: READ_CHUNK, withData: false });
        let r = await it.next();
        while (!r.done) r = await it.next();
        this.#next = r.value.nextLsn;
        this.#tail = r.value.tail;
      } finally {
        done();
      }
      return;
    }
    const image = Buffer.alloc(this.dataSize);
    try {
      for (let o = 0; o < this.dataSize; o += IMAGE_CHUNK) {
        const n = Math.min(IMAGE_CHUNK, this.dataSize - o);
        await this.client.readRegion(this.handle, image.subarray(o, o + n), n, this.handle.basePointer + BigInt(HEADER_SIZE + o), { mirror: ReadFrom.ANY });
      }
      const reader: DataReader = async (off, len) => image.subarray(off, off + len);
      const it = scan(reader, this.dataSize, this.logId, t.firstLsn, t.firstOff, { withData: false });
      const offs: number[] = [];
      let r = await it.next();
      while (!r.done) {
        offs.push(r.value.off);
        r = await it.next();
      }
      this.#offs = offs;
      this.#offsStart = 0;
      this.#next = r.value.nextLsn;
      this.#tail = r.value.tail;
      // Zero the free part: [tail, head) going round the circle (all of it when empty).
      const used = this.#used();
      let z = this.#tail;
      let left = this.dataSize - used;
      while (left > 0) {
        const n = Math.min(left, this.dataSize - z);
        image.fill(0, z, z + n);
        left -= n;
        z = (z + n) % this.dataSize;
      }
      await this.#ensureLease();
      for (let o = 0; o < this.dataSize; o += IMAGE_CHUNK) {
        const n = Math.min(IMAGE_CHUNK, this.dataSize - o);
        await this.client.writeRegion(this.handle, image.subarray(o, o + n), n, this.handle.basePointer + BigInt(HEADER_SIZE + o), { mirror: Mirror.BOTH, durable: true });
      }
      const seq = this.#truncSeq + 1n;
      await this.#writeTruncation(seq, this.#first, this.#head);
      this.#truncSeq = seq;
    } finally {
      this.client.releaseBuffer(image);
    }
  }

  #kick(): void {
    if (this.#flushing || this.#queue.length === 0) return;
    this.#flushing = this.#flush().finally(() => {
      this.#flushing = null;
      this.#kick();
    });
  }

  /** Group commit: everything queued (up to maxBatchBytes) goes out as ONE write per half. */
  async #flush(): Promise<void> {
    while (this.#queue.length > 0) {
      const err = this.#leaseLost ?? this.#failed ?? (this.#closed ? new NpmuError('ERR_NPMU_LOG_CLOSED', 'the log was closed') : null);
      if (err) {
        for (const p of this.#queue.splice(0)) p.reject(err);
        return;
      }
      const taken = this.#take();
      if (!taken) continue;
      const { batch, plan, recs } = taken;
      try {
        // The lease check is synchronous while the lease is fresh (the common case): no promise hop.
        if (this.#leaseLost || performance.now() >= this.#validUntil) await this.#ensureLease();
        const first = this.#next;
        await this.#write(recs, plan, first);
        let lsn = first;
        for (const g of batch) {
          g.done(lsn);
          lsn += BigInt(g.recs.length);
        }
      } catch (e) {
        // The write may have reached one half, both or neither: no append after it can be acknowledged
        // before a reopen has made the halves equal again (docs/log.md).
        if ((e as NpmuError).code !== 'ERR_NPMU_LOG_BUSY') this.#failed = e as Error;
        for (const g of batch) g.reject(e as Error);
      }
    }
  }

  /**
   * Takes the next batch off the queue: groups in order while they fit the
   * batch limit (the first always) and the free space. A first group that
   * cannot fit at all is rejected (ERR_NPMU_LOG_FULL). null: nothing taken.
   */
  #take(): { batch: Pending[]; plan: NonNullable<ReturnType<typeof planAppend>>; recs: Uint8Array[] } | null {
    const q = this.#queue;
    // Fast path: the groups within the batch limit, planned at once (they nearly always fit).
    let k = 0;
    let bytes = 0;
    while (k < q.length && (k === 0 || bytes + q[k]!.bytes <= this.maxBatchBytes)) bytes += q[k++]!.bytes;
    const lens: number[] = [];
    for (let i = 0; i < k; i++) for (const r of q[i]!.recs) lens.push(r.length);
    let plan = planAppend(lens, this.#tail, this.#used(), this.dataSize);
    if (!plan) {
      // Not all of them fit the free space: as many whole groups as do (none: the first is refused).
      lens.length = 0;
      let fit = 0;
      for (; fit < k; fit++) {
        const g = q[fit]!;
        for (const r of g.recs) lens.push(r.length);
        const p = planAppend(lens, this.#tail, this.#used(), this.dataSize);
        if (!p) break;
        plan = p;
      }
      if (fit === 0) {
        const g = q.shift()!;
        g.reject(
          new NpmuError('ERR_NPMU_LOG_FULL', `log ${this.handle.name} is full: ${g.recs.length} record(s) of ${g.bytes} framed bytes do not fit in ${this.bytesFree} free bytes (truncate records that are safe elsewhere)`, {
            bytesFree: this.bytesFree,
          }),
        );
        return null;
      }
      k = fit;
    }
    const batch = k === q.length ? q.splice(0) : q.splice(0, k);
    let recs = batch[0]!.recs;
    if (batch.length > 1) {
      recs = [];
      for (const g of batch) for (const r of g.recs) recs.push(r);
    }
    return { batch, plan: plan!, recs };
  }

  /** Frames `recs` (LSNs from `first`) into the staging buffer and writes them durably to both halves; then advances the tail. */
  async #write(recs: Uint8Array[], plan: NonNullable<ReturnType<typeof planAppend>>, first: bigint): Promise<void> {
    // Frames in data-area order: span 1 from the tail (with the wrap frame, if any), span 2 from offset 0.
    const need = plan.consumed + FRAME_HEADER;
    let buf = this.#staging;
    if (!buf || buf.length < need) {
      if (need <= this.maxBatchBytes + FRAME_HEADER + 8) {
        if (this.#staging) this.client.releaseBuffer(this.#staging);
        buf = this.#staging = Buffer.alloc(this.maxBatchBytes + FRAME_HEADER + 8);
      } else {
        buf = Buffer.alloc(need);
      }
    }
    const tail = this.#tail;
    const base = this.handle.basePointer + BigInt(HEADER_SIZE);
    let at = 0;
    let spanEnd = -1; // end of span 1 in buf, once the records wrapped to offset 0
    let lsn = first;
    for (let i = 0; i < recs.length; i++) {
      if (i === plan.wrapLsnIndex) at += encodeFrame(buf, at, lsn, null, this.logId);
      // Not contiguous with the span so far: the record wrapped to offset 0.
      if (spanEnd < 0 && plan.offs[i] !== tail + at) spanEnd = at;
      at += encodeFrame(buf, at, lsn, recs[i]!, this.logId);
      lsn++;
    }
    this.#stats.writes++;
    if (spanEnd < 0 || spanEnd === 0) {
      // One span (at the tail, or — everything wrapped — at offset 0).
      await this.client.writeRegion(this.handle, buf, at, base + BigInt(spanEnd === 0 ? 0 : tail), DURABLE_BOTH);
    } else {
      const items = [
        { buf: buf.subarray(0, spanEnd), pointer: base + BigInt(tail) },
        { buf: buf.subarray(spanEnd, at), pointer: base },
      ];
      await this.client.writeRegionBatch(this.handle, items, DURABLE_BOTH);
    }
    if (buf !== this.#staging) this.client.releaseBuffer(buf);
    for (const o of plan.offs) this.#offs.push(o);
    this.#tail = plan.newTail;
    this.#next = first + BigInt(recs.length);
    this.#stats.appends += recs.length;
  }

  // ---- the writer lease (docs/log.md) ----------------------------------------------

  #leasePtr(): bigint {
    return this.handle.basePointer + BigInt(LEASE_OFFSET);
  }

  async #cas(compare: bigint, swap: bigint): Promise<bigint> {
    return this.client.compareSwapRegion(this.handle, this.#leasePtr(), compare, swap, { mirror: 'primary' });
  }

  async #acquire(): Promise<void> {
    const tag = (randomBytes(2).readUInt16LE(0) % 0xffff) + 1;
    const mine = leaseWord(tag, this.leaseMs, 1);
    for (let attempt = 0; attempt < 3; attempt++) {
      const t0 = performance.now();
      const seen = await this.#cas(0n, mine);
      if (seen === 0n) {
        this.#held(mine, t0);
        return;
      }
      // Held: wait the holder's own lease length; if its heartbeat did not move, the lease is ours.
      await sleep(leaseMsOf(seen) + 20);
      const t1 = performance.now();
      const now = await this.#cas(seen, mine);
      if (now === seen) {
        this.#held(mine, t1);
        return;
      }
      if (now !== 0n) {
        throw new NpmuError('ERR_NPMU_LOG_BUSY', `log ${this.handle.name} has a live writer (owner tag ${leaseTagOf(now).toString(16)}; its lease was renewed within ${leaseMsOf(seen)} ms)`, {
          owner: leaseTagOf(now),
        });
      }
      // Released meanwhile: try again from free.
    }
    throw new NpmuError('ERR_NPMU_LOG_BUSY', `log ${this.handle.name}: could not take the writer lease (writers come and go)`);
  }

  #held(word: bigint, postedAt: number): void {
    this.#leaseWord = word;
    this.#validUntil = postedAt + this.leaseMs / 2;
    this.#timer = setInterval(() => void this.#renew().catch(() => undefined), Math.max(10, Math.floor(this.leaseMs / 4)));
    this.#timer.unref();
  }

  /** Heartbeat: counter + 1 by compare-and-swap; a different word means another writer took the log. */
  #renew(): Promise<void> {
    if (this.#renewing) return this.#renewing;
    const run = async (): Promise<void> => {
      if (this.#leaseLost || this.#leaseWord === 0n) return;
      const cur = this.#leaseWord;
      const next = (cur & ~0xffffffffn) | (((cur & 0xffffffffn) + 1n) & 0xffffffffn);
      const t0 = performance.now();
      const seen = await this.#cas(cur, next);
      if (seen !== cur) {
        this.#leaseLost = new NpmuError('ERR_NPMU_LOG_BUSY', `log ${this.handle.name}: another writer took the lease (owner tag ${leaseTagOf(seen).toString(16)}); reopen to write`, { owner: leaseTagOf(seen) });
        if (this.#timer) clearInterval(this.#timer);
        this.#timer = null;
        return;
      }
      this.#leaseWord = next;
      this.#validUntil = t0 + this.leaseMs / 2;
    };
    this.#renewing = run().finally(() => (this.#renewing = null));
    return this.#renewing;
  }

  /** Before a write: the lease must be valid for the next leaseMs/2 measured from a renewal's post; renews if not. */
  async #ensureLease(): Promise<void> {
    if (this.#leaseLost) throw this.#leaseLost;
    // A renewal already in flight may have been posted too long ago to count: renew again, for up to two
    // lease lengths on a slow host (each write still needs a renewal posted less than leaseMs/2 before it).
    const give = performance.now() + 2 * this.leaseMs;
    while (performance.now() >= this.#validUntil && performance.now() < give) {
      await this.#renew();
      if (this.#leaseLost) throw this.#leaseLost;
    }
    if (performance.now() >= this.#validUntil) throw new NpmuError('ERR_NPMU_LOG_BUSY', `log ${this.handle.name}: the writer lease could not be renewed in time`);
  }

  async #release(): Promise<void> {
    const w = this.#leaseWord;
    this.#leaseWord = 0n;
    await this.#cas(w, 0n);
  }
}
