/**
 * A small transactional key-value store whose commits go through a pluggable
 * write-ahead log (examples/kv/wal.ts): the database side of the commit
 * experiment (issue 9). The data lives in memory; the WAL is the only thing
 * on durable media, and `KvStore.open` rebuilds the map by replaying it.
 *
 * Transactions are single-row updates: `put(key, value)` and `del(key)` each
 * append one WAL record and resolve once it is durable (the commit), and only
 * then does the change become visible to `get`. A crash at any instant
 * recovers exactly the transactions whose commit had resolved, plus possibly
 * some whose record was durable but whose acknowledgement had not reached the
 * caller yet (as in every WAL database), and never a partial one: the WAL
 * checks each record's CRC and stops at a torn tail.
 *
 * Record (the WAL's payload):
 *   u8 op (1 = put, 2 = del) | u16 key length | u32 value length | key (UTF-8) | value
 *
 * @example
 *   const store = await KvStore.open(await GroupCommitWal.open('/mnt/disk/wal'));
 *   await store.put('alice', Buffer.from('42'));   // durable when this resolves
 *   store.get('alice');                            // Buffer '42'
 *   await store.close();
 */
import type { Wal } from './wal';

const OP_PUT = 1;
const OP_DEL = 2;
const MAX_KEY = 0xffff;

export interface Decoded {
  op: 'put' | 'del';
  key: string;
  value?: Buffer;
}

function err(ctor: typeof TypeError | typeof RangeError, code: string, msg: string): Error {
  return Object.assign(new ctor(msg), { code });
}

function checkKey(key: unknown): Buffer {
  if (typeof key !== 'string') throw err(TypeError, 'ERR_INVALID_ARG_TYPE', `The "key" argument must be a string. Received type ${key === null ? 'null' : typeof key}`);
  if (key === '') throw err(RangeError, 'ERR_OUT_OF_RANGE', 'The "key" argument must not be empty');
  const k = Buffer.from(key, 'utf8');
  if (k.length > MAX_KEY) throw err(RangeError, 'ERR_OUT_OF_RANGE', `The "key" argument is ${k.length} bytes of UTF-8; at most ${MAX_KEY}`);
  return k;
}

export function encodePut(key: string, value: Uint8Array): Buffer {
  const k = checkKey(key);
  if (!(value instanceof Uint8Array)) throw err(TypeError, 'ERR_INVALID_ARG_TYPE', `The "value" argument must be a Uint8Array. Received type ${value === null ? 'null' : typeof value}`);
  const b = Buffer.allocUnsafe(7 + k.length + value.length);
  b[0] = OP_PUT;
  b.writeUInt16LE(k.length, 1);
  b.writeUInt32LE(value.length, 3);
  k.copy(b, 7);
  b.set(value, 7 + k.length);
  return b;
}

export function encodeDel(key: string): Buffer {
  const k = checkKey(key);
  const b = Buffer.allocUnsafe(7 + k.length);
  b[0] = OP_DEL;
  b.writeUInt16LE(k.length, 1);
  b.writeUInt32LE(0, 3);
  k.copy(b, 7);
  return b;
}

/** Decode one WAL record; throws ERR_KV_CORRUPT if it is not one of ours. */
export function decodeRecord(b: Buffer, lsn?: bigint): Decoded {
  const where = lsn === undefined ? '' : ` at LSN ${lsn}`;
  if (b.length < 7) throw Object.assign(new Error(`WAL record${where} is ${b.length} bytes: not a store record`), { code: 'ERR_KV_CORRUPT' });
  const op = b[0];
  const kl = b.readUInt16LE(1);
  const vl = b.readUInt32LE(3);
  if ((op !== OP_PUT && op !== OP_DEL) || kl === 0 || 7 + kl + vl !== b.length || (op === OP_DEL && vl !== 0)) {
    throw Object.assign(new Error(`WAL record${where} is not a store record (op ${op}, key ${kl} B, value ${vl} B, ${b.length} B in all)`), { code: 'ERR_KV_CORRUPT' });
  }
  const key = b.toString('utf8', 7, 7 + kl);
  return op === OP_PUT ? { op: 'put', key, value: Buffer.from(b.subarray(7 + kl)) } : { op: 'del', key };
}

interface Cell {
  lsn: bigint;
  value: Buffer | undefined; // undefined: deleted at lsn
}

export class KvStore {
  readonly wal: Wal;
  #map = new Map<string, Cell>();
  #size = 0;
  #closed = false;
  #lastLsn = 0n;
  #inflight = 0;

  private constructor(wal: Wal) {
    this.wal = wal;
  }

  /** Recover the store from `wal` (every durable record, in LSN order). */
  static async open(wal: Wal): Promise<KvStore> {
    if (wal === null || typeof wal !== 'object' || typeof (wal as Wal).append !== 'function' || typeof (wal as Wal).replay !== 'function') {
      throw err(TypeError, 'ERR_INVALID_ARG_TYPE', 'The "wal" argument must be a Wal (append, replay, close)');
    }
    const s = new KvStore(wal);
    for await (const { lsn, data } of wal.replay()) s.#apply(lsn, decodeRecord(data, lsn));
    return s;
  }

  #apply(lsn: bigint, d: Decoded): void {
    // Commits can resolve out of order in principle: the higher LSN wins.
    const cur = this.#map.get(d.key);
    if (cur && cur.lsn > lsn) return;
    const had = cur?.value !== undefined;
    this.#map.set(d.key, { lsn, value: d.value });
    this.#size += (d.value !== undefined ? 1 : 0) - (had ? 1 : 0);
    if (lsn > this.#lastLsn) this.#lastLsn = lsn;
  }

  #commit(rec: Buffer, d: Decoded): Promise<bigint> {
    // Not async: the WAL's promise and one reaction (a commit's promise hops are a measurable share of it on npmu).
    if (this.#closed) return Promise.reject(Object.assign(new Error('the store is closed'), { code: 'ERR_KV_CLOSED' }));
    let p: Promise<bigint>;
    try {
      p = this.wal.append(rec);
    } catch (e) {
      return Promise.reject(e);
    }
    this.#inflight++;
    return p.then(
      (lsn) => {
        this.#inflight--;
        this.#apply(lsn, d);
        return lsn;
      },
      (e: unknown) => {
        this.#inflight--;
        throw e;
      },
    );
  }

  /** Commit `key` = `value`; resolves to the commit's LSN once it is durable. */
  put(key: string, value: Uint8Array): Promise<bigint> {
    let rec: Buffer;
    try {
      rec = encodePut(key, value);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#commit(rec, { op: 'put', key, value: Buffer.from(value) });
  }

  /** Commit the removal of `key` (whether or not it exists). */
  del(key: string): Promise<bigint> {
    let rec: Buffer;
    try {
      rec = encodeDel(key);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#commit(rec, { op: 'del', key });
  }

  /** The committed value of `key` (a copy), or undefined. */
  get(key: string): Buffer | undefined {
    checkKey(key);
    const v = this.#map.get(key)?.value;
    return v === undefined ? undefined : Buffer.from(v);
  }

  /** Number of keys with a value. */
  get size(): number {
    return this.#size;
  }

  /** The highest committed LSN (0n if none). */
  get lastLsn(): bigint {
    return this.#lastLsn;
  }

  /** Every committed key and value, sorted by key (for checks). */
  entries(): Array<[string, Buffer]> {
    const out: Array<[string, Buffer]> = [];
    for (const [k, c] of this.#map) if (c.value !== undefined) out.push([k, c.value]);
    return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  /** Wait for commits in flight, then close the WAL. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    while (this.#inflight > 0) await new Promise((r) => setImmediate(r));
    await this.wal.close();
  }
}
