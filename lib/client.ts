/**
 * The application API ([0055], [0064]-[0099]): the region verbs a Node
 * program calls.
 *
 * ```ts
 * const c = await NpmuClient.attach({ pmm: { host, port }, client: 'alice', secret, volume: 'vol0' });
 * await c.createRegion('log', 1 << 20, 0x7f0000000000n);
 * const h = await c.openRegion('log');
 * await c.writeRegion(h, buf, buf.length, h.basePointer);           // both halves, durable
 * await c.readRegion(h, out, out.length, h.basePointer);            // any half, fails over
 * await c.closeRegion(h);
 * await c.close();
 * ```
 *
 * Management verbs go to the PMM over TCP; data goes straight from the
 * caller's memory to the units by one-sided RDMA WRITE/READ, the PMM nowhere
 * on the path ([0045]). At attach the client connects to both units with the
 * tickets the PMM issued; each connection has its own protection domain.
 *
 * ## Local buffers
 * RDMA needs the caller's memory registered with each unit connection's PD.
 * - Transfers of up to `stagingThreshold` bytes (16 KiB by default) are
 *   copied through a staging area registered once at attach: a memcpy of a
 *   few KiB costs far less than `ibv_reg_mr` (a system call that pins pages)
 *   and small Node Buffers share 8 KiB pools that should not be pinned.
 * - Larger transfers go zero-copy ([0086]): the Buffer's whole ArrayBuffer is
 *   registered on first use and the registration cached (LRU, 64 entries by
 *   default) so a reused buffer costs nothing. A cached registration pins its
 *   memory until evicted: `releaseBuffer(buf)` drops it at once.
 *
 * ## Durability (per region by default, per write with `{durable}`)
 * Each half's method follows its unit's durability and the platform's
 * persistence domain, which the unit reports in its `hello` (`persistDomain`;
 * a unit that does not report it counts as 'none'). The result's `methods`
 * says which was used per half written.
 * - pmem units on a cpu_cache (eADR) platform — `'read-after-write'`: the
 *   WRITE then a placement fence on the same connection, both posted in one
 *   call: an 8-byte ATOMIC FETCH_AND_ADD of 0 to the connection's fence word
 *   (which the unit names in its accept, lib/protocol.ts: AcceptInfo), or a
 *   READ of the write's last bytes where the unit offers no fence word. Either
 *   completes only after the unit executed the WRITE before it — the data is
 *   placed in the unit's memory — and on eADR a placed byte is durable. (The
 *   atomic, not the READ: rxe defers every READ request to a softirq and the
 *   poster pays a context switch for it, docs/perf-read.md.)
 * - pmem units on a memory_controller (ADR) platform, or an unknown one —
 *   `'unit-flush'`: the WRITE, then a persist request SENT right behind it on
 *   the same reliable connection (lib/persist.ts; lib/protocol.ts:
 *   PersistRequest): the unit's receive completes only after it executed the
 *   WRITE, it flushes the range from the CPU caches (pmem_persist), then
 *   replies. rxe's responder copies with the CPU, so on ADR placed bytes can
 *   sit in caches until that flush. (librpma calls flushing on the target
 *   GPSPM.) A unit that offers no persist slots in its accept is asked with
 *   `persist-range` over its control connection instead, after a WRITE +
 *   fence (the fence proves placement: that request travels apart from the
 *   WRITE).
 * - msync units (files) — `'msync'`: the same request (or, without persist
 *   slots, `persist-range` after the WRITE completes); its reply means
 *   msync(MS_SYNC) is done.
 * - volatile units (tmpfs) — `'none'`: nothing can make the data survive
 *   power loss; the result says `durable: false, durability: 'volatile'`.
 * Non-durable writes are a bare WRITE: method `'none'`.
 */
import { EventEmitter } from 'node:events';
import { NpmuError, argRangeError, argTypeError, argValueError } from './errors';
import { ControlConnection, MAX_LIST, decodeAcceptInfo } from './protocol';
import type { AcceptInfo, OkReply, ReplyBody } from './protocol';
import * as verbs from './verbs';
import { settleFairly } from './fair';
import { RdmaPersister } from './persist';
import type { Endpoint, MemoryRegion } from './verbs';
import { AttrCache } from '../pmm/attrs';

/** Which half a write goes to ([0088]). */
export const Mirror = { BOTH: 'both', PRIMARY: 'primary', MIRROR: 'mirror' } as const;
export type MirrorMode = (typeof Mirror)[keyof typeof Mirror];
/** Which half a read comes from ([0090]). ANY fails over transparently ([0091]-[0092]). */
export const ReadFrom = { ANY: 'any', PRIMARY: 'primary', MIRROR: 'mirror' } as const;
export type ReadMode = (typeof ReadFrom)[keyof typeof ReadFrom];

export type Half = 'primary' | 'mirror';
export type Durability = 'pmem' | 'msync' | 'volatile';
/** The platform's persistence domain a unit reports ('none' = not listed or unknown). */
export type PersistDomain = 'cpu_cache' | 'memory_controller' | 'none';
/** How a write was made durable on one half (see the file comment). */
export type WriteMethod = 'read-after-write' | 'unit-flush' | 'msync' | 'none';
const HALVES: readonly Half[] = Object.freeze(['primary', 'mirror'] as Half[]);
const ONLY_PRIMARY: readonly Half[] = Object.freeze(['primary'] as Half[]);
const ONLY_MIRROR: readonly Half[] = Object.freeze(['mirror'] as Half[]);
const U64 = 1n << 64n;
/** Errors of a post refused locally: they say nothing about the half. */
const LOCAL_POST_ERRORS: ReadonlySet<string | undefined> = new Set(['ENOMEM', 'EAGAIN', 'ERR_NPMU_DETACHED']);

export interface AttachOptions {
  /** The PMM's control address. */
  pmm: { host: string; port: number };
  /** Client name, as in the PMM's clients file. */
  client: string;
  /** The client's secret (≤ 256 UTF-8 bytes). */
  secret: string | Uint8Array;
  /** Volume to attach to ([0075] pm_volume). */
  volume: string;
  /** Timeout of each management request, ms. Default 30000. */
  timeoutMs?: number;
  /** Spin on the completion queue instead of sleeping (lower latency, one busy core). Default false. */
  busyPoll?: boolean;
  /**
   * Hybrid polling (event mode): after posting, spin on the completion queue
   * for up to this many µs before sleeping on the completion channel; an
   * operation that completes within it costs no event-loop wake-up. 0-1000000;
   * default 0 (one poll). Ignored with busyPoll.
   */
  spinUs?: number;
  /** Transfers up to this many bytes are staged through pre-registered memory. Default 16384. */
  stagingThreshold?: number;
  /** Concurrent staged transfers. Default 16. */
  stagingSlots?: number;
  /** Most cached registrations of caller buffers. Default 64. */
  maxCachedBuffers?: number;
  /**
   * Connect to the units (the data path). Default true; false gives a
   * management-only client (create/delete/list/attributes; open works but
   * reads and writes fail with ERR_NPMU_HALF_UNAVAILABLE) that needs no RDMA device.
   */
  connectUnits?: boolean;
}

/** One half of an open region ([0066]): where and how to reach it. */
export interface RegionHalf {
  readonly unitId: string;
  /** The base network virtual address (the iova of the region's first byte). */
  readonly baseNva: bigint;
  /** The memory context handle ([0068]: the R_key). */
  readonly rkey: number;
  /** The unit's mapping id (for persist-range). */
  readonly mapId: string;
  readonly durability: Durability;
  /** False if the half could not be mapped at open. */
  readonly available: boolean;
  /** True if the half missed updates (then never mapped): reads and writes of it fail with ERR_NPMU_HALF_STALE. */
  readonly stale: boolean;
}

/** [0066] region_handle: everything the data verbs need, like a file descriptor. */
export class RegionHandle {
  readonly name: string;
  readonly size: number;
  /** [0069] the pointer value of the region's first byte, fixed for life. */
  readonly basePointer: bigint;
  readonly pmmId: string;
  /** The region's default for writes. */
  readonly durable: boolean;
  readonly handleId: number;
  readonly primary: RegionHalf;
  readonly mirror: RegionHalf;
  /** @internal */
  readonly owner: NpmuClient;
  #closed = false;
  #end: bigint;

  /** @internal */
  constructor(owner: NpmuClient, r: ReplyBody<'open-region'>) {
    this.owner = owner;
    this.name = r.name;
    this.size = r.size;
    this.basePointer = BigInt(r.basePointer);
    this.pmmId = r.pmmId;
    this.durable = r.durable;
    this.handleId = r.handleId;
    const half = (h: ReplyBody<'open-region'>['primary']): RegionHalf =>
      Object.freeze({ unitId: h.unitId, baseNva: BigInt(h.iova), rkey: h.rkey, mapId: h.mapId, durability: h.durability, available: h.available, stale: h.stale === true });
    this.primary = half(r.primary);
    this.mirror = half(r.mirror);
    this.#end = this.basePointer + BigInt(this.size);
  }

  /** One past the last valid pointer: basePointer + size. */
  get end(): bigint {
    return this.#end;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The pointer of byte `offset` of the region. */
  pointer(offset: number | bigint): bigint {
    return this.basePointer + BigInt(offset);
  }

  /** @internal */
  markClosed(): void {
    this.#closed = true;
  }
}

export interface WriteOptions {
  mirror?: MirrorMode;
  /** Default: the region's `durable` attribute. */
  durable?: boolean;
}

export interface WriteResult {
  bytes: number;
  /** The halves written. */
  halves: Half[];
  /** True only if durability was asked for and every half written can promise it. */
  durable: boolean;
  /** How durability was obtained: the weakest of the halves written ('none' when not asked). */
  durability: Durability | 'none';
  /** The method used on each half written ('none' when durability was not asked or the unit is volatile). */
  methods: Partial<Record<Half, WriteMethod>>;
}

export interface ReadOptions {
  mirror?: ReadMode;
}

export interface ReadResult {
  bytes: number;
  /** The half the bytes came from. */
  half: Half;
  /** True when ANY read from the mirror because the primary failed ([0091]). */
  failedOver: boolean;
}

export type VolumeStatus = Omit<OkReply<'volume-status'>, 'v' | 'id' | 'type'>;

/** A client's connection to one unit: RDMA for data and persist requests (TCP persist-range for older units), TCP for control. */
interface UnitPath {
  half: Half;
  unitId: string;
  host: string;
  ep: Endpoint | null;
  ctl: ControlConnection | null;
  staging: MemoryRegion | null;
  scratch: MemoryRegion | null;
  usable: boolean;
  lastError: Error | null;
  /** From the unit's hello; 'none' until then, or if the unit does not report it. */
  persistDomain: PersistDomain;
  /** The connection's fence word, from the unit's accept (older units offer none: fences are READs). */
  fenceWord: AcceptInfo | undefined;
  /** Persist requests over the RDMA connection, if the unit's accept offers them (else persist-range over TCP). */
  persister: RdmaPersister | undefined;
}

interface CachedRegistration {
  mrs: Partial<Record<Half, MemoryRegion>>;
  inflight: number;
}

/** A region's data-path plan: one Fanout leg per half this client reaches. */
interface Plan {
  fan: verbs.Fanout;
  /** leg index of each half (-1: no leg) */
  leg: Record<Half, number>;
  /** the halves of the legs, in leg order */
  halves: Half[];
  /** each leg's staging registration, in leg order */
  staging: MemoryRegion[];
  /** the durable write method of each half */
  methods: Record<Half, WriteMethod>;
  /** per (mirror mode, durable): what a write posts and reports, worked out once (index: see #shape) */
  shapes: Array<WriteShape | undefined>;
  /** fan.maxInline, read once */
  maxInline: number;
}

/** What a write of one mirror mode and durability posts and reports (per plan). */
interface WriteShape {
  halves: readonly Half[];
  mask: number;
  fence: boolean;
  durable: boolean;
  durability: Durability | 'none';
  methods: Partial<Record<Half, WriteMethod>>;
  /** halves whose unit is asked to persist after the post (msync, unit-flush) */
  persist: readonly Half[];
  /**
   * Every such half takes persist requests on its RDMA connection: the request
   * is SENT right behind the WRITE on the same reliable connection (the unit's
   * receive completes only after it executed the WRITE, so no fence is needed
   * for those halves) instead of after the WRITE completed.
   */
  persistBehind: boolean;
}

/** One write of a batch: `n` bytes of `view` at region offset `off`. */
interface WritePart {
  view: ArrayBufferView;
  n: number;
  off: bigint;
}

const MAX_BATCH = 4096;
/**
 * Inline limit asked of the units' QPs (a device that cannot gets less): a
 * write up to this size travels inside the work request, with no staging copy
 * or registration — one log record of a KV commit (lib/log.ts) is ~150 bytes.
 */
const MAX_INLINE = 256;
const MIRROR_MODES = Object.values(Mirror);
const READ_MODES = Object.values(ReadFrom);


// ---------------------------------------------------------------------------
// argument checks (before anything reaches the verbs)

function checkName(name: unknown, what = 'name'): string {
  if (typeof name !== 'string') throw argTypeError(what, 'of type string', name);
  const n = Buffer.byteLength(name, 'utf8');
  if (n < 1 || n > 64) throw argValueError(what, 'must be 1 to 64 UTF-8 bytes', name);
  if (name.includes('\0')) throw argValueError(what, 'must not contain NUL', name);
  if (/\p{Cs}/u.test(name)) throw argValueError(what, 'must be well-formed Unicode', name);
  return name;
}

function checkU64(v: unknown, what: string): bigint {
  if (typeof v === 'bigint') {
    if (v < 0n || v >= U64) throw argRangeError(what, '>= 0n and < 2n ** 64n', v);
    return v;
  }
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw argRangeError(what, 'a non-negative safe integer (or a bigint)', v);
    return BigInt(v);
  }
  throw argTypeError(what, 'of type bigint or number', v);
}

function checkPositiveInt(v: unknown, what: string, max = Number.MAX_SAFE_INTEGER, min = 1): number {
  if (typeof v !== 'number') throw argTypeError(what, 'of type number', v);
  if (!Number.isSafeInteger(v) || v < min || v > max) throw argRangeError(what, `an integer >= ${min} and <= ${max}`, v);
  return v;
}

function checkView(buf: unknown, what = 'buf'): ArrayBufferView {
  if (!ArrayBuffer.isView(buf)) throw argTypeError(what, 'a Buffer, TypedArray or DataView', buf);
  return buf;
}

function checkEnum<T extends string>(v: unknown, what: string, values: readonly T[]): T {
  if (typeof v !== 'string' || !values.includes(v as T)) throw argValueError(what, `must be one of ${values.map((x) => `'${x}'`).join(', ')}`, v);
  return v as T;
}

function checkOptions(o: unknown, what: string): Record<string, unknown> {
  if (o === undefined) return {};
  if (o === null || typeof o !== 'object') throw argTypeError(what, 'an object', o);
  return o as Record<string, unknown>;
}

/** The durable write method for a half: by its unit's durability and, for pmem, its persistence domain. */
export function methodFor(durability: Durability, domain: PersistDomain | undefined): WriteMethod {
  if (durability === 'msync') return 'msync';
  if (durability === 'pmem') return domain === 'cpu_cache' ? 'read-after-write' : 'unit-flush';
  return 'none';
}

function unavailable(half: Half | 'both', why: string, props: Record<string, unknown> = {}): NpmuError {
  const msg = half === 'both' ? `neither half is available: ${why}` : `the ${half} unit is unavailable: ${why}`;
  return new NpmuError('ERR_NPMU_HALF_UNAVAILABLE', msg, { half, ...props });
}

// ---------------------------------------------------------------------------

/**
 * An attached client: one session on one volume. Events: `'half-down'`
 * (half, error) when a unit can no longer be reached, `'pmm-disconnected'`
 * when the PMM connection goes (the data path keeps working; management
 * verbs then fail with ERR_NPMU_DISCONNECTED).
 */
export class NpmuClient extends EventEmitter {
  readonly client: string;
  readonly volume: string;
  readonly sessionId: string;
  readonly pmmId: string;
  readonly #pmm: ControlConnection;
  readonly #timeoutMs: number;
  readonly #paths: Record<Half, UnitPath>;
  readonly #handles = new Set<RegionHandle>();
  readonly #threshold: number;
  readonly #maxCached: number;
  #stagingBuf: Buffer;
  #freeSlots: number[];
  #cache = new Map<ArrayBufferLike, CachedRegistration>();
  #inflight = 0;
  /** Per open handle: its fan-out plan (lib/native.ts: Fanout), made at the first transfer. */
  #plans = new WeakMap<RegionHandle, Plan>();
  /** Halves this client has had the PMM record stale (single-half writes), or learnt are stale. */
  #staleRecorded = new Set<Half>();
  /** Halves the PMM confirmed current while the other was out of this client's reach. */
  #confirmed = new Set<Half>();
  #closed = false;

  private constructor(o: AttachOptions, pmm: ControlConnection, r: ReplyBody<'attach'>, threshold: number, slots: number) {
    super();
    this.client = o.client;
    this.volume = o.volume;
    this.sessionId = r.sessionId;
    this.pmmId = r.pmmId;
    this.#pmm = pmm;
    this.#timeoutMs = o.timeoutMs ?? 30_000;
    this.#threshold = threshold;
    this.#maxCached = o.maxCachedBuffers ?? 64;
    this.#stagingBuf = Buffer.alloc(threshold * slots);
    this.#freeSlots = Array.from({ length: slots }, (_, i) => i);
    const path = (h: Half): UnitPath => ({
      half: h,
      unitId: r.units[h].unitId,
      host: r.units[h].host,
      ep: null,
      ctl: null,
      staging: null,
      scratch: null,
      usable: false,
      persistDomain: 'none',
      fenceWord: undefined,
      persister: undefined,
      lastError: r.units[h].available ? null : new Error('the PMM reports this unit unavailable'),
    });
    this.#paths = { primary: path('primary'), mirror: path('mirror') };
    pmm.on('close', () => {
      if (!this.#closed) this.emit('pmm-disconnected');
    });
  }

  /**
   * Attaches to a volume: authenticates with the PMM, then connects to both
   * units with the tickets it issues. A unit that cannot be reached leaves
   * its half unavailable (reads fail over; writes to it fail).
   */
  static async attach(opts: AttachOptions): Promise<NpmuClient> {
    const o = checkOptions(opts, 'opts') as unknown as AttachOptions;
    const pmmOpt = checkOptions(o.pmm, 'opts.pmm');
    if (typeof pmmOpt.host !== 'string' || pmmOpt.host === '') throw argTypeError('opts.pmm.host', 'a non-empty string', pmmOpt.host);
    checkPositiveInt(pmmOpt.port, 'opts.pmm.port', 65535);
    if (typeof o.client !== 'string' || o.client === '') throw argTypeError('opts.client', 'a non-empty string', o.client);
    if (typeof o.volume !== 'string' || o.volume === '') throw argTypeError('opts.volume', 'a non-empty string', o.volume);
    const secret = typeof o.secret === 'string' ? Buffer.from(o.secret, 'utf8') : o.secret instanceof Uint8Array ? o.secret : undefined;
    if (!secret) throw argTypeError('opts.secret', 'a string or a Uint8Array', o.secret);
    if (secret.length > 256) throw argRangeError('opts.secret', 'at most 256 bytes', secret.length);
    const threshold = o.stagingThreshold === undefined ? 16384 : checkPositiveInt(o.stagingThreshold, 'opts.stagingThreshold', 1 << 24);
    const slots = o.stagingSlots === undefined ? 16 : checkPositiveInt(o.stagingSlots, 'opts.stagingSlots', 1024);
    if (o.maxCachedBuffers !== undefined) checkPositiveInt(o.maxCachedBuffers, 'opts.maxCachedBuffers', 1 << 16);
    if (o.timeoutMs !== undefined) checkPositiveInt(o.timeoutMs, 'opts.timeoutMs');
    if (o.busyPoll !== undefined && typeof o.busyPoll !== 'boolean') throw argTypeError('opts.busyPoll', 'of type boolean', o.busyPoll);
    if (o.spinUs !== undefined) checkPositiveInt(o.spinUs, 'opts.spinUs', 1_000_000, 0);
    if (o.connectUnits !== undefined && typeof o.connectUnits !== 'boolean') throw argTypeError('opts.connectUnits', 'of type boolean', o.connectUnits);

    const pmm = await ControlConnection.connect({ host: pmmOpt.host as string, port: pmmOpt.port as number, defaultTimeoutMs: o.timeoutMs ?? 30_000 });
    let client: NpmuClient | undefined;
    try {
      const r = await pmm.request('attach', { client: o.client, credential: secret, volume: o.volume });
      client = new NpmuClient(o, pmm, r, threshold, slots);
      if (o.connectUnits !== false) await Promise.all(HALVES.map((h) => client!.#connectUnit(h, r, o.busyPoll ?? false, o.spinUs ?? 0)));
      else for (const h of HALVES) client.#paths[h].lastError = new Error('this client was attached without the data path (connectUnits: false)');
      return client;
    } catch (err) {
      if (client) await client.close().catch(() => undefined);
      else pmm.destroy();
      throw err;
    }
  }

  async #connectUnit(h: Half, r: ReplyBody<'attach'>, busyPoll: boolean, spinUs: number): Promise<void> {
    const u = r.units[h];
    const p = this.#paths[h];
    if (!u.available) return;
    const ticket = Buffer.from(r.tickets[h], 'base64');
    try {
      const ep = await verbs.connect({ host: u.host, port: u.rdmaPort, privateData: ticket, busyPoll, spinUs, timeoutMs: 10_000, maxInline: MAX_INLINE });
      p.ep = ep;
      p.fenceWord = decodeAcceptInfo(ep.peerPrivateData);
      if (p.fenceWord?.persistSlots) p.persister = new RdmaPersister(ep, p.fenceWord.persistSlots, this.#timeoutMs);
      ep.onEvent = (ev) => this.#halfDown(h, ev.type === 'error' ? ev.error : new NpmuError('ERR_NPMU_DISCONNECTED', `the ${h} unit disconnected`));
      const access = verbs.Access.LOCAL_WRITE;
      p.staging = verbs.registerMemory(ep.pd, this.#stagingBuf, { access });
      p.scratch = verbs.registerMemory(ep.pd, Buffer.alloc(64), { access });
      const ctl = await ControlConnection.connect({ host: u.host, port: u.controlPort, defaultTimeoutMs: this.#timeoutMs });
      p.ctl = ctl;
      const hello = await ctl.request('hello', { ticket });
      p.persistDomain = hello.persistDomain ?? 'none';
      ctl.on('close', () => this.#halfDown(h, new NpmuError('ERR_NPMU_DISCONNECTED', `the ${h} unit's control connection closed`)));
      p.usable = true;
    } catch (err) {
      p.lastError = err as Error;
      this.#halfDown(h, err as Error);
    }
  }

  /** A half this client can no longer use: its connection failed or a transfer on it did. */
  #halfDown(h: Half, why: Error): void {
    const p = this.#paths[h];
    const was = p.usable;
    p.usable = false;
    p.lastError = why;
    if (was && !this.#closed) this.emit('half-down', h, why);
  }

  /** The persistence domain the unit of a half reported in its hello ('none' if it did not, or was never reached). */
  persistDomain(h: Half): PersistDomain {
    return this.#paths[checkEnum(h, 'half', HALVES)].persistDomain;
  }

  /** Whether a half can be used for data (it may still be unmapped for a given region). */
  halfAvailable(h: Half): boolean {
    return this.#paths[checkEnum(h, 'half', HALVES)].usable;
  }

  // ---- management verbs ([0078]-[0085], [0095]-[0099]) ---------------------

  #request<T extends Parameters<ControlConnection['request']>[0]>(type: T, body: Parameters<ControlConnection['request']>[1] & object) {
    if (this.#closed) return Promise.reject(new NpmuError('ERR_NPMU_CLOSED', 'the client is closed'));
    return this.#pmm.request(type, body as never) as Promise<OkReply<T>>;
  }

  /**
   * create_region ([0078]-[0081]): allocates `size` bytes on both halves.
   * `basePointer` ([0069]) is the pointer value of the first byte, fixed for
   * life; default 0 (file-like offsets). Errors: ERR_NPMU_REGION_EXISTS,
   * ERR_NPMU_NO_SPACE, ERR_OUT_OF_RANGE (basePointer + size passes 2^64),
   * ERR_NPMU_VOLUME_OFFLINE (no current half is reachable). A degraded volume
   * creates on its current half; the stale half gets the region at resync.
   */
  async createRegion(name: string, size: number, basePointer: bigint | number = 0n, opts?: { durable?: boolean }): Promise<void> {
    checkName(name);
    checkPositiveInt(size, 'size');
    const bp = checkU64(basePointer, 'basePointer');
    if (bp + BigInt(size) > U64) throw argRangeError('basePointer', `such that basePointer + size <= 2n ** 64n (size ${size})`, bp);
    const o = checkOptions(opts, 'opts');
    if (o.durable !== undefined && typeof o.durable !== 'boolean') throw argTypeError('opts.durable', 'of type boolean', o.durable);
    await this.#request('create-region', {
      volume: this.volume,
      name,
      size,
      basePointer: bp,
      ...(o.durable === undefined ? {} : { durable: o.durable as boolean }),
    });
  }

  /** delete_region ([0082]): ERR_NPMU_NO_SUCH_REGION, ERR_NPMU_REGION_OPEN (open by another client), ERR_NPMU_NOT_AUTHORIZED (not the owner). */
  async deleteRegion(name: string): Promise<void> {
    checkName(name);
    await this.#request('delete-region', { volume: this.volume, name });
    for (const h of this.#handles) if (h.name === name) this.#forget(h); // the PMM closed our own opens of it
  }

  /** open_region ([0083]-[0084]): maps the region on both halves for this client; returns its handle. */
  async openRegion(name: string): Promise<RegionHandle> {
    checkName(name);
    const r = await this.#request('open-region', { volume: this.volume, name });
    // A half the PMM maps again is current again (resynced since this client recorded it stale).
    for (const x of HALVES) if (r[x].available && !r[x].stale) this.#staleRecorded.delete(x);
    const h = new RegionHandle(this, r);
    this.#handles.add(h);
    return h;
  }

  /** close_region ([0085]): unmaps both halves; the handle is invalid after. */
  async closeRegion(handle: RegionHandle): Promise<void> {
    this.#checkHandle(handle);
    this.#forget(handle);
    await this.#request('close-region', { handleId: handle.handleId });
  }

  #forget(h: RegionHandle): void {
    h.markClosed();
    this.#handles.delete(h);
  }

  /** list_regions ([0095]): up to `max` names, and the volume's true region count. */
  async listRegions(max: number = MAX_LIST): Promise<{ names: string[]; count: number }> {
    if (typeof max !== 'number') throw argTypeError('max', 'of type number', max);
    if (!Number.isSafeInteger(max) || max < 0 || max > MAX_LIST) throw argRangeError('max', `an integer in [0, ${MAX_LIST}]`, max);
    const r = await this.#request('list-regions', { volume: this.volume, max });
    return { names: r.names, count: r.count };
  }

  /** read_attributes ([0096]-[0097]): a cached snapshot, read with typed accessors ([0098]). */
  async readAttributes(name: string): Promise<AttrCache> {
    checkName(name);
    const { attrs: a } = await this.#request('read-attributes', { volume: this.volume, name });
    return new AttrCache({
      name: a.name,
      size: a.size,
      basePointer: BigInt(a.basePointer),
      owner: a.owner,
      createdAtMs: a.createdAtMs,
      lastOpenAtMs: a.lastOpenAtMs,
      durability: a.durability,
      durable: a.durable,
      primaryUnit: this.#paths.primary.unitId,
      mirrorUnit: this.#paths.mirror.unitId,
    });
  }

  /** free_region_attrs ([0099]). */
  freeRegionAttrs(attrs: AttrCache): void {
    if (!(attrs instanceof AttrCache)) throw argTypeError('attrs', 'an AttrCache from readAttributes()', attrs);
    attrs.free();
  }

  /** Health and usage of the volume and its two units. */
  async volumeStatus(): Promise<VolumeStatus> {
    const { v: _v, id: _id, type: _t, ...s } = await this.#request('volume-status', { volume: this.volume });
    return s;
  }

  // ---- data verbs ([0086]-[0094]) --------------------------------------------

  #checkHandle(handle: unknown): RegionHandle {
    if (!(handle instanceof RegionHandle)) throw argTypeError('handle', 'a RegionHandle from openRegion()', handle);
    if (handle.owner !== this) throw new NpmuError('ERR_NPMU_NOT_OWNER', `region handle ${handle.handleId} belongs to another client`);
    if (handle.closed || this.#closed) throw new NpmuError('ERR_NPMU_BAD_HANDLE', `region handle ${handle.handleId} (${handle.name}) is closed`);
    return handle;
  }

  /** Checks [pointer, pointer + len) ⊆ [base, base + size); returns the offset in the region. */
  #checkRange(h: RegionHandle, pointer: unknown, len: number, what: string): bigint {
    const p = checkU64(pointer, what);
    if (p < h.basePointer || p + BigInt(len) > h.end) {
      throw argRangeError(what, `within [basePointer, basePointer + size - len] = [${h.basePointer}, ${h.end - BigInt(len)}] of region ${h.name} (len ${len})`, p);
    }
    return p - h.basePointer;
  }

  #checkLen(len: unknown, buf: ArrayBufferView, what = 'len'): number {
    if (len === undefined) len = buf.byteLength;
    if (typeof len !== 'number') throw argTypeError(what, 'of type number', len);
    if (!Number.isSafeInteger(len) || len < 1 || len > buf.byteLength) throw argRangeError(what, `an integer in [1, buf.byteLength = ${buf.byteLength}]`, len);
    if (len > 0x7fffffff) throw argRangeError(what, 'at most 2^31 - 1 bytes per transfer', len);
    return len;
  }

  /**
   * write_region ([0086]-[0088]): RDMA WRITE of `len` bytes of `buf` at
   * `writePointer` (network address = pointer − base pointer + base NVA,
   * [0087]). With Mirror.BOTH (default) both halves' work requests are
   * posted in one native call, before either is awaited (lib/native.ts:
   * Fanout). A half that is unavailable is ERR_NPMU_HALF_UNAVAILABLE (its
   * `written` property lists the halves that did take the data); a stale half
   * is ERR_NPMU_HALF_STALE. A PRIMARY or MIRROR write first has the PMM record
   * the other half stale (once per client): nothing only one half holds is
   * acknowledged before that (docs/consistency.md).
   */
  writeRegion(handle: RegionHandle, buf: ArrayBufferView, len: number | undefined, writePointer: bigint | number, opts?: WriteOptions): Promise<WriteResult> {
    // Not async: one promise hop less on the hot path (bad arguments still reject, never throw).
    try {
      const h = this.#checkHandle(handle);
      const view = checkView(buf);
      const n = this.#checkLen(len, view);
      const off = this.#checkRange(h, writePointer, n, 'writePointer');
      let mirror: MirrorMode = 'both';
      let durable = h.durable;
      if (opts !== undefined) {
        const o = checkOptions(opts, 'opts');
        if (o.mirror !== undefined) mirror = checkEnum(o.mirror, 'opts.mirror', MIRROR_MODES);
        if (o.durable !== undefined && typeof o.durable !== 'boolean') throw argTypeError('opts.durable', 'of type boolean', o.durable);
        if (o.durable !== undefined) durable = o.durable as boolean;
      }
      return settleFairly(this.#write(h, mirror, durable, [{ view, n, off }])); // lib/fair.ts
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Many writes to one region at once: every item's bytes go out in ONE post
   * per half (a chain of RDMA WRITEs, then one fence per half when the write
   * is durable), and one result covers the batch. Items may overlap; they are
   * applied in order on each half. Items of at most `stagingThreshold` bytes
   * are copied into pre-registered memory; larger ones are sent from their own
   * (cached) registration. Every item is checked before anything is posted
   * (ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE naming `items[i]`); a half that
   * fails part-way fails the whole batch on that half
   * (ERR_NPMU_HALF_UNAVAILABLE, `written` lists the halves that took all of
   * it). Options as for writeRegion. Up to 4,096 items.
   */
  async writeRegionBatch(handle: RegionHandle, items: ReadonlyArray<{ buf: ArrayBufferView; pointer: bigint | number; len?: number }>, opts?: WriteOptions): Promise<WriteResult> {
    const h = this.#checkHandle(handle);
    if (!Array.isArray(items)) throw argTypeError('items', 'an Array of { buf, pointer, len? }', items);
    if (items.length < 1 || items.length > MAX_BATCH) throw argRangeError('items.length', `an integer in [1, ${MAX_BATCH}]`, items.length);
    const parts: WritePart[] = [];
    for (let i = 0; i < items.length; i++) {
      if (items[i] === undefined) throw argTypeError(`items[${i}]`, 'an object { buf, pointer, len? }', items[i]);
      const it = checkOptions(items[i], `items[${i}]`);
      const view = checkView(it.buf, `items[${i}].buf`);
      const n = this.#checkLen(it.len, view, `items[${i}].len`);
      const off = this.#checkRange(h, it.pointer, n, `items[${i}].pointer`);
      parts.push({ view, n, off });
    }
    const [mirror, durable] = this.#writeOptions(h, opts);
    return settleFairly(this.#write(h, mirror, durable, parts));
  }

  #writeOptions(h: RegionHandle, opts: WriteOptions | undefined): [MirrorMode, boolean] {
    if (opts === undefined) return ['both', h.durable];
    const o = checkOptions(opts, 'opts');
    const mirror = o.mirror === undefined ? 'both' : checkEnum(o.mirror, 'opts.mirror', MIRROR_MODES);
    if (o.durable !== undefined && typeof o.durable !== 'boolean') throw argTypeError('opts.durable', 'of type boolean', o.durable);
    return [mirror, (o.durable as boolean | undefined) ?? h.durable];
  }

  async #write(h: RegionHandle, mirror: MirrorMode, durable: boolean, parts: WritePart[]): Promise<WriteResult> {
    const plan = this.#plan(h);
    const shape = this.#shape(plan, h, mirror, durable);
    for (const half of shape.halves) this.#usableFor(h, half);
    // One history: a write only one half takes is acknowledged only once the other is recorded stale.
    if (mirror !== 'both') await this.#recordStale(mirror === 'primary' ? 'mirror' : 'primary', h, `a ${mirror}-only write`);
    let total = parts[0]!.n;
    for (let i = 1; i < parts.length; i++) total += parts[i]!.n;
    this.#inflight++;
    let releases: Array<() => void> | undefined;
    let outcome: verbs.FanoutOutcome;
    let persisting: Promise<unknown> | undefined;
    const persistAll = (): Promise<unknown> => Promise.all(shape.persist.map((x) => this.#persistParts(h, x, parts, shape.halves)));
    try {
      let posted: Promise<verbs.FanoutOutcome>;
      if (parts.length === 1 && total <= plan.maxInline) {
        // Small: the bytes travel inside the work request (no staging, no registration).
        const p = parts[0]!;
        posted = plan.fan.write(p.view, 0, p.n, p.off, shape.mask, shape.fence);
      } else {
        releases = [];
        posted = this.#postParts(plan, parts, shape.mask, shape.fence, releases);
      }
      if (shape.persistBehind) {
        // Posted after the WRITEs on the same connections: the unit sees the request only after the data.
        persisting = persistAll();
        persisting.catch(() => undefined); // a failed WRITE is reported first
      }
      outcome = await posted;
    } finally {
      this.#inflight--;
      if (releases) for (const r of releases) r();
    }
    if (outcome !== undefined) this.#writeFailed(plan, shape, outcome);
    if (persisting) await persisting;
    else if (shape.persist.length > 0) await persistAll();
    // Copies of the shape's frozen halves and methods, built by hand: slice() and spread of a frozen
    // object take V8's slow paths (~0.4 µs a write natively, ~25x that under TCG).
    const hs = shape.halves;
    const methods: Partial<Record<Half, WriteMethod>> = {};
    for (let i = 0; i < hs.length; i++) methods[hs[i]!] = shape.methods[hs[i]!];
    return { bytes: total, halves: [...hs], durable: shape.durable, durability: shape.durability, methods };
  }

  /** The halves a write failed on (marked down unless the refusal was local); throws ERR_NPMU_HALF_UNAVAILABLE if any. */
  #writeFailed(plan: Plan, shape: WriteShape, outcome: Array<Error | undefined>): void {
    const failed: Half[] = [];
    let first: Error | undefined;
    for (const half of shape.halves) {
      const e = outcome[plan.leg[half]];
      if (!e) continue;
      failed.push(half);
      first ??= e;
      // A local refusal (no queue slot, detached memory) says nothing about the half.
      if (!LOCAL_POST_ERRORS.has((e as NpmuError).code)) this.#halfDown(half, e);
    }
    if (failed.length > 0) {
      const written = shape.halves.filter((x) => !failed.includes(x));
      throw unavailable(failed[0]!, `write failed: ${first!.message}`, { cause: first, written });
    }
  }

  #shape(plan: Plan, h: RegionHandle, mirror: MirrorMode, durable: boolean): WriteShape {
    const key = (mirror === 'both' ? 0 : mirror === 'primary' ? 2 : 4) + (durable ? 1 : 0);
    let shape = plan.shapes[key];
    if (shape) return shape;
    const halves: Half[] = mirror === 'both' ? ['primary', 'mirror'] : [mirror];
    let mask = 0;
    for (const half of halves) if (plan.leg[half] >= 0) mask |= 1 << plan.leg[half];
    const methods: Partial<Record<Half, WriteMethod>> = {};
    for (const x of halves) methods[x] = durable ? plan.methods[x] : 'none';
    let durability: Durability | 'none' = 'none';
    if (durable) {
      const modes = halves.map((x) => h[x].durability);
      durability = modes.includes('volatile') ? 'volatile' : modes.includes('msync') ? 'msync' : 'pmem';
    }
    const persist = halves.filter((x) => methods[x] === 'msync' || methods[x] === 'unit-flush');
    const behind = (x: Half): boolean => this.#paths[x].persister !== undefined;
    shape = {
      halves: Object.freeze(halves),
      mask,
      // A fence proves placement before a persist that travels apart from the WRITE (over TCP), or on eADR.
      fence: durable && halves.some((x) => methods[x] === 'read-after-write' || (methods[x] === 'unit-flush' && !behind(x))),
      durable: durable && durability !== 'volatile',
      durability,
      methods: Object.freeze(methods),
      persist: Object.freeze(persist),
      persistBehind: persist.length > 0 && persist.every(behind),
    };
    plan.shapes[key] = shape;
    return shape;
  }

  /** Posts the parts as one writev per source: staged (copied into pre-registered slots) or from a cached registration of their buffer. */
  #postParts(plan: Plan, parts: WritePart[], mask: number, fence: boolean, releases: Array<() => void>): Promise<verbs.FanoutOutcome> {
    // Group the parts by source; ops are [srcOffset, length, remoteOffset] triples.
    const groups: Array<{ src: MemoryRegion[]; ops: number[] }> = [];
    let staged: { src: MemoryRegion[]; ops: number[]; base: number; used: number } | undefined;
    const byBuffer = new Map<ArrayBufferLike, { src: MemoryRegion[]; ops: number[] }>();
    for (const p of parts) {
      if (p.n <= this.#threshold) {
        if (!staged || staged.used + p.n > this.#threshold) {
          const slot = this.#freeSlots.pop();
          if (slot !== undefined) {
            releases.push(() => this.#freeSlots.push(slot));
            staged = { src: plan.staging, ops: [], base: slot * this.#threshold, used: 0 };
            groups.push(staged);
          } else {
            staged = undefined;
          }
        }
        if (staged) {
          const at = staged.base + staged.used;
          this.#stagingBuf.set(new Uint8Array(p.view.buffer, p.view.byteOffset, p.n), at);
          staged.ops.push(at, p.n, Number(p.off));
          staged.used += p.n;
          continue;
        }
      }
      // From the caller's own memory, registered once and cached.
      const ab = p.view.buffer;
      let g = byBuffer.get(ab);
      if (!g) {
        const entry = this.#register(ab, plan.halves);
        entry.inflight++;
        releases.push(() => entry.inflight--);
        g = { src: plan.halves.map((x) => entry.mrs[x]!), ops: [] };
        byBuffer.set(ab, g);
        groups.push(g);
      }
      g.ops.push(p.view.byteOffset, p.n, Number(p.off));
    }
    const posts = groups.map((g, i) =>
      g.ops.length === 3
        ? plan.fan.write(g.src, g.ops[0]!, g.ops[1]!, g.ops[2]!, mask, fence && i === groups.length - 1)
        : plan.fan.writev(g.src, new Float64Array(g.ops), mask, fence && i === groups.length - 1),
    );
    if (posts.length === 1) return posts[0]!;
    return Promise.all(posts).then((outs) => {
      let merged: Array<Error | undefined> | undefined;
      for (const o of outs) {
        if (!o) continue;
        merged ??= new Array<Error | undefined>(plan.halves.length).fill(undefined);
        o.forEach((e, i) => (merged![i] ??= e));
      }
      return merged;
    });
  }

  async #persistParts(h: RegionHandle, x: Half, parts: WritePart[], halves: readonly Half[]): Promise<void> {
    // One persist-range over the span the parts cover.
    let lo = parts[0]!.off;
    let hi = lo + BigInt(parts[0]!.n);
    for (const p of parts) {
      if (p.off < lo) lo = p.off;
      if (p.off + BigInt(p.n) > hi) hi = p.off + BigInt(p.n);
    }
    try {
      const p = this.#paths[x];
      if (p.persister) await p.persister.persist(BigInt(h[x].mapId), lo, hi - lo);
      else await p.ctl!.request('persist-range', { sessionId: this.sessionId, mapId: h[x].mapId, offset: Number(lo), length: Number(hi - lo) });
    } catch (e) {
      if ((e as NpmuError).code === 'ERR_NPMU_DISCONNECTED' || (e as NpmuError).code === 'ERR_NPMU_TIMEOUT') this.#halfDown(x, e as Error);
      throw new NpmuError('ERR_NPMU_PERSIST_FAILED', `the ${x} unit did not persist the write: ${(e as Error).message}`, { half: x, cause: e, written: halves.slice() });
    }
  }

  /** The region's fan-out plan: one leg per half connected to this client, made once per handle. */
  #plan(h: RegionHandle): Plan {
    let plan = this.#plans.get(h);
    if (plan) return plan;
    const halves = HALVES.filter((x) => this.#paths[x].ep !== null && h[x].available);
    if (halves.length === 0) throw unavailable('both', this.#why(h));
    const leg = { primary: -1, mirror: -1 } as Record<Half, number>;
    halves.forEach((x, i) => (leg[x] = i));
    const fan = verbs.newFanout(
      halves.map((x) => {
        const p = this.#paths[x];
        const fw = p.fenceWord ? { fenceAddr: p.fenceWord.fenceAddr, fenceRkey: p.fenceWord.fenceRkey } : {};
        return { ep: p.ep!, rkey: h[x].rkey, remoteAddr: h[x].baseNva, length: h.size, fence: p.scratch!, ...fw };
      }),
    );
    const methods = {} as Record<Half, WriteMethod>;
    for (const x of HALVES) methods[x] = methodFor(h[x].durability, this.#paths[x].persistDomain);
    plan = { fan, leg, halves, staging: halves.map((x) => this.#paths[x].staging!), methods, shapes: [], maxInline: fan.maxInline };
    this.#plans.set(h, plan);
    return plan;
  }

  /**
   * read_region ([0089]-[0094]): RDMA READ of `len` bytes at `readPointer`
   * into `buf`. ReadFrom.ANY (default) reads the primary and, if that fails,
   * the mirror, transparently ([0091]); PRIMARY / MIRROR read only that half
   * and fail with ERR_NPMU_HALF_UNAVAILABLE if it cannot be read ([0093]-[0094]).
   * A stale half is never read (ERR_NPMU_HALF_STALE); reading one half while
   * the other is out of reach first asks the PMM, once, that it is current.
   */
  readRegion(handle: RegionHandle, buf: ArrayBufferView, len: number | undefined, readPointer: bigint | number, opts?: ReadOptions): Promise<ReadResult> {
    return settleFairly(this.#readRegion(handle, buf, len, readPointer, opts)); // lib/fair.ts
  }

  async #readRegion(handle: RegionHandle, buf: ArrayBufferView, len: number | undefined, readPointer: bigint | number, opts?: ReadOptions): Promise<ReadResult> {
    const h = this.#checkHandle(handle);
    const view = checkView(buf);
    const n = this.#checkLen(len, view);
    const off = this.#checkRange(h, readPointer, n, 'readPointer');
    const mode = opts === undefined ? 'any' : checkEnum(checkOptions(opts, 'opts').mirror ?? ReadFrom.ANY, 'opts.mirror', READ_MODES);
    let order: readonly Half[];
    if (mode === 'any') {
      const p = h.primary.available && this.#paths.primary.usable;
      const m = h.mirror.available && this.#paths.mirror.usable;
      order = p && m ? HALVES : p ? ONLY_PRIMARY : m ? ONLY_MIRROR : [];
      if (order.length === 0) throw unavailable('both', this.#why(h));
    } else {
      this.#usableFor(h, mode);
      order = mode === 'primary' ? ONLY_PRIMARY : ONLY_MIRROR;
    }
    const plan = this.#plan(h);
    // Small reads land in a staging slot and are copied out; larger ones go straight into the caller's (cached) registration.
    const slot = n <= this.#threshold ? this.#freeSlots.pop() : undefined;
    const entry = slot === undefined ? this.#register(view.buffer, order) : undefined;
    if (entry) entry.inflight++;
    this.#inflight++;
    try {
      let last: Error | undefined;
      for (const half of order) {
        if (!this.#paths[half].usable) continue;
        // Reading one half while the other is out of reach: make sure the PMM still counts it current
        // (a half the PMM lost could not have its old mappings revoked). Once per half; never on the common path.
        const peer: Half = half === 'primary' ? 'mirror' : 'primary';
        if (!(h[peer].available && this.#paths[peer].usable) && !this.#confirmed.has(half)) await this.#confirmCurrent(half);
        const leg = plan.leg[half];
        const out =
          slot !== undefined
            ? await plan.fan.read(plan.staging[leg]!, slot * this.#threshold, n, off, leg)
            : await plan.fan.read(entry!.mrs[half]!, view.byteOffset, n, off, leg);
        const e = out?.[leg];
        if (e) {
          if (!LOCAL_POST_ERRORS.has((e as NpmuError).code)) this.#halfDown(half, e);
          last = e;
          continue; // [0091] ANY: try the other half
        }
        if (slot !== undefined) {
          const at = slot * this.#threshold;
          this.#stagingBuf.copy(view instanceof Uint8Array ? view : new Uint8Array(view.buffer, view.byteOffset, n), 0, at, at + n);
        }
        return { bytes: n, half, failedOver: half !== order[0] };
      }
      throw unavailable(mode === 'any' ? 'both' : mode, `read failed: ${last?.message ?? this.#why(h)}`, { cause: last });
    } finally {
      this.#inflight--;
      if (slot !== undefined) this.#freeSlots.push(slot);
      if (entry) entry.inflight--;
    }
  }

  #why(h: RegionHandle): string {
    return HALVES.map((x) => `${x}: ${!h[x].available ? 'not mapped at open' : (this.#paths[x].lastError?.message ?? 'down')}`).join('; ');
  }

  /** Asks the PMM whether `half` is current (a degraded read); ERR_NPMU_HALF_STALE if not, ERR_NPMU_HALF_UNAVAILABLE if it cannot be told. */
  async #confirmCurrent(half: Half): Promise<void> {
    let st: VolumeStatus;
    try {
      const { v: _v, id: _id, type: _t, ...s } = await this.#request('volume-status', { volume: this.volume });
      st = s;
    } catch (e) {
      throw unavailable(half, `the other half is down and the PMM cannot confirm that the ${half} is current: ${(e as Error).message}`, { cause: e });
    }
    if (st[half].sync === 'stale') {
      this.#staleRecorded.add(half);
      throw new NpmuError('ERR_NPMU_HALF_STALE', `the ${half} missed updates and is not served until the volume is resynced (npmu volume resync)`, { half });
    }
    this.#confirmed.add(half);
  }

  /** Asks the PMM to record `half` stale (once per client and half) before a write the other half alone takes is acknowledged. */
  async #recordStale(half: Half, h: RegionHandle, why: string): Promise<void> {
    if (h[half].stale || this.#staleRecorded.has(half)) return;
    await this.#request('mark-stale', { volume: this.volume, half, reason: why });
    this.#staleRecorded.add(half);
  }

  #usableFor(h: RegionHandle, half: Half): void {
    if (h[half].stale || this.#staleRecorded.has(half)) {
      throw new NpmuError('ERR_NPMU_HALF_STALE', `the ${half} of region ${h.name} missed updates and is not served until the volume is resynced (npmu volume resync)`, { half });
    }
    if (!h[half].available) throw unavailable(half, `region ${h.name} was not mapped on it at open`);
    if (!this.#paths[half].usable) throw unavailable(half, this.#paths[half].lastError?.message ?? 'not connected');
  }

  /** Serializes compareSwapRegion: every CAS result lands in bytes [8, 16) of the half's scratch registration. */
  #atomicTail: Promise<unknown> = Promise.resolve();

  /**
   * An 8-byte RDMA ATOMIC COMPARE_AND_SWAP on ONE half (`opts.mirror`,
   * default PRIMARY): if the word at `pointer` (8-byte aligned, within the
   * region) equals `compare` it becomes `swap`. Resolves with the word's
   * value before (== `compare` iff it swapped). The unit's RNIC executes it
   * atomically against every other atomic on that word; it is not made
   * durable (a power cut may leave the old value) and it does not touch the
   * other half. Used by lib/log.ts for its writer lease.
   */
  compareSwapRegion(handle: RegionHandle, pointer: bigint | number, compare: bigint, swap: bigint, opts?: { mirror?: Half }): Promise<bigint> {
    return settleFairly(this.#compareSwapRegion(handle, pointer, compare, swap, opts)); // lib/fair.ts
  }

  async #compareSwapRegion(handle: RegionHandle, pointer: bigint | number, compare: bigint, swap: bigint, opts?: { mirror?: Half }): Promise<bigint> {
    const h = this.#checkHandle(handle);
    const off = this.#checkRange(h, pointer, 8, 'pointer');
    if (off % 8n !== 0n) throw argValueError('pointer', 'must be 8-byte aligned (an atomic target)', pointer);
    const cmp = checkU64(compare, 'compare');
    const swp = checkU64(swap, 'swap');
    const half = opts?.mirror === undefined ? 'primary' : checkEnum(opts.mirror, 'opts.mirror', HALVES);
    this.#usableFor(h, half);
    const p = this.#paths[half];
    const run = async (): Promise<bigint> => {
      this.#inflight++;
      try {
        return await p.ep!.compareSwap(p.scratch!, 8, h[half].baseNva + off, h[half].rkey, cmp, swp);
      } catch (e) {
        if (!LOCAL_POST_ERRORS.has((e as NpmuError).code)) this.#halfDown(half, e as Error);
        throw unavailable(half, `compare-and-swap failed: ${(e as Error).message}`, { cause: e });
      } finally {
        this.#inflight--;
      }
    };
    const r = this.#atomicTail.then(run, run);
    this.#atomicTail = r.catch(() => undefined);
    return r;
  }

  // ---- local memory ------------------------------------------------------------

  /** The cached registration of `ab` on each of `halves` (made, and the cache trimmed, if need be). */
  #register(ab: ArrayBufferLike, halves: readonly Half[]): CachedRegistration {
    let entry = this.#cache.get(ab);
    if (entry) {
      this.#cache.delete(ab); // LRU: move to the end
    } else {
      entry = { mrs: {}, inflight: 0 };
    }
    this.#cache.set(ab, entry);
    for (const h of halves) {
      if (!entry.mrs[h]) {
        const ep = this.#paths[h].ep;
        if (!ep) throw unavailable(h, 'not connected');
        entry.mrs[h] = verbs.registerMemory(ep.pd, new Uint8Array(ab, 0, ab.byteLength), { access: verbs.Access.LOCAL_WRITE });
      }
    }
    this.#evict(entry);
    return entry;
  }

  #evict(keep?: CachedRegistration): void {
    if (this.#cache.size <= this.#maxCached) return;
    for (const [ab, e] of this.#cache) {
      if (this.#cache.size <= this.#maxCached) break;
      if (e.inflight > 0 || e === keep) continue;
      this.#dropRegistration(ab, e);
    }
  }

  #dropRegistration(ab: ArrayBufferLike, e: CachedRegistration): void {
    this.#cache.delete(ab);
    for (const mr of Object.values(e.mrs)) {
      try {
        mr.close();
      } catch {
        // in use by a flushing request: its endpoint's close releases it
      }
    }
  }

  /** Drops the cached registration of `buf`'s memory (unpins it). */
  releaseBuffer(buf: ArrayBufferView): boolean {
    const view = checkView(buf);
    const e = this.#cache.get(view.buffer);
    if (!e) return false;
    if (e.inflight > 0) throw new NpmuError('ERR_NPMU_BUSY', 'a transfer from this buffer is in flight');
    this.#dropRegistration(view.buffer, e);
    return true;
  }

  /** Registrations cached (for tests and diagnostics). */
  get cachedBuffers(): number {
    return this.#cache.size;
  }

  /** Handles open now. */
  get openHandles(): RegionHandle[] {
    return [...this.#handles];
  }

  /**
   * Closes every open region (best effort), the PMM connection and both unit
   * connections. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    for (const h of [...this.#handles]) {
      this.#forget(h);
      if (!this.#pmm.closed) await this.#pmm.request('close-region', { handleId: h.handleId }, { timeoutMs: 5000 }).catch(() => undefined);
    }
    this.#closed = true;
    this.#pmm.close();
    const mrs: MemoryRegion[] = [];
    for (const e of this.#cache.values()) mrs.push(...Object.values(e.mrs));
    this.#cache.clear();
    for (const h of HALVES) {
      const p = this.#paths[h];
      p.usable = false;
      p.ctl?.destroy();
      if (p.staging) mrs.push(p.staging);
      if (p.scratch) mrs.push(p.scratch);
    }
    const later: MemoryRegion[] = [];
    for (const mr of mrs) {
      try {
        mr.close();
      } catch {
        later.push(mr);
      }
    }
    await Promise.all(HALVES.map((h) => this.#paths[h].ep?.close().catch(() => undefined)));
    for (const h of HALVES) this.#paths[h].persister?.close();
    for (const mr of later) {
      try {
        mr.close();
      } catch {
        // released with its endpoint
      }
    }
  }
}
