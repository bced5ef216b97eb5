/**
 * Destaging ([0051]: the log's tail in npmu, its bulk on disk): a Destager
 * copies durable records from an NpmuLog (opened as the writer, in the same
 * process) to a log file in large sequential writes, one fdatasync per batch,
 * and only then truncates the npmu log. `readAll` reads ONE LSN sequence
 * across the file and the tail. docs/log.md ("Destaging") has the argument.
 *
 * File format: a 16-byte header (magic "NPMUDST1", the log's id u64), then
 * frames `len u32 | crc u32 | lsn u64 | payload` with consecutive LSNs; crc =
 * crc32c (seeded with the log id) of len, lsn and payload. Recovery keeps
 * the longest prefix of frames that check and cuts the rest.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32c } from './crc32c';
import { NpmuError, argRangeError } from './errors';
import type { NpmuLog } from './log';

export const DESTAGE_MAGIC = Buffer.from('NPMUDST1', 'latin1');
export const FILE_HEADER = 16;
export const FILE_FRAME = 16;

const seedOf = (logId: bigint): number => Number(logId & 0xffffffffn) >>> 0;

function frameCrc(b: Buffer, at: number, len: number, logId: bigint): number {
  let c = crc32c(b.subarray(at, at + 4), seedOf(logId));
  c = crc32c(b.subarray(at + 8, at + 16), c);
  return crc32c(b.subarray(at + 16, at + 16 + len), c);
}

/** Encodes one file frame at `b[at]`; returns its size. */
export function encodeFileFrame(b: Buffer, at: number, lsn: bigint, data: Uint8Array, logId: bigint): number {
  b.writeUInt32LE(data.length, at);
  b.writeBigUInt64LE(lsn, at + 8);
  b.set(data, at + 16);
  b.writeUInt32LE(frameCrc(b, at, data.length, logId), at + 4);
  return FILE_FRAME + data.length;
}

export interface FileScan {
  logId: bigint | null;
  records: Array<{ lsn: bigint; data: Buffer }>;
  /** bytes of the file that hold the header and valid frames */
  validBytes: number;
  /** the LSN after the last valid frame (null: no frame) */
  nextLsn: bigint | null;
}

/** The valid prefix of a destage file's bytes (pure; tested natively). `logId` null = take the file's. */
export function scanFile(b: Buffer, logId: bigint | null, withData = true): FileScan {
  if (b.length < FILE_HEADER) return { logId, records: [], validBytes: 0, nextLsn: null };
  if (!b.subarray(0, 8).equals(DESTAGE_MAGIC)) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', 'the destage file has no NPMUDST1 magic');
  const id = b.readBigUInt64LE(8);
  if (logId !== null && id !== logId) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', `the destage file belongs to log ${id.toString(16)}, not ${logId.toString(16)}`);
  const records: Array<{ lsn: bigint; data: Buffer }> = [];
  let at = FILE_HEADER;
  let next: bigint | null = null;
  while (at + FILE_FRAME <= b.length) {
    const len = b.readUInt32LE(at);
    if (at + FILE_FRAME + len > b.length) break;
    const lsn = b.readBigUInt64LE(at + 8);
    if (next !== null && lsn !== next) break;
    if (lsn < 1n || frameCrc(b, at, len, id) !== b.readUInt32LE(at + 4)) break;
    if (withData) records.push({ lsn, data: Buffer.from(b.subarray(at + FILE_FRAME, at + FILE_FRAME + len)) });
    next = lsn + 1n;
    at += FILE_FRAME + len;
  }
  return { logId: id, records, validBytes: at, nextLsn: next };
}

export interface DestagerOptions {
  /** Most payload bytes copied per batch (one write + one fdatasync). Default 4 MiB. */
  maxBytes?: number;
}

export class Destager {
  readonly log: NpmuLog;
  readonly file: string;
  readonly maxBytes: number;
  #fh: fs.promises.FileHandle;
  #size: number;
  #next: bigint | null;
  #running: Promise<void> | null = null;
  #timer: NodeJS.Timeout | null = null;
  #busy: Promise<unknown> = Promise.resolve();
  batches = 0;

  private constructor(log: NpmuLog, file: string, fh: fs.promises.FileHandle, size: number, next: bigint | null, maxBytes: number) {
    this.log = log;
    this.file = file;
    this.#fh = fh;
    this.#size = size;
    this.#next = next;
    this.maxBytes = maxBytes;
  }

  /**
   * Opens (or creates) the destage file of `log` (an NpmuLog opened as the
   * writer): keeps its valid prefix, cuts a torn tail (made durable), and
   * checks that file and log leave no gap (ERR_NPMU_LOG_GAP).
   */
  static async open(log: NpmuLog, file: string, opts: DestagerOptions = {}): Promise<Destager> {
    const maxBytes = opts.maxBytes ?? 4 << 20;
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw argRangeError('opts.maxBytes', 'a positive integer', maxBytes);
    let fh: fs.promises.FileHandle;
    let created = false;
    try {
      fh = await fs.promises.open(file, 'r+');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      fh = await fs.promises.open(file, 'w+');
      created = true;
    }
    try {
      const b = created ? Buffer.alloc(0) : await fh.readFile();
      let size: number;
      let next: bigint | null;
      if (b.length < FILE_HEADER) {
        const h = Buffer.alloc(FILE_HEADER);
        DESTAGE_MAGIC.copy(h, 0);
        h.writeBigUInt64LE(log.logId, 8);
        await fh.truncate(0);
        await fh.write(h, 0, FILE_HEADER, 0);
        await fh.datasync();
        size = FILE_HEADER;
        next = null;
        // The file's name must survive too.
        const dir = await fs.promises.open(path.dirname(path.resolve(file)), 'r');
        await dir.sync().finally(() => dir.close());
      } else {
        const s = scanFile(b, log.logId, false);
        size = s.validBytes;
        next = s.nextLsn;
        if (b.length > size) {
          await fh.truncate(size);
          await fh.datasync();
        }
      }
      if (next !== null && (next < log.firstLsn || next > log.nextLsn)) {
        throw new NpmuError('ERR_NPMU_LOG_GAP', `the destage file ends before LSN ${next} but the log holds ${log.firstLsn}..${log.nextLsn - 1n}`);
      }
      return new Destager(log, file, fh, size, next, maxBytes);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** The LSN the file expects next (null while it holds no record). */
  get fileNextLsn(): bigint | null {
    return this.#next;
  }

  /**
   * One batch: records from the file's next LSN (up to maxBytes) go to the
   * file in one write, then fdatasync, then the log is truncated up to the
   * last of them. Records the file already has (a crash between fdatasync
   * and truncate) are only truncated.
   */
  destageOnce(): Promise<{ records: number; bytes: number; upTo: bigint | null }> {
    const run = async (): Promise<{ records: number; bytes: number; upTo: bigint | null }> => {
      const log = this.log;
      if (this.#next !== null && this.#next > log.firstLsn) await log.truncate(this.#next - 1n);
      const from = this.#next ?? log.firstLsn;
      const recs: Array<{ lsn: bigint; data: Buffer }> = [];
      let bytes = 0;
      for await (const r of log.read(from)) {
        if (this.#next !== null && r.lsn !== this.#next + BigInt(recs.length)) {
          throw new NpmuError('ERR_NPMU_LOG_GAP', `the log yields LSN ${r.lsn} where the file expects ${this.#next + BigInt(recs.length)}`);
        }
        recs.push(r);
        bytes += FILE_FRAME + r.data.length;
        if (bytes >= this.maxBytes) break;
      }
      if (recs.length === 0) return { records: 0, bytes: 0, upTo: null };
      const b = Buffer.allocUnsafe(bytes);
      let at = 0;
      for (const r of recs) at += encodeFileFrame(b, at, r.lsn, r.data, log.logId);
      let off = 0;
      while (off < b.length) off += (await this.#fh.write(b, off, b.length - off, this.#size + off)).bytesWritten;
      await this.#fh.datasync();
      this.#size += b.length;
      const upTo = recs[recs.length - 1]!.lsn;
      this.#next = upTo + 1n;
      this.batches++;
      await log.truncate(upTo);
      return { records: recs.length, bytes, upTo };
    };
    const p = this.#busy.then(run, run);
    this.#busy = p.catch(() => undefined);
    return p;
  }

  /** Destages in the background every `intervalMs` (or when the log is more than half full, at the next tick). */
  start(intervalMs = 20, onError?: (e: Error) => void): void {
    if (this.#timer) return;
    const tick = (): void => {
      if (this.#running) return;
      this.#running = this.destageOnce()
        .then(() => undefined, (e: Error) => onError?.(e))
        .finally(() => (this.#running = null));
    };
    this.#timer = setInterval(tick, intervalMs);
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#running) await this.#running;
  }

  async close(): Promise<void> {
    await this.stop();
    await this.#busy;
    await this.#fh.close();
  }
}

/** The records of a destage file from `fromLsn` (its valid prefix; a torn tail ends it). */
export async function* readFile(file: string, fromLsn?: bigint): AsyncIterableIterator<{ lsn: bigint; data: Buffer }> {
  let b: Buffer;
  try {
    b = await fs.promises.readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  for (const r of scanFile(b, null).records) if (fromLsn === undefined || r.lsn >= fromLsn) yield r;
}

/**
 * ONE LSN sequence across the destage file and the npmu tail, from `fromLsn`
 * (default: the first the file or the log has): every record once, in LSN
 * order. Safe while a destager runs: when the log has moved on past what was
 * read of the file, the file is read again. ERR_NPMU_LOG_GAP if records are
 * missing from both.
 */
export async function* readAll(file: string, log: NpmuLog, fromLsn?: bigint): AsyncIterableIterator<{ lsn: bigint; data: Buffer }> {
  let next: bigint | undefined = fromLsn;
  for (let round = 0; ; round++) {
    let fromFile = 0;
    for await (const r of readFile(file, next)) {
      if (next !== undefined && r.lsn !== next) {
        if (r.lsn < next) continue;
        throw new NpmuError('ERR_NPMU_LOG_GAP', `the destage file jumps to LSN ${r.lsn} where ${next} is expected`);
      }
      yield r;
      next = r.lsn + 1n;
      fromFile++;
    }
    if (round > 0 && fromFile === 0) {
      throw new NpmuError('ERR_NPMU_LOG_GAP', `LSN ${next} is neither in the destage file nor in the log (which starts at ${log.firstLsn})`);
    }
    let gap = false;
    for await (const r of log.read(next)) {
      if (next !== undefined && r.lsn > next) {
        gap = true; // destaged (and truncated) since the file was read: read the file again
        break;
      }
      yield r;
      next = r.lsn + 1n;
    }
    if (!gap && (next === undefined || next >= log.firstLsn)) return;
  }
}
