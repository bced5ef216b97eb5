/**
 * An in-memory stand-in for NpmuClient with the verbs lib/log.ts uses, over
 * two Buffers (the halves), so the whole NpmuLog — group commit, wrap-around,
 * recovery, the lease — runs natively. A "cut" applies only a prefix of the
 * next write's bytes to each half and then kills the client (every later
 * call fails), like a crash in the middle of a write.
 */
import { NpmuError } from '../../lib/errors';
import type { NpmuClient } from '../../lib/client';

export interface FakeRegion {
  size: number;
  base: bigint;
  primary: Buffer;
  mirror: Buffer;
}

export class FakeStore {
  regions = new Map<string, FakeRegion>();
}

interface FakeHandle {
  name: string;
  size: number;
  basePointer: bigint;
  r: FakeRegion;
}

export class FakeClient {
  store: FakeStore;
  dead = false;
  writes = 0;
  /** Next write: apply only this many bytes (of the items, in order) to each half, then die. */
  cut: { primary: number; mirror: number } | null = null;
  /** Where reads come from. */
  readFrom: 'primary' | 'mirror' = 'primary';
  /** Delay of each write (lets appends queue behind it). */
  writeDelay = (): Promise<void> => new Promise((r) => setImmediate(r));

  constructor(store = new FakeStore()) {
    this.store = store;
  }

  asClient(): NpmuClient {
    return this as unknown as NpmuClient;
  }

  #alive(): void {
    if (this.dead) throw new NpmuError('ERR_NPMU_HALF_UNAVAILABLE', 'fake client is dead');
  }

  async createRegion(name: string, size: number, base: bigint | number = 0n): Promise<void> {
    this.#alive();
    if (this.store.regions.has(name)) throw new NpmuError('ERR_NPMU_REGION_EXISTS', `region ${name} exists`);
    this.store.regions.set(name, { size, base: BigInt(base), primary: Buffer.alloc(size), mirror: Buffer.alloc(size) });
  }

  async openRegion(name: string): Promise<FakeHandle> {
    this.#alive();
    const r = this.store.regions.get(name);
    if (!r) throw new NpmuError('ERR_NPMU_NO_SUCH_REGION', `no region ${name}`);
    return { name, size: r.size, basePointer: r.base, r };
  }

  async closeRegion(_h: FakeHandle): Promise<void> {}

  releaseBuffer(): boolean {
    return false;
  }

  async readRegion(h: FakeHandle, buf: Uint8Array, len: number | undefined, ptr: bigint): Promise<unknown> {
    this.#alive();
    const n = len ?? buf.length;
    const off = Number(ptr - h.basePointer);
    if (off < 0 || off + n > h.size) throw new RangeError(`read out of range ${off}+${n}`);
    buf.set(h.r[this.readFrom].subarray(off, off + n));
    return { bytes: n };
  }

  async writeRegion(h: FakeHandle, buf: Uint8Array, len: number | undefined, ptr: bigint): Promise<unknown> {
    return this.writeRegionBatch(h, [{ buf, pointer: ptr, len }]);
  }

  async writeRegionBatch(h: FakeHandle, items: ReadonlyArray<{ buf: Uint8Array; pointer: bigint | number; len?: number }>): Promise<unknown> {
    this.#alive();
    this.writes++;
    await this.writeDelay();
    this.#alive();
    const cut = this.cut;
    for (const half of ['primary', 'mirror'] as const) {
      let budget = cut ? cut[half] : Infinity;
      for (const it of items) {
        const n = it.len ?? it.buf.length;
        const off = Number(BigInt(it.pointer) - h.basePointer);
        if (off < 0 || off + n > h.size) throw new RangeError(`write out of range ${off}+${n}`);
        const k = Math.max(0, Math.min(n, budget));
        h.r[half].set(it.buf.subarray(0, k), off);
        budget -= k;
      }
    }
    if (cut) {
      this.cut = null;
      this.dead = true;
      throw new NpmuError('ERR_NPMU_HALF_UNAVAILABLE', 'fake power cut');
    }
    return { durable: true };
  }

  async compareSwapRegion(h: FakeHandle, ptr: bigint, compare: bigint, swap: bigint): Promise<bigint> {
    this.#alive();
    await new Promise((r) => setImmediate(r));
    this.#alive();
    const off = Number(ptr - h.basePointer);
    const old = h.r.primary.readBigUInt64LE(off);
    if (old === compare) h.r.primary.writeBigUInt64LE(swap, off);
    return old;
  }
}
