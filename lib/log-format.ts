/**
 * THE on-region format of an npmu log (lib/log.ts), as pure functions over
 * Buffers so that framing and recovery are tested without RDMA
 * (test/unit/log-format.test.ts). docs/log.md explains the format and why
 * recovery finds every acknowledged record exactly once.
 *
 * Region layout (all integers little-endian):
 *
 * ```
 * 0      superblock (64 B, written once by format):
 *          0 magic "NPMULOG\0"   8 version u32 (1)   12 headerSize u32 (4096)
 *         16 size u64 (bytes of the region the log uses)   24 logId u64 (random)
 *         32..59 reserved (0)    60 crc32c of bytes [0, 60)
 * 64     lease word u64 (RDMA compare-and-swap target; never covered by a CRC)
 * 128    truncation slot 0 (32 B)   160 truncation slot 1 (32 B):
 *          0 seq u64   8 firstLsn u64   16 firstOff u64 (offset in the data area)
 *         24 crc32c(seed logId) of [0, 24)   28 reserved (0)
 * 4096   data area: dataSize = size - 4096 bytes used as a circle of 8-byte-aligned frames
 * ```
 *
 * A frame is a 24-byte header and its payload, padded to 8 bytes:
 * `len u32 | type u32 (1 record, 2 wrap) | lsn u64 | crc u32 | zero u32 | payload`.
 * crc = crc32c, seeded with the log id, of header bytes [0, 16) then the
 * payload. A record never straddles the end of the data area: when it does
 * not fit in what is left, a wrap frame (type 2, len 0, the LSN of the record
 * that follows) is written there if at least 24 bytes are left, and the
 * record goes to offset 0; fewer than 24 bytes left are skipped implicitly.
 */
import { NpmuError } from './errors';
import { crc32c } from './crc32c';

export const LOG_MAGIC = Buffer.from('NPMULOG\0', 'latin1');
export const LOG_VERSION = 1;
export const HEADER_SIZE = 4096;
export const SUPER_SIZE = 64;
export const LEASE_OFFSET = 64;
export const TRUNC_OFFSET = 128;
export const TRUNC_SLOT = 32;
export const FRAME_HEADER = 24;
export const TYPE_RECORD = 1;
export const TYPE_WRAP = 2;
/** The smallest log: the header and 4 KiB of data. */
export const MIN_LOG_SIZE = HEADER_SIZE + 4096;
/** Space kept free so that a non-empty log never has head == tail. */
export const RESERVE = 8;

export const align8 = (n: number): number => (n + 7) & ~7;
/** Bytes a record of `len` payload bytes takes in the data area. */
export const frameSize = (len: number): number => align8(FRAME_HEADER + len);
/** The largest payload a log with `dataSize` bytes of data area can take (it must fit with the reserve). */
export const maxPayload = (dataSize: number): number => dataSize - RESERVE - FRAME_HEADER;

export interface Superblock {
  version: number;
  size: number;
  logId: bigint;
}

export interface Truncation {
  seq: bigint;
  firstLsn: bigint;
  firstOff: number;
}

const seedOf = (logId: bigint): number => Number(logId & 0xffffffffn) >>> 0;

export function encodeSuperblock(size: number, logId: bigint): Buffer {
  const b = Buffer.alloc(SUPER_SIZE);
  LOG_MAGIC.copy(b, 0);
  b.writeUInt32LE(LOG_VERSION, 8);
  b.writeUInt32LE(HEADER_SIZE, 12);
  b.writeBigUInt64LE(BigInt(size), 16);
  b.writeBigUInt64LE(logId, 24);
  b.writeUInt32LE(crc32c(b.subarray(0, 60)), 60);
  return b;
}

/** ERR_NPMU_NOT_A_LOG if the magic is missing; ERR_NPMU_LOG_CORRUPT if it is there but the rest does not check. */
export function decodeSuperblock(b: Buffer, regionSize: number): Superblock {
  if (b.length < SUPER_SIZE || !b.subarray(0, 8).equals(LOG_MAGIC)) {
    throw new NpmuError('ERR_NPMU_NOT_A_LOG', 'the region does not hold an npmu log (no log magic in its first bytes); NpmuLog.create formats one');
  }
  if (crc32c(b.subarray(0, 60)) !== b.readUInt32LE(60)) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', 'the log superblock fails its CRC-32C');
  const version = b.readUInt32LE(8);
  if (version !== LOG_VERSION) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', `the log has format version ${version}; this library reads version ${LOG_VERSION}`);
  if (b.readUInt32LE(12) !== HEADER_SIZE) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', `the log header size is ${b.readUInt32LE(12)}, not ${HEADER_SIZE}`);
  const size = Number(b.readBigUInt64LE(16));
  if (size < MIN_LOG_SIZE || size > regionSize || size % 8 !== 0) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', `the log size ${size} does not fit the region (${regionSize} bytes)`);
  return { version, size, logId: b.readBigUInt64LE(24) };
}

export function encodeTruncation(t: Truncation, logId: bigint): Buffer {
  const b = Buffer.alloc(TRUNC_SLOT);
  b.writeBigUInt64LE(t.seq, 0);
  b.writeBigUInt64LE(t.firstLsn, 8);
  b.writeBigUInt64LE(BigInt(t.firstOff), 16);
  b.writeUInt32LE(crc32c(b.subarray(0, 24), seedOf(logId)), 24);
  return b;
}

/** The truncation slot that checks and has the higher seq; ERR_NPMU_LOG_CORRUPT if neither checks. */
export function decodeTruncation(header: Buffer, logId: bigint, dataSize: number): Truncation & { slot: number } {
  let best: (Truncation & { slot: number }) | undefined;
  for (let slot = 0; slot < 2; slot++) {
    const b = header.subarray(TRUNC_OFFSET + slot * TRUNC_SLOT, TRUNC_OFFSET + (slot + 1) * TRUNC_SLOT);
    if (crc32c(b.subarray(0, 24), seedOf(logId)) !== b.readUInt32LE(24)) continue;
    const firstOff = Number(b.readBigUInt64LE(16));
    const firstLsn = b.readBigUInt64LE(8);
    if (firstOff >= dataSize || firstOff % 8 !== 0 || firstLsn < 1n) continue;
    const seq = b.readBigUInt64LE(0);
    if (!best || seq > best.seq) best = { seq, firstLsn, firstOff, slot };
  }
  if (!best) throw new NpmuError('ERR_NPMU_LOG_CORRUPT', 'neither truncation slot of the log header checks (CRC-32C)');
  return best;
}

/** The whole header of a new log: superblock, lease 0, truncation slot 0 = (seq 1, LSN 1 at offset 0). */
export function formatHeader(size: number, logId: bigint): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  encodeSuperblock(size, logId).copy(h, 0);
  encodeTruncation({ seq: 1n, firstLsn: 1n, firstOff: 0 }, logId).copy(h, TRUNC_OFFSET);
  return h;
}

/** Writes the frame of a record (or a wrap frame when `payload` is null) into `dst` at `at`; returns its size. */
export function encodeFrame(dst: Buffer, at: number, lsn: bigint, payload: Uint8Array | null, logId: bigint): number {
  const len = payload ? payload.length : 0;
  const size = frameSize(len);
  dst.writeUInt32LE(len, at);
  dst.writeUInt32LE(payload ? TYPE_RECORD : TYPE_WRAP, at + 4);
  dst.writeBigUInt64LE(lsn, at + 8);
  let c = crc32c(dst, seedOf(logId), at, at + 16);
  if (payload && len > 0) {
    dst.set(payload, at + FRAME_HEADER);
    c = crc32c(dst, c, at + FRAME_HEADER, at + FRAME_HEADER + len);
  }
  dst.writeUInt32LE(c, at + 16);
  dst.writeUInt32LE(0, at + 20);
  dst.fill(0, at + FRAME_HEADER + len, at + size);
  return size;
}

export type FrameResult =
  | { kind: 'record'; lsn: bigint; len: number; size: number }
  | { kind: 'wrap' }
  | { kind: 'end'; why: string };

/**
 * Judges the frame at data offset `off`, whose bytes start at `b[at]` (at
 * least min(FRAME_HEADER + payload, dataSize - off) bytes of them must be in
 * `b`; a caller that has fewer asks `frameNeeds` first). A record is taken
 * only if its LSN is `expect`, it fits before the end of the data area and
 * its CRC covers its length, type, LSN and payload.
 */
export function judgeFrame(b: Buffer, at: number, off: number, dataSize: number, expect: bigint, logId: bigint): FrameResult {
  const left = dataSize - off;
  if (left < FRAME_HEADER) return off === 0 ? { kind: 'end', why: 'no room' } : { kind: 'wrap' };
  const len = b.readUInt32LE(at);
  const type = b.readUInt32LE(at + 4);
  const lsn = b.readBigUInt64LE(at + 8);
  if (lsn !== expect) return { kind: 'end', why: `LSN ${lsn} where ${expect} is expected` };
  if (b.readUInt32LE(at + 20) !== 0) return { kind: 'end', why: 'reserved word not zero' };
  if (type === TYPE_WRAP) {
    if (len !== 0 || off === 0) return { kind: 'end', why: 'bad wrap frame' };
    const c = crc32c(b.subarray(at, at + 16), seedOf(logId));
    return c === b.readUInt32LE(at + 16) ? { kind: 'wrap' } : { kind: 'end', why: 'wrap frame CRC' };
  }
  if (type !== TYPE_RECORD) return { kind: 'end', why: `frame type ${type}` };
  const size = frameSize(len);
  if (len > maxPayload(dataSize) || size > left) return { kind: 'end', why: `length ${len} does not fit` };
  let c = crc32c(b, seedOf(logId), at, at + 16);
  c = crc32c(b, c, at + FRAME_HEADER, at + FRAME_HEADER + len);
  if (c !== b.readUInt32LE(at + 16)) return { kind: 'end', why: 'record CRC' };
  return { kind: 'record', lsn, len, size };
}

/** How many bytes from `b[at]` judgeFrame needs for the frame at data offset `off` (given the header is there). */
export function frameNeeds(b: Buffer, at: number, off: number, dataSize: number): number {
  const left = dataSize - off;
  if (left < FRAME_HEADER) return 0;
  if (b.length - at < FRAME_HEADER) return FRAME_HEADER;
  const len = b.readUInt32LE(at);
  return Math.min(left, FRAME_HEADER + Math.min(len, dataSize));
}

/** Reads `len` bytes of the data area at data offset `off` (never past dataSize). */
export type DataReader = (off: number, len: number) => Promise<Buffer>;

export interface ScanRecord {
  lsn: bigint;
  /** data offset of the record's frame */
  off: number;
  size: number;
  data: Buffer;
}

export interface ScanEnd {
  /** the LSN the next record would have */
  nextLsn: bigint;
  /** data offset where the next frame goes */
  tail: number;
  /** bytes from the start offset to the tail, going round the circle (wrap waste included) */
  walked: number;
}

/**
 * Walks the circle from (`lsn`, `off`): yields each record in LSN order and
 * returns where the log ends. Reads `chunk` bytes at a time (never across
 * the end of the data area). Stops after `limit` bytes walked (the data area
 * minus the reserve) so that it cannot go round twice.
 */
export async function* scan(
  read: DataReader,
  dataSize: number,
  logId: bigint,
  lsn: bigint,
  off: number,
  opts: { chunk?: number; stopLsn?: bigint; withData?: boolean } = {},
): AsyncGenerator<ScanRecord, ScanEnd, void> {
  const chunk = Math.max(opts.chunk ?? 1 << 20, FRAME_HEADER);
  const limit = dataSize - RESERVE;
  let walked = 0;
  let buf: Buffer = Buffer.alloc(0);
  let bufOff = 0; // data offset of buf[0]
  const ensure = async (need: number): Promise<void> => {
    if (off >= bufOff && off + need <= bufOff + buf.length) return;
    const n = Math.min(dataSize - off, Math.max(chunk, need));
    buf = await read(off, n);
    bufOff = off;
  };
  for (;;) {
    if (opts.stopLsn !== undefined && lsn >= opts.stopLsn) break;
    const left = dataSize - off;
    if (left >= FRAME_HEADER) {
      await ensure(FRAME_HEADER);
      const need = frameNeeds(buf, off - bufOff, off, dataSize);
      await ensure(need);
    }
    const r = judgeFrame(buf, off - bufOff, off, dataSize, lsn, logId);
    if (r.kind === 'end') break;
    if (r.kind === 'wrap') {
      if (walked + left > limit) break;
      walked += left;
      off = 0;
      continue;
    }
    if (walked + r.size > limit) break;
    const at = off - bufOff + FRAME_HEADER;
    const data = opts.withData === false ? Buffer.alloc(0) : Buffer.from(buf.subarray(at, at + r.len));
    yield { lsn, off, size: r.size, data };
    walked += r.size;
    off += r.size;
    if (off === dataSize) off = 0;
    lsn++;
  }
  return { nextLsn: lsn, tail: off, walked };
}

/** Runs `scan` to the end, collecting the records (for recovery and tests). */
export async function scanAll(
  read: DataReader,
  dataSize: number,
  logId: bigint,
  lsn: bigint,
  off: number,
  opts: { chunk?: number; withData?: boolean } = {},
): Promise<{ records: ScanRecord[]; end: ScanEnd }> {
  const records: ScanRecord[] = [];
  const it = scan(read, dataSize, logId, lsn, off, opts);
  for (;;) {
    const r = await it.next();
    if (r.done) return { records, end: r.value };
    records.push(r.value);
  }
}

/** A DataReader over an in-memory image of the whole region. */
export const bufferReader =
  (region: Buffer): DataReader =>
  async (off, len) =>
    region.subarray(HEADER_SIZE + off, HEADER_SIZE + off + len);

/**
 * Plans where the frames of `lens` (payload sizes) go when appended at data
 * offset `tail` with `used` bytes in use: each record's offset, the wrap
 * frame (if any) and the bytes consumed. Returns null if they do not fit.
 * The frames form at most two contiguous spans: [tail, …) and, after a
 * wrap, [0, …).
 */
export function planAppend(
  lens: readonly number[],
  tail: number,
  used: number,
  dataSize: number,
): { offs: number[]; wrapAt: number | null; wrapLsnIndex: number; consumed: number; newTail: number } | null {
  const free = dataSize - RESERVE - used;
  let off = tail;
  let consumed = 0;
  let wrapAt: number | null = null;
  let wrapLsnIndex = -1;
  const offs: number[] = [];
  for (let i = 0; i < lens.length; i++) {
    const size = frameSize(lens[i]!);
    if (size > dataSize - off) {
      if (wrapAt !== null || off === 0) return null; // a second wrap in one batch would mean the batch laps the circle
      if (dataSize - off >= FRAME_HEADER) {
        wrapAt = off;
        wrapLsnIndex = i;
      }
      consumed += dataSize - off;
      off = 0;
    }
    offs.push(off);
    off += size;
    consumed += size;
    if (off === dataSize) off = 0;
    if (consumed > free) return null;
  }
  return { offs, wrapAt, wrapLsnIndex, consumed, newTail: off };
}
