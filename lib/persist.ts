/**
 * Persist requests over a unit's RDMA connection (lib/protocol.ts:
 * PersistRequest), the client's side. Where a durable write needs the unit to
 * flush what was written (ADR: `pmem_persist`; a file-backed unit: msync), the
 * client SENDs a 32-byte request on the same reliable connection as its WRITEs
 * and waits for the unit's 16-byte reply, instead of a JSON `persist-range` on
 * the control connection (a TCP round trip and two JSON codecs).
 *
 * Flow control: the unit keeps `slots` receives posted (it says how many in its
 * accept), so at most that many requests are in flight; more wait here, in
 * order. Each request posts its reply's receive before its SEND, so a reply
 * always finds one. Replies are matched to requests by `seq`, not by which
 * receive they landed in. A request's slot is free again once its SEND and the
 * receive it posted have both completed.
 *
 * Errors: a reply with an error status rejects with that code; no reply within
 * `timeoutMs` rejects with ERR_NPMU_TIMEOUT; a failed SEND or receive (the
 * connection broke) rejects everything in flight with ERR_NPMU_DISCONNECTED,
 * and every later request too.
 */
import { NpmuError } from './errors';
import { PERSIST_REPLY_SIZE, PERSIST_REQUEST_SIZE, decodePersistReply, encodePersistRequest } from './protocol';
import type { PersistReply } from './protocol';
import { Access, registerMemory } from './verbs';
import type { Endpoint, MemoryRegion } from './verbs';

interface Pending {
  resolve: (method: 'pmem' | 'msync') => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class RdmaPersister {
  readonly slots: number;
  #ep: Endpoint;
  #buf: Buffer;
  #mr: MemoryRegion;
  #repliesAt: number;
  #free: number[] = [];
  /** per slot: its SEND and its receive still to complete */
  #busy: Uint8Array;
  #waiting: Array<(slot: number) => void> = [];
  #pending = new Map<number, Pending>();
  #seq = 0;
  #timeoutMs: number;
  #broken: Error | undefined;

  constructor(ep: Endpoint, slots: number, timeoutMs: number) {
    this.slots = slots;
    this.#ep = ep;
    this.#timeoutMs = timeoutMs;
    this.#repliesAt = slots * PERSIST_REQUEST_SIZE;
    this.#buf = Buffer.alloc(slots * (PERSIST_REQUEST_SIZE + PERSIST_REPLY_SIZE));
    this.#mr = registerMemory(ep.pd, this.#buf, { access: Access.LOCAL_WRITE });
    this.#busy = new Uint8Array(slots);
    for (let i = slots - 1; i >= 0; i--) this.#free.push(i);
  }

  /** Asks the unit to persist [offset, offset + length) of its mapping `mapId`; resolves with how it did. */
  persist(mapId: bigint, offset: bigint, length: bigint): Promise<'pmem' | 'msync'> {
    if (this.#broken) return Promise.reject(this.#broken);
    const slot = this.#free.pop();
    if (slot !== undefined) return this.#post(slot, mapId, offset, length);
    return new Promise<number>((resolve) => this.#waiting.push(resolve)).then((s) => this.#post(s, mapId, offset, length));
  }

  #post(slot: number, mapId: bigint, offset: bigint, length: bigint): Promise<'pmem' | 'msync'> {
    if (this.#broken) {
      this.#release(slot, 3);
      return Promise.reject(this.#broken);
    }
    this.#seq = (this.#seq + 1) >>> 0 || 1;
    const seq = this.#seq;
    const reqAt = slot * PERSIST_REQUEST_SIZE;
    const repAt = this.#repliesAt + slot * PERSIST_REPLY_SIZE;
    encodePersistRequest({ seq, mapId, offset, length }, this.#buf, reqAt);
    const done = new Promise<'pmem' | 'msync'>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.#pending.delete(seq)) reject(new NpmuError('ERR_NPMU_TIMEOUT', `no persist reply from the unit in ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      timer.unref?.();
      this.#pending.set(seq, { resolve, reject, timer });
    });
    this.#busy[slot] = 3; // bit 0: the SEND, bit 1: the receive
    // The reply's receive first, then the SEND (posted in this order on the connection).
    this.#ep.recv(this.#mr, repAt, PERSIST_REPLY_SIZE).then(
      (n) => {
        this.#onReply(decodePersistReply(this.#buf, repAt, n));
        this.#release(slot, 2);
      },
      (err: Error) => {
        this.#break(err);
        this.#release(slot, 2);
      },
    );
    this.#ep.send(this.#mr, reqAt, PERSIST_REQUEST_SIZE).then(
      () => this.#release(slot, 1),
      (err: Error) => {
        this.#break(err);
        this.#release(slot, 1);
      },
    );
    return done;
  }

  #onReply(r: PersistReply | undefined): void {
    if (!r) {
      this.#break(new NpmuError('ERR_NPMU_PROTO_MALFORMED', 'the unit sent a persist reply that is not one'));
      return;
    }
    const p = this.#pending.get(r.seq);
    if (!p) return; // timed out already
    this.#pending.delete(r.seq);
    clearTimeout(p.timer);
    if (r.status === 'ok') p.resolve(r.method!);
    else p.reject(new NpmuError(r.status, `the unit refused to persist: ${r.status}`));
  }

  #release(slot: number, bits: number): void {
    this.#busy[slot]! &= ~bits;
    if (this.#busy[slot] !== 0) return;
    const next = this.#waiting.shift();
    if (next) next(slot);
    else this.#free.push(slot);
  }

  /** The connection broke (or the unit spoke nonsense): fail what is in flight and everything after. */
  #break(err: Error): void {
    if (this.#broken) return;
    this.#broken = new NpmuError('ERR_NPMU_DISCONNECTED', `the unit's connection failed: ${err.message}`, { cause: err });
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.#broken);
    }
    this.#pending.clear();
  }

  /** Fails what is in flight and deregisters the buffer (call once the endpoint is closed). */
  close(): void {
    this.#break(new Error('the client closed'));
    try {
      this.#mr.close();
    } catch {
      // already gone with its PD
    }
  }
}
